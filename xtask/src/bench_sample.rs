//! `cargo xtask bench sample`: inpainting with DDIM, the encoder run once, the decoder per step, with
//! and without the cache of every cross-attention block's K/V of the encoder features.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use dmae_diffusion::{MaskStrategy, NoiseSchedule, PatchGrid, RngKey, Sampler, SamplerKind};
use dmae_models::{DiffMae, ModelConfig, TokenMask};

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Model preset (mnist, tiny, small, base, large, huge).
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Images sampled at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// DDIM steps (of T = 1000).
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

/// Seconds for one DDIM inpainting of `batch` random images, timed as the PyTorch reference
/// times its `sample`: a 5-step warm-up first, then the encoder once (random 75% mask) and
/// `steps` decodes, each split over the CPU shards of `threads` threads.
pub(crate) fn time_inpaint(
    model: &DiffMae,
    batch: usize,
    steps: usize,
    threads: usize,
    dev: &candle_core::Device,
) -> Result<f64> {
    let cfg = model.config();
    let (rows, cols) = cfg.grid();
    let mask = MaskStrategy::random(0.75)?.sample(
        PatchGrid::new(rows, cols),
        batch,
        RngKey::new(0, 0),
        dev,
    )?;
    let masking = TokenMask::from(&mask);
    let patches = Tensor::randn(0f32, 1., (batch, cfg.num_patches(), cfg.patch_dim()), dev)?;
    let (x0_v, x0_m) = mask.split(&patches)?;
    let shards = dmae_core::DataParallel::for_device(dev, threads, batch)?;
    let once = |steps: usize| -> Result<f64> {
        let start = Instant::now();
        let ctx = model.encode(&x0_v, &masking)?;
        let sampler = Sampler::new(
            NoiseSchedule::linear(1000)?,
            SamplerKind::Ddim { steps, eta: 0.0 },
        )?;
        let mut den = model.denoiser(&ctx, &masking).sharded(&shards);
        sampler.sample(&mut den, x0_m.dims(), DType::F32, dev, RngKey::new(1, 0))?;
        dev.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    once(5)?;
    once(steps)
}

pub fn run(args: SampleArgs) -> Result<()> {
    // Before any tensor op: thread count and candle's pool settings (see dmae_core::configure_threads).
    let threads = dmae_core::configure_threads(args.threads);
    let dev = crate::device(&args.device)?;
    let cfg = ModelConfig::preset(&args.model)?;
    let model = DiffMae::new(cfg.clone(), 0, &dev)?;
    let (rows, cols) = cfg.grid();
    let mask = MaskStrategy::random(args.mask_ratio)?.sample(
        PatchGrid::new(rows, cols),
        args.batch,
        RngKey::new(0, 0),
        &dev,
    )?;
    let masking = TokenMask::from(&mask);
    let patches = Tensor::randn(
        0f32,
        1.,
        (args.batch, cfg.num_patches(), cfg.patch_dim()),
        &dev,
    )?;
    let (x0_v, _) = mask.split(&patches)?;
    let sampler = Sampler::new(
        NoiseSchedule::linear(1000)?,
        SamplerKind::Ddim {
            steps: args.steps,
            eta: 0.0,
        },
    )?;
    let masked = mask.masked().dim(1)?;
    let shape = (args.batch, masked, cfg.patch_dim());
    println!(
        "DDIM {} steps, {} images, preset {} ({:?} decoder), {} of {} patches masked, device {dev:?}",
        args.steps,
        args.batch,
        args.model,
        cfg.decoder.kind,
        masked,
        cfg.num_patches()
    );
    println!();
    // Warm-up, then the encoder once (it also fills the K/V cache of every cross-attention block).
    model.encode(&x0_v, &masking)?;
    let start = Instant::now();
    let ctx = model.encode(&x0_v, &masking)?;
    dev.synchronize()?;
    println!(
        "encode (visible patches, K/V cache filled): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    println!();
    // Warm-up of the decoder too (as the reference's 5-step sample), so the first timed run does
    // not pay for first-touch memory.
    let warm = Sampler::new(
        NoiseSchedule::linear(1000)?,
        SamplerKind::Ddim { steps: 5, eta: 0.0 },
    )?;
    // Each decode split over CPU thread groups, as `dmae sample` does.
    let shards = dmae_core::DataParallel::for_device(&dev, threads, args.batch)?;
    warm.sample(
        &mut model.denoiser(&ctx, &masking).sharded(&shards),
        shape,
        DType::F32,
        &dev,
        RngKey::new(2, 0),
    )?;
    println!("| K/V cache | sampling s (all steps) | ms per step |");
    println!("|---|---:|---:|");
    for cached in [true, false] {
        let ctx = if cached {
            ctx.clone()
        } else {
            ctx.without_cache()
        };
        let mut denoiser = model.denoiser(&ctx, &masking).sharded(&shards);
        let start = Instant::now();
        let out = sampler.sample(&mut denoiser, shape, DType::F32, &dev, RngKey::new(1, 0))?;
        dev.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(out.x0.dims() == [args.batch, masked, cfg.patch_dim()]);
        println!(
            "| {} | {secs:.3} | {:.1} |",
            if cached { "on" } else { "off" },
            secs * 1e3 / args.steps as f64
        );
    }
    Ok(())
}
