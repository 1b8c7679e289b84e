//! The real data shipped in the repository: 10,000 MNIST digits under `datasets/mnist`.
//!
//! The directory is found at `$DMAE_DATASETS/mnist` when that variable is set, otherwise at `datasets/mnist`
//! of the workspace this crate was built from. See `datasets/mnist/README.md` for the source, the split and the
//! conversion script.

use std::path::{Path, PathBuf};

use crate::dataset::Split;
use crate::error::{Error, Result};
use crate::mnist::Mnist;

/// Environment variable that overrides the folder holding the bundled datasets (it must contain `mnist/`).
pub const DATASETS_ENV: &str = "DMAE_DATASETS";

/// Digits in the bundled training split.
pub const BUNDLED_MNIST_TRAIN: usize = 8_000;
/// Digits in the bundled validation split.
pub const BUNDLED_MNIST_VAL: usize = 2_000;

/// The folder holding the bundled datasets: `$DMAE_DATASETS` if set and non-empty, else the workspace's
/// `datasets/` (resolved at compile time from this crate's manifest directory).
pub fn datasets_dir() -> PathBuf {
    match std::env::var_os(DATASETS_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("datasets"),
    }
}

/// The bundled MNIST folder, or a [`Error::NotFound`] explaining how to point at it.
pub fn bundled_mnist_dir() -> Result<PathBuf> {
    mnist_dir_in(&datasets_dir())
}

/// `datasets/mnist` inside the given datasets folder, checked like [`bundled_mnist_dir`].
pub fn mnist_dir_in(datasets: &Path) -> Result<PathBuf> {
    let dir = datasets.join("mnist");
    if dir.join("train-images-idx3-ubyte.gz").is_file() {
        Ok(dir)
    } else {
        Err(Error::NotFound {
            path: dir,
            what: format!(
                "bundled MNIST not found (expected train-images-idx3-ubyte.gz here); set {DATASETS_ENV} to the \
                 folder that contains mnist/ (the repository's datasets/ directory)"
            ),
        })
    }
}

/// The bundled MNIST digits: [`Split::Train`] (8,000) or [`Split::Val`] (2,000). [`Split::Test`] is not bundled;
/// fetch the official set with `cargo xtask data fetch mnist`.
pub fn bundled_mnist(split: Split) -> Result<Mnist> {
    if split == Split::Test {
        return Err(Error::Config(
            "the bundled MNIST has train and val splits only; download the official test set with \
             `cargo xtask data fetch mnist --to DIR` and open it with Mnist::open(DIR, Split::Test)"
                .into(),
        ));
    }
    Mnist::open(bundled_mnist_dir()?, split)
}
