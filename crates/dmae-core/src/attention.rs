//! Scaled dot-product attention, `softmax(q k^T * scale + mask) v`, fused with its backward.
//!
//! Layout is token-major, `(N, L, H, D)` (batch, tokens, heads, head dim), the layout a qkv projection
//! produces after a reshape, so q, k and v may be strided views of one projection with no copy. Self
//! attention has `Lq == Lk`; DiffMAE's cross-attention decoders attend from the masked tokens to the
//! encoder tokens, `Lq != Lk`.
//!
//! The forward keeps only the output; the backward recomputes the attention probabilities from q and
//! k (as FlashAttention does), so no `(N, H, Lq, Lk)` tensor lives between the passes.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Mat, Real};
use crate::error::{check_float, check_same_dtype, invalid, shape_mismatch, Result};

const OP: &str = "attention";

/// `softmax(q k^T * scale + mask) v` per batch element and head, differentiable in q, k and v.
///
/// - `q`: (N, Lq, H, D), `k`: (N, Lk, H, D), `v`: (N, Lk, H, Dv), any strides with a unit last stride
///   (others are copied once);
/// - `mask`: optional additive mask broadcastable to (N, H, Lq, Lk) (e.g. (Lq, Lk) or (N, 1, 1, Lk)),
///   `-inf` to forbid a pair; it is a constant and receives no gradient. A query row whose keys are
///   all forbidden outputs zeros;
/// - `scale`: usually `1 / sqrt(D)`.
///
/// Returns (N, Lq, H, Dv), contiguous, so `reshape((N, Lq, H * Dv))` is free.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let dims = AttnDims::check(q, k, v)?;
    check_float(OP, "q", q.dtype(), q.device())?;
    check_same_dtype(OP, "k", k.dtype(), q.dtype())?;
    check_same_dtype(OP, "v", v.dtype(), q.dtype())?;
    if !scale.is_finite() {
        return Err(invalid(OP, format!("scale must be finite, got {scale}")));
    }
    let mask = match mask {
        None => None,
        Some(m) => {
            check_same_dtype(OP, "mask", m.dtype(), q.dtype())?;
            let full = (dims.n, dims.h, dims.lq, dims.lk);
            let b = m.broadcast_as(full).map_err(|_| {
                shape_mismatch(
                    OP,
                    "mask must broadcast to (N, H, Lq, Lk)",
                    m.shape(),
                    &Shape::from(full),
                )
            })?;
            Some(b.detach())
        }
    };
    let (q, k, v) = (unit_last(q)?, unit_last(k)?, unit_last(v)?);
    let saved_p = match q.dtype() {
        candle_core::DType::F64 => SavedP::new::<f64>(&dims, &[&q, &k, &v]),
        _ => SavedP::new::<f32>(&dims, &[&q, &k, &v]),
    };
    let op = Attention {
        dims,
        scale,
        mask,
        saved_p,
    };
    Ok(crate::no_grad::finish(q.apply_op3(&k, &v, op)?))
}

fn unit_last(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.stride()[3] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttnDims {
    pub n: usize,
    pub h: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

impl AttnDims {
    fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Self> {
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            if t.rank() != 4 {
                return Err(invalid(
                    OP,
                    format!("{name} must be (N, L, H, D), got shape {:?}", t.shape()),
                ));
            }
        }
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        if qd[0] != kd[0] || qd[2] != kd[2] || qd[3] != kd[3] {
            return Err(shape_mismatch(
                OP,
                "q (N, Lq, H, D) vs k (N, Lk, H, D)",
                q.shape(),
                k.shape(),
            ));
        }
        if vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] {
            return Err(shape_mismatch(
                OP,
                "k (N, Lk, H, D) vs v (N, Lk, H, Dv)",
                k.shape(),
                v.shape(),
            ));
        }
        if qd.iter().chain(kd).chain(vd).any(|&x| x == 0) {
            return Err(invalid(
                OP,
                "q, k and v must not have a zero-sized dimension",
            ));
        }
        Ok(Self {
            n: qd[0],
            lq: qd[1],
            h: qd[2],
            d: qd[3],
            lk: kd[1],
            dv: vd[3],
        })
    }
}

/// A rank-4 view: element `[a, b, c, e]` lives at `offset + a*stride[0] + b*stride[1] + c*stride[2] + e*stride[3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Strided4 {
    pub offset: usize,
    pub stride: [usize; 4],
}

impl Strided4 {
    pub(crate) fn of(l: &Layout) -> Self {
        let s = l.stride();
        Self {
            offset: l.start_offset(),
            stride: [s[0], s[1], s[2], s[3]],
        }
    }

    /// Start of the innermost row `[a, b, c, ..]`.
    #[inline(always)]
    pub(crate) fn at(&self, a: usize, b: usize, c: usize) -> usize {
        self.offset + a * self.stride[0] + b * self.stride[1] + c * self.stride[2]
    }
}

struct Attention {
    dims: AttnDims,
    scale: f64,
    /// Broadcast to (N, H, Lq, Lk); a stride-0 view, never materialised.
    mask: Option<Tensor>,
    /// The probabilities, kept by the forward for the backward (see [`KEEP_P_BYTES`]).
    saved_p: SavedP,
}

/// Probabilities `(N, H, Lq, Lk)` kept between the passes, when `keep` (a backward will follow
/// and they are small).
struct SavedP {
    keep: bool,
    p: Mutex<Option<CpuStorage>>,
}

impl SavedP {
    fn new<T>(dims: &AttnDims, inputs: &[&Tensor]) -> Self {
        Self {
            keep: keeps_p::<T>(dims) && crate::no_grad::needs_grad(inputs),
            p: Mutex::new(None),
        }
    }

    fn store<T: Real>(&self, p: Option<Vec<T>>) {
        if let Some(p) = p {
            *self.p.lock().unwrap_or_else(|e| e.into_inner()) = Some(T::to_cpu_storage_owned(p));
        }
    }

    /// Runs `f` with the kept probabilities, if any.
    fn with<T: Real, R>(
        &self,
        f: impl FnOnce(Option<&[T]>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        let guard = self.p.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(s) => f(Some(T::cpu_storage_as_slice(s)?)),
            None => f(None),
        }
    }
}

/// The gradients of q, k and v, `(N, Lq, H, D)`, `(N, Lk, H, D)` and `(N, Lk, H, Dv)`, each in a
/// new buffer written once.
fn backward_separate<T: Real>(
    x: &Views<T>,
    dout: &[T],
    dims: AttnDims,
    scale: f64,
    saved: Option<&[T]>,
) -> [Vec<T>; 3] {
    let AttnDims {
        n,
        h,
        lq,
        lk,
        d,
        dv,
    } = dims;
    let lens = [n * lq * h * d, n * lk * h * d, n * lk * h * dv];
    let widths = [h * d, h * d, h * dv];
    let mut bufs = lens.map(Vec::with_capacity);
    let outs: [GradOut<T>; 3] = std::array::from_fn(|i| GradOut {
        buf: cpu::OutBuf::new(&mut bufs[i], lens[i]),
        batch: lens[i] / n,
        offset: 0,
        row_stride: widths[i],
    });
    backward(x, dout, dims, scale, saved, outs);
    for (b, len) in bufs.iter_mut().zip(lens) {
        // SAFETY: backward wrote every element of each gradient (all heads of every sample).
        unsafe { b.set_len(len) };
    }
    bufs
}

/// The CPU inputs of one call, with their views.
struct Views<'a, T> {
    q: (&'a [T], Strided4),
    k: (&'a [T], Strided4),
    v: (&'a [T], Strided4),
    mask: Option<(&'a [T], Strided4)>,
}

impl<T: Real> Views<'_, T> {
    /// Query rows of batch `n`, head `h`, as an (Lq, D) matrix (likewise `key`, `value`).
    fn query(&self, dims: &AttnDims, n: usize, h: usize) -> Mat {
        let s = self.q.1;
        Mat::rows(s.at(n, 0, h), dims.lq, dims.d, s.stride[1])
    }

    fn key(&self, dims: &AttnDims, n: usize, h: usize) -> Mat {
        let s = self.k.1;
        Mat::rows(s.at(n, 0, h), dims.lk, dims.d, s.stride[1])
    }

    fn value(&self, dims: &AttnDims, n: usize, h: usize) -> Mat {
        let s = self.v.1;
        Mat::rows(s.at(n, 0, h), dims.lk, dims.dv, s.stride[1])
    }

    /// Attention probabilities of batch `n`, head `h` into `p` (Lq x Lk, row-major):
    /// `softmax(q k^T * scale + mask)`.
    fn probs(&self, dims: &AttnDims, scale: T, n: usize, h: usize, p: &mut [T]) {
        let (lq, lk) = (dims.lq, dims.lk);
        let s = Mat::rows(0, lq, lk, lk);
        cpu::matmul(
            p,
            s,
            false,
            self.q.0,
            self.query(dims, n, h),
            self.k.0,
            self.key(dims, n, h).t(),
            scale,
        );
        mask_softmax(p, self.mask, n, h, lq, lk);
    }
}

cpu::multiversion! {
    /// Adds the mask rows of batch `n`, head `h` to the scores, then softmax per row. Rows are
    /// short (Lk = 13-50 at DiffMAE-tiny sizes), so `exp` runs once over the whole `(Lq, Lk)`
    /// block: per row, a vector loop plus a scalar tail of up to seven `exp`s was ~40% scalar.
    fn mask_softmax<T: Real>(p: &mut [T], mask: Option<(&[T], Strided4)>, n: usize, h: usize, lq: usize, lk: usize) {
        let p = &mut p[..lq * lk];
        for i in 0..lq {
            let row = &mut p[i * lk..(i + 1) * lk];
            if let Some((m, mv)) = mask {
                let base = mv.offset + n * mv.stride[0] + h * mv.stride[1] + i * mv.stride[2];
                for j in 0..lk {
                    row[j] += m[base + j * mv.stride[3]];
                }
            }
            let max = cpu::max(row);
            if max == T::neg_infinity() {
                // Fully masked: exp gives zeros, and the zero sum below keeps them.
                row.fill(T::neg_infinity());
            } else {
                for j in 0..lk {
                    row[j] -= max;
                }
            }
        }
        for j in 0..p.len() {
            p[j] = p[j].exp_fast();
        }
        for i in 0..lq {
            let row = &mut p[i * lk..(i + 1) * lk];
            let sum = cpu::sum(row);
            if sum > T::zero() {
                let inv = sum.recip();
                for j in 0..lk {
                    row[j] *= inv;
                }
            }
        }
    }
}

cpu::multiversion! {
    /// `dS = P * (dP - rowsum(P * dP)) * scale`, in place of `dp`.
    fn softmax_grad<T: Real>(p: &[T], dp: &mut [T], lq: usize, lk: usize, scale: T) {
        for i in 0..lq {
            let (pr, dr) = (&p[i * lk..(i + 1) * lk], &mut dp[i * lk..(i + 1) * lk]);
            let delta = cpu::dot(pr, dr);
            for j in 0..lk {
                dr[j] = pr[j] * (dr[j] - delta) * scale;
            }
        }
    }
}

/// The probabilities `P` of a call are kept from the forward for the backward when they take at
/// most this many bytes (per call, per data-parallel shard); larger ones are recomputed from q and
/// k, as FlashAttention does, so that memory stays linear in the sequence length. At DiffMAE-tiny
/// sizes `P` is 0.1-6 MB per block: keeping it saves the backward a product and a softmax per head.
const KEEP_P_BYTES: usize = 8 << 20;

/// Whether a call of these sizes keeps its probabilities (see [`KEEP_P_BYTES`]).
fn keeps_p<T>(dims: &AttnDims) -> bool {
    dims.n * dims.h * dims.lq * dims.lk * std::mem::size_of::<T>() <= KEEP_P_BYTES
}

/// The output `(N, Lq, H, Dv)`, and with `keep` the probabilities `(N, H, Lq, Lk)`.
fn forward<T: Real>(
    x: &Views<T>,
    dims: AttnDims,
    scale: f64,
    keep: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let AttnDims {
        n, h, lq, lk, dv, ..
    } = dims;
    let scale = cpu::c::<T>(scale);
    let len = n * lq * h * dv;
    let mut out = Vec::with_capacity(len);
    let dst = cpu::OutBuf::new(&mut out, len);
    let mut kept = keep.then(|| vec![T::zero(); n * h * lq * lk]);
    let pm = Mat::rows(0, lq, lk, lk);
    let one = |b: usize, ps: &mut [T]| {
        // With `keep`, `ps` holds all heads of sample b; else one head, reused.
        for hh in 0..h {
            let p = if ps.len() > lq * lk {
                &mut ps[hh * lq * lk..(hh + 1) * lq * lk]
            } else {
                &mut *ps
            };
            x.probs(&dims, scale, b, hh, p);
            let o = Mat::rows(b * lq * h * dv + hh * dv, lq, dv, h * dv);
            // SAFETY: sample b's rows, head hh's columns: written by this task only.
            unsafe { dst.matmul(o, p, pm, x.v.0, x.value(&dims, b, hh), T::one()) };
        }
    };
    match kept.as_mut() {
        Some(kept) => kept
            .par_chunks_mut(h * lq * lk)
            .enumerate()
            .for_each(|(b, ps)| one(b, ps)),
        None => (0..n)
            .into_par_iter()
            .for_each(|b| one(b, &mut vec![T::zero(); lq * lk])),
    }
    // SAFETY: the heads of every sample cover all its (Lq, H·Dv) elements, each written above.
    unsafe { out.set_len(len) };
    (out, kept)
}

/// Where the backward writes one gradient: element `(b, row, head, col)` at
/// `b * batch + offset + row * row_stride + head * width + col`, in `buf`.
#[derive(Clone, Copy)]
struct GradOut<T> {
    buf: cpu::OutBuf<T>,
    batch: usize,
    offset: usize,
    row_stride: usize,
}

impl<T: Real> GradOut<T> {
    /// The `(rows, width)` block of sample `b`, head `hh`.
    fn block(&self, b: usize, hh: usize, rows: usize, width: usize) -> Mat {
        Mat::rows(
            b * self.batch + self.offset + hh * width,
            rows,
            width,
            self.row_stride,
        )
    }
}

/// With `P` the probabilities (`saved`, or recomputed), `dO` the output gradient and `dP = dO V^T`:
/// `dV = P^T dO`, `dS = P * (dP - rowsum(P * dP))`, `dQ = dS K * scale`, `dK = dS^T Q * scale`,
/// each written (every element, once) through its [`GradOut`].
fn backward<T: Real>(
    x: &Views<T>,
    dout: &[T],
    dims: AttnDims,
    scale: f64,
    saved: Option<&[T]>,
    [gq, gk, gv]: [GradOut<T>; 3],
) {
    let AttnDims {
        n,
        h,
        lq,
        lk,
        d,
        dv,
    } = dims;
    let sc = cpu::c::<T>(scale);
    (0..n).into_par_iter().for_each(|b| {
        let mut p_own = if saved.is_none() {
            vec![T::zero(); lq * lk]
        } else {
            Vec::new()
        };
        let mut ds = vec![T::zero(); lq * lk];
        let pm = Mat::rows(0, lq, lk, lk);
        for hh in 0..h {
            let p: &[T] = match saved {
                Some(all) => &all[(b * h + hh) * lq * lk..(b * h + hh + 1) * lq * lk],
                None => {
                    x.probs(&dims, sc, b, hh, &mut p_own);
                    &p_own
                }
            };
            let dom = Mat::rows((b * lq * h + hh) * dv, lq, dv, h * dv);
            // dP = dO V^T, then dS in place.
            cpu::matmul(
                &mut ds,
                pm,
                false,
                dout,
                dom,
                x.v.0,
                x.value(&dims, b, hh).t(),
                T::one(),
            );
            softmax_grad(p, &mut ds, lq, lk, sc);
            // SAFETY: sample b, head hh: blocks written by this task only (the three gradients'
            // blocks never overlap, also when they share one packed buffer).
            unsafe {
                gq.buf.matmul(
                    gq.block(b, hh, lq, d),
                    &ds,
                    pm,
                    x.k.0,
                    x.key(&dims, b, hh),
                    T::one(),
                );
                gk.buf.matmul(
                    gk.block(b, hh, lk, d),
                    &ds,
                    pm.t(),
                    x.q.0,
                    x.query(&dims, b, hh),
                    T::one(),
                );
                gv.buf
                    .matmul(gv.block(b, hh, lk, dv), p, pm.t(), dout, dom, T::one());
            }
        }
    });
}

impl Attention {
    fn mask_cpu<R>(
        &self,
        f: impl FnOnce(Option<(&CpuStorage, Strided4)>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        match &self.mask {
            None => f(None),
            Some(m) => {
                let (ms, ml) = m.storage_and_layout();
                match &*ms {
                    Storage::Cpu(ms) => f(Some((ms, Strided4::of(ml)))),
                    _ => candle_core::bail!("{OP}: the mask is not on the same device as q"),
                }
            }
        }
    }
}

fn views<'a, T: Real>(
    q: (&'a CpuStorage, &Layout),
    k: (&'a CpuStorage, &Layout),
    v: (&'a CpuStorage, &Layout),
    mask: Option<(&'a CpuStorage, Strided4)>,
) -> candle_core::Result<Views<'a, T>> {
    Ok(Views {
        q: (T::cpu_storage_as_slice(q.0)?, Strided4::of(q.1)),
        k: (T::cpu_storage_as_slice(k.0)?, Strided4::of(k.1)),
        v: (T::cpu_storage_as_slice(v.0)?, Strided4::of(v.1)),
        mask: match mask {
            None => None,
            Some((s, l)) => Some((T::cpu_storage_as_slice(s)?, l)),
        },
    })
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            op: &Attention,
            q: (&CpuStorage, &Layout),
            k: (&CpuStorage, &Layout),
            v: (&CpuStorage, &Layout),
        ) -> candle_core::Result<CpuStorage> {
            op.mask_cpu(|m| {
                let x = views::<T>(q, k, v, m)?;
                let (out, p) = forward(&x, op.dims, op.scale, op.saved_p.keep);
                op.saved_p.store(p);
                Ok(T::to_cpu_storage_owned(out))
            })
        }
        let out = cpu::dispatch_float!(OP, qs, run(self, (qs, ql), (ks, kl), (vs, vl)))?;
        let AttnDims { n, h, lq, dv, .. } = self.dims;
        Ok((out, Shape::from((n, lq, h, dv))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let guard = self.mask.as_ref().map(|m| m.storage_and_layout());
        let mask = match &guard {
            None => None,
            Some((ms, ml)) => match &**ms {
                Storage::Cuda(ms) => Some((ms, Strided4::of(ml))),
                _ => candle_core::bail!("{OP}: the mask is not on the same device as q"),
            },
        };
        let out = crate::cuda::attention_fwd(
            (qs, Strided4::of(ql)),
            (ks, Strided4::of(kl)),
            (vs, Strided4::of(vl)),
            mask,
            &self.dims,
            self.scale as f32,
        )?;
        let AttnDims { n, h, lq, dv, .. } = self.dims;
        Ok((out, Shape::from((n, lq, h, dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dout = dout.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = dout.storage_and_layout();
        let [dq, dk, dvv] = match (&*qs, &*ks, &*vs, &*gs) {
            (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    op: &Attention,
                    q: (&CpuStorage, &Layout),
                    k: (&CpuStorage, &Layout),
                    v: (&CpuStorage, &Layout),
                    g: (&CpuStorage, &Layout),
                ) -> candle_core::Result<[Tensor; 3]> {
                    let AttnDims {
                        n,
                        h,
                        lq,
                        lk,
                        d,
                        dv,
                        ..
                    } = op.dims;
                    op.mask_cpu(|m| {
                        let x = views::<T>(q, k, v, m)?;
                        let dout = cpu::slice::<T>(g.0, g.1, OP)?;
                        let [dq, dk, dvv] = op
                            .saved_p
                            .with(|p| Ok(backward_separate(&x, dout, op.dims, op.scale, p)))?;
                        Ok([
                            cpu::tensor(dq, (n, lq, h, d)),
                            cpu::tensor(dk, (n, lk, h, d)),
                            cpu::tensor(dvv, (n, lk, h, dv)),
                        ])
                    })
                }
                cpu::dispatch_float!(OP, qs, run(self, (qs, ql), (ks, kl), (vs, vl), (gs, gl)))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(qs), Storage::Cuda(ks), Storage::Cuda(vs), Storage::Cuda(gs)) => {
                let guard = self.mask.as_ref().map(|m| m.storage_and_layout());
                let mask = match &guard {
                    None => None,
                    Some((ms, ml)) => match &**ms {
                        Storage::Cuda(ms) => Some((ms, Strided4::of(ml))),
                        _ => candle_core::bail!("{OP}: the mask is not on the same device as q"),
                    },
                };
                let AttnDims {
                    n,
                    h,
                    lq,
                    lk,
                    d,
                    dv,
                } = self.dims;
                let [dq, dk, dvv] = crate::cuda::attention_bwd(
                    (qs, Strided4::of(ql)),
                    (ks, Strided4::of(kl)),
                    (vs, Strided4::of(vl)),
                    mask,
                    (gs, gl.start_offset()),
                    &self.dims,
                    self.scale as f32,
                )?;
                [
                    crate::cuda::tensor(dq, (n, lq, h, d)),
                    crate::cuda::tensor(dk, (n, lk, h, d)),
                    crate::cuda::tensor(dvv, (n, lk, h, dv)),
                ]
            }
            _ => candle_core::bail!("{OP}: backward on an unsupported device mix"),
        };
        Ok((Some(dq), Some(dk), Some(dvv)))
    }
}

/// Self-attention over a packed projection `qkv (N, L, 3·H·D)` (a fused qkv linear's output, laid
/// out `(N, L, 3, H, D)`: q, then k, then v), returning `(N, L, H·D)`; differentiable in `qkv`.
///
/// The same math as [`attention`] on the three views of `qkv`, but as one graph node with one
/// packed gradient: taking the views with `narrow` costs, in candle's backward, a zero-padded copy
/// of each slice's gradient to the full size plus the sums of the three.
pub fn attention_qkv(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    check_float(OP, "qkv", qkv.dtype(), qkv.device())?;
    let (n, l, width) = qkv.dims3().map_err(|_| {
        invalid(
            OP,
            format!("qkv must be (N, L, 3·H·D), got {:?}", qkv.shape()),
        )
    })?;
    if heads == 0 || width == 0 || width % (3 * heads) != 0 || n == 0 || l == 0 {
        return Err(invalid(
            OP,
            format!(
                "qkv {:?} does not split into 3 x {heads} heads",
                qkv.shape()
            ),
        ));
    }
    if !scale.is_finite() {
        return Err(invalid(OP, format!("scale must be finite, got {scale}")));
    }
    let d = width / (3 * heads);
    if !qkv.device().is_cpu() {
        let p = qkv.reshape((n, l, 3, heads, d))?;
        let part = |i| p.narrow(2, i, 1)?.squeeze(2);
        let o = attention(&part(0)?, &part(1)?, &part(2)?, None, scale)?;
        return Ok(o.reshape((n, l, heads * d))?);
    }
    let dims = AttnDims {
        n,
        h: heads,
        lq: l,
        lk: l,
        d,
        dv: d,
    };
    Ok(crate::no_grad::finish(qkv.contiguous()?.apply_op1(
        PackedSelf {
            dims,
            scale,
            saved_p: match qkv.dtype() {
                candle_core::DType::F64 => SavedP::new::<f64>(&dims, &[qkv]),
                _ => SavedP::new::<f32>(&dims, &[qkv]),
            },
        },
    )?))
}

struct PackedSelf {
    dims: AttnDims,
    scale: f64,
    saved_p: SavedP,
}

impl PackedSelf {
    /// The q, k and v views of a contiguous packed storage starting at `offset`.
    fn views<'a, T: Real>(&self, data: &'a [T], offset: usize) -> Views<'a, T> {
        let AttnDims { lq, h, d, .. } = self.dims;
        let row = 3 * h * d;
        let at = |part: usize| Strided4 {
            offset: offset + part * h * d,
            stride: [lq * row, row, d, 1],
        };
        Views {
            q: (data, at(0)),
            k: (data, at(1)),
            v: (data, at(2)),
            mask: None,
        }
    }
}

impl candle_core::CustomOp1 for PackedSelf {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            op: &PackedSelf,
            s: &CpuStorage,
            l: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            // Checks the layout covers the whole packed tensor.
            cpu::slice::<T>(s, l, OP)?;
            let data = T::cpu_storage_as_slice(s)?;
            let x = op.views(data, l.start_offset());
            let (out, p) = forward(&x, op.dims, op.scale, op.saved_p.keep);
            op.saved_p.store(p);
            Ok(T::to_cpu_storage_owned(out))
        }
        let AttnDims { n, h, lq, dv, .. } = self.dims;
        Ok((
            cpu::dispatch_float!(OP, s, run(self, s, l))?,
            Shape::from((n, lq, h * dv)),
        ))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dout = dout.contiguous()?;
        let (s, l) = qkv.storage_and_layout();
        let (gs, gl) = dout.storage_and_layout();
        let grad = match (&*s, &*gs) {
            (Storage::Cpu(s), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    op: &PackedSelf,
                    s: &CpuStorage,
                    l: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                ) -> candle_core::Result<Tensor> {
                    cpu::slice::<T>(s, l, OP)?;
                    let data = T::cpu_storage_as_slice(s)?;
                    let x = op.views(data, l.start_offset());
                    let dout = cpu::slice::<T>(gs, gl, OP)?;
                    // dq, dk and dv go straight into the packed (N, L, 3, H, D) gradient.
                    let AttnDims { n, lq, h, d, .. } = op.dims;
                    let len = n * lq * 3 * h * d;
                    let mut g = Vec::with_capacity(len);
                    let buf = cpu::OutBuf::new(&mut g, len);
                    let part = |i: usize| GradOut {
                        buf,
                        batch: lq * 3 * h * d,
                        offset: i * h * d,
                        row_stride: 3 * h * d,
                    };
                    op.saved_p.with(|p| {
                        backward(&x, dout, op.dims, op.scale, p, [part(0), part(1), part(2)]);
                        Ok(())
                    })?;
                    // SAFETY: the q, k and v thirds of every row, all heads, were written.
                    unsafe { g.set_len(len) };
                    Ok(cpu::tensor(g, l.shape()))
                }
                cpu::dispatch_float!(OP, s, run(self, s, l, gs, gl))?
            }
            _ => candle_core::bail!("{OP}: the packed op runs on the CPU only"),
        };
        Ok(Some(grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use candle_core::IndexOp;

    fn attn(t: &[Tensor], mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let d = t[0].dim(3)?;
        attention(&t[0], &t[1], &t[2], mask, 1.0 / (d as f64).sqrt()).map_err(Into::into)
    }

    #[test]
    fn packed_qkv_matches_the_three_views() {
        let split = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
            let (n, l, w) = t.dims3()?;
            let d = w / (3 * heads);
            let p = t.reshape((n, l, 3, heads, d))?;
            let part = |i| p.narrow(2, i, 1)?.squeeze(2);
            attention(&part(0)?, &part(1)?, &part(2)?, None, 0.4)?.reshape((n, l, heads * d))
        };
        assert_grads(
            |t| attention_qkv(&t[0], 2, 0.4).map_err(Into::into),
            &[randn(&[2, 5, 18], 21)],
        );
        assert_matches_reference(
            |t| attention_qkv(&t[0], 3, 0.4).map_err(Into::into),
            move |t| split(&t[0], 3),
            &[randn(&[4, 13, 3 * 192], 22)],
            1e-4,
        );
        assert!(attention_qkv(&randn(&[2, 5, 17], 1), 2, 0.4).is_err());
    }

    /// The backward from the probabilities kept by the forward equals the backward that recomputes
    /// them, bit for bit.
    #[test]
    fn kept_probabilities_give_the_recomputed_gradients() {
        let dims = AttnDims {
            n: 2,
            h: 3,
            lq: 5,
            lk: 7,
            d: 4,
            dv: 6,
        };
        let q = randn(&[2, 5, 3, 4], 1)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let k = randn(&[2, 7, 3, 4], 2)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let v = randn(&[2, 7, 3, 6], 3)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let g = randn(&[2, 5, 3, 6], 4)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let own = |s: &Storage| match s {
            Storage::Cpu(s) => s.clone(),
            _ => unreachable!(),
        };
        let (qs, ks, vs, gs) = (own(&qs), own(&ks), own(&vs), own(&gs));
        let x = views::<f32>((&qs, ql), (&ks, kl), (&vs, vl), None).unwrap();
        let dout = cpu::slice::<f32>(&gs, gl, OP).unwrap();
        let (out, p) = forward(&x, dims, 0.3, true);
        let (out2, none) = forward(&x, dims, 0.3, false);
        assert!(none.is_none());
        assert_eq!(out, out2);
        let kept = backward_separate(&x, dout, dims, 0.3, p.as_deref());
        let recomputed = backward_separate(&x, dout, dims, 0.3, None);
        assert_eq!(kept, recomputed);
    }

    #[test]
    fn gradients_self_and_cross() {
        // Self attention, odd sizes.
        assert_grads(
            |t| attn(t, None),
            &[
                randn(&[2, 5, 3, 4], 1),
                randn(&[2, 5, 3, 4], 2),
                randn(&[2, 5, 3, 4], 3),
            ],
        );
        // Cross attention: Lq = 3 queries over Lk = 7 keys, Dv != D.
        assert_grads(
            |t| attn(t, None),
            &[
                randn(&[2, 3, 2, 5], 4),
                randn(&[2, 7, 2, 5], 5),
                randn(&[2, 7, 2, 3], 6),
            ],
        );
    }

    #[test]
    fn gradients_with_a_broadcast_mask() {
        let mut m = vec![0.0f64; 3 * 6];
        m[2] = f64::NEG_INFINITY; // query 0 may not see key 2
        m[6 + 5] = -2.5;
        let mask = Tensor::from_vec(m, (3, 6), &candle_core::Device::Cpu).unwrap();
        let f = |t: &[Tensor]| attn(t, Some(&mask));
        assert_grads(
            f,
            &[
                randn(&[2, 3, 2, 4], 7),
                randn(&[2, 6, 2, 4], 8),
                randn(&[2, 6, 2, 4], 9),
            ],
        );
        // Per-sample key padding mask (N, 1, 1, Lk).
        let pad = Tensor::from_vec(
            vec![0.0, 0.0, 0.0, f64::NEG_INFINITY, 0.0, -1.0],
            (2, 1, 1, 3),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let g = |t: &[Tensor]| attn(t, Some(&pad));
        assert_grads(
            g,
            &[
                randn(&[2, 2, 2, 3], 10),
                randn(&[2, 3, 2, 3], 11),
                randn(&[2, 3, 2, 3], 12),
            ],
        );
    }

    #[test]
    fn gradients_through_strided_qkv_views() {
        // q, k, v as views of one (N, L, 3, H, D) projection, as the models produce them.
        let f = |t: &[Tensor]| {
            let qkv = t[0].reshape((2, 5, 3, 2, 4))?;
            let (q, k, v) = (
                qkv.i((.., .., 0))?,
                qkv.i((.., .., 1))?,
                qkv.i((.., .., 2))?,
            );
            assert!(!q.is_contiguous());
            attn(&[q, k, v], None)
        };
        assert_grads(f, &[randn(&[2, 5, 24], 13)]);
        // A transposed k (last stride != 1) is copied, and still gets its gradient.
        let g = |t: &[Tensor]| {
            attn(
                &[t[0].clone(), t[1].permute((0, 3, 2, 1))?, t[2].clone()],
                None,
            )
        };
        assert_grads(
            g,
            &[
                randn(&[1, 4, 2, 3], 14),
                randn(&[1, 3, 2, 5], 15),
                randn(&[1, 5, 2, 3], 16),
            ],
        );
    }

    #[test]
    fn matches_candle_composition() {
        let mask = randn(&[2, 1, 37, 49], 30)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert_matches_reference(
            |t| attn(t, Some(&mask)),
            |t| crate::reference::attention(&t[0], &t[1], &t[2], Some(&mask), 1.0 / 8.0),
            &[
                randn(&[2, 37, 3, 64], 31),
                randn(&[2, 49, 3, 64], 32),
                randn(&[2, 49, 3, 64], 33),
            ],
            1e-4,
        );
    }

    #[test]
    fn fully_masked_query_outputs_zeros() {
        let q = randn(&[1, 2, 1, 4], 1);
        let k = randn(&[1, 3, 1, 4], 2);
        let v = randn(&[1, 3, 1, 4], 3);
        let m = Tensor::from_vec(
            vec![f64::NEG_INFINITY; 3],
            (1, 3),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let m = Tensor::cat(
            &[
                m,
                Tensor::zeros((1, 3), candle_core::DType::F64, &candle_core::Device::Cpu).unwrap(),
            ],
            0,
        )
        .unwrap();
        let out = attention(&q, &k, &v, Some(&m), 0.5).unwrap();
        let row0 = out.i((0, 0, 0)).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(row0, vec![0.0; 4]);
        let row1 = out
            .i((0, 1, 0))
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(row1 > 0.0);
    }

    #[test]
    fn shape_errors_name_both_operands() {
        let q = randn(&[2, 3, 2, 4], 1);
        let k = randn(&[2, 5, 2, 8], 2);
        let v = randn(&[2, 5, 2, 4], 3);
        let e = attention(&q, &k, &v, None, 1.0).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                crate::Error::ShapeMismatch {
                    op: "attention",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("[2, 3, 2, 4]") && msg.contains("[2, 5, 2, 8]"),
            "{msg}"
        );
        let k = randn(&[2, 5, 2, 4], 2);
        let bad_mask = randn(&[4, 5], 4);
        assert!(matches!(
            attention(&q, &k, &v, Some(&bad_mask), 1.0),
            Err(crate::Error::ShapeMismatch { .. })
        ));
        let v3 = randn(&[2, 5, 4], 3);
        assert!(matches!(
            attention(&q, &k, &v3, None, 1.0),
            Err(crate::Error::InvalidArgument { .. })
        ));
        let k32 = k.to_dtype(candle_core::DType::F32).unwrap();
        assert!(matches!(
            attention(&q, &k32, &v, None, 1.0),
            Err(crate::Error::DType { .. })
        ));
    }
}
