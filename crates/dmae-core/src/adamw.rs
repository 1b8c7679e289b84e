//! AdamW (Loshchilov & Hutter) with decoupled weight decay and bias correction, one fused in-place
//! kernel per parameter tensor (the moments are read and written once per step).
//!
//! The update is PyTorch's `torch.optim.AdamW` for step `t` (1-based):
//! ```text
//! p <- p * (1 - lr * wd)
//! m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
//! p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! Each parameter may carry its own weight decay (MAE excludes norms, biases and embeddings) and a
//! learning-rate scale (layer-wise lr decay in fine-tuning).

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{invalid, shape_mismatch, Error, Result};

const OP: &str = "adamw";
const CHUNK: usize = 16 * 1024;

/// Hyper-parameters shared by all parameters. Defaults are MAE's pre-training values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (before each parameter's `lr_scale`).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Default decoupled weight decay, for parameters added without their own.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1.5e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// One optimised tensor and its per-parameter options.
#[derive(Clone, Debug)]
pub struct Param {
    /// The f32 master weights.
    pub var: Var,
    /// Decoupled weight decay for this tensor (0 for norms, biases, embeddings).
    pub weight_decay: f64,
    /// Multiplies the learning rate (layer-wise decay); 1 by default.
    pub lr_scale: f64,
}

impl Param {
    /// A parameter with the given weight decay and lr scale 1.
    pub fn new(var: Var, weight_decay: f64) -> Self {
        Self {
            var,
            weight_decay,
            lr_scale: 1.0,
        }
    }
}

/// The step's scalars, as the kernels take them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWHyper {
    /// `lr * lr_scale`.
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 - beta1^t`.
    pub bias_correction1: f32,
    /// `1 - beta2^t`.
    pub bias_correction2: f32,
}

/// First and second moments of one parameter, on its device.
enum Moments {
    Cpu {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaMoments),
}

impl Moments {
    fn zeros(device: &Device, n: usize) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::Cpu {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Ok(Self::Cuda(crate::cuda::moments_zeros(dev, n)?)),
            other => Err(invalid(OP, format!("unsupported device {other:?}"))),
        }
    }

    fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Cpu { m, v } => Ok((
                Tensor::from_slice(m, m.len(), device)?,
                Tensor::from_slice(v, v.len(), device)?,
            )),
            #[cfg(feature = "cuda")]
            Self::Cuda(mo) => Ok(crate::cuda::moments_to_tensors(mo)?),
        }
    }

    fn from_tensors(m: &Tensor, v: &Tensor) -> Result<Self> {
        match m.device() {
            Device::Cpu => Ok(Self::Cpu {
                m: m.flatten_all()?.to_vec1()?,
                v: v.flatten_all()?.to_vec1()?,
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(crate::cuda::moments_from_tensors(m, v)?)),
            other => Err(invalid(OP, format!("unsupported device {other:?}"))),
        }
    }
}

struct Slot {
    param: Param,
    moments: Moments,
}

/// AdamW over a set of f32 parameters. See the module docs for the update.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// An optimiser over `params` (f32, contiguous, on one CPU or CUDA device), moments at zero.
    pub fn new(params: Vec<Param>, config: AdamWConfig) -> Result<Self> {
        check_config(&config)?;
        let slots = params
            .into_iter()
            .enumerate()
            .map(|(i, param)| {
                let t = param.var.as_tensor();
                if t.dtype() != DType::F32 {
                    return Err(Error::DType {
                        op: OP,
                        what: format!("parameter {i}"),
                        got: t.dtype(),
                        expected: "f32 master weights".into(),
                    });
                }
                if !t.is_contiguous() {
                    return Err(invalid(OP, format!("parameter {i} is not contiguous")));
                }
                let moments = Moments::zeros(t.device(), t.elem_count())?;
                Ok(Slot { param, moments })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// Every variable with the config's weight decay.
    pub fn from_vars(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let wd = config.weight_decay;
        Self::new(
            vars.into_iter().map(|v| Param::new(v, wd)).collect(),
            config,
        )
    }

    /// The base learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    /// Sets the base learning rate (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters, in the order given.
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        self.slots.iter().map(|s| &s.param)
    }

    /// One update of every parameter that has a gradient in `grads` (others are left alone, and their
    /// moments do not decay: as in PyTorch, where a parameter without `.grad` is skipped).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let p = slot.param.var.as_tensor();
            let Some(g) = grads.get(p) else { continue };
            if g.shape() != p.shape() {
                return Err(shape_mismatch(
                    OP,
                    format!("gradient of parameter {i} vs parameter"),
                    g.shape(),
                    p.shape(),
                ));
            }
            if g.dtype() != DType::F32 {
                return Err(Error::DType {
                    op: OP,
                    what: format!("gradient of parameter {i}"),
                    got: g.dtype(),
                    expected: "f32".into(),
                });
            }
            let hyper = AdamWHyper {
                lr: (c.lr * slot.param.lr_scale) as f32,
                weight_decay: slot.param.weight_decay as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                bias_correction1: bc1 as f32,
                bias_correction2: bc2 as f32,
            };
            let g = g.contiguous()?;
            let kernel = Kernel {
                hyper,
                moments: Mutex::new(&mut slot.moments),
            };
            p.inplace_op2(&g, &kernel)?;
        }
        Ok(())
    }

    /// `(m, v)` of every parameter as flat f32 tensors on its device, for checkpoints.
    pub fn moments(&self) -> Result<Vec<(Tensor, Tensor)>> {
        self.slots
            .iter()
            .map(|s| s.moments.to_tensors(s.param.var.device()))
            .collect()
    }

    /// Restores the state saved with [`AdamW::moments`] and [`AdamW::step_count`].
    pub fn load_state(&mut self, step: u64, moments: &[(Tensor, Tensor)]) -> Result<()> {
        if moments.len() != self.slots.len() {
            return Err(invalid(
                OP,
                format!(
                    "state has {} moment pairs for {} parameters",
                    moments.len(),
                    self.slots.len()
                ),
            ));
        }
        for (i, (slot, (m, v))) in self.slots.iter_mut().zip(moments).enumerate() {
            let n = slot.param.var.elem_count();
            for (name, t) in [("m", m), ("v", v)] {
                if t.elem_count() != n || t.dtype() != DType::F32 {
                    return Err(invalid(
                        OP,
                        format!(
                            "moment {name} of parameter {i}: expected {n} f32 values, got {:?} {:?}",
                            t.shape(),
                            t.dtype()
                        ),
                    ));
                }
            }
            let dev = slot.param.var.device();
            slot.moments = Moments::from_tensors(&m.to_device(dev)?, &v.to_device(dev)?)?;
        }
        self.step = step;
        Ok(())
    }
}

fn check_config(c: &AdamWConfig) -> Result<()> {
    let ok = c.lr.is_finite()
        && c.lr >= 0.0
        && (0.0..1.0).contains(&c.beta1)
        && (0.0..1.0).contains(&c.beta2)
        && c.eps > 0.0
        && c.weight_decay.is_finite()
        && c.weight_decay >= 0.0;
    if ok {
        Ok(())
    } else {
        Err(invalid(OP, format!("invalid hyper-parameters {c:?}: need lr >= 0, betas in [0, 1), eps > 0, weight decay >= 0")))
    }
}

struct Kernel<'a> {
    hyper: AdamWHyper,
    moments: Mutex<&'a mut Moments>,
}

/// The update of one chunk; see the module docs.
fn update_cpu(h: &AdamWHyper, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let decay = 1.0 - h.lr * h.weight_decay;
    let step = h.lr / h.bias_correction1;
    let inv_sqrt_bc2 = 1.0 / h.bias_correction2.sqrt();
    for i in 0..p.len() {
        let gi = g[i];
        let mi = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        let vi = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (vi.sqrt() * inv_sqrt_bc2 + h.eps);
    }
}

impl InplaceOp2 for Kernel<'_> {
    fn name(&self) -> &'static str {
        OP
    }

    // Without the `cuda` feature the CPU variant is the only one.
    #[allow(irrefutable_let_patterns)]
    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: poisoned state")))?;
        let Moments::Cpu { m, v } = &mut **guard else {
            candle_core::bail!("{OP}: moments are not on the CPU");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("{OP}: expected f32 parameter and gradient");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("{OP}: parameter and gradient must be contiguous");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let h = self.hyper;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| update_cpu(&h, p, g, m, v));
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ps: &mut candle_core::CudaStorage,
        pl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: poisoned state")))?;
        let Moments::Cuda(mo) = &mut **guard else {
            candle_core::bail!("{OP}: moments are not on the GPU");
        };
        let n = pl.shape().elem_count();
        crate::cuda::adamw_step(
            ps,
            pl.start_offset(),
            gs,
            gl.start_offset(),
            mo,
            n,
            &self.hyper,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn f32(t: Tensor) -> Tensor {
        t.to_dtype(DType::F32).unwrap()
    }

    #[test]
    fn matches_the_reference_update_over_steps() {
        let p0 = f32(randn(&[37, 5], 1));
        let var = Var::from_tensor(&p0).unwrap();
        let bias = Var::from_tensor(&f32(randn(&[5], 2))).unwrap();
        let cfg = AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![
                Param {
                    var: var.clone(),
                    weight_decay: 0.1,
                    lr_scale: 0.5,
                },
                Param::new(bias.clone(), 0.0),
            ],
            cfg,
        )
        .unwrap();
        let (mut p, mut m, mut v) = (
            p0.clone(),
            p0.zeros_like().unwrap(),
            p0.zeros_like().unwrap(),
        );
        for t in 1..=4 {
            let x = f32(randn(&[3, 37], 10 + t as u64));
            let loss = x
                .matmul(var.as_tensor())
                .unwrap()
                .broadcast_add(bias.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(var.as_tensor()).unwrap().clone();
            (p, m, v) =
                crate::reference::adamw_step(&p, &g, &m, &v, 1e-2 * 0.5, (0.9, 0.95), 1e-8, 0.1, t)
                    .unwrap();
            opt.step(&grads).unwrap();
            let d = max_abs_diff(var.as_tensor(), &p);
            assert!(d < 1e-6, "step {t}: {d:e}");
        }
        assert_eq!(opt.step_count(), 4);
        let (mm, vv) = &opt.moments().unwrap()[0];
        for (ours, want) in [(mm, &m), (vv, &v)] {
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let d = max_abs_diff(&ours.reshape((37, 5)).unwrap(), want);
            assert!(
                d <= 1e-6 * scale,
                "moments differ by {d:e} (scale {scale:e})"
            );
        }
    }

    #[test]
    fn state_round_trips_and_params_without_grad_are_untouched() {
        let a = Var::from_tensor(&f32(randn(&[4], 1))).unwrap();
        let b = Var::from_tensor(&f32(randn(&[3], 2))).unwrap();
        let b0 = b.as_tensor().copy().unwrap();
        let mut opt = AdamW::from_vars(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
        let grads = a
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
        assert_eq!(max_abs_diff(b.as_tensor(), &b0), 0.0);
        let saved = opt.moments().unwrap();
        let mut other =
            AdamW::from_vars(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
        other.load_state(opt.step_count(), &saved).unwrap();
        let (a1, a2) = (a.as_tensor().copy().unwrap(), a.as_tensor().copy().unwrap());
        let (va, vb) = (
            Var::from_tensor(&a1).unwrap(),
            Var::from_tensor(&a2).unwrap(),
        );
        let mut o1 = AdamW::from_vars(vec![va.clone(), b.clone()], AdamWConfig::default()).unwrap();
        o1.load_state(1, &saved).unwrap();
        let mut o2 = AdamW::from_vars(vec![vb.clone(), b.clone()], AdamWConfig::default()).unwrap();
        o2.load_state(1, &opt.moments().unwrap()).unwrap();
        let g1 = va
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = vb
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        o1.step(&g1).unwrap();
        o2.step(&g2).unwrap();
        assert_eq!(max_abs_diff(va.as_tensor(), vb.as_tensor()), 0.0);
        assert!(other.load_state(1, &saved[..1]).is_err());
    }

    #[test]
    fn rejects_bad_config_and_dtypes() {
        let a = Var::from_tensor(&f32(randn(&[4], 1))).unwrap();
        let bad = AdamWConfig {
            beta2: 1.0,
            ..Default::default()
        };
        assert!(matches!(
            AdamW::from_vars(vec![a.clone()], bad),
            Err(Error::InvalidArgument { .. })
        ));
        let d = Var::from_tensor(&randn(&[4], 1)).unwrap();
        assert!(matches!(
            AdamW::from_vars(vec![d], AdamWConfig::default()),
            Err(Error::DType { .. })
        ));
    }
}
