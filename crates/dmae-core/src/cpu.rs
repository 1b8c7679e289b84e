//! Shared plumbing for the CPU kernels: the float trait they are generic over, slice access, and
//! turning kernel output into tensors.

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor, WithDType};

/// The float types the CPU kernels are written for (f32 for training, f64 for gradient checks).
pub(crate) trait Real:
    WithDType
    + num_traits::Float
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
{
    /// `exp`. For f32 a branch-free polynomial (Cephes `expf`, ~1 ulp) that the compiler vectorises,
    /// with `exp(x) = 0` below -87.3 so that `-inf` logits give exact zeros; f64 uses libm.
    fn exp_fast(self) -> Self;
    /// `erf`. For f32 a rational function with no `exp` (below), vectorisable; f64 uses candle's
    /// libm port.
    fn erf(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

// The polynomials below use `mul_add`: the kernels that inline them are compiled with FMA (see
// `multiversion!`), where each becomes one fused instruction instead of a multiply and an add.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.7);
    let n = xc.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 5e-1);
    let p = (p * r).mul_add(r, r) + 1.0;
    // 2^n without a float-to-int cast (Rust's `as i32` saturates and maps NaN to 0, which LLVM
    // compiles to scalar code per lane, unvectorising the loop): n + 127 is an integer in
    // [1, 255] after the clamp, so adding 2^23 puts it in the low mantissa bits, and shifting
    // those into the exponent field gives the same bits as `(n as i32 + 127) << 23`.
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// `erf(x)` as `x·P(x²) / Q(x²)` on `x` clamped to [-4, 4] (beyond, erf is ±1 in f32): the
/// rational approximation of Eigen's `generic_fast_erf_float` (also XLA's `ErfImpl32`), 4.5e-7
/// absolute error at most evaluated in f32 (tested below), relative accuracy kept near zero. Eleven
/// FMAs and one division, no `exp`: GELU without its derivative (sampling) needs nothing else,
/// where Abramowitz & Stegun 7.1.26 needed an `exp`, a division and a Taylor branch near zero.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = (-2.726_142_3e-10f32)
        .mul_add(x2, 2.770_681_4e-8)
        .mul_add(x2, -2.101_024e-6)
        .mul_add(x2, -5.692_506_4e-5)
        .mul_add(x2, -7.349_906_3e-4)
        .mul_add(x2, -2.954_6e-3)
        .mul_add(x2, -1.609_603_3e-2);
    let q = (-1.456_607_15e-5f32)
        .mul_add(x2, -2.133_740_5e-4)
        .mul_add(x2, -1.682_827e-3)
        .mul_add(x2, -7.373_329_3e-3)
        .mul_add(x2, -1.426_473_9e-2);
    x * p / q
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
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (a, b) = (lanes(a), lanes(b));
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut tail = T::zero();
    for (a, b) in a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
    {
        tail += *a * *b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// A chunk of `chunks_exact(8)` as an array: indexing it needs no bounds checks, which in the
/// reductions here kept LLVM from vectorising the eight accumulators (scalar `vaddss`/`vmaxss` in
/// the profile of softmax and layer norm).
#[inline(always)]
pub(crate) fn lanes<T>(c: &[T]) -> &[T; 8] {
    c.try_into().expect("chunks_exact(8)")
}

/// `y += alpha * x`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    for i in 0..n {
        y[i] += alpha * x[i];
    }
}

multiversion! {
    fn mul_chunk<T: Real>(a: &[T], b: &[T], out: &mut [std::mem::MaybeUninit<T>]) {
        let (b, out) = (&b[..a.len()], &mut out[..a.len()]);
        for i in 0..a.len() {
            out[i].write(a[i] * b[i]);
        }
    }
}

/// `a ⊙ b` into a new vector (each element written once, in parallel chunks).
pub(crate) fn mul_new<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    assert_eq!(a.len(), b.len(), "mul_new: lengths");
    const CHUNK: usize = 16 * 1024;
    let mut out = Vec::with_capacity(a.len());
    out.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| mul_chunk(a, b, o));
    // SAFETY: the chunks cover the first a.len() slots and mul_chunk writes each of them.
    unsafe { out.set_len(a.len()) };
    out
}

/// A strided matrix inside a slice: element `(r, c)` is at `offset + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// A row-major block of `rows` x `cols` whose rows are `rs` apart.
    pub(crate) fn rows(offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The same elements seen transposed.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst = [dst +] alpha * lhs @ rhs` on strided views, with the `gemm` crate candle itself uses
/// (runtime-dispatched SIMD). Single-threaded: the callers parallelise over batch elements.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    dst: &mut [T],
    d: Mat,
    accumulate: bool,
    lhs: &[T],
    l: Mat,
    rhs: &[T],
    r: Mat,
    alpha: T,
) {
    matmul_with(
        dst,
        d,
        accumulate,
        lhs,
        l,
        rhs,
        r,
        alpha,
        gemm::Parallelism::None,
    )
}

/// [`matmul`] on all of rayon's threads, for one large product (gemm splits it into blocks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_par<T: Real>(
    dst: &mut [T],
    d: Mat,
    accumulate: bool,
    lhs: &[T],
    l: Mat,
    rhs: &[T],
    r: Mat,
    alpha: T,
) {
    matmul_with(dst, d, accumulate, lhs, l, rhs, r, alpha, parallelism())
}

#[allow(clippy::too_many_arguments)]
fn matmul_with<T: Real>(
    dst: &mut [T],
    d: Mat,
    accumulate: bool,
    lhs: &[T],
    l: Mat,
    rhs: &[T],
    r: Mat,
    alpha: T,
    parallelism: gemm::Parallelism,
) {
    assert!(d.fits(dst.len()), "matmul view out of bounds");
    // SAFETY: `d` lies inside `dst` (checked above), which is borrowed mutably, so it cannot alias
    // `lhs` or `rhs`.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            d,
            accumulate,
            lhs,
            l,
            rhs,
            r,
            alpha,
            parallelism,
        )
    }
}

/// `alpha * lhs @ rhs` as a new row-major `(l.rows, r.cols)` vector, on all of rayon's threads.
/// gemm writes every element once; a `vec![0; n]` first would be one more pass over the output
/// (memset was 5-6% of a step's CPU time).
pub(crate) fn matmul_new<T: Real>(lhs: &[T], l: Mat, rhs: &[T], r: Mat, alpha: T) -> Vec<T> {
    let (m, n) = (l.rows, r.cols);
    if m == 0 || n == 0 || l.cols == 0 {
        return vec![T::zero(); m * n];
    }
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the destination is the vector's own allocation of m·n elements, row-major with
    // row stride n, so the view fits; it cannot alias the inputs. With `accumulate = false`
    // gemm only writes it, and with m, n, k > 0 it writes every element, so all m·n elements
    // are initialised before `set_len`.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            Mat::rows(0, m, n, n),
            false,
            lhs,
            l,
            rhs,
            r,
            alpha,
            parallelism(),
        );
        dst.set_len(m * n);
    }
    dst
}

/// A destination that several tasks write disjoint parts of: the base pointer of one allocation
/// and its length, shared across rayon tasks. Every write goes through [`OutBuf::matmul`], which
/// checks that the block lies inside the allocation; the caller guarantees that blocks written by
/// different tasks do not overlap.
#[derive(Clone, Copy)]
pub(crate) struct OutBuf<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: an OutBuf is only a base pointer; tasks write disjoint blocks through it (the contract
// of `OutBuf::matmul`), and the allocation outlives the tasks (it is borrowed by `OutBuf::new`).
unsafe impl<T: Send> Send for OutBuf<T> {}
unsafe impl<T: Send> Sync for OutBuf<T> {}

impl<T: Real> OutBuf<T> {
    /// The spare capacity of `v` (`len` elements of it), to be written by matrix products.
    pub(crate) fn new(v: &mut Vec<T>, len: usize) -> Self {
        let spare = &mut v.spare_capacity_mut()[..len];
        Self {
            ptr: spare.as_mut_ptr().cast(),
            len,
        }
    }

    /// `block = alpha * lhs @ rhs` (single-threaded), overwriting every element of `block`
    /// without reading it (so the memory may be uninitialised).
    ///
    /// # Safety
    /// No other task may access `block`'s elements at the same time, and the `Vec` this buffer
    /// was made from must be alive and not moved.
    pub(crate) unsafe fn matmul(&self, block: Mat, lhs: &[T], l: Mat, rhs: &[T], r: Mat, alpha: T) {
        assert!(block.fits(self.len), "matmul view out of bounds");
        if l.cols == 0 {
            // An empty inner dimension: gemm_raw returns without writing, the product is zeros.
            for i in 0..block.rows {
                for j in 0..block.cols {
                    // SAFETY: inside the allocation (the block fits), not shared (our contract).
                    unsafe {
                        self.ptr
                            .add(block.offset + i * block.rs + j * block.cs)
                            .write(T::zero())
                    };
                }
            }
            return;
        }
        // SAFETY: `block` lies inside the allocation (checked above), which cannot alias `lhs` or
        // `rhs` (it was borrowed mutably by `new`), and no other task touches it (our contract).
        // With `accumulate = false` and a non-empty inner dimension gemm writes every element of
        // the block and reads none.
        unsafe {
            gemm_raw(
                self.ptr,
                block,
                false,
                lhs,
                l,
                rhs,
                r,
                alpha,
                gemm::Parallelism::None,
            )
        }
    }
}

fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// # Safety
/// `d` must address memory inside one allocation that `dst` may write, not overlapping `lhs` or
/// `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Real>(
    dst: *mut T,
    d: Mat,
    accumulate: bool,
    lhs: &[T],
    l: Mat,
    rhs: &[T],
    r: Mat,
    alpha: T,
    parallelism: gemm::Parallelism,
) {
    // Internal invariants (shapes were checked at the op boundary); they guard the unsafe call.
    assert!(
        l.rows == d.rows && r.cols == d.cols && l.cols == r.rows,
        "matmul shapes {d:?} {l:?} {r:?}"
    );
    assert!(
        l.fits(lhs.len()) && r.fits(rhs.len()),
        "matmul view out of bounds"
    );
    if d.rows == 0 || d.cols == 0 || l.cols == 0 {
        return;
    }
    // SAFETY: the input views lie inside their slices (checked above); the destination is the
    // caller's contract.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.offset),
            r.cs as isize,
            r.rs as isize,
            T::one(),
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `sum(a)` with eight accumulators (see [`dot`]).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(crate) fn sum<T: Real>(a: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    for c in a.chunks_exact(8) {
        let c = lanes(c);
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut tail = T::zero();
    for &v in a.chunks_exact(8).remainder() {
        tail += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `max(a)` (`-inf` for an empty slice) with eight lanes; NaNs are skipped as `f32::max` does.
#[inline(always)]
pub(crate) fn max<T: Real>(a: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    for c in a.chunks_exact(8) {
        let c = lanes(c);
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = T::neg_infinity();
    for &v in acc.iter().chain(a.chunks_exact(8).remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

/// Whether this CPU can run the AVX2 + FMA versions of the kernels (checked by std, cached).
#[inline(always)]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a kernel function twice: for the baseline target and, on x86-64, with AVX2 + FMA enabled,
/// choosing at run time. Rust builds for baseline x86-64 (SSE2) by default, so without this the
/// element loops run at a quarter of the vector width gemm (which dispatches the same way) gets.
/// The body is `#[inline(always)]` so the helpers it calls are compiled inside each version; bodies
/// use plain index loops, because iterator adapters taking closures (`for_each`, `fold`) are separate
/// functions that LLVM may leave out of line, compiled for the baseline.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: Real>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$T: $crate::cpu::Real>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::needless_range_loop)] // index loops on purpose, see above
            fn imp<$T: $crate::cpu::Real>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$T: $crate::cpu::Real>($($arg: $ty),*) $(-> $ret)? {
                    imp::<$T>($($arg),*)
                }
                if $crate::cpu::has_avx2() {
                    // SAFETY: the CPU supports the enabled features (checked just above).
                    return unsafe { avx2::<$T>($($arg),*) };
                }
            }
            imp::<$T>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in 0..=200_000 {
            // Compare at the f32 input itself: rounding x to f32 alone moves exp(x) by up to 5e-6.
            let x = (-87.0 + 175.0 * i as f64 / 200_000.0) as f32 as f64;
            let e = (exp_f32(x as f32) as f64 - x.exp()).abs() / x.exp();
            worst_exp = worst_exp.max(e);
            let y = (-6.0 + 12.0 * i as f64 / 200_000.0) as f32 as f64;
            let want = candle_core::cpu::erf::erf_f64(y);
            worst_erf = worst_erf.max((erf_f32(y as f32) as f64 - want).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf:e}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::INFINITY), exp_f32(88.7));
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(10.0), erf_f32(4.0));
        assert!(erf_f32(f32::NAN).is_nan());
        // Relative accuracy near zero, where erf(x) ≈ 2x/√π.
        let tiny = 1e-20f32;
        assert!(
            (erf_f32(tiny) as f64 / (tiny as f64 * std::f64::consts::FRAC_2_SQRT_PI) - 1.0).abs()
                < 1e-6
        );
    }

    #[test]
    fn reductions_match_naive_sums() {
        let v: Vec<f64> = (0..37).map(|i| (i as f64 * 0.7).sin()).collect();
        let naive: f64 = v.iter().sum();
        assert!((sum(&v) - naive).abs() < 1e-12);
        assert!((dot(&v, &v) - v.iter().map(|x| x * x).sum::<f64>()).abs() < 1e-12);
        assert_eq!(max(&v), v.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        assert_eq!(max::<f64>(&[]), f64::NEG_INFINITY);
    }
}
