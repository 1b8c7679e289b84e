//! # dmae-models
//!
//! The networks of DiffMAE (Wei et al., "Diffusion Models as Masked Autoencoders", ICCV 2023) on
//! candle, built from dmae-core's differentiable fused ops so that every path trains: MAE's ViT
//! encoder over the visible patches, the `joint` / `cross` / `cross-self` decoders predicting
//! the clean masked pixels `x̂_0` from noisy ones (or, in MAE mode, from a mask token), heads for
//! recognition, safetensors checkpoints that carry their config, and Hugging Face ViTMAE import.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | [`ModelConfig`] (serde), presets, the paper's (choice) switches |
//! | [`mask`] | [`Masking`]: an image or video mask strategy drawn on the model's grid into dmae-diffusion's `MaskIndices` |
//! | [`embed`] | patch, 2-D sin-cos position and time-step embeddings |
//! | [`block`] | linear, LayerNorm, MLP, self/cross attention, pre-norm blocks |
//! | [`encoder`] | [`Encoder`] (ViT over visible patches, per-block outputs) |
//! | [`decoder`] | [`Decoder`], [`Encoded`] (context with K/V cache) |
//! | [`model`] | [`DiffMae`]: encode once, decode per step; [`ModelDenoiser`] for samplers |
//! | [`heads`] | [`Classifier`] (avg/cls pool, drop path, layer-wise lr decay), [`LinearProbe`] |
//! | [`pretrain`] | [`Pretraining`]: one pre-training step (mask, noise, encode, decode, loss) |
//! | [`inpaint`] | [`Inpainting`]: one inpainting call (mask, encode once, sample, paste back), its trajectory |
//! | [`checkpoint`] | safetensors with the config in the metadata; the tensor-name table |
//! | [`clip`] | a frozen CLIP vision tower (Hugging Face safetensors), CLIP's pre-processing, patch features as a target |
//! | [`hf`] | Hugging Face ViTMAE import (local dir, hf-hub), [`DiffMae::mae_forward`] for parity |
//! | [`mae`] | facebookresearch/mae checkpoint import (`.pth` / `.safetensors`, timm names) |
//! | [`error`] | [`Error`], [`Result`] |
//!
//! One training step and one inpainting call, entirely through this crate:
//! ```
//! use candle_core::{Device, Tensor};
//! use dmae_diffusion::{RngKey, SamplerKind};
//! use dmae_models::{DiffMae, Inpainting, Masking, ModelConfig, Pretraining};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = ModelConfig::mnist();
//! cfg.encoder.depth = 2; cfg.decoder.depth = 2; cfg.encoder.dim = 32; cfg.encoder.heads = 2;
//! cfg.decoder.dim = 16; cfg.decoder.heads = 2;
//! let dev = Device::Cpu;
//! let model = DiffMae::new(cfg.clone(), 0, &dev)?;
//! let images = Tensor::rand(0f32, 1., (2, 1, 28, 28), &dev)?;
//!
//! // Pre-training: random 75% mask, noise on the masked patches, x0 loss.
//! let step = Pretraining::for_config(&cfg)?.step(&model, &images, RngKey::new(0, 0))?;
//! let grads = step.loss.backward()?;
//! # let _ = grads;
//!
//! // Inpainting: the encoder once, DDIM over the masked patches, visible pixels kept.
//! let mask = Masking::random(&cfg, 0.75)?;
//! let inpaint = Inpainting::new(&cfg, mask, SamplerKind::Ddim { steps: 5, eta: 0.0 })?;
//! let out = inpaint.run(&model, &images, RngKey::new(0, 1))?;
//! assert_eq!(out.sample.dims(), images.dims());
//! # Ok(()) }
//! ```
//!
//! Features: `hf-hub` (default on: `DiffMae::from_hf_hub` downloads through the hf-hub cache;
//! local directories with [`DiffMae::from_hf_dir`] need no feature), `cuda` (forwards to dmae-core's,
//! dmae-diffusion's and candle's). Examples: `cargo run --release -p dmae-models --example import_hf`
//! (the committed ViTMAE fixture), `--example decode_cache` (K/V cache timing), `--example
//! copy_task` (whether the video model learns to copy a hidden frame from still clips).
#![deny(missing_docs)]

pub mod block;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod decoder;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod hf;
pub mod inpaint;
pub mod mae;
pub mod mask;
pub mod model;
mod params;
pub mod pretrain;

pub use checkpoint::{write_atomic, HeadInfo};
pub use clip::{
    ClipFeatureConfig, ClipFeatureNorm, ClipPreprocess, ClipVision, ClipVisionOutput,
    HfClipVisionConfig,
};
pub use config::{
    Activation, ClipTarget, CrossSource, DataRange, DecoderConfig, DecoderKind, DiffusionConfig,
    EncoderConfig, MaskedInput, ModelConfig, ScheduleKind, Target, Weighting,
};
pub use decoder::{Decoder, Encoded};
pub use encoder::{Encoder, EncoderOutput};
pub use error::{Error, Result};
pub use heads::{Classifier, LinearProbe, Pool};
pub use hf::{HfVitMaeConfig, MaeOutput};
pub use inpaint::{InpaintStep, Inpainted, Inpainting, OnStep};
pub use mask::Masking;
pub use model::{DiffMae, ModelDenoiser};
pub use params::NamedParam;
pub use pretrain::{ClipLoss, PretrainBatch, PretrainStep, Pretraining};
