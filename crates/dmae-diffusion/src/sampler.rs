//! Samplers for the masked patches, driven by a model that predicts `x_0`.
//!
//! DiffMAE inference: the caller runs the encoder **once** on the visible patches and wraps
//! "decoder conditioned on that encoder output" as a [`Denoiser`]. The sampler then starts the
//! masked patches from `x_{T−1} ~ N(0, I)` and at each visited timestep asks the denoiser for
//! `x̂_0`, re-noising it to the next smaller timestep, until `t = 0`. The sampler only ever
//! sees the masked patches: it never calls, and never needs, the encoder, and the visible
//! patches stay clean. Timesteps are 0-based (see [`schedule`](crate::schedule)).
//!
//! - [`SamplerKind::Ddpm`]: ancestral sampling through all `T` steps with the posterior
//!   `q(x_{t−1} | x_t, x̂_0)` ([`ddpm_step`]).
//! - [`SamplerKind::Ddim`]: DDIM (Song et al. 2021, eq. 12) on `steps` evenly spaced timesteps,
//!   stochasticity `eta` (0: deterministic; 1 with `steps = T`: the DDPM posterior) ([`ddim_step`]).
//! - [`SamplerKind::Mae`]: one prediction at `t = T − 1`, `x̂_0 = D(x_{T−1}, T−1)`: the
//!   L2-optimal, MAE-like (blurry) estimate that is DiffMAE's first step.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};
use crate::rng::{normal_in, Domain, RngKey};
use crate::schedule::NoiseSchedule;

/// A model that predicts the clean masked patches `x̂_0 = D(x_t, t)` from their noisy version.
///
/// Implementors hold whatever conditions the prediction (for DiffMAE: the encoder's output on
/// the visible patches, computed once before sampling, and any cached cross-attention keys
/// and values); samplers call only this method. `x_t` is `(N, …)` (typically `(N, L_m, D)`),
/// `t` has one 0-based timestep per sample, and the result must have `x_t`'s shape.
///
/// Closures `FnMut(&Tensor, &[usize]) -> Result<Tensor>` implement it; errors of another
/// crate can be wrapped with [`Error::denoiser`].
pub trait Denoiser {
    /// Predicts `x̂_0` for `x_t` at timesteps `t`.
    fn predict_x0(&mut self, x_t: &Tensor, t: &[usize]) -> Result<Tensor>;
}

impl<F> Denoiser for F
where
    F: FnMut(&Tensor, &[usize]) -> Result<Tensor>,
{
    fn predict_x0(&mut self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        self(x_t, t)
    }
}

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum SamplerKind {
    /// DDPM ancestral sampling over all `T` steps.
    Ddpm,
    /// DDIM over `steps` timesteps (`1 ≤ steps ≤ T`), noise scale `eta ≥ 0`.
    Ddim {
        /// Number of model evaluations (e.g. 50 of 1000).
        steps: usize,
        /// `η` of DDIM eq. 16: 0 = deterministic, 1 = DDPM-like variance.
        eta: f64,
    },
    /// Single prediction at `t = T − 1` (MAE mode).
    Mae,
}

/// One visited step of a sampling run.
#[derive(Clone, Debug)]
pub struct TrajectoryStep {
    /// The 0-based timestep the model was evaluated at.
    pub t: usize,
    /// The model's prediction `x̂_0` at that timestep (after clipping, if any).
    pub x0_pred: Tensor,
}

/// The result of a sampling run.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// The final sample `x_0` (the model's prediction at the last visited timestep, `t = 0`
    /// for DDPM and multi-step DDIM).
    pub x0: Tensor,
    /// The `x̂_0` prediction at every visited timestep, from the noisiest to `t = 0`, when
    /// requested with [`Sampler::with_trajectory`]; its first entry is the MAE-like prediction.
    pub trajectory: Option<Vec<TrajectoryStep>>,
}

/// A configured sampler over a [`NoiseSchedule`].
#[derive(Clone, Debug)]
pub struct Sampler {
    schedule: NoiseSchedule,
    kind: SamplerKind,
    timesteps: Vec<usize>,
    record_trajectory: bool,
    clip_x0: Option<(f64, f64)>,
    temperature: f64,
}

impl Sampler {
    /// A sampler of `kind` over `schedule`. DDIM's `steps` must be in `1..=T`
    /// ([`Error::InvalidSteps`]) and `eta` finite and `≥ 0`.
    pub fn new(schedule: NoiseSchedule, kind: SamplerKind) -> Result<Self> {
        let t_max = schedule.num_timesteps();
        let timesteps = match kind {
            SamplerKind::Ddpm => (0..t_max).rev().collect(),
            SamplerKind::Mae => vec![t_max - 1],
            SamplerKind::Ddim { steps, eta } => {
                if steps == 0 || steps > t_max {
                    return Err(Error::InvalidSteps {
                        arg: "steps",
                        steps,
                        num_timesteps: t_max,
                    });
                }
                if !(eta.is_finite() && eta >= 0.0) {
                    return Err(Error::invalid("eta", "a finite value >= 0", eta));
                }
                ddim_timesteps(t_max, steps)
            }
        };
        Ok(Self {
            schedule,
            kind,
            timesteps,
            record_trajectory: false,
            clip_x0: None,
            temperature: 1.0,
        })
    }

    /// Whether [`SampleOutput::trajectory`] is filled (default: no).
    pub fn with_trajectory(mut self, record: bool) -> Self {
        self.record_trajectory = record;
        self
    }

    /// Clamps every `x̂_0` prediction to `[lo, hi]` before it is used (default: no clamping,
    /// since normalised pixels have no fixed range). `lo ≤ hi`, both finite.
    pub fn with_clip_x0(mut self, range: Option<(f64, f64)>) -> Result<Self> {
        if let Some((lo, hi)) = range {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::invalid(
                    "clip_x0",
                    "finite lo <= hi",
                    format!("({lo}, {hi})"),
                ));
            }
        }
        self.clip_x0 = range;
        Ok(self)
    }

    /// Scales the noise the sampler draws by `temperature` (default 1): the start becomes
    /// `x_{T−1} ~ N(0, τ²I)` and the noise DDPM and DDIM with `eta > 0` add at each step is
    /// scaled alike (the "noise temperature" of Glow and of Dhariwal & Nichol 2021, § 3). Below 1
    /// the draws trade diversity for the likely fill; at 0 DDIM with `eta = 0` starts from the
    /// origin, so its first `x̂_0` is the MAE-like mean and every later step sharpens that one
    /// path. `τ` finite and `≥ 0`.
    pub fn with_temperature(mut self, temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::invalid(
                "temperature",
                "a finite value >= 0",
                temperature,
            ));
        }
        self.temperature = temperature;
        Ok(self)
    }

    /// The noise temperature ([`with_temperature`](Self::with_temperature)).
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The reverse process.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The timesteps the model is evaluated at, in order (descending, starting at `T − 1`).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The starting point `x_{T−1} ~ N(0, τ²I)` of `shape` (`τ` the temperature, 1 by default),
    /// drawn per sample from `key` (independent of the per-step noise).
    pub fn initial_noise(
        &self,
        key: RngKey,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let noise = normal_in(key, Domain::SamplerInit, 0, shape.into(), dtype, device)?;
        self.scale_noise(noise)
    }

    fn scale_noise(&self, noise: Tensor) -> Result<Tensor> {
        Ok(if self.temperature == 1.0 {
            noise
        } else {
            (noise * self.temperature)?
        })
    }

    /// Draws `x_{T−1}` with [`initial_noise`](Self::initial_noise) and runs the sampler.
    pub fn sample<M: Denoiser + ?Sized>(
        &self,
        model: &mut M,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
        key: RngKey,
    ) -> Result<SampleOutput> {
        let x_t = self.initial_noise(key, shape, dtype, device)?;
        self.sample_from(model, x_t, key)
    }

    /// Runs the sampler from a given `x_{T−1}` (`(N, …)`). The per-step noise of timestep `t` is
    /// drawn per sample from `(key, t)`, so DDPM and DDIM with `eta = 1, steps = T` use the
    /// same noise.
    pub fn sample_from<M: Denoiser + ?Sized>(
        &self,
        model: &mut M,
        x_start: Tensor,
        key: RngKey,
    ) -> Result<SampleOutput> {
        let n = x_start
            .dims()
            .first()
            .copied()
            .ok_or_else(|| Error::Shape {
                arg: "x_start",
                expected: "(N, ...)".into(),
                got: vec![],
            })?;
        let mut trajectory = self.record_trajectory.then(Vec::new);
        let mut x_t = x_start;
        let mut x0 = None;
        for (k, &t) in self.timesteps.iter().enumerate() {
            let t_batch = vec![t; n];
            let pred = model.predict_x0(&x_t, &t_batch)?;
            if pred.dims() != x_t.dims() {
                return Err(Error::Shape {
                    arg: "predict_x0",
                    expected: format!("{:?}, the shape of x_t", x_t.dims()),
                    got: pred.dims().to_vec(),
                });
            }
            let pred = match self.clip_x0 {
                Some((lo, hi)) => pred.clamp(lo, hi)?,
                None => pred,
            };
            if let Some(tr) = trajectory.as_mut() {
                tr.push(TrajectoryStep {
                    t,
                    x0_pred: pred.clone(),
                });
            }
            let t_prev = self.timesteps.get(k + 1).copied();
            if t_prev.is_some() {
                let noise = normal_in(
                    key,
                    Domain::SamplerStep,
                    t as u64,
                    x_t.shape().clone(),
                    x_t.dtype(),
                    x_t.device(),
                )?;
                let noise = self.scale_noise(noise)?;
                x_t = match self.kind {
                    SamplerKind::Ddpm => ddpm_step(&self.schedule, &x_t, &pred, t, &noise)?,
                    SamplerKind::Ddim { eta, .. } => {
                        ddim_step(&self.schedule, &x_t, &pred, t, t_prev, eta, &noise)?
                    }
                    // MAE mode visits a single timestep, so there is no next one.
                    SamplerKind::Mae => x_t,
                };
            }
            x0 = Some(pred);
        }
        let x0 = x0.ok_or_else(|| Error::invalid("timesteps", "at least one", 0))?;
        Ok(SampleOutput { x0, trajectory })
    }
}

/// DDIM's visited timesteps: `round(i · (T − 1) / (steps − 1))` for `i = steps − 1, …, 0`
/// (evenly spaced, always including `T − 1` and `0`, distinct since `steps ≤ T`);
/// `[T − 1]` when `steps = 1`.
pub fn ddim_timesteps(num_timesteps: usize, steps: usize) -> Vec<usize> {
    if steps <= 1 {
        return vec![num_timesteps.saturating_sub(1)];
    }
    let span = (num_timesteps - 1) as f64;
    (0..steps)
        .rev()
        .map(|i| (i as f64 * span / (steps - 1) as f64).round() as usize)
        .collect()
}

/// Mean and variance of the DDPM posterior `q(x_{t−1} | x_t, x̂_0) =
/// N(c0_t x̂_0 + c1_t x_t, β̃_t I)` (Ho et al. eq. 6–7) at timestep `t` (shared by the batch).
pub fn ddpm_posterior(
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    x0_pred: &Tensor,
    t: usize,
) -> Result<(Tensor, f64)> {
    schedule.check_timesteps("t", &[t])?;
    let mean = (x0_pred.affine(schedule.posterior_coef_x0()[t], 0.0)?
        + x_t.affine(schedule.posterior_coef_xt()[t], 0.0)?)?;
    Ok((mean, schedule.posterior_variance()[t]))
}

/// One DDPM ancestral step, `x_{t−1} = μ̃_t(x_t, x̂_0) + √β̃_t · z` with `z = noise ~ N(0, I)`
/// (Ho et al. eq. 6–7, posterior variance `β̃_t`).
pub fn ddpm_step(
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    x0_pred: &Tensor,
    t: usize,
    noise: &Tensor,
) -> Result<Tensor> {
    let (mean, var) = ddpm_posterior(schedule, x_t, x0_pred, t)?;
    Ok((mean + noise.affine(var.sqrt(), 0.0)?)?)
}

/// One DDIM step from `t` to `t_prev` (`None` = past the end, `ᾱ = 1`) (Song et al. eq. 12, 16):
/// `ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)`,
/// `σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)`,
/// `x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z`.
pub fn ddim_step(
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    x0_pred: &Tensor,
    t: usize,
    t_prev: Option<usize>,
    eta: f64,
    noise: &Tensor,
) -> Result<Tensor> {
    schedule.check_timesteps("t", &[t])?;
    if let Some(tp) = t_prev {
        schedule.check_timesteps("t_prev", &[tp])?;
        if tp >= t {
            return Err(Error::invalid(
                "t_prev",
                format!("a timestep below t = {t}"),
                tp,
            ));
        }
    }
    let ab = schedule.alpha_bar()[t];
    let ab_prev = t_prev.map_or(1.0, |tp| schedule.alpha_bar()[tp]);
    let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    // x_prev = √ab_prev x̂0 + dir (x_t − √ab x̂0)/√(1−ab) + σ z, as one affine combination.
    let c_eps = dir / (1.0 - ab).sqrt();
    let c_x0 = ab_prev.sqrt() - c_eps * ab.sqrt();
    let mut out = (x0_pred.affine(c_x0, 0.0)? + x_t.affine(c_eps, 0.0)?)?;
    if sigma > 0.0 {
        out = (out + noise.affine(sigma, 0.0)?)?;
    }
    Ok(out)
}
