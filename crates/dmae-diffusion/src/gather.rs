//! The one place where tokens are gathered by index.
//!
//! Delegates to `dmae_core::gather_tokens` (a fused custom op with CPU and CUDA kernels and
//! its own backward); kept behind this one function so callers never depend on which
//! implementation is used.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// `out[n, k, :] = x[n, idx[n, k], :]` for `x: (N, L, D)` and `idx: (N, K)` (u32);
/// differentiable with respect to `x`.
pub(crate) fn gather_tokens(x: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (n, _l, d) = x.dims3().map_err(|_| Error::Shape {
        arg: "x",
        expected: "(N, L, D)".into(),
        got: x.dims().to_vec(),
    })?;
    let (ni, k) = idx.dims2().map_err(|_| Error::Shape {
        arg: "idx",
        expected: "(N, K)".into(),
        got: idx.dims().to_vec(),
    })?;
    if ni != n {
        return Err(Error::Shape {
            arg: "idx",
            expected: format!("batch size {n} to match x"),
            got: idx.dims().to_vec(),
        });
    }
    if k == 0 {
        return Ok(Tensor::zeros((n, 0, d), x.dtype(), x.device())?);
    }
    Ok(dmae_core::gather_tokens(x, &idx.to_device(x.device())?)?)
}
