//! GELU, in the exact (erf) form used by ViT/MAE and the tanh approximation, with backward.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Real};
use crate::error::{check_float, Result};

const OP: &str = "gelu";
const CHUNK: usize = 16 * 1024;

/// Which GELU formula.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Gelu {
    /// `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`: PyTorch's default, used by timm's ViT and MAE.
    #[default]
    Erf,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (Hendrycks & Gimpel's approximation).
    Tanh,
}

/// Element-wise GELU of `x`, differentiable.
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
    check_float(OP, "x", x.dtype(), x.device())?;
    Ok(crate::no_grad::finish(
        x.contiguous()?.apply_op1(GeluOp(kind))?,
    ))
}

struct GeluOp(Gelu);

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const TANH_C: f64 = 0.044_715;

/// `tanh(u) = 1 - 2 / (exp(2u) + 1)`, through the vectorisable `exp`; saturates correctly at +-inf.
#[inline(always)]
fn tanh<T: Real>(u: T) -> T {
    T::one() - cpu::c::<T>(2.0) / ((u + u).exp_fast() + T::one())
}

/// `gelu(x)` (the derivative half of [`value_and_derivative`] is dead code here and optimised out).
#[inline(always)]
fn value<T: Real>(kind: Gelu, x: T) -> T {
    value_and_derivative(kind, x).0
}

/// `d gelu / dx`.
#[inline(always)]
fn derivative<T: Real>(kind: Gelu, x: T) -> T {
    value_and_derivative(kind, x).1
}

cpu::multiversion! {
    fn forward_chunk<T: Real>(kind: Gelu, x: &[T], y: &mut [MaybeUninit<T>]) {
        let y = &mut y[..x.len()];
        // One loop per form, so each is a straight vectorisable loop.
        match kind {
            Gelu::Erf => {
                for i in 0..x.len() {
                    y[i].write(value(Gelu::Erf, x[i]));
                }
            }
            Gelu::Tanh => {
                for i in 0..x.len() {
                    y[i].write(value(Gelu::Tanh, x[i]));
                }
            }
        }
    }
}

cpu::multiversion! {
    fn backward_chunk<T: Real>(kind: Gelu, x: &[T], g: &[T], dx: &mut [MaybeUninit<T>]) {
        let (g, dx) = (&g[..x.len()], &mut dx[..x.len()]);
        match kind {
            Gelu::Erf => {
                for i in 0..x.len() {
                    dx[i].write(g[i] * derivative(Gelu::Erf, x[i]));
                }
            }
            Gelu::Tanh => {
                for i in 0..x.len() {
                    dx[i].write(g[i] * derivative(Gelu::Tanh, x[i]));
                }
            }
        }
    }
}

/// `(gelu(x), gelu'(x))`, sharing the transcendental part.
#[inline(always)]
fn value_and_derivative<T: Real>(kind: Gelu, x: T) -> (T, T) {
    let half = cpu::c::<T>(0.5);
    match kind {
        Gelu::Erf => {
            // Φ(x) = (1 + erf(x/√2)) / 2, φ(x) = exp(-x²/2)/√(2π); the value alone needs no `exp`.
            let cdf = half * (T::one() + (x * cpu::c(INV_SQRT_2)).erf());
            let gauss = (-half * x * x).exp_fast();
            (x * cdf, cdf + x * cpu::c::<T>(INV_SQRT_2PI) * gauss)
        }
        Gelu::Tanh => {
            let k = cpu::c::<T>(SQRT_2_OVER_PI);
            let tc = cpu::c::<T>(TANH_C);
            let t = tanh(k * (x + tc * x * x * x));
            let d = half * (T::one() + t)
                + half * x * (T::one() - t * t) * k * (T::one() + cpu::c::<T>(3.0) * tc * x * x);
            (half * x * (T::one() + t), d)
        }
    }
}

cpu::multiversion! {
    /// Rows of `y = gelu(x + b)` (and with `d`, `d = gelu'(x + b)`), `b` added to every row.
    fn forward_bias_chunk<T: Real>(
        kind: Gelu,
        x: &[T],
        b: &[T],
        y: &mut [MaybeUninit<T>],
        d: Option<&mut [MaybeUninit<T>]>,
    ) {
        let n = b.len();
        // One loop per form and per output set, so each is a straight vectorisable loop.
        match d {
            None => {
                for (x, y) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
                    let (x, y, b) = (&x[..n], &mut y[..n], &b[..n]);
                    match kind {
                        Gelu::Erf => {
                            for j in 0..n {
                                y[j].write(value(Gelu::Erf, x[j] + b[j]));
                            }
                        }
                        Gelu::Tanh => {
                            for j in 0..n {
                                y[j].write(value(Gelu::Tanh, x[j] + b[j]));
                            }
                        }
                    }
                }
            }
            Some(d) => {
                let rows = x.chunks_exact(n).zip(y.chunks_exact_mut(n)).zip(d.chunks_exact_mut(n));
                for ((x, y), d) in rows {
                    let (x, y, d, b) = (&x[..n], &mut y[..n], &mut d[..n], &b[..n]);
                    match kind {
                        Gelu::Erf => {
                            for j in 0..n {
                                let (v, g) = value_and_derivative(Gelu::Erf, x[j] + b[j]);
                                y[j].write(v);
                                d[j].write(g);
                            }
                        }
                        Gelu::Tanh => {
                            for j in 0..n {
                                let (v, g) = value_and_derivative(Gelu::Tanh, x[j] + b[j]);
                                y[j].write(v);
                                d[j].write(g);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `gelu(x + b)` for `x` of rows of `b.len()` elements, into a new vector, and with `with_grad`
/// its derivative `gelu'(x + b)` too: the bias of a linear layer added in the activation's pass
/// instead of a pass of its own (see `linear_gelu`).
pub(crate) fn forward_bias_new<T: Real>(
    kind: Gelu,
    x: &[T],
    b: &[T],
    with_grad: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let (n, cols) = (x.len(), b.len().max(1));
    assert_eq!(n % cols, 0, "gelu: rows of the bias's length");
    let chunk = cpu::rows_per_task(cols) * cols;
    let mut y = Vec::with_capacity(n);
    let mut d = with_grad.then(|| Vec::with_capacity(n));
    match d.as_mut() {
        Some(d) => y.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk)
            .zip(d.spare_capacity_mut()[..n].par_chunks_mut(chunk))
            .zip(x.par_chunks(chunk))
            .for_each(|((y, d), x)| forward_bias_chunk(kind, x, b, y, Some(d))),
        None => y.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| forward_bias_chunk(kind, x, b, y, None)),
    }
    // SAFETY: the chunks cover the first n slots of y (and d), whole rows each, and every slot
    // of every row is written.
    unsafe {
        y.set_len(n);
        if let Some(d) = d.as_mut() {
            d.set_len(n);
        }
    }
    (y, d)
}

/// `gelu(x)` element-wise into a new vector (each element written once, in parallel chunks).
fn forward_new<T: Real>(kind: Gelu, x: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(kind, x, y));
    // SAFETY: the chunks cover the first x.len() slots and forward_chunk writes each slot of its
    // chunk.
    unsafe { y.set_len(x.len()) };
    y
}

/// `dy · gelu'(x)` element-wise into a new vector; `dy` has `x`'s length.
fn backward_new<T: Real>(kind: Gelu, x: &[T], dy: &[T]) -> Vec<T> {
    assert_eq!(x.len(), dy.len(), "gelu backward: gradient length");
    let mut dx = Vec::with_capacity(x.len());
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| backward_chunk(kind, x, g, dx));
    // SAFETY: as in forward_new: every slot of every chunk is written.
    unsafe { dx.set_len(x.len()) };
    dx
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Real>(kind: Gelu, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
            let x = cpu::slice::<T>(s, l, OP)?;
            Ok(T::to_cpu_storage_owned(forward_new(kind, x)))
        }
        Ok((
            cpu::dispatch_float!(OP, s, run(self.0, s, l))?,
            l.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::gelu_fwd(s, l.start_offset(), l.shape().elem_count(), self.0)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let dx = match (&*xs, &*gs) {
            (Storage::Cpu(xs), Storage::Cpu(gs)) => {
                fn run<T: Real>(
                    kind: Gelu,
                    xs: &CpuStorage,
                    xl: &Layout,
                    gs: &CpuStorage,
                    gl: &Layout,
                ) -> candle_core::Result<Tensor> {
                    let x = cpu::slice::<T>(xs, xl, OP)?;
                    let dy = cpu::slice::<T>(gs, gl, OP)?;
                    Ok(cpu::tensor(backward_new(kind, x, dy), xl.shape()))
                }
                cpu::dispatch_float!(OP, xs, run(self.0, xs, xl, gs, gl))?
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(xs), Storage::Cuda(gs)) => {
                let n = xl.shape().elem_count();
                let dx =
                    crate::cuda::gelu_bwd(xs, xl.start_offset(), gs, gl.start_offset(), n, self.0)?;
                crate::cuda::tensor(dx, xl.shape())
            }
            _ => candle_core::bail!("{OP}: backward on an unsupported device mix"),
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn gradients_match_finite_differences() {
        for kind in [Gelu::Erf, Gelu::Tanh] {
            let f = move |t: &[Tensor]| gelu(&t[0], kind).map_err(Into::into);
            assert_grads(f, &[randn(&[3, 17], 1)]);
            let g = move |t: &[Tensor]| gelu(&t[0].t()?, kind).map_err(Into::into);
            assert_grads(g, &[randn(&[5, 3], 2)]);
        }
    }

    #[test]
    fn matches_candle_gelu() {
        for kind in [Gelu::Erf, Gelu::Tanh] {
            assert_matches_reference(
                move |t| gelu(&t[0], kind).map_err(Into::into),
                move |t| crate::reference::gelu(&t[0], kind),
                &[randn(&[64, 13, 768], 3)],
                2e-5,
            );
        }
    }

    /// `gelu(x + b)` with the bias added in the activation's pass equals GELU of the sum, and its
    /// derivative the separate derivative, bit for bit.
    #[test]
    fn bias_in_the_activation_pass_is_exact() {
        let x: Vec<f32> = (0..7 * 37)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let b: Vec<f32> = (0..37).map(|j| (j as f32 - 18.0) / 7.0).collect();
        let sum: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + b[i % 37]).collect();
        for kind in [Gelu::Erf, Gelu::Tanh] {
            let (y, d) = forward_bias_new(kind, &x, &b, true);
            assert_eq!(y, forward_new(kind, &sum));
            assert_eq!(y, forward_bias_new(kind, &x, &b, false).0);
            let ones = vec![1.0f32; sum.len()];
            assert_eq!(d.unwrap(), backward_new(kind, &sum, &ones));
        }
    }

    #[test]
    fn known_values() {
        let x = Tensor::new(&[-3.0f64, -1.0, 0.0, 1.0, 3.0], &candle_core::Device::Cpu).unwrap();
        let y = gelu(&x, Gelu::Erf).unwrap().to_vec1::<f64>().unwrap();
        // x * Phi(x), Phi from tables.
        let want = [
            -0.004_049_694,
            -0.158_655_254,
            0.0,
            0.841_344_746,
            2.995_950_306,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }
}
