//! # dmae-diffusion
//!
//! Everything of DiffMAE (Wei et al., ICCV 2023) that is about *which patches* and *how much
//! noise*, independent of any network: patch masks, noise schedules, the forward process
//! `q(x_t | x_0)` with one timestep per sample, the x0-target loss on the masked patches, and
//! samplers (DDPM, DDIM, single-step MAE mode) driven by an x0-predicting [`Denoiser`].
//!
//! Tensors are candle tensors on any device (CPU, CUDA); index tensors are `u32`; tokens and
//! patches are `(N, L, D)`. All randomness is drawn on the host from per-sample ChaCha8 streams
//! derived from an [`RngKey`] `(seed, step)`, so results depend neither on the batch size nor on
//! the number of threads, and are the same on every device.
//!
//! | module | concept |
//! |---|---|
//! | [`mask`] | [`MaskStrategy`] (random, center block, BEiT block-wise, fixed/[`PatchMask`] from a mask image), [`VideoMaskStrategy`] (tube, random space-time, future frames) → [`MaskIndices`] |
//! | [`schedule`] | [`NoiseSchedule`]: linear / cosine, exponent ρ ([`RhoTarget`]), `β`, `α`, `ᾱ`, `√ᾱ`, `√(1−ᾱ)`, SNR, DDPM posterior coefficients |
//! | [`forward`] | [`sample_timesteps`], [`q_sample`], [`diffuse`] (both in one call), [`X0Loss`] (optionally `norm_pix`) |
//! | [`sampler`] | [`Denoiser`], [`Sampler`] ([`SamplerKind::Ddpm`], [`SamplerKind::Ddim`], [`SamplerKind::Mae`]), trajectories |
//! | [`rng`] | [`RngKey`], [`standard_normal`] |
//! | [`error`] | [`Error`], [`Result`] |
//!
//! ## One training step and one inpainting run
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use dmae_diffusion::*;
//!
//! # fn main() -> dmae_diffusion::Result<()> {
//! let dev = Device::Cpu;
//! let schedule = NoiseSchedule::new(ScheduleConfig::default())?; // linear, T = 1000, ρ = 1
//! let grid = PatchGrid::for_image(32, 32, 8)?; // 4 x 4 patches
//! let key = RngKey::new(0, 7); // (seed, step)
//! let patches = Tensor::randn(0f32, 1., (2, grid.len(), 8 * 8 * 3), &dev)?; // (N, L, p·p·C)
//!
//! // Training: mask, split, noise the masked patches with one t per sample, regress x0.
//! let mask = MaskStrategy::random(0.75)?.sample(grid, 2, key, &dev)?;
//! let (x0_v, x0_m) = mask.split(&patches)?; // (2, 4, 192), (2, 12, 192)
//! let t = sample_timesteps(key, 2, schedule.num_timesteps())?;
//! let eps = standard_normal(key, x0_m.dims(), DType::F32, &dev)?;
//! let x_t = q_sample(&schedule, &x0_m, &t, &eps)?;
//! let x0_hat = x_t.clone(); // the decoder's output D(x_t, t, E(x0_v)) goes here
//! let loss = X0Loss::pretraining().compute(&x0_hat, &x0_m)?;
//! assert_eq!(loss.dims(), &[] as &[usize]);
//!
//! // Inpainting: run the encoder once on x0_v (not shown), then sample the masked patches.
//! let sampler = Sampler::new(schedule, SamplerKind::Ddim { steps: 50, eta: 0.0 })?
//!     .with_trajectory(true);
//! let mut denoiser = |x_t: &Tensor, _t: &[usize]| -> Result<Tensor> {
//!     Ok(x_t.zeros_like()?) // a model predicting x0 from x_t and the cached encoder output
//! };
//! let out = sampler.sample(&mut denoiser, x0_m.dims(), DType::F32, &dev, key)?;
//! let image = mask.merge(&x0_v, &out.x0)?; // (2, 16, 192), visible patches untouched
//! assert_eq!(out.trajectory.map(|t| t.len()), Some(50));
//! # let _ = image;
//! # Ok(())
//! # }
//! ```
//!
//! Features: `cuda` (forwards to dmae-core's and candle's), `mask-image` (read mask images with
//! the `image` crate; off by default, the in-memory [`PatchMask::from_pixels`] always exists),
//! `serde` (serialisable configuration types; off by default). Example: `cargo run --release -p
//! dmae-diffusion --example masks` (writes a PNG of every image mask strategy).
#![deny(missing_docs)]

pub mod error;
pub mod forward;
mod gather;
pub mod mask;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use error::{Error, Result};
pub use forward::{
    diffuse, normalize_patches, q_sample, sample_timesteps, timesteps_tensor, Diffused,
    LossWeighting, Prediction, X0Loss,
};
pub use mask::{
    BlockWise, MaskIndices, MaskStrategy, PatchGrid, PatchMask, ResizeRule, VideoGrid,
    VideoMaskStrategy,
};
pub use rng::{standard_normal, RngKey};
pub use sampler::{
    ddim_step, ddim_timesteps, ddpm_posterior, ddpm_step, Denoiser, SampleOutput, Sampler,
    SamplerKind, TrajectoryStep,
};
pub use schedule::{BetaSchedule, NoiseSchedule, RhoTarget, ScheduleConfig};
