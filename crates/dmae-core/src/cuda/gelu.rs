//! Launchers of kernels/gelu.cu: element-wise GELU (erf or tanh form) and its backward.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{CudaStorage, Result};

use super::{alloc, cfg_elems, load, view, wrap, Float, GELU};
use crate::gelu::Gelu;

const GE: &str = "gelu";

fn gelu_kind(kind: Gelu) -> u64 {
    match kind {
        Gelu::Erf => 0,
        Gelu::Tanh => 1,
    }
}

pub(crate) fn gelu_fwd(x: &CudaStorage, off: usize, n: usize, kind: Gelu) -> Result<CudaStorage> {
    fn run<T: Float>(x: &CudaStorage, off: usize, n: usize, kind: Gelu) -> Result<CudaStorage> {
        let dev = &x.device;
        let xv = view::<T>(x, off, n, GE)?;
        let mut y = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = load(dev, &GELU, &format!("gelu_fwd_{}", T::NAME))?;
            let stream = dev.cuda_stream();
            let (n_, k) = (n as u64, gelu_kind(kind));
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv).arg(&mut y).arg(&n_).arg(&k);
            // SAFETY: arguments match gelu_fwd's signature in gelu.cu.
            unsafe { lb.launch(cfg_elems(n)) }.w()?;
        }
        Ok(wrap(y, dev))
    }
    dispatch_float!(GE, x.dtype(), run(x, off, n, kind))
}

pub(crate) fn gelu_bwd(
    x: &CudaStorage,
    x_off: usize,
    dy: &CudaStorage,
    dy_off: usize,
    n: usize,
    kind: Gelu,
) -> Result<CudaStorage> {
    fn run<T: Float>(
        x: &CudaStorage,
        x_off: usize,
        dy: &CudaStorage,
        dy_off: usize,
        n: usize,
        kind: Gelu,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let xv = view::<T>(x, x_off, n, GE)?;
        let gv = view::<T>(dy, dy_off, n, GE)?;
        let mut dx = alloc::<T>(dev, n)?;
        if n > 0 {
            let f = load(dev, &GELU, &format!("gelu_bwd_{}", T::NAME))?;
            let stream = dev.cuda_stream();
            let (n_, k) = (n as u64, gelu_kind(kind));
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv).arg(&gv).arg(&mut dx).arg(&n_).arg(&k);
            // SAFETY: arguments match gelu_bwd's signature in gelu.cu.
            unsafe { lb.launch(cfg_elems(n)) }.w()?;
        }
        Ok(wrap(dx, dev))
    }
    dispatch_float!(GE, x.dtype(), run(x, x_off, dy, dy_off, n, kind))
}
