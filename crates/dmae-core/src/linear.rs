//! `y = x Wᵀ + b` as one differentiable op.
//!
//! Composed from candle ops, a linear layer on `(N, L, D)` is six graph nodes (reshape, transpose,
//! matmul, broadcast, add, reshape). candle's backward gives every node a zero-filled gradient
//! buffer and adds into it, so each node costs two passes over its output size, and the transposed
//! weight gradient is added through a strided (slow) path. On a 2-core CPU at DiffMAE-tiny shapes
//! that overhead was larger than the matrix products themselves. As one op, the backward is three
//! products and a column sum, each written once.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Mat, Real};
use crate::error::{check_float, check_same_dtype, invalid, shape_mismatch, Result};
use crate::gelu::{self, Gelu};
use crate::no_grad;

const OP: &str = "linear";

/// `x Wᵀ + b` over the last dimension of `x (.., in)`, with `weight (out, in)` and `bias (out,)`;
/// differentiable in all three. Returns `(.., out)`.
///
/// On the CPU this is one fused op (matrix products on all of rayon's threads); on other devices it
/// is composed from candle's matmul and broadcast add.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_act(x, weight, bias, None)
}

/// `gelu(x Wᵀ + b)`, the first layer of a transformer MLP, as one op: the activation is applied
/// while the product is still in cache, and the backward turns the output gradient into the
/// pre-activation gradient in the same pass that feeds the products. Saves the separate GELU
/// node (its copy, its pass and candle's zero-filled gradient buffer for it). Same arguments and
/// checks as [`linear`].
pub fn linear_gelu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    kind: Gelu,
) -> Result<Tensor> {
    linear_act(x, weight, bias, Some(kind))
}

fn linear_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Gelu>,
) -> Result<Tensor> {
    check_float(OP, "x", x.dtype(), x.device())?;
    check_same_dtype(OP, "weight", weight.dtype(), x.dtype())?;
    let (d_out, d_in) = weight.dims2().map_err(|_| {
        invalid(
            OP,
            format!("weight must be (out, in), got {:?}", weight.shape()),
        )
    })?;
    let dims = x.dims();
    if dims.last() != Some(&d_in) {
        return Err(shape_mismatch(
            OP,
            "x (.., in) vs weight (out, in)",
            x.shape(),
            weight.shape(),
        ));
    }
    if let Some(b) = bias {
        check_same_dtype(OP, "bias", b.dtype(), x.dtype())?;
        if b.dims() != [d_out] {
            return Err(shape_mismatch(
                OP,
                "bias (out,) vs weight (out, in)",
                b.shape(),
                weight.shape(),
            ));
        }
    }
    let rows = x.elem_count() / d_in.max(1);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = d_out;
    }
    if !x.device().is_cpu() || rows == 0 || d_in == 0 || d_out == 0 {
        let mut y = x.reshape((rows, d_in))?.matmul(&weight.t()?)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        let y = y.reshape(out_dims)?;
        return match act {
            Some(kind) => gelu::gelu(&y, kind),
            None => Ok(y),
        };
    }
    // Without a bias, a constant zero bias keeps one op (it tracks nothing: no gradient is made).
    let b = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(d_out, x.dtype(), x.device())?,
    };
    let (x, w) = (x.contiguous()?, weight.contiguous()?);
    let op = Linear {
        rows,
        d_in,
        d_out,
        out_shape: Shape::from(out_dims),
        act,
        save_act_grad: act.is_some() && no_grad::needs_grad(&[&x, &w, &b]),
        act_grad: Mutex::new(None),
    };
    Ok(no_grad::finish(x.apply_op3(&w, &b, op)?))
}

struct Linear {
    rows: usize,
    d_in: usize,
    d_out: usize,
    out_shape: Shape,
    act: Option<Gelu>,
    /// Whether the forward keeps the activation's derivative (not in inference mode, see
    /// [`crate::no_grad`]).
    save_act_grad: bool,
    /// With an activation, its derivative at `x Wᵀ + b`, saved by the forward pass (which
    /// computes it beside the value for little extra work) so that the backward is one product.
    act_grad: Mutex<Option<CpuStorage>>,
}

/// Forward: the bias written into every row, then `+= x Wᵀ`.
fn forward<T: Real>(op: &Linear, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let (rows, d_in, d_out) = (op.rows, op.d_in, op.d_out);
    let mut y = Vec::with_capacity(rows * d_out);
    y.spare_capacity_mut()[..rows * d_out]
        .par_chunks_mut(cpu::rows_per_task(d_out) * d_out)
        .for_each(|c| {
            c.chunks_mut(d_out).for_each(|r: &mut [MaybeUninit<T>]| {
                for (dst, &v) in r.iter_mut().zip(b) {
                    dst.write(v);
                }
            })
        });
    // SAFETY: the chunks cover all rows·d_out slots, and every row of d_out slots is written from
    // `b` (d_out elements, checked at the op boundary).
    unsafe { y.set_len(rows * d_out) };
    cpu::matmul_par(
        &mut y,
        Mat::rows(0, rows, d_out, d_out),
        true,
        x,
        Mat::rows(0, rows, d_in, d_in),
        w,
        Mat::rows(0, d_out, d_in, d_in).t(),
        T::one(),
    );
    y
}

/// `x Wᵀ` alone, written once by gemm. With the bias added afterwards, `(x Wᵀ) + b` is rounded
/// exactly as [`forward`]'s `b + x Wᵀ` whenever gemm does not split the inner dimension (up to
/// 512 at least, every DiffMAE-tiny layer).
fn product<T: Real>(op: &Linear, x: &[T], w: &[T]) -> Vec<T> {
    let (rows, d_in, d_out) = (op.rows, op.d_in, op.d_out);
    cpu::matmul_new(
        x,
        Mat::rows(0, rows, d_in, d_in),
        w,
        Mat::rows(0, d_out, d_in, d_in).t(),
        T::one(),
    )
}

cpu::multiversion! {
    /// `acc += sum of the rows of dy` (rows of `d` elements).
    fn column_sums<T: Real>(dy: &[T], d: usize, acc: &mut [T]) {
        for r in dy.chunks_exact(d) {
            for j in 0..d {
                acc[j] += r[j];
            }
        }
    }
}

/// Backward: `dx = dy W`, `dW = dyᵀ x`, `db = Σ_rows dy`, each only where `want` asks for it (an
/// input that is a constant or a frozen weight gets none: the patch embeddings' `dx` is a product
/// of its own).
fn backward<T: Real>(
    op: &Linear,
    x: &[T],
    w: &[T],
    dy: &[T],
    want: [bool; 3],
) -> [Option<Vec<T>>; 3] {
    let (rows, d_in, d_out) = (op.rows, op.d_in, op.d_out);
    let dym = Mat::rows(0, rows, d_out, d_out);
    let xm = Mat::rows(0, rows, d_in, d_in);
    let dx =
        want[0].then(|| cpu::matmul_new(dy, dym, w, Mat::rows(0, d_out, d_in, d_in), T::one()));
    let dw = want[1].then(|| cpu::matmul_new(dy, dym.t(), x, xm, T::one()));
    let db = want[2].then(|| {
        dy.par_chunks(cpu::rows_per_task(d_out) * d_out)
            .fold(
                || vec![T::zero(); d_out],
                |mut acc, c| {
                    column_sums(c, d_out, &mut acc);
                    acc
                },
            )
            .reduce(
                || vec![T::zero(); d_out],
                |mut a, b| {
                    cpu::axpy(T::one(), &b, &mut a);
                    a
                },
            )
    });
    [dx, dw, db]
}

impl CustomOp3 for Linear {
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
            op: &Linear,
            x: (&CpuStorage, &Layout),
            w: (&CpuStorage, &Layout),
            b: (&CpuStorage, &Layout),
        ) -> candle_core::Result<CpuStorage> {
            let x = cpu::slice::<T>(x.0, x.1, OP)?;
            let w = cpu::slice::<T>(w.0, w.1, OP)?;
            let b = cpu::slice::<T>(b.0, b.1, OP)?;
            Ok(T::to_cpu_storage_owned(match op.act {
                None => forward(op, x, w, b),
                Some(kind) => {
                    // The bias is added in the activation's pass, not written into the product's
                    // rows first (one pass over the widest output of a block fewer).
                    let h = product(op, x, w);
                    let (y, d) = gelu::forward_bias_new(kind, &h, b, op.save_act_grad);
                    if let Some(d) = d {
                        let mut saved = op.act_grad.lock().unwrap_or_else(|e| e.into_inner());
                        *saved = Some(T::to_cpu_storage_owned(d));
                    }
                    y
                }
            }))
        }
        let y = cpu::dispatch_float!(OP, xs, run(self, (xs, xl), (ws, wl), (bs, bl)))?;
        Ok((y, self.out_shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = [x.track_op(), w.track_op(), b.track_op()];
        let dy = dy.contiguous()?;
        let saved = self.act_grad.lock().unwrap_or_else(|e| e.into_inner());
        if self.act.is_some() && saved.is_none() {
            candle_core::bail!("{OP}: internal error: no saved activation gradient");
        }
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let [dx, dw, db] = match (&*xs, &*ws, &*gs) {
            (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    op: &Linear,
                    x: (&CpuStorage, &Layout),
                    w: (&CpuStorage, &Layout),
                    g: (&CpuStorage, &Layout),
                    act_grad: Option<&CpuStorage>,
                    want: [bool; 3],
                ) -> candle_core::Result<[Option<Tensor>; 3]> {
                    let xv = cpu::slice::<T>(x.0, x.1, OP)?;
                    let wv = cpu::slice::<T>(w.0, w.1, OP)?;
                    let gv = cpu::slice::<T>(g.0, g.1, OP)?;
                    let [dx, dw, db] = match act_grad {
                        // dy · gelu'(x Wᵀ + b), then the linear's own backward.
                        Some(d) => backward(
                            op,
                            xv,
                            wv,
                            &cpu::mul_new(T::cpu_storage_as_slice(d)?, gv),
                            want,
                        ),
                        None => backward(op, xv, wv, gv, want),
                    };
                    Ok([
                        dx.map(|v| cpu::tensor(v, x.1.shape())),
                        dw.map(|v| cpu::tensor(v, w.1.shape())),
                        db.map(|v| cpu::tensor(v, op.d_out)),
                    ])
                }
                let act_grad = saved.as_ref();
                cpu::dispatch_float!(
                    OP,
                    xs,
                    run(self, (xs, xl), (ws, wl), (gs, gl), act_grad, want)
                )?
            }
            _ => candle_core::bail!("{OP}: the fused op runs on the CPU only"),
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn gradients_match_finite_differences() {
        let f = |t: &[Tensor]| linear(&t[0], &t[1], Some(&t[2])).map_err(Into::into);
        assert_grads(
            f,
            &[randn(&[2, 3, 5], 1), randn(&[4, 5], 2), randn(&[4], 3)],
        );
        let g = |t: &[Tensor]| linear(&t[0], &t[1], None).map_err(Into::into);
        assert_grads(g, &[randn(&[7, 6], 4), randn(&[3, 6], 5)]);
        // A strided input (copied once) and a transposed weight view.
        let h = |t: &[Tensor]| linear(&t[0].t()?, &t[1].t()?, Some(&t[2])).map_err(Into::into);
        assert_grads(h, &[randn(&[5, 6], 6), randn(&[5, 3], 7), randn(&[3], 8)]);
    }

    #[test]
    fn fused_gelu_gradients_match_finite_differences_and_the_composition() {
        for kind in [Gelu::Erf, Gelu::Tanh] {
            let f = move |t: &[Tensor]| {
                linear_gelu(&t[0], &t[1], Some(&t[2]), kind).map_err(Into::into)
            };
            assert_grads(
                f,
                &[randn(&[2, 3, 5], 1), randn(&[4, 5], 2), randn(&[4], 3)],
            );
            let g = move |t: &[Tensor]| linear_gelu(&t[0], &t[1], None, kind).map_err(Into::into);
            assert_grads(g, &[randn(&[7, 6], 4), randn(&[3, 6], 5)]);
            assert_matches_reference(
                move |t| linear_gelu(&t[0], &t[1], Some(&t[2]), kind).map_err(Into::into),
                move |t| {
                    let y = linear(&t[0], &t[1], Some(&t[2]))?;
                    Ok(crate::gelu(&y, kind)?)
                },
                &[
                    randn(&[16, 37, 128], 9),
                    randn(&[512, 128], 10),
                    randn(&[512], 11),
                ],
                1e-4,
            );
        }
    }

    #[test]
    fn matches_candle_matmul() {
        // Large enough for gemm to split the products over threads.
        assert_matches_reference(
            |t| linear(&t[0], &t[1], Some(&t[2])).map_err(Into::into),
            |t| {
                let (n, l, d) = t[0].dims3()?;
                t[0].reshape((n * l, d))?
                    .matmul(&t[1].t()?)?
                    .broadcast_add(&t[2])?
                    .reshape((n, l, t[1].dim(0)?))
            },
            &[
                randn(&[16, 37, 128], 9),
                randn(&[384, 128], 10),
                randn(&[384], 11),
            ],
            1e-3,
        );
    }

    /// Inference mode gives the same values (detached), and an input that tracks no gradient
    /// gets none, while the others still do.
    #[test]
    fn inference_mode_and_constant_inputs() {
        let x = randn(&[3, 7, 5], 1)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let w =
            candle_core::Var::from_tensor(&randn(&[6, 5], 2).to_dtype(x.dtype()).unwrap()).unwrap();
        let b =
            candle_core::Var::from_tensor(&randn(&[6], 3).to_dtype(x.dtype()).unwrap()).unwrap();
        for kind in [None, Some(Gelu::Erf), Some(Gelu::Tanh)] {
            let f = || linear_act(&x, &w, Some(&b), kind).unwrap();
            let (y, y_inf) = (f(), crate::no_grad(f));
            assert!(y.track_op() && !y_inf.track_op());
            assert_eq!(
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y_inf.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&x).is_none(), "a constant input got a gradient");
            assert!(grads.get(w.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let x = randn(&[2, 5], 1);
        assert!(linear(&x, &randn(&[3, 4], 2), None).is_err());
        assert!(linear(&x, &randn(&[3, 5], 2), Some(&randn(&[4], 3))).is_err());
    }
}
