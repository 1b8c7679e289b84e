//! Finite-difference gradient checking, for this crate's tests and for any crate building on it.
//!
//! The scalar checked is `L = sum(f(inputs) * r)` with `r` fixed pseudo-random weights, so every output
//! element contributes with its own weight (a plain sum would hide errors that cancel across a row,
//! e.g. in softmax, whose outputs always sum to one). Each analytic `dL/dx` is compared with the central
//! difference `(L(x + h) - L(x - h)) / 2h` in f64.

use candle_core::{DType, Device, Result, Tensor, Var};

/// How to check.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Step `h` of the central difference.
    pub step: f64,
    /// At most this many elements per input are perturbed (chosen pseudo-randomly); all if fewer.
    pub max_elems: usize,
    /// Seed of the output weights and of the element choice.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            step: 1e-6,
            max_elems: 48,
            seed: 0x5eed,
        }
    }
}

/// The comparison for one input.
#[derive(Clone, Debug)]
pub struct InputReport {
    /// Position of the input in the slice given to [`check`].
    pub input: usize,
    /// Elements compared.
    pub checked: usize,
    /// Largest `|analytic - numeric|`.
    pub max_abs_err: f64,
    /// Largest `|analytic - numeric| / max(|analytic|, |numeric|, 1e-3)`.
    pub max_rel_err: f64,
    /// Whether autograd produced a gradient for this input at all.
    pub has_grad: bool,
}

/// Reports of every float input.
#[derive(Clone, Debug)]
pub struct Report(pub Vec<InputReport>);

impl Report {
    /// `Err` describing the first input whose gradient is missing or off by more than
    /// `atol + rtol * |numeric|` somewhere.
    pub fn ensure(&self, atol: f64, rtol: f64) -> std::result::Result<(), String> {
        for r in &self.0 {
            if !r.has_grad {
                return Err(format!("input {}: no gradient reached it", r.input));
            }
            if r.max_abs_err > atol && r.max_rel_err > rtol {
                return Err(format!(
                    "input {}: max abs err {:.3e}, max rel err {:.3e} over {} elements (atol {atol:.0e}, rtol {rtol:.0e})",
                    r.input, r.max_abs_err, r.max_rel_err, r.checked
                ));
            }
        }
        Ok(())
    }
}

/// SplitMix64: a tiny deterministic generator, so this module needs no RNG dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// Checks the gradients `f` produces for every f64 input against central differences.
///
/// `inputs` are CPU tensors; f64 ones are checked, others (e.g. u32 indices) are passed through.
/// `f` may apply any view ops (transpose, broadcast, narrow) before the op under test, which is how
/// non-contiguous and broadcast inputs are exercised.
pub fn check<F>(f: F, inputs: &[Tensor], opts: Options) -> Result<Report>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let mut rng = SplitMix(opts.seed);
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .map(|t| {
            if t.dtype() == DType::F64 {
                Var::from_tensor(t).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_>>()?;
    let tracked: Vec<Tensor> = inputs
        .iter()
        .zip(&vars)
        .map(|(t, v)| {
            v.as_ref()
                .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
        })
        .collect();
    let out = f(&tracked)?;
    let weights: Vec<f64> = (0..out.elem_count()).map(|_| rng.unit()).collect();
    let r = Tensor::from_vec(weights, out.shape(), &Device::Cpu)?;
    let loss = |out: &Tensor| -> Result<f64> {
        (out.to_dtype(DType::F64)? * &r)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let grads = (out.to_dtype(DType::F64)? * &r)?.sum_all()?.backward()?;

    let mut reports = Vec::new();
    for (i, var) in vars.iter().enumerate() {
        let Some(var) = var else { continue };
        let grad = grads.get(var.as_tensor());
        let has_grad = grad.is_some();
        let analytic: Vec<f64> = match grad {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; var.elem_count()],
        };
        let base: Vec<f64> = inputs[i].flatten_all()?.to_vec1()?;
        let n = base.len();
        let elems: Vec<usize> = if n <= opts.max_elems {
            (0..n).collect()
        } else {
            (0..opts.max_elems)
                .map(|_| (rng.next() % n as u64) as usize)
                .collect()
        };
        let (mut max_abs, mut max_rel) = (0f64, 0f64);
        for &e in &elems {
            let eval = |delta: f64| -> Result<f64> {
                let mut x = base.clone();
                x[e] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(x, inputs[i].shape(), &Device::Cpu)?;
                loss(&f(&args)?)
            };
            let numeric = (eval(opts.step)? - eval(-opts.step)?) / (2.0 * opts.step);
            let err = (analytic[e] - numeric).abs();
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / analytic[e].abs().max(numeric.abs()).max(1e-3));
        }
        reports.push(InputReport {
            input: i,
            checked: elems.len(),
            max_abs_err: max_abs,
            max_rel_err: max_rel,
            has_grad,
        });
    }
    Ok(Report(reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::randn;

    #[test]
    fn catches_a_wrong_gradient() {
        // d/dx (x * detach(x)) is x according to autograd, 2x in truth: the checker must object.
        let wrong = |t: &[Tensor]| t[0].mul(&t[0].detach());
        let report = check(wrong, &[randn(&[4, 3], 1)], Options::default()).unwrap();
        assert!(report.ensure(1e-7, 1e-6).is_err());
        let right = |t: &[Tensor]| t[0].sqr();
        let report = check(right, &[randn(&[4, 3], 1)], Options::default()).unwrap();
        report.ensure(1e-7, 1e-6).unwrap();
    }

    #[test]
    fn reports_inputs_the_gradient_never_reaches() {
        let cut = |t: &[Tensor]| t[0].detach().exp();
        let report = check(cut, &[randn(&[3], 2)], Options::default()).unwrap();
        let err = report.ensure(1.0, 1.0).unwrap_err();
        assert!(err.contains("no gradient"), "{err}");
    }
}
