//! The [`Dataset`] trait and the [`Sample`] it yields.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// One decoded sample: an image `(C, H, W)` or a clip `(C, T, H, W)` of f32 values, plus its class label.
///
/// Decoded pixels are in `[0, 1]`; [`crate::transforms::Normalize`] moves them out of that range. The layout is
/// row-major in the order of [`Sample::shape`], so a sample is always `planes() = C * T` planes of `H x W`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    data: Vec<f32>,
    shape: Vec<usize>,
    label: u32,
}

impl Sample {
    /// An image sample of shape `(channels, height, width)`; errors if `data` has the wrong length or a
    /// dimension is zero.
    pub fn image(
        data: Vec<f32>,
        channels: usize,
        height: usize,
        width: usize,
        label: u32,
    ) -> Result<Self> {
        Self::new(data, vec![channels, height, width], label)
    }

    /// A video sample of shape `(channels, frames, height, width)`.
    pub fn video(
        data: Vec<f32>,
        channels: usize,
        frames: usize,
        height: usize,
        width: usize,
        label: u32,
    ) -> Result<Self> {
        Self::new(data, vec![channels, frames, height, width], label)
    }

    fn new(data: Vec<f32>, shape: Vec<usize>, label: u32) -> Result<Self> {
        if shape.contains(&0) {
            return Err(Error::Config(format!(
                "sample shape {shape:?} has a zero dimension"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Config(format!("sample shape {shape:?} overflows")))?;
        if numel != data.len() {
            return Err(Error::Config(format!(
                "sample shape {shape:?} needs {numel} values, got {}",
                data.len()
            )));
        }
        Ok(Sample { data, shape, label })
    }

    /// Replaces the pixels with `src`, a sample of the same channels/frames at `height x width`, reusing this
    /// sample's allocation (no new memory when the new size is not larger).
    pub(crate) fn set_spatial_from(
        &mut self,
        src: &[f32],
        height: usize,
        width: usize,
    ) -> Result<()> {
        let want = self.planes() * height * width;
        if src.len() != want || height == 0 || width == 0 {
            return Err(Error::Config(format!(
                "{} values do not make {} planes of {height}x{width}",
                src.len(),
                self.planes()
            )));
        }
        self.data.clear();
        self.data.extend_from_slice(src);
        let n = self.shape.len();
        self.shape[n - 2] = height;
        self.shape[n - 1] = width;
        Ok(())
    }

    /// Keeps the `height x width` window at (`top`, `left`) of every plane, in place.
    pub(crate) fn crop_in_place(
        &mut self,
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    ) -> Result<()> {
        let (h, w, planes) = (self.height(), self.width(), self.planes());
        if height == 0 || width == 0 || top + height > h || left + width > w {
            return Err(Error::Config(format!(
                "crop {height}x{width} at ({top}, {left}) does not fit a {h}x{w} sample"
            )));
        }
        if (height, width) == (h, w) {
            return Ok(());
        }
        // Destination offsets never exceed source offsets, so a forward copy is safe.
        for p in 0..planes {
            for r in 0..height {
                let src = p * h * w + (top + r) * w + left;
                let dst = (p * height + r) * width;
                self.data.copy_within(src..src + width, dst);
            }
        }
        self.data.truncate(planes * height * width);
        let n = self.shape.len();
        self.shape[n - 2] = height;
        self.shape[n - 1] = width;
        Ok(())
    }

    /// The shape: `[C, H, W]` for images, `[C, T, H, W]` for video.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// True for `(C, T, H, W)` samples.
    pub fn is_video(&self) -> bool {
        self.shape.len() == 4
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.shape[0]
    }

    /// Number of frames `T` (1 for images).
    pub fn frames(&self) -> usize {
        if self.is_video() {
            self.shape[1]
        } else {
            1
        }
    }

    /// Height `H`.
    pub fn height(&self) -> usize {
        self.shape[self.shape.len() - 2]
    }

    /// Width `W`.
    pub fn width(&self) -> usize {
        self.shape[self.shape.len() - 1]
    }

    /// Number of `H x W` planes, `C * T`.
    pub fn planes(&self) -> usize {
        self.channels() * self.frames()
    }

    /// The class label.
    pub fn label(&self) -> u32 {
        self.label
    }

    /// The pixels, row-major in the order of [`Sample::shape`].
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable pixels (the shape cannot change through this).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Splits the sample into (pixels, shape, label).
    pub fn into_parts(self) -> (Vec<f32>, Vec<usize>, u32) {
        (self.data, self.shape, self.label)
    }

    /// The pixels as an f32 tensor of [`Sample::shape`] on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            self.shape.as_slice(),
            device,
        )?)
    }
}

/// A finite, indexable collection of labelled samples.
///
/// Implementations must be cheap to share across threads: the loader calls [`Dataset::get`] from rayon workers.
/// `get` must be deterministic (same index, same sample); randomness belongs in transforms.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// True when the dataset holds no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names, indexed by label.
    fn classes(&self) -> &[String];

    /// Number of classes (labels are in `0..num_classes()`).
    fn num_classes(&self) -> usize {
        self.classes().len()
    }

    /// Decodes sample `index`; errors (never panics) on bad input data or an out-of-range index.
    fn get(&self, index: usize) -> Result<Sample>;

    /// The label of sample `index` (what [`Dataset::get`] would return as [`Sample::label`]). Datasets that know
    /// their labels without decoding override this; [`spread_over_classes`] relies on it being cheap there.
    fn label_of(&self, index: usize) -> Result<u32> {
        Ok(self.get(index)?.label())
    }

    /// Whether training should flip samples left-right by default: a mirrored photo is still a photo of its
    /// class, a mirrored digit or letter is not. `true` unless the dataset says otherwise (MNIST, Moving-MNIST, a
    /// folder whose classes are the digits 0-9); [`crate::Pipeline`]'s callers use it as the default of `flip`.
    fn default_flip(&self) -> bool {
        true
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn classes(&self) -> &[String] {
        (**self).classes()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        (**self).get(index)
    }
    fn label_of(&self, index: usize) -> Result<u32> {
        (**self).label_of(index)
    }
    fn default_flip(&self) -> bool {
        (**self).default_flip()
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn classes(&self) -> &[String] {
        (**self).classes()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        (**self).get(index)
    }
    fn label_of(&self, index: usize) -> Result<u32> {
        (**self).label_of(index)
    }
    fn default_flip(&self) -> bool {
        (**self).default_flip()
    }
}

/// `count` dataset indices spread across the classes, for previews and sample grids: round-robin over the
/// classes in label order, each class's samples in dataset order (class 0's first, class 1's first, ..., class 0's
/// second, ...), skipping classes that run out. Deterministic; every index when `count >= len`. Reads every
/// label once ([`Dataset::label_of`]).
pub fn spread_over_classes(dataset: &dyn Dataset, count: usize) -> Result<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); dataset.num_classes()];
    for i in 0..dataset.len() {
        let label = dataset.label_of(i)?;
        let slot = usize::try_from(label)
            .ok()
            .filter(|&l| l < by_class.len())
            .ok_or_else(|| {
                Error::Config(format!(
                    "sample {i} has label {label}, outside the dataset's {} classes",
                    by_class.len()
                ))
            })?;
        by_class[slot].push(i);
    }
    let count = count.min(dataset.len());
    let mut out = Vec::with_capacity(count);
    let mut round = 0;
    while out.len() < count {
        for class in &by_class {
            if let Some(&i) = class.get(round) {
                if out.len() < count {
                    out.push(i);
                }
            }
        }
        round += 1;
    }
    Ok(out)
}

/// The samples of another dataset at chosen indices, in that order: a limited validation split
/// (`dmae finetune --val-limit`), a class-balanced pick ([`spread_over_classes`]). Classes, labels
/// and the flip default are the parent's.
pub struct Subset {
    parent: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The samples of `parent` at `indices`; errors with [`Error::IndexOutOfRange`] on an index
    /// the parent does not have.
    pub fn new(parent: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        for &i in &indices {
            check_index(i, parent.len())?;
        }
        Ok(Self { parent, indices })
    }

    fn parent_index(&self, index: usize) -> Result<usize> {
        check_index(index, self.indices.len())?;
        Ok(self.indices[index])
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn classes(&self) -> &[String] {
        self.parent.classes()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.parent.get(self.parent_index(index)?)
    }
    fn label_of(&self, index: usize) -> Result<u32> {
        self.parent.label_of(self.parent_index(index)?)
    }
    fn default_flip(&self) -> bool {
        self.parent.default_flip()
    }
}

/// Errors with [`Error::IndexOutOfRange`] unless `index < len`.
pub(crate) fn check_index(index: usize, len: usize) -> Result<()> {
    if index < len {
        Ok(())
    } else {
        Err(Error::IndexOutOfRange { index, len })
    }
}

/// Class names `"0"`, `"1"`, ... for datasets whose classes are plain numbers.
pub(crate) fn numbered_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training data.
    Train,
    /// Held-out validation data (the bundled MNIST's 2,000 digits).
    Val,
    /// The official test set (MNIST `t10k-*`, CIFAR `test_batch.bin` / `test.bin`).
    Test,
}

impl std::str::FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::Config(format!(
                "unknown split {s:?} (expected train, val or test)"
            ))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}
