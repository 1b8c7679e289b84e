//! The optimisation recipe shared by `train` and `finetune` (MAE's `main_pretrain.py` /
//! `main_finetune.py`, scaled down): learning-rate scaling and schedule, global-norm gradient
//! clipping, gradient accumulation, weight EMA, and the host-side loss bookkeeping that keeps the
//! loop free of per-step device synchronisation.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// MAE's linear scaling rule: `lr = base_lr × effective_batch / 256`, with
/// `effective_batch = batch_size × accum_steps` (MAE multiplies by the number of GPUs too).
pub fn scaled_lr(base_lr: f64, batch_size: usize, accum_steps: usize) -> f64 {
    base_lr * (batch_size * accum_steps) as f64 / 256.0
}

/// MAE's `adjust_learning_rate` per optimiser step (0-based `step` of `total`): linear warm-up
/// to `peak` over `warmup` steps, then half a cosine down to 0.
///
/// One departure: warm-up uses `(step + 1) / warmup`, so step 0 already moves the weights
/// (MAE's `step / warmup` spends the first step at lr 0).
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The factor global-norm clipping multiplies every gradient by:
/// `min(1, max_norm / (‖g‖ + 1e-6))` (PyTorch's `clip_grad_norm_`, as MAE's `NativeScaler`).
/// Computed on the device so that clipping needs no host round trip.
pub fn clip_factor(grad_norm: &Tensor, max_norm: f64) -> candle_core::Result<Tensor> {
    // max_norm / max(‖g‖ + 1e-6, max_norm) == min(1, max_norm / (‖g‖ + 1e-6)).
    (grad_norm + 1e-6)?.maximum(max_norm)?.recip()? * max_norm
}

/// `‖g‖₂` over every gradient of `vars` present in `grads` (a scalar f32 tensor on the device).
pub fn global_grad_norm(grads: &GradStore, vars: &[Var]) -> candle_core::Result<Tensor> {
    let mut sq: Option<Tensor> = None;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g.sqr()?.sum_all()?;
            sq = Some(match sq {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    match sq {
        Some(s) => s.sqrt(),
        None => Tensor::new(
            0f32,
            vars.first()
                .map_or(&candle_core::Device::Cpu, |v| v.device()),
        ),
    }
}

/// Multiplies every gradient of `vars` by the scalar tensor `factor` in place (clipping).
pub fn scale_grads(
    grads: &mut GradStore,
    vars: &[Var],
    factor: &Tensor,
) -> candle_core::Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), g.broadcast_mul(factor)?);
        }
    }
    Ok(())
}

/// Gradient accumulation: adds the gradients of `vars` in `more` into `acc`.
pub fn accumulate(acc: &mut GradStore, more: GradStore, vars: &[Var]) -> candle_core::Result<()> {
    let mut more = more;
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

/// Exponential moving average of the weights (`ema ← d·ema + (1 − d)·w` after every optimiser
/// step), the `--ema DECAY` option (not part of MAE's recipe; common for diffusion models).
pub fn ema_update(ema: &[Var], weights: &[Var], decay: f64) -> candle_core::Result<()> {
    for (e, w) in ema.iter().zip(weights) {
        let next = ((e.as_tensor() * decay)? + (w.as_tensor() * (1.0 - decay))?)?;
        e.set(&next)?;
    }
    Ok(())
}

/// Per-step losses not yet looked at, so that reading the loss back (a device sync) happens only
/// at log and save points while a non-finite loss is still reported with its exact step.
#[derive(Default)]
pub struct PendingLosses {
    on_device: Vec<(u64, Tensor)>,
    on_host: Vec<f64>,
}

impl PendingLosses {
    /// Records the (scalar, detached) loss of optimiser step `step` (1-based).
    pub fn push(&mut self, step: u64, loss: Tensor) {
        self.on_device.push((step, loss.detach()));
    }

    /// Reads the pending losses back in one transfer; returns the first step (1-based) whose
    /// loss is NaN or infinite, if any.
    pub fn sync(&mut self) -> Result<Option<u64>> {
        if self.on_device.is_empty() {
            return Ok(None);
        }
        let steps = std::mem::take(&mut self.on_device);
        let all = Tensor::stack(
            &steps
                .iter()
                .map(|(_, t)| t.to_dtype(candle_core::DType::F32)?.reshape(()))
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?
        .to_vec1::<f32>()?;
        if let Some(i) = all.iter().position(|l| !l.is_finite()) {
            return Ok(Some(steps[i].0));
        }
        self.on_host.extend(all.iter().map(|&l| l as f64));
        Ok(None)
    }

    /// The mean of the losses read back since the last call (after [`PendingLosses::sync`]).
    pub fn take_mean(&mut self) -> Option<f64> {
        let v = std::mem::take(&mut self.on_host);
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// Checks a user-supplied number: finite and within `[lo, hi]`.
pub fn check_range(flag: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if !value.is_finite() || value < lo || value > hi {
        bail!("{flag}: expected a number in [{lo}, {hi}], got {value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lr_warms_up_linearly_then_follows_half_a_cosine_to_zero() {
        let peak = 1e-3;
        assert!((lr_at(0, 100, 10, peak) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, peak) - peak).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, peak) - peak).abs() < 1e-12);
        // Half way through the decay: cos(π/2) = 0, so peak / 2.
        assert!((lr_at(55, 100, 10, peak) - peak / 2.0).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, peak) < peak * 1e-3);
        assert!(lr_at(100, 100, 10, peak).abs() < 1e-15);
        // No warm-up at all starts at the peak.
        assert_eq!(lr_at(0, 10, 0, peak), peak);
        let lrs: Vec<f64> = (10..100).map(|s| lr_at(s, 100, 10, peak)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "decay is monotone");
        assert_eq!(scaled_lr(1.5e-4, 64, 4), 1.5e-4);
        assert_eq!(scaled_lr(1e-3, 128, 1), 5e-4);
    }

    #[test]
    fn clipping_rescales_to_the_max_norm_only_when_above_it() {
        let dev = Device::Cpu;
        let a = Var::new(&[0f32, 0.], &dev).unwrap();
        let b = Var::new(&[0f32], &dev).unwrap();
        // loss = 3a0 + 4b0 -> gradients (3, 0) and (4): norm 5.
        let loss = ((a.as_tensor().narrow(0, 0, 1).unwrap() * 3.).unwrap()
            + (b.as_tensor() * 4.).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
        let vars = [a.clone(), b.clone()];
        let mut g = loss.backward().unwrap();
        let norm = global_grad_norm(&g, &vars).unwrap();
        assert!((norm.to_scalar::<f32>().unwrap() - 5.0).abs() < 1e-6);
        let f = clip_factor(&norm, 1.0).unwrap();
        assert!((f.to_scalar::<f32>().unwrap() - 0.2).abs() < 1e-6);
        scale_grads(&mut g, &vars, &f).unwrap();
        let after = global_grad_norm(&g, &vars)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        // Below the threshold nothing changes.
        let f = clip_factor(&norm, 10.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((f - 1.0).abs() < 1e-6, "{f}");
    }

    #[test]
    fn accumulation_sums_and_ema_interpolates() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.], &dev).unwrap();
        let vars = [w.clone()];
        let g1 = (w.as_tensor() * 2.)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (w.as_tensor() * 3.)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut acc = g1;
        accumulate(&mut acc, g2, &vars).unwrap();
        let got = acc.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, vec![5., 5.]);
        let e = Var::new(&[0f32, 0.], &dev).unwrap();
        ema_update(std::slice::from_ref(&e), &vars, 0.75).unwrap();
        assert_eq!(e.as_tensor().to_vec1::<f32>().unwrap(), vec![0.25, 0.5]);
    }

    #[test]
    fn pending_losses_report_the_first_non_finite_step() {
        let dev = Device::Cpu;
        let mut p = PendingLosses::default();
        assert_eq!(p.sync().unwrap(), None);
        assert_eq!(p.take_mean(), None);
        p.push(1, Tensor::new(1f32, &dev).unwrap());
        assert_eq!(p.sync().unwrap(), None);
        p.push(2, Tensor::new(3f32, &dev).unwrap());
        assert_eq!(p.sync().unwrap(), None);
        assert_eq!(p.take_mean(), Some(2.0));
        p.push(3, Tensor::new(1f32, &dev).unwrap());
        p.push(4, Tensor::new(f32::NAN, &dev).unwrap());
        p.push(5, Tensor::new(f32::INFINITY, &dev).unwrap());
        assert_eq!(p.sync().unwrap(), Some(4));
        assert!(check_range("--lr", f64::NAN, 0., 1.).is_err());
        assert!(check_range("--lr", 0.5, 0., 1.).is_ok());
    }
}
