//! What a run leaves on disk and shows while it runs: the run directory, `metrics.jsonl`,
//! `loss.svg` and `report.html`, and the progress display (an indicatif bar on a terminal, plain lines otherwise).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// `YYYYMMDD-HHMMSS` in UTC (civil date from the Unix day count, Howard Hinnant's algorithm),
/// so that run directories sort by start time without a date-time dependency.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_none())
}

/// A fresh run directory: `out` if given (it must not exist or be empty), else
/// `runs/<prefix><UTC timestamp>` (with `-2`, `-3`, ... when that exists already).
pub fn fresh_dir(out: Option<&Path>, prefix: &str) -> Result<PathBuf> {
    let dir = match out {
        Some(d) => {
            if d.exists() && !(d.is_dir() && is_empty_dir(d)?) {
                bail!(
                    "--out {}: exists and is not an empty directory (use --resume to continue \
                     a run there, or choose another --out)",
                    d.display()
                );
            }
            d.to_path_buf()
        }
        None => {
            let base = format!("runs/{prefix}{}", utc_timestamp());
            let mut dir = PathBuf::from(&base);
            let mut k = 2;
            while dir.exists() {
                dir = PathBuf::from(format!("{base}-{k}"));
                k += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The directory `--resume` continues: `out`, or the newest directory under `runs/` holding
/// `marker` (names are UTC timestamps, so the greatest name is the newest).
pub fn resume_dir(out: Option<&Path>, marker: &str) -> Result<PathBuf> {
    if let Some(d) = out {
        if !d.join(marker).is_file() {
            bail!("--resume: {} has no {marker} to resume from", d.display());
        }
        return Ok(d.to_path_buf());
    }
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir("runs") {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(marker).is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    dirs.pop()
        .with_context(|| format!("--resume: no run under runs/ has a {marker}; pass --out DIR"))
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimiser steps done (1-based).
    pub step: u64,
    /// Data epoch of the last batch of the step (0-based).
    pub epoch: u64,
    /// Mean training loss over the steps since the previous row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate of the step (before layer-wise scaling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Training images per second since the previous row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub img_per_s: Option<f64>,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// Validation top-1 accuracy in [0, 1] (finetune only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_top1: Option<f64>,
    /// Validation loss (finetune only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

/// Appends rows to `metrics.jsonl` (appended on resume, never rewritten).
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path, file })
    }

    /// Writes one row (one JSON object per line).
    pub fn write(&mut self, row: &MetricsRow) -> Result<()> {
        let line = serde_json::to_string(row)?;
        writeln!(self.file, "{line}")
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Every row in the file (for the plot and for resuming).
    pub fn read(dir: &Path) -> Result<Vec<MetricsRow>> {
        let path = dir.join("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!("{}: line {} is not a metrics row", path.display(), i + 1)
                })
            })
            .collect()
    }
}

/// Drops the rows of steps after `step` (a resumed run repeats the steps after its last
/// checkpoint; their old rows would otherwise appear twice). Rewrites atomically.
pub fn truncate_metrics(dir: &Path, step: u64) -> Result<()> {
    let rows = MetricsLog::read(dir)?;
    if rows.iter().all(|r| r.step <= step) {
        return Ok(());
    }
    let mut text = String::new();
    for r in rows.iter().filter(|r| r.step <= step) {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    dmae_models::write_atomic(&dir.join("metrics.jsonl"), text.as_bytes())?;
    Ok(())
}

/// The loss plot of a run directory.
pub const LOSS_PLOT: &str = "loss.svg";

/// Writes the run's figures from `metrics.jsonl`: `loss.svg` (training and validation loss
/// against the step, with title, axes, ticks, labels, legend, log scale when the loss spans
/// decades: [`dmae::plot`]) and `report.html` (every metric and the `samples/` grids, offline:
/// [`dmae::report`]). Both are rewritten whole, atomically, at each checkpoint and preview.
pub fn write_figures(dir: &Path) -> Result<()> {
    let metrics = dmae::report::Metrics::read(dir)
        .with_context(|| format!("cannot read {}", dir.join("metrics.jsonl").display()))?;
    // plots() puts the loss first when the run logged one.
    if let Some(loss) = dmae::report::plots(&metrics)
        .into_iter()
        .next()
        .filter(|_| metrics.series.contains_key("loss"))
    {
        let path = dir.join(LOSS_PLOT);
        loss.write(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    dmae::report::write(dir).with_context(|| {
        format!(
            "cannot write {}",
            dir.join(dmae::report::REPORT_FILE).display()
        )
    })?;
    Ok(())
}

/// The progress display: an indicatif bar (step/total, loss, lr, img/s, ETA) when stderr is a
/// terminal, plain lines on stdout otherwise (logs, CI, tests).
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    start: Instant,
}

impl Progress {
    /// Starts the display at `done` of `total` steps.
    pub fn new(done: u64, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        Self {
            bar,
            total,
            start: Instant::now(),
        }
    }

    /// Seconds since [`Progress::new`].
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Moves the bar (no output without a terminal).
    pub fn set_step(&self, step: u64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
        }
    }

    /// Shows a logged row: the bar's message, or one plain line.
    pub fn log(&self, row: &MetricsRow) {
        let mut msg = String::new();
        if let Some(l) = row.loss {
            msg.push_str(&format!("loss {l:.4}"));
        }
        if let Some(lr) = row.lr {
            msg.push_str(&format!(" lr {lr:.2e}"));
        }
        if let Some(s) = row.img_per_s {
            msg.push_str(&format!(" img/s {s:.0}"));
        }
        if let Some(a) = row.val_top1 {
            msg.push_str(&format!(" val_top1 {:.2}%", a * 100.0));
        }
        match &self.bar {
            Some(b) => {
                b.set_message(msg.trim().to_string());
                if row.val_top1.is_some() {
                    b.println(format!("step {}/{} {}", row.step, self.total, msg.trim()));
                }
            }
            None => println!(
                "step {}/{} {} elapsed {:.0}s",
                row.step,
                self.total,
                msg.trim(),
                row.elapsed_s
            ),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = utc_timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(&t[8..9], "-");
        let year: i32 = t[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{t}");
    }
}
