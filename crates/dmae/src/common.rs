//! What every command shares: the device flag, the data SPEC, and where a dataset comes from.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use dmae_data::{
    bundled_mnist, Channels, Cifar, CifarKind, Dataset, FrameFolder, FrameFolderOptions,
    FrameSampling, ImageFolder, Loader, LoaderConfig, Mnist, MovingMnist, MovingMnistConfig, Split,
};

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

/// The shuffled training loader of `train` and `finetune` and its batches per epoch. Full
/// batches only: every step sees the same number of images and the number of batches per epoch
/// is fixed, so a step's data is a function of its index (what makes `--resume` exact).
pub fn train_loader(
    dataset: Arc<dyn Dataset>,
    batch_size: u64,
    seed: u64,
) -> Result<(Loader, u64)> {
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
    let bpe = loader.batches_per_epoch() as u64;
    if bpe == 0 {
        bail!(
            "--batch-size {batch_size}: larger than the training set ({} samples)",
            loader.dataset().len()
        );
    }
    Ok((loader, bpe))
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
            _ => bail!("--device: expected cpu, cuda or cuda:<index>, got {s:?}"),
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
                Arc::new(MovingMnist::new(bundled_mnist(split)?, c)?)
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
