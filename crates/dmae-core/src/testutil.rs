//! Helpers for the unit tests: seeded random tensors and comparisons.

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::gradcheck::{self, Options};

/// A (seeded) standard-normal-ish tensor in f64 on the CPU.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    // Sum of uniforms: close enough to normal for test inputs, and dependency-free.
    let v: Vec<f64> = (0..n)
        .map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches data")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    a.sub(&b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Finite-difference check of `f` with tight f64 tolerances.
pub fn assert_grads<F>(f: F, inputs: &[Tensor])
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let report = gradcheck::check(f, inputs, Options::default()).expect("gradcheck ran");
    if let Err(e) = report.ensure(1e-7, 1e-6) {
        panic!("gradient check failed: {e}\n{report:?}");
    }
}

/// Forward and backward of `ours` and `reference` agree (f32, weighted-sum loss).
pub fn assert_matches_reference<F, G>(ours: F, reference: G, inputs: &[Tensor], tol: f64)
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    G: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
        let vars: Vec<_> = inputs
            .iter()
            .map(|t| {
                if t.dtype().is_float() {
                    Some(candle_core::Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap())
                } else {
                    None
                }
            })
            .collect();
        let args: Vec<Tensor> = inputs
            .iter()
            .zip(&vars)
            .map(|(t, v)| {
                v.as_ref()
                    .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
            })
            .collect();
        let out = f(&args).unwrap();
        let w = randn(out.dims(), 99).to_dtype(DType::F32).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Option<Tensor>> = vars
            .iter()
            .map(|v| {
                v.as_ref().map(|v| {
                    grads
                        .get(v.as_tensor())
                        .expect("gradient reached input")
                        .clone()
                })
            })
            .collect();
        (out, g)
    };
    let (out_a, g_a) = run(&ours);
    let (out_b, g_b) = run(&reference);
    let d = max_abs_diff(&out_a, &out_b);
    assert!(
        d < tol,
        "forward differs from the candle composition by {d:e}"
    );
    for (i, (a, b)) in g_a.iter().zip(&g_b).enumerate() {
        if let (Some(a), Some(b)) = (a, b) {
            let d = max_abs_diff(a, b);
            assert!(
                d < tol,
                "gradient of input {i} differs from the candle composition by {d:e}"
            );
        }
    }
}
