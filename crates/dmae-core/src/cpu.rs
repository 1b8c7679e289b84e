//! Shared plumbing for the CPU kernels: the float trait they are generic over, slice access, and
//! turning kernel output into tensors.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor, WithDType};

/// The float types the CPU kernels are written for (f32 for training, f64 for gradient checks).
pub(crate) trait Real: WithDType + num_traits::Float + Send + Sync + std::iter::Sum {
    /// `erf`, which `num_traits::Float` lacks.
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// Converts an `f64` constant to the kernel's float type.
#[inline(always)]
pub(crate) fn c<T: Real>(x: f64) -> T {
    T::from_f64(x)
}

/// The contiguous elements a layout addresses. The public op wrappers make their inputs contiguous,
/// so a strided layout here is a bug in this crate, reported as an error rather than a panic.
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: internal error: expected a contiguous input, got {l:?}"),
    }
}

/// Wraps kernel output as a tensor outside the autograd graph (used for gradients).
pub(crate) fn tensor<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cpu(T::to_cpu_storage_owned(data)),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// How many rows of `cols` elements one rayon task should take: enough work to amortise scheduling
/// (~16k elements), at least one row.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (16 * 1024 / cols.max(1)).max(1)
}

/// `sum(a[i] * b[i])` with eight independent accumulators, so the compiler can vectorise the
/// reduction (a single accumulator is a serial dependency chain).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let chunks = n / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] = acc[l] + a[8 * i + l] * b[8 * i + l];
        }
    }
    let mut tail = T::zero();
    for i in chunks * 8..n {
        tail = tail + a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += alpha * x`.
#[inline]
pub(crate) fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + alpha * x;
    }
}

/// Runs `$f::<T>(args)` for the float type of a CPU storage, or fails naming the op and dtype.
macro_rules! dispatch_float {
    ($op:expr, $s:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $s {
            candle_core::CpuStorage::F32(_) => $f::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $f::<f64>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {:?} on the CPU", $op, candle_core::backend::BackendStorage::dtype(other)),
        }
    };
}
pub(crate) use dispatch_float;
