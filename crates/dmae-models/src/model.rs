//! [`DiffMae`]: encoder + decoder + parameters, the training forward, and the sampling
//! [`Denoiser`] bundle.

use candle_core::{DType, Device, Tensor};
use dmae_core::{DataParallel, Param};
use dmae_diffusion::{Denoiser, MaskIndices};

use crate::config::ModelConfig;
use crate::decoder::{Decoder, Encoded};
use crate::encoder::Encoder;
use crate::error::{check_mask, check_shape, Error, Result};
use crate::params::{NamedParam, ParamStore};

/// A DiffMAE (or, with [`ModelConfig::into_mae`], MAE) network.
#[derive(Clone, Debug)]
pub struct DiffMae {
    config: ModelConfig,
    /// The ViT encoder.
    pub encoder: Encoder,
    /// The decoder.
    pub decoder: Decoder,
    params: Vec<NamedParam>,
}

impl DiffMae {
    /// A freshly initialised network (MAE's init, deterministic in `seed`), f32 on `device`.
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::new_with_dtype(config, seed, device, DType::F32)
    }

    /// [`DiffMae::new`] with parameters in `dtype` (f32 for training; f64 on the CPU for
    /// finite-difference checks). Inputs must then be in `dtype` too.
    pub fn new_with_dtype(
        config: ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        let mut ps = ParamStore::new(seed, device).with_dtype(dtype);
        let encoder = Encoder::new(&mut ps, &config)?;
        let decoder = Decoder::new(&mut ps, &config)?;
        Ok(Self {
            config,
            encoder,
            decoder,
            params: ps.params,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every parameter with its checkpoint name, in creation order.
    pub fn named_params(&self) -> &[NamedParam] {
        &self.params
    }

    /// Optimiser parameters, MAE's pre-training groups: `weight_decay` on matrices, 0 on
    /// biases, norms and tokens; lr scale 1.
    pub fn optimizer_params(&self, weight_decay: f64) -> Vec<Param> {
        self.params
            .iter()
            .map(|p| Param::new(p.var.clone(), if p.decays() { weight_decay } else { 0.0 }))
            .collect()
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Runs the encoder once on the visible patches `x0_v (N, Lv, p·p·C)` at `mask.visible()`
    /// and prepares the decoder context with every cross-attention block's K/V cached.
    pub fn encode(&self, x0_v: &Tensor, mask: &MaskIndices) -> Result<Encoded> {
        check_mask(mask, self.config.num_patches())?;
        let out = self.encoder.forward(x0_v, mask.visible(), None)?;
        self.decoder.prepare(&self.encoder, out, true)
    }

    /// `D(x_t^m, t, E(x_0^v))` at the masked patches, `(N, Lm, p·p·C)`: `x̂_0` (or `ε̂`, `v̂`,
    /// see [`crate::DiffusionConfig::prediction`]).
    pub fn decode(
        &self,
        ctx: &Encoded,
        x_t: &Tensor,
        mask: &MaskIndices,
        t: &[usize],
    ) -> Result<Tensor> {
        self.decoder.forward(ctx, x_t, mask, t)
    }

    /// [`DiffMae::forward`] with the CLIP head's output too (models with a CLIP target):
    /// `(pixels, Some(features (N, Lm, D_clip)))`.
    pub fn forward_targets(
        &self,
        x0_v: &Tensor,
        mask: &MaskIndices,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (n, lv, _) = check_mask(mask, self.config.num_patches())?;
        check_shape("x0_v", x0_v, &[n, lv, self.config.patch_dim()])?;
        let ctx = self.encode(x0_v, mask)?;
        self.decoder.forward_targets(&ctx, x_t, mask, t)
    }

    /// The training forward: encodes the visible patches `x0_v (N, Lv, p·p·C)` (what
    /// [`MaskIndices::split`] gives) and decodes the noisy masked ones `x_t (N, Lm, p·p·C)` at
    /// timesteps `t`. The loss compares the result with the masked patches' target.
    pub fn forward(
        &self,
        x0_v: &Tensor,
        mask: &MaskIndices,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        let (n, lv, _) = check_mask(mask, self.config.num_patches())?;
        check_shape("x0_v", x0_v, &[n, lv, self.config.patch_dim()])?;
        let ctx = self.encode(x0_v, mask)?;
        self.decode(&ctx, x_t, mask, t)
    }

    /// A [`Denoiser`] for dmae-diffusion's samplers: this model, one encoded context and its
    /// mask. The sampler calls only the decoder. The denoiser returns the decoder's raw output
    /// (`x̂_0` for x0-prediction models); [`crate::Inpainting`] turns other predictions into
    /// `x̂_0`.
    pub fn denoiser<'a>(&'a self, ctx: &'a Encoded, mask: &'a MaskIndices) -> ModelDenoiser<'a> {
        ModelDenoiser {
            model: self,
            ctx,
            mask,
            shards: None,
        }
    }
}

/// `(model, encoded context, mask)`: implements [`Denoiser`] by decoding with the cached context.
#[derive(Clone, Copy, Debug)]
pub struct ModelDenoiser<'a> {
    /// The network.
    pub model: &'a DiffMae,
    /// The encoder output of the visible patches (run once).
    pub ctx: &'a Encoded,
    /// Which patches are masked.
    pub mask: &'a MaskIndices,
    /// `Some`: each decode is split over these CPU thread groups (see [`ModelDenoiser::sharded`]).
    pub shards: Option<&'a DataParallel>,
}

impl<'a> ModelDenoiser<'a> {
    /// Splits every decode over `shards` (on the CPU: parts of the batch decoded at once on
    /// their own threads, then concatenated). The sampler's draws are untouched: it still sees
    /// one batch.
    pub fn sharded(self, shards: &'a DataParallel) -> Self {
        Self {
            shards: Some(shards),
            ..self
        }
    }

    fn decode(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let n = self.ctx.batch_size();
        // Inputs that do not match the context are left to the whole-batch decode to report.
        let lm = self.mask.num_masked();
        let fits = t.len() == n && x_t.dims() == [n, lm, self.model.config.patch_dim()];
        let Some(shards) = self.shards.filter(|s| s.shards() > 1 && n > 1 && fits) else {
            return self.model.decode(self.ctx, x_t, self.mask, t);
        };
        let parts = shards.map(n, |r| {
            let (s, l) = (r.start, r.len());
            self.model.decode(
                &self.ctx.narrow(s, l)?,
                &x_t.narrow(0, s, l)?,
                &self.mask.narrow(s, l)?,
                &t[r],
            )
        });
        let parts = parts.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

impl Denoiser for ModelDenoiser<'_> {
    /// The prediction is detached: the parameters are `Var`s, so without it every sampling
    /// step's `x_t` would hold the autograd graph of all earlier steps alive (memory growing
    /// with the step count; the first 50-step DDIM run on CPU took twice as long as later ones).
    /// The decode runs in [`dmae_core::no_grad`]: no op prepares a backward that cannot come.
    fn predict_x0(&mut self, x_t: &Tensor, t: &[usize]) -> dmae_diffusion::Result<Tensor> {
        dmae_core::no_grad(|| self.decode(x_t, t))
            .map(|x0| x0.detach())
            .map_err(dmae_diffusion::Error::denoiser)
    }
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
