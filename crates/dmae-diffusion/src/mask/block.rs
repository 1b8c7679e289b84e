//! BEiT-style block-wise masking (Bao et al. 2021, "BEiT", Algorithm 1).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{count_for_ratio, PatchGrid};
use crate::error::{check_ratio, Error, Result};

/// Block-wise masking: repeatedly mask a random rectangle of area `s ~ U[min_block_patches,
/// max]` and aspect ratio `r` with `ln r ~ U[ln min_aspect, ln 1/min_aspect]`, sides
/// `h = round(√(s·r))`, `w = round(√(s/r))`, at a uniform position, until the target
/// masked count of [`MaskStrategy::Random`](super::MaskStrategy::Random) is reached (BEiT,
/// Algorithm 1).
///
/// A rectangle is accepted only if it adds between 1 and the still-missing number of new
/// patches (so the target is never exceeded); `max_attempts` rectangles are tried per block.
/// When no rectangle fits any more (small grids, a target close to `L`), the remaining count
/// is filled with uniformly random unmasked patches, so the masked count is always exact.
/// This fill is this crate's addition: BEiT stops short instead.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockWise {
    /// Target fraction of masked patches, in [0, 1); the count is `L − ⌊L (1 − ratio)⌋` as for random masks.
    pub ratio: f64,
    /// Smallest block area in patches (BEiT: 16).
    pub min_block_patches: usize,
    /// Largest block area in patches; `None` = no limit beyond the missing count (BEiT's default).
    pub max_block_patches: Option<usize>,
    /// Smallest aspect ratio `h / w`; the largest is its inverse (BEiT: 0.3).
    pub min_aspect: f64,
    /// Rectangles tried per block before giving up on it (BEiT: 10).
    pub max_attempts: usize,
}

impl BlockWise {
    /// Block-wise masking to `ratio` with BEiT's defaults (min block 16 patches, no max,
    /// aspect in [0.3, 1/0.3], 10 attempts). Validate with [`BlockWise::validate`].
    pub fn new(ratio: f64) -> Self {
        Self {
            ratio,
            min_block_patches: 16,
            max_block_patches: None,
            min_aspect: 0.3,
            max_attempts: 10,
        }
    }

    /// Checks every setting's domain.
    pub fn validate(&self) -> Result<()> {
        check_ratio("ratio", self.ratio)?;
        if self.min_block_patches == 0 {
            return Err(Error::invalid("min_block_patches", ">= 1", 0));
        }
        if let Some(max) = self.max_block_patches {
            if max < self.min_block_patches {
                return Err(Error::invalid(
                    "max_block_patches",
                    format!(">= min_block_patches = {}", self.min_block_patches),
                    max,
                ));
            }
        }
        if !(self.min_aspect.is_finite() && self.min_aspect > 0.0 && self.min_aspect <= 1.0) {
            return Err(Error::invalid(
                "min_aspect",
                "a value in (0, 1]",
                self.min_aspect,
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::invalid("max_attempts", ">= 1", 0));
        }
        Ok(())
    }

    /// One sample's mask; the settings must have been validated.
    pub(crate) fn sample_one(&self, grid: PatchGrid, rng: &mut ChaCha8Rng) -> Vec<bool> {
        let (rows, cols) = (grid.rows, grid.cols);
        let target = count_for_ratio(self.ratio, grid.len());
        let mut mask = vec![false; grid.len()];
        let mut count = 0usize;
        let log_aspect = (self.min_aspect.ln(), (1.0 / self.min_aspect).ln());
        while count < target {
            let missing = target - count;
            let max_patches = self.max_block_patches.map_or(missing, |m| m.min(missing));
            let delta = self.one_block(&mut mask, rows, cols, max_patches, log_aspect, rng);
            if delta == 0 {
                break;
            }
            count += delta;
        }
        if count < target {
            let free: Vec<usize> = (0..mask.len()).filter(|&j| !mask[j]).collect();
            for k in rand::seq::index::sample(rng, free.len(), target - count) {
                mask[free[k]] = true;
            }
        }
        mask
    }

    /// BEiT's `_mask`: tries up to `max_attempts` rectangles; returns the number of newly
    /// masked patches (0 when none was accepted).
    fn one_block(
        &self,
        mask: &mut [bool],
        rows: usize,
        cols: usize,
        max_patches: usize,
        log_aspect: (f64, f64),
        rng: &mut ChaCha8Rng,
    ) -> usize {
        let lo = self.min_block_patches.min(max_patches) as f64;
        let hi = max_patches as f64;
        for _ in 0..self.max_attempts {
            let area = if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            };
            let aspect = if log_aspect.1 > log_aspect.0 {
                rng.random_range(log_aspect.0..log_aspect.1).exp()
            } else {
                1.0
            };
            let h = (area * aspect).sqrt().round() as usize;
            let w = (area / aspect).sqrt().round() as usize;
            if h == 0 || w == 0 || h >= rows || w >= cols {
                continue;
            }
            let top = rng.random_range(0..=rows - h);
            let left = rng.random_range(0..=cols - w);
            let already = (top..top + h)
                .map(|r| {
                    mask[r * cols + left..r * cols + left + w]
                        .iter()
                        .filter(|&&b| b)
                        .count()
                })
                .sum::<usize>();
            let new = h * w - already;
            if new > 0 && new <= max_patches {
                for r in top..top + h {
                    mask[r * cols + left..r * cols + left + w].fill(true);
                }
                return new;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Domain, RngKey};

    /// Number of 4-connected components of masked patches.
    fn components(mask: &[bool], rows: usize, cols: usize) -> usize {
        let mut seen = vec![false; mask.len()];
        let mut n = 0;
        for s in 0..mask.len() {
            if !mask[s] || seen[s] {
                continue;
            }
            n += 1;
            let mut stack = vec![s];
            seen[s] = true;
            while let Some(j) = stack.pop() {
                let (r, c) = (j / cols, j % cols);
                let nb = [
                    (r > 0).then(|| j - cols),
                    (r + 1 < rows).then(|| j + cols),
                    (c > 0).then(|| j - 1),
                    (c + 1 < cols).then(|| j + 1),
                ];
                for k in nb.into_iter().flatten() {
                    if mask[k] && !seen[k] {
                        seen[k] = true;
                        stack.push(k);
                    }
                }
            }
        }
        n
    }

    #[test]
    fn blocks_are_contiguous_unlike_random() {
        // BEiT's setting: 14 x 14 grid, 40% masked. Block-wise masks form few large regions;
        // a random mask of the same count forms many small ones.
        let grid = PatchGrid::new(14, 14);
        let b = BlockWise::new(0.4);
        let (mut blocky, mut random) = (0, 0);
        for i in 0..20 {
            let mut rng = RngKey::new(3, 0).rng(Domain::Mask, 0, i);
            let m = b.sample_one(grid, &mut rng);
            assert_eq!(m.iter().filter(|&&x| x).count(), 79); // keeps int(196 · 0.6) = 117
            blocky += components(&m, 14, 14);
            let r = super::super::random_mask(196, 79, &mut rng);
            random += components(&r, 14, 14);
        }
        assert!(
            blocky * 3 < random,
            "block-wise {blocky} vs random {random} components"
        );
    }

    #[test]
    fn small_grid_falls_back_to_exact_fill() {
        // On 3 x 3 no 16-patch block fits, so the count comes from the fill.
        let grid = PatchGrid::new(3, 3);
        let mut rng = RngKey::new(0, 0).rng(Domain::Mask, 0, 0);
        let m = BlockWise::new(0.5).sample_one(grid, &mut rng);
        assert_eq!(m.iter().filter(|&&x| x).count(), 5);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let mut b = BlockWise::new(0.4);
        b.min_aspect = 0.0;
        assert!(matches!(
            b.validate(),
            Err(Error::InvalidArgument {
                arg: "min_aspect",
                ..
            })
        ));
        let mut b = BlockWise::new(0.4);
        b.max_block_patches = Some(4);
        assert!(matches!(
            b.validate(),
            Err(Error::InvalidArgument {
                arg: "max_block_patches",
                ..
            })
        ));
        assert!(matches!(
            BlockWise::new(1.0).validate(),
            Err(Error::InvalidRatio { arg: "ratio", .. })
        ));
    }
}
