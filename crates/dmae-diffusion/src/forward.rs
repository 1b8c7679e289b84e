//! The forward (noising) process `q(x_t | x_0)` with one timestep per sample, and the
//! x0-target loss on the masked patches.
//!
//! One DiffMAE training step, on the masked patches `x0^m: (N, L_m, D)`:
//! `t ~ U{0..T−1}` per sample ([`sample_timesteps`]), `ε ~ N(0, I)`
//! ([`standard_normal`](crate::standard_normal)), `x_t^m = √ᾱ_t x0^m + √(1−ᾱ_t) ε`
//! ([`q_sample`]), the decoder predicts `x̂0^m`, and the loss is `‖x0^m − x̂0^m‖²` averaged over
//! masked patches and pixels ([`X0Loss`]).

use candle_core::{Device, Tensor, D};
use rand::Rng;

use crate::error::{Error, Result};
use crate::gather::gather_tokens;
use crate::mask::MaskIndices;
use crate::rng::{Domain, RngKey};
use crate::schedule::{per_sample, NoiseSchedule};

/// Draws one training timestep per sample, `t_i ~ U{0..T−1}` (uniform over the
/// schedule's steps; 0-based, see [`schedule`](crate::schedule)). Sample `i` uses its own
/// stream derived from `(key, i)`.
pub fn sample_timesteps(key: RngKey, batch: usize, num_timesteps: usize) -> Result<Vec<usize>> {
    if num_timesteps == 0 {
        return Err(Error::invalid("num_timesteps", ">= 1", 0));
    }
    Ok((0..batch)
        .map(|i| {
            key.rng(Domain::Timestep, 0, i)
                .random_range(0..num_timesteps)
        })
        .collect())
}

/// Timesteps as the `(N,)` u32 tensor a decoder's time embedding takes.
pub fn timesteps_tensor(t: &[usize], device: &Device) -> Result<Tensor> {
    let data = t
        .iter()
        .map(|&t| u32::try_from(t).map_err(|_| Error::invalid("t", "values below 2^32", t)))
        .collect::<Result<Vec<u32>>>()?;
    Ok(Tensor::from_vec(data, t.len(), device)?)
}

/// Samples `q(x_t | x_0)`: `x_t = √ᾱ_{t_i} x_0 + √(1 − ᾱ_{t_i}) ε` (Ho et al. eq. 4), with
/// timestep `t[i]` for sample `i` of `x0: (N, …)` and the given noise `ε` (same shape).
/// Differentiable with respect to `x0` and `noise`; the coefficients take `x0`'s dtype and device.
pub fn q_sample(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    t: &[usize],
    noise: &Tensor,
) -> Result<Tensor> {
    check_batch("t", x0, t)?;
    schedule.check_timesteps("t", t)?;
    if noise.dims() != x0.dims() {
        return Err(Error::Shape {
            arg: "noise",
            expected: format!("{:?}, the shape of x0", x0.dims()),
            got: noise.dims().to_vec(),
        });
    }
    let (rank, dtype, dev) = (x0.rank(), x0.dtype(), x0.device());
    let a = per_sample(schedule.sqrt_alpha_bar(), t, rank, dtype, dev)?;
    let s = per_sample(schedule.sqrt_one_minus_alpha_bar(), t, rank, dtype, dev)?;
    Ok((x0.broadcast_mul(&a)? + noise.to_device(dev)?.broadcast_mul(&s)?)?)
}

/// One batch's forward-process draw: the timesteps, the noise and the noised input.
#[derive(Clone, Debug)]
pub struct Diffused {
    /// One 0-based timestep per sample, `t_i ~ U{0..T−1}`.
    pub t: Vec<usize>,
    /// The noise `ε ~ N(0, I)`, shape and dtype of `x0`.
    pub noise: Tensor,
    /// `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε` (Ho et al. eq. 4).
    pub x_t: Tensor,
}

/// Draws `t ~ U{0..T−1}` per sample ([`sample_timesteps`]) and `ε ~ N(0, I)`
/// ([`standard_normal`](crate::standard_normal)) from `key`, and noises `x0: (N, …)` with
/// [`q_sample`]; the training step's forward process in one call.
pub fn diffuse(schedule: &NoiseSchedule, x0: &Tensor, key: RngKey) -> Result<Diffused> {
    let n = x0.dims().first().copied().ok_or_else(|| Error::Shape {
        arg: "x0",
        expected: "(N, ...)".into(),
        got: vec![],
    })?;
    let t = sample_timesteps(key, n, schedule.num_timesteps())?;
    let noise = crate::rng::standard_normal(key, x0.shape(), x0.dtype(), x0.device())?;
    let x_t = q_sample(schedule, x0, &t, &noise)?;
    Ok(Diffused { t, noise, x_t })
}

/// What a denoiser's output means, and how it becomes the `x̂_0` a sampler steps with. The
/// loss compares the output with [`Prediction::target`] of the same draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Prediction {
    /// The clean data `x̂_0` (DiffMAE's choice: the decoder regresses the masked pixels).
    #[default]
    X0,
    /// The noise `ε̂` (Ho et al. 2020).
    Eps,
    /// The velocity `v = √ᾱ_t ε − √(1−ᾱ_t) x_0` (Salimans & Ho 2022).
    V,
}

impl Prediction {
    /// The regression target of one forward-process draw (`x0`, its `noise`, timesteps `t`):
    /// `x_0`, `ε`, or `√ᾱ_t ε − √(1−ᾱ_t) x_0`.
    pub fn target(
        self,
        schedule: &NoiseSchedule,
        x0: &Tensor,
        noise: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        Ok(match self {
            Prediction::X0 => x0.clone(),
            Prediction::Eps => noise.clone(),
            Prediction::V => {
                check_batch("t", x0, t)?;
                schedule.check_timesteps("t", t)?;
                let (rank, dtype, dev) = (x0.rank(), x0.dtype(), x0.device());
                let a = per_sample(schedule.sqrt_alpha_bar(), t, rank, dtype, dev)?;
                let s = per_sample(schedule.sqrt_one_minus_alpha_bar(), t, rank, dtype, dev)?;
                (noise.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?
            }
        })
    }

    /// `x̂_0` from a prediction `pred` made at `(x_t, t)`: `pred` itself (x0),
    /// `(x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t` (eps; unstable where `ᾱ_t` is tiny, clamp afterwards), or
    /// `√ᾱ_t x_t − √(1−ᾱ_t) v̂` (v).
    pub fn to_x0(
        self,
        schedule: &NoiseSchedule,
        x_t: &Tensor,
        pred: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        if self == Prediction::X0 {
            return Ok(pred.clone());
        }
        check_batch("t", x_t, t)?;
        schedule.check_timesteps("t", t)?;
        let (rank, dtype, dev) = (x_t.rank(), x_t.dtype(), x_t.device());
        let a = per_sample(schedule.sqrt_alpha_bar(), t, rank, dtype, dev)?;
        let s = per_sample(schedule.sqrt_one_minus_alpha_bar(), t, rank, dtype, dev)?;
        Ok(match self {
            Prediction::Eps => (x_t - pred.broadcast_mul(&s)?)?.broadcast_div(&a)?,
            _ => (x_t.broadcast_mul(&a)? - pred.broadcast_mul(&s)?)?,
        })
    }
}

/// How the losses of samples drawn at different timesteps are weighted.
///
/// A plain x0 loss weights every timestep alike, which in terms of the noise (`‖ε − ε̂‖² =
/// SNR_t ‖x0 − x̂0‖²`) puts most of the weight on the noisiest steps, where the best answer is
/// the blurry mean. Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
/// Weighting Strategy", eq. 8) caps the noise-space weight at γ instead.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum LossWeighting {
    /// Every sample weighs 1 (the paper's DiffMAE loss).
    #[default]
    Uniform,
    /// Min-SNR-γ: `min(SNR_t, γ)` for x0 prediction, `min(SNR_t, γ) / SNR_t` for ε,
    /// `min(SNR_t, γ) / (SNR_t + 1)` for v (the same x0-space weight `min(SNR_t, γ)` in each
    /// case).
    MinSnr {
        /// The cap γ (the paper: 5).
        gamma: f64,
    },
}

impl LossWeighting {
    /// The weight of a sample at 0-based timestep `t` whose output is `prediction`.
    pub fn weight(self, schedule: &NoiseSchedule, prediction: Prediction, t: usize) -> f64 {
        match self {
            LossWeighting::Uniform => 1.0,
            LossWeighting::MinSnr { gamma } => {
                let snr = schedule.snr()[t];
                let capped = snr.min(gamma);
                match prediction {
                    Prediction::X0 => capped,
                    Prediction::Eps => capped / snr,
                    Prediction::V => capped / (snr + 1.0),
                }
            }
        }
    }
}

pub(crate) fn check_batch(arg: &'static str, x: &Tensor, t: &[usize]) -> Result<()> {
    match x.dims().first() {
        Some(&n) if n == t.len() => Ok(()),
        _ => Err(Error::Shape {
            arg,
            expected: format!("one timestep per sample of x {:?}", x.dims()),
            got: vec![t.len()],
        }),
    }
}

/// MAE's `norm_pix_loss` target: each patch (last dimension, `D = p·p·C`) standardised by its own
/// mean and unbiased variance, `(x − μ) / √(σ² + eps)` (MAE uses `eps = 1e-6`). Requires `D ≥ 2`.
pub fn normalize_patches(x: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if d < 2 {
        return Err(Error::Shape {
            arg: "x",
            expected: "at least 2 values per patch for a per-patch variance".into(),
            got: x.dims().to_vec(),
        });
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let var = x.var_keepdim(D::Minus1)?;
    Ok(x.broadcast_sub(&mean)?
        .broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// The DiffMAE x0-target loss `L = mean ‖x0^m − D(x_t^m, t, E(x0^v))‖²`, averaged over masked
/// patches and their pixels (MAE's per-patch mean, then mean over masked patches; equal when
/// every patch has the same size).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct X0Loss {
    /// Regress per-patch normalised pixels ([`normalize_patches`], MAE's `norm_pix_loss`).
    /// Default on, for recognition pre-training; turn off for inpainting models whose outputs
    /// must be real pixels (a choice, see `docs/`).
    pub norm_pix: bool,
    /// `eps` of the per-patch normalisation (MAE: 1e-6).
    pub norm_eps: f64,
}

impl Default for X0Loss {
    fn default() -> Self {
        Self::pretraining()
    }
}

impl X0Loss {
    /// Recognition pre-training: `norm_pix` on (MAE's setting).
    pub fn pretraining() -> Self {
        Self {
            norm_pix: true,
            norm_eps: 1e-6,
        }
    }

    /// Inpainting: targets are the real pixels (`norm_pix` off).
    pub fn inpainting() -> Self {
        Self {
            norm_pix: false,
            ..Self::pretraining()
        }
    }

    /// The target the prediction is compared with: `x0` itself, or its per-patch
    /// normalisation when `norm_pix` is on.
    pub fn target(&self, x0: &Tensor) -> Result<Tensor> {
        if self.norm_pix {
            normalize_patches(x0, self.norm_eps)
        } else {
            Ok(x0.clone())
        }
    }

    /// Scalar loss `mean((pred − target(x0_masked))²)` for `pred, x0_masked: (N, L_m, D)`,
    /// differentiable with respect to `pred` (plain candle ops: `sub`, `sqr`, `mean_all`).
    pub fn compute(&self, pred: &Tensor, x0_masked: &Tensor) -> Result<Tensor> {
        Self::check(pred, x0_masked)?;
        let target = self.target(x0_masked)?.detach();
        Ok((pred - target)?.sqr()?.mean_all()?)
    }

    fn check(pred: &Tensor, x0_masked: &Tensor) -> Result<()> {
        if pred.dims() != x0_masked.dims() {
            return Err(Error::Shape {
                arg: "pred",
                expected: format!("{:?}, the shape of the target", x0_masked.dims()),
                got: pred.dims().to_vec(),
            });
        }
        if pred.elem_count() == 0 {
            return Err(Error::Shape {
                arg: "pred",
                expected: "at least one masked patch".into(),
                got: pred.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// [`X0Loss::compute`] with one weight per sample: `mean_i w_i · mean((pred_i −
    /// target(x0_i))²)` for `pred, x0: (N, L_m, D)` and `weights` of length `N` (e.g.
    /// [`LossWeighting::weight`] of each sample's timestep).
    pub fn compute_weighted(
        &self,
        pred: &Tensor,
        x0_masked: &Tensor,
        weights: &[f64],
    ) -> Result<Tensor> {
        let n = pred.dims().first().copied().unwrap_or(0);
        if weights.len() != n {
            return Err(Error::Shape {
                arg: "weights",
                expected: format!("one weight per sample of pred {:?}", pred.dims()),
                got: vec![weights.len()],
            });
        }
        Self::check(pred, x0_masked)?;
        let target = self.target(x0_masked)?.detach();
        let per_sample = (pred - target)?.sqr()?.flatten_from(1)?.mean(1)?;
        let w = Tensor::from_vec(weights.to_vec(), n, pred.device())?.to_dtype(pred.dtype())?;
        Ok((per_sample * w)?.mean_all()?)
    }

    /// The same loss for a decoder that predicts every patch (`pred, x0: (N, L, D)`): only the
    /// masked patches of `mask` count (MAE's `(loss · mask).sum() / mask.sum()`).
    pub fn compute_masked(&self, pred: &Tensor, x0: &Tensor, mask: &MaskIndices) -> Result<Tensor> {
        for (arg, x) in [("pred", pred), ("x0", x0)] {
            match x.dims() {
                &[n, l, _] if n == mask.batch_size() && l == mask.num_tokens() => {}
                got => {
                    return Err(Error::Shape {
                        arg,
                        expected: format!("({}, {}, D)", mask.batch_size(), mask.num_tokens()),
                        got: got.to_vec(),
                    })
                }
            }
        }
        let pred_m = gather_tokens(pred, mask.masked())?;
        let x0_m = gather_tokens(x0, mask.masked())?;
        self.compute(&pred_m, &x0_m)
    }
}
