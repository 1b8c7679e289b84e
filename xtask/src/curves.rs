//! Learning curves of a recipe: one `metrics.jsonl` field against the step for groups of runs
//! (the seeds of a group averaged), as a table in the summary and a PNG figure.
//!
//! ```toml
//! [[curve]]
//! title = "Fine-tuning: validation top-1"
//! metric = "val_top1"                       # a field of the runs' metrics.jsonl rows
//! file = "finetune-val-top1"                # {out}/figures/curves/<file>.png
//! runs = [{ label = "DiffMAE", dirs = "{out}/finetune-diffmae-s*" },
//!         { label = "scratch", dirs = "{out}/finetune-scratch-s*" }]
//! ```
//! The figure has no text (the plotting backend is built without fonts): the summary names the
//! colour of each group, and the table beside it carries the numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One `[[curve]]` of a recipe.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curve {
    pub title: String,
    pub metric: String,
    pub file: String,
    pub runs: Vec<CurveRuns>,
}

/// A group of runs drawn as one line (mean over its directories).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurveRuns {
    pub label: String,
    pub dirs: String,
}

/// Line colours in group order, with the names the summary uses for them.
const COLOURS: [((u8, u8, u8), &str); 6] = [
    ((31, 119, 180), "blue"),
    ((255, 127, 14), "orange"),
    ((127, 127, 127), "grey"),
    ((44, 160, 44), "green"),
    ((214, 39, 40), "red"),
    ((148, 103, 189), "purple"),
];

/// Rows of the summary table (the figure keeps every logged step).
const TABLE_ROWS: usize = 10;

/// step -> the metric's values over a group's runs.
type Series = BTreeMap<u64, Vec<f64>>;

/// Reads `metric` from every row of `dir/metrics.jsonl` that has it.
fn read_metric(dir: &Path, metric: &str) -> Result<Vec<(u64, f64)>> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let step = v.get("step").and_then(serde_json::Value::as_u64);
        if let (Some(step), Some(x)) = (step, v.get(metric).and_then(serde_json::Value::as_f64)) {
            out.push((step, x));
        }
    }
    Ok(out)
}

/// Renders `curve` (patterns already substituted into `groups`): writes the PNG to `png` and
/// returns the summary's markdown.
pub fn render(curve: &Curve, groups: &[(String, Vec<PathBuf>)], png: &Path) -> Result<String> {
    if groups.len() > COLOURS.len() {
        bail!("curve {:?}: at most {} groups", curve.title, COLOURS.len());
    }
    let mut series: Vec<(&str, Series)> = Vec::new();
    for (label, dirs) in groups {
        if dirs.is_empty() {
            bail!("curve {:?}: no run directory for {label:?}", curve.title);
        }
        let mut s = Series::new();
        for d in dirs {
            for (step, x) in read_metric(d, &curve.metric)? {
                s.entry(step).or_default().push(x);
            }
        }
        if s.is_empty() {
            bail!(
                "curve {:?}: no {:?} in the metrics of {label:?} ({})",
                curve.title,
                curve.metric,
                dirs[0].display()
            );
        }
        series.push((label, s));
    }
    draw(&series, png).map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;

    let mut md = String::new();
    let legend: Vec<String> = series
        .iter()
        .zip(COLOURS)
        .map(|((label, _), (_, name))| format!("{name}: {label}"))
        .collect();
    let _ = writeln!(md, "### {}\n", curve.title);
    let _ = writeln!(
        md,
        "`{}` against the step, mean over seeds; figure `curves/{}.png` ({}).\n",
        curve.metric,
        curve.file,
        legend.join(", ")
    );
    let labels: Vec<&str> = series.iter().map(|(l, _)| *l).collect();
    let _ = writeln!(md, "| step | {} |", labels.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(labels.len()));
    let steps: std::collections::BTreeSet<u64> =
        series.iter().flat_map(|(_, s)| s.keys().copied()).collect();
    let steps: Vec<u64> = steps.into_iter().collect();
    // The figure has every point; the table about ten rows, always the last.
    let every = steps.len().div_ceil(TABLE_ROWS).max(1);
    let rows = steps
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % every == 0 || i + 1 == steps.len())
        .map(|(_, s)| *s);
    for step in rows {
        let cells: Vec<String> = series
            .iter()
            .map(|(_, s)| {
                s.get(&step)
                    .map_or("–".into(), |v| crate::recipe::aggregate(v))
            })
            .collect();
        let _ = writeln!(md, "| {step} | {} |", cells.join(" | "));
    }
    md.push('\n');
    Ok(md)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn draw(
    series: &[(&str, Series)],
    png: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, s)| s.iter().map(|(k, v)| (*k as f64, mean(v))).collect())
        .collect();
    let all = points.iter().flatten();
    let (x_max, lo, hi) = all.fold(
        (1f64, f64::INFINITY, f64::NEG_INFINITY),
        |(x, lo, hi), p| (x.max(p.0), lo.min(p.1), hi.max(p.1)),
    );
    // Accuracies share the fixed 0..1 axis (one tenth per grid line), so figures compare.
    let (lo, hi, grid) = if lo >= 0.0 && hi <= 1.0 {
        (0.0, 1.0, 0.1)
    } else {
        let pad = (hi - lo).max(1e-12) * 0.05;
        (lo - pad, hi + pad, (hi - lo).max(1e-12) / 10.0)
    };
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(png, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let area = root.margin(10, 10, 10, 10);
    let mut chart = ChartBuilder::on(&area).build_cartesian_2d(0f64..x_max, lo..hi)?;
    let mut y = lo;
    while y <= hi + 1e-9 {
        chart.draw_series(LineSeries::new(
            [(0.0, y), (x_max, y)],
            RGBColor(225, 225, 225).stroke_width(1),
        ))?;
        y += grid;
    }
    for (p, ((r, g, b), _)) in points.iter().zip(COLOURS) {
        chart.draw_series(LineSeries::new(
            p.iter().copied(),
            RGBColor(r, g, b).stroke_width(2),
        ))?;
        chart.draw_series(
            p.iter()
                .map(|&q| Circle::new(q, 3, RGBColor(r, g, b).filled())),
        )?;
    }
    area.draw(&Rectangle::new([(0, 0), (619, 379)], BLACK.stroke_width(1)))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_average_seeds_and_draw_a_png() {
        let root = std::env::temp_dir().join(format!("dmae-curves-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let rows = |vals: &[(u64, f64)]| -> String {
            vals.iter()
                .map(|(s, v)| format!("{{\"step\":{s},\"loss\":1.0,\"val_top1\":{v}}}\n"))
                .collect()
        };
        for (name, vals) in [
            ("a-s0", [(10, 0.2), (20, 0.4)]),
            ("a-s1", [(10, 0.4), (20, 0.6)]),
            ("b-s0", [(10, 0.1), (20, 0.3)]),
        ] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("metrics.jsonl"), rows(&vals)).unwrap();
        }
        let curve = Curve {
            title: "t".into(),
            metric: "val_top1".into(),
            file: "f".into(),
            runs: vec![],
        };
        let groups = vec![
            ("A".to_string(), vec![root.join("a-s0"), root.join("a-s1")]),
            ("B".to_string(), vec![root.join("b-s0")]),
        ];
        let png = root.join("curves/f.png");
        let md = render(&curve, &groups, &png).unwrap();
        assert!(
            md.contains("| 10 | 0.3000 ± 0.1414 (n=2) | 0.1000 |"),
            "{md}"
        );
        assert!(md.contains("blue: A, orange: B"), "{md}");
        assert!(
            md.contains("| 20 | 0.5000 ± 0.1414 (n=2) | 0.3000 |"),
            "{md}"
        );
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (640, 400));

        let missing = Curve {
            metric: "val_top5".into(),
            ..curve
        };
        let e = render(&missing, &groups, &png).unwrap_err().to_string();
        assert!(e.contains("val_top5"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
