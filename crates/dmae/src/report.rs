//! `report.html`: one page per run directory that opens offline in any browser: the run's settings, plots of
//! every metric in `metrics.jsonl` against the step (inline SVG from [`crate::plot`]), and the sample grids of
//! `samples/` in step order, newest last.
//!
//! The grids are linked by relative path (`samples/step_000100.png`), not embedded: the page stays small enough
//! to rewrite at every logged step, and it travels with the run directory it describes. Rows of `metrics.jsonl`
//! are read as plain JSON objects (any numeric field is plotted), so the page keeps up with new metrics; lines
//! that are not JSON are skipped and counted on the page, since a report must never stop a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{escape, Plot, Scale};

/// The report's file name inside a run directory.
pub const REPORT_FILE: &str = "report.html";

/// Fields that are not plotted against the step (the step itself, bookkeeping).
const NOT_PLOTTED: [&str; 3] = ["step", "epoch", "elapsed_s"];

/// The numeric fields of `metrics.jsonl`, each as `(step, value)` in file order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    /// Field name to its points.
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    /// Rows read.
    pub rows: usize,
    /// Non-empty lines that were not JSON objects with a numeric `step`.
    pub skipped: usize,
    /// The last row's `elapsed_s`, if any.
    pub elapsed_s: Option<f64>,
}

impl Metrics {
    /// Parses the text of a `metrics.jsonl`.
    pub fn parse(text: &str) -> Self {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: Option<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(line).ok();
            let Some((row, step)) = row.and_then(|r| {
                let step = r.get("step")?.as_f64()?;
                Some((r, step))
            }) else {
                m.skipped += 1;
                continue;
            };
            m.rows += 1;
            if let Some(e) = row.get("elapsed_s").and_then(serde_json::Value::as_f64) {
                m.elapsed_s = Some(e);
            }
            for (k, v) in &row {
                if let Some(x) = v.as_f64().filter(|_| !NOT_PLOTTED.contains(&k.as_str())) {
                    m.series.entry(k.clone()).or_default().push((step, x));
                }
            }
        }
        m
    }

    /// Reads `dir/metrics.jsonl` (empty when the file does not exist yet).
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(dir.join("metrics.jsonl")) {
            Ok(t) => Ok(Self::parse(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str) -> Option<&Vec<(f64, f64)>> {
        self.series.get(key).filter(|v| !v.is_empty())
    }

    fn last(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.last()).map(|p| p.1)
    }
}

/// The plots of a run: training (and validation) loss, learning rate, throughput, validation accuracy, then
/// every other numeric field on its own.
pub fn plots(m: &Metrics) -> Vec<Plot> {
    let mut out = Vec::new();
    let mut used: Vec<&str> = Vec::new();
    let mut take = |key: &'static str| {
        used.push(key);
        m.get(key).cloned()
    };
    let (loss, val_loss) = (take("loss"), take("val_loss"));
    if loss.is_some() || val_loss.is_some() {
        let mut p = Plot::new("Loss", "step", "loss");
        if let Some(l) = loss {
            p = p.line("train", l);
        }
        if let Some(l) = val_loss {
            p = p.line("validation", l);
        }
        out.push(p);
    }
    if let Some(lr) = take("lr") {
        out.push(
            Plot::new("Learning rate", "step", "learning rate")
                .line("lr", lr)
                .y_scale(Scale::Linear)
                .y_from_zero(),
        );
    }
    if let Some(s) = take("img_per_s") {
        out.push(
            Plot::new("Throughput", "step", "images / s")
                .line("img/s", s)
                .y_scale(Scale::Linear)
                .y_from_zero(),
        );
    }
    let (top1, top5) = (take("val_top1"), take("val_top5"));
    if top1.is_some() || top5.is_some() {
        let mut p = Plot::new("Validation accuracy", "step", "accuracy")
            .y_range(0.0, 1.0)
            .y_scale(Scale::Linear);
        if let Some(a) = top1 {
            p = p.line("top-1", a);
        }
        if let Some(a) = top5 {
            p = p.line("top-5", a);
        }
        out.push(p);
    }
    for (k, v) in &m.series {
        if !used.contains(&k.as_str()) && !v.is_empty() {
            out.push(Plot::new(k.as_str(), "step", k.as_str()).line(k.as_str(), v.clone()));
        }
    }
    out
}

/// The sample grids of `dir/samples/` (PNG files), in natural order of their names (`step_000100.png` before
/// `step_001000.png`), with the step read from the name when it holds one.
pub fn sample_grids(dir: &Path) -> std::io::Result<Vec<(PathBuf, Option<u64>)>> {
    let samples = dir.join("samples");
    let entries = match std::fs::read_dir(&samples) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        let is_png = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| x.eq_ignore_ascii_case("png"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_png && path.is_file() && !name.starts_with('.') {
            let step = name
                .split(|c: char| !c.is_ascii_digit())
                .rfind(|s| !s.is_empty())
                .and_then(|s| s.parse().ok());
            out.push((PathBuf::from("samples").join(name), step));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// The page for run directory `dir` (see the module docs).
pub fn render(dir: &Path) -> std::io::Result<String> {
    let metrics = Metrics::read(dir)?;
    let grids = sample_grids(dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .or_else(|| dir.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let config = ["config.toml", "config.json"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok().map(|t| (*f, t)));

    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - dmae run</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1500px; padding: 0 16px; color: #222; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
.facts {{ color: #555; margin: 0 0 12px 0; }} .facts b {{ color: #222; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }} .plots svg {{ border: 1px solid #ddd; max-width: 100%; height: auto; }}
figure {{ margin: 12px 0; }} figcaption {{ font-weight: bold; margin-bottom: 4px; }}
figure img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 8px; overflow-x: auto; }} .note {{ color: #a33; }}
</style></head><body>
<h1>Run {title}</h1>
"#,
        title = escape(&name)
    );
    let mut facts = Vec::new();
    if let Some(step) = metrics
        .get("loss")
        .or_else(|| metrics.series.values().next())
    {
        if let Some(&(s, _)) = step.last() {
            facts.push(format!("<b>{s}</b> steps logged"));
        }
    }
    if let Some(l) = metrics.last("loss") {
        facts.push(format!("last loss <b>{l:.4}</b>"));
    }
    if let Some(a) = metrics
        .get("val_top1")
        .and_then(|v| v.iter().map(|p| p.1).reduce(f64::max))
    {
        facts.push(format!("best validation top-1 <b>{:.2}%</b>", a * 100.0));
    }
    if let Some(s) = metrics.last("img_per_s") {
        facts.push(format!("last <b>{s:.0}</b> img/s"));
    }
    if let Some(e) = metrics.elapsed_s {
        facts.push(format!("<b>{}</b> of training", duration(e)));
    }
    if facts.is_empty() {
        facts.push("no metrics logged yet".into());
    }
    let _ = writeln!(
        h,
        "<p class=\"facts\">{}; {} sample grid{}.</p>",
        facts.join(", "),
        grids.len(),
        if grids.len() == 1 { "" } else { "s" }
    );
    if metrics.skipped > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} line(s) of metrics.jsonl were not metric rows and were skipped.</p>",
            metrics.skipped
        );
    }
    h.push_str("<h2>Metrics</h2>\n<div class=\"plots\">\n");
    let plots = plots(&metrics);
    if plots.is_empty() {
        h.push_str("<p>No metrics yet: metrics.jsonl is empty or missing.</p>\n");
    }
    for p in plots {
        h.push_str(&p.size(640, 360).to_svg());
    }
    h.push_str("</div>\n<h2>Samples</h2>\n");
    if grids.is_empty() {
        h.push_str("<p>No sample grid yet (samples/*.png).</p>\n");
    }
    for (path, step) in &grids {
        let rel = path.to_string_lossy().replace('\\', "/");
        let caption = match step {
            Some(s) => format!("step {s}"),
            None => rel.clone(),
        };
        let _ = writeln!(
            h,
            "<figure><figcaption>{}</figcaption><img src=\"{}\" alt=\"{}\" loading=\"lazy\"></figure>",
            escape(&caption),
            escape(&url_path(&rel)),
            escape(&rel)
        );
    }
    if let Some((file, text)) = config {
        let _ = writeln!(
            h,
            "<h2>Settings</h2>\n<details open><summary>{file}</summary><pre>{}</pre></details>",
            escape(&text)
        );
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Writes [`render`]`(dir)` to `dir/report.html` (atomically) and returns its path.
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(REPORT_FILE);
    crate::plot::write_atomic(&path, render(dir)?.as_bytes())?;
    Ok(path)
}

/// `93.5` as `1 min 34 s`, `7300` as `2 h 1 min`.
fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}

/// Percent-encodes a relative path for an `src` attribute (keeps letters, digits, `-_.~/`).
fn url_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_the_plots_and_every_grid_newest_last() {
        let dir = std::env::temp_dir().join(format!("dmae-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("samples")).unwrap();
        let mut rows = String::new();
        for step in (10..=300).step_by(10) {
            let _ = writeln!(
                rows,
                r#"{{"step":{step},"epoch":0,"loss":{},"lr":{},"img_per_s":{},"elapsed_s":{}}}"#,
                2.0 / f64::from(step),
                1e-3 * f64::from(step.min(100)) / 100.0,
                100 + step % 7,
                f64::from(step) * 0.5
            );
        }
        rows.push_str("not json\n");
        rows.push_str(r#"{"step":300,"epoch":1,"val_top1":0.5,"val_loss":0.3,"elapsed_s":151}"#);
        std::fs::write(dir.join("metrics.jsonl"), rows).unwrap();
        for step in [1000, 100, 20] {
            std::fs::write(dir.join(format!("samples/step_{step:06}.png")), b"png").unwrap();
        }
        std::fs::write(dir.join("samples/notes.txt"), b"x").unwrap();
        std::fs::write(dir.join("config.toml"), "[model]\nname = \"<tiny>\"\n").unwrap();

        let path = write(&dir).unwrap();
        assert_eq!(path, dir.join(REPORT_FILE));
        let html = std::fs::read_to_string(&path).unwrap();
        // Every plot, with its title, axis label and legend entries.
        for want in [
            ">Loss</text>",
            ">Learning rate</text>",
            ">Throughput</text>",
            ">Validation accuracy</text>",
            ">step</text>",
            ">train</text>",
            ">validation</text>",
            "loss (log scale)",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
        assert_eq!(html.matches("<svg").count(), 4);
        // Every grid, in step order, linked relatively; nothing else from samples/.
        let at = |s: &str| html.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(at("samples/step_000020.png") < at("samples/step_000100.png"));
        assert!(at("samples/step_000100.png") < at("samples/step_001000.png"));
        assert!(html.contains("<figcaption>step 1000</figcaption>"));
        assert!(!html.contains("notes.txt"));
        assert!(html.contains("1 line(s) of metrics.jsonl"));
        assert!(html.contains("&lt;tiny&gt;") && !html.contains("<tiny>"));
        assert!(html.contains("best validation top-1 <b>50.00%</b>"));
        // Nothing fetched from elsewhere: the page opens offline.
        assert!(
            !html.contains("http://")
                || html.matches("http://").count()
                    == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(!html.contains("https://"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_run_still_gets_a_page() {
        let dir = std::env::temp_dir().join(format!("dmae-report-empty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let html = render(&dir).unwrap();
        assert!(html.contains("no metrics logged yet") && html.contains("No sample grid yet"));
        assert_eq!(duration(93.5), "1 min 34 s");
        assert_eq!(duration(7300.0), "2 h 1 min");
        assert_eq!(url_path("samples/a b#.png"), "samples/a%20b%23.png");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
