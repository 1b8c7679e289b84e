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

/// The lock file of a run directory (see [`RunDir`]).
pub const LOCK_FILE: &str = ".lock";

/// A run directory opened by this process: locked for as long as the value lives (the process
/// holds an exclusive lock on `DIR/.lock`, which names its process id), so that two commands
/// never train into one directory. The operating system releases the lock when the process ends,
/// however it ends: a lock left by a dead process is no lock, and the next command takes it.
#[derive(Debug)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
    /// This process made the directory (a fresh run's `runs/<timestamp>` or a new `--out`).
    created: bool,
    /// This process also made `runs/` for it.
    created_runs: bool,
    /// A fresh run (not `--resume`): until its first checkpoint it has nothing worth keeping.
    fresh: bool,
    /// Holds the lock (closing it releases the lock).
    _lock: std::fs::File,
}

impl RunDir {
    /// A fresh run (not `--resume`).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Removes what a fresh run wrote when it stopped before its first checkpoint (`marker`
    /// absent): the whole directory if this process made it, else its contents (the directory
    /// was empty when it was locked, so everything in it is this run's). A resumed run, or one
    /// with a checkpoint, is left alone. Returns whether anything was removed.
    pub fn discard_if_unfinished(&self, marker: &str) -> bool {
        if !self.fresh || self.path.join(marker).exists() {
            return false;
        }
        if self.created {
            let removed = std::fs::remove_dir_all(&self.path).is_ok();
            if self.created_runs {
                // Only if empty: another command may have put a run there meanwhile.
                let _ = std::fs::remove_dir("runs");
            }
            return removed;
        }
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
        true
    }
}

/// Takes the lock of `dir` (see [`RunDir`]), or says which process holds it.
fn lock(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".into(),
            };
            bail!(
                "{}: in use by {holder} (another dmae command is training in this run directory; \
                 wait for it to end or stop it)",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    // The process id, for the message of a command that finds the directory locked.
    (|| {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
    })()
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Whether `dir` holds nothing but (possibly) the lock file of an earlier command.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .all(|e| e.file_name() == LOCK_FILE))
}

/// Opens a fresh run directory: `out` if given (it must not exist, or be an empty directory),
/// else `runs/<prefix><UTC timestamp>` (with `-2`, `-3`, ... when that exists already). The
/// directory is locked before it is checked, so two commands given one `--out` never both run.
pub fn fresh_dir(out: Option<&Path>, prefix: &str, marker: &str) -> Result<RunDir> {
    let created_runs = out.is_none() && !Path::new("runs").exists();
    let (path, created) = match out {
        Some(d) => {
            if d.exists() && !d.is_dir() {
                bail!(
                    "--out {}: exists and is not a directory (choose another --out)",
                    d.display()
                );
            }
            let created = !d.exists();
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create the directory {}", d.display()))?;
            (d.to_path_buf(), created)
        }
        None => {
            let base = format!("runs/{prefix}{}", utc_timestamp());
            std::fs::create_dir_all("runs").context("cannot create the directory runs")?;
            let mut k = 1;
            loop {
                let dir = match k {
                    1 => PathBuf::from(&base),
                    _ => PathBuf::from(format!("{base}-{k}")),
                };
                // create_dir, not create_dir_all: two commands started in the same second
                // must not both take one name.
                match std::fs::create_dir(&dir) {
                    Ok(()) => break (dir, true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => k += 1,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot create the directory {}", dir.display())
                        })
                    }
                }
            }
        }
    };
    let lock = lock(&path)?;
    if !is_empty_dir(&path)? {
        let what = if path.join(marker).is_file() {
            "holds a run (use --resume to continue it, or choose another --out)".to_string()
        } else {
            format!(
                "is not empty and holds no {marker} to resume from (remove it or choose another --out)"
            )
        };
        bail!("--out {}: {what}", path.display());
    }
    Ok(RunDir {
        path,
        created,
        created_runs,
        fresh: true,
        _lock: lock,
    })
}

/// Opens the run directory `--resume` continues: `out`, or the newest directory under `runs/`
/// holding `marker` (names are UTC timestamps, so the greatest name is the newest). Locks it and
/// removes the temporaries that killed processes left there (`samples/` too).
pub fn resume_dir(out: Option<&Path>, marker: &str) -> Result<RunDir> {
    let path = match out {
        Some(d) => d.to_path_buf(),
        None => {
            let mut dirs: Vec<PathBuf> = match std::fs::read_dir("runs") {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join(marker).is_file())
                    .collect(),
                Err(_) => Vec::new(),
            };
            dirs.sort();
            dirs.pop().with_context(|| {
                format!("--resume: no run under runs/ has a {marker}; pass --out DIR")
            })?
        }
    };
    if !path.is_dir() {
        bail!("--resume: {} is not a run directory", path.display());
    }
    let lock = lock(&path)?;
    if !path.join(marker).is_file() {
        bail!(
            "--resume: {} has no {marker}: the run stopped before its first checkpoint, so there \
             is nothing to resume; remove the directory and start the run again",
            path.display()
        );
    }
    for d in [path.clone(), path.join("samples")] {
        if d.is_dir() {
            dmae_models::checkpoint::remove_stale_temporaries(&d)?;
        }
    }
    Ok(RunDir {
        path,
        created: false,
        created_runs: false,
        fresh: false,
        _lock: lock,
    })
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
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { path, file })
    }

    /// Writes one row (one JSON object per line) in one `write` call, so that a process killed
    /// meanwhile leaves whole lines (and at worst a torn last one, which [`MetricsLog::read`]
    /// drops).
    pub fn write(&mut self, row: &MetricsRow) -> Result<()> {
        let mut line = serde_json::to_string(row)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
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
        // A last line without its newline is a row whose write a kill interrupted: dropped.
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        whole
            .lines()
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
    let whole = std::fs::read(dir.join("metrics.jsonl"))
        .map_or(true, |b| b.is_empty() || b.ends_with(b"\n"));
    if whole && rows.iter().all(|r| r.step <= step) {
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
