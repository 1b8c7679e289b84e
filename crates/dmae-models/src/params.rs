//! The named parameters of a network: creation with deterministic initialisation, listing for the
//! optimiser and for checkpoints.
//!
//! Names are the stable, documented checkpoint names (see [`crate::checkpoint`]). Initialisation
//! follows MAE: xavier-uniform linear weights, zero biases, unit/zero LayerNorm, `N(0, 0.02²)`
//! cls/mask tokens; all drawn on the host from one seeded ChaCha8 stream, so a seed gives the same
//! network on every device.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// Uniform in `±sqrt(6 / (fan_in + fan_out))` of a `(fan_out, fan_in)` matrix.
    Xavier,
    /// `N(0, std²)`.
    Normal(f64),
    /// Every element the same value.
    Const(f32),
}

/// One parameter: its name, variable, and whether weight decay applies (MAE: not to norms,
/// biases, tokens).
#[derive(Clone, Debug)]
pub struct NamedParam {
    /// Stable checkpoint name, e.g. `encoder.blocks.0.attn.qkv.weight`.
    pub name: String,
    /// The f32 variable.
    pub var: Var,
}

impl NamedParam {
    /// Whether MAE applies weight decay to it: matrices yes; biases, norms, tokens no.
    pub fn decays(&self) -> bool {
        self.var.rank() >= 2 && !self.name.ends_with("token")
    }
}

/// Ordered collection of parameters under construction.
pub(crate) struct ParamStore {
    pub(crate) params: Vec<NamedParam>,
    rng: ChaCha8Rng,
    device: Device,
    dtype: DType,
}

impl ParamStore {
    pub(crate) fn new(seed: u64, device: &Device) -> Self {
        Self {
            params: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    pub(crate) fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Creates `name` with `shape` and returns a tensor sharing its storage.
    pub(crate) fn get(&mut self, name: String, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c; n],
            Init::Normal(std) => {
                let d = Normal::new(0.0, std).map_err(|e| Error::arg("init", e.to_string()))?;
                (0..n).map(|_| d.sample(&mut self.rng) as f32).collect()
            }
            Init::Xavier => {
                let (fan_out, fan_in) = match shape {
                    [o, rest @ ..] => (*o, rest.iter().product::<usize>()),
                    [] => (1, 1),
                };
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n)
                    .map(|_| self.rng.random_range(-bound..bound) as f32)
                    .collect()
            }
        };
        let t = Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.params.push(NamedParam { name, var });
        Ok(out)
    }
}

/// Joins a prefix and a name with a dot.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
