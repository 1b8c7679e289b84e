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
//! | [`masking`] | [`TokenMask`]: visible / masked / ids_restore index sets |
//! | [`embed`] | patch, 2-D sin-cos position and time-step embeddings |
//! | [`block`] | linear, LayerNorm, MLP, self/cross attention, pre-norm blocks |
//! | [`encoder`] | [`Encoder`] (ViT over visible patches, per-block outputs) |
//! | [`decoder`] | [`Decoder`], [`Encoded`] (context with K/V cache) |
//! | [`model`] | [`DiffMae`]: encode once, decode per step; [`ModelDenoiser`] for samplers |
//! | [`heads`] | [`Classifier`] (avg/cls pool, drop path, layer-wise lr decay), [`LinearProbe`] |
//! | [`pretrain`] | [`Pretraining`]: one pre-training step (mask, noise, encode, decode, x0 loss) |
//! | [`checkpoint`] | safetensors with the config in the metadata; the tensor-name table |
//! | [`hf`] | Hugging Face ViTMAE import (local dir, hf-hub), [`DiffMae::mae_forward`] for parity |
//! | [`mae`] | facebookresearch/mae checkpoint import (`.pth` / `.safetensors`, timm names) |
//! | [`error`] | [`Error`], [`Result`] |
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use dmae_models::{DiffMae, ModelConfig, TokenMask};
//! use dmae_diffusion::{MaskStrategy, PatchGrid, RngKey};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = ModelConfig::mnist();
//! cfg.encoder.depth = 2; cfg.decoder.depth = 2; cfg.encoder.dim = 32; cfg.encoder.heads = 2;
//! cfg.decoder.dim = 16; cfg.decoder.heads = 2;
//! let dev = Device::Cpu;
//! let model = DiffMae::new(cfg, 0, &dev)?;
//! let grid = PatchGrid::for_image(28, 28, 4)?;
//! let mask = MaskStrategy::random(0.75)?.sample(grid, 2, RngKey::new(0, 0), &dev)?;
//! let masking = TokenMask::from(&mask);
//! let patches = Tensor::randn(0f32, 1., (2, 49, 16), &dev)?;
//! let (x0_v, x0_m) = mask.split(&patches)?;
//! let ctx = model.encode(&x0_v, &masking)?; // once per image
//! let x0_hat = model.decode(&ctx, &x0_m, &masking, &[999, 999])?; // per sampling step
//! assert_eq!(x0_hat.dims(), x0_m.dims());
//! # Ok(()) }
//! ```
//!
//! Features: `hf-hub` (default on: `DiffMae::from_hf_hub` downloads through the hf-hub cache;
//! local directories with [`DiffMae::from_hf_dir`] need no feature), `cuda` (forwards to dmae-core's,
//! dmae-diffusion's and candle's). Examples: `cargo run --release -p dmae-models --example import_hf`
//! (the committed ViTMAE fixture), `--example decode_cache` (K/V cache timing).
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
pub mod mae;
pub mod masking;
pub mod model;
mod params;
pub mod pretrain;

pub use checkpoint::{write_atomic, HeadInfo};
pub use clip::{
    ClipFeatureConfig, ClipFeatureNorm, ClipPreprocess, ClipVision, ClipVisionOutput,
    HfClipVisionConfig,
};
pub use config::{
    Activation, CrossSource, DecoderConfig, DecoderKind, EncoderConfig, MaskedInput, ModelConfig,
};
pub use decoder::{Decoder, Encoded};
pub use encoder::{Encoder, EncoderOutput};
pub use error::{Error, Result};
pub use heads::{Classifier, LinearProbe, Pool};
pub use hf::{HfVitMaeConfig, MaeOutput};
pub use masking::TokenMask;
pub use model::{DiffMae, ModelDenoiser};
pub use params::NamedParam;
pub use pretrain::{PretrainBatch, PretrainMask, PretrainStep, Pretraining};
