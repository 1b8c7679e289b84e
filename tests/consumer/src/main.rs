//! Uses dmae-diffusion and dmae-models as a downstream project would: masks, a small DiffMAE and
//! its training loss, DDIM inpainting with the encoder run once, a checkpoint round trip, and the
//! Hugging Face ViTMAE import of the committed fixture. Prints shapes; any failed check is an
//! error (non-zero exit).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dmae_diffusion::{
    diffuse, MaskStrategy, NoiseSchedule, PatchGrid, RngKey, Sampler, SamplerKind, X0Loss,
};
use dmae_models::{DiffMae, ModelConfig, TokenMask};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let n = 2;

    // A small DiffMAE on 28 x 28 grey images with 4 x 4 patches (the MNIST preset, shrunk).
    let mut cfg = ModelConfig::mnist();
    cfg.encoder.dim = 32;
    cfg.encoder.depth = 2;
    cfg.encoder.heads = 2;
    cfg.decoder.dim = 16;
    cfg.decoder.depth = 2;
    cfg.decoder.heads = 2;
    let model = DiffMae::new(cfg.clone(), 0, &dev)?;
    println!(
        "model: {:?} decoder, {} parameters",
        cfg.decoder.kind,
        model.num_params()
    );

    // Masks: 75% random, per sample.
    let (rows, cols) = cfg.grid();
    let grid = PatchGrid::new(rows, cols);
    let key = RngKey::new(0, 1);
    let mask = MaskStrategy::random(0.75)?.sample(grid, n, key, &dev)?;
    println!(
        "mask: {} visible + {} masked of {} patches, visible {:?}",
        mask.num_visible(),
        mask.num_masked(),
        mask.num_tokens(),
        mask.visible().dims()
    );
    check(mask.num_masked() == 37, "75% of 49 patches is 37 masked")?;

    // One training loss: patchify, noise the masked patches, predict x0, regress.
    let images = Tensor::rand(0f32, 1., (n, 1, 28, 28), &dev)?;
    let patches = cfg.patchify(&images)?;
    let masking = TokenMask::from(&mask);
    let (x0_v, x0_m) = mask.split(&patches)?;
    let schedule = NoiseSchedule::linear(1000)?;
    let noised = diffuse(&schedule, &x0_m, key)?;
    let x0_hat = model.forward(&patches, &masking, &noised.x_t, &noised.t)?;
    let loss = X0Loss::pretraining().compute(&x0_hat, &x0_m)?;
    let grads = loss.backward()?;
    let with_grad = model
        .named_params()
        .iter()
        .filter(|p| grads.get(p.var.as_tensor()).is_some())
        .count();
    println!(
        "train: patches {:?}, x_t {:?} at t = {:?}, loss {:.4}, {with_grad}/{} parameters with a gradient",
        patches.dims(),
        noised.x_t.dims(),
        noised.t,
        loss.to_scalar::<f32>()?,
        model.named_params().len()
    );
    check(
        with_grad == model.named_params().len(),
        "every parameter gets a gradient",
    )?;

    // Inpainting: encode the visible patches once, DDIM for 5 steps on the masked ones.
    let ctx = model.encode(&x0_v, &masking)?;
    let sampler =
        Sampler::new(schedule, SamplerKind::Ddim { steps: 5, eta: 0.0 })?.with_trajectory(true);
    let mut denoiser = model.denoiser(&ctx, &masking);
    let out = sampler.sample(&mut denoiser, x0_m.dims(), DType::F32, &dev, key)?;
    let full = mask.merge(&x0_v, &out.x0)?;
    let steps = out.trajectory.as_ref().map_or(0, Vec::len);
    println!(
        "sample: DDIM at t = {:?}, x0 {:?}, merged {:?}, {steps} trajectory steps",
        sampler.timesteps(),
        out.x0.dims(),
        full.dims()
    );
    check(
        full.dims() == patches.dims(),
        "merged sample has the patch shape",
    )?;
    check(steps == 5, "one trajectory entry per DDIM step")?;
    let (visible_again, _) = mask.split(&full)?;
    check(
        max_abs_diff(&visible_again, &x0_v)? == 0.0,
        "visible patches are kept",
    )?;

    // Checkpoint round trip (the config travels in the safetensors metadata).
    let path =
        std::env::temp_dir().join(format!("dmae-consumer-{}.safetensors", std::process::id()));
    model.save(&path)?;
    let loaded = DiffMae::load(&path, &dev)?;
    std::fs::remove_file(&path)?;
    let t = vec![500; n];
    let a = model.decode(&ctx, &x0_m, &masking, &t)?;
    let b = loaded.decode(&loaded.encode(&x0_v, &masking)?, &x0_m, &masking, &t)?;
    let diff = max_abs_diff(&a, &b)?;
    println!("checkpoint: saved and loaded, decode max abs diff {diff:e}");
    check(diff == 0.0, "a loaded checkpoint decodes identically")?;

    // Hugging Face ViTMAE import (local directory; `DiffMae::from_hf_hub` downloads instead).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/dmae-models/tests/fixtures/vitmae-tiny-32");
    let mae = DiffMae::from_hf_dir(&fixture, &dev)?;
    let c = mae.config();
    let pixels = Tensor::rand(
        0f32,
        1.,
        (n, c.in_channels, c.image_size[0], c.image_size[1]),
        &dev,
    )?;
    let noise = Tensor::rand(0f32, 1., (n, c.num_patches()), &dev)?;
    let mae_out = mae.mae_forward(&pixels, &noise, 0.75)?;
    println!(
        "hf import: {} parameters, last_hidden_state {:?}, logits {:?}",
        mae.num_params(),
        mae_out.last_hidden_state.dims(),
        mae_out.logits.dims()
    );
    check(
        mae_out.logits.dims() == [n, c.num_patches(), c.patch_dim()],
        "MAE logits are (N, L, p*p*C)",
    )?;
    println!("ok");
    Ok(())
}
