//! The one training loop of `dmae train` and `dmae finetune`: data, gradient accumulation,
//! clipping, AdamW with the lr schedule, EMA, logging, checkpoints, `--resume` and Ctrl-C. The
//! command plugs in a [`Task`]: the loss and gradients of a micro-batch, what to save, and what
//! to look at now and then.
//!
//! Micro-batch `k` (counted from the start of the run) is batch `k mod B` of epoch `k div B`
//! (B = full batches per epoch, the shuffle seeded by `(seed, epoch)`), and the task draws its
//! randomness from `(seed, k)`: everything a step does is a function of `(seed, k)` and the
//! weights, which is what makes `--resume` reproduce an uninterrupted run exactly.
//!
//! What a run directory holds after any stop (docs/reliability.md, "the binary"): each save
//! writes the resume record ([`STATE_FILE`]) first and the model files second, each atomically,
//! and a resumed run writes the model files again from the record; a step whose loss or
//! gradient is not finite is never applied; the directory is locked
//! ([`crate::run_dir::RunDir`]); Ctrl-C stops after the step with a checkpoint (exit 130), and a
//! second Ctrl-C stops at once, but never in the middle of a save ([`EXIT_UNSAVED`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
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
use crate::run_dir::{self, MetricsLog, MetricsRow, Progress, RunDir};
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
    /// The settings a resumed run keeps ([`RunSetup::settings`]), stored in the resume record.
    pub settings: BTreeMap<String, String>,
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
    if start > 0 {
        // The record is written before the model files at each save: if the last save was cut
        // between the two, the model files are a step behind. Writing them from the record
        // makes the pair one step again. Under the save mutex, as every save.
        let _saving = active();
        task.save(dir)?;
    }
    started(start);
    let mut metrics = MetricsLog::open(dir)?;
    let progress = Progress::new(start, total);
    let mut data = DataPosition::at(loader, start * accum)?;
    let mut losses: Vec<f64> = Vec::new();
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
        let mut loss = loss.context("no loss")?;
        if accum > 1 {
            let f = Tensor::new(1.0 / accum as f32, &vars[0].device().clone())?;
            optim::scale_grads(&mut grads, &vars, &f)?;
            loss = (loss / accum as f64)?;
        }
        // One read-back per step, before anything is updated: a step whose loss or gradient
        // norm is not finite is not applied, so the weights, AdamW's moments and the EMA stay
        // those of the last good step. The f32 norm overflows whenever a squared gradient would,
        // which is what put +inf into AdamW's second moments before.
        let mut norm = optim::global_grad_norm(&grads, &vars)?;
        let read = Tensor::stack(
            &[loss.to_dtype(DType::F32)?.reshape(())?, norm.reshape(())?],
            0,
        )?
        .to_vec1::<f32>()?;
        let loss_value = read[0];
        let mut norm_value = f64::from(read[1]);
        if !loss_value.is_finite() {
            progress.finish();
            return Err(non_finite_error(step + 1, loss_value, norm_value, dir));
        }
        if !norm_value.is_finite() {
            // Finite gradients whose f32 sum of squares overflows have a true norm: the message
            // says how large, and `--clip-grad` can still bring them down.
            norm_value = scaled_grad_norm(&grads, &vars)?;
            if !(norm_value <= f64::from(f32::MAX) && plan.clip_grad.is_some()) {
                progress.finish();
                return Err(non_finite_error(step + 1, loss_value, norm_value, dir));
            }
            norm = Tensor::new(norm_value as f32, vars[0].device())?;
        }
        if let Some(c) = plan.clip_grad {
            let f = optim::clip_factor(&norm, c)?;
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
        STEP.store(step, Ordering::SeqCst);
        losses.push(loss_value as f64);
        progress.set_step(step);

        // Read the flag once per step: a second read could see a Ctrl-C that arrived after the
        // save decision and leave without the checkpoint the message promises.
        let interrupt = PRESSED.load(Ordering::SeqCst);
        let stop = interrupt || step == plan.stop_at;
        let eval_now = step == total || stop || plan.eval_every.is_some_and(|k| step % k == 0);
        if step % plan.log_every == 0 || step == total || stop || eval_now {
            let now = Instant::now();
            let secs = now.duration_since(last_log.0).as_secs_f64().max(1e-9);
            let mut row = MetricsRow {
                step,
                epoch: (micro - 1) / per_epoch,
                loss: (!losses.is_empty())
                    .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
                lr: Some(lr),
                img_per_s: Some(((step - last_log.1) * accum * plan.batch_size) as f64 / secs),
                elapsed_s: progress.elapsed(),
                ..MetricsRow::default()
            };
            losses.clear();
            if eval_now {
                if let Some((top1, val_loss)) = task.evaluate()? {
                    (row.val_top1, row.val_loss) = (Some(top1), Some(val_loss));
                }
            }
            last_log = (Instant::now(), step);
            // Every file of the run directory is written under the lock, so that a second
            // Ctrl-C (which waits for it) never leaves a temporary behind.
            let writing = active();
            metrics.write(&row)?;
            drop(writing);
            progress.log(&row);
        }
        if step % plan.save_every == 0 || step == total || stop {
            if !all_finite(&vars)? {
                progress.finish();
                return Err(anyhow::anyhow!(
                    "non-finite weights after step {step} (finite loss and gradients: an lr or \
                     weight decay too large?); last good checkpoint: {}",
                    last_checkpoint(dir)
                ));
            }
            let meta = StateMeta {
                step,
                micro_step: micro,
                epoch: micro / per_epoch,
                batch_in_epoch: micro % per_epoch,
                seed: plan.seed,
                settings: plan.settings.clone(),
            };
            // Held while the pair and the figures are written: a second Ctrl-C waits for it
            // (see `on_ctrl_c`).
            let mut active = active();
            save_state(&dir.join(STATE_FILE), opt, &meta)?;
            task.save(dir)?;
            if let Some(a) = active.as_mut() {
                a.saved = Some(step);
            }
            run_dir::write_figures(dir)?;
            drop(active);
        }
        if plan.sample_every > 0 && (step % plan.sample_every == 0 || step == total) {
            // A second Ctrl-C waits for the preview (a few seconds of sampling) and its files.
            let writing = active();
            task.preview(dir, step)?;
            drop(writing);
        }
        if interrupt && step < total {
            progress.finish();
            return Err(
                Interrupted(interrupted_message(step, total, dir, &plan.resume_hint)).into(),
            );
        }
    }
    progress.finish();
    Ok(step)
}

fn interrupted_message(step: u64, total: u64, dir: &Path, hint: &str) -> String {
    format!(
        "interrupted at step {step}/{total}; checkpoint saved in {}; continue with: {hint}",
        dir.display()
    )
}

/// "step N in DIR" for the last checkpoint this process knows of, or that there is none.
fn last_checkpoint(dir: &Path) -> String {
    match active().as_ref().and_then(|a| a.saved) {
        Some(s) => format!("step {s} in {}", dir.display()),
        None => "none (no checkpoint written yet)".into(),
    }
}

fn non_finite_error(at: u64, loss: f32, norm: f64, dir: &Path) -> anyhow::Error {
    let what = if !loss.is_finite() {
        "non-finite loss".to_string()
    } else if norm.is_finite() {
        format!(
            "gradient norm {norm:.3e} overflows f32 (AdamW's moments would become infinite; \
             --clip-grad bounds it)"
        )
    } else {
        "non-finite gradient".to_string()
    };
    anyhow::anyhow!(
        "{what} at step {at} (loss {loss:e}); the step was not applied; last good checkpoint: {}",
        last_checkpoint(dir)
    )
}

/// The global gradient norm computed as `m·‖g/m‖` (m the largest |g|) in f64, which does not
/// overflow where the f32 sum of squares does; NaN or infinite when a gradient is. Only for the
/// rare step whose plain norm overflowed (it reads every gradient twice).
fn scaled_grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let grads: Vec<Tensor> = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()))
        .map(|g| g.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let mut m = 0f32;
    for g in &grads {
        let a = g.abs()?.max_all()?.to_scalar::<f32>()?;
        if !a.is_finite() {
            return Ok(f64::NAN);
        }
        m = m.max(a);
    }
    if m == 0.0 {
        return Ok(0.0);
    }
    let mut sum = 0f64;
    for g in &grads {
        sum += f64::from((g / f64::from(m))?.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(f64::from(m) * sum.sqrt())
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

/// Exit code of a run stopped at once by a second Ctrl-C while steps after its last checkpoint
/// were not saved: unlike 130 it promises no checkpoint of the last step. The run directory is
/// still consistent (its last checkpoint pair, or nothing for a run that had none: such a fresh
/// directory is removed), and `--resume` continues from it.
pub const EXIT_UNSAVED: u8 = 3;

/// The run this process trains, as the Ctrl-C handler and `main` see it. The mutex is held while
/// a checkpoint pair is written.
struct Active {
    run: RunDir,
    /// The training loop has started (a resumed run's record is loaded).
    started: bool,
    /// The step of the checkpoint pair on disk, if any.
    saved: Option<u64>,
    hint: String,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);
/// Ctrl-C was pressed: the loop stops after its step, with a checkpoint.
static PRESSED: AtomicBool = AtomicBool::new(false);
/// Optimiser steps done.
static STEP: AtomicU64 = AtomicU64::new(0);

fn active() -> MutexGuard<'static, Option<Active>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `run` the process's run (for the Ctrl-C handler and [`discard_unfinished`]) and
/// installs the Ctrl-C handler.
fn register(run: RunDir, hint: String) {
    *active() = Some(Active {
        run,
        started: false,
        saved: None,
        hint,
    });
    // Failing to install (a handler already set) only loses the graceful stop.
    let _ = ctrlc::set_handler(on_ctrl_c);
}

/// The loop starts at `step` (a resumed run: its record's step, which is on disk).
fn started(step: u64) {
    STEP.store(step, Ordering::SeqCst);
    if let Some(a) = active().as_mut() {
        a.started = true;
        a.saved = (step > 0).then_some(step);
    }
}

/// A failed command's cleanup: a fresh run that stopped before its first checkpoint leaves
/// nothing behind (see [`RunDir::discard_if_unfinished`]).
pub fn discard_unfinished() {
    if let Some(a) = active().as_ref() {
        a.run.discard_if_unfinished(STATE_FILE);
    }
}

/// The first Ctrl-C asks the loop to stop after its step, with a checkpoint (exit 130). The
/// second stops at once, but never in the middle of writing the checkpoint pair: it waits for a
/// save in progress. It exits 130 when the last step done is saved, else [`EXIT_UNSAVED`].
fn on_ctrl_c() {
    if !PRESSED.swap(true, Ordering::SeqCst) {
        return;
    }
    let guard = match ACTIVE.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        // A save in progress: wait for it.
        Err(TryLockError::WouldBlock) => active(),
    };
    let Some(a) = guard.as_ref() else {
        exit_once(i32::from(EXIT_UNSAVED), "stopped by a second Ctrl-C");
    };
    let step = STEP.load(Ordering::SeqCst);
    let dir = a.run.path.display();
    let (code, msg) = match (a.started, a.saved) {
        (true, Some(s)) if s == step => (
            130,
            format!(
                "interrupted at step {step}; checkpoint saved in {dir}; continue with: {}",
                a.hint
            ),
        ),
        (_, Some(s)) => (
            i32::from(EXIT_UNSAVED),
            format!(
                "stopped at once by a second Ctrl-C at step {step}: steps {}..{step} were not \
                 saved; the checkpoint in {dir} is of step {s}; continue with: {}",
                s + 1,
                a.hint
            ),
        ),
        (false, None) if !a.run.is_fresh() => (
            130,
            format!(
                "stopped by a second Ctrl-C before training resumed; {dir} is unchanged; \
                 continue with: {}",
                a.hint
            ),
        ),
        (_, None) => {
            let removed = a.run.discard_if_unfinished(STATE_FILE);
            (
                i32::from(EXIT_UNSAVED),
                format!(
                    "stopped at once by a second Ctrl-C before the first checkpoint: nothing was \
                     saved{}",
                    if removed {
                        format!(" ({dir} removed)")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    };
    exit_once(code, &msg);
}

/// Prints `msg` on stderr and exits with `code`, once per process: the Ctrl-C handler and the
/// loop can both decide to stop, and the second to arrive waits here while the first exits.
pub fn exit_once(code: i32, msg: &str) -> ! {
    static EXIT: Mutex<()> = Mutex::new(());
    let _g = EXIT.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!("{msg}");
    std::process::exit(code)
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
    /// The settings the run keeps across `--resume` ([`RunSetup::settings`]): a record whose
    /// settings differ from its run's `config.toml` is another run's. (Records written before
    /// this field have none and are not checked.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
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
///
/// Fails, naming the setting and both values, when the record was written by a run with other
/// `settings`.
pub fn load_state(
    path: &Path,
    opt: &mut Optimizer,
    settings: &BTreeMap<String, String>,
) -> Result<StateMeta> {
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
    for (key, was) in &meta.settings {
        if let Some(now) = settings.get(key).filter(|now| !same_setting(key, was, now)) {
            bail!(
                "--resume: {} belongs to another run: it was written with {key} = {}, the run's \
                 config.toml has {key} = {}",
                path.display(),
                shorten(was),
                shorten(now)
            );
        }
    }
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

/// The key of the model config (JSON) among a run's kept settings.
pub const MODEL_SETTING: &str = "[model]";

/// Whether two values of kept setting `key` are the same. Model configs are compared as
/// configs, not as text: a field added to `ModelConfig` later (with its serde default) does not
/// make an older run's record look like another run's.
fn same_setting(key: &str, a: &str, b: &str) -> bool {
    use dmae_models::ModelConfig;
    a == b
        || key == MODEL_SETTING
            && matches!(
                (
                    serde_json::from_str::<ModelConfig>(a),
                    serde_json::from_str::<ModelConfig>(b),
                ),
                (Ok(x), Ok(y)) if x == y
            )
}

/// Where a training command writes and what it was asked: a fresh run directory and the
/// `--config` file, or with `--resume` the newest run (or `--out`) and its own `config.toml`.
pub struct RunSetup<T> {
    /// The run directory (locked by this process until it exits).
    pub dir: PathBuf,
    /// Whether the run continues from its resume record.
    pub resuming: bool,
    /// The `[model]` and command tables (empty without a file).
    pub file: ConfigFile,
    /// The flags, with the file's table in front of the command line.
    pub args: T,
    /// The settings a resumed run keeps, `key -> value`: the command's `fixed` flags, plus what
    /// the command adds (its model config). Stored in the resume record, checked on resume.
    pub settings: BTreeMap<String, String>,
}

/// Opens the run of command `section` (`train` or `finetune`): `args` as parsed, with its
/// `--config`, `--out` and `--resume`, and `argv`, its command line (parsed again behind the
/// file's table: flags still win over the run's own settings on resume, except the `fixed`
/// ones, which a resumed run keeps: a different value is a usage error naming both values).
///
/// The directory is locked and registered for the Ctrl-C handler; a fresh one that ends before
/// its first checkpoint is removed by [`discard_unfinished`].
pub fn setup<T: clap::Parser + Serialize>(
    section: &str,
    args: T,
    config: Option<&Path>,
    run: &LoopArgs,
    argv: &[std::ffi::OsString],
    fixed: &[&str],
) -> Result<RunSetup<T>> {
    if run.resume && config.is_some() {
        bail!(Usage(
            "--config: not with --resume (the run's own config.toml is used; flags still override it)".into()
        ));
    }
    let prefix = if section == "train" {
        String::new()
    } else {
        format!("{section}-")
    };
    let resuming = run.resume;
    let opened = if resuming {
        run_dir::resume_dir(run.out.as_deref(), STATE_FILE)?
    } else {
        run_dir::fresh_dir(run.out.as_deref(), &prefix, STATE_FILE)?
    };
    let dir = opened.path.clone();
    register(
        opened,
        format!("dmae {section} --resume --out {}", dir.display()),
    );
    let file = match config {
        _ if resuming => ConfigFile::read(&dir.join("config.toml"), section)?,
        Some(p) => ConfigFile::read(p, section)?,
        None => ConfigFile::default(),
    };
    let args = if file.train.is_some() {
        settings::layered(section, &file, argv)?
    } else {
        args
    };
    let settings = kept_settings(&args, fixed)?;
    if resuming {
        // The run's own values: its config.toml alone.
        let was: T = settings::layered(section, &file, &[])?;
        let was = kept_settings(&was, fixed)?;
        for (key, now) in &settings {
            let before = was.get(key).map_or("(unset)", String::as_str);
            if before != now {
                bail!(Usage(format!(
                    "--{key} {}: the run in {} has {key} {}; a resumed run keeps its {} (start a \
                     new run with another --out to change them)",
                    shorten(now),
                    dir.display(),
                    shorten(before),
                    fixed.join(", ")
                )));
            }
        }
    }
    Ok(RunSetup {
        dir,
        resuming,
        file,
        args,
        settings,
    })
}

/// The values of the flags `keys` in `args`, as text (strings bare, other values as TOML).
fn kept_settings<T: Serialize>(args: &T, keys: &[&str]) -> Result<BTreeMap<String, String>> {
    let value = toml::Value::try_from(args).context("settings to TOML")?;
    Ok(keys
        .iter()
        .map(|&k| {
            let v = match value.get(k) {
                Some(toml::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "(unset)".into(),
            };
            (k.to_string(), v)
        })
        .collect())
}

/// On `--resume`: refuses a model config other than the run's (`--decoder`, `--mae` or a
/// diffusion flag given again with another value; `--model` is among the kept flags), naming
/// the flag, the field and both values.
pub fn check_resumed_model(
    dir: &Path,
    was: &dmae_models::ModelConfig,
    now: &dmae_models::ModelConfig,
) -> Result<()> {
    if was == now {
        return Ok(());
    }
    let (mut a, mut b) = (toml::Value::try_from(was)?, toml::Value::try_from(now)?);
    // A flag that changes several fields (`--mae` the decoder's kind too, `--target` the CLIP
    // table) is named by the field that says what it chose: compare that one alone first.
    for (table, key) in [("decoder", "masked_input"), ("diffusion", "target")] {
        let (x, y) = (only(&a, table, key), only(&b, table, key));
        if x != y {
            (a, b) = (x, y);
            break;
        }
    }
    let (field, before, after) =
        first_difference(&a, &b, "").unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
    let flag = match field.as_str() {
        "decoder.kind" => "--decoder",
        "decoder.masked_input" | "decoder.time_conditioning" => "--mae",
        "diffusion.schedule" => "--noise-schedule",
        "diffusion.rho" => "--rho",
        "diffusion.timesteps" => "--timesteps",
        "diffusion.prediction" => "--prediction",
        "diffusion.data_range" => "--data-range",
        "diffusion.loss_weighting" => "--loss-weighting",
        "diffusion.min_snr_gamma" => "--min-snr-gamma",
        "diffusion.target" => "--target",
        "diffusion.clip.model" => "--clip-model",
        "diffusion.clip.weight" => "--clip-weight",
        _ => MODEL_SETTING,
    };
    bail!(Usage(format!(
        "{flag}: the run in {} has {field} = {before}, this command asks for {after}; a resumed \
         run keeps its model (start a new run with another --out to change it)",
        dir.display()
    )))
}

/// `{ table = { key = ... } }` of a serialised model config.
fn only(config: &toml::Value, table: &str, key: &str) -> toml::Value {
    let field = config.get(table).and_then(|t| t.get(key));
    let inner: toml::Table = field
        .map(|v| (key.to_string(), v.clone()))
        .into_iter()
        .collect();
    toml::Value::Table(
        [(table.to_string(), toml::Value::Table(inner))]
            .into_iter()
            .collect(),
    )
}

/// The first dotted key whose values differ, with both values as TOML.
fn first_difference(
    a: &toml::Value,
    b: &toml::Value,
    at: &str,
) -> Option<(String, String, String)> {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &here),
                    (p, q) => Some((
                        here,
                        p.map_or("(unset)".into(), ToString::to_string),
                        q.map_or("(unset)".into(), ToString::to_string),
                    )),
                }
            })
        }
        _ if a == b => None,
        _ => Some((at.to_string(), a.to_string(), b.to_string())),
    }
}

/// A value for a message: at most 80 characters.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(77).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_model_settings_compare_as_configs() {
        let c = dmae_models::ModelConfig::mnist();
        let json = serde_json::to_string(&c).unwrap();
        // A record written before a field existed: the field takes its default.
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["diffusion"].as_object_mut().unwrap().remove("rho");
        let older = v.to_string();
        assert!(same_setting(MODEL_SETTING, &older, &json));
        assert!(!same_setting("batch-size", "32", "16"));
        let mut other = c.clone();
        other.encoder.depth += 1;
        let other = serde_json::to_string(&other).unwrap();
        assert!(!same_setting(MODEL_SETTING, &other, &json));
    }

    #[test]
    fn model_differences_name_the_flag_and_both_values() {
        let was = dmae_models::ModelConfig::mnist();
        let dir = Path::new("runs/x");
        assert!(check_resumed_model(dir, &was, &was.clone()).is_ok());
        let mut now = was.clone();
        now.diffusion.timesteps = 40;
        let e = check_resumed_model(dir, &was, &now).unwrap_err();
        assert!(e.is::<Usage>());
        let e = e.to_string();
        assert!(
            e.starts_with("--timesteps: ") && e.contains("= 1000") && e.contains("for 40"),
            "{e}"
        );
        let e = check_resumed_model(dir, &was, &was.clone().into_mae())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--mae: "), "{e}");
        let mut now = was.clone();
        now.diffusion.prediction = dmae_diffusion::Prediction::Eps;
        let e = check_resumed_model(dir, &was, &now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--prediction: "), "{e}");
        let mut now = was.clone();
        now.diffusion.target = dmae_models::Target::PixelsClip;
        now.diffusion.clip = Some(dmae_models::ClipTarget {
            model: "t".into(),
            dim: 8,
            features: Default::default(),
            weight: 1.0,
        });
        let e = check_resumed_model(dir, &was, &now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--target: "), "{e}");
        let mut now = was.clone();
        now.encoder.dim = 8;
        let e = check_resumed_model(dir, &was, &now)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("[model]: ") && e.contains("encoder.dim"),
            "{e}"
        );
        assert_eq!(shorten(&"x".repeat(300)).len(), 80);
    }
}
