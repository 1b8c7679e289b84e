//! Per-sample transforms: resize, center crop, random resized crop, horizontal flip, channel conversion,
//! normalize. [`crate::pipeline::Pipeline`] composes them into the model's input in one call.
//!
//! Transforms act on every `H x W` plane of a [`Sample`] alike, so a video clip `(C, T, H, W)` gets the same
//! crop and flip on all its frames. Randomness comes only from the [`SampleRng`] handed in, which the loader
//! derives from `(seed, epoch, dataset index)`: the output never depends on threads or batch composition.
//! Resizing is separable bilinear interpolation with PIL-style antialiasing (the triangle filter widens by the
//! downscale factor), the behaviour of torchvision's `Resize`/`RandomResizedCrop` with `antialias=True`.

use std::cell::RefCell;
use std::sync::Arc;

use rand::Rng;

use crate::dataset::Sample;
use crate::error::{Error, Result};
use crate::rng::SampleRng;

/// ImageNet channel means (RGB), as used by MAE and DiffMAE.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// MNIST pixel mean (of the 60,000 training digits, in `[0, 1]`).
pub const MNIST_MEAN: [f32; 1] = [0.1307];
/// MNIST pixel standard deviation.
pub const MNIST_STD: [f32; 1] = [0.3081];

/// A per-sample transformation.
pub trait Transform: Send + Sync {
    /// Transforms `sample`, drawing any randomness from `rng`.
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample>;
}

impl<T: Transform + ?Sized> Transform for Box<T> {
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        (**self).apply(sample, rng)
    }
}

impl<T: Transform + ?Sized> Transform for Arc<T> {
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        (**self).apply(sample, rng)
    }
}

/// Transforms applied in sequence, sharing one generator.
#[derive(Default)]
pub struct Compose {
    steps: Vec<Box<dyn Transform>>,
}

impl Compose {
    /// An empty pipeline (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a step.
    pub fn then(mut self, t: impl Transform + 'static) -> Self {
        self.steps.push(Box::new(t));
        self
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True for the identity pipeline.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// MAE's pre-training augmentation: random resized crop to `size` (scale 0.2-1.0), flip, ImageNet normalize.
    pub fn mae_train(size: usize) -> Self {
        Compose::new()
            .then(RandomResizedCrop::new(size, size))
            .then(RandomHorizontalFlip::new(0.5))
            .then(Normalize::imagenet())
    }

    /// MAE's evaluation transform: resize the shorter side to `size * 8 / 7` (256 for 224), center crop, normalize.
    pub fn mae_eval(size: usize) -> Self {
        Compose::new()
            .then(Resize::shorter_side(size * 8 / 7))
            .then(CenterCrop::new(size, size))
            .then(Normalize::imagenet())
    }
}

impl Transform for Compose {
    fn apply(&self, mut sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        for s in &self.steps {
            sample = s.apply(sample, rng)?;
        }
        Ok(sample)
    }
}

/// A rectangle of a sample, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

thread_local! {
    /// Per-thread scratch (intermediate rows, output) reused across samples: fresh multi-hundred-kilobyte
    /// allocations per image cost more in page faults than the arithmetic.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Crops `region` of every plane and resizes it to `out_h x out_w` (antialiased bilinear), reusing the sample's
/// memory.
pub fn resized_crop(
    mut sample: Sample,
    region: CropBox,
    out_h: usize,
    out_w: usize,
) -> Result<Sample> {
    let (h, w) = (sample.height(), sample.width());
    if region.height == 0
        || region.width == 0
        || region.top + region.height > h
        || region.left + region.width > w
    {
        return Err(Error::Config(format!(
            "crop {region:?} does not fit in a {h}x{w} sample"
        )));
    }
    if out_h == 0 || out_w == 0 {
        return Err(Error::Config(format!(
            "output size {out_h}x{out_w} is empty"
        )));
    }
    if region.height == out_h && region.width == out_w {
        sample.crop_in_place(region.top, region.left, out_h, out_w)?;
        return Ok(sample);
    }
    let wx = Weights::new(region.left, region.width, out_w);
    let wy = Weights::new(region.top, region.height, out_h);
    let planes = sample.planes();
    let run = |tmp: &mut Vec<f32>, out: &mut Vec<f32>, sample: &mut Sample| -> Result<()> {
        tmp.clear();
        tmp.resize(region.height * out_w, 0.0);
        out.clear();
        out.resize(planes * out_h * out_w, 0.0);
        let src = sample.data();
        for p in 0..planes {
            let plane = &src[p * h * w..(p + 1) * h * w];
            // Horizontal pass over the rows of the crop, with a tap count fixed at compile time where possible.
            for r in 0..region.height {
                let row = &plane[(region.top + r) * w..(region.top + r + 1) * w];
                let dst = &mut tmp[r * out_w..(r + 1) * out_w];
                match wx.k {
                    1 => hpass::<1>(row, dst, &wx),
                    2 => hpass::<2>(row, dst, &wx),
                    3 => hpass::<3>(row, dst, &wx),
                    4 => hpass::<4>(row, dst, &wx),
                    5 => hpass::<5>(row, dst, &wx),
                    6 => hpass::<6>(row, dst, &wx),
                    7 => hpass::<7>(row, dst, &wx),
                    8 => hpass::<8>(row, dst, &wx),
                    _ => hpass_any(row, dst, &wx),
                }
            }
            // Vertical pass: weighted sums of whole rows (vectorises well).
            let dst_plane = &mut out[p * out_h * out_w..(p + 1) * out_h * out_w];
            for y in 0..out_h {
                let (start, ws) = wy.taps(y);
                let start = start - region.top;
                let dst = &mut dst_plane[y * out_w..(y + 1) * out_w];
                for (k, &wk) in ws.iter().enumerate() {
                    let srow = &tmp[(start + k) * out_w..(start + k + 1) * out_w];
                    for (d, s) in dst.iter_mut().zip(srow) {
                        *d += wk * s;
                    }
                }
            }
        }
        sample.set_spatial_from(out, out_h, out_w)
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let (tmp, out) = &mut *scratch;
            run(tmp, out, &mut sample)
        }
        // Re-entered from a nested call on this thread: use fresh buffers.
        Err(_) => run(&mut Vec::new(), &mut Vec::new(), &mut sample),
    })?;
    Ok(sample)
}

/// One row of the horizontal pass with `K` (zero-padded) taps per output pixel.
fn hpass<const K: usize>(row: &[f32], dst: &mut [f32], wx: &Weights) {
    for ((d, &s), w) in dst
        .iter_mut()
        .zip(&wx.padded_starts)
        .zip(wx.padded.chunks_exact(K))
    {
        let src = &row[s..s + K];
        let mut acc = 0.0;
        for j in 0..K {
            acc += w[j] * src[j];
        }
        *d = acc;
    }
}

/// The horizontal pass for any tap count (strong downscaling).
fn hpass_any(row: &[f32], dst: &mut [f32], wx: &Weights) {
    let k = wx.k;
    for ((d, &s), w) in dst
        .iter_mut()
        .zip(&wx.padded_starts)
        .zip(wx.padded.chunks_exact(k))
    {
        *d = row[s..s + k].iter().zip(w).map(|(a, b)| a * b).sum();
    }
}

/// Antialiased bilinear weights along one axis: for each output pixel, a start index and normalised weights.
struct Weights {
    starts: Vec<usize>,
    lens: Vec<usize>,
    stride: usize,
    w: Vec<f32>,
    /// Taps per output in the padded form, `min(stride, in_len)`.
    k: usize,
    /// Padded form: output `i` reads source `padded_starts[i] + j` with weight `padded[i * k + j]`, `j < k`.
    padded_starts: Vec<usize>,
    padded: Vec<f32>,
}

impl Weights {
    /// Maps `in_len` source pixels starting at `offset` onto `out_len` output pixels (PIL's algorithm).
    fn new(offset: usize, in_len: usize, out_len: usize) -> Self {
        let scale = in_len as f64 / out_len as f64;
        let fscale = scale.max(1.0);
        let support = fscale; // the triangle filter has radius 1, widened when downscaling
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut starts = Vec::with_capacity(out_len);
        let mut lens = Vec::with_capacity(out_len);
        let mut w = vec![0f32; out_len * stride];
        for i in 0..out_len {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(in_len);
            let hi = hi.max(lo + 1).min(lo + stride);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|k| {
                    let x = (k as f64 - center + 0.5) / fscale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                ws.iter_mut().for_each(|v| *v /= total);
            } else {
                // Degenerate (cannot happen for valid sizes): nearest pixel.
                ws.iter_mut().for_each(|v| *v = 0.0);
                ws[0] = 1.0;
            }
            for (k, v) in ws.iter().enumerate() {
                w[i * stride + k] = *v as f32;
            }
            starts.push(offset + lo);
            lens.push(hi - lo);
        }
        // Padded form: every output gets exactly `k` taps inside the source range, with zero weights where the
        // filter does not reach.
        let k = stride.min(in_len);
        let mut padded_starts = Vec::with_capacity(out_len);
        let mut padded = vec![0f32; k * out_len];
        for i in 0..out_len {
            let lo = starts[i] - offset;
            let start = lo.min(in_len - k);
            let shift = lo - start;
            for j in 0..lens[i] {
                padded[i * k + shift + j] = w[i * stride + j];
            }
            padded_starts.push(offset + start);
        }
        Weights {
            starts,
            lens,
            stride,
            w,
            k,
            padded_starts,
            padded,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[f32]) {
        let s = i * self.stride;
        (self.starts[i], &self.w[s..s + self.lens[i]])
    }
}

/// Target size of [`Resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Exactly `height x width` (aspect ratio may change).
    Exact {
        /// Output rows.
        height: usize,
        /// Output columns.
        width: usize,
    },
    /// Shorter side to this length, aspect ratio kept (the longer side is rounded down, like torchvision).
    ShorterSide(usize),
}

/// Resizes the whole sample (antialiased bilinear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// The target size.
    pub target: ResizeTarget,
}

impl Resize {
    /// Resize to exactly `height x width`.
    pub fn exact(height: usize, width: usize) -> Self {
        Resize {
            target: ResizeTarget::Exact { height, width },
        }
    }

    /// Resize so the shorter side is `size`.
    pub fn shorter_side(size: usize) -> Self {
        Resize {
            target: ResizeTarget::ShorterSide(size),
        }
    }

    /// The output `(height, width)` for an input of `h x w`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.target {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShorterSide(s) => {
                if h <= w {
                    (s, (s * w / h).max(1))
                } else {
                    ((s * h / w).max(1), s)
                }
            }
        }
    }
}

impl Transform for Resize {
    fn apply(&self, sample: Sample, _rng: &mut SampleRng) -> Result<Sample> {
        let (h, w) = (sample.height(), sample.width());
        let (oh, ow) = self.output_size(h, w);
        if (oh, ow) == (h, w) {
            return Ok(sample);
        }
        let all = CropBox {
            top: 0,
            left: 0,
            height: h,
            width: w,
        };
        resized_crop(sample, all, oh, ow)
    }
}

/// Crops the central `height x width` region; errors if the sample is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CenterCrop {
    /// Output rows.
    pub height: usize,
    /// Output columns.
    pub width: usize,
}

impl CenterCrop {
    /// A `height x width` center crop.
    pub fn new(height: usize, width: usize) -> Self {
        CenterCrop { height, width }
    }
}

impl Transform for CenterCrop {
    fn apply(&self, sample: Sample, _rng: &mut SampleRng) -> Result<Sample> {
        let (h, w) = (sample.height(), sample.width());
        if self.height > h || self.width > w || self.height == 0 || self.width == 0 {
            return Err(Error::Config(format!(
                "center crop {}x{} does not fit a {h}x{w} sample; resize first",
                self.height, self.width
            )));
        }
        if (self.height, self.width) == (h, w) {
            return Ok(sample);
        }
        let mut sample = sample;
        sample.crop_in_place(
            (h - self.height) / 2,
            (w - self.width) / 2,
            self.height,
            self.width,
        )?;
        Ok(sample)
    }
}

/// Crops a random region of random area and aspect ratio, then resizes it to `height x width`
/// (torchvision's `RandomResizedCrop`; defaults are MAE's scale `(0.2, 1.0)` and ratio `(3/4, 4/3)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Output rows.
    pub height: usize,
    /// Output columns.
    pub width: usize,
    /// Range of the crop's area as a fraction of the sample's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// MAE's defaults at output size `height x width`.
    pub fn new(height: usize, width: usize) -> Self {
        RandomResizedCrop {
            height,
            width,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// Sets the area range.
    pub fn with_scale(mut self, lo: f64, hi: f64) -> Self {
        self.scale = (lo, hi);
        self
    }

    /// Sets the aspect-ratio range.
    pub fn with_ratio(mut self, lo: f64, hi: f64) -> Self {
        self.ratio = (lo, hi);
        self
    }

    /// Draws the crop for an `h x w` sample: up to 10 tries of random area/ratio, then a central fallback crop
    /// with the ratio clamped into range (torchvision's algorithm).
    pub fn sample_box(&self, h: usize, w: usize, rng: &mut SampleRng) -> CropBox {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round();
            let ch = (target / aspect).sqrt().round();
            if cw >= 1.0 && ch >= 1.0 && cw <= w as f64 && ch <= h as f64 {
                let (cw, ch) = (cw as usize, ch as usize);
                let top = rng.random_range(0..=h - ch);
                let left = rng.random_range(0..=w - cw);
                return CropBox {
                    top,
                    left,
                    height: ch,
                    width: cw,
                };
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (mut cw, mut ch) = (w, h);
        if in_ratio < self.ratio.0 {
            ch = ((w as f64 / self.ratio.0).round() as usize).clamp(1, h);
        } else if in_ratio > self.ratio.1 {
            cw = ((h as f64 * self.ratio.1).round() as usize).clamp(1, w);
        }
        CropBox {
            top: (h - ch) / 2,
            left: (w - cw) / 2,
            height: ch,
            width: cw,
        }
    }
}

fn uniform(rng: &mut SampleRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

impl Transform for RandomResizedCrop {
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        let ok = |r: (f64, f64)| r.0.is_finite() && r.1.is_finite() && r.0 > 0.0 && r.0 <= r.1;
        if !ok(self.scale) || self.scale.1 > 1.0 || !ok(self.ratio) {
            return Err(Error::Config(format!(
                "random resized crop needs 0 < scale.0 <= scale.1 <= 1 and 0 < ratio.0 <= ratio.1, got \
                 scale {:?} ratio {:?}",
                self.scale, self.ratio
            )));
        }
        let b = self.sample_box(sample.height(), sample.width(), rng);
        resized_crop(sample, b, self.height, self.width)
    }
}

/// Mirrors the sample left-right with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomHorizontalFlip {
    /// Flip probability.
    pub p: f64,
}

impl RandomHorizontalFlip {
    /// Flip with probability `p`.
    pub fn new(p: f64) -> Self {
        RandomHorizontalFlip { p }
    }
}

/// Mirrors every plane of `sample` left-right.
pub fn hflip(mut sample: Sample) -> Sample {
    let w = sample.width();
    for row in sample.data_mut().chunks_exact_mut(w) {
        row.reverse();
    }
    sample
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        if rng.random::<f64>() < self.p {
            Ok(hflip(sample))
        } else {
            Ok(sample)
        }
    }
}

/// Rec. 709 luma weights of R, G, B: the grey value [`crate::decode`] gives colour files.
pub const LUMA_709: [f32; 3] = [0.2126, 0.7152, 0.0722];

/// Converts a sample to 1 or 3 channels: grey to RGB repeats the plane, RGB to grey takes the Rec. 709 luma
/// ([`LUMA_709`], what [`crate::decode`] does for colour files), so a grey folder feeds a colour model and CIFAR
/// feeds a grey one. Other channel counts are an error; the identity when the count already matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToChannels {
    /// Output channels, 1 or 3.
    pub channels: usize,
}

impl ToChannels {
    /// Convert to `channels` (1 or 3).
    pub fn new(channels: usize) -> Result<Self> {
        match channels {
            1 | 3 => Ok(ToChannels { channels }),
            n => Err(Error::Config(format!(
                "images can be converted to 1 (grey) or 3 (RGB) channels, not {n}"
            ))),
        }
    }
}

impl Transform for ToChannels {
    fn apply(&self, sample: Sample, _rng: &mut SampleRng) -> Result<Sample> {
        let from = sample.channels();
        if from == self.channels {
            return Ok(sample);
        }
        // Channel-major layout: each channel is one contiguous block of `T * H * W` values.
        let per = sample.frames() * sample.height() * sample.width();
        let mut data = crate::pool::take(per * self.channels);
        match (from, self.channels) {
            (1, 3) => (0..3).for_each(|_| data.extend_from_slice(sample.data())),
            (3, 1) => {
                let d = sample.data();
                let (r, g, b) = (&d[..per], &d[per..2 * per], &d[2 * per..]);
                let [wr, wg, wb] = LUMA_709;
                data.extend(
                    r.iter()
                        .zip(g)
                        .zip(b)
                        .map(|((r, g), b)| wr * r + wg * g + wb * b),
                );
            }
            (from, to) => {
                return Err(Error::Config(format!(
                    "cannot convert a {from}-channel sample to {to} channels (only grey <-> RGB)"
                )))
            }
        }
        let mut shape = sample.shape().to_vec();
        shape[0] = self.channels;
        let label = sample.label();
        crate::pool::give(sample.into_parts().0);
        if shape.len() == 4 {
            Sample::video(data, shape[0], shape[1], shape[2], shape[3], label)
        } else {
            Sample::image(data, shape[0], shape[1], shape[2], label)
        }
    }
}

/// `(x - mean[c]) / std[c]` per channel; one value broadcasts to all channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Per-channel statistics; errors if the lengths differ, are empty, or a std is not positive and finite.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::Config(format!(
                "normalize needs equally long, non-empty mean and std, got {} and {}",
                mean.len(),
                std.len()
            )));
        }
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::Config(format!(
                "normalize needs finite mean and positive std, got {mean:?} / {std:?}"
            )));
        }
        Ok(Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
        })
    }

    /// ImageNet statistics (RGB).
    pub fn imagenet() -> Self {
        Normalize {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// MNIST statistics (one channel).
    pub fn mnist() -> Self {
        Normalize {
            mean: MNIST_MEAN.to_vec(),
            std: MNIST_STD.to_vec(),
        }
    }
}

impl Transform for Normalize {
    fn apply(&self, mut sample: Sample, _rng: &mut SampleRng) -> Result<Sample> {
        let c = sample.channels();
        if self.mean.len() != 1 && self.mean.len() != c {
            return Err(Error::Config(format!(
                "normalize has {} channel statistics but the sample has {c} channels",
                self.mean.len()
            )));
        }
        let per_channel = sample.frames() * sample.height() * sample.width();
        for (ci, chunk) in sample.data_mut().chunks_exact_mut(per_channel).enumerate() {
            let k = if self.mean.len() == 1 { 0 } else { ci };
            let (m, s) = (self.mean[k], self.std[k]);
            chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
        Ok(sample)
    }
}
