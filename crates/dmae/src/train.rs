//! `dmae train`: DiffMAE (or, with `--mae`, MAE) pre-training (paper § 3; MAE's
//! `main_pretrain.py` recipe): AdamW (β 0.9/0.95, weight decay 0.05 off norms, biases and
//! tokens), linear lr scaling by batch/256, linear warm-up then cosine decay, optional
//! global-norm clipping, gradient accumulation, optional weight EMA, and bf16 compute with f32
//! master weights on CUDA.
//!
//! One optimiser step consumes `accum_steps` micro-batches; micro-batch `k` (counted from the
//! start of the run) is batch `k mod B` of epoch `k div B` (B = full batches per epoch, the
//! shuffle seeded by `(seed, epoch)`) and draws its mask, timesteps and noise from
//! `RngKey::new(seed, k)`. Everything a step does is therefore a function of `(seed, k)` and the
//! weights, which is what makes `--resume` reproduce an uninterrupted run exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use dmae_core::{AdamW, AdamWConfig};
use dmae_data::{Batch, Channels, Epoch, Loader, Split};
use dmae_diffusion::RngKey;
use dmae_models::{DecoderKind, DiffMae, ModelConfig, PretrainMask, Pretraining};
use serde::{Deserialize, Serialize};

use crate::common::{
    non_negative, parse_device, positive, train_loader, unit_open, DataSpec, Interrupted,
};
use crate::run_dir::{self, MetricsLog, MetricsRow, Progress};
use crate::schedule::{self, PendingLosses};
use crate::settings::{self, ConfigFile};

/// Default optimiser steps of `dmae train` with no arguments. The mnist preset (6.5M
/// parameters) at batch 64 takes about 0.66 s per step on 2 idle cores (measured, README
/// "dmae train"), so 240 steps take about 3 minutes; the loss is near its plateau by then.
pub const DEFAULT_STEPS: u64 = 240;

/// Validation inputs in each `samples/` grid.
const PREVIEW_COUNT: usize = 8;

/// Inpaints the preview inputs with the pre-training mask (a fixed draw) and writes the grid
/// [masked | sample | ground truth], one row each: DDIM 20 steps for DiffMAE, one call for MAE.
/// Clips show the frames of the first clip.
fn write_samples(
    model: &DiffMae,
    pre: &Pretraining,
    preview: &Option<Tensor>,
    seed: u64,
    path: &Path,
) -> Result<()> {
    let Some(images) = preview else {
        return Ok(());
    };
    let config = model.config();
    let n = images.dim(0)?;
    let key = RngKey::new(seed, u64::MAX);
    let mask = pre.mask.sample(config, n, key, images.device())?;
    let sampler = crate::sample::build_sampler(config, None, 20, 0.0)?;
    let out = crate::sample::inpaint(model, images, &mask, &sampler, key, false)?;
    let rows: Vec<Tensor> = [&out.masked_input, &out.sample, &out.input]
        .into_iter()
        .map(|t| {
            if config.is_video() {
                // (N, C, T, H, W) -> the T frames of clip 0 as (T, C, H, W).
                t.get(0)?.permute((1, 0, 2, 3))?.contiguous()
            } else {
                Ok(t.clone())
            }
        })
        .collect::<candle_core::Result<_>>()?;
    crate::images::write_grid(path, &rows)
}

/// `dmae train` flags. Every training flag can also come from the `[train]` table of
/// `--config` (same names); flags win.
#[derive(Parser, Debug, Clone, Default)]
pub struct Args {
    /// TOML file with a `[model]` table (ModelConfig fields over the preset) and a `[train]`
    /// table (the flags below, same names).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Data SPEC: bundled, mnist:DIR, cifar10:DIR, folder:DIR, frames:DIR, moving-mnist[:opts].
    #[arg(long, value_name = "SPEC")]
    pub data: Option<String>,
    /// Model preset: mnist (default), mnist-small, moving-mnist, tiny, small, base, large, huge.
    #[arg(long, value_name = "PRESET")]
    pub model: Option<String>,
    /// Decoder design (paper § 3.2): joint, cross, cross-self.
    #[arg(long, value_name = "KIND")]
    pub decoder: Option<String>,
    /// Plain MAE: mask tokens instead of noisy patches, no time conditioning.
    #[arg(long)]
    pub mae: bool,
    /// Optimiser steps (default 240: about 3 minutes for the mnist preset on 2 idle CPU cores).
    #[arg(long, value_name = "N", conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Passes over the training data instead of --steps.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Images per micro-batch.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: Option<u64>,
    /// Base learning rate per 256 images: lr = X × batch-size × accum-steps / 256 (MAE's blr).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub lr: Option<f64>,
    /// Linear warm-up steps (default: 5% of the steps, at most 100).
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay on weight matrices (0 on norms, biases and tokens).
    #[arg(long, value_name = "X", value_parser = non_negative)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to X (off by default, as MAE pre-training).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub clip_grad: Option<f64>,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub accum_steps: Option<u64>,
    /// Keep an exponential moving average of the weights with this decay (ema.safetensors).
    #[arg(long, value_name = "DECAY", value_parser = unit_open)]
    pub ema: Option<f64>,
    /// Fraction of patches masked (default: 0.75 for images, MAE's; 0.9 tubes for video).
    #[arg(long, value_name = "R", value_parser = unit_open)]
    pub mask_ratio: Option<f64>,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Compute dtype: f32, or bf16 (CUDA only; f32 master weights).
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// Seed of the initialisation, the data order and every mask/noise draw.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Run directory (default runs/<UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out DIR (or the newest under runs/) from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub save_every: Option<u64>,
    /// Read the loss back and log every N steps.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: Option<u64>,
    /// Write an inpainting grid of validation images to samples/ every N steps and at the end
    /// (default 200; 0 turns it off).
    #[arg(long, value_name = "N")]
    pub sample_every: Option<u64>,
    /// Stop after step N with a checkpoint, as if interrupted; the lr schedule still follows
    /// --steps, and --resume continues (splits a run across job time limits).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_at: Option<u64>,
}

/// The resolved training settings (the `[train]` table of `config.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Data SPEC.
    pub data: String,
    /// Model preset the `[model]` table starts from.
    pub model: String,
    /// Decoder kind override (joint, cross, cross-self).
    pub decoder: Option<String>,
    /// Plain MAE.
    pub mae: bool,
    /// Optimiser steps.
    pub steps: Option<u64>,
    /// Epochs (instead of steps).
    pub epochs: Option<u64>,
    /// Micro-batch size.
    pub batch_size: u64,
    /// Base learning rate per 256 images.
    pub lr: f64,
    /// Warm-up steps (None: 5% of the steps, at most 100).
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global-norm clipping threshold.
    pub clip_grad: Option<f64>,
    /// Gradient accumulation.
    pub accum_steps: u64,
    /// EMA decay.
    pub ema: Option<f64>,
    /// Mask ratio; `None`: the model's default (0.75 for images, 0.9 tubes for video).
    pub mask_ratio: Option<f64>,
    /// Device.
    pub device: String,
    /// Compute dtype.
    pub dtype: String,
    /// Seed.
    pub seed: u64,
    /// CPU threads (None: all cores).
    pub threads: Option<u64>,
    /// Checkpoint cadence.
    pub save_every: u64,
    /// Log cadence.
    pub log_every: u64,
    /// Sample-grid cadence (0: off).
    pub sample_every: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            data: "bundled".into(),
            model: "mnist".into(),
            decoder: None,
            mae: false,
            steps: None,
            epochs: None,
            batch_size: 64,
            // MAE's blr is 1.5e-4 at an effective batch of 4096 (lr 2.4e-3). Our default batch
            // is 64, where the linear rule would give 3.75e-5: far too slow for a few hundred
            // steps. 4e-3 gives lr 1e-3 at batch 64, which learns the digits in minutes
            // (README "dmae train") and stays stable without clipping.
            lr: 4e-3,
            warmup_steps: None,
            weight_decay: 0.05,
            clip_grad: None,
            accum_steps: 1,
            ema: None,
            mask_ratio: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            seed: 0,
            threads: None,
            save_every: 200,
            log_every: 10,
            sample_every: 200,
        }
    }
}

impl TrainSettings {
    /// Applies the flags over `self` (file values or defaults).
    pub fn apply(&mut self, a: &Args) {
        macro_rules! over {
            ($($f:ident),*) => {$(if let Some(v) = &a.$f { self.$f = v.clone().into(); })*};
        }
        over!(
            data,
            model,
            batch_size,
            lr,
            weight_decay,
            accum_steps,
            mask_ratio,
            device,
            dtype,
            seed,
            save_every,
            log_every,
            sample_every
        );
        if a.decoder.is_some() {
            self.decoder = a.decoder.clone();
        }
        if a.mae {
            self.mae = true;
        }
        if a.steps.is_some() {
            self.steps = a.steps;
            self.epochs = None;
        }
        if a.epochs.is_some() {
            self.epochs = a.epochs;
            self.steps = None;
        }
        for (slot, v) in [(&mut self.clip_grad, a.clip_grad), (&mut self.ema, a.ema)] {
            if v.is_some() {
                *slot = v;
            }
        }
        if a.warmup_steps.is_some() {
            self.warmup_steps = a.warmup_steps;
        }
        if a.threads.is_some() {
            self.threads = a.threads;
        }
    }

    /// Range checks for values that came from a file (flags are checked by clap).
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: u64| -> Result<()> {
            if v == 0 {
                bail!("{name}: expected a positive integer, got 0");
            }
            Ok(())
        };
        pos("batch-size", self.batch_size)?;
        pos("accum-steps", self.accum_steps)?;
        pos("save-every", self.save_every)?;
        pos("log-every", self.log_every)?;
        if self.steps.is_some() && self.epochs.is_some() {
            bail!("steps and epochs: give one of them, not both");
        }
        if let Some(s) = self.steps {
            pos("steps", s)?;
        }
        if let Some(e) = self.epochs {
            pos("epochs", e)?;
        }
        if let Some(t) = self.threads {
            pos("threads", t)?;
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr: expected a positive number, got {}", self.lr);
        }
        schedule::check_range("weight-decay", self.weight_decay, 0.0, f64::MAX)?;
        if let Some(c) = self.clip_grad {
            if !(c.is_finite() && c > 0.0) {
                bail!("clip-grad: expected a positive number, got {c}");
            }
        }
        if let Some(e) = self.ema {
            if !(e > 0.0 && e < 1.0) {
                bail!("ema: expected a decay strictly between 0 and 1, got {e}");
            }
        }
        if let Some(r) = self.mask_ratio {
            if !(r > 0.0 && r < 1.0) {
                bail!("mask-ratio: expected a number strictly between 0 and 1, got {r}");
            }
        }
        if !matches!(self.dtype.as_str(), "f32" | "bf16") {
            bail!("dtype: expected f32 or bf16, got {:?}", self.dtype);
        }
        Ok(())
    }

    /// The network these settings describe: preset, then the file's `[model]` table, then
    /// `decoder` and `mae`.
    pub fn model_config(&self, file: &ConfigFile) -> Result<ModelConfig> {
        let preset = ModelConfig::preset(&self.model).map_err(|e| anyhow::anyhow!("model: {e}"))?;
        let mut c = file.model(preset)?;
        if let Some(d) = &self.decoder {
            c.decoder.kind = match d.as_str() {
                "joint" => DecoderKind::Joint,
                "cross" => DecoderKind::Cross,
                "cross-self" => DecoderKind::CrossSelf,
                other => bail!("decoder: expected joint, cross or cross-self, got {other:?}"),
            };
        }
        if self.mae {
            c = c.into_mae();
        }
        c.validate().map_err(|e| match &file.model {
            Some(_) => anyhow::anyhow!("--config {}: [model]: {e}", file.path),
            None => anyhow::anyhow!("--model {}: {e}", self.model),
        })?;
        Ok(c)
    }
}

/// Sets the worker threads of rayon and of candle's CPU pool (both read `RAYON_NUM_THREADS`).
/// Called before any tensor work; returns the thread count in effect.
pub fn set_threads(threads: Option<u64>) -> Result<usize> {
    if let Some(n) = threads {
        let got = dmae_core::configure_threads(Some(n as usize));
        if got != n as usize {
            bail!("--threads {n}: the thread pool was already running with {got} threads");
        }
    }
    Ok(rayon::current_num_threads())
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

/// Where training is in the data: the epoch being read and its batch stream.
struct DataPosition<'a> {
    loader: &'a Loader,
    epoch: u64,
    iter: Epoch,
}

impl<'a> DataPosition<'a> {
    /// Positions the stream at micro-batch `micro` (skipping the epoch's earlier batches).
    fn at(loader: &'a Loader, micro: u64) -> Result<Self> {
        let batches_per_epoch = loader.batches_per_epoch() as u64;
        if batches_per_epoch == 0 {
            bail!(
                "--batch-size {} is larger than the training set ({} samples)",
                loader.config().batch_size,
                loader.dataset().len()
            );
        }
        let epoch = micro / batches_per_epoch;
        let mut iter = loader.epoch(epoch);
        for _ in 0..micro % batches_per_epoch {
            iter.next().context("data: the epoch ended early")??;
        }
        Ok(Self {
            loader,
            epoch,
            iter,
        })
    }

    fn next(&mut self) -> Result<Batch> {
        match self.iter.next() {
            Some(b) => Ok(b?),
            None => {
                self.epoch += 1;
                self.iter = self.loader.epoch(self.epoch);
                Ok(self.iter.next().context("data: an epoch has no batch")??)
            }
        }
    }
}

/// The resume record (`optimizer.safetensors`): f32 master weights, AdamW moments, EMA weights
/// and the counters, in one atomically written file so that a kill between the run directory's
/// files never pairs the weights of one step with the moments of another.
/// Tensors: `param.{name}`, `m.{name}`, `v.{name}`, `ema.{name}`; metadata `dmae_train_state`
/// (JSON of [`StateMeta`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateMeta {
    /// Optimiser steps done.
    pub step: u64,
    /// Micro-batches consumed (= step × accum-steps).
    pub micro_step: u64,
    /// Epoch and batch-in-epoch of the next micro-batch.
    pub epoch: u64,
    /// Batch index inside `epoch` of the next micro-batch.
    pub batch_in_epoch: u64,
    /// The run's seed.
    pub seed: u64,
}

const STATE_KEY: &str = "dmae_train_state";

fn save_state(
    path: &Path,
    model: &DiffMae,
    opt: &AdamW,
    ema: Option<&DiffMae>,
    meta: &StateMeta,
) -> Result<()> {
    let cpu = Device::Cpu;
    let mut data: Vec<(String, Tensor)> = Vec::new();
    for (p, (m, v)) in model.named_params().iter().zip(opt.moments()?) {
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
    if let Some(e) = ema {
        for p in e.named_params() {
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

fn load_state(
    path: &Path,
    model: &DiffMae,
    opt: &mut AdamW,
    ema: Option<&DiffMae>,
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
    let device = model.encoder.cls_token.device();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device).with_context(what)?;
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
    for p in model.named_params() {
        p.var.set(&take(format!("param.{}", p.name), &p.var)?)?;
        let m = take(format!("m.{}", p.name), &p.var)?.flatten_all()?;
        let v = take(format!("v.{}", p.name), &p.var)?.flatten_all()?;
        moments.push((m, v));
    }
    if let Some(e) = ema {
        for p in e.named_params() {
            p.var.set(&take(format!("ema.{}", p.name), &p.var)?)?;
        }
    }
    opt.load_state(meta.step, &moments).with_context(what)?;
    Ok(meta)
}

fn copy_weights(dst: &DiffMae, src: &DiffMae) -> Result<()> {
    for (d, s) in dst.named_params().iter().zip(src.named_params()) {
        d.var.set(&s.var.as_tensor().to_dtype(d.var.dtype())?)?;
    }
    Ok(())
}

/// Sum of squares of every weight, read back: NaN/inf when any weight is non-finite. Run only
/// before checkpoints, so that a checkpoint never holds non-finite weights.
fn weights_finite(model: &DiffMae) -> Result<bool> {
    let mut acc: Option<Tensor> = None;
    for p in model.named_params() {
        let s = p.var.as_tensor().sqr()?.sum_all()?;
        acc = Some(match acc {
            Some(a) => (a + s)?,
            None => s,
        });
    }
    Ok(acc.map_or(Ok(0.0), |a| a.to_scalar::<f32>())?.is_finite())
}

/// Runs `dmae train`.
pub fn run(args: Args) -> Result<()> {
    // Resolve the settings: a resumed run starts from its own config.toml.
    let (dir, file) = if args.resume {
        let dir = run_dir::resume_dir(args.out.as_deref(), "optimizer.safetensors")?;
        if args.config.is_some() {
            bail!("--config: not with --resume (the run's own config.toml is used; flags still override it)");
        }
        let file = ConfigFile::read(&dir.join("config.toml"), "train")?;
        (Some(dir), file)
    } else {
        let file = match &args.config {
            Some(p) => ConfigFile::read(p, "train")?,
            None => ConfigFile::default(),
        };
        (None, file)
    };
    let mut s: TrainSettings = file.section("train")?;
    s.apply(&args);
    s.validate().map_err(|e| match &args.config {
        Some(p) => anyhow::anyhow!("--config {}: {e}", p.display()),
        None => anyhow::anyhow!("--{e}"),
    })?;
    let threads = set_threads(s.threads)?;
    let config = s.model_config(&file)?;
    let device = parse_device(&s.device)?;
    let compute = match (s.dtype.as_str(), &device) {
        ("bf16", Device::Cpu) => bail!(
            "--dtype bf16: needs a CUDA device (the CPU kernels are f32/f64); use --dtype f32 on the CPU"
        ),
        ("bf16", _) => DType::BF16,
        _ => DType::F32,
    };
    let spec: DataSpec = s.data.parse()?;
    if config.is_video() && spec == DataSpec::Bundled {
        bail!(
            "--data bundled: the model takes clips ({:?}); use --data moving-mnist[:opts] or frames:DIR",
            config.input_dims()
        );
    }
    let channels = if config.in_channels == 1 {
        Channels::Gray
    } else {
        Channels::Rgb
    };
    let dataset = spec.open(Split::Train, channels, config.num_frames)?;
    // A fixed handful of validation inputs for the samples/ grids (the same at every step).
    let preview = if s.sample_every > 0 {
        let inputs = crate::sample::read_data(&spec, PREVIEW_COUNT, &config, &device)?;
        let inputs: Vec<Tensor> = inputs.into_iter().map(|(_, t)| t).collect();
        Some(Tensor::stack(&inputs, 0)?)
    } else {
        None
    };
    let (loader, bpe) = train_loader(dataset, s.batch_size, s.seed)?;
    let accum = s.accum_steps;
    let total = match (s.steps, s.epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => (e * bpe / accum).max(1),
        (None, None) => DEFAULT_STEPS,
    };
    let warmup = s.warmup_steps.unwrap_or((total / 20).clamp(1, 100));
    let peak_lr = schedule::scaled_lr(s.lr, s.batch_size as usize, accum as usize);

    // Model: f32 masters (what AdamW updates and checkpoints hold); with bf16 a second copy in
    // bf16 runs forward and backward.
    let model = DiffMae::new(config.clone(), s.seed, &device)?;
    let work = match compute {
        DType::F32 => None,
        dt => {
            let w = DiffMae::new_with_dtype(config.clone(), s.seed, &device, dt)?;
            copy_weights(&w, &model)?;
            Some(w)
        }
    };
    let ema = match s.ema {
        Some(_) => {
            let e = DiffMae::new(config.clone(), s.seed, &device)?;
            copy_weights(&e, &model)?;
            Some(e)
        }
        None => None,
    };
    let master_vars: Vec<Var> = model.named_params().iter().map(|p| p.var.clone()).collect();
    let mut opt = AdamW::new(
        model.optimizer_params(s.weight_decay),
        AdamWConfig {
            lr: peak_lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: s.weight_decay,
        },
    )?;
    let mut pre = Pretraining::for_config(&config)?;
    if let Some(r) = s.mask_ratio {
        pre.mask = PretrainMask::random(&config, r)?;
    }

    let (dir, start) = match dir {
        Some(dir) => {
            let meta = load_state(
                &dir.join("optimizer.safetensors"),
                &model,
                &mut opt,
                ema.as_ref(),
            )?;
            if meta.seed != s.seed {
                bail!(
                    "--seed {}: the run in {} used seed {}",
                    s.seed,
                    dir.display(),
                    meta.seed
                );
            }
            if meta.micro_step != meta.step * accum {
                bail!(
                    "--accum-steps {accum}: the run in {} consumed {} micro-batches in {} steps",
                    dir.display(),
                    meta.micro_step,
                    meta.step
                );
            }
            if let Some(w) = &work {
                copy_weights(w, &model)?;
            }
            // Steps after the last checkpoint are repeated; drop their old rows.
            run_dir::truncate_metrics(&dir, meta.step)?;
            (dir, meta.step)
        }
        None => (run_dir::fresh_dir(args.out.as_deref(), "")?, 0),
    };
    if start >= total {
        bail!(
            "--steps {total}: the run in {} has done {start} steps already",
            dir.display()
        );
    }
    settings::write_resolved(&dir.join("config.toml"), &config, "train", &s)?;
    let ckpt = dir.join("checkpoint.safetensors");
    let stop_at = args.stop_at.unwrap_or(total).min(total);

    println!(
        "{} {} ({:.2}M parameters, {} decoder) on {} images of {}, {} steps of {} x {} images, lr {:.2e}, {}{} -> {}",
        if start > 0 { "resuming" } else { "training" },
        if config.decoder.masked_input == dmae_models::MaskedInput::MaskToken { "MAE" } else { "DiffMAE" },
        model.num_params() as f64 / 1e6,
        serde_json::to_value(config.decoder.kind)?.as_str().unwrap_or("?"),
        loader.dataset().len(),
        s.data,
        total,
        accum,
        s.batch_size,
        peak_lr,
        s.device,
        if start > 0 { format!(" from step {start}") } else { String::new() },
        dir.display()
    );

    let interrupted = interrupt_flag();
    let mut metrics = MetricsLog::open(&dir)?;
    let progress = Progress::new(start, total);
    let mut data = DataPosition::at(&loader, start * accum)?;
    let mut pending = PendingLosses::default();
    let mut step = start;
    let mut micro = start * accum;
    let mut last_log = (std::time::Instant::now(), step);
    let has_ckpt = |p: &Path| p.is_file();
    let non_finite = |at: u64| -> anyhow::Error {
        let good = if has_ckpt(&ckpt) {
            ckpt.display().to_string()
        } else {
            "none (no checkpoint written yet)".into()
        };
        anyhow::anyhow!("non-finite loss at step {at}; last good checkpoint: {good}")
    };
    let run_model = work.as_ref().unwrap_or(&model);
    // On the CPU each micro-batch is split over thread groups (dmae_core::DataParallel).
    let shards = dmae_core::DataParallel::for_device(&device, threads, s.batch_size as usize)?;
    let work_vars: Vec<Var> = run_model
        .named_params()
        .iter()
        .map(|p| p.var.clone())
        .collect();

    while step < stop_at {
        let lr = schedule::lr_at(step, total, warmup, peak_lr);
        opt.set_learning_rate(lr);
        let mut grads = None;
        let mut loss_sum: Option<Tensor> = None;
        for _ in 0..accum {
            let batch = data.next()?;
            let images = batch.images.to_device(&device)?.to_dtype(compute)?;
            let (loss, mut g) =
                pre.backward(run_model, &images, RngKey::new(s.seed, micro), &shards)?;
            micro += 1;
            if work.is_some() {
                // bf16 gradients -> f32, keyed by the master weights AdamW updates.
                for (w, m) in work_vars.iter().zip(&master_vars) {
                    if let Some(gw) = g.remove(w.as_tensor()) {
                        g.insert(m.as_tensor(), gw.to_dtype(DType::F32)?);
                    }
                }
            }
            let l = loss.to_dtype(DType::F32)?;
            loss_sum = Some(match loss_sum {
                Some(acc) => (acc + l)?,
                None => l,
            });
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    schedule::accumulate(&mut acc, g, &master_vars)?;
                    acc
                }
            });
        }
        let mut grads = grads.context("no micro-batch")?;
        if accum > 1 {
            // The mean over all accumulated micro-batches.
            let f = Tensor::new(1.0 / accum as f32, &device)?;
            schedule::scale_grads(&mut grads, &master_vars, &f)?;
            loss_sum = loss_sum.map(|l| l / accum as f64).transpose()?;
        }
        if let Some(c) = s.clip_grad {
            let norm = schedule::global_grad_norm(&grads, &master_vars)?;
            let f = schedule::clip_factor(&norm, c)?;
            schedule::scale_grads(&mut grads, &master_vars, &f)?;
        }
        opt.step(&grads)?;
        drop(grads);
        if let Some(w) = &work {
            copy_weights(w, &model)?;
        }
        if let (Some(e), Some(d)) = (&ema, s.ema) {
            let ev: Vec<Var> = e.named_params().iter().map(|p| p.var.clone()).collect();
            schedule::ema_update(&ev, &master_vars, d)?;
        }
        step += 1;
        if let Some(l) = loss_sum {
            pending.push(step, l);
        }
        progress.set_step(step);

        // Read the flag once per step: a second read could see a Ctrl-C that arrived after the
        // save decision and leave without the checkpoint the message promises.
        let interrupt = interrupted.load(Ordering::SeqCst);
        let stop = interrupt || step == stop_at;
        if step % s.log_every == 0 || step == total || stop {
            if let Some(at) = pending.sync()? {
                progress.finish();
                return Err(non_finite(at));
            }
            let now = std::time::Instant::now();
            let secs = now.duration_since(last_log.0).as_secs_f64().max(1e-9);
            let row = MetricsRow {
                step,
                epoch: (micro - 1) / bpe,
                loss: pending.take_mean(),
                lr: Some(lr),
                img_per_s: Some(((step - last_log.1) * accum * s.batch_size) as f64 / secs),
                elapsed_s: progress.elapsed(),
                ..MetricsRow::default()
            };
            last_log = (now, step);
            metrics.write(&row)?;
            progress.log(&row);
        }
        if step % s.save_every == 0 || step == total || stop {
            if let Some(at) = pending.sync()? {
                progress.finish();
                return Err(non_finite(at));
            }
            if !weights_finite(&model)? {
                progress.finish();
                return Err(non_finite(step));
            }
            model.save(&ckpt)?;
            if let Some(e) = &ema {
                e.save(dir.join("ema.safetensors"))?;
            }
            let meta = StateMeta {
                step,
                micro_step: micro,
                epoch: micro / bpe,
                batch_in_epoch: micro % bpe,
                seed: s.seed,
            };
            save_state(
                &dir.join("optimizer.safetensors"),
                &model,
                &opt,
                ema.as_ref(),
                &meta,
            )?;
            run_dir::plot_loss(&dir)?;
        }
        if s.sample_every > 0 && (step % s.sample_every == 0 || step == total) {
            let path = dir.join("samples").join(format!("step_{step:06}.png"));
            write_samples(&model, &pre, &preview, s.seed, &path)?;
        }
        if interrupt && step < total {
            progress.finish();
            return Err(Interrupted(format!(
                "interrupted at step {step}/{total}; checkpoint saved to {}; continue with: dmae train --resume --out {}",
                ckpt.display(),
                dir.display()
            ))
            .into());
        }
    }
    progress.finish();
    if step < total {
        println!(
            "stopped at step {step}/{total} (--stop-at); checkpoint {}; continue with: dmae train --resume --out {}",
            ckpt.display(),
            dir.display()
        );
    } else {
        println!(
            "done: {step} steps in {:.0}s; checkpoint {}",
            progress.elapsed(),
            ckpt.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = ConfigFile::parse(
            "[model]\nencoder = { dim = 64, depth = 2, heads = 2 }\ndecoder = { depth = 1 }\n[train]\nsteps = 30\nbatch-size = 8\nlr = 0.01\n",
            "x.toml",
            "train",
        )
        .unwrap();
        let mut s: TrainSettings = file.section("train").unwrap();
        assert_eq!((s.steps, s.batch_size, s.lr), (Some(30), 8, 0.01));
        assert_eq!(s.weight_decay, 0.05, "defaults fill the rest");
        let args = Args::try_parse_from(["train", "--batch-size", "16", "--epochs", "2", "--mae"])
            .unwrap();
        s.apply(&args);
        assert_eq!(
            (s.batch_size, s.lr, s.steps, s.epochs, s.mae),
            (16, 0.01, None, Some(2), true)
        );
        s.validate().unwrap();
        let c = s.model_config(&file).unwrap();
        assert_eq!(c.encoder.dim, 64);
        assert_eq!(c.decoder.masked_input, dmae_models::MaskedInput::MaskToken);

        let e = ConfigFile::parse("[train]\nbatch_size = 3\n", "y.toml", "train")
            .unwrap()
            .section::<TrainSettings>("train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.toml") && e.contains("batch_size"), "{e}");
        let mut bad = TrainSettings {
            mask_ratio: Some(1.5),
            ..TrainSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mask-ratio"));
        bad.mask_ratio = Some(0.5);
        bad.decoder = Some("sideways".into());
        assert!(bad
            .model_config(&ConfigFile::default())
            .unwrap_err()
            .to_string()
            .contains("decoder"));
    }
}
