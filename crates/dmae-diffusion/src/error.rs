//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `dmae-diffusion`.
///
/// Variants name the offending argument and say what was expected, so a caller can
/// report the problem without reading this crate's source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ratio (mask ratio, block area fraction) outside its allowed interval.
    #[error("invalid ratio `{arg}` = {value}: expected a finite value in [0, 1)")]
    InvalidRatio {
        /// The argument's name.
        arg: &'static str,
        /// The value that was given.
        value: f64,
    },
    /// A sampler asked for more (or fewer) steps than the schedule has.
    #[error("invalid step count `{arg}` = {steps}: expected 1 <= steps <= T = {num_timesteps}")]
    InvalidSteps {
        /// The argument's name.
        arg: &'static str,
        /// The number of steps that was asked for.
        steps: usize,
        /// The schedule's number of diffusion steps T.
        num_timesteps: usize,
    },
    /// A timestep index outside `0..T`.
    #[error("timestep `{arg}` = {t} out of range: expected 0 <= t < T = {num_timesteps}")]
    TimestepOutOfRange {
        /// The argument's name.
        arg: &'static str,
        /// The timestep that was given.
        t: usize,
        /// The schedule's number of diffusion steps T.
        num_timesteps: usize,
    },
    /// Any other argument outside its domain.
    #[error("invalid argument `{arg}`: expected {expected}, got {got}")]
    InvalidArgument {
        /// The argument's name.
        arg: &'static str,
        /// What the argument must satisfy.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A tensor (or buffer) whose shape does not fit.
    #[error("shape mismatch for `{arg}`: expected {expected}, got {got:?}")]
    Shape {
        /// The argument's name.
        arg: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A mask image that could not be opened or decoded.
    #[error("cannot read mask image {}: {reason}", path.as_ref().map_or_else(|| "<bytes>".to_string(), |p| p.display().to_string()))]
    MaskImage {
        /// The file, when the image was read from a path.
        path: Option<PathBuf>,
        /// Why reading failed.
        reason: String,
    },
    /// The [`Denoiser`](crate::Denoiser) given to a sampler failed. The message includes the
    /// cause's, so the cause is not also returned as `source()` (a chain printer such as anyhow's
    /// `{:#}` would repeat it).
    #[error("denoiser failed: {0}")]
    Denoiser(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A fused op of `dmae-core` rejected its inputs or failed.
    #[error(transparent)]
    Core(#[from] dmae_core::Error),
}

impl Error {
    /// Wraps any error raised inside a [`Denoiser`](crate::Denoiser) implementation
    /// (e.g. a model crate's own error type) as [`Error::Denoiser`].
    pub fn denoiser<E: std::error::Error + Send + Sync + 'static>(err: E) -> Self {
        Error::Denoiser(Box::new(err))
    }

    pub(crate) fn invalid(
        arg: &'static str,
        expected: impl Into<String>,
        got: impl ToString,
    ) -> Self {
        Error::InvalidArgument {
            arg,
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that a ratio is finite and in [0, 1).
pub(crate) fn check_ratio(arg: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidRatio { arg, value })
    }
}
