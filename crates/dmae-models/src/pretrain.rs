//! One pre-training step as data (paper § 3, Fig. 2): mask the patches, noise the masked ones,
//! encode the visible ones, decode, and take the x0 loss on the masked patches.
//!
//! ```text
//! images (N, C, H, W)          ─ ModelConfig::patchify ─>  patches (N, L, P)
//! mask.sample(grid, N, key)    ─>  visible (N, Lv), masked (N, Lm)
//! split(patches)               ─>  x0_v (N, Lv, P), x0_m (N, Lm, P)
//! diffuse(schedule, x0_m, key) ─>  t (N,), x_t = √ᾱ_t x0_m + √(1−ᾱ_t) ε
//! DiffMae::forward             ─>  x̂0_m = D(x_t, t, E(x0_v))
//! X0Loss::compute              ─>  mean ‖target(x0_m) − x̂0_m‖²
//! ```
//! In MAE mode ([`ModelConfig::into_mae`]) the decoder reads a mask token instead of `x_t`, so
//! no noise is drawn. Every draw comes from `(key, sample index)`, so a step is reproducible
//! from `(seed, step)` alone, whatever the batch split or thread count.

use candle_core::Tensor;
use dmae_diffusion::{
    diffuse, MaskIndices, MaskStrategy, NoiseSchedule, PatchGrid, RngKey, VideoGrid,
    VideoMaskStrategy, X0Loss,
};

use crate::config::{MaskedInput, ModelConfig};
use crate::error::{check_shape, Error, Result};
use crate::masking::TokenMask;
use crate::model::DiffMae;

/// How pre-training masks its inputs: an image strategy on the patch grid, or a video one on
/// the tubelet grid.
#[derive(Clone, Debug, PartialEq)]
pub enum PretrainMask {
    /// Images: [`MaskStrategy`] on `rows × cols`.
    Image(MaskStrategy),
    /// Clips: [`VideoMaskStrategy`] on `T' × rows × cols`.
    Video(VideoMaskStrategy),
}

impl PretrainMask {
    /// MAE's default for `config`: random 75% for images, tube 90% for video (VideoMAE).
    pub fn default_for(config: &ModelConfig) -> Result<Self> {
        Ok(if config.is_video() {
            Self::Video(VideoMaskStrategy::tube(0.9)?)
        } else {
            Self::Image(MaskStrategy::random(0.75)?)
        })
    }

    /// Random masking with `ratio`: per image, or as tubes for video.
    pub fn random(config: &ModelConfig, ratio: f64) -> Result<Self> {
        Ok(if config.is_video() {
            Self::Video(VideoMaskStrategy::tube(ratio)?)
        } else {
            Self::Image(MaskStrategy::random(ratio)?)
        })
    }

    /// Draws the masks of `batch` samples of `config`'s token grid.
    pub fn sample(
        &self,
        config: &ModelConfig,
        batch: usize,
        key: RngKey,
        device: &candle_core::Device,
    ) -> Result<MaskIndices> {
        let (rows, cols) = config.grid();
        Ok(match (self, config.is_video()) {
            (Self::Image(s), false) => s.sample(PatchGrid::new(rows, cols), batch, key, device)?,
            (Self::Video(s), true) => s.sample(
                VideoGrid::new(config.time_steps(), rows, cols),
                batch,
                key,
                device,
            )?,
            (Self::Image(_), true) => {
                return Err(Error::arg("mask", "an image mask for a video model"))
            }
            (Self::Video(_), false) => {
                return Err(Error::arg("mask", "a video mask for an image model"))
            }
        })
    }
}

/// The pieces of one pre-training objective: mask, noise schedule and loss.
#[derive(Clone, Debug)]
pub struct Pretraining {
    /// Which patches the encoder sees.
    pub mask: PretrainMask,
    /// The forward process `q(x_t | x_0)` (unused in MAE mode).
    pub schedule: NoiseSchedule,
    /// The x0 loss (its `norm_pix` follows [`ModelConfig::norm_pix_loss`] by default).
    pub loss: X0Loss,
}

/// What one step produced: the scalar loss to back-propagate and the draws behind it.
#[derive(Clone, Debug)]
pub struct PretrainStep {
    /// Scalar loss, differentiable with respect to the model's parameters.
    pub loss: Tensor,
    /// The masks of the batch.
    pub mask: MaskIndices,
    /// One 0-based timestep per sample (empty in MAE mode).
    pub t: Vec<usize>,
    /// The prediction `x̂0_m (N, Lm, P)`.
    pub pred: Tensor,
    /// The clean masked patches `x0_m (N, Lm, P)`.
    pub x0_masked: Tensor,
}

impl Pretraining {
    /// The paper's setup for `config`: MAE's default mask ([`PretrainMask::default_for`]), the
    /// linear schedule with `T = 1000` (DDPM), and the x0 loss with `config.norm_pix_loss`.
    pub fn for_config(config: &ModelConfig) -> Result<Self> {
        Ok(Self {
            mask: PretrainMask::default_for(config)?,
            schedule: NoiseSchedule::linear(1000)?,
            loss: X0Loss {
                norm_pix: config.norm_pix_loss,
                ..X0Loss::pretraining()
            },
        })
    }

    /// One step on `images (N, C, H, W)` (clips `(N, C, T, H, W)`): every random draw (mask,
    /// timesteps, noise) is derived from `key`.
    pub fn step(&self, model: &DiffMae, images: &Tensor, key: RngKey) -> Result<PretrainStep> {
        let config = model.config();
        let n = images.dims().first().copied().unwrap_or(0);
        let mut want = vec![n];
        want.extend(config.input_dims());
        check_shape("images", images, &want)?;
        if n == 0 {
            return Err(Error::arg("images", "an empty batch"));
        }
        let patches = config.patchify(images)?;
        let mask = self.mask.sample(config, n, key, images.device())?;
        let masking = TokenMask::from(&mask);
        let (_, x0_masked) = mask.split(&patches)?;
        let (x_t, t) = match config.decoder.masked_input {
            MaskedInput::NoisyPatch => {
                let d = diffuse(&self.schedule, &x0_masked, key)?;
                (d.x_t, d.t)
            }
            // The mask-token decoder never reads x_t; zeros keep the ground truth out of it.
            MaskedInput::MaskToken => (x0_masked.zeros_like()?, Vec::new()),
        };
        let t_in = if t.is_empty() { vec![0; n] } else { t.clone() };
        let pred = model.forward(&patches, &masking, &x_t, &t_in)?;
        let loss = self.loss.compute(&pred, &x0_masked)?;
        Ok(PretrainStep {
            loss,
            mask,
            t,
            pred,
            x0_masked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn small(mut c: ModelConfig) -> ModelConfig {
        c.encoder.dim = 32;
        c.encoder.depth = 2;
        c.encoder.heads = 2;
        c.decoder.dim = 16;
        c.decoder.depth = 2;
        c.decoder.heads = 2;
        c
    }

    #[test]
    fn step_is_a_function_of_the_key_and_trains_every_parameter() {
        let dev = Device::Cpu;
        let cfg = small(ModelConfig::mnist());
        let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
        let images = Tensor::rand(0f32, 1., (3, 1, 28, 28), &dev).unwrap();
        let p = Pretraining::for_config(&cfg).unwrap();
        let a = p.step(&model, &images, RngKey::new(1, 7)).unwrap();
        let b = p.step(&model, &images, RngKey::new(1, 7)).unwrap();
        let c = p.step(&model, &images, RngKey::new(1, 8)).unwrap();
        let (la, lb, lc) = (
            a.loss.to_scalar::<f32>().unwrap(),
            b.loss.to_scalar::<f32>().unwrap(),
            c.loss.to_scalar::<f32>().unwrap(),
        );
        assert_eq!(la, lb);
        assert_ne!(la, lc);
        assert_eq!(a.x0_masked.dims(), &[3, 37, 16]);
        assert_eq!(a.t.len(), 3);
        let grads = a.loss.backward().unwrap();
        for p in model.named_params() {
            let g = grads.get(p.var.as_tensor());
            assert!(g.is_some(), "no gradient for {}", p.name);
        }
    }

    #[test]
    fn mae_mode_draws_no_noise_and_rejects_wrong_inputs() {
        let dev = Device::Cpu;
        let cfg = small(ModelConfig::mnist()).into_mae();
        let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
        let p = Pretraining::for_config(&cfg).unwrap();
        let images = Tensor::rand(0f32, 1., (2, 1, 28, 28), &dev).unwrap();
        let s = p.step(&model, &images, RngKey::new(0, 0)).unwrap();
        assert!(s.t.is_empty());
        assert!(s.loss.to_scalar::<f32>().unwrap().is_finite());
        let wrong = Tensor::rand(0f32, 1., (2, 3, 28, 28), &dev).unwrap();
        let e = p.step(&model, &wrong, RngKey::new(0, 0)).unwrap_err();
        assert!(e.to_string().contains("images"), "{e}");
    }

    #[test]
    fn video_step_uses_tube_masks_shared_across_time() {
        let dev = Device::Cpu;
        let mut cfg = small(ModelConfig::moving_mnist());
        cfg.encoder.depth = 2;
        let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
        let p = Pretraining::for_config(&cfg).unwrap();
        let clips = Tensor::rand(0f32, 1., (2, 1, 8, 32, 32), &dev).unwrap();
        let s = p.step(&model, &clips, RngKey::new(0, 3)).unwrap();
        // 90% tube masking: 64 - floor(64 * 0.1) = 58 masked per frame, 4 temporal positions.
        assert_eq!(s.x0_masked.dims(), &[2, 4 * 58, 32]);
        for m in s.mask.masks() {
            for t in 1..4 {
                assert_eq!(m[..64], m[t * 64..(t + 1) * 64]);
            }
        }
        assert!(s.loss.to_scalar::<f32>().unwrap().is_finite());
        assert!(p
            .step(
                &model,
                &Tensor::rand(0f32, 1., (2, 1, 28, 28), &dev).unwrap(),
                RngKey::new(0, 0)
            )
            .is_err());
    }
}
