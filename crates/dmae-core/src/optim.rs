//! The optimisation recipe around [`AdamW`](crate::AdamW), MAE's `main_pretrain.py` /
//! `main_finetune.py` scaled down: the linear learning-rate scaling rule, warm-up then half a
//! cosine, global-norm gradient clipping, gradient accumulation, a weight EMA, and f32 master
//! weights for low-precision compute ([`MasterWeights`]).
//!
//! Everything here works on candle tensors on any device and never reads a value back to the
//! host, so a training loop built from it synchronises only where it chooses to.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{invalid, Result};

const OP: &str = "optim";

/// MAE's learning rate per optimiser step: the linear scaling rule, then linear warm-up and
/// half a cosine down to 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The learning rate after warm-up, `base_lr × effective batch / 256`.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Optimiser steps of the whole run.
    pub total: u64,
}

impl LrSchedule {
    /// The schedule of `total` steps with `warmup` steps of warm-up, for a base learning rate
    /// per 256 images and an effective batch of `batch_size × accum_steps` images (MAE's
    /// `lr = blr × eff_batch_size / 256`; MAE also multiplies by the number of GPUs).
    pub fn new(
        base_lr: f64,
        batch_size: usize,
        accum_steps: usize,
        warmup: u64,
        total: u64,
    ) -> Self {
        Self {
            peak: base_lr * (batch_size * accum_steps) as f64 / 256.0,
            warmup,
            total,
        }
    }

    /// MAE's `adjust_learning_rate` at 0-based optimiser step `step`: `peak · (step + 1) /
    /// warmup` during warm-up, then `peak · ½ (1 + cos(π · progress))`.
    ///
    /// One departure: warm-up uses `(step + 1) / warmup`, so step 0 already moves the weights
    /// (MAE's `step / warmup` spends the first step at lr 0).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / decay_steps as f64).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// `‖g‖₂` over every gradient of `vars` present in `grads`: a scalar f32 tensor on the
/// device (0 when no variable has a gradient).
pub fn global_grad_norm(grads: &GradStore, vars: &[Var]) -> Result<Tensor> {
    let mut sq: Option<Tensor> = None;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            sq = Some(match sq {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    Ok(match sq {
        Some(s) => s.sqrt()?,
        None => {
            let dev = vars
                .first()
                .map_or(&candle_core::Device::Cpu, |v| v.device());
            Tensor::new(0f32, dev)?
        }
    })
}

/// The factor global-norm clipping multiplies every gradient by,
/// `min(1, max_norm / (‖g‖ + 1e-6))` (PyTorch's `clip_grad_norm_`, as MAE's `NativeScaler`),
/// computed on the device: `max_norm / max(‖g‖ + 1e-6, max_norm)`.
pub fn clip_factor(grad_norm: &Tensor, max_norm: f64) -> Result<Tensor> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(invalid(
            OP,
            format!("max_norm must be positive, got {max_norm}"),
        ));
    }
    Ok(((grad_norm + 1e-6)?.maximum(max_norm)?.recip()? * max_norm)?)
}

/// Multiplies every gradient of `vars` by the scalar tensor `factor`, in place.
pub fn scale_grads(grads: &mut GradStore, vars: &[Var], factor: &Tensor) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            let f = factor.to_dtype(g.dtype())?;
            grads.insert(v.as_tensor(), g.broadcast_mul(&f)?);
        }
    }
    Ok(())
}

/// Gradient accumulation: adds the gradients of `vars` in `more` into `acc`.
pub fn accumulate(acc: &mut GradStore, mut more: GradStore, vars: &[Var]) -> Result<()> {
    for v in vars {
        if let Some(g) = more.remove(v.as_tensor()) {
            let sum = match acc.remove(v.as_tensor()) {
                Some(a) => (a + g)?,
                None => g,
            };
            acc.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// An exponential moving average of weights, `ema ← d·ema + (1 − d)·w` after every optimiser
/// step (not part of MAE's recipe; common for sampling from diffusion models).
#[derive(Clone, Debug)]
pub struct Ema {
    /// The decay `d` in (0, 1).
    pub decay: f64,
    /// The averaged copies, one per tracked weight.
    pub vars: Vec<Var>,
}

impl Ema {
    /// Tracks weights into `vars` (their current values are the starting average).
    pub fn new(decay: f64, vars: Vec<Var>) -> Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            return Err(invalid(
                OP,
                format!("EMA decay must be in (0, 1), got {decay}"),
            ));
        }
        Ok(Self { decay, vars })
    }

    /// One update from `weights` (parallel to [`Ema::vars`]).
    pub fn update(&self, weights: &[Var]) -> Result<()> {
        if weights.len() != self.vars.len() {
            return Err(invalid(
                OP,
                format!(
                    "{} weights for {} EMA tensors",
                    weights.len(),
                    self.vars.len()
                ),
            ));
        }
        for (e, w) in self.vars.iter().zip(weights) {
            let next = ((e.as_tensor() * self.decay)? + (w.as_tensor() * (1.0 - self.decay))?)?;
            e.set(&next)?;
        }
        Ok(())
    }
}

/// f32 master weights behind low-precision (e.g. bf16) working weights: the forward and
/// backward pass run on the working copy, the optimiser updates the masters from f32 copies of
/// the gradients, and the working copy is refreshed from the masters after every step.
#[derive(Clone, Debug)]
pub struct MasterWeights {
    pairs: Vec<(Var, Var)>,
}

impl MasterWeights {
    /// Pairs each working variable with its f32 master (same shapes, in order).
    pub fn new(work: &[Var], masters: &[Var]) -> Result<Self> {
        if work.len() != masters.len() {
            return Err(invalid(
                OP,
                format!(
                    "{} working weights for {} masters",
                    work.len(),
                    masters.len()
                ),
            ));
        }
        for (i, (w, m)) in work.iter().zip(masters).enumerate() {
            if w.dims() != m.dims() || m.dtype() != DType::F32 {
                return Err(invalid(
                    OP,
                    format!(
                        "weight {i}: working {:?} {:?}, master {:?} {:?} (want the same shape, f32 master)",
                        w.dims(),
                        w.dtype(),
                        m.dims(),
                        m.dtype()
                    ),
                ));
            }
        }
        Ok(Self {
            pairs: work.iter().cloned().zip(masters.iter().cloned()).collect(),
        })
    }

    /// f32 masters made from the working weights' current values.
    pub fn from_work(work: &[Var]) -> Result<Self> {
        let masters = work
            .iter()
            .map(|w| Ok(Var::from_tensor(&w.as_tensor().to_dtype(DType::F32)?)?))
            .collect::<Result<Vec<_>>>()?;
        Self::new(work, &masters)
    }

    /// The master weights, in order.
    pub fn masters(&self) -> Vec<Var> {
        self.pairs.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Re-keys the working weights' gradients to their masters, cast to f32.
    pub fn to_masters(&self, grads: &mut GradStore) -> Result<()> {
        for (w, m) in &self.pairs {
            if let Some(g) = grads.remove(w.as_tensor()) {
                grads.insert(m.as_tensor(), g.to_dtype(DType::F32)?);
            }
        }
        Ok(())
    }

    /// Copies the masters into the working weights (after an optimiser step).
    pub fn refresh_work(&self) -> Result<()> {
        for (w, m) in &self.pairs {
            w.set(&m.as_tensor().to_dtype(w.dtype())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lr_warms_up_linearly_then_follows_half_a_cosine_to_zero() {
        let s = LrSchedule {
            peak: 1e-3,
            warmup: 10,
            total: 100,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        // Half way through the decay: cos(π/2) = 0, so peak / 2.
        assert!((s.at(55) - 5e-4).abs() < 1e-12);
        assert!(s.at(99) < 1e-6);
        assert!(s.at(100).abs() < 1e-15);
        assert_eq!(LrSchedule { warmup: 0, ..s }.at(0), 1e-3);
        let lrs: Vec<f64> = (10..100).map(|t| s.at(t)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "decay is monotone");
        assert_eq!(LrSchedule::new(1.5e-4, 64, 4, 0, 1).peak, 1.5e-4);
        assert_eq!(LrSchedule::new(1e-3, 128, 1, 0, 1).peak, 5e-4);
    }

    #[test]
    fn clipping_rescales_to_the_max_norm_only_when_above_it() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[0f32, 0.], &dev)?;
        let b = Var::new(&[0f32], &dev)?;
        // loss = 3a0 + 4b0 -> gradients (3, 0) and (4): norm 5.
        let loss = ((a.as_tensor().narrow(0, 0, 1)? * 3.)? + (b.as_tensor() * 4.)?)?.sum_all()?;
        let vars = [a.clone(), b.clone()];
        let mut g = loss.backward()?;
        let norm = global_grad_norm(&g, &vars)?;
        assert!((norm.to_scalar::<f32>()? - 5.0).abs() < 1e-6);
        let f = clip_factor(&norm, 1.0)?;
        assert!((f.to_scalar::<f32>()? - 0.2).abs() < 1e-6);
        scale_grads(&mut g, &vars, &f)?;
        let after = global_grad_norm(&g, &vars)?.to_scalar::<f32>()?;
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        // Below the threshold nothing changes.
        let f = clip_factor(&norm, 10.0)?.to_scalar::<f32>()?;
        assert!((f - 1.0).abs() < 1e-6, "{f}");
        assert!(clip_factor(&norm, f64::NAN).is_err());
        Ok(())
    }

    #[test]
    fn accumulation_sums_and_ema_interpolates() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.], &dev)?;
        let vars = [w.clone()];
        let g1 = (w.as_tensor() * 2.)?.sum_all()?.backward()?;
        let g2 = (w.as_tensor() * 3.)?.sum_all()?.backward()?;
        let mut acc = g1;
        accumulate(&mut acc, g2, &vars)?;
        assert_eq!(
            acc.get(w.as_tensor()).unwrap().to_vec1::<f32>()?,
            vec![5., 5.]
        );
        let ema = Ema::new(0.75, vec![Var::new(&[0f32, 0.], &dev)?])?;
        ema.update(&vars)?;
        assert_eq!(ema.vars[0].as_tensor().to_vec1::<f32>()?, vec![0.25, 0.5]);
        assert!(Ema::new(1.0, vec![]).is_err());
        Ok(())
    }

    #[test]
    fn master_weights_move_gradients_to_f32_and_refresh_the_working_copy() -> Result<()> {
        let dev = Device::Cpu;
        let work = Var::new(&[1f64, 2.], &dev)?;
        let mw = MasterWeights::from_work(std::slice::from_ref(&work))?;
        let master = mw.masters()[0].clone();
        assert_eq!(master.dtype(), DType::F32);
        let mut g = (work.as_tensor() * 3.)?.sum_all()?.backward()?;
        mw.to_masters(&mut g)?;
        assert!(g.get(work.as_tensor()).is_none());
        assert_eq!(
            g.get(master.as_tensor()).unwrap().to_vec1::<f32>()?,
            vec![3., 3.]
        );
        master.set(&Tensor::new(&[5f32, 6.], &dev)?)?;
        mw.refresh_work()?;
        assert_eq!(work.as_tensor().to_vec1::<f64>()?, vec![5., 6.]);
        assert!(MasterWeights::new(&[work], &[]).is_err());
        Ok(())
    }
}
