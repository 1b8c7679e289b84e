//! Softmax over the last dimension, and its backward `dx = y * (dy - sum(dy * y))`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Real};
use crate::error::{check_float, invalid, Result};

const OP: &str = "softmax_last_dim";

/// `softmax(x)` over the last dimension, differentiable. Rows that are entirely `-inf` give zeros.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match x.dims().last() {
        Some(&d) if d > 0 => {}
        _ => {
            return Err(invalid(
                OP,
                format!("x must have a non-empty last dimension, got {:?}", x.shape()),
            ))
        }
    }
    check_float(OP, "x", x.dtype(), x.device())?;
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

struct Softmax;

/// Numerically stable softmax of one row, in place: subtract the max before `exp`.
#[inline]
pub(crate) fn softmax_row<T: Real>(row: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), num_traits::Float::max);
    if max == T::neg_infinity() {
        row.iter_mut().for_each(|v| *v = T::zero());
        return;
    }
    let mut sum = T::zero();
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum = sum + *v;
    }
    let inv = sum.recip();
    row.iter_mut().for_each(|v| *v = *v * inv);
}

fn forward<T: Real>(x: &[T], d: usize) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(cpu::rows_per_task(d) * d)
        .for_each(|rows| rows.chunks_exact_mut(d).for_each(softmax_row));
    y
}

fn backward<T: Real>(y: &[T], dy: &[T], d: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let block = cpu::rows_per_task(d) * d;
    dx.par_chunks_mut(block)
        .zip(y.par_chunks(block).zip(dy.par_chunks(block)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, y), dy) in dx
                .chunks_exact_mut(d)
                .zip(y.chunks_exact(d))
                .zip(dy.chunks_exact(d))
            {
                let s = cpu::dot(y, dy);
                for i in 0..d {
                    dx[i] = y[i] * (dy[i] - s);
                }
            }
        });
    dx
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
            let d = l.dims()[l.dims().len() - 1];
            Ok(T::to_cpu_storage_owned(forward::<T>(cpu::slice(s, l, OP)?, d)))
        }
        Ok((cpu::dispatch_float!(OP, s, run(s, l))?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = l.dims()[l.dims().len() - 1];
        let rows = l.shape().elem_count() / d;
        let y = crate::cuda::softmax_fwd(s, l.start_offset(), rows, d)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let d = yl.dims()[yl.dims().len() - 1];
        let dx = match (&*ys, &*gs) {
            (Storage::Cpu(ys), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    ys: &CpuStorage,
                    yl: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                    d: usize,
                ) -> candle_core::Result<Tensor> {
                    let dx = backward::<T>(cpu::slice(ys, yl, OP)?, cpu::slice(gs, gl, OP)?, d);
                    Ok(cpu::tensor(dx, yl.shape()))
                }
                cpu::dispatch_float!(OP, ys, run(ys, yl, gs, gl, d))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(ys), Storage::Cuda(gs)) => {
                let rows = yl.shape().elem_count() / d;
                let dx = crate::cuda::softmax_bwd(ys, yl.start_offset(), gs, gl.start_offset(), rows, d)?;
                crate::cuda::tensor(dx, yl.shape())
            }
            _ => candle_core::bail!("{OP}: backward on an unsupported device mix"),
        };
        Ok(Some(dx))
    }
}
