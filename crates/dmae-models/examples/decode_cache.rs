//! Times inpainting (`dmae_models::Inpainting`, DDIM) with and without the cross-attention K/V
//! cache of the encoder output for a preset:
//! `cargo run --release -p dmae-models --example decode_cache -- [preset] [batch] [steps]`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmae_diffusion::{RngKey, SamplerKind};
use dmae_models::{DiffMae, Inpainting, Masking, ModelConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = ModelConfig::preset(args.get(1).map_or("mnist", String::as_str))?;
    let batch: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let dev = Device::Cpu;
    let model = DiffMae::new(cfg.clone(), 0, &dev)?;
    let mut shape = vec![batch];
    shape.extend(cfg.input_dims());
    let images = Tensor::rand(0f32, 1., shape, &dev)?;
    let ddim = Inpainting::new(
        &cfg,
        Masking::random(&cfg, 0.75)?,
        SamplerKind::Ddim { steps, eta: 0.0 },
    )?;
    let mut samples = Vec::new();
    for cached in [true, false] {
        let inpainting = ddim.clone().with_kv_cache(cached);
        inpainting.run(&model, &images, RngKey::new(0, 0))?;
        let start = Instant::now();
        let out = inpainting.run(&model, &images, RngKey::new(0, 0))?;
        let ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        println!(
            "K/V cache {}: {ms:.2} ms per step (batch {batch}, {steps} DDIM steps, {:?} decoder)",
            if cached { "on" } else { "off" },
            cfg.decoder.kind
        );
        samples.push(out.sample);
    }
    let diff = (&samples[0] - &samples[1])?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    if diff > 1e-4 {
        return Err(format!("cached and uncached samples differ by {diff}").into());
    }
    Ok(())
}
