//! `cargo xtask bench sample`: inpainting with DDIM through `dmae_models::Inpainting` (the
//! encoder run once, the decoder per step), with and without the cache of every cross-attention
//! block's K/V of the encoder features.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use dmae_diffusion::{RngKey, SamplerKind};
use dmae_models::{DiffMae, Inpainting, Masking, ModelConfig};

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Model preset (mnist, tiny, small, base, large, huge).
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Images sampled at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// DDIM steps (of the model's T).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Fraction of patches masked (random mask).
    #[arg(long, default_value_t = 0.75)]
    mask_ratio: f64,
    /// Device: cpu, cuda or cuda:INDEX.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (rayon, gemm and candle's pool); default all cores.
    #[arg(long)]
    threads: Option<usize>,
}

/// Random images of `cfg`'s input shape (the cost of sampling does not depend on the pixels).
fn random_images(cfg: &ModelConfig, batch: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut shape = vec![batch];
    shape.extend(cfg.input_dims());
    Ok(Tensor::rand(0f32, 1., shape, dev)?)
}

/// Seconds of one inpainting call of `inpainting` on `images`, after the device is idle.
fn timed(inpainting: &Inpainting, model: &DiffMae, images: &Tensor) -> Result<f64> {
    let dev = images.device();
    dev.synchronize()?;
    let start = Instant::now();
    inpainting.run(model, images, RngKey::new(1, 0))?;
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds for one DDIM inpainting of `batch` random images, timed as the PyTorch reference
/// times its `sample`: a 5-step warm-up first, then one call (encoder once on a random 75%
/// mask, `steps` decodes, each split over the CPU shards of the current thread count).
pub(crate) fn time_inpaint(
    model: &DiffMae,
    batch: usize,
    steps: usize,
    dev: &candle_core::Device,
) -> Result<f64> {
    let cfg = model.config();
    let images = random_images(cfg, batch, dev)?;
    let ddim = |steps| {
        Inpainting::new(
            cfg,
            Masking::random(cfg, 0.75)?,
            SamplerKind::Ddim { steps, eta: 0.0 },
        )
    };
    timed(&ddim(5)?, model, &images)?;
    timed(&ddim(steps)?, model, &images)
}

pub fn run(args: SampleArgs) -> Result<()> {
    // Before any tensor op: thread count and candle's pool settings (see dmae_core::configure_threads).
    dmae_core::configure_threads(args.threads);
    let dev = crate::device(&args.device)?;
    let cfg = ModelConfig::preset(&args.model)?;
    let model = DiffMae::new(cfg.clone(), 0, &dev)?;
    let images = random_images(&cfg, args.batch, &dev)?;
    let mask = Masking::random(&cfg, args.mask_ratio)?;
    let ddim = |steps| Inpainting::new(&cfg, mask.clone(), SamplerKind::Ddim { steps, eta: 0.0 });
    println!(
        "DDIM {} steps, {} images, preset {} ({:?} decoder), {} of {} patches masked, device {dev:?}",
        args.steps,
        args.batch,
        args.model,
        cfg.decoder.kind,
        mask.num_masked(&cfg)?,
        cfg.num_patches()
    );
    println!();
    // Warm-up (first-touch memory, kernel loading), then the encoder and one decode alone: a
    // one-step DDIM call is the encoder plus one decoder call.
    timed(&ddim(5)?, &model, &images)?;
    let one = timed(&ddim(1)?, &model, &images)?;
    println!(
        "one-step call (encoder once + one decode): {:.1} ms",
        one * 1e3
    );
    println!();
    println!("| K/V cache | sampling s (encoder + all steps) | ms per step |");
    println!("|---|---:|---:|");
    for cached in [true, false] {
        let secs = timed(&ddim(args.steps)?.with_kv_cache(cached), &model, &images)?;
        println!(
            "| {} | {secs:.3} | {:.1} |",
            if cached { "on" } else { "off" },
            secs * 1e3 / args.steps as f64
        );
    }
    Ok(())
}
