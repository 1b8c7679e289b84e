//! Softmax over the last dimension, and its backward `dx = y * (dy - sum(dy * y))`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Real};
use crate::error::{check_float, invalid, Result};

const OP: &str = "softmax";

/// `softmax(x)` over the last dimension, differentiable. Rows that are entirely `-inf` give zeros.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    match x.dims().last() {
        Some(&d) if d > 0 => {}
        _ => {
            return Err(invalid(
                OP,
                format!(
                    "x must have a non-empty last dimension, got {:?}",
                    x.shape()
                ),
            ))
        }
    }
    check_float(OP, "x", x.dtype(), x.device())?;
    Ok(crate::no_grad::finish(x.contiguous()?.apply_op1(Softmax)?))
}

struct Softmax;

/// Numerically stable softmax of one row, in place: subtract the max before `exp`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops vectorise inside the multiversioned callers
pub(crate) fn softmax_row<T: Real>(row: &mut [T]) {
    let max = cpu::max(row);
    if max == T::neg_infinity() {
        row.fill(T::zero());
        return;
    }
    for i in 0..row.len() {
        row[i] = (row[i] - max).exp_fast();
    }
    let inv = cpu::sum(row).recip();
    for i in 0..row.len() {
        row[i] *= inv;
    }
}

fn forward<T: Real>(x: &[T], d: usize) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(cpu::rows_per_task(d) * d)
        .for_each(|rows| forward_rows(rows, d));
    y
}

cpu::multiversion! {
    fn forward_rows<T: Real>(rows: &mut [T], d: usize) {
        for r in 0..rows.len() / d {
            softmax_row(&mut rows[r * d..(r + 1) * d]);
        }
    }
}

fn backward<T: Real>(y: &[T], dy: &[T], d: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let block = cpu::rows_per_task(d) * d;
    dx.par_chunks_mut(block)
        .zip(y.par_chunks(block).zip(dy.par_chunks(block)))
        .for_each(|(dx, (y, dy))| backward_rows(dx, y, dy, d));
    dx
}

cpu::multiversion! {
    fn backward_rows<T: Real>(dx: &mut [T], y: &[T], dy: &[T], d: usize) {
        for r in 0..y.len() / d {
            let (y, dy) = (&y[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let dx = &mut dx[r * d..(r + 1) * d];
            let s = cpu::dot(y, dy);
            for i in 0..d {
                dx[i] = y[i] * (dy[i] - s);
            }
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
            let d = l.dims()[l.dims().len() - 1];
            Ok(T::to_cpu_storage_owned(forward::<T>(
                cpu::slice(s, l, OP)?,
                d,
            )))
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
                let dx = crate::cuda::softmax_bwd(
                    ys,
                    yl.start_offset(),
                    gs,
                    gl.start_offset(),
                    rows,
                    d,
                )?;
                crate::cuda::tensor(dx, yl.shape())
            }
            _ => candle_core::bail!("{OP}: backward on an unsupported device mix"),
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn gradients_match_finite_differences() {
        let f = |t: &[Tensor]| softmax(&t[0]).map_err(Into::into);
        assert_grads(f, &[randn(&[2, 3, 7], 1)]);
        let g = |t: &[Tensor]| softmax(&t[0].t()?).map_err(Into::into);
        assert_grads(g, &[randn(&[11, 3], 2)]);
        let h = |t: &[Tensor]| softmax(&t[0].broadcast_as((2, 4, 5))?).map_err(Into::into);
        assert_grads(
            h,
            &[randn(&[4, 1], 3)
                .broadcast_as((4, 5))
                .unwrap()
                .contiguous()
                .unwrap()],
        );
        let h = |t: &[Tensor]| softmax(&t[0].broadcast_as((3, 5))?).map_err(Into::into);
        assert_grads(h, &[randn(&[5], 4)]);
    }

    #[test]
    fn matches_candle_composition() {
        assert_matches_reference(
            |t| softmax(&t[0]).map_err(Into::into),
            |t| crate::reference::softmax(&t[0]),
            &[randn(&[8, 3, 37, 37], 5)],
            1e-5,
        );
    }

    #[test]
    fn fully_masked_row_is_zero_and_rows_sum_to_one() {
        let x = Tensor::new(
            &[[f32::NEG_INFINITY, f32::NEG_INFINITY], [0.0, 1000.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let y = softmax(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[0], [0.0, 0.0]);
        assert_eq!(y[1], [0.0, 1.0]);
        let z = softmax(&randn(&[5, 9], 6))
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(z.iter().all(|s| (s - 1.0).abs() < 1e-12));
    }

    #[test]
    fn rejects_integer_and_scalar_inputs() {
        let x = Tensor::new(&[1u32, 2], &candle_core::Device::Cpu).unwrap();
        assert!(matches!(softmax(&x), Err(crate::Error::DType { .. })));
        let s = Tensor::new(1f32, &candle_core::Device::Cpu).unwrap();
        assert!(matches!(
            softmax(&s),
            Err(crate::Error::InvalidArgument { .. })
        ));
    }
}
