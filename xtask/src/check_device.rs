//! `cargo xtask check-device --device cuda`: the first training steps on a device against the
//! same steps on the CPU (issue 9: "losses of our CUDA and CPU paths agree on a fixed batch, first
//! 5 steps, f32, to 1e-4 relative").
//!
//! Both runs start from one set of weights (initialised on the CPU and copied through the
//! safetensors checkpoint format) and see the same images, masks, timesteps and noise: those are
//! drawn on the host from `RngKey(seed, step)`, so only the devices' arithmetic differs. Each step
//! is a full pre-training step (mask, diffuse, encoder, decoder, x0 loss, backward, fused AdamW),
//! so a wrong backward or optimiser kernel shows up in the following steps' losses.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use dmae_core::{AdamW, AdamWConfig};
use dmae_diffusion::RngKey;
use dmae_models::{DiffMae, ModelConfig, Pretraining};

#[derive(clap::Args)]
pub struct CheckDeviceArgs {
    /// The device to check against the CPU: cuda or cuda:<index> (cuda needs `--features cuda`).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Model preset (mnist, tiny, small, base, ...).
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Training steps compared.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Largest accepted |device - cpu| / |cpu| of any step's loss.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

/// The loss of each of `steps` f32 training steps of `model` on `dev`.
fn losses(
    model: &DiffMae,
    cfg: &ModelConfig,
    batch: usize,
    steps: usize,
    dev: &Device,
) -> Result<Vec<f32>> {
    let pre = Pretraining::for_config(cfg)?;
    let mut opt = AdamW::new(
        model.optimizer_params(0.05),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )?;
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let images = crate::bench_train::images(cfg, batch, step, &Device::Cpu)?.to_device(dev)?;
        let s = pre.step(model, &images, RngKey::new(0, step as u64))?;
        let grads = s.loss.backward()?;
        opt.step(&grads)?;
        out.push(s.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    }
    Ok(out)
}

pub fn run(args: CheckDeviceArgs) -> Result<()> {
    dmae_core::configure_threads(None);
    let dev = crate::device(&args.device)?;
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be positive");
    }
    let cfg = ModelConfig::preset(&args.model)?;
    let init = DiffMae::new(cfg.clone(), 0, &Device::Cpu)?.to_safetensors_bytes()?;
    let on_cpu = losses(
        &DiffMae::from_safetensors_bytes(&init, &Device::Cpu)?,
        &cfg,
        args.batch,
        args.steps,
        &Device::Cpu,
    )?;
    let on_dev = losses(
        &DiffMae::from_safetensors_bytes(&init, &dev)?,
        &cfg,
        args.batch,
        args.steps,
        &dev,
    )?;
    println!(
        "preset {}, {} images/step, f32, AdamW lr 1e-3: {} vs cpu",
        args.model, args.batch, args.device
    );
    println!(
        "| step | cpu loss | {} loss | relative difference |",
        args.device
    );
    println!("|---:|---:|---:|---:|");
    let mut worst = 0f64;
    for (i, (c, d)) in on_cpu.iter().zip(&on_dev).enumerate() {
        let rel = ((*d as f64) - (*c as f64)).abs() / (*c as f64).abs().max(1e-30);
        // A NaN loss on either side fails the check.
        worst = if rel.is_nan() {
            f64::INFINITY
        } else {
            worst.max(rel)
        };
        println!("| {} | {c:.7} | {d:.7} | {rel:.2e} |", i + 1);
    }
    if worst > args.tolerance {
        bail!(
            "{} and cpu losses differ by {worst:.2e} relative (tolerance {:.0e})",
            args.device,
            args.tolerance
        );
    }
    println!(
        "ok: largest relative difference {worst:.2e} <= {:.0e}",
        args.tolerance
    );
    Ok(())
}
