//! Launchers of kernels/attention.cu: forward, and the two-kernel backward (dq and row statistics
//! per query row, then dk and dv per key row).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaView, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaStorage, Result};

use super::{alloc, load, view, wrap, Float, ATTENTION, ATTN_MAXD, ATTN_WARPS, MAX_GRID};
use crate::attention::{AttnDims, Strided4};

const OP: &str = "attention";

/// Elements a strided (N, L, H, E) view can reach from its offset: its last element plus one.
fn extent(v: &Strided4, dims: [usize; 4]) -> usize {
    1 + (0..4).map(|i| (dims[i] - 1) * v.stride[i]).sum::<usize>()
}

/// One warp per row, `ATTN_WARPS` rows per block.
fn cfg(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(ATTN_WARPS as usize).clamp(1, MAX_GRID);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (ATTN_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The scalar arguments every attention kernel takes after its pointers, in order:
/// nb, nh, lq, lk, d, dv, qs0..2, ks0..2, vs0..2, ms0..3, has_mask (all u64), scale (f32).
struct Scalars {
    ints: [u64; 20],
    scale: f32,
}

impl Scalars {
    fn new(
        dims: &AttnDims,
        q: &Strided4,
        k: &Strided4,
        v: &Strided4,
        m: Option<&Strided4>,
        scale: f32,
    ) -> Self {
        let u = |x: usize| x as u64;
        let ms = m.map_or([0; 4], |m| m.stride);
        Self {
            ints: [
                u(dims.n),
                u(dims.h),
                u(dims.lq),
                u(dims.lk),
                u(dims.d),
                u(dims.dv),
                u(q.stride[0]),
                u(q.stride[1]),
                u(q.stride[2]),
                u(k.stride[0]),
                u(k.stride[1]),
                u(k.stride[2]),
                u(v.stride[0]),
                u(v.stride[1]),
                u(v.stride[2]),
                u(ms[0]),
                u(ms[1]),
                u(ms[2]),
                u(ms[3]),
                u64::from(m.is_some()),
            ],
            scale,
        }
    }

    fn push<'a>(&'a self, lb: &mut LaunchArgs<'a>) {
        for x in &self.ints {
            lb.arg(x);
        }
        lb.arg(&self.scale);
    }
}

type View4<'a> = (&'a CudaStorage, Strided4);

/// Checks what the kernels assume, and returns the q, k, v and mask views.
#[allow(clippy::type_complexity)]
fn inputs<'a, T: Float>(
    q: View4<'a>,
    k: View4<'a>,
    v: View4<'a>,
    mask: Option<View4<'a>>,
    dims: &AttnDims,
) -> Result<(
    CudaView<'a, T>,
    CudaView<'a, T>,
    CudaView<'a, T>,
    Option<CudaView<'a, T>>,
)> {
    let AttnDims {
        n,
        h,
        lq,
        lk,
        d,
        dv,
    } = *dims;
    if d > ATTN_MAXD || dv > ATTN_MAXD {
        candle_core::bail!("{OP}: head dims up to {ATTN_MAXD} on CUDA, got D = {d}, Dv = {dv}");
    }
    for (name, s) in [("q", &q.1), ("k", &k.1), ("v", &v.1)] {
        if s.stride[3] != 1 {
            candle_core::bail!(
                "{OP}: internal error: {name} must have a unit last stride, got {:?}",
                s.stride
            );
        }
    }
    let qv = view::<T>(q.0, q.1.offset, extent(&q.1, [n, lq, h, d]), OP)?;
    let kv = view::<T>(k.0, k.1.offset, extent(&k.1, [n, lk, h, d]), OP)?;
    let vv = view::<T>(v.0, v.1.offset, extent(&v.1, [n, lk, h, dv]), OP)?;
    let mv = match mask {
        None => None,
        Some((s, m)) => {
            if s.dtype() != q.0.dtype() {
                candle_core::bail!(
                    "{OP}: mask dtype {:?} differs from q's {:?}",
                    s.dtype(),
                    q.0.dtype()
                );
            }
            Some(view::<T>(s, m.offset, extent(&m, [n, h, lq, lk]), OP)?)
        }
    };
    Ok((qv, kv, vv, mv))
}

pub(crate) fn attention_fwd(
    q: (&CudaStorage, Strided4),
    k: (&CudaStorage, Strided4),
    v: (&CudaStorage, Strided4),
    mask: Option<(&CudaStorage, Strided4)>,
    dims: &AttnDims,
    scale: f32,
) -> Result<CudaStorage> {
    fn run<T: Float>(
        q: View4,
        k: View4,
        v: View4,
        mask: Option<View4>,
        dims: &AttnDims,
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = &q.0.device;
        let (qv, kv, vv, mv) = inputs::<T>(q, k, v, mask, dims)?;
        let sc = Scalars::new(dims, &q.1, &k.1, &v.1, mask.as_ref().map(|m| &m.1), scale);
        let rows = dims.n * dims.h * dims.lq;
        let mut out = alloc::<T>(dev, rows * dims.dv)?;
        let f = load(dev, &ATTENTION, &format!("attention_fwd_{}", T::NAME))?;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        // Without a mask the kernel never reads the mask pointer; q stands in for it.
        lb.arg(&qv)
            .arg(&kv)
            .arg(&vv)
            .arg(mv.as_ref().unwrap_or(&qv))
            .arg(&mut out);
        sc.push(&mut lb);
        // SAFETY: arguments match attention_fwd's signature in attention.cu (ATTN_DIMS), the views
        // cover every element the strides reach, and D, Dv <= MAXD.
        unsafe { lb.launch(cfg(rows)) }.w()?;
        drop(lb);
        Ok(wrap(out, dev))
    }
    dispatch_float!(OP, q.0.dtype(), run(q, k, v, mask, dims, scale))
}

pub(crate) fn attention_bwd(
    q: (&CudaStorage, Strided4),
    k: (&CudaStorage, Strided4),
    v: (&CudaStorage, Strided4),
    mask: Option<(&CudaStorage, Strided4)>,
    dout: (&CudaStorage, usize),
    dims: &AttnDims,
    scale: f32,
) -> Result<[CudaStorage; 3]> {
    fn run<T: Float>(
        q: View4,
        k: View4,
        v: View4,
        mask: Option<View4>,
        dout: (&CudaStorage, usize),
        dims: &AttnDims,
        scale: f32,
    ) -> Result<[CudaStorage; 3]> {
        let dev = &q.0.device;
        let AttnDims {
            n,
            h,
            lq,
            lk,
            d,
            dv,
        } = *dims;
        let (qv, kv, vv, mv) = inputs::<T>(q, k, v, mask, dims)?;
        let sc = Scalars::new(dims, &q.1, &k.1, &v.1, mask.as_ref().map(|m| &m.1), scale);
        let qrows = n * h * lq;
        let krows = n * h * lk;
        let gv = view::<T>(dout.0, dout.1, qrows * dv, OP)?;
        let mv = mv.as_ref().unwrap_or(&qv);
        let mut dq = alloc::<T>(dev, qrows * d)?;
        let mut dk = alloc::<T>(dev, krows * d)?;
        let mut dvv = alloc::<T>(dev, krows * dv)?;
        let mut stats = alloc::<f32>(dev, 3 * qrows)?;
        let stream = dev.cuda_stream();
        {
            let f = load(dev, &ATTENTION, &format!("attention_bwd_q_{}", T::NAME))?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&qv)
                .arg(&kv)
                .arg(&vv)
                .arg(mv)
                .arg(&gv)
                .arg(&mut dq)
                .arg(&mut stats);
            sc.push(&mut lb);
            // SAFETY: arguments match attention_bwd_q's signature in attention.cu.
            unsafe { lb.launch(cfg(qrows)) }.w()?;
        }
        {
            let f = load(dev, &ATTENTION, &format!("attention_bwd_kv_{}", T::NAME))?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&qv)
                .arg(&kv)
                .arg(&vv)
                .arg(mv)
                .arg(&gv)
                .arg(&stats)
                .arg(&mut dk)
                .arg(&mut dvv);
            sc.push(&mut lb);
            // SAFETY: arguments match attention_bwd_kv's signature in attention.cu; it reads the
            // statistics attention_bwd_q wrote (same stream, so in order).
            unsafe { lb.launch(cfg(krows)) }.w()?;
        }
        Ok([wrap(dq, dev), wrap(dk, dev), wrap(dvv, dev)])
    }
    dispatch_float!(OP, q.0.dtype(), run(q, k, v, mask, dout, dims, scale))
}
