//! One pre-training step as data (paper § 3, Fig. 2): mask the patches, noise the masked ones,
//! encode the visible ones, decode, and regress the target on the masked patches.
//!
//! ```text
//! images (N, C, H, W)          ─ ModelConfig::patchify ─>  patches (N, L, P)
//! mask.sample(config, N, key)  ─>  MaskIndices: visible (N, Lv), masked (N, Lm)
//! mask.split(patches)          ─>  x0_v (N, Lv, P), x0_m (N, Lm, P)
//! diffuse(schedule, x0_m, key) ─>  t (N,), ε, x_t = √ᾱ_t x0_m + √(1−ᾱ_t) ε
//! DiffMae::forward             ─>  D(x_t, t, E(x0_v))
//! X0Loss::compute              ─>  mean ‖target − D(…)‖²   (target: x0_m, or ε / v, config.diffusion)
//! ```
//! The schedule, the prediction and the pixel scaling come from [`ModelConfig::diffusion`], so
//! a checkpoint samples with what it was trained with. In MAE mode ([`ModelConfig::into_mae`])
//! the decoder reads a mask token instead of `x_t` and regresses the pixels: no noise is drawn.
//! Every draw comes from `(key, sample index)`, so a step is reproducible from `(seed, step)`
//! alone, whatever the batch split or thread count.
//!
//! Models with a CLIP target ([`crate::Target`]) also regress, with a second decoder head, the
//! patch features of a frozen CLIP tower at the masked positions ([`Pretraining::with_clip`]):
//! the loss is the pixel loss plus `weight ×` the mean squared feature error.
//!
//! Training calls [`Pretraining::backward`]: [`Pretraining::draw`] for the whole batch, then
//! [`Pretraining::loss_on`] and its backward pass per shard of a [`DataParallel`] split, on the
//! shards' own threads, with the gradients summed.

use std::ops::Range;

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use dmae_core::DataParallel;
use dmae_diffusion::{
    diffuse, LossWeighting, MaskIndices, NoiseSchedule, Prediction, RngKey, X0Loss,
};

use crate::clip::{ClipFeatureConfig, ClipVision};
use crate::config::{DataRange, ModelConfig, Target};
use crate::error::{check_shape, Error, Result};
use crate::mask::Masking;
use crate::model::DiffMae;

/// The pieces of one pre-training objective: mask, noise schedule, what is predicted, loss.
#[derive(Clone, Debug)]
pub struct Pretraining {
    /// Which patches the encoder sees.
    pub mask: Masking,
    /// The forward process `q(x_t | x_0)` (unused in MAE mode).
    pub schedule: NoiseSchedule,
    /// What the decoder predicts (unused in MAE mode, which predicts pixels).
    pub prediction: Prediction,
    /// How pixels are scaled before noise is added (unused in MAE mode).
    pub data_range: DataRange,
    /// How the timesteps' losses are weighed (unused in MAE mode).
    pub weighting: LossWeighting,
    /// The regression loss (its `norm_pix` follows [`ModelConfig::norm_pix_loss`]).
    pub loss: X0Loss,
    /// What is regressed: pixels, CLIP features or both ([`ModelConfig::diffusion`]).
    pub target: Target,
    /// The frozen CLIP tower and its features, for models with a CLIP target
    /// ([`Pretraining::with_clip`]).
    pub clip: Option<ClipLoss>,
}

/// The CLIP part of the objective: a frozen tower, which of its features, and their weight.
#[derive(Clone, Debug)]
pub struct ClipLoss {
    /// The tower (shared: it is large and never trained).
    pub tower: Arc<ClipVision>,
    /// Which layer and normalisation.
    pub features: ClipFeatureConfig,
    /// Weight of the feature loss against the pixel loss.
    pub weight: f64,
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
    /// The decoder's output `(N, Lm, P)`.
    pub pred: Tensor,
    /// What it is compared with `(N, Lm, P)` (before `norm_pix`): `x0_m` in the diffusion's
    /// pixel scale, `ε` or `v`; MAE: the masked pixels.
    pub target: Tensor,
}

/// `x` (pixels in [0, 1]) in the diffusion's scale; `Unit` returns `x` untouched.
pub(crate) fn to_diffusion_range(range: DataRange, x: &Tensor) -> Result<Tensor> {
    Ok(match range.affine() {
        (a, b) if a == 1.0 && b == 0.0 => x.clone(),
        (a, b) => x.affine(a, b)?,
    })
}

impl Pretraining {
    /// The setup `config` describes: MAE's default mask ([`Masking::default_for`]), the noise
    /// schedule, prediction and pixel scaling of [`ModelConfig::diffusion`], and the loss with
    /// `config.norm_pix_loss`.
    pub fn for_config(config: &ModelConfig) -> Result<Self> {
        Ok(Self {
            mask: Masking::default_for(config)?,
            schedule: config.diffusion.noise_schedule()?,
            prediction: config.diffusion.prediction,
            data_range: config.pixel_range(),
            weighting: config.diffusion.loss_weighting(),
            loss: X0Loss {
                norm_pix: config.norm_pix_loss,
                ..X0Loss::pretraining()
            },
            target: config.diffusion.target,
            clip: None,
        })
    }

    /// The frozen CLIP `tower` of a model with a CLIP target (its features' settings and
    /// weight from `config.diffusion.clip`); the tower's width must be the model's.
    pub fn with_clip(mut self, config: &ModelConfig, tower: Arc<ClipVision>) -> Result<Self> {
        let c =
            config.diffusion.clip.as_ref().ok_or_else(|| {
                Error::arg("clip", "the model has no CLIP target (diffusion.clip)")
            })?;
        if tower.dim() != c.dim {
            return Err(Error::arg(
                "clip",
                format!(
                    "the tower's features are {} wide, the model's CLIP head {}",
                    tower.dim(),
                    c.dim
                ),
            ));
        }
        c.features.block(tower.config().num_hidden_layers)?;
        self.clip = Some(ClipLoss {
            tower,
            features: c.features,
            weight: c.weight,
        });
        Ok(self)
    }

    /// Every random draw of one step on `images (N, C, H, W)` (clips `(N, C, T, H, W)`), made
    /// for the whole batch from `key` (mask, timesteps, noise), and the inputs the model reads.
    /// Splitting the result with [`Pretraining::loss_on`] never changes a draw.
    pub fn draw(&self, model: &DiffMae, images: &Tensor, key: RngKey) -> Result<PretrainBatch> {
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
        let (x0_visible, x0_masked) = mask.split(&patches)?;
        let (x_t, t, target) = if config.is_diffusion() {
            let x0 = to_diffusion_range(self.data_range, &x0_masked)?;
            let d = diffuse(&self.schedule, &x0, key)?;
            let target = self
                .prediction
                .target(&self.schedule, &x0, &d.noise, &d.t)?;
            (d.x_t, d.t, target)
        } else {
            // The mask-token decoder never reads x_t; zeros keep the ground truth out of it.
            (x0_masked.zeros_like()?, Vec::new(), x0_masked)
        };
        let clip_target = match (self.target, &self.clip) {
            (Target::Pixels, _) => None,
            (_, None) => return Err(Error::arg(
                "clip",
                "this model regresses CLIP features: give the tower with Pretraining::with_clip",
            )),
            (_, Some(c)) => {
                let (rows, cols) = config.grid();
                let grid = dmae_diffusion::PatchGrid::new(rows, cols);
                let all = c
                    .tower
                    .target(&images.to_dtype(DType::F32)?, &c.features, grid)?;
                let all = all.to_device(images.device())?.to_dtype(images.dtype())?;
                Some(dmae_core::gather_tokens(&all, mask.masked())?)
            }
        };
        Ok(PretrainBatch {
            x0_visible,
            mask,
            x_t,
            t,
            target,
            clip_target,
        })
    }

    /// The decoder's output `D(x_t, t, E(x0_v))` and the loss (the mean over the samples in
    /// `range`) for samples `range` of a drawn batch.
    pub fn loss_on(
        &self,
        model: &DiffMae,
        batch: &PretrainBatch,
        range: Range<usize>,
    ) -> Result<(Tensor, Tensor)> {
        let (start, len) = (range.start, range.len());
        let t_in = if batch.t.is_empty() {
            vec![0; len]
        } else {
            batch.t.get(range).map(<[usize]>::to_vec).ok_or_else(|| {
                Error::arg("range", format!("beyond the batch of {}", batch.t.len()))
            })?
        };
        let (pred, clip_pred) = model.forward_targets(
            &batch.x0_visible.narrow(0, start, len)?,
            &batch.mask.narrow(start, len)?,
            &batch.x_t.narrow(0, start, len)?,
            &t_in,
        )?;
        let target = batch.target.narrow(0, start, len)?;
        let pixel_loss = match self.weighting {
            // Uniform keeps the plain mean (bit-identical to the unweighted loss).
            LossWeighting::Uniform => self.loss.compute(&pred, &target)?,
            w if !batch.t.is_empty() => {
                let weights: Vec<f64> = t_in
                    .iter()
                    .map(|&t| w.weight(&self.schedule, self.prediction, t))
                    .collect();
                self.loss.compute_weighted(&pred, &target, &weights)?
            }
            _ => self.loss.compute(&pred, &target)?,
        };
        let loss = match (&batch.clip_target, clip_pred, &self.clip) {
            (Some(clip_target), Some(clip_pred), Some(c)) => {
                let clip_target = clip_target.narrow(0, start, len)?;
                let clip_loss = ((clip_pred - clip_target)?.sqr()?.mean_all()? * c.weight)?;
                match self.target {
                    Target::Clip => clip_loss,
                    _ => (pixel_loss + clip_loss)?,
                }
            }
            (Some(_), None, _) => {
                return Err(Error::arg("model", "has no CLIP head for its CLIP target"))
            }
            _ => pixel_loss,
        };
        Ok((loss, pred))
    }

    /// One step on `images (N, C, H, W)` (clips `(N, C, T, H, W)`): every random draw (mask,
    /// timesteps, noise) is derived from `key`.
    pub fn step(&self, model: &DiffMae, images: &Tensor, key: RngKey) -> Result<PretrainStep> {
        let batch = self.draw(model, images, key)?;
        let n = batch.mask.batch_size();
        let (loss, pred) = self.loss_on(model, &batch, 0..n)?;
        Ok(PretrainStep {
            loss,
            mask: batch.mask,
            t: batch.t,
            pred,
            target: batch.target,
        })
    }

    /// The loss of one step (detached) and the gradients of every model parameter, with the
    /// batch split over `shards` (forward and backward of each part on its own threads, see
    /// [`DataParallel`]). The draws are those of [`Pretraining::step`] with the same key, and the
    /// gradients are the whole batch's whatever the split.
    pub fn backward(
        &self,
        model: &DiffMae,
        images: &Tensor,
        key: RngKey,
        shards: &DataParallel,
    ) -> Result<(Tensor, GradStore)> {
        let batch = self.draw(model, images, key)?;
        let vars: Vec<Var> = model.named_params().iter().map(|p| p.var.clone()).collect();
        let n = batch.mask.batch_size();
        Ok(shards.backward(n, &vars, |r| {
            self.loss_on(model, &batch, r)
                .map(|(loss, _)| loss)
                .map_err(candle_core::Error::wrap)
        })?)
    }
}

/// The inputs of one pre-training step with every random draw made ([`Pretraining::draw`]).
#[derive(Clone, Debug)]
pub struct PretrainBatch {
    /// The visible patches the encoder reads `(N, Lv, P)`, pixels in [0, 1].
    pub x0_visible: Tensor,
    /// The masks.
    pub mask: MaskIndices,
    /// The decoder's masked input `(N, Lm, P)`: `x_t`, or zeros in MAE mode.
    pub x_t: Tensor,
    /// One 0-based timestep per sample (empty in MAE mode).
    pub t: Vec<usize>,
    /// The regression target `(N, Lm, P)` (see [`PretrainStep::target`]).
    pub target: Tensor,
    /// The CLIP features of the masked patches `(N, Lm, D_clip)` (models with a CLIP target).
    pub clip_target: Option<Tensor>,
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
        assert_eq!(a.target.dims(), &[3, 37, 16]);
        assert_eq!(a.t.len(), 3);
        let grads = a.loss.backward().unwrap();
        for p in model.named_params() {
            let g = grads.get(p.var.as_tensor());
            assert!(g.is_some(), "no gradient for {}", p.name);
        }
    }

    /// Split over 1, 2 or 3 shards, a step's loss and gradients are the whole batch's.
    #[test]
    fn sharded_backward_equals_the_whole_batch_step() {
        let dev = Device::Cpu;
        let cfg = small(ModelConfig::mnist());
        let model = DiffMae::new(cfg.clone(), 0, &dev).unwrap();
        let images = Tensor::rand(0f32, 1., (35, 1, 28, 28), &dev).unwrap();
        let p = Pretraining::for_config(&cfg).unwrap();
        let key = RngKey::new(2, 5);
        let whole = p.step(&model, &images, key).unwrap();
        let g1 = whole.loss.backward().unwrap();
        let l1 = whole.loss.to_scalar::<f32>().unwrap();
        for threads in [1, 2, 3] {
            let shards = DataParallel::new(threads, 48).unwrap();
            let (loss, g) = p.backward(&model, &images, key, &shards).unwrap();
            let l = loss.to_scalar::<f32>().unwrap();
            assert!(
                (l - l1).abs() < 1e-6 * l1.abs(),
                "{threads}: loss {l} vs {l1}"
            );
            let max_abs = |t: Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
            for param in model.named_params() {
                let (a, b) = (
                    g.get(param.var.as_tensor()).unwrap(),
                    g1.get(param.var.as_tensor()).unwrap(),
                );
                let scale = max_abs(b.clone()).unwrap();
                let d = max_abs((a - b).unwrap()).unwrap();
                assert!(
                    d <= 1e-4 * scale.max(1e-6),
                    "{threads}: {}: {d} vs {scale}",
                    param.name
                );
            }
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
        assert_eq!(s.target.dims(), &[2, 4 * 58, 32]);
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
