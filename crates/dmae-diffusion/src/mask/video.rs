//! Space-time masks for video (tubelet tokens): tube, random space-time, future frames.

use candle_core::Device;

use super::{count_for_ratio, random_mask, MaskIndices, MaskStrategy, PatchGrid};
use crate::error::{check_ratio, Error, Result};
use crate::rng::{Domain, RngKey};

/// The token grid of a clip cut into tubelets: `frames × rows × cols` tokens, numbered
/// time-major (`index = (t · rows + r) · cols + c`), the order of MAE-ST/VideoMAE's
/// 3-D patch embedding flattened over `(T', H', W')`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VideoGrid {
    /// Temporal positions `T' = T / tubelet_t`.
    pub frames: usize,
    /// Patch rows `H / p`.
    pub rows: usize,
    /// Patch columns `W / p`.
    pub cols: usize,
}

impl VideoGrid {
    /// A grid of `frames × rows × cols` tokens.
    pub fn new(frames: usize, rows: usize, cols: usize) -> Self {
        Self { frames, rows, cols }
    }

    /// The spatial grid of one temporal position.
    pub fn spatial(&self) -> PatchGrid {
        PatchGrid::new(self.rows, self.cols)
    }

    /// Number of tokens `L = frames · rows · cols`.
    pub fn len(&self) -> usize {
        self.frames * self.rows * self.cols
    }

    /// Whether the grid has no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How to choose the masked tokens of a clip.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum VideoMaskStrategy {
    /// Tube masking (VideoMAE): one spatial mask per sample, drawn with the given image
    /// strategy on [`VideoGrid::spatial`], repeated at every temporal position; the masked
    /// count is `frames ×` the spatial count.
    Tube(MaskStrategy),
    /// Uniformly random space-time masking (MAE-ST): exactly `L − ⌊L (1 − ratio)⌋` of all
    /// `L = frames · rows · cols` tokens (MAE's count, see [`MaskStrategy::Random`]), independently per sample (MAE-ST's default ratio 0.9).
    RandomSpaceTime {
        /// Fraction of tokens to mask, in [0, 1).
        ratio: f64,
    },
    /// Frame prediction: the first `visible` temporal positions are visible, every token of
    /// the later ones is masked (e.g. predicting the future of a Moving-MNIST clip); the
    /// same for every sample. `visible ≤ frames`.
    FutureFrames {
        /// Number of leading temporal positions that stay visible.
        visible: usize,
    },
    /// Frame interpolation: `masked` consecutive temporal positions in the middle of the clip
    /// (starting at `⌊(frames − masked) / 2⌋`) are masked entirely, the others visible; the
    /// same for every sample. `masked ≤ frames`.
    MiddleFrames {
        /// Number of masked temporal positions.
        masked: usize,
    },
}

impl VideoMaskStrategy {
    /// Tube masking with a random spatial mask of `ratio` (validated).
    pub fn tube(ratio: f64) -> Result<Self> {
        Ok(Self::Tube(MaskStrategy::random(ratio)?))
    }

    /// Random space-time masking with `ratio` (validated).
    pub fn random_space_time(ratio: f64) -> Result<Self> {
        check_ratio("ratio", ratio)?;
        Ok(Self::RandomSpaceTime { ratio })
    }

    /// Checks the strategy's settings against a grid without drawing anything.
    pub fn validate(&self, grid: VideoGrid) -> Result<()> {
        match self {
            Self::Tube(s) => s.validate(grid.spatial()),
            Self::RandomSpaceTime { ratio } => check_ratio("ratio", *ratio),
            Self::FutureFrames { visible } if *visible > grid.frames => Err(Error::invalid(
                "visible",
                format!("at most frames = {}", grid.frames),
                visible,
            )),
            Self::MiddleFrames { masked } if *masked > grid.frames => Err(Error::invalid(
                "masked",
                format!("at most frames = {}", grid.frames),
                masked,
            )),
            Self::FutureFrames { .. } | Self::MiddleFrames { .. } => Ok(()),
        }
    }

    /// The number of masked tokens per sample on `grid`.
    pub fn num_masked(&self, grid: VideoGrid) -> Result<usize> {
        self.validate(grid)?;
        Ok(match self {
            Self::Tube(s) => grid.frames * s.num_masked(grid.spatial())?,
            Self::RandomSpaceTime { ratio } => count_for_ratio(*ratio, grid.len()),
            Self::FutureFrames { visible } => (grid.frames - visible) * grid.rows * grid.cols,
            Self::MiddleFrames { masked } => masked * grid.rows * grid.cols,
        })
    }

    /// Draws the masks of a batch of `batch` clips on `grid`; sample `i` uses its own stream
    /// derived from `(key, i)`.
    pub fn sample(
        &self,
        grid: VideoGrid,
        batch: usize,
        key: RngKey,
        device: &Device,
    ) -> Result<MaskIndices> {
        self.validate(grid)?;
        let masks = (0..batch)
            .map(|i| {
                let mut rng = key.rng(Domain::Mask, 0, i);
                match self {
                    Self::Tube(s) => {
                        Ok(s.sample_one(grid.spatial(), &mut rng)?.repeat(grid.frames))
                    }
                    Self::RandomSpaceTime { ratio } => Ok(random_mask(
                        grid.len(),
                        count_for_ratio(*ratio, grid.len()),
                        &mut rng,
                    )),
                    Self::FutureFrames { visible } => {
                        let hw = grid.rows * grid.cols;
                        Ok((0..grid.len()).map(|j| j / hw >= *visible).collect())
                    }
                    Self::MiddleFrames { masked } => {
                        let hw = grid.rows * grid.cols;
                        let start = (grid.frames - masked) / 2;
                        Ok((0..grid.len())
                            .map(|j| (start..start + masked).contains(&(j / hw)))
                            .collect())
                    }
                }
            })
            .collect::<Result<Vec<_>>>()?;
        MaskIndices::from_masks(masks, device)
    }
}
