//! MNIST-style datasets stored as a pair of IDX files (images `N x H x W` u8, labels `N` u8).

use std::path::{Path, PathBuf};

use crate::dataset::Split;
use crate::dataset::{check_index, numbered_classes, Dataset, Sample};
use crate::error::{Error, Result};
use crate::idx::{read_idx, IdxArray, IdxType};

/// Number of MNIST classes (the digits 0-9).
pub const MNIST_CLASSES: usize = 10;

/// An MNIST-format dataset held in memory as bytes (`N x H x W` images, one label per image).
///
/// Works for MNIST, Fashion-MNIST and any other IDX pair with labels in `0..10`. Samples are `(1, H, W)` f32 in
/// `[0, 1]` (byte / 255).
#[derive(Debug, Clone)]
pub struct Mnist {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
    classes: Vec<String>,
}

impl Mnist {
    /// Opens `dir/<prefix>-images-idx3-ubyte[.gz]` and `dir/<prefix>-labels-idx1-ubyte[.gz]`, where the prefix is
    /// `train`, `val` (the bundled split) or `t10k` (the official test set, [`Split::Test`]).
    pub fn open(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let prefix = match split {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "t10k",
        };
        let images = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        Self::from_idx_files(images, labels)
    }

    /// Reads an image IDX file and a label IDX file (each plain or gzipped).
    pub fn from_idx_files(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let (ip, lp) = (images.as_ref(), labels.as_ref());
        Self::from_arrays(read_idx(ip)?, ip, read_idx(lp)?, lp)
    }

    /// Builds the dataset from parsed arrays; the paths are only used in error messages.
    pub fn from_arrays(
        images: IdxArray,
        images_path: &Path,
        labels: IdxArray,
        labels_path: &Path,
    ) -> Result<Self> {
        let bad =
            |p: &Path, offset: u64, reason: String| Error::format(p, "MNIST IDX", offset, reason);
        if images.dtype() != IdxType::U8 || images.dims().len() != 3 {
            return Err(bad(
                images_path,
                2,
                format!(
                    "expected a 3-D u8 image array, found {}-D {:?}",
                    images.dims().len(),
                    images.dtype()
                ),
            ));
        }
        if labels.dtype() != IdxType::U8 || labels.dims().len() != 1 {
            return Err(bad(
                labels_path,
                2,
                format!(
                    "expected a 1-D u8 label array, found {}-D {:?}",
                    labels.dims().len(),
                    labels.dtype()
                ),
            ));
        }
        let (n, rows, cols) = (images.dims()[0], images.dims()[1], images.dims()[2]);
        if rows == 0 || cols == 0 {
            return Err(bad(
                images_path,
                8,
                format!("empty image size {rows}x{cols}"),
            ));
        }
        if labels.dims()[0] != n {
            return Err(bad(
                labels_path,
                4,
                format!(
                    "{} labels for {n} images in {}",
                    labels.dims()[0],
                    images_path.display()
                ),
            ));
        }
        let labels = labels
            .into_u8()
            .map_err(|_| bad(labels_path, 2, "not u8".into()))?;
        if let Some(i) = labels.iter().position(|&l| usize::from(l) >= MNIST_CLASSES) {
            return Err(bad(
                labels_path,
                8 + i as u64,
                format!("label {} of image {i} is not a digit 0-9", labels[i]),
            ));
        }
        let images = images
            .into_u8()
            .map_err(|_| bad(images_path, 2, "not u8".into()))?;
        Ok(Mnist {
            images,
            labels,
            rows,
            cols,
            classes: numbered_classes(MNIST_CLASSES),
        })
    }

    /// Image height.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Image width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw bytes of image `index` (row-major `rows x cols`), `None` if out of range.
    pub fn image_bytes(&self, index: usize) -> Option<&[u8]> {
        let px = self.rows * self.cols;
        self.images.get(index * px..(index + 1) * px)
    }

    /// The label of image `index`, `None` if out of range.
    pub fn label(&self, index: usize) -> Option<u8> {
        self.labels.get(index).copied()
    }

    /// All labels in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl Dataset for Mnist {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        let bytes = self.image_bytes(index).ok_or(Error::IndexOutOfRange {
            index,
            len: self.len(),
        })?;
        let data = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
        Sample::image(data, 1, self.rows, self.cols, u32::from(self.labels[index]))
    }

    fn label_of(&self, index: usize) -> Result<u32> {
        check_index(index, self.len())?;
        Ok(u32::from(self.labels[index]))
    }

    /// Digits: a mirrored digit is not a digit.
    fn default_flip(&self) -> bool {
        false
    }
}

/// `dir/stem.gz` if it exists, else `dir/stem`, else a not-found error listing both.
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(stem);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(Error::NotFound {
        path: dir.to_path_buf(),
        what: format!("neither {stem}.gz nor {stem} exists in this directory"),
    })
}
