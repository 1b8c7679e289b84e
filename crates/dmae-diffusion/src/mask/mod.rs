//! Patch masks: which patches the encoder sees (visible, `x0^v`) and which the decoder
//! generates (masked, `x0^m`).
//!
//! Every strategy returns a [`MaskIndices`]: per sample, the visible indices, the masked
//! indices and `ids_restore`, as u32 tensors like MAE's `random_masking`. The two index sets
//! partition `0..L`, every sample of a batch has the same (exact) number of masked patches,
//! and within each set the indices are in ascending order. The "shuffle" that `ids_restore`
//! undoes is `ids_shuffle = concat(visible, masked)`.
//!
//! - [`MaskStrategy`]: image masks on a [`PatchGrid`] — random, center block, BEiT block-wise,
//!   or a fixed [`PatchMask`] (e.g. from a user's mask image, see [`PatchMask::from_pixels`]).
//! - [`VideoMaskStrategy`]: space-time masks on a [`VideoGrid`] — tube or random.

mod block;
mod image;
mod video;

pub use block::BlockWise;
pub use image::{PatchMask, ResizeRule};
pub use video::{VideoGrid, VideoMaskStrategy};

use candle_core::{DType, Device, Tensor};
use rand::seq::index;
use rand_chacha::ChaCha8Rng;

use crate::error::{check_ratio, Error, Result};
use crate::gather::gather_tokens;
use crate::rng::{Domain, RngKey};

/// The patch grid of one image: `rows × cols` patches, numbered row-major
/// (`index = row * cols + col`), as produced by MAE's patchify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PatchGrid {
    /// Patch rows (`H / p`).
    pub rows: usize,
    /// Patch columns (`W / p`).
    pub cols: usize,
}

impl PatchGrid {
    /// A grid of `rows × cols` patches.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }

    /// The grid of an `height × width` image cut into `patch × patch` patches;
    /// both sides must be positive multiples of `patch`.
    pub fn for_image(height: usize, width: usize, patch: usize) -> Result<Self> {
        if height == 0
            || width == 0
            || height.checked_rem(patch) != Some(0)
            || width.checked_rem(patch) != Some(0)
        {
            return Err(Error::invalid(
                "height, width",
                format!("positive multiples of the patch size {patch}"),
                format!("{height} x {width}"),
            ));
        }
        Ok(Self::new(height / patch, width / patch))
    }

    /// Number of patches `L = rows · cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the grid has no patch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-sample index sets of one mask draw (MAE's `ids_keep`, the masked complement and
/// `ids_restore`), all `u32` tensors on one device: the one mask type of the workspace, what
/// the strategies draw, what the encoder and decoder read and what samplers inpaint.
///
/// Invariants: for every sample `visible ∪ masked = {0..L}` with no overlap;
/// `ids_restore[ids_shuffle[j]] = j` for `ids_shuffle = concat(visible, masked)`. The
/// strategies of this module (and [`MaskIndices::from_masks`]) list both sets in ascending
/// order; [`MaskIndices::from_noise`] keeps MAE's shuffled order.
#[derive(Clone, Debug)]
pub struct MaskIndices {
    visible: Tensor,
    masked: Tensor,
    ids_restore: Tensor,
    masks: Vec<Vec<bool>>,
}

impl MaskIndices {
    /// Builds the index sets from host boolean masks (`true` = masked), one per sample, each of
    /// length `L`. All samples must mask the same number of patches so the sets stack into
    /// `(N, L_m)` tensors.
    pub fn from_masks(masks: Vec<Vec<bool>>, device: &Device) -> Result<Self> {
        let n = masks.len();
        if n == 0 {
            return Err(Error::invalid("masks", "at least one sample", 0));
        }
        let l = masks[0].len();
        let lm = masks[0].iter().filter(|&&m| m).count();
        let lv = l - lm;
        let mut visible = Vec::with_capacity(n * lv);
        let mut masked = Vec::with_capacity(n * lm);
        let mut restore = vec![0u32; n * l];
        for (i, m) in masks.iter().enumerate() {
            if m.len() != l {
                return Err(Error::Shape {
                    arg: "masks",
                    expected: format!("every mask of length {l}"),
                    got: vec![i, m.len()],
                });
            }
            let count = m.iter().filter(|&&b| b).count();
            if count != lm {
                return Err(Error::invalid(
                    "masks",
                    format!("{lm} masked patches in every sample (as in sample 0)"),
                    format!("{count} in sample {i}"),
                ));
            }
            let row = &mut restore[i * l..(i + 1) * l];
            let (mut kv, mut km) = (0usize, 0usize);
            for (j, &is_masked) in m.iter().enumerate() {
                let j32 = to_u32(j)?;
                if is_masked {
                    masked.push(j32);
                    row[j] = to_u32(lv + km)?;
                    km += 1;
                } else {
                    visible.push(j32);
                    row[j] = to_u32(kv)?;
                    kv += 1;
                }
            }
        }
        Ok(Self {
            visible: Tensor::from_vec(visible, (n, lv), device)?,
            masked: Tensor::from_vec(masked, (n, lm), device)?,
            ids_restore: Tensor::from_vec(restore, (n, l), device)?,
            masks,
        })
    }

    /// MAE's / Hugging Face ViTMAE's `random_masking` with explicit noise `(N, L)`:
    /// `ids_shuffle = argsort(noise)` (ascending, ties by index), the first
    /// `⌊L (1 − ratio)⌋` visible, the rest masked, both in that shuffled order (what parity with
    /// transformers' `noise=` argument needs).
    pub fn from_noise(noise: &Tensor, ratio: f64) -> Result<Self> {
        check_ratio("ratio", ratio)?;
        let (_, l) = noise.dims2().map_err(|_| Error::Shape {
            arg: "noise",
            expected: "(N, L)".into(),
            got: noise.dims().to_vec(),
        })?;
        let keep = l - count_for_ratio(ratio, l);
        let rows = noise.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let order = rows
            .iter()
            .map(|row| {
                let mut ids: Vec<usize> = (0..l).collect();
                ids.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
                ids
            })
            .collect();
        Self::from_order(order, keep, noise.device())
    }

    /// Index sets from a per-sample order of all `L` patches (`ids_shuffle`): the first `keep`
    /// are visible, the rest masked, each set in the given order.
    pub fn from_order(order: Vec<Vec<usize>>, keep: usize, device: &Device) -> Result<Self> {
        let n = order.len();
        let l = order.first().map_or(0, Vec::len);
        if n == 0 || keep > l {
            return Err(Error::invalid(
                "order",
                format!("at least one sample and keep <= L = {l}"),
                format!("{n} samples, keep {keep}"),
            ));
        }
        let (mut visible, mut masked) = (Vec::with_capacity(n * keep), Vec::new());
        let mut restore = vec![0u32; n * l];
        let mut masks = Vec::with_capacity(n);
        for (i, ids) in order.iter().enumerate() {
            let mut seen = vec![false; l];
            let mut mask = vec![true; l];
            if ids.len() != l
                || ids
                    .iter()
                    .any(|&j| j >= l || std::mem::replace(&mut seen[j], true))
            {
                return Err(Error::invalid(
                    "order",
                    format!("a permutation of 0..{l} for every sample"),
                    format!("sample {i}"),
                ));
            }
            for (pos, &j) in ids.iter().enumerate() {
                restore[i * l + j] = to_u32(pos)?;
                if pos < keep {
                    visible.push(to_u32(j)?);
                    mask[j] = false;
                } else {
                    masked.push(to_u32(j)?);
                }
            }
            masks.push(mask);
        }
        Ok(Self {
            visible: Tensor::from_vec(visible, (n, keep), device)?,
            masked: Tensor::from_vec(masked, (n, l - keep), device)?,
            ids_restore: Tensor::from_vec(restore, (n, l), device)?,
            masks,
        })
    }

    /// Every one of `l` patches visible, none masked, for `n` samples (classification and
    /// feature extraction run the encoder through the same path).
    pub fn all_visible(n: usize, l: usize, device: &Device) -> Result<Self> {
        Self::from_masks(vec![vec![false; l]; n.max(1)], device)?.narrow(0, n)
    }

    /// Samples `start..start + len` of the batch (tensor views, no copies).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        let masks = self
            .masks
            .get(start..start + len)
            .ok_or_else(|| {
                Error::invalid(
                    "range",
                    format!("within the batch of {}", self.batch_size()),
                    format!("{start}..{}", start + len),
                )
            })?
            .to_vec();
        Ok(Self {
            visible: self.visible.narrow(0, start, len)?,
            masked: self.masked.narrow(0, start, len)?,
            ids_restore: self.ids_restore.narrow(0, start, len)?,
            masks,
        })
    }

    /// The same index sets on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            visible: self.visible.to_device(device)?,
            masked: self.masked.to_device(device)?,
            ids_restore: self.ids_restore.to_device(device)?,
            masks: self.masks.clone(),
        })
    }

    /// Visible (kept) patch indices, `(N, L_v)` u32, ascending per sample.
    pub fn visible(&self) -> &Tensor {
        &self.visible
    }

    /// Masked patch indices, `(N, L_m)` u32, ascending per sample.
    pub fn masked(&self) -> &Tensor {
        &self.masked
    }

    /// `(N, L)` u32: position of each patch in `concat(visible, masked)`, so that
    /// `gather(concat(x_v, x_m), ids_restore) = x` (MAE's `ids_restore`).
    pub fn ids_restore(&self) -> &Tensor {
        &self.ids_restore
    }

    /// `ids_shuffle = concat(visible, masked)`, `(N, L)` u32; the inverse permutation of
    /// [`ids_restore`](Self::ids_restore).
    pub fn ids_shuffle(&self) -> Result<Tensor> {
        Ok(Tensor::cat(&[&self.visible, &self.masked], 1)?)
    }

    /// Host copy of the masks: `masks()[n][j]` is true when patch `j` of sample `n` is masked.
    pub fn masks(&self) -> &[Vec<bool>] {
        &self.masks
    }

    /// MAE's binary `mask`, `(N, L)` in `dtype` on the indices' device: 1 = masked, 0 = visible.
    pub fn mask_tensor(&self, dtype: DType) -> Result<Tensor> {
        let n = self.batch_size();
        let l = self.num_tokens();
        let data: Vec<f32> = self
            .masks
            .iter()
            .flat_map(|m| m.iter().map(|&b| if b { 1.0 } else { 0.0 }))
            .collect();
        Ok(Tensor::from_vec(data, (n, l), self.visible.device())?.to_dtype(dtype)?)
    }

    /// Batch size `N`.
    pub fn batch_size(&self) -> usize {
        self.masks.len()
    }

    /// Number of patches `L` per sample.
    pub fn num_tokens(&self) -> usize {
        self.masks.first().map_or(0, Vec::len)
    }

    /// Number of visible patches `L_v` per sample.
    pub fn num_visible(&self) -> usize {
        self.num_tokens() - self.num_masked()
    }

    /// Number of masked patches `L_m` per sample.
    pub fn num_masked(&self) -> usize {
        self.masks
            .first()
            .map_or(0, |m| m.iter().filter(|&&b| b).count())
    }

    /// Splits tokens or patches `x: (N, L, D)` into `(x_v, x_m) = (x[visible], x[masked])`,
    /// shapes `(N, L_v, D)` and `(N, L_m, D)`; differentiable with respect to `x`.
    pub fn split(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_tokens("x", x, self.num_tokens())?;
        Ok((
            gather_tokens(x, &self.visible)?,
            gather_tokens(x, &self.masked)?,
        ))
    }

    /// Puts visible `(N, L_v, D)` and masked `(N, L_m, D)` tokens back in patch order:
    /// `x = gather(concat(x_v, x_m), ids_restore)`, `(N, L, D)` (MAE's unshuffle);
    /// differentiable with respect to both inputs.
    pub fn merge(&self, visible: &Tensor, masked: &Tensor) -> Result<Tensor> {
        self.check_tokens("visible", visible, self.num_visible())?;
        self.check_tokens("masked", masked, self.num_masked())?;
        if visible.dim(2)? != masked.dim(2)? {
            return Err(Error::Shape {
                arg: "masked",
                expected: format!("feature size {} to match `visible`", visible.dim(2)?),
                got: masked.dims().to_vec(),
            });
        }
        let both = Tensor::cat(&[visible, masked], 1)?;
        gather_tokens(&both, &self.ids_restore)
    }

    fn check_tokens(&self, arg: &'static str, x: &Tensor, len: usize) -> Result<()> {
        match x.dims() {
            &[n, l, _] if n == self.batch_size() && l == len => Ok(()),
            got => Err(Error::Shape {
                arg,
                expected: format!("({}, {len}, D)", self.batch_size()),
                got: got.to_vec(),
            }),
        }
    }
}

pub(crate) fn to_u32(j: usize) -> Result<u32> {
    u32::try_from(j).map_err(|_| Error::invalid("L", "fewer than 2^32 patches", j))
}

/// How to choose the masked patches of an image.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum MaskStrategy {
    /// Uniformly random subset of patches, independently per sample (MAE/DiffMAE
    /// pre-training; the paper's default ratio is 0.75). As in MAE, `⌊L (1 − ratio)⌋` patches
    /// are kept and exactly `L − ⌊L (1 − ratio)⌋` are masked (147 of 196 at 0.75, 177 at 0.9);
    /// a 1e-9 guard inside the floor keeps float error from dropping a patch
    /// (`L = 10, ratio = 0.9` keeps 1, where Python's `int(10 * (1 - 0.9))` gives 0).
    Random {
        /// Fraction of patches to mask, in [0, 1).
        ratio: f64,
    },
    /// One centered rectangle covering about `ratio` of the area (the center-inpainting
    /// benchmark; 0.25 masks the central half of each side). The block is
    /// `round(rows·√ratio) × round(cols·√ratio)` patches, i.e. the area fraction rounded to
    /// whole patches per side, at row offset `⌊(rows − h)/2⌋` and column offset
    /// `⌊(cols − w)/2⌋`; the same for every sample.
    CenterBlock {
        /// Fraction of the area to mask, in [0, 1).
        ratio: f64,
    },
    /// BEiT-style block-wise masking: random rectangles until exactly as many patches as
    /// [`MaskStrategy::Random`] masks are masked (see [`BlockWise`]).
    BlockWise(BlockWise),
    /// The same given mask for every sample (e.g. a user's inpainting mask).
    Fixed(PatchMask),
}

impl MaskStrategy {
    /// Random masking with `ratio` (validated).
    pub fn random(ratio: f64) -> Result<Self> {
        check_ratio("ratio", ratio)?;
        Ok(Self::Random { ratio })
    }

    /// Center-block masking covering `ratio` of the area (validated).
    pub fn center_block(ratio: f64) -> Result<Self> {
        check_ratio("ratio", ratio)?;
        Ok(Self::CenterBlock { ratio })
    }

    /// BEiT block-wise masking to `ratio` with BEiT's defaults for the other settings.
    pub fn block_wise(ratio: f64) -> Result<Self> {
        let b = BlockWise::new(ratio);
        b.validate()?;
        Ok(Self::BlockWise(b))
    }

    /// Checks the strategy's settings against a grid without drawing anything.
    pub fn validate(&self, grid: PatchGrid) -> Result<()> {
        match self {
            Self::Random { ratio } | Self::CenterBlock { ratio } => check_ratio("ratio", *ratio),
            Self::BlockWise(b) => b.validate(),
            Self::Fixed(m) => m.check_grid(grid),
        }
    }

    /// The number of masked patches this strategy produces on `grid` (the same for every
    /// sample and every draw).
    pub fn num_masked(&self, grid: PatchGrid) -> Result<usize> {
        self.validate(grid)?;
        Ok(match self {
            Self::Random { ratio } => count_for_ratio(*ratio, grid.len()),
            Self::BlockWise(b) => count_for_ratio(b.ratio, grid.len()),
            Self::CenterBlock { ratio } => {
                let (h, w) = center_block_size(*ratio, grid);
                h * w
            }
            Self::Fixed(m) => m.num_masked(),
        })
    }

    /// Draws the masks of a batch of `batch` images on `grid`. Sample `i` uses its own stream
    /// derived from `(key, i)`, so it does not depend on the batch size or thread count.
    pub fn sample(
        &self,
        grid: PatchGrid,
        batch: usize,
        key: RngKey,
        device: &Device,
    ) -> Result<MaskIndices> {
        self.validate(grid)?;
        let masks = (0..batch)
            .map(|i| self.sample_one(grid, &mut key.rng(Domain::Mask, 0, i)))
            .collect::<Result<Vec<_>>>()?;
        MaskIndices::from_masks(masks, device)
    }

    /// One sample's boolean mask (`true` = masked), row-major over `grid`.
    pub(crate) fn sample_one(&self, grid: PatchGrid, rng: &mut ChaCha8Rng) -> Result<Vec<bool>> {
        let l = grid.len();
        match self {
            Self::Random { ratio } => Ok(random_mask(l, count_for_ratio(*ratio, l), rng)),
            Self::CenterBlock { ratio } => {
                let (h, w) = center_block_size(*ratio, grid);
                let (top, left) = ((grid.rows - h) / 2, (grid.cols - w) / 2);
                let mut m = vec![false; l];
                for r in top..top + h {
                    m[r * grid.cols + left..r * grid.cols + left + w].fill(true);
                }
                Ok(m)
            }
            Self::BlockWise(b) => Ok(b.sample_one(grid, rng)),
            Self::Fixed(m) => Ok(m.as_slice().to_vec()),
        }
    }
}

/// `L − ⌊L (1 − ratio) + 1e-9⌋`, the exact masked count of ratio-based strategies (MAE's
/// `len_keep = int(L * (1 - mask_ratio))`, guarded against float error).
pub(crate) fn count_for_ratio(ratio: f64, l: usize) -> usize {
    let keep = ((l as f64 * (1.0 - ratio) + 1e-9).floor() as usize).min(l);
    l - keep
}

/// A uniformly random set of exactly `k` of `l` positions.
pub(crate) fn random_mask(l: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<bool> {
    let mut m = vec![false; l];
    for j in index::sample(rng, l, k) {
        m[j] = true;
    }
    m
}

/// Side lengths `(h, w)` of the centered block for an area fraction `ratio`.
fn center_block_size(ratio: f64, grid: PatchGrid) -> (usize, usize) {
    let s = ratio.sqrt();
    let h = ((grid.rows as f64 * s).round() as usize).min(grid.rows);
    let w = ((grid.cols as f64 * s).round() as usize).min(grid.cols);
    (h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_masks_builds_consistent_indices() -> Result<()> {
        let masks = vec![
            vec![true, false, false, true, false],
            vec![false, true, true, false, false],
        ];
        let mi = MaskIndices::from_masks(masks, &Device::Cpu)?;
        assert_eq!(
            mi.visible().to_vec2::<u32>()?,
            vec![vec![1, 2, 4], vec![0, 3, 4]]
        );
        assert_eq!(mi.masked().to_vec2::<u32>()?, vec![vec![0, 3], vec![1, 2]]);
        assert_eq!(
            mi.ids_restore().to_vec2::<u32>()?,
            vec![vec![3, 0, 1, 4, 2], vec![0, 3, 4, 1, 2]]
        );
        assert_eq!(
            mi.mask_tensor(DType::F32)?.to_vec2::<f32>()?,
            vec![vec![1., 0., 0., 1., 0.], vec![0., 1., 1., 0., 0.]]
        );
        let moved = mi.to_device(&Device::Cpu)?;
        assert_eq!(
            moved.masked().to_vec2::<u32>()?,
            mi.masked().to_vec2::<u32>()?
        );
        assert_eq!(moved.masks(), mi.masks());
        Ok(())
    }

    #[test]
    fn from_masks_rejects_unequal_counts() {
        let masks = vec![vec![true, false], vec![true, true]];
        assert!(matches!(
            MaskIndices::from_masks(masks, &Device::Cpu),
            Err(Error::InvalidArgument { arg: "masks", .. })
        ));
        assert!(matches!(
            MaskIndices::from_masks(vec![vec![true], vec![true, false]], &Device::Cpu),
            Err(Error::Shape { arg: "masks", .. })
        ));
    }

    #[test]
    fn ratio_counts_follow_mae() {
        // MAE: len_keep = int(L * (1 - ratio)).
        assert_eq!(count_for_ratio(0.75, 196), 147);
        assert_eq!(count_for_ratio(0.9, 196), 177); // keeps int(19.6) = 19
        assert_eq!(count_for_ratio(0.9, 1568), 1412); // keeps int(156.8) = 156
        assert_eq!(count_for_ratio(0.9, 10), 9); // 10 * (1 - 0.9) = 0.99999… in f64
        assert_eq!(count_for_ratio(0.0, 7), 0);
        assert_eq!(count_for_ratio(0.999, 4), 4);
    }

    #[test]
    fn center_block_spot_values() -> Result<()> {
        let grid = PatchGrid::new(14, 14);
        // 0.25 of the area: the central 7 x 7 block, rows/cols 3..10.
        let m =
            MaskStrategy::center_block(0.25)?.sample(grid, 1, RngKey::default(), &Device::Cpu)?;
        assert_eq!(m.num_masked(), 49);
        let mask = &m.masks()[0];
        for r in 0..14 {
            for c in 0..14 {
                let inside = (3..10).contains(&r) && (3..10).contains(&c);
                assert_eq!(mask[r * 14 + c], inside, "patch ({r}, {c})");
            }
        }
        // Non-square grid, 4 x 6 with ratio 0.5: sqrt(0.5) = 0.707 -> 3 x 4 block at (0, 1).
        let grid = PatchGrid::new(4, 6);
        let s = MaskStrategy::center_block(0.5)?;
        assert_eq!(s.num_masked(grid)?, 12);
        let m = s.sample(grid, 2, RngKey::default(), &Device::Cpu)?;
        assert_eq!(
            m.masked().to_vec2::<u32>()?[1],
            vec![1, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16]
        );
        Ok(())
    }
}
