//! Times `decode` with and without the cross-attention K/V cache (one sampling step each) for a
//! preset: `cargo run --release -p dmae-models --example decode_cache -- [preset] [batch] [steps]`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmae_diffusion::{MaskStrategy, PatchGrid, RngKey};
use dmae_models::{DiffMae, ModelConfig, TokenMask};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = ModelConfig::preset(args.get(1).map_or("mnist", String::as_str))?;
    let batch: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let dev = Device::Cpu;
    let model = DiffMae::new(cfg.clone(), 0, &dev)?;
    let (rows, cols) = cfg.grid();
    let mask = MaskStrategy::random(0.75)?.sample(
        PatchGrid::new(rows, cols),
        batch,
        RngKey::new(0, 0),
        &dev,
    )?;
    let masking = TokenMask::from(&mask);
    let patches = Tensor::randn(0f32, 1., (batch, cfg.num_patches(), cfg.patch_dim()), &dev)?;
    let (x0_v, x0_m) = mask.split(&patches)?;
    let ctx = model.encode(&x0_v, &masking)?;
    let uncached = ctx.without_cache();
    let t = vec![500; batch];
    for (name, c) in [("cached", &ctx), ("uncached", &uncached)] {
        model.decode(c, &x0_m, &masking, &t)?;
        let start = Instant::now();
        for _ in 0..steps {
            model.decode(c, &x0_m, &masking, &t)?;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        println!(
            "{name}: {ms:.2} ms per decode (batch {batch}, {:?})",
            cfg.decoder.kind
        );
    }
    Ok(())
}
