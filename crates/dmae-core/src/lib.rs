//! # dmae-core
//!
//! The tensor ops DiffMAE trains on, each a [candle](https://github.com/huggingface/candle) custom op
//! with a tested backward, a rayon-parallel CPU kernel and (feature `cuda`) a CUDA kernel.
//!
//! candle-nn's fused last-dim softmax and layer norm have no backward: gradients silently stop
//! there. Training code in this workspace uses the ops below instead.
//!
//! | op | module | what |
//! |---|---|---|
//! | [`layer_norm`] | `layer_norm` | layer norm with weight and bias, grads for all three |
//! | [`softmax`] | `softmax` | softmax over the last dimension |
//! | [`attention`] | `attention` | scaled dot-product attention, self or cross, additive mask |
//! | [`gelu`] | `gelu` | GELU, erf or tanh form |
//! | [`patchify`], [`unpatchify`], [`patchify_video`], [`unpatchify_video`] | `patch` | MAE's patch layout |
//! | [`gather_tokens`], [`scatter_tokens`] | `tokens` | per-sample token selection by index |
//! | [`AdamW`] | `adamw` | fused AdamW step |
//! | [`linear`], [`linear_gelu`] | `linear` | `x Wᵀ + b` (and `gelu(x Wᵀ + b)`) with its three gradients |
//! | [`DataParallel`] | `data_parallel` | a batch split over CPU thread groups, gradients summed |
//! | [`no_grad`] | `no_grad` | inference mode: the ops skip what only a backward needs (sampling) |
//! | [`optim`] | `optim` | the recipe around AdamW: lr scaling and schedule, clipping, accumulation, EMA, f32 master weights |
//! | [`rng`] | `rng` | keyed ChaCha8 streams behind every random draw of the workspace |
//!
//! [`reference`](mod@reference) holds the same functions composed from plain candle ops (the baseline of the tests
//! and of `cargo xtask bench ops`), and [`gradcheck`] the finite-difference checker.
//!
//! Features: `cuda` (CUDA kernels compiled to PTX by the build script; needs nvcc). Example:
//! `cargo run --release -p dmae-core --example attention_grad` (attention's gradient against finite
//! differences and against the stock candle composition).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let x = Var::new(&[[1.0f32, 2.0, 4.0], [0.5, 0.5, -1.0]], &Device::Cpu)?;
//! let w = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?;
//! let b = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?;
//! let y = dmae_core::layer_norm(&x, &w, &b, 1e-6)?;
//! let p = dmae_core::softmax(&y)?;
//! let grads = p.sqr()?.sum_all()?.backward()?;
//! assert!(grads.get(&x).is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod adamw;
mod attention;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod data_parallel;
mod error;
mod gelu;
pub mod gradcheck;
mod layer_norm;
mod linear;
mod no_grad;
pub mod optim;
mod patch;
pub mod reference;
pub mod rng;
mod softmax;
#[cfg(test)]
mod testutil;
mod threads;
mod tokens;

pub use adamw::{AdamW, AdamWConfig, Param};
pub use attention::{attention, attention_qkv};
pub use data_parallel::DataParallel;
pub use error::{Error, Result};
pub use gelu::{gelu, Gelu};
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_gelu};
pub use no_grad::{grad_enabled, no_grad};
pub use patch::{patchify, patchify_video, unpatchify, unpatchify_video};
pub use softmax::softmax;
pub use threads::{check_threads, configure_threads, DEFAULT_SPIN_LIMIT, MAX_THREADS};
pub use tokens::{gather_tokens, scatter_tokens};
