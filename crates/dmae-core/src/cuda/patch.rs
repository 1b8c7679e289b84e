//! Launcher of kernels/patch.cu: patchify / unpatchify as one permutation kernel.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda::{CudaDType, WrapErr};
use candle_core::{CudaStorage, Result};

use super::{alloc, bits, cfg_elems, load, view, wrap, PATCH};
use crate::patch::PatchDims;

const OP: &str = "patchify";

/// (N, C, T, H, W) -> (N, L, t*p*p*C), or back with `inverse`, exactly as `patch::permute_sample`.
/// Any dtype of 1, 2, 4 or 8 bytes (the kernel moves raw bits).
pub(crate) fn patchify(
    x: &CudaStorage,
    off: usize,
    dims: &PatchDims,
    inverse: bool,
) -> Result<CudaStorage> {
    fn run<T: CudaDType + DeviceRepr>(
        x: &CudaStorage,
        off: usize,
        dims: &PatchDims,
        inverse: bool,
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let total = dims.n * dims.c * dims.t * dims.h * dims.w;
        let xv = view::<T>(x, off, total, OP)?;
        let mut out = alloc::<T>(dev, total)?;
        if total > 0 {
            let f = load(dev, &PATCH, &format!("patchify_{}", bits::<T>()))?;
            let stream = dev.cuda_stream();
            let u = |x: usize| x as u64;
            let s = [
                u(total),
                u(dims.c),
                u(dims.t),
                u(dims.h),
                u(dims.w),
                u(dims.tubelet),
                u(dims.patch),
                u64::from(inverse),
            ];
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv).arg(&mut out);
            for v in &s {
                lb.arg(v);
            }
            // SAFETY: arguments match patchify_u* in patch.cu (T has that element size).
            unsafe { lb.launch(cfg_elems(total)) }.w()?;
        }
        Ok(wrap(out, dev))
    }
    dispatch_copy!(OP, x.dtype(), run(x, off, dims, inverse))
}
