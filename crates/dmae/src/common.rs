//! What every command shares: the device flag, the data SPEC, and where a dataset comes from.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use dmae_data::{
    bundled_mnist, Channels, Cifar, CifarKind, Dataset, FrameFolder, FrameFolderOptions,
    FrameSampling, ImageFolder, Loader, LoaderConfig, Mnist, MovingMnist, MovingMnistConfig, Split,
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
    /// Optimiser steps (default: train 240, finetune 300).
    #[arg(long, value_name = "N", conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..))]
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

/// The training split of a data SPEC for a model, behind the shuffled loader of `train` and
/// `finetune`.
pub struct TrainingData {
    /// Full batches only: every step sees the same number of images and the number of batches
    /// per epoch is fixed, so a step's data is a function of its index (what makes `--resume`
    /// exact).
    pub loader: Loader,
    /// Batches per epoch.
    pub batches_per_epoch: u64,
}

/// Opens the training split of `spec` for `config` behind a shuffled loader of `batch_size`.
pub fn open_training(
    spec: &str,
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
    let channels =
        Channels::from_count(config.in_channels).map_err(|e| anyhow::anyhow!("--data: {e}"))?;
    let dataset = spec.open(Split::Train, channels, config.num_frames)?;
    let loader = Loader::from_arc(
        dataset,
        LoaderConfig {
            batch_size: batch_size as usize,
            shuffle: true,
            drop_last: true,
            seed,
            num_threads: 1,
            prefetch: 2,
            ..LoaderConfig::default()
        },
    )?;
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
    /// Opens `split` of the data. Folders use `DIR/<split>` when it exists, `DIR` otherwise.
    /// Moving-MNIST draws its digits from the bundled split of the same name, and its
    /// validation clips from a different seed.
    /// `channels` applies to image files, `num_frames` to frame folders.
    pub fn open(
        &self,
        split: Split,
        channels: Channels,
        num_frames: usize,
    ) -> Result<Arc<dyn Dataset>> {
        let split_dir = |dir: &PathBuf| {
            let d = dir.join(split.to_string());
            if d.is_dir() {
                d
            } else {
                dir.clone()
            }
        };
        Ok(match self {
            DataSpec::Bundled => Arc::new(bundled_mnist(split)?),
            DataSpec::Mnist(dir) => Arc::new(Mnist::open(dir, split)?),
            DataSpec::Cifar10(dir) => Arc::new(Cifar::open(dir, CifarKind::Cifar10, split)?),
            DataSpec::Folder(dir) => Arc::new(ImageFolder::open(split_dir(dir), channels)?),
            DataSpec::Frames(dir) => Arc::new(FrameFolder::open(
                split_dir(dir),
                FrameFolderOptions {
                    num_frames,
                    sampling: FrameSampling::Strided { stride: 1 },
                    channels,
                },
            )?),
            DataSpec::MovingMnist(c) => {
                let mut c = *c;
                if split != Split::Train {
                    c.seed = c.seed.wrapping_add(1_000_003);
                    c.len = c.len.min(2_000);
                }
                // Its options come from the SPEC: a refused one is a usage error.
                Arc::new(
                    MovingMnist::new(bundled_mnist(split)?, c).map_err(|e| match e {
                        dmae_data::Error::Config(m) => {
                            Usage(format!("--data moving-mnist: {m}")).into()
                        }
                        e => anyhow::Error::from(e),
                    })?,
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
