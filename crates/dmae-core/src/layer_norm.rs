//! Layer normalisation over the last dimension, with weight and bias, and its backward.
//!
//! `y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias` per row (biased variance, as PyTorch and
//! MAE's `nn.LayerNorm`). The backward recomputes the row statistics from `x` instead of saving them:
//! one extra pass over a row that is already in cache, and no side outputs to keep alive.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Real};
use crate::error::{check_float, check_same_dtype, invalid, shape_mismatch, Result};

const OP: &str = "layer_norm";

/// Layer norm of `x` (..., D) over its last dimension with `weight` (D,) and `bias` (D,).
///
/// Differentiable in all three inputs. `eps` must be positive (MAE uses 1e-6, Hugging Face ViTMAE 1e-12).
/// Any layout of `x` is accepted; a non-contiguous one is copied once.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = match x.dims().last() {
        Some(&d) if d > 0 => d,
        _ => {
            return Err(invalid(
                OP,
                format!(
                    "x must have a non-empty last dimension, got {:?}",
                    x.shape()
                ),
            ))
        }
    };
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [d] {
            return Err(shape_mismatch(
                OP,
                format!("x (..., D) vs {name} (D,)"),
                x.shape(),
                t.shape(),
            ));
        }
        check_same_dtype(OP, name, t.dtype(), x.dtype())?;
    }
    check_float(OP, "x", x.dtype(), x.device())?;
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(invalid(
            OP,
            format!("eps must be positive and finite, got {eps}"),
        ));
    }
    let x = x.contiguous()?;
    let (w, b) = (weight.contiguous()?, bias.contiguous()?);
    Ok(crate::no_grad::finish(x.apply_op3(
        &w,
        &b,
        LayerNorm { eps },
    )?))
}

struct LayerNorm {
    eps: f64,
}

fn forward<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = Vec::with_capacity(x.len());
    let block = cpu::rows_per_task(d) * d;
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .for_each(|(y, x)| forward_rows(x, y, w, b, eps));
    // SAFETY: the chunks cover all x.len() slots and forward_rows writes every slot of its rows.
    unsafe { y.set_len(x.len()) };
    y
}

cpu::multiversion! {
    fn forward_rows<T: Real>(x: &[T], y: &mut [MaybeUninit<T>], w: &[T], b: &[T], eps: f64) {
        let d = w.len();
        let (w, b) = (&w[..d], &b[..d]);
        for r in 0..x.len() / d {
            let (x, y) = (&x[r * d..(r + 1) * d], &mut y[r * d..(r + 1) * d]);
            let (mean, rstd) = stats(x, eps);
            for i in 0..d {
                y[i].write((x[i] - mean) * rstd * w[i] + b[i]);
            }
        }
    }
}

/// `(mean(x), 1 / sqrt(var(x) + eps))`, two-pass for accuracy; the same arithmetic as
/// [`center`] (which also keeps `x - mean`).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn stats<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let n = cpu::c::<T>(x.len() as f64);
    let mean = cpu::sum(x) / n;
    // cpu::dot of x - mean with itself, without storing x - mean.
    let mut acc = [T::zero(); 8];
    for c in x.chunks_exact(8) {
        let c = cpu::lanes(c);
        for l in 0..8 {
            let v = c[l] - mean;
            acc[l] += v * v;
        }
    }
    let mut tail = T::zero();
    for &v in x.chunks_exact(8).remainder() {
        tail += (v - mean) * (v - mean);
    }
    let ss =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
    (mean, (ss / n + cpu::c(eps)).sqrt().recip())
}

/// Writes `x - mean(x)` into `xc` and returns `1 / sqrt(var(x) + eps)` (two-pass, for accuracy).
#[inline(always)]
fn center<T: Real>(x: &[T], xc: &mut [T], eps: f64) -> T {
    let n = cpu::c::<T>(x.len() as f64);
    let mean = cpu::sum(x) / n;
    let xc = &mut xc[..x.len()];
    for i in 0..x.len() {
        xc[i] = x[i] - mean;
    }
    let var = cpu::dot(xc, xc) / n;
    (var + cpu::c(eps)).sqrt().recip()
}

/// Gradients of layer norm. With `xh = (x - mean) * rstd` and `g = dy * w`:
/// `dx = rstd * (g - mean(g) - xh * mean(g * xh))`, `dw = sum_rows dy * xh`, `db = sum_rows dy`.
/// The column sums are reduced per fixed-size block of rows and then in block order, so the result
/// does not depend on the number of threads.
fn backward<T: Real>(x: &[T], w: &[T], dy: &[T], eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let d = w.len();
    let mut dx = Vec::with_capacity(x.len());
    let block = cpu::rows_per_task(d) * d;
    let partials: Vec<(Vec<T>, Vec<T>)> = dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block))
        .map(|((dx, x), dy)| {
            let mut dw = vec![T::zero(); d];
            let mut db = vec![T::zero(); d];
            backward_rows(x, dy, w, dx, &mut dw, &mut db, eps);
            (dw, db)
        })
        .collect();
    // SAFETY: the chunks cover all x.len() slots and backward_rows writes every slot of its rows.
    unsafe { dx.set_len(x.len()) };
    let mut dw = vec![T::zero(); d];
    let mut db = vec![T::zero(); d];
    for (pw, pb) in partials {
        cpu::axpy(T::one(), &pw, &mut dw);
        cpu::axpy(T::one(), &pb, &mut db);
    }
    (dx, dw, db)
}

cpu::multiversion! {
    fn backward_rows<T: Real>(
        x: &[T],
        dy: &[T],
        w: &[T],
        dx: &mut [MaybeUninit<T>],
        dw: &mut [T],
        db: &mut [T],
        eps: f64,
    ) {
        let d = w.len();
        let n = cpu::c::<T>(d as f64);
        let mut xh = vec![T::zero(); d];
        let mut g = vec![T::zero(); d];
        let (w, dw, db) = (&w[..d], &mut dw[..d], &mut db[..d]);
        for r in 0..x.len() / d {
            let (x, dy) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let dx = &mut dx[r * d..(r + 1) * d];
            let rstd = center(x, &mut xh, eps);
            for i in 0..d {
                xh[i] *= rstd;
                g[i] = dy[i] * w[i];
                dw[i] += dy[i] * xh[i];
                db[i] += dy[i];
            }
            let mg = cpu::sum(&g) / n;
            let mgxh = cpu::dot(&g, &xh) / n;
            for i in 0..d {
                dx[i].write(rstd * (g[i] - mg - xh[i] * mgxh));
            }
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            eps: f64,
            xs: &CpuStorage,
            xl: &Layout,
            ws: &CpuStorage,
            wl: &Layout,
            bs: &CpuStorage,
            bl: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let y = forward::<T>(
                cpu::slice(xs, xl, OP)?,
                cpu::slice(ws, wl, OP)?,
                cpu::slice(bs, bl, OP)?,
                eps,
            );
            Ok(T::to_cpu_storage_owned(y))
        }
        let out = cpu::dispatch_float!(OP, xs, run(self.eps, xs, xl, ws, wl, bs, bl))?;
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / d;
        let y = crate::cuda::layer_norm_fwd(
            xs,
            xl.start_offset(),
            ws,
            wl.start_offset(),
            bs,
            bl.start_offset(),
            rows,
            d,
            self.eps as f32,
        )?;
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (dx, dw, db) = match (&*xs, &*ws, &*gs) {
            (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    eps: f64,
                    xs: &CpuStorage,
                    xl: &Layout,
                    ws: &CpuStorage,
                    wl: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
                    let (dx, dw, db) = backward::<T>(
                        cpu::slice(xs, xl, OP)?,
                        cpu::slice(ws, wl, OP)?,
                        cpu::slice(gs, gl, OP)?,
                        eps,
                    );
                    let d = dw.len();
                    Ok((
                        cpu::tensor(dx, xl.shape()),
                        cpu::tensor(dw, d),
                        cpu::tensor(db, d),
                    ))
                }
                cpu::dispatch_float!(OP, xs, run(self.eps, xs, xl, ws, wl, gs, gl))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(gs)) => {
                let d = wl.shape().elem_count();
                let rows = xl.shape().elem_count() / d;
                let [dx, dw, db] = crate::cuda::layer_norm_bwd(
                    xs,
                    xl.start_offset(),
                    ws,
                    wl.start_offset(),
                    gs,
                    gl.start_offset(),
                    rows,
                    d,
                    self.eps as f32,
                )?;
                (
                    crate::cuda::tensor(dx, xl.shape()),
                    crate::cuda::tensor(dw, d),
                    crate::cuda::tensor(db, d),
                )
            }
            _ => candle_core::bail!("{OP}: backward on an unsupported device mix"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::Error;

    #[test]
    fn gradients_match_finite_differences() {
        let f = |t: &[Tensor]| layer_norm(&t[0], &t[1], &t[2], 1e-5).map_err(Into::into);
        assert_grads(f, &[randn(&[3, 5, 7], 1), randn(&[7], 2), randn(&[7], 3)]);
        // A single odd row.
        assert_grads(f, &[randn(&[1, 13], 4), randn(&[13], 5), randn(&[13], 6)]);
    }

    #[test]
    fn non_contiguous_and_broadcast_inputs() {
        // x arrives transposed (strided), weight arrives as a broadcast view of a scalar.
        let f = |t: &[Tensor]| {
            let x = t[0].t()?;
            let w = t[1].broadcast_as(6)?;
            layer_norm(&x, &w, &t[2], 1e-5).map_err(Into::into)
        };
        assert_grads(
            f,
            &[
                randn(&[6, 9], 7),
                randn(&[], 8).reshape(()).unwrap(),
                randn(&[6], 9),
            ],
        );
        // x is a broadcast of one row over 4 rows: its gradient sums the rows.
        let g = |t: &[Tensor]| {
            layer_norm(&t[0].broadcast_as((4, 5))?, &t[1], &t[2], 1e-5).map_err(Into::into)
        };
        assert_grads(g, &[randn(&[1, 5], 10), randn(&[5], 11), randn(&[5], 12)]);
    }

    /// The forward's statistics without a scratch row round exactly as `center` (kept for the
    /// backward) does.
    #[test]
    fn forward_matches_center_exactly() {
        let d = 37;
        let x: Vec<f32> = (0..5 * d)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|j| 1.0 + j as f32 / 50.0).collect();
        let b: Vec<f32> = (0..d).map(|j| j as f32 / 30.0 - 0.5).collect();
        let y = forward(&x, &w, &b, 1e-6);
        let mut xc = vec![0f32; d];
        for (r, row) in x.chunks(d).enumerate() {
            let rstd = center(row, &mut xc, 1e-6);
            for j in 0..d {
                assert_eq!(y[r * d + j], xc[j] * rstd * w[j] + b[j]);
            }
        }
    }

    #[test]
    fn matches_candle_composition() {
        assert_matches_reference(
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-6).map_err(Into::into),
            |t| crate::reference::layer_norm(&t[0], &t[1], &t[2], 1e-6),
            &[
                randn(&[4, 13, 192], 20),
                randn(&[192], 21),
                randn(&[192], 22),
            ],
            2e-4,
        );
    }

    #[test]
    fn shape_and_dtype_errors_are_typed() {
        let x = randn(&[2, 3, 4], 1)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let w = randn(&[5], 1).to_dtype(candle_core::DType::F32).unwrap();
        let b = randn(&[4], 1).to_dtype(candle_core::DType::F32).unwrap();
        match layer_norm(&x, &w, &b, 1e-6) {
            Err(Error::ShapeMismatch { op, lhs, rhs, .. }) => {
                assert_eq!(op, "layer_norm");
                assert_eq!(lhs.dims(), &[2, 3, 4]);
                assert_eq!(rhs.dims(), &[5]);
            }
            other => panic!("expected a shape error, got {other:?}"),
        }
        let w64 = randn(&[4], 1);
        assert!(matches!(
            layer_norm(&x, &w64, &b, 1e-6),
            Err(Error::DType {
                op: "layer_norm",
                ..
            })
        ));
        let w = w.narrow(0, 0, 4).unwrap();
        assert!(matches!(
            layer_norm(&x, &w, &b, 0.0),
            Err(Error::InvalidArgument { .. })
        ));
        let msg = layer_norm(&x, &b.narrow(0, 0, 3).unwrap(), &b, 1e-6)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("layer_norm") && msg.contains("[2, 3, 4]") && msg.contains("[3]"),
            "{msg}"
        );
    }
}
