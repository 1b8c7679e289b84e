//! The crate's error type.

/// Everything that can go wrong in `dmae-models`.
///
/// Shape errors name the tensor (or argument) and both shapes, so a caller can report the
/// problem without reading this crate's source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor whose shape does not fit what the model (or checkpoint) expects.
    #[error("shape mismatch for `{name}`: expected {expected:?}, got {got:?}")]
    Shape {
        /// The tensor or argument.
        name: String,
        /// The expected shape (`usize::MAX` marks a free dimension).
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint is missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A checkpoint holds a tensor the model does not have.
    #[error("checkpoint has unexpected tensor `{name}` with shape {shape:?}")]
    UnexpectedTensor {
        /// The tensor name.
        name: String,
        /// Its shape in the file.
        shape: Vec<usize>,
    },
    /// An invalid configuration value.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Any other argument outside its domain.
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument {
        /// The argument.
        arg: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint or Hugging Face file that cannot be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file (or repository).
        path: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint or other file that cannot be written (full disk, read-only directory, ...).
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A fused op of `dmae-core` rejected its inputs or failed.
    #[error(transparent)]
    Core(#[from] dmae_core::Error),
    /// `dmae-diffusion` (masks, schedules, samplers) failed.
    #[error(transparent)]
    Diffusion(#[from] dmae_diffusion::Error),
    /// A configuration could not be (de)serialised.
    #[error("config json: {0}")]
    Json(serde_json::Error),
    /// A safetensors file could not be parsed or written.
    #[error("safetensors: {0}")]
    SafeTensors(safetensors::SafeTensorError),
}

// `Json` and `SafeTensors` put their cause's text in their message, so (unlike `#[from]`) these
// conversions do not also make it the error's `source()`: a chain printer (anyhow's `{:#}`)
// would repeat it ("safetensors: header too large: header too large").
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<safetensors::SafeTensorError> for Error {
    fn from(e: safetensors::SafeTensorError) -> Self {
        Error::SafeTensors(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(name: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Error::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn arg(arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }
}

/// Checks `t` against `expected`, where `usize::MAX` matches any size.
pub(crate) fn check_shape(name: &str, t: &candle_core::Tensor, expected: &[usize]) -> Result<()> {
    let got = t.dims();
    let ok = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(&g, &e)| e == usize::MAX || g == e);
    if ok {
        Ok(())
    } else {
        Err(Error::shape(name, expected, got))
    }
}

/// Checks a mask against a model of `l` patches; returns `(N, Lv, Lm)`.
pub(crate) fn check_mask(
    mask: &dmae_diffusion::MaskIndices,
    l: usize,
) -> Result<(usize, usize, usize)> {
    let n = mask.batch_size();
    if mask.num_tokens() != l {
        return Err(Error::shape("mask", &[n, l], &[n, mask.num_tokens()]));
    }
    Ok((n, mask.num_visible(), mask.num_masked()))
}
