//! The crate's error type: shape and dtype checks at the op boundary name the op and both operands.

use candle_core::{DType, Shape};

/// Errors returned by dmae-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands (or an operand and what the op expects) have incompatible shapes.
    #[error("{op}: {what}: {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        /// The op that rejected its inputs.
        op: &'static str,
        /// Which operands, and what was expected of them.
        what: String,
        /// Shape of the first operand.
        lhs: Shape,
        /// Shape of the second operand (or the expected shape).
        rhs: Shape,
    },
    /// An operand has a dtype the op does not accept (on this device), or two dtypes differ.
    #[error("{op}: {what}: got {got:?}, expected {expected}")]
    DType {
        /// The op that rejected its inputs.
        op: &'static str,
        /// Which operand.
        what: String,
        /// The dtype received.
        got: DType,
        /// What the op accepts.
        expected: String,
    },
    /// A scalar argument or an index is out of its valid range.
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The op that rejected its inputs.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// An error from candle itself (allocation, device, kernel launch).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

pub(crate) fn shape_mismatch(
    op: &'static str,
    what: impl Into<String>,
    lhs: &Shape,
    rhs: &Shape,
) -> Error {
    Error::ShapeMismatch {
        op,
        what: what.into(),
        lhs: lhs.clone(),
        rhs: rhs.clone(),
    }
}

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        msg: msg.into(),
    }
}

/// Checks that `got` is one of the float dtypes our kernels implement on `device`:
/// f32 and f64 on the CPU (f64 exists for finite-difference checks), f32/bf16/f16 on CUDA.
pub(crate) fn check_float(
    op: &'static str,
    what: &str,
    got: DType,
    device: &candle_core::Device,
) -> Result<()> {
    let ok = match device {
        candle_core::Device::Cpu => matches!(got, DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => matches!(got, DType::F32 | DType::BF16 | DType::F16),
        candle_core::Device::Metal(_) => false,
    };
    if ok {
        Ok(())
    } else {
        let expected = match device {
            candle_core::Device::Cpu => "f32 or f64 on the CPU",
            candle_core::Device::Cuda(_) => "f32, bf16 or f16 on CUDA",
            candle_core::Device::Metal(_) => "a CPU or CUDA device (Metal is not supported)",
        };
        Err(Error::DType {
            op,
            what: what.to_string(),
            got,
            expected: expected.to_string(),
        })
    }
}

pub(crate) fn check_same_dtype(
    op: &'static str,
    what: &str,
    got: DType,
    want: DType,
) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            what: what.to_string(),
            got,
            expected: format!("{want:?} (the dtype of the first input)"),
        })
    }
}
