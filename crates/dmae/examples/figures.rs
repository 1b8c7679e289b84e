//! Writes the figures of the `dmae` library part from the command line (`dmae train` and `dmae finetune` write
//! `loss.svg` and `report.html` themselves; this redraws them, e.g. for runs made before they did):
//!
//! ```text
//! cargo run --release -p dmae --example figures -- report RUN_DIR          # RUN_DIR/report.html and loss.svg
//! cargo run --release -p dmae --example figures -- label IN.png OUT.png L1 L2 ...   # labels over the columns
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("report") if args.len() == 2 => {
            let dir = Path::new(&args[1]);
            let metrics = dmae::report::Metrics::read(dir)
                .with_context(|| format!("reading {}", dir.display()))?;
            if let Some(loss) = dmae::report::plots(&metrics).into_iter().next() {
                loss.write(&dir.join("loss.svg"))?;
            }
            let path = dmae::report::write(dir)?;
            println!(
                "wrote {} and {}",
                path.display(),
                dir.join("loss.svg").display()
            );
        }
        Some("label") if args.len() >= 4 => {
            let grid = image::open(&args[1])
                .with_context(|| format!("reading {}", args[1]))?
                .to_rgb8();
            let out = dmae::label::label_columns(&grid, &args[3..], 2);
            out.save(&args[2])
                .with_context(|| format!("writing {}", args[2]))?;
            println!("wrote {}", args[2]);
        }
        _ => bail!("usage: figures report RUN_DIR | figures label IN.png OUT.png LABEL..."),
    }
    Ok(())
}
