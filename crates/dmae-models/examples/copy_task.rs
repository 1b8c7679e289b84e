//! Can the video model learn to copy across time? MAE on still clips (the same frame 8 times:
//! three random 12x3 bars on a 32x32 canvas, fresh every step) with the middle tubelet hidden,
//! so the six visible frames hold the answer pixel for pixel. Prints the pre-training loss;
//! predicting the mean clip plateaus near 0.08, copying drives it towards 0.
//! `spatial` replaces the space-time position embedding by the spatial one in every frame (is
//! the temporal term in the way?). docs/results.md, "Neither model copies across time":
//! `cargo run --release -p dmae-models --example copy_task -- [space-time|spatial] [steps]`.

use candle_core::{Device, Tensor};
use dmae_core::{AdamW, AdamWConfig};
use dmae_diffusion::RngKey;
use dmae_models::{embed::sincos_2d, DiffMae, Masking, ModelConfig, Pretraining};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let positions = args.get(1).map_or("space-time", String::as_str);
    if !["space-time", "spatial"].contains(&positions) {
        return Err(format!("positions: space-time or spatial, got {positions:?}").into());
    }
    let steps: u64 = args.get(2).map_or(Ok(1500), |s| s.parse())?;
    let dev = Device::Cpu;
    // The moving-mnist recipe's model (recipes/configs/moving-mnist/model.toml), MAE mode.
    let mut cfg = ModelConfig::moving_mnist();
    cfg.patch_size = 8;
    let cfg = cfg.into_mae();
    let (t, h, w) = (cfg.num_frames, cfg.image_size[0], cfg.image_size[1]);
    let (steps_t, (rows, cols)) = (cfg.time_steps(), cfg.grid());
    let mut model = DiffMae::new(cfg.clone(), 0, &dev)?;
    if positions == "spatial" {
        for (pe, dim) in [
            (&mut model.encoder.pos_embed, cfg.encoder.dim),
            (&mut model.decoder.pos_embed, cfg.decoder.dim),
        ] {
            let space = sincos_2d(rows, cols, dim, false);
            let mut v = vec![0f32; dim]; // the cls row
            for _ in 0..steps_t {
                v.extend_from_slice(&space);
            }
            *pe = Tensor::from_vec(v, (1 + steps_t * rows * cols, dim), &dev)?;
        }
    }
    let mut pre = Pretraining::for_config(&cfg)?;
    pre.mask = Masking::middle_frames(&cfg, cfg.tubelet)?;
    let vars = model.named_params().iter().map(|p| p.var.clone()).collect();
    let mut opt = AdamW::from_vars(
        vars,
        AdamWConfig {
            lr: 5e-4,
            ..Default::default()
        },
    )?;
    let n = 32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for step in 0..steps {
        let mut data = Vec::with_capacity(n * t * h * w);
        for _ in 0..n {
            let mut frame = vec![0f32; h * w];
            for _ in 0..3 {
                let (y0, x0) = (rng.random_range(0..h), rng.random_range(0..w));
                let vertical = rng.random_bool(0.5);
                for k in 0..12 {
                    for j in 0..3 {
                        let (y, x) = if vertical {
                            (y0 + k, x0 + j)
                        } else {
                            (y0 + j, x0 + k)
                        };
                        if y < h && x < w {
                            frame[y * w + x] = 1.0;
                        }
                    }
                }
            }
            for _ in 0..t {
                data.extend_from_slice(&frame);
            }
        }
        let clips = Tensor::from_vec(data, (n, 1, t, h, w), &dev)?;
        let out = pre.step(&model, &clips, RngKey::new(0, step))?;
        opt.step(&out.loss.backward()?)?;
        if step % 100 == 0 || step + 1 == steps {
            println!(
                "{positions} step {step} loss {:.4}",
                out.loss.to_scalar::<f32>()?
            );
        }
    }
    Ok(())
}
