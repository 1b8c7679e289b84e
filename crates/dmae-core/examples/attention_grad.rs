//! Checks the gradient of [`dmae_core::attention`] two ways and prints the largest errors:
//!
//! 1. against central finite differences in f64 ([`dmae_core::gradcheck::check`]), for q, k and v
//!    of a masked cross-attention (`Lq != Lk`);
//! 2. against the same function composed from plain candle ops ([`dmae_core::reference::attention`]),
//!    in f32, forward and backward.
//!
//! `cargo run --release -p dmae-core --example attention_grad` (well under a second). It exits with
//! an error if any difference exceeds its tolerance.

use candle_core::{DType, Device, Tensor, Var};
use dmae_core::gradcheck::{self, Options};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Batch, query tokens, key tokens, heads, head dim.
const SHAPE: (usize, usize, usize, usize, usize) = (2, 5, 7, 2, 8);

/// A seeded standard-normal-ish tensor (sum of uniforms), so every run prints the same numbers.
fn randn(shape: &[usize], dtype: DType, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    a.to_dtype(DType::F64)?
        .sub(&b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, lq, lk, h, d) = SHAPE;
    let scale = 1.0 / (d as f64).sqrt();
    let mut rng = StdRng::seed_from_u64(11);
    // Additive mask (Lq, Lk): the last key is hidden from every query, a common padding pattern.
    let mut mask = vec![0f64; lq * lk];
    for row in mask.chunks_mut(lk) {
        row[lk - 1] = f64::NEG_INFINITY;
    }
    let mask = Tensor::from_vec(mask, (lq, lk), &Device::Cpu)?;

    // 1. Finite differences, f64.
    let q = randn(&[n, lq, h, d], DType::F64, &mut rng)?;
    let k = randn(&[n, lk, h, d], DType::F64, &mut rng)?;
    let v = randn(&[n, lk, h, d], DType::F64, &mut rng)?;
    let report = gradcheck::check(
        |x| {
            Ok(dmae_core::attention(
                &x[0],
                &x[1],
                &x[2],
                Some(&mask),
                scale,
            )?)
        },
        &[q, k, v],
        Options {
            max_elems: usize::MAX,
            ..Options::default()
        },
    )?;
    println!("attention (N, Lq, Lk, H, D) = {SHAPE:?}, masked cross-attention");
    println!("finite differences (f64, central, h = 1e-6):");
    for (name, r) in ["q", "k", "v"].iter().zip(&report.0) {
        println!(
            "  d{name}: {} elements, max abs err {:.2e}, max rel err {:.2e}",
            r.checked, r.max_abs_err, r.max_rel_err
        );
    }
    report.ensure(1e-6, 1e-5)?;

    // 2. Against the stock candle composition, f32, same loss sum(out * r).
    let [q, k, v] = [lq, lk, lk].map(|l| randn(&[n, l, h, d], DType::F32, &mut rng));
    let (q, k, v) = (
        Var::from_tensor(&q?)?,
        Var::from_tensor(&k?)?,
        Var::from_tensor(&v?)?,
    );
    let r = randn(&[n, lq, h, d], DType::F32, &mut rng)?;
    let mask = mask.to_dtype(DType::F32)?;
    let ours = dmae_core::attention(&q, &k, &v, Some(&mask), scale)?;
    let stock = dmae_core::reference::attention(&q, &k, &v, Some(&mask), scale)?;
    let g_ours = (&ours * &r)?.sum_all()?.backward()?;
    let g_stock = (&stock * &r)?.sum_all()?.backward()?;
    println!("ours vs stock candle composition (f32):");
    let out_err = max_abs_diff(&ours, &stock)?;
    println!("  output: max abs diff {out_err:.2e}");
    let mut worst = out_err;
    for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
        let (a, b) = match (g_ours.get(var), g_stock.get(var)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(format!("no gradient for {name}").into()),
        };
        let err = max_abs_diff(a, b)?;
        println!("  d{name}: max abs diff {err:.2e}");
        worst = worst.max(err);
    }
    if worst > 1e-4 {
        return Err(
            format!("ours and the stock composition differ by {worst:.2e} (> 1e-4)").into(),
        );
    }
    println!("ok");
    Ok(())
}
