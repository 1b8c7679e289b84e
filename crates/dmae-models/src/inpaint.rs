//! Inpainting as one call, the twin of [`Pretraining`](crate::Pretraining) (paper § "Noise
//! schedule and sampling"; architecture.md "One sampling call"):
//!
//! ```text
//! images (N, C, H, W)            ─ ModelConfig::patchify ─>  patches (N, L, P)
//! mask.sample(config, N, key)    ─>  MaskIndices (or a given one)
//! mask.split(patches)            ─>  x0_v (N, Lv, P)           (the masked ones are unknown)
//! DiffMae::encode(x0_v, mask)    ─>  Encoded                    ONCE, cross-attention K/V cached
//! Sampler over the masked patches, x_{T−1} ~ N(0, I), at every visited t:
//!     D(x_t, t, ctx) ─ Prediction::to_x0 ─> x̂_0 (clamped to the data range) ─> x_{t_prev}
//! mask.merge(x0_v, x̂_0) ─ unpatchify ─>  images, visible pixels untouched
//! ```
//! The schedule, the prediction and the pixel scaling are the model's own
//! ([`ModelConfig::diffusion`](crate::ModelConfig::diffusion)). MAE models (mask-token decoder)
//! inpaint in one decoder call ([`SamplerKind::Mae`]); the first step of every DiffMAE sampler
//! is that same MAE-like estimate.
//!
//! Models trained with `norm_pix_loss` predict per-patch normalised pixels. They are shown, as
//! in MAE's demo, by de-normalising each predicted patch with the mean and variance of the
//! **ground-truth** patch it replaces: two numbers per masked patch leak from the truth, which
//! is fine for pictures and optimistic for metrics.

use candle_core::{Tensor, D};
use dmae_core::DataParallel;
use dmae_diffusion::{
    Denoiser, MaskIndices, NoiseSchedule, Prediction, RngKey, Sampler, SamplerKind,
};

use crate::config::{DataRange, ModelConfig};
use crate::error::{check_shape, Error, Result};
use crate::mask::Masking;
use crate::model::DiffMae;
use crate::pretrain::to_diffusion_range;

/// How to inpaint: which patches to hide, which sampler, and what to record.
#[derive(Clone, Debug)]
pub struct Inpainting {
    /// Which patches are hidden (drawn per call from the key, see [`Inpainting::run`]).
    pub mask: Masking,
    sampler: Sampler,
    prediction: Prediction,
    data_range: DataRange,
    norm_pix: bool,
    kv_cache: bool,
    guide: Option<Guide>,
    /// False for MAE models: their decoder reads mask tokens, so the noise they are handed
    /// does not matter.
    diffusion: bool,
}

/// Autoguidance: a weaker model of the same task and its weight ([`Inpainting::with_guide`]).
#[derive(Clone, Debug)]
struct Guide {
    model: DiffMae,
    prediction: Prediction,
    weight: f64,
}

/// What [`Inpainting::run_with`] calls at every visited step (an error stops the run).
pub type OnStep<'a> = dyn FnMut(&InpaintStep) -> Result<()> + 'a;

/// One visited sampling step, as [`Inpainting::run_with`] reports it.
#[derive(Clone, Debug)]
pub struct InpaintStep {
    /// Position of the step in the sampler's schedule (0 = the first, noisiest).
    pub index: usize,
    /// Number of steps of the whole run.
    pub steps: usize,
    /// The 0-based timestep of the prediction.
    pub t: usize,
    /// The prediction `x̂_0` pasted into the visible pixels, images in [0, 1].
    pub images: Tensor,
}

/// The result of inpainting a batch: image tensors `(N, C, H, W)` (clips `(N, C, T, H, W)`) in
/// [0, 1].
#[derive(Clone, Debug)]
pub struct Inpainted {
    /// The ground truth (the input).
    pub input: Tensor,
    /// Visible pixels of the input and the generated masked pixels.
    pub sample: Tensor,
    /// 1 at masked pixels, 0 elsewhere (every channel).
    pub pixel_mask: Tensor,
    /// The masks used.
    pub mask: MaskIndices,
    /// With [`Inpainting::with_trajectory`]: `(t, x̂_0 pasted into the visible pixels)` at every
    /// visited timestep from the noisiest (the MAE-like first step) to the last.
    pub trajectory: Vec<(usize, Tensor)>,
}

impl Inpainting {
    /// The sampler a model inpaints with by default: one decoder call for MAE models, DDIM
    /// with `steps` steps of noise scale `eta` (0: deterministic) for DiffMAE models.
    pub fn default_sampler(config: &ModelConfig, steps: usize, eta: f64) -> SamplerKind {
        if config.is_diffusion() {
            SamplerKind::Ddim { steps, eta }
        } else {
            SamplerKind::Mae
        }
    }

    /// Inpainting with `mask` and a sampler of `kind` over the model's own noise schedule;
    /// `x̂_0` is clamped to the data range at every step (standard in DDPM codebases). MAE
    /// models take [`SamplerKind::Mae`] only.
    pub fn new(config: &ModelConfig, mask: Masking, kind: SamplerKind) -> Result<Self> {
        if !config.is_diffusion() && kind != SamplerKind::Mae {
            return Err(Error::arg(
                "sampler",
                "this is an MAE model (mask-token decoder): it inpaints in one decoder call, \
                 use the MAE sampler",
            ));
        }
        if config.diffusion.target == crate::config::Target::Clip {
            return Err(Error::arg(
                "model",
                "was trained on CLIP features only: its pixel head is untrained, it does not inpaint",
            ));
        }
        mask.num_masked(config)?;
        let schedule: NoiseSchedule = config.diffusion.noise_schedule()?;
        let range = config.pixel_range();
        let sampler = Sampler::new(schedule, kind)?.with_clip_x0(Some(range.bounds()))?;
        Ok(Self {
            mask,
            sampler,
            prediction: config.diffusion.prediction,
            data_range: range,
            norm_pix: config.norm_pix_loss,
            kv_cache: true,
            guide: None,
            diffusion: config.is_diffusion(),
        })
    }

    /// Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    /// itself", eq. 2): at every step `x̂_0 = x̂_0^guide + w · (x̂_0^model − x̂_0^guide)`, where
    /// `guide` is a weaker model of the same task (fewer training steps, a smaller decoder).
    /// `w = 1` is the model alone; `w > 1` pushes each prediction away from the guide's errors.
    /// The guide must cut the same images into the same patches and diffuse them with the same
    /// schedule and pixel scaling; it costs one more decoder call per step.
    pub fn with_guide(mut self, guide: DiffMae, weight: f64) -> Result<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::arg(
                "guidance",
                format!("expected a finite weight >= 0, got {weight}"),
            ));
        }
        if !self.diffusion {
            return Err(Error::arg(
                "guide",
                "the model is an MAE checkpoint (mask-token decoder): it draws no samples to guide",
            ));
        }
        let c = guide.config();
        if !c.is_diffusion() || c.diffusion.target == crate::config::Target::Clip {
            return Err(Error::arg(
                "guide",
                "is not a DiffMAE pixel model: autoguidance needs a diffusion decoder",
            ));
        }
        self.guide = Some(Guide {
            prediction: c.diffusion.prediction,
            model: guide,
            weight,
        });
        Ok(self)
    }

    /// The autoguidance weight, when a guide is set ([`Inpainting::with_guide`]).
    pub fn guidance(&self) -> Option<f64> {
        self.guide.as_ref().map(|g| g.weight)
    }

    /// Records the `x̂_0` trajectory in [`Inpainted::trajectory`] (default: off).
    pub fn with_trajectory(mut self, record: bool) -> Self {
        self.sampler = self.sampler.with_trajectory(record);
        self
    }

    /// Samples at noise temperature `temperature` (default 1; [`Sampler::with_temperature`]):
    /// below 1 the fills lean towards the most likely one, at 0 DDIM (`eta = 0`) draws one
    /// deterministic fill per input, sharpened from the MAE-like first estimate. MAE models
    /// draw no noise that matters: for them the temperature is checked and stays 1.
    pub fn with_temperature(mut self, temperature: f64) -> Result<Self> {
        let sampler = self.sampler.clone().with_temperature(temperature)?;
        if self.diffusion {
            self.sampler = sampler;
        }
        Ok(self)
    }

    /// Whether the decoder reuses the cross-attention K/V of the encoder output computed once
    /// per call (default: yes; off recomputes them at every step, for benchmarks).
    pub fn with_kv_cache(mut self, cache: bool) -> Self {
        self.kv_cache = cache;
        self
    }

    /// The sampler (its kind and visited timesteps).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Inpaints `images` (`(N, C, H, W)` or clips, in [0, 1]) with masks drawn from `key` (the
    /// sampler's noise comes from the same key).
    pub fn run(&self, model: &DiffMae, images: &Tensor, key: RngKey) -> Result<Inpainted> {
        let n = images.dims().first().copied().unwrap_or(0);
        let mask = self.mask.sample(model.config(), n, key, images.device())?;
        self.run_with(model, images, mask, key, None)
    }

    /// Inpaints `images` where `mask` hides patches; `on_step` (if any) sees the pasted
    /// prediction of every visited step as it is made (an error from it stops the run).
    pub fn run_with(
        &self,
        model: &DiffMae,
        images: &Tensor,
        mask: MaskIndices,
        key: RngKey,
        mut on_step: Option<&mut OnStep<'_>>,
    ) -> Result<Inpainted> {
        let config = model.config();
        let n = images.dims().first().copied().unwrap_or(0);
        let mut want = vec![n];
        want.extend(config.input_dims());
        check_shape("images", images, &want)?;
        if n == 0 || mask.batch_size() != n {
            return Err(Error::shape(
                "mask",
                &[n, config.num_patches()],
                &[mask.batch_size(), mask.num_tokens()],
            ));
        }
        if mask.num_masked() == 0 {
            return Err(Error::arg("mask", "hides no patch"));
        }
        let patches = config.patchify(images)?;
        let (x0_v, x0_m) = mask.split(&patches)?;
        let ctx = model.encode(&x0_v, &mask)?;
        let ctx = if self.kv_cache {
            ctx
        } else {
            ctx.without_cache()
        };
        let (dev, dtype) = (images.device(), x0_m.dtype());
        // On the CPU each decode is split over thread groups (dmae_core::DataParallel).
        let shards = DataParallel::for_device(dev, rayon::current_num_threads(), n)?;
        let mut den = model.denoiser(&ctx, &mask).sharded(&shards);
        let guide_ctx = match &self.guide {
            Some(g) => {
                check_guide(config, g.model.config())?;
                Some(g.model.encode(&x0_v, &mask)?)
            }
            None => None,
        };
        let mut guide_den = match (&self.guide, &guide_ctx) {
            (Some(g), Some(ctx)) => Some((g, g.model.denoiser(ctx, &mask).sharded(&shards))),
            _ => None,
        };
        // Display only (module docs): the true patches' statistics in the diffusion's scale.
        let stats = if self.norm_pix {
            let x0 = to_diffusion_range(self.data_range, &x0_m)?;
            let mean = x0.mean_keepdim(D::Minus1)?;
            Some((mean, (x0.var_keepdim(D::Minus1)? + 1e-6)?.sqrt()?))
        } else {
            None
        };
        let paste = |x0: &Tensor| -> Result<Tensor> {
            let (a, b) = self.data_range.affine();
            let pixels = if (a, b) == (1.0, 0.0) {
                x0.clone()
            } else {
                x0.affine(1.0 / a, -b / a)?
            };
            Ok(config
                .unpatchify(&mask.merge(&x0_v, &pixels)?)?
                .clamp(0f32, 1f32)?)
        };
        let steps = self.sampler.timesteps().len();
        let mut index = 0;
        let schedule = self.sampler.schedule();
        let mut denoise = |x_t: &Tensor, t: &[usize]| -> dmae_diffusion::Result<Tensor> {
            let wrap = dmae_diffusion::Error::denoiser;
            let out = den.predict_x0(x_t, t)?;
            let mut x0 = self.prediction.to_x0(schedule, x_t, &out, t)?;
            if let Some((g, gd)) = guide_den.as_mut() {
                // Karras et al. 2024, eq. 2: x̂ = x̂_guide + w (x̂_model − x̂_guide).
                let out = gd.predict_x0(x_t, t)?;
                let x0_g = g.prediction.to_x0(schedule, x_t, &out, t)?;
                x0 = (x0_g.affine(1.0 - g.weight, 0.0)? + x0.affine(g.weight, 0.0)?)?;
            }
            if let Some((mean, std)) = &stats {
                x0 = x0.broadcast_mul(std)?.broadcast_add(mean)?;
            }
            if let Some(f) = on_step.as_mut() {
                let step = InpaintStep {
                    index,
                    steps,
                    t: t.first().copied().unwrap_or(0),
                    images: paste(&x0).map_err(wrap)?,
                };
                f(&step).map_err(wrap)?;
            }
            index += 1;
            Ok(x0)
        };
        let out = self
            .sampler
            .sample(&mut denoise, x0_m.dims(), dtype, dev, key)?;
        let pixel_mask = {
            let m = mask.mask_tensor(dtype)?.unsqueeze(2)?;
            config.unpatchify(&m.broadcast_as(patches.dims())?.contiguous()?)?
        };
        let trajectory = out
            .trajectory
            .unwrap_or_default()
            .into_iter()
            .map(|s| Ok((s.t, paste(&s.x0_pred)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Inpainted {
            sample: paste(&out.x0)?,
            input: images.clone(),
            pixel_mask,
            mask,
            trajectory,
        })
    }
}

/// Whether `guide` can guide `model`: the same images, patches, noise schedule and pixel scaling.
fn check_guide(model: &ModelConfig, guide: &ModelConfig) -> Result<()> {
    let (a, b) = (&model.diffusion, &guide.diffusion);
    let mismatch = if model.input_dims() != guide.input_dims() {
        Some("takes other images")
    } else if model.num_patches() != guide.num_patches() || model.patch_dim() != guide.patch_dim() {
        Some("cuts the images into other patches")
    } else if (a.schedule, a.timesteps, a.rho, a.rho_target)
        != (b.schedule, b.timesteps, b.rho, b.rho_target)
    {
        Some("has another noise schedule")
    } else if a.data_range != b.data_range || model.norm_pix_loss != guide.norm_pix_loss {
        Some("scales the pixels differently")
    } else {
        None
    };
    match mismatch {
        Some(why) => Err(Error::arg(
            "guide",
            format!("{why} than the model it guides"),
        )),
        None => Ok(()),
    }
}
