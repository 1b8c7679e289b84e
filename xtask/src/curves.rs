//! Learning curves of a recipe: one `metrics.jsonl` field against the step for groups of runs
//! (the seeds of a group averaged), as a table in the summary and an SVG figure (title, axes with
//! ticks and labels, a legend naming each group; drawn by `dmae::plot`, the plot writer of the
//! `dmae` command).
//!
//! ```toml
//! [[curve]]
//! title = "Fine-tuning: validation top-1"
//! metric = "val_top1"                       # a field of the runs' metrics.jsonl rows
//! file = "finetune-val-top1"                # {out}/figures/curves/<file>.svg
//! runs = [{ label = "DiffMAE", dirs = "{out}/finetune-diffmae-s*" },
//!         { label = "scratch", dirs = "{out}/finetune-scratch-s*" }]
//! ```

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

/// At most this many groups per figure (the plot palette's colours).
const MAX_GROUPS: usize = dmae::plot::PALETTE.len();

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

/// Renders `curve` (patterns already substituted into `groups`): writes the SVG figure to `path`
/// with its extension set to `.svg`, and returns the summary's markdown.
pub fn render(curve: &Curve, groups: &[(String, Vec<PathBuf>)], path: &Path) -> Result<String> {
    if groups.len() > MAX_GROUPS {
        bail!("curve {:?}: at most {MAX_GROUPS} groups", curve.title);
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
    let svg = path.with_extension("svg");
    figure(curve, &series)
        .write(&svg)
        .with_context(|| format!("writing {}", svg.display()))?;

    let mut md = String::new();
    let _ = writeln!(md, "### {}\n", curve.title);
    let _ = writeln!(
        md,
        "`{}` against the step, mean over seeds; figure `curves/{}.svg`.\n",
        curve.metric, curve.file,
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

/// The figure: one line per group (the mean over its runs at each step), the metric's name on the
/// y axis; fractions in `[0, 1]` (accuracies) share a fixed `0..1` axis so that figures compare.
fn figure(curve: &Curve, series: &[(&str, Series)]) -> dmae::plot::Plot {
    let mut plot = dmae::plot::Plot::new(curve.title.as_str(), "step", curve.metric.as_str());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (label, s) in series {
        let points: Vec<(f64, f64)> = s.iter().map(|(k, v)| (*k as f64, mean(v))).collect();
        for p in &points {
            (lo, hi) = (lo.min(p.1), hi.max(p.1));
        }
        plot = plot.line(*label, points);
    }
    if lo >= 0.0 && hi <= 1.0 && (curve.metric.contains("top") || curve.metric.contains("acc")) {
        plot = plot.y_range(0.0, 1.0).y_scale(dmae::plot::Scale::Linear);
    }
    plot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_average_seeds_and_draw_a_labelled_svg() {
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
        assert!(md.contains("figure `curves/f.svg`"), "{md}");
        assert!(
            md.contains("| 20 | 0.5000 ± 0.1414 (n=2) | 0.3000 |"),
            "{md}"
        );
        // The figure names what it shows: title, axes, one legend entry per group.
        let svg = std::fs::read_to_string(root.join("curves/f.svg")).unwrap();
        for text in [
            ">t</text>",
            ">step</text>",
            ">val_top1</text>",
            ">A</text>",
            ">B</text>",
        ] {
            assert!(svg.contains(text), "{text} not in the SVG");
        }
        assert!(!png.exists());

        let missing = Curve {
            metric: "val_top5".into(),
            ..curve
        };
        let e = render(&missing, &groups, &png).unwrap_err().to_string();
        assert!(e.contains("val_top5"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
