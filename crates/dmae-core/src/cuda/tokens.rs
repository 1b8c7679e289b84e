//! Launchers of kernels/tokens.cu: gather, scatter-add (gather's backward), scatter, zero rows.
//! x / g / base are (N, L, D), src (N, K, D), idx (N, K) u32, all contiguous from their offsets.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Result};

use super::{alloc, bits, cfg_elems, load, view, wrap, zeros, Float, TOKENS};

const GATHER: &str = "gather_tokens";
const SCATTER: &str = "scatter_tokens";

/// A copy of `n` elements of `s` from `off` into a fresh buffer.
fn copy<T: Float>(
    dev: &CudaDevice,
    s: &CudaStorage,
    off: usize,
    n: usize,
    op: &str,
) -> Result<CudaSlice<T>> {
    let src = view::<T>(s, off, n, op)?;
    let mut dst = alloc::<T>(dev, n)?;
    if n > 0 {
        dev.memcpy_dtod(&src, &mut dst)?;
    }
    Ok(dst)
}

/// `out[b, r, :] = x[b, idx[b, r], :]`; out-of-range indices give zero rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_tokens(
    x: &CudaStorage,
    x_off: usize,
    idx: &CudaStorage,
    idx_off: usize,
    n: usize,
    l: usize,
    k: usize,
    d: usize,
) -> Result<CudaStorage> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        x: &CudaStorage,
        x_off: usize,
        idx: &CudaStorage,
        idx_off: usize,
        n: usize,
        l: usize,
        k: usize,
        d: usize,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let xv = view::<T>(x, x_off, n * l * d, GATHER)?;
        let iv = view::<u32>(idx, idx_off, n * k, GATHER)?;
        let total = n * k * d;
        let mut out = alloc::<T>(dev, total)?;
        if total > 0 {
            let f = load(dev, &TOKENS, &format!("gather_tokens_{}", bits::<T>()))?;
            let stream = dev.cuda_stream();
            let s = [n as u64, l as u64, k as u64, d as u64];
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv)
                .arg(&iv)
                .arg(&mut out)
                .arg(&s[0])
                .arg(&s[1])
                .arg(&s[2])
                .arg(&s[3]);
            // SAFETY: arguments match gather_tokens_u* in tokens.cu (T has that element size).
            unsafe { lb.launch(cfg_elems(total)) }.w()?;
        }
        Ok(wrap(out, dev))
    }
    dispatch_float!(GATHER, x.dtype(), run(x, x_off, idx, idx_off, n, l, k, d))
}

/// `dx (N, L, D)` = zeros with `dx[b, idx[b, r], :] += g[b, r, :]` (repeated indices accumulate, in
/// f32 atomics; bf16/f16 through an f32 buffer). The backward of [`gather_tokens`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_add_tokens(
    g: &CudaStorage,
    g_off: usize,
    idx: &CudaStorage,
    idx_off: usize,
    n: usize,
    l: usize,
    k: usize,
    d: usize,
) -> Result<CudaStorage> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        g: &CudaStorage,
        g_off: usize,
        idx: &CudaStorage,
        idx_off: usize,
        n: usize,
        l: usize,
        k: usize,
        d: usize,
    ) -> Result<CudaStorage> {
        let dev = &g.device;
        let gv = view::<T>(g, g_off, n * k * d, GATHER)?;
        let iv = view::<u32>(idx, idx_off, n * k, GATHER)?;
        let total = n * k * d;
        let len = n * l * d;
        let mut acc = zeros::<f32>(dev, len)?;
        let stream = dev.cuda_stream();
        if total > 0 {
            let f = load(dev, &TOKENS, &format!("scatter_add_tokens_{}", T::NAME))?;
            let s = [n as u64, l as u64, k as u64, d as u64];
            let mut lb = stream.launch_builder(&f);
            lb.arg(&gv)
                .arg(&iv)
                .arg(&mut acc)
                .arg(&s[0])
                .arg(&s[1])
                .arg(&s[2])
                .arg(&s[3]);
            // SAFETY: arguments match scatter_add_tokens_* in tokens.cu.
            unsafe { lb.launch(cfg_elems(total)) }.w()?;
        }
        if T::NAME == "f32" {
            return Ok(wrap(acc, dev));
        }
        let mut out = alloc::<T>(dev, len)?;
        if len > 0 {
            let f = load(dev, &TOKENS, &format!("f32_to_{}", T::NAME))?;
            let len_ = len as u64;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&acc).arg(&mut out).arg(&len_);
            // SAFETY: arguments match f32_to_* in tokens.cu.
            unsafe { lb.launch(cfg_elems(len)) }.w()?;
        }
        Ok(wrap(out, dev))
    }
    dispatch_float!(GATHER, g.dtype(), run(g, g_off, idx, idx_off, n, l, k, d))
}

/// `out = base` with `out[b, idx[b, r], :] = src[b, r, :]`; out-of-range indices are ignored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_tokens(
    base: &CudaStorage,
    b_off: usize,
    src: &CudaStorage,
    s_off: usize,
    idx: &CudaStorage,
    idx_off: usize,
    n: usize,
    l: usize,
    k: usize,
    d: usize,
) -> Result<CudaStorage> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        base: &CudaStorage,
        b_off: usize,
        src: &CudaStorage,
        s_off: usize,
        idx: &CudaStorage,
        idx_off: usize,
        n: usize,
        l: usize,
        k: usize,
        d: usize,
    ) -> Result<CudaStorage> {
        let dev = &base.device;
        let mut out = copy::<T>(dev, base, b_off, n * l * d, SCATTER)?;
        let sv = view::<T>(src, s_off, n * k * d, SCATTER)?;
        let iv = view::<u32>(idx, idx_off, n * k, SCATTER)?;
        let total = n * k * d;
        if total > 0 {
            let f = load(dev, &TOKENS, &format!("scatter_tokens_{}", bits::<T>()))?;
            let stream = dev.cuda_stream();
            let s = [n as u64, l as u64, k as u64, d as u64];
            let mut lb = stream.launch_builder(&f);
            lb.arg(&sv)
                .arg(&iv)
                .arg(&mut out)
                .arg(&s[0])
                .arg(&s[1])
                .arg(&s[2])
                .arg(&s[3]);
            // SAFETY: arguments match scatter_tokens_u* in tokens.cu.
            unsafe { lb.launch(cfg_elems(total)) }.w()?;
        }
        Ok(wrap(out, dev))
    }
    if src.dtype() != base.dtype() {
        candle_core::bail!(
            "{SCATTER}: src dtype {:?} differs from base's {:?}",
            src.dtype(),
            base.dtype()
        );
    }
    dispatch_float!(
        SCATTER,
        base.dtype(),
        run(base, b_off, src, s_off, idx, idx_off, n, l, k, d)
    )
}

/// A copy of `g` (N, L, D) with rows `idx` zeroed (the base gradient of [`scatter_tokens`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn zero_rows(
    g: &CudaStorage,
    g_off: usize,
    idx: &CudaStorage,
    idx_off: usize,
    n: usize,
    l: usize,
    k: usize,
    d: usize,
) -> Result<CudaStorage> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        g: &CudaStorage,
        g_off: usize,
        idx: &CudaStorage,
        idx_off: usize,
        n: usize,
        l: usize,
        k: usize,
        d: usize,
    ) -> Result<CudaStorage> {
        let dev = &g.device;
        let mut out = copy::<T>(dev, g, g_off, n * l * d, SCATTER)?;
        let iv = view::<u32>(idx, idx_off, n * k, SCATTER)?;
        let total = n * k * d;
        if total > 0 {
            let f = load(dev, &TOKENS, &format!("zero_rows_{}", bits::<T>()))?;
            let stream = dev.cuda_stream();
            let s = [n as u64, l as u64, k as u64, d as u64];
            let mut lb = stream.launch_builder(&f);
            lb.arg(&iv)
                .arg(&mut out)
                .arg(&s[0])
                .arg(&s[1])
                .arg(&s[2])
                .arg(&s[3]);
            // SAFETY: arguments match zero_rows_u* in tokens.cu.
            unsafe { lb.launch(cfg_elems(total)) }.w()?;
        }
        Ok(wrap(out, dev))
    }
    dispatch_float!(SCATTER, g.dtype(), run(g, g_off, idx, idx_off, n, l, k, d))
}
