//! AdamW on CUDA: the moments as f32 device buffers, and the launcher of kernels/adamw.cu.

use candle_core::cuda::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Result, Storage, Tensor};

use super::{cfg_elems, load, tensor, view, wrap, zeros, ADAMW};
use crate::adamw::AdamWHyper;

const OP: &str = "adamw";

/// First and second moments of one parameter, f32 on its device.
pub(crate) struct CudaMoments {
    pub m: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
    /// Number of elements (the buffers hold at least one, as CUDA rejects empty allocations).
    n: usize,
    dev: CudaDevice,
}

pub(crate) fn moments_zeros(dev: &CudaDevice, n: usize) -> Result<CudaMoments> {
    Ok(CudaMoments {
        m: zeros::<f32>(dev, n)?,
        v: zeros::<f32>(dev, n)?,
        n,
        dev: dev.clone(),
    })
}

/// Device copies of the moments as f32 tensors of shape (n,).
pub(crate) fn moments_to_tensors(mo: &CudaMoments) -> Result<(Tensor, Tensor)> {
    let copy = |s: &CudaSlice<f32>| -> Result<Tensor> {
        let c = mo.dev.cuda_stream().clone_dtod(s).w()?;
        let st = wrap(c, &mo.dev);
        // The buffer may hold one element more than n when n == 0; narrow to the real length.
        tensor(st, s.len()).narrow(0, 0, mo.n)
    };
    Ok((copy(&mo.m)?, copy(&mo.v)?))
}

/// Moments copied from two f32 CUDA tensors of the same element count.
pub(crate) fn moments_from_tensors(m: &Tensor, v: &Tensor) -> Result<CudaMoments> {
    let n = m.elem_count();
    if v.elem_count() != n {
        candle_core::bail!(
            "{OP}: moments m and v have {} and {} elements",
            n,
            v.elem_count()
        );
    }
    let copy = |t: &Tensor| -> Result<(CudaSlice<f32>, CudaDevice)> {
        let t = t.contiguous()?;
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(s) = &*s else {
            candle_core::bail!("{OP}: moments are not on a CUDA device");
        };
        let dev = s.device.clone();
        let mut out = zeros::<f32>(&dev, n)?;
        if n > 0 {
            let src = view::<f32>(s, l.start_offset(), n, OP)?;
            dev.memcpy_dtod(&src, &mut out)?;
        }
        Ok((out, dev))
    };
    let (mm, dev) = copy(m)?;
    let (vv, _) = copy(v)?;
    Ok(CudaMoments {
        m: mm,
        v: vv,
        n,
        dev,
    })
}

/// One AdamW step of `n` f32 parameters from `p_off` with gradients from `g_off`, in place; the
/// update of `adamw::update_cpu`, to the bit.
pub(crate) fn adamw_step(
    p: &mut CudaStorage,
    p_off: usize,
    g: &CudaStorage,
    g_off: usize,
    mo: &mut CudaMoments,
    n: usize,
    h: &AdamWHyper,
) -> Result<()> {
    if mo.n != n {
        candle_core::bail!("{OP}: moments hold {} values for a parameter of {n}", mo.n);
    }
    if n == 0 {
        return Ok(());
    }
    let dev = p.device.clone();
    let gv = view::<f32>(g, g_off, n, OP)?;
    let ps = p.as_cuda_slice_mut::<f32>()?;
    if p_off + n > ps.len() {
        candle_core::bail!(
            "{OP}: internal error: parameter of {n} from {p_off} exceeds its buffer"
        );
    }
    let mut pv = ps.slice_mut(p_off..p_off + n);
    // The same f32 operations as update_cpu, so the kernel sees the same constants.
    let decay = 1.0f32 - h.lr * h.weight_decay;
    let step = h.lr / h.bias_correction1;
    let inv_sqrt_bc2 = 1.0f32 / h.bias_correction2.sqrt();
    let n_ = n as u64;
    let f = load(&dev, &ADAMW, "adamw_step_f32")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(&mut pv)
        .arg(&gv)
        .arg(&mut mo.m)
        .arg(&mut mo.v)
        .arg(&n_);
    lb.arg(&decay)
        .arg(&step)
        .arg(&inv_sqrt_bc2)
        .arg(&h.beta1)
        .arg(&h.beta2)
        .arg(&h.eps);
    // SAFETY: arguments match adamw_step_f32's signature in adamw.cu; every buffer holds n floats.
    unsafe { lb.launch(cfg_elems(n)) }.w()?;
    Ok(())
}
