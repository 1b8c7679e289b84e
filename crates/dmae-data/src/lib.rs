//! # dmae-data
//!
//! Data pipeline of DiffMAE: datasets in the formats users already have, per-sample transforms, and a
//! deterministic, parallel, prefetching loader that yields [`Batch`]es of `(N, C, H, W)` (or `(N, C, T, H, W)`)
//! f32 images and `(N,)` u32 labels.
//!
//! ```no_run
//! use dmae_data::{bundled_mnist, Loader, LoaderConfig, Split};
//! let train = bundled_mnist(Split::Train)?;
//! let loader = Loader::new(train, LoaderConfig { batch_size: 128, ..Default::default() })?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // batch.images: (128, 1, 28, 28) in [0, 1]
//! }
//! # Ok::<(), dmae_data::Error>(())
//! ```
//!
//! Contents:
//! - [`dataset`]: the [`Dataset`] trait, [`Sample`], [`Split`], [`spread_over_classes`] (preview picks).
//! - Formats: [`idx`] (IDX arrays), [`mnist`] ([`Mnist`]), [`cifar`] ([`Cifar`]), [`folder`] ([`ImageFolder`]
//!   and its train/val/test splits, stratified hold-out), [`frames`] ([`FrameFolder`] video clips),
//!   [`moving_mnist`] ([`MovingMnist`] generator), [`decode`] (image files to planes), [`file`](mod@file)
//!   (regular files only, size-checked: never a device or a FIFO).
//! - [`bundled`]: the 10,000 real MNIST digits shipped in `datasets/mnist` ([`bundled_mnist`]).
//! - [`transforms`]: resize, center crop, random resized crop, flip, grey <-> RGB, normalize ([`Transform`],
//!   [`Compose`]).
//! - [`pipeline`]: [`Pipeline`], any image to the model's input (size, channels, train/eval, flip) in one call.
//! - [`loader`]: [`Loader`], [`LoaderConfig`], [`Epoch`], [`Batch`].
//! - [`rng`]: the `(seed, epoch, index)` generators behind every random choice.
//! - [`error`]: [`Error`], [`Result`].
//!
//! Bad input bytes never panic: they produce an [`Error`] naming the file and the offset or cause. Sizes
//! announced by headers are checked before anything is allocated for them ([`decode::MAX_IMAGE_BYTES`],
//! [`file::MAX_FILE_BYTES`], IDX dimensions against the file's length); see docs/reliability.md.
//!
//! Features: `cuda` (forwards to candle's, for [`Batch::to_device`] onto a GPU). Example:
//! `cargo run --release -p dmae-data --example loader` (bundled-MNIST throughput).

#![deny(missing_docs)]

pub mod bundled;
pub mod cifar;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod file;
pub mod folder;
pub mod frames;
pub mod idx;
pub mod loader;
pub mod mnist;
pub mod moving_mnist;
pub mod pipeline;
mod pool;
pub mod rng;
pub mod transforms;

pub use bundled::{bundled_mnist, bundled_mnist_dir, datasets_dir, DATASETS_ENV};
pub use cifar::{Cifar, CifarKind};
pub use dataset::{spread_over_classes, Dataset, Sample, Split, Subset};
pub use decode::Channels;
pub use error::{Error, Result};
pub use folder::ImageFolder;
pub use frames::{FrameFolder, FrameFolderOptions, FrameSampling};
pub use idx::{parse_idx, read_idx, IdxArray, IdxType};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, SkippedSample};
pub use mnist::Mnist;
pub use moving_mnist::{MovingMnist, MovingMnistConfig};
pub use pipeline::{Pipeline, Stage};
pub use rng::SampleRng;
pub use transforms::{
    CenterCrop, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToChannels,
    Transform,
};
