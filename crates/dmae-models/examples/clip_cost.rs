//! What the frozen CLIP tower adds to a training step: the forward of CLIP ViT-B/16
//! (`openai/clip-vit-base-patch16`'s shapes, random weights) on batches of 224 × 224 images, and
//! the whole target (pre-process + forward + patch features + map onto a 14 × 14 grid).
//!
//! `cargo run --release -p dmae-models --example clip_cost -- [batches] [reps]`, e.g.
//! `-- 16,64 2` (the default). CPU only; times are the mean of `reps` runs after one warm-up.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use dmae_diffusion::PatchGrid;
use dmae_models::{ClipFeatureConfig, ClipPreprocess, ClipVision, HfClipVisionConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let batches: Vec<usize> = args
        .get(1)
        .map_or("16,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let reps: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let dev = Device::Cpu;
    // openai/clip-vit-base-patch16's vision_config.
    let config = HfClipVisionConfig::from_json(
        r#"{"model_type": "clip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16,
            "image_size": 224, "projection_dim": 512}"#,
        "ViT-B/16",
    )?;
    let tensors: HashMap<String, Tensor> = config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| Ok((name, Tensor::randn(0f32, 0.02, shape, &dev)?)))
        .collect::<candle_core::Result<_>>()?;
    let tower = ClipVision::from_tensors(
        config.clone(),
        ClipPreprocess::openai(config.image_size),
        tensors,
        &dev,
    )?;
    println!(
        "CLIP ViT-B/16 (random weights), CPU, {} rayon threads",
        rayon_threads()
    );
    println!("| batch | forward (s) | ms / image | full target (s) |");
    println!("|---|---|---|---|");
    for &n in &batches {
        let images = Tensor::rand(0f32, 1., (n, 3, 224, 224), &dev)?;
        let px = tower.preprocess().apply(&images)?;
        let time = |f: &dyn Fn() -> dmae_models::Result<()>| -> dmae_models::Result<f64> {
            f()?;
            let t = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
        };
        let fwd = time(&|| tower.forward(&px).map(drop))?;
        let target = time(&|| {
            tower
                .target(
                    &images,
                    &ClipFeatureConfig::default(),
                    PatchGrid::new(14, 14),
                )
                .map(drop)
        })?;
        println!(
            "| {n} | {fwd:.2} | {:.0} | {target:.2} |",
            fwd * 1e3 / n as f64
        );
    }
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
    })
}
