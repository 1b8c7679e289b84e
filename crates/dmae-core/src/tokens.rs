//! Per-sample token selection: `gather_tokens` picks the rows a mask keeps, `scatter_tokens` writes rows
//! back into place. Both with backward, which is the other one (gather's is a scatter-add).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Real};
use crate::error::{check_float, check_same_dtype, shape_mismatch, Error, Result};

const GATHER: &str = "gather_tokens";
const SCATTER: &str = "scatter_tokens";

/// `out[n, k, :] = x[n, idx[n, k], :]`: selects K tokens of each sample, e.g. the visible patches.
///
/// `x`: (N, L, D) float; `idx`: (N, K) u32, each entry `< L` (checked on the CPU; on CUDA an
/// out-of-range index reads zeros). Differentiable in `x`; repeated indices accumulate gradient.
pub fn gather_tokens(x: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (n, _, _) = check_tokens(GATHER, "x", x)?;
    check_index(GATHER, idx, n, x.shape())?;
    Ok(crate::no_grad::finish(
        x.contiguous()?.apply_op2(&idx.contiguous()?, Gather)?,
    ))
}

/// `out = base` with `out[n, idx[n, k], :] = src[n, k, :]`: puts K tokens of each sample back into a
/// sequence of L, e.g. predicted masked patches into the full image.
///
/// `base`: (N, L, D), `src`: (N, K, D), `idx`: (N, K) u32 with distinct entries `< L` per sample
/// (checked on the CPU). Differentiable in `base` (the overwritten rows get zero gradient) and `src`.
pub fn scatter_tokens(base: &Tensor, src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (n, _, d) = check_tokens(SCATTER, "base", base)?;
    let k = check_index(SCATTER, idx, n, base.shape())?;
    let (sn, sk, sd) = check_tokens(SCATTER, "src", src)?;
    if (sn, sk, sd) != (n, k, d) {
        return Err(shape_mismatch(
            SCATTER,
            "src must be (N, K, D) for base (N, L, D) and idx (N, K)",
            src.shape(),
            &Shape::from((n, k, d)),
        ));
    }
    check_same_dtype(SCATTER, "src", src.dtype(), base.dtype())?;
    Ok(crate::no_grad::finish(base.contiguous()?.apply_op3(
        &src.contiguous()?,
        &idx.contiguous()?,
        Scatter,
    )?))
}

fn check_tokens(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    check_float(op, name, t.dtype(), t.device())?;
    match t.dims() {
        &[n, l, d] => Ok((n, l, d)),
        _ => Err(Error::InvalidArgument {
            op,
            msg: format!("{name} must be (N, L, D), got shape {:?}", t.shape()),
        }),
    }
}

fn check_index(op: &'static str, idx: &Tensor, n: usize, x: &Shape) -> Result<usize> {
    if idx.dtype() != DType::U32 {
        return Err(Error::DType {
            op,
            what: "idx".into(),
            got: idx.dtype(),
            expected: "u32".into(),
        });
    }
    match idx.dims() {
        &[m, k] if m == n => Ok(k),
        _ => Err(shape_mismatch(
            op,
            "x (N, L, D) vs idx (N, K)",
            x,
            idx.shape(),
        )),
    }
}

fn index_error(op: &str, n: usize, k: usize, i: u32, l: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: idx[{n}, {k}] = {i} is out of range for L = {l}"
    ))
}

/// CPU gather kernel, shared by the forward of `gather_tokens` and the backward of `scatter_tokens`.
fn gather_cpu<T: Real>(
    x: &[T],
    idx: &[u32],
    (n, l, d): (usize, usize, usize),
) -> candle_core::Result<Vec<T>> {
    let k = idx.len() / n.max(1);
    let mut out = vec![T::zero(); n * k * d];
    out.par_chunks_mut((k * d).max(1))
        .enumerate()
        .try_for_each(|(b, out)| {
            for (j, &i) in idx[b * k..(b + 1) * k].iter().enumerate() {
                if i as usize >= l {
                    return Err(index_error(GATHER, b, j, i, l));
                }
                out[j * d..(j + 1) * d].copy_from_slice(&x[(b * l + i as usize) * d..][..d]);
            }
            Ok(())
        })?;
    Ok(out)
}

struct Gather;

impl CustomOp2 for Gather {
    fn name(&self) -> &'static str {
        GATHER
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        is: &CpuStorage,
        il: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            xs: &CpuStorage,
            xl: &Layout,
            is: &CpuStorage,
            il: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let x = cpu::slice::<T>(xs, xl, GATHER)?;
            let idx = cpu::slice::<u32>(is, il, GATHER)?;
            let (n, l, d) = xl.shape().dims3()?;
            Ok(T::to_cpu_storage_owned(gather_cpu(x, idx, (n, l, d))?))
        }
        let (n, _, d) = xl.shape().dims3()?;
        let k = il.dims()[1];
        let out = cpu::dispatch_float!(GATHER, xs, run(xs, xl, is, il))?;
        Ok((out, Shape::from((n, k, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, l, d) = xl.shape().dims3()?;
        let k = il.dims()[1];
        let out =
            crate::cuda::gather_tokens(xs, xl.start_offset(), is, il.start_offset(), n, l, k, d)?;
        Ok((out, Shape::from((n, k, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        idx: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (n, l, d) = x.dims3()?;
        let (is, il) = idx.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let dx = match (&*is, &*gs) {
            (Storage::Cpu(is), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    is: &CpuStorage,
                    il: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                    (n, l, d): (usize, usize, usize),
                ) -> candle_core::Result<Tensor> {
                    let idx = cpu::slice::<u32>(is, il, GATHER)?;
                    let g = cpu::slice::<T>(gs, gl, GATHER)?;
                    let k = idx.len() / n.max(1);
                    let mut dx = vec![T::zero(); n * l * d];
                    dx.par_chunks_mut((l * d).max(1))
                        .enumerate()
                        .for_each(|(b, dx)| {
                            for (j, &i) in idx[b * k..(b + 1) * k].iter().enumerate() {
                                // Indices were range-checked by the forward pass.
                                let row = &mut dx[i as usize * d..][..d];
                                cpu::axpy(T::one(), &g[(b * k + j) * d..][..d], row);
                            }
                        });
                    Ok(cpu::tensor(dx, (n, l, d)))
                }
                cpu::dispatch_float!(GATHER, gs, run(is, il, gs, gl, (n, l, d)))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(is), Storage::Cuda(gs)) => {
                let k = il.dims()[1];
                let dx = crate::cuda::scatter_add_tokens(
                    gs,
                    gl.start_offset(),
                    is,
                    il.start_offset(),
                    n,
                    l,
                    k,
                    d,
                )?;
                crate::cuda::tensor(dx, (n, l, d))
            }
            _ => candle_core::bail!("{GATHER}: backward on an unsupported device mix"),
        };
        Ok((Some(dx), None))
    }
}

struct Scatter;

impl CustomOp3 for Scatter {
    fn name(&self) -> &'static str {
        SCATTER
    }

    fn cpu_fwd(
        &self,
        bs: &CpuStorage,
        bl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        is: &CpuStorage,
        il: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            bs: &CpuStorage,
            bl: &Layout,
            ss: &CpuStorage,
            sl: &Layout,
            is: &CpuStorage,
            il: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let (_, l, d) = bl.shape().dims3()?;
            let k = il.dims()[1];
            let src = cpu::slice::<T>(ss, sl, SCATTER)?;
            let idx = cpu::slice::<u32>(is, il, SCATTER)?;
            let mut out = cpu::slice::<T>(bs, bl, SCATTER)?.to_vec();
            out.par_chunks_mut((l * d).max(1))
                .enumerate()
                .try_for_each(|(b, out)| {
                    let mut seen = vec![false; l];
                    for (j, &i) in idx[b * k..(b + 1) * k].iter().enumerate() {
                        let i = i as usize;
                        if i >= l {
                            return Err(index_error(SCATTER, b, j, i as u32, l));
                        }
                        if std::mem::replace(&mut seen[i], true) {
                            candle_core::bail!("{SCATTER}: idx[{b}, ..] repeats token {i}");
                        }
                        out[i * d..(i + 1) * d].copy_from_slice(&src[(b * k + j) * d..][..d]);
                    }
                    Ok(())
                })?;
            Ok(T::to_cpu_storage_owned(out))
        }
        let out = cpu::dispatch_float!(SCATTER, bs, run(bs, bl, ss, sl, is, il))?;
        Ok((out, bl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, l, d) = bl.shape().dims3()?;
        let k = il.dims()[1];
        let out = crate::cuda::scatter_tokens(
            bs,
            bl.start_offset(),
            ss,
            sl.start_offset(),
            is,
            il.start_offset(),
            n,
            l,
            k,
            d,
        )?;
        Ok((out, bl.shape().clone()))
    }

    fn bwd(
        &self,
        base: &Tensor,
        _src: &Tensor,
        idx: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (n, l, d) = base.dims3()?;
        let (is, il) = idx.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (dbase, dsrc) = match (&*is, &*gs) {
            (Storage::Cpu(is), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    is: &CpuStorage,
                    il: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                    (n, l, d): (usize, usize, usize),
                ) -> candle_core::Result<(Tensor, Tensor)> {
                    let idx = cpu::slice::<u32>(is, il, SCATTER)?;
                    let g = cpu::slice::<T>(gs, gl, SCATTER)?;
                    let k = idx.len() / n.max(1);
                    let dsrc = gather_cpu(g, idx, (n, l, d))?;
                    let mut dbase = g.to_vec();
                    dbase
                        .par_chunks_mut((l * d).max(1))
                        .enumerate()
                        .for_each(|(b, db)| {
                            for &i in &idx[b * k..(b + 1) * k] {
                                db[i as usize * d..][..d].fill(T::zero());
                            }
                        });
                    Ok((cpu::tensor(dbase, (n, l, d)), cpu::tensor(dsrc, (n, k, d))))
                }
                cpu::dispatch_float!(SCATTER, gs, run(is, il, gs, gl, (n, l, d)))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(is), Storage::Cuda(gs)) => {
                let k = il.dims()[1];
                let (go, io) = (gl.start_offset(), il.start_offset());
                let dbase = crate::cuda::zero_rows(gs, go, is, io, n, l, k, d)?;
                let dsrc = crate::cuda::gather_tokens(gs, go, is, io, n, l, k, d)?;
                (
                    crate::cuda::tensor(dbase, (n, l, d)),
                    crate::cuda::tensor(dsrc, (n, k, d)),
                )
            }
            _ => candle_core::bail!("{SCATTER}: backward on an unsupported device mix"),
        };
        Ok((Some(dbase), Some(dsrc), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use candle_core::Device;

    fn idx(v: &[u32], n: usize) -> Tensor {
        Tensor::from_slice(v, (n, v.len() / n), &Device::Cpu).unwrap()
    }

    #[test]
    fn gather_gradients_including_repeated_indices() {
        let i = idx(&[4, 0, 2, 1, 1, 3], 2);
        let f = |t: &[Tensor]| gather_tokens(&t[0], &t[1]).map_err(Into::into);
        assert_grads(f, &[randn(&[2, 5, 3], 1), i]);
        // Strided input: (N, D, L) transposed.
        let i = idx(&[2, 0, 1, 1], 2);
        let g = |t: &[Tensor]| gather_tokens(&t[0].transpose(1, 2)?, &t[1]).map_err(Into::into);
        assert_grads(g, &[randn(&[2, 3, 4], 2), i]);
    }

    #[test]
    fn scatter_gradients() {
        let i = idx(&[3, 0, 1, 4], 2);
        let f = |t: &[Tensor]| scatter_tokens(&t[0], &t[1], &t[2]).map_err(Into::into);
        assert_grads(f, &[randn(&[2, 5, 3], 3), randn(&[2, 2, 3], 4), i]);
    }

    #[test]
    fn scatter_matches_candle() {
        let i = idx(&[6, 1, 3, 0, 5, 2], 2);
        assert_matches_reference(
            |t| scatter_tokens(&t[0], &t[1], &t[2]).map_err(Into::into),
            |t| crate::reference::scatter_tokens(&t[0], &t[1], &t[2]),
            &[randn(&[2, 7, 16], 7), randn(&[2, 3, 16], 8), i],
            1e-6,
        );
    }

    #[test]
    fn gather_matches_candle_and_scatter_inverts_it() {
        let i = idx(&[6, 1, 3, 0, 5, 2, 2, 4], 2);
        assert_matches_reference(
            |t| gather_tokens(&t[0], &t[1]).map_err(Into::into),
            |t| crate::reference::gather_tokens(&t[0], &t[1]),
            &[randn(&[2, 7, 16], 5), i],
            1e-6,
        );
        // Splitting a sequence by a permutation and scattering both parts back restores it.
        let x = randn(&[1, 6, 4], 6);
        let (keep, drop) = (idx(&[5, 1, 3], 1), idx(&[0, 2, 4], 1));
        let zeros = x.zeros_like().unwrap();
        let y = scatter_tokens(&zeros, &gather_tokens(&x, &keep).unwrap(), &keep).unwrap();
        let y = scatter_tokens(&y, &gather_tokens(&x, &drop).unwrap(), &drop).unwrap();
        assert_eq!(max_abs_diff(&x, &y), 0.0);
    }

    #[test]
    fn bad_indices_are_errors_not_panics() {
        let x = randn(&[2, 4, 3], 1);
        let e = gather_tokens(&x, &idx(&[0, 4], 2)).unwrap_err().to_string();
        assert!(e.contains("idx[1, 0] = 4") && e.contains("L = 4"), "{e}");
        let e = scatter_tokens(&x, &randn(&[2, 2, 3], 2), &idx(&[0, 0, 1, 2], 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("repeats token 0"), "{e}");
        let i64s = Tensor::new(&[[0i64]], &Device::Cpu).unwrap();
        assert!(matches!(
            gather_tokens(&x, &i64s),
            Err(crate::Error::DType { .. })
        ));
        assert!(matches!(
            gather_tokens(&x, &idx(&[0, 1, 2], 3)),
            Err(crate::Error::ShapeMismatch { .. })
        ));
        let e = scatter_tokens(&x, &randn(&[2, 3, 3], 2), &idx(&[0, 1], 2)).unwrap_err();
        assert!(
            matches!(
                e,
                crate::Error::ShapeMismatch {
                    op: "scatter_tokens",
                    ..
                }
            ),
            "{e}"
        );
    }
}
