//! Launchers of kernels/softmax.cu: softmax over the last dimension and its backward, one block
//! per row.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{CudaStorage, Result};

use super::{alloc, cfg_rows, load, view, wrap, Float, SOFTMAX};

const SM: &str = "softmax";

pub(crate) fn softmax_fwd(
    x: &CudaStorage,
    off: usize,
    rows: usize,
    cols: usize,
) -> Result<CudaStorage> {
    fn run<T: Float>(x: &CudaStorage, off: usize, rows: usize, cols: usize) -> Result<CudaStorage> {
        let dev = &x.device;
        let n = rows * cols;
        let xv = view::<T>(x, off, n, SM)?;
        let mut y = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = load(dev, &SOFTMAX, &format!("softmax_fwd_{}", T::NAME))?;
            let stream = dev.cuda_stream();
            let (r, c) = (rows as u64, cols as u64);
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv).arg(&mut y).arg(&r).arg(&c);
            // SAFETY: arguments match softmax_fwd's signature in softmax.cu.
            unsafe { lb.launch(cfg_rows(rows, cols)) }.w()?;
        }
        Ok(wrap(y, dev))
    }
    dispatch_float!(SM, x.dtype(), run(x, off, rows, cols))
}

pub(crate) fn softmax_bwd(
    y: &CudaStorage,
    y_off: usize,
    dy: &CudaStorage,
    dy_off: usize,
    rows: usize,
    cols: usize,
) -> Result<CudaStorage> {
    fn run<T: Float>(
        y: &CudaStorage,
        y_off: usize,
        dy: &CudaStorage,
        dy_off: usize,
        rows: usize,
        cols: usize,
    ) -> Result<CudaStorage> {
        let dev = &y.device;
        let n = rows * cols;
        let yv = view::<T>(y, y_off, n, SM)?;
        let gv = view::<T>(dy, dy_off, n, SM)?;
        let mut dx = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = load(dev, &SOFTMAX, &format!("softmax_bwd_{}", T::NAME))?;
            let stream = dev.cuda_stream();
            let (r, c) = (rows as u64, cols as u64);
            let mut lb = stream.launch_builder(&f);
            lb.arg(&yv).arg(&gv).arg(&mut dx).arg(&r).arg(&c);
            // SAFETY: arguments match softmax_bwd's signature in softmax.cu.
            unsafe { lb.launch(cfg_rows(rows, cols)) }.w()?;
        }
        Ok(wrap(dx, dev))
    }
    dispatch_float!(SM, y.dtype(), run(y, y_off, dy, dy_off, rows, cols))
}
