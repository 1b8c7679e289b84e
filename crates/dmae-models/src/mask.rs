//! Which patches a model's encoder sees: an image mask strategy on the patch grid, or a video
//! one on the tubelet grid, drawn into dmae-diffusion's [`MaskIndices`] (the one index-set type
//! the encoder, the decoder, pre-training and inpainting share).

use candle_core::Device;
use dmae_diffusion::{MaskIndices, MaskStrategy, PatchGrid, RngKey, VideoGrid, VideoMaskStrategy};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// How a model's inputs are masked: [`MaskStrategy`] for image models,
/// [`VideoMaskStrategy`] for video models.
#[derive(Clone, Debug, PartialEq)]
pub enum Masking {
    /// Images: a strategy on the `rows × cols` patch grid.
    Image(MaskStrategy),
    /// Clips: a strategy on the `T' × rows × cols` tubelet grid.
    Video(VideoMaskStrategy),
    /// Several masks taking turns, one per batch: the batch drawn with key step `s` is masked
    /// by part `s mod n`. For pre-training on a mix (e.g. video tubes and random space-time
    /// tokens on alternate steps): every batch keeps one mask, hence one token count, and the
    /// draw stays a function of the key. Built by [`Masking::alternate`].
    Alternate(Vec<Masking>),
}

impl Masking {
    /// MAE's pre-training default for `config`: random 75% for images, tubes of 90% for video
    /// (VideoMAE).
    pub fn default_for(config: &ModelConfig) -> Result<Self> {
        Self::random(config, if config.is_video() { 0.9 } else { 0.75 })
    }

    /// Random masking of `ratio` of the patches: per image, or as tubes (the same spatial mask
    /// in every frame) for video.
    pub fn random(config: &ModelConfig, ratio: f64) -> Result<Self> {
        Ok(if config.is_video() {
            Self::Video(VideoMaskStrategy::tube(ratio)?)
        } else {
            Self::Image(MaskStrategy::random(ratio)?)
        })
    }

    /// An image strategy for `config`: as is for images, repeated in every frame (a tube) for
    /// video.
    pub fn spatial(config: &ModelConfig, strategy: MaskStrategy) -> Self {
        if config.is_video() {
            Self::Video(VideoMaskStrategy::Tube(strategy))
        } else {
            Self::Image(strategy)
        }
    }

    /// Video: every frame after the first `frames − k` is masked (prediction of the last `k`
    /// frames; `k` a multiple of the tubelet, fewer than the clip's frames).
    pub fn future_frames(config: &ModelConfig, k: usize) -> Result<Self> {
        let k = temporal_positions(config, k, "future")?;
        Ok(Self::Video(VideoMaskStrategy::FutureFrames {
            visible: config.time_steps() - k,
        }))
    }

    /// Video: the `k` middle frames are masked (interpolation; `k` a multiple of the tubelet,
    /// fewer than the clip's frames).
    pub fn middle_frames(config: &ModelConfig, k: usize) -> Result<Self> {
        let masked = temporal_positions(config, k, "middle")?;
        Ok(Self::Video(VideoMaskStrategy::MiddleFrames { masked }))
    }

    /// Masks that take turns batch by batch (see [`Masking::Alternate`]); nested alternations
    /// are flattened. Errors on an empty list.
    pub fn alternate(parts: Vec<Masking>) -> Result<Self> {
        let mut flat = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Self::Alternate(inner) => flat.extend(inner),
                p => flat.push(p),
            }
        }
        match flat.len() {
            0 => Err(Error::arg("mask", "an alternation of no masks")),
            1 => Ok(flat.remove(0)),
            _ => Ok(Self::Alternate(flat)),
        }
    }

    /// The number of masked patches per sample on `config`'s grid; for an alternation, the
    /// most any of its parts masks.
    pub fn num_masked(&self, config: &ModelConfig) -> Result<usize> {
        Ok(match self.grid(config)? {
            Grid::Image(s, g) => s.num_masked(g)?,
            Grid::Video(s, g) => s.num_masked(g)?,
            Grid::Turns(parts) => parts
                .iter()
                .try_fold(0, |most, p| Ok::<_, Error>(most.max(p.num_masked(config)?)))?,
        })
    }

    /// The fraction of the patches that are masked on `config`'s grid (what a center block of
    /// `ratio` really hides once rounded to whole patches).
    pub fn masked_fraction(&self, config: &ModelConfig) -> Result<f64> {
        Ok(self.num_masked(config)? as f64 / config.num_patches().max(1) as f64)
    }

    /// Draws the masks of `batch` samples for `config` (sample `i` from its own `(key, i)`
    /// stream).
    pub fn sample(
        &self,
        config: &ModelConfig,
        batch: usize,
        key: RngKey,
        device: &Device,
    ) -> Result<MaskIndices> {
        Ok(match self.grid(config)? {
            Grid::Image(s, g) => s.sample(g, batch, key, device)?,
            Grid::Video(s, g) => s.sample(g, batch, key, device)?,
            Grid::Turns(parts) => {
                // Every part is checked, so a misfit fails on the first batch, not the n-th.
                self.num_masked(config)?;
                let turn = (key.step % parts.len() as u64) as usize;
                parts[turn].sample(config, batch, key, device)?
            }
        })
    }

    fn grid<'a>(&'a self, config: &ModelConfig) -> Result<Grid<'a>> {
        let (rows, cols) = config.grid();
        match (self, config.is_video()) {
            (Self::Image(s), false) => Ok(Grid::Image(s, PatchGrid::new(rows, cols))),
            (Self::Video(s), true) => Ok(Grid::Video(
                s,
                VideoGrid::new(config.time_steps(), rows, cols),
            )),
            (Self::Image(_), true) => Err(Error::arg("mask", "an image mask for a video model")),
            (Self::Video(_), false) => Err(Error::arg("mask", "a video mask for an image model")),
            (Self::Alternate(parts), _) => Ok(Grid::Turns(parts)),
        }
    }
}

enum Grid<'a> {
    Image(&'a MaskStrategy, PatchGrid),
    Video(&'a VideoMaskStrategy, VideoGrid),
    /// An alternation: each part finds its own grid.
    Turns(&'a [Masking]),
}

/// `k` frames as temporal positions of `config`'s tubelets.
fn temporal_positions(config: &ModelConfig, k: usize, what: &str) -> Result<usize> {
    if !config.is_video() {
        return Err(Error::arg(
            "mask",
            format!("{what}:{k} needs a video model"),
        ));
    }
    if k == 0 || !k.is_multiple_of(config.tubelet) || k >= config.num_frames {
        return Err(Error::arg(
            "mask",
            format!(
                "{what}:{k}: K must be a positive multiple of the tubelet ({}) and fewer than the {} frames",
                config.tubelet, config.num_frames
            ),
        ));
    }
    Ok(k / config.tubelet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_model_kind_and_report_what_they_hide() -> Result<()> {
        let dev = Device::Cpu;
        let image = ModelConfig::mnist();
        let video = ModelConfig::moving_mnist();
        assert!(matches!(Masking::default_for(&image)?, Masking::Image(_)));
        assert!(matches!(Masking::default_for(&video)?, Masking::Video(_)));
        // A center block of 0.25 on the 7 x 7 grid rounds to 4 x 4 patches: 16 / 49.
        let c = Masking::spatial(&image, MaskStrategy::center_block(0.25)?);
        assert_eq!(c.num_masked(&image)?, 16);
        assert!((c.masked_fraction(&image)? - 16.0 / 49.0).abs() < 1e-12);
        let m = Masking::middle_frames(&video, 4)?.sample(&video, 2, RngKey::new(0, 0), &dev)?;
        // 4 temporal positions of 8 x 8; positions 1 and 2 masked.
        let want: Vec<bool> = (0..256).map(|j| (1..3).contains(&(j / 64))).collect();
        assert_eq!(m.masks()[1], want);
        assert_eq!(Masking::future_frames(&video, 2)?.num_masked(&video)?, 64);
        assert!(Masking::future_frames(&video, 3).is_err());
        assert!(Masking::future_frames(&image, 2).is_err());
        assert!(c.sample(&video, 1, RngKey::new(0, 0), &dev).is_err());
        Ok(())
    }

    #[test]
    fn an_alternation_masks_each_batch_with_the_part_whose_turn_it_is() -> Result<()> {
        let dev = Device::Cpu;
        let video = ModelConfig::moving_mnist();
        let tube = Masking::random(&video, 0.75)?;
        let space_time = Masking::Video(VideoMaskStrategy::random_space_time(0.75)?);
        let mixed = Masking::alternate(vec![tube.clone(), space_time.clone()])?;
        for step in 0..4 {
            let key = RngKey::new(3, step);
            let part = if step % 2 == 0 { &tube } else { &space_time };
            assert_eq!(
                mixed.sample(&video, 2, key, &dev)?.masks(),
                part.sample(&video, 2, key, &dev)?.masks(),
                "step {step}"
            );
        }
        // Tubes repeat one spatial mask over time; space-time masks do not (at this seed).
        let frames = |step| -> Result<bool> {
            let m = mixed.sample(&video, 1, RngKey::new(3, step), &dev)?.masks()[0].clone();
            let hw = m.len() / video.time_steps();
            Ok(m.chunks(hw).all(|f| f == &m[..hw]))
        };
        assert!(frames(0)? && !frames(1)?);
        // The count is the most any part hides: tubes of 0.9 hide 60 of the 64 tokens, 0.5 of
        // space-time tokens 32.
        let uneven = Masking::alternate(vec![
            Masking::random(&video, 0.9)?,
            Masking::Video(VideoMaskStrategy::random_space_time(0.5)?),
        ])?;
        assert_eq!(
            uneven.num_masked(&video)?,
            Masking::random(&video, 0.9)?.num_masked(&video)?
        );
        // One part alone is that part; none is an error; a misfit part fails on any step.
        assert_eq!(Masking::alternate(vec![tube.clone()])?, tube);
        assert!(Masking::alternate(Vec::new()).is_err());
        let image = Masking::random(&ModelConfig::mnist(), 0.75)?;
        let misfit = Masking::alternate(vec![tube, image])?;
        assert!(misfit.sample(&video, 1, RngKey::new(0, 0), &dev).is_err());
        Ok(())
    }
}
