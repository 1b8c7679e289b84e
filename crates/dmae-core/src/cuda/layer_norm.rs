//! Launchers of kernels/layer_norm.cu: the forward, and the three-kernel backward (dx and the row
//! statistics, then dw/db partial sums per chunk of rows, then their deterministic reduction).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaStorage, Result};

use super::{alloc, cfg_elems, cfg_rows, load, view, wrap, zeros, Float, EW_BLOCK, LAYER_NORM};

const LN: &str = "layer_norm";

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_fwd(
    x: &CudaStorage,
    x_off: usize,
    w: &CudaStorage,
    w_off: usize,
    b: &CudaStorage,
    b_off: usize,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<CudaStorage> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        x: &CudaStorage,
        x_off: usize,
        w: &CudaStorage,
        w_off: usize,
        b: &CudaStorage,
        b_off: usize,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let n = rows * cols;
        let xv = view::<T>(x, x_off, n, LN)?;
        let wv = view::<T>(w, w_off, cols, LN)?;
        let bv = view::<T>(b, b_off, cols, LN)?;
        let mut y = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = load(dev, &LAYER_NORM, &format!("layer_norm_fwd_{}", T::NAME))?;
            let stream = dev.cuda_stream();
            let (r, c) = (rows as u64, cols as u64);
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv)
                .arg(&wv)
                .arg(&bv)
                .arg(&mut y)
                .arg(&r)
                .arg(&c)
                .arg(&eps);
            // SAFETY: arguments match layer_norm_fwd's signature in layer_norm.cu.
            unsafe { lb.launch(cfg_rows(rows, cols)) }.w()?;
        }
        Ok(wrap(y, dev))
    }
    dispatch_float!(
        LN,
        x.dtype(),
        run(x, x_off, w, w_off, b, b_off, rows, cols, eps)
    )
}

/// Rows per chunk of the deterministic dw/db reduction: at most 1024 chunks, at least 32 rows each.
fn ln_rows_per_chunk(rows: usize) -> usize {
    rows.div_ceil(1024).max(32)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_bwd(
    x: &CudaStorage,
    x_off: usize,
    w: &CudaStorage,
    w_off: usize,
    dy: &CudaStorage,
    dy_off: usize,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<[CudaStorage; 3]> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        x: &CudaStorage,
        x_off: usize,
        w: &CudaStorage,
        w_off: usize,
        dy: &CudaStorage,
        dy_off: usize,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<[CudaStorage; 3]> {
        let dev = &x.device;
        let n = rows * cols;
        let xv = view::<T>(x, x_off, n, LN)?;
        let wv = view::<T>(w, w_off, cols, LN)?;
        let gv = view::<T>(dy, dy_off, n, LN)?;
        let mut dx = alloc::<T>(dev, n)?;
        if n == 0 {
            // No rows: dw and db are sums over nothing.
            return Ok([
                wrap(dx, dev),
                wrap(zeros::<T>(dev, cols)?, dev),
                wrap(zeros::<T>(dev, cols)?, dev),
            ]);
        }
        let mut dw = alloc::<T>(dev, cols)?;
        let mut db = alloc::<T>(dev, cols)?;
        let rpc = ln_rows_per_chunk(rows);
        let chunks = rows.div_ceil(rpc);
        let mut stats = alloc::<f32>(dev, 2 * rows)?;
        let mut pw = alloc::<f32>(dev, chunks * cols)?;
        let mut pb = alloc::<f32>(dev, chunks * cols)?;
        let stream = dev.cuda_stream();
        let (r, c, rpc_, chunks_) = (rows as u64, cols as u64, rpc as u64, chunks as u64);
        {
            let f = load(dev, &LAYER_NORM, &format!("layer_norm_bwd_dx_{}", T::NAME))?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv)
                .arg(&wv)
                .arg(&gv)
                .arg(&mut dx)
                .arg(&mut stats)
                .arg(&r)
                .arg(&c)
                .arg(&eps);
            // SAFETY: arguments match layer_norm_bwd_dx's signature in layer_norm.cu.
            unsafe { lb.launch(cfg_rows(rows, cols)) }.w()?;
        }
        {
            let f = load(
                dev,
                &LAYER_NORM,
                &format!("layer_norm_bwd_partial_{}", T::NAME),
            )?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv).arg(&gv).arg(&stats).arg(&mut pw).arg(&mut pb);
            lb.arg(&r).arg(&c).arg(&rpc_);
            let cfg = LaunchConfig {
                grid_dim: (cols.div_ceil(EW_BLOCK as usize) as u32, chunks as u32, 1),
                block_dim: (EW_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match layer_norm_bwd_partial's signature in layer_norm.cu; the
            // grid covers every column (x) and chunk (y, at most 1024).
            unsafe { lb.launch(cfg) }.w()?;
        }
        {
            let f = load(
                dev,
                &LAYER_NORM,
                &format!("layer_norm_bwd_final_{}", T::NAME),
            )?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&pw)
                .arg(&pb)
                .arg(&mut dw)
                .arg(&mut db)
                .arg(&chunks_)
                .arg(&c);
            // SAFETY: arguments match layer_norm_bwd_final's signature in layer_norm.cu.
            unsafe { lb.launch(cfg_elems(cols)) }.w()?;
        }
        Ok([wrap(dx, dev), wrap(dw, dev), wrap(db, dev)])
    }
    dispatch_float!(
        LN,
        x.dtype(),
        run(x, x_off, w, w_off, dy, dy_off, rows, cols, eps)
    )
}
