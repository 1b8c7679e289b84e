//! Noise schedules over `T` diffusion steps.
//!
//! Timesteps are **0-based**: index `t ∈ 0..T` is the paper's step `t + 1`, so `t = 0` is the
//! least noisy step and `t = T − 1` the noisiest ("t = T" in the paper). All quantities are
//! computed once on the host in `f64`:
//!
//! - `β_t` (betas), `α_t = 1 − β_t`, `ᾱ_t = ∏_{s ≤ t} α_s`, `ᾱ_{t−1}` with `ᾱ_{−1} = 1`,
//! - `√ᾱ_t`, `√(1 − ᾱ_t)` (the forward-process coefficients, eq. `x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`),
//! - `SNR_t = ᾱ_t / (1 − ᾱ_t)`,
//! - the DDPM posterior `q(x_{t−1} | x_t, x_0) = N(c0_t x_0 + c1_t x_t, β̃_t)` (Ho et al. eq. 6–7):
//!   `c0_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t)`, `c1_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)`,
//!   `β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)`.
//!
//! ## The exponent ρ
//! The paper tunes how much noise the schedule puts in with an exponent ρ. What ρ raises is
//! explicit here ([`RhoTarget`]); the default target is `ᾱ`:
//!
//! - [`RhoTarget::AlphaBar`] (default): `ᾱ_t ← ᾱ_t^ρ`, equivalently `α_t ← α_t^ρ` and
//!   `β_t ← 1 − (1 − β_t)^ρ`, equivalently `SNR_t ← ᾱ_t^ρ / (1 − ᾱ_t^ρ)`.
//!   ρ > 1 adds noise at every step, ρ < 1 removes it.
//! - [`RhoTarget::Betas`]: `β_t ← β_t^ρ`, then `ᾱ` is recomputed as the product.
//!   Since `β < 1`, ρ > 1 *removes* noise here.
//!
//! ρ is applied after the base schedule (including the cosine schedule's clipping of β);
//! ρ = 1 (default) leaves the base schedule unchanged.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The base schedule before the exponent ρ.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum BetaSchedule {
    /// Linear betas (Ho et al. 2020): `β_t = β_start + (β_end − β_start) · t / (T − 1)` for
    /// `t ∈ 0..T` (`β_0 = β_start` when `T = 1`).
    Linear {
        /// `β` at the first step (DDPM: 1e-4).
        beta_start: f64,
        /// `β` at the last step (DDPM: 0.02).
        beta_end: f64,
    },
    /// Cosine ᾱ (Nichol & Dhariwal 2021, eq. 17): `f(u) = cos²(((u/T + s) / (1 + s)) · π/2)`,
    /// `β_t = min(1 − f(t+1)/f(t), max_beta)` for `t ∈ 0..T`, so that without clipping
    /// `ᾱ_t = f(t+1)/f(0)`.
    Cosine {
        /// Offset `s` that keeps `β` from being too small near `t = 0` (0.008).
        s: f64,
        /// Upper clip of `β` that keeps `ᾱ_{T−1} > 0` (0.999).
        max_beta: f64,
    },
}

impl BetaSchedule {
    /// DDPM's linear schedule, `β` from 1e-4 to 0.02.
    pub fn linear() -> Self {
        Self::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// Nichol & Dhariwal's cosine schedule, `s = 0.008`, `max_beta = 0.999`.
    pub fn cosine() -> Self {
        Self::Cosine {
            s: 0.008,
            max_beta: 0.999,
        }
    }
}

/// What the exponent ρ raises (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum RhoTarget {
    /// `ᾱ_t ← ᾱ_t^ρ` (default).
    #[default]
    AlphaBar,
    /// `β_t ← β_t^ρ`.
    Betas,
}

/// Settings of a [`NoiseSchedule`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct ScheduleConfig {
    /// Base schedule (default: linear, DDPM's 1e-4 … 0.02; a choice, see `docs/`).
    pub kind: BetaSchedule,
    /// Number of diffusion steps `T` (default 1000).
    pub num_timesteps: usize,
    /// Exponent ρ (default 1: the base schedule unchanged).
    pub rho: f64,
    /// What ρ raises (default: ᾱ).
    pub rho_target: RhoTarget,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: BetaSchedule::linear(),
            num_timesteps: 1000,
            rho: 1.0,
            rho_target: RhoTarget::AlphaBar,
        }
    }
}

/// A noise schedule: `β_t`, `ᾱ_t` and the quantities derived from them, for `t ∈ 0..T`.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    config: ScheduleConfig,
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alpha_bar: Vec<f64>,
    alpha_bar_prev: Vec<f64>,
    sqrt_alpha_bar: Vec<f64>,
    sqrt_one_minus_alpha_bar: Vec<f64>,
    snr: Vec<f64>,
    posterior_variance: Vec<f64>,
    posterior_coef_x0: Vec<f64>,
    posterior_coef_xt: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds the schedule of `config` (the equations in the [module docs](self)).
    /// Errors name the first invalid setting; a ρ so large that some `ᾱ_t` underflows to 0
    /// is rejected.
    pub fn new(config: ScheduleConfig) -> Result<Self> {
        let t_max = config.num_timesteps;
        if t_max == 0 {
            return Err(Error::invalid("num_timesteps", ">= 1", 0));
        }
        if !(config.rho.is_finite() && config.rho > 0.0) {
            return Err(Error::invalid("rho", "a finite value > 0", config.rho));
        }
        // The base schedule as (β_t, α_t) pairs; α is kept separately (not as 1 − β) so that
        // steps with β close to 1 keep their relative precision.
        let base: Vec<(f64, f64)> = match config.kind {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => {
                let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
                if !ok(beta_start) {
                    return Err(Error::invalid(
                        "beta_start",
                        "a value in (0, 1)",
                        beta_start,
                    ));
                }
                if !ok(beta_end) || beta_end < beta_start {
                    return Err(Error::invalid(
                        "beta_end",
                        format!("a value in [beta_start = {beta_start}, 1)"),
                        beta_end,
                    ));
                }
                let denom = (t_max.max(2) - 1) as f64;
                (0..t_max)
                    .map(|t| {
                        let b = beta_start + (beta_end - beta_start) * t as f64 / denom;
                        (b, 1.0 - b)
                    })
                    .collect()
            }
            BetaSchedule::Cosine { s, max_beta } => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::invalid("s", "a finite value > 0", s));
                }
                if !(max_beta.is_finite() && max_beta > 0.0 && max_beta < 1.0) {
                    return Err(Error::invalid("max_beta", "a value in (0, 1)", max_beta));
                }
                let f = |u: usize| {
                    let x = (u as f64 / t_max as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
                    x.cos().powi(2)
                };
                (0..t_max)
                    .map(|t| {
                        let ratio = f(t + 1) / f(t);
                        if 1.0 - ratio > max_beta {
                            (max_beta, 1.0 - max_beta)
                        } else {
                            (1.0 - ratio, ratio)
                        }
                    })
                    .collect()
            }
        };
        // ρ on ᾱ is applied per step, `α ← α^ρ = exp(ρ · ln α)`, `β ← −expm1(ρ · ln1p(−β))`,
        // which is exactly `ᾱ_t ← ᾱ_t^ρ` after the product and keeps both α and β accurate.
        let (betas, alphas): (Vec<f64>, Vec<f64>) = base
            .into_iter()
            .map(|(b, a)| match config.rho_target {
                RhoTarget::AlphaBar => (-(config.rho * (-b).ln_1p()).exp_m1(), a.powf(config.rho)),
                RhoTarget::Betas => {
                    let b = b.powf(config.rho);
                    (b, 1.0 - b)
                }
            })
            .unzip();
        let mut acc = 1.0;
        let alpha_bar: Vec<f64> = alphas
            .iter()
            .map(|a| {
                acc *= a;
                acc
            })
            .collect();
        let strictly_decreasing = alpha_bar.windows(2).all(|w| w[1] < w[0]);
        if alpha_bar.iter().any(|&a| !(a > 0.0 && a < 1.0)) || !strictly_decreasing {
            return Err(Error::invalid(
                "rho",
                "a value that keeps every alpha_bar_t in (0, 1) and strictly decreasing",
                config.rho,
            ));
        }
        let alpha_bar_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alpha_bar[..t_max - 1].iter().copied())
            .collect();
        let one_minus = |a: f64| 1.0 - a;
        let mut posterior_variance = Vec::with_capacity(t_max);
        let mut posterior_coef_x0 = Vec::with_capacity(t_max);
        let mut posterior_coef_xt = Vec::with_capacity(t_max);
        for t in 0..t_max {
            let (b, a, ab, abp) = (betas[t], alphas[t], alpha_bar[t], alpha_bar_prev[t]);
            posterior_variance.push(b * one_minus(abp) / one_minus(ab));
            posterior_coef_x0.push(b * abp.sqrt() / one_minus(ab));
            posterior_coef_xt.push(one_minus(abp) * a.sqrt() / one_minus(ab));
        }
        Ok(Self {
            config,
            sqrt_alpha_bar: alpha_bar.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alpha_bar: alpha_bar.iter().map(|&a| one_minus(a).sqrt()).collect(),
            snr: alpha_bar.iter().map(|&a| a / one_minus(a)).collect(),
            betas,
            alphas,
            alpha_bar,
            alpha_bar_prev,
            posterior_variance,
            posterior_coef_x0,
            posterior_coef_xt,
        })
    }

    /// DDPM's linear schedule over `num_timesteps` steps, ρ = 1.
    pub fn linear(num_timesteps: usize) -> Result<Self> {
        Self::new(ScheduleConfig {
            kind: BetaSchedule::linear(),
            num_timesteps,
            ..ScheduleConfig::default()
        })
    }

    /// The cosine schedule over `num_timesteps` steps, ρ = 1.
    pub fn cosine(num_timesteps: usize) -> Result<Self> {
        Self::new(ScheduleConfig {
            kind: BetaSchedule::cosine(),
            num_timesteps,
            ..ScheduleConfig::default()
        })
    }

    /// The settings this schedule was built from.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Number of diffusion steps `T`.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `β_t` (after ρ), each in (0, 1).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `α_t = 1 − β_t`.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    /// `ᾱ_t = ∏_{s ≤ t} α_s`, strictly decreasing, each in (0, 1).
    pub fn alpha_bar(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// `ᾱ_{t−1}`, with `ᾱ_{−1} = 1` at `t = 0`.
    pub fn alpha_bar_prev(&self) -> &[f64] {
        &self.alpha_bar_prev
    }

    /// `√ᾱ_t`, the signal coefficient of `q(x_t | x_0)`.
    pub fn sqrt_alpha_bar(&self) -> &[f64] {
        &self.sqrt_alpha_bar
    }

    /// `√(1 − ᾱ_t)`, the noise coefficient of `q(x_t | x_0)`.
    pub fn sqrt_one_minus_alpha_bar(&self) -> &[f64] {
        &self.sqrt_one_minus_alpha_bar
    }

    /// Signal-to-noise ratio `SNR_t = ᾱ_t / (1 − ᾱ_t)`, strictly decreasing.
    pub fn snr(&self) -> &[f64] {
        &self.snr
    }

    /// DDPM posterior variance `β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)` (Ho et al. eq. 7);
    /// `β̃_0 = 0`.
    pub fn posterior_variance(&self) -> &[f64] {
        &self.posterior_variance
    }

    /// Coefficient of `x_0` in the DDPM posterior mean, `β_t √ᾱ_{t−1} / (1 − ᾱ_t)` (eq. 7).
    pub fn posterior_coef_x0(&self) -> &[f64] {
        &self.posterior_coef_x0
    }

    /// Coefficient of `x_t` in the DDPM posterior mean, `(1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)` (eq. 7).
    pub fn posterior_coef_xt(&self) -> &[f64] {
        &self.posterior_coef_xt
    }

    /// Checks that every timestep is in `0..T`.
    pub fn check_timesteps(&self, arg: &'static str, t: &[usize]) -> Result<()> {
        match t.iter().find(|&&t| t >= self.num_timesteps()) {
            Some(&bad) => Err(Error::TimestepOutOfRange {
                arg,
                t: bad,
                num_timesteps: self.num_timesteps(),
            }),
            None => Ok(()),
        }
    }
}

/// `values[t_i]` for each sample `i`, as a tensor of shape `(N, 1, …, 1)` with `rank` dims,
/// ready to broadcast against an `(N, …)` batch.
pub(crate) fn per_sample(
    values: &[f64],
    t: &[usize],
    rank: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let data: Vec<f64> = t.iter().map(|&t| values[t]).collect();
    let mut shape = vec![1usize; rank.max(1)];
    shape[0] = t.len();
    Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_at_t0_is_the_identity_on_x0() -> Result<()> {
        for s in [
            NoiseSchedule::new(ScheduleConfig::default())?,
            NoiseSchedule::cosine(1000)?,
        ] {
            assert_eq!(s.posterior_variance()[0], 0.0);
            assert!((s.posterior_coef_x0()[0] - 1.0).abs() < 1e-9);
            assert_eq!(s.posterior_coef_xt()[0], 0.0);
        }
        Ok(())
    }

    #[test]
    fn single_step_schedule() -> Result<()> {
        let s = NoiseSchedule::linear(1)?;
        assert!((s.betas()[0] - 1e-4).abs() < 1e-18);
        assert_eq!(s.alpha_bar_prev(), &[1.0]);
        Ok(())
    }
}
