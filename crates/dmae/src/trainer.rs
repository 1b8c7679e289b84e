//! The one training loop of `dmae train` and `dmae finetune`: data, gradient accumulation,
//! clipping, AdamW with the lr schedule, EMA, logging, checkpoints, `--resume` and Ctrl-C. The
//! command plugs in a [`Task`]: the loss and gradients of a micro-batch, what to save, and what
//! to look at now and then.
//!
//! Micro-batch `k` (counted from the start of the run) is batch `k mod B` of epoch `k div B`
//! (B = full batches per epoch, the shuffle seeded by `(seed, epoch)`), and the task draws its
//! randomness from `(seed, k)`: everything a step does is a function of `(seed, k)` and the
//! weights, which is what makes `--resume` reproduce an uninterrupted run exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use dmae_core::optim::{self, Ema, LrSchedule, MasterWeights};
use dmae_core::{AdamW, Param};
use dmae_data::{Batch, Epoch, Loader};
use dmae_models::NamedParam;
use serde::{Deserialize, Serialize};

use crate::common::{Interrupted, LoopArgs};
use crate::run_dir::{self, MetricsLog, MetricsRow, Progress};
use crate::settings::{self, ConfigFile, Usage};

/// What a command trains: the loss of a micro-batch, the files it keeps, and the looks at the
/// model that the loop takes at its cadences.
pub trait Task {
    /// The (scalar, detached) loss of micro-batch `micro` and the gradients of the working
    /// weights.
    fn backward(&mut self, batch: &Batch, micro: u64) -> Result<(Tensor, GradStore)>;
    /// Writes the model file(s) into the run directory (the weights are finite).
    fn save(&self, dir: &Path) -> Result<()>;
    /// Validation: `(top-1, loss)` (finetune), at `--eval-every` and at the end.
    fn evaluate(&mut self) -> Result<Option<(f64, f64)>> {
        Ok(None)
    }
    /// Pictures of the model at `step` (train's `samples/` grids), at `--sample-every`.
    fn preview(&mut self, _dir: &Path, _step: u64) -> Result<()> {
        Ok(())
    }
}

/// AdamW over f32 master weights, with what sits around it: the names of the optimised
/// tensors (for the resume record), the low-precision working copy, and the weight EMA.
pub struct Optimizer {
    /// The optimiser.
    pub adamw: AdamW,
    /// The optimised master weights with their checkpoint names, in AdamW's order.
    pub params: Vec<NamedParam>,
    /// bf16 (or other) working weights behind the masters.
    pub masters: Option<MasterWeights>,
    /// EMA of all the model's weights (`ema.*` in the resume record).
    pub ema: Option<(Ema, Vec<NamedParam>)>,
}

impl Optimizer {
    /// AdamW over `params` (each with its own decay and lr scale) named `names`.
    pub fn new(
        params: Vec<Param>,
        names: Vec<String>,
        config: dmae_core::AdamWConfig,
    ) -> Result<Self> {
        let named = params
            .iter()
            .zip(names)
            .map(|(p, name)| NamedParam {
                name,
                var: p.var.clone(),
            })
            .collect();
        Ok(Self {
            adamw: AdamW::new(params, config)?,
            params: named,
            masters: None,
            ema: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }
}

/// The cadences and the length of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Learning rate per optimiser step.
    pub lr: LrSchedule,
    /// Micro-batches per optimiser step.
    pub accum: u64,
    /// Global-norm clipping.
    pub clip_grad: Option<f64>,
    /// Steps between logged rows.
    pub log_every: u64,
    /// Steps between checkpoints.
    pub save_every: u64,
    /// Steps between validations (finetune).
    pub eval_every: Option<u64>,
    /// Steps between previews (0: none).
    pub sample_every: u64,
    /// Stop (with a checkpoint, resumable) after this step.
    pub stop_at: u64,
    /// Images per micro-batch.
    pub batch_size: u64,
    /// The run's seed (in the resume record).
    pub seed: u64,
    /// How the next run continues: the command line `--resume` prints.
    pub resume_hint: String,
}

/// Where training is in the data: the epoch being read and its batch stream.
pub struct DataPosition<'a> {
    loader: &'a Loader,
    epoch: u64,
    iter: Epoch,
}

impl<'a> DataPosition<'a> {
    /// Positions the stream at micro-batch `micro` (skipping the epoch's earlier batches).
    pub fn at(loader: &'a Loader, micro: u64) -> Result<Self> {
        let per_epoch = loader.batches_per_epoch() as u64;
        if per_epoch == 0 {
            bail!(
                "--batch-size {}: larger than the training set ({} samples)",
                loader.config().batch_size,
                loader.dataset().len()
            );
        }
        let epoch = micro / per_epoch;
        let mut iter = loader.epoch(epoch);
        for _ in 0..micro % per_epoch {
            iter.next().context("data: the epoch ended early")??;
        }
        Ok(Self {
            loader,
            epoch,
            iter,
        })
    }

    fn next(&mut self) -> Result<Batch> {
        if let Some(b) = self.iter.next() {
            return Ok(b?);
        }
        self.epoch += 1;
        self.iter = self.loader.epoch(self.epoch);
        Ok(self.iter.next().context("data: an epoch has no batch")??)
    }
}

/// Runs optimiser steps `start..plan.lr.total` (or up to `plan.stop_at`) of `task` in `dir`.
/// Returns the last step done.
pub fn run(
    task: &mut dyn Task,
    opt: &mut Optimizer,
    plan: &Plan,
    loader: &Loader,
    dir: &Path,
    start: u64,
) -> Result<u64> {
    let (total, accum) = (plan.lr.total, plan.accum);
    let per_epoch = loader.batches_per_epoch() as u64;
    let vars = opt.vars();
    let interrupted = interrupt_flag();
    let mut metrics = MetricsLog::open(dir)?;
    let progress = Progress::new(start, total);
    let mut data = DataPosition::at(loader, start * accum)?;
    let mut pending = PendingLosses::default();
    let (mut step, mut micro) = (start, start * accum);
    let mut last_log = (Instant::now(), step);
    while step < plan.stop_at {
        let lr = plan.lr.at(step);
        opt.adamw.set_learning_rate(lr);
        let (mut grads, mut loss) = (None::<GradStore>, None::<Tensor>);
        for _ in 0..accum {
            let (l, mut g) = task.backward(&data.next()?, micro)?;
            micro += 1;
            if let Some(m) = &opt.masters {
                m.to_masters(&mut g)?;
            }
            let l = l.to_dtype(DType::F32)?;
            loss = Some(match loss {
                Some(acc) => (acc + l)?,
                None => l,
            });
            grads = Some(match grads {
                Some(mut acc) => {
                    optim::accumulate(&mut acc, g, &vars)?;
                    acc
                }
                None => g,
            });
        }
        let mut grads = grads.context("no micro-batch")?;
        if accum > 1 {
            let f = Tensor::new(1.0 / accum as f32, &vars[0].device().clone())?;
            optim::scale_grads(&mut grads, &vars, &f)?;
            loss = loss.map(|l| l / accum as f64).transpose()?;
        }
        if let Some(c) = plan.clip_grad {
            let f = optim::clip_factor(&optim::global_grad_norm(&grads, &vars)?, c)?;
            optim::scale_grads(&mut grads, &vars, &f)?;
        }
        opt.adamw.step(&grads)?;
        drop(grads);
        if let Some(m) = &opt.masters {
            m.refresh_work()?;
        }
        if let Some((ema, of)) = &opt.ema {
            ema.update(&of.iter().map(|p| p.var.clone()).collect::<Vec<_>>())?;
        }
        step += 1;
        pending.push(step, loss.context("no loss")?);
        progress.set_step(step);

        // Read the flag once per step: a second read could see a Ctrl-C that arrived after the
        // save decision and leave without the checkpoint the message promises.
        let interrupt = interrupted.load(Ordering::SeqCst);
        let stop = interrupt || step == plan.stop_at;
        let non_finite = |at: u64| non_finite_error(at, dir);
        let eval_now = step == total || stop || plan.eval_every.is_some_and(|k| step % k == 0);
        if step % plan.log_every == 0 || step == total || stop || eval_now {
            if let Some(at) = pending.sync()? {
                progress.finish();
                return Err(non_finite(at));
            }
            let now = Instant::now();
            let secs = now.duration_since(last_log.0).as_secs_f64().max(1e-9);
            let mut row = MetricsRow {
                step,
                epoch: (micro - 1) / per_epoch,
                loss: pending.take_mean(),
                lr: Some(lr),
                img_per_s: Some(((step - last_log.1) * accum * plan.batch_size) as f64 / secs),
                elapsed_s: progress.elapsed(),
                ..MetricsRow::default()
            };
            if eval_now {
                if let Some((top1, val_loss)) = task.evaluate()? {
                    (row.val_top1, row.val_loss) = (Some(top1), Some(val_loss));
                }
            }
            last_log = (Instant::now(), step);
            metrics.write(&row)?;
            progress.log(&row);
        }
        if step % plan.save_every == 0 || step == total || stop {
            if let Some(at) = pending.sync()? {
                progress.finish();
                return Err(non_finite(at));
            }
            if !all_finite(&vars)? {
                progress.finish();
                return Err(non_finite(step));
            }
            task.save(dir)?;
            let meta = StateMeta {
                step,
                micro_step: micro,
                epoch: micro / per_epoch,
                batch_in_epoch: micro % per_epoch,
                seed: plan.seed,
            };
            save_state(&dir.join(STATE_FILE), opt, &meta)?;
            run_dir::write_figures(dir)?;
        }
        if plan.sample_every > 0 && (step % plan.sample_every == 0 || step == total) {
            task.preview(dir, step)?;
        }
        if interrupt && step < total {
            progress.finish();
            return Err(Interrupted(format!(
                "interrupted at step {step}/{total}; checkpoint saved in {}; continue with: {}",
                dir.display(),
                plan.resume_hint
            ))
            .into());
        }
    }
    progress.finish();
    Ok(step)
}

fn non_finite_error(at: u64, dir: &Path) -> anyhow::Error {
    let good = if dir.join(STATE_FILE).is_file() {
        format!("the checkpoint in {}", dir.display())
    } else {
        "none (no checkpoint written yet)".into()
    };
    anyhow::anyhow!("non-finite loss at step {at}; last good checkpoint: {good}")
}

/// Whether every weight is finite (one read-back of the sum of squares), checked before each
/// checkpoint so that a checkpoint never holds non-finite weights.
fn all_finite(vars: &[Var]) -> Result<bool> {
    let mut acc: Option<Tensor> = None;
    for v in vars {
        let s = v.as_tensor().to_dtype(DType::F32)?.sqr()?.sum_all()?;
        acc = Some(match acc {
            Some(a) => (a + s)?,
            None => s,
        });
    }
    Ok(acc.map_or(Ok(0.0), |a| a.to_scalar::<f32>())?.is_finite())
}

/// Installs the Ctrl-C handler: the first press asks the loop to stop after the current step
/// (with a checkpoint); a second press exits at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    // Failing to install (a handler already set) only loses the graceful stop.
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    flag
}

/// Per-step losses not yet looked at, so that reading the loss back (a device sync) happens only
/// at log and save points while a non-finite loss is still reported with its exact step.
#[derive(Default)]
pub struct PendingLosses {
    on_device: Vec<(u64, Tensor)>,
    on_host: Vec<f64>,
}

impl PendingLosses {
    /// Records the (scalar, detached) loss of optimiser step `step` (1-based).
    pub fn push(&mut self, step: u64, loss: Tensor) {
        self.on_device.push((step, loss.detach()));
    }

    /// Reads the pending losses back in one transfer; returns the first step (1-based) whose
    /// loss is NaN or infinite, if any.
    pub fn sync(&mut self) -> Result<Option<u64>> {
        if self.on_device.is_empty() {
            return Ok(None);
        }
        let steps = std::mem::take(&mut self.on_device);
        let all = Tensor::stack(
            &steps
                .iter()
                .map(|(_, t)| t.to_dtype(DType::F32)?.reshape(()))
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?
        .to_vec1::<f32>()?;
        if let Some(i) = all.iter().position(|l| !l.is_finite()) {
            return Ok(Some(steps[i].0));
        }
        self.on_host.extend(all.iter().map(|&l| l as f64));
        Ok(None)
    }

    /// The mean of the losses read back since the last call (after [`PendingLosses::sync`]).
    pub fn take_mean(&mut self) -> Option<f64> {
        let v = std::mem::take(&mut self.on_host);
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// The resume record of a run directory.
pub const STATE_FILE: &str = "optimizer.safetensors";
const STATE_KEY: &str = "dmae_train_state";

/// The counters of the resume record ([`STATE_FILE`]): f32 master weights, AdamW moments, EMA
/// weights and these counters, in one atomically written file so that a kill between the run
/// directory's files never pairs the weights of one step with the moments of another.
/// Tensors: `param.{name}`, `m.{name}`, `v.{name}`, `ema.{name}`; metadata `dmae_train_state`
/// (JSON of this struct).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateMeta {
    /// Optimiser steps done.
    pub step: u64,
    /// Micro-batches consumed (= step × accum-steps).
    pub micro_step: u64,
    /// Epoch of the next micro-batch.
    pub epoch: u64,
    /// Batch index inside `epoch` of the next micro-batch.
    pub batch_in_epoch: u64,
    /// The run's seed.
    pub seed: u64,
}

fn save_state(path: &Path, opt: &Optimizer, meta: &StateMeta) -> Result<()> {
    let cpu = Device::Cpu;
    let mut data: Vec<(String, Tensor)> = Vec::new();
    for (p, (m, v)) in opt.params.iter().zip(opt.adamw.moments()?) {
        data.push((
            format!("param.{}", p.name),
            p.var.as_tensor().to_device(&cpu)?,
        ));
        data.push((
            format!("m.{}", p.name),
            m.to_device(&cpu)?.reshape(p.var.dims())?,
        ));
        data.push((
            format!("v.{}", p.name),
            v.to_device(&cpu)?.reshape(p.var.dims())?,
        ));
    }
    if let Some((_, ema)) = &opt.ema {
        for p in ema {
            data.push((
                format!("ema.{}", p.name),
                p.var.as_tensor().to_device(&cpu)?,
            ));
        }
    }
    let meta =
        std::collections::HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(meta)?)]);
    let bytes = safetensors::serialize(data.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))?;
    dmae_models::write_atomic(path, &bytes)?;
    Ok(())
}

/// Loads the resume record at `path` into the optimiser (weights, moments, EMA); the caller
/// refreshes any working copy.
pub fn load_state(path: &Path, opt: &mut Optimizer) -> Result<StateMeta> {
    let what = || {
        format!(
            "--resume: {} is not a readable training state",
            path.display()
        )
    };
    let bytes = std::fs::read(path).with_context(what)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(what)?;
    let meta: StateMeta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .with_context(what)?
        .with_context(|| format!("{}: no `{STATE_KEY}` metadata", what()))?;
    let device = opt
        .params
        .first()
        .map_or(Device::Cpu, |p| p.var.device().clone());
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &device).with_context(what)?;
    let mut take = |name: String, like: &Var| -> Result<Tensor> {
        let t = tensors
            .remove(&name)
            .with_context(|| format!("{}: missing tensor {name} (a different model?)", what()))?;
        if t.dims() != like.dims() || t.dtype() != DType::F32 {
            bail!(
                "{}: {name} has shape {:?}, the model {:?}",
                what(),
                t.dims(),
                like.dims()
            );
        }
        Ok(t)
    };
    let mut moments = Vec::new();
    for p in &opt.params {
        p.var.set(&take(format!("param.{}", p.name), &p.var)?)?;
        let m = take(format!("m.{}", p.name), &p.var)?.flatten_all()?;
        let v = take(format!("v.{}", p.name), &p.var)?.flatten_all()?;
        moments.push((m, v));
    }
    if let Some((_, ema)) = &opt.ema {
        for p in ema {
            p.var.set(&take(format!("ema.{}", p.name), &p.var)?)?;
        }
    }
    opt.adamw
        .load_state(meta.step, &moments)
        .with_context(what)?;
    Ok(meta)
}

/// Where a training command writes and what it was asked: a fresh run directory and the
/// `--config` file, or with `--resume` the newest run (or `--out`) and its own `config.toml`.
pub struct RunSetup<T> {
    /// The run directory.
    pub dir: PathBuf,
    /// Whether the run continues from its resume record.
    pub resuming: bool,
    /// The `[model]` and command tables (empty without a file).
    pub file: ConfigFile,
    /// The flags, with the file's table in front of the command line.
    pub args: T,
}

/// Opens the run of command `section` (`train` or `finetune`): `args` as parsed, with its
/// `--config`, `--out` and `--resume`, and `argv`, its command line (parsed again behind the
/// file's table: flags still win over the run's own settings on resume).
pub fn setup<T: clap::Parser>(
    section: &str,
    args: T,
    config: Option<&Path>,
    run: &LoopArgs,
    argv: &[std::ffi::OsString],
) -> Result<RunSetup<T>> {
    let prefix = if section == "train" {
        String::new()
    } else {
        format!("{section}-")
    };
    let (dir, resuming) = if run.resume {
        (run_dir::resume_dir(run.out.as_deref(), STATE_FILE)?, true)
    } else {
        (run_dir::fresh_dir(run.out.as_deref(), &prefix)?, false)
    };
    let file = match (config, resuming) {
        (Some(_), true) => bail!(Usage(
            "--config: not with --resume (the run's own config.toml is used; flags still override it)".into()
        )),
        (_, true) => ConfigFile::read(&dir.join("config.toml"), section)?,
        (Some(p), false) => ConfigFile::read(p, section)?,
        (None, false) => ConfigFile::default(),
    };
    let args = if file.train.is_some() {
        settings::layered(section, &file, argv)?
    } else {
        args
    };
    Ok(RunSetup {
        dir,
        resuming,
        file,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_losses_report_the_first_non_finite_step() -> Result<()> {
        let dev = Device::Cpu;
        let mut p = PendingLosses::default();
        assert_eq!(p.sync()?, None);
        assert_eq!(p.take_mean(), None);
        p.push(1, Tensor::new(1f32, &dev)?);
        assert_eq!(p.sync()?, None);
        p.push(2, Tensor::new(3f32, &dev)?);
        assert_eq!(p.sync()?, None);
        assert_eq!(p.take_mean(), Some(2.0));
        p.push(3, Tensor::new(1f32, &dev)?);
        p.push(4, Tensor::new(f32::NAN, &dev)?);
        p.push(5, Tensor::new(f32::INFINITY, &dev)?);
        assert_eq!(p.sync()?, Some(4));
        Ok(())
    }
}
