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
//! | [`mask`] | [`MaskStrategy`] (random, center block, BEiT block-wise, fixed/[`PatchMask`] from a mask image), [`VideoMaskStrategy`] (tube, random space-time) → [`MaskIndices`] |
//! | [`schedule`] | [`NoiseSchedule`]: linear / cosine, exponent ρ ([`RhoTarget`]), `β`, `α`, `ᾱ`, `√ᾱ`, `√(1−ᾱ)`, SNR, DDPM posterior coefficients |
//! | [`forward`] | [`sample_timesteps`], [`q_sample`], [`X0Loss`] (optionally `norm_pix`) |
//! | [`sampler`] | [`Denoiser`], [`Sampler`] ([`SamplerKind::Ddpm`], [`SamplerKind::Ddim`], [`SamplerKind::Mae`]), trajectories |
//! | [`rng`] | [`RngKey`], [`standard_normal`] |
//! | [`error`] | [`Error`], [`Result`] |
//!
//! Features: `cuda` (forwards to candle's), `mask-image` (read mask images with the `image`
//! crate; off by default, the in-memory [`PatchMask::from_pixels`] always exists).
#![warn(missing_docs)]

pub mod error;
pub mod forward;
mod gather;
pub mod mask;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use error::{Error, Result};
pub use forward::{normalize_patches, q_sample, sample_timesteps, timesteps_tensor, X0Loss};
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
