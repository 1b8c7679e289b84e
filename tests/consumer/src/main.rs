//! Uses dmae-diffusion and dmae-models as a downstream project would: masks, a small DiffMAE,
//! one pre-training step (`Pretraining`), DDIM inpainting in one call (`Inpainting`), a
//! checkpoint round trip, and the Hugging Face ViTMAE import of the committed fixture. Prints shapes; any failed check is an
//! error (non-zero exit).

use std::path::Path;

use candle_core::{Device, Tensor};
use dmae_diffusion::{MaskStrategy, PatchGrid, RngKey, SamplerKind};
use dmae_models::{DiffMae, Inpainting, Masking, ModelConfig, Pretraining};

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

    // One training step through the library: mask, noise the masked patches with the model's
    // own schedule, encode, decode, x0 loss, backward.
    let images = Tensor::rand(0f32, 1., (n, 1, 28, 28), &dev)?;
    let step = Pretraining::for_config(&cfg)?.step(&model, &images, key)?;
    let grads = step.loss.backward()?;
    let with_grad = model
        .named_params()
        .iter()
        .filter(|p| grads.get(p.var.as_tensor()).is_some())
        .count();
    println!(
        "train: target {:?} at t = {:?}, loss {:.4}, {with_grad}/{} parameters with a gradient",
        step.target.dims(),
        step.t,
        step.loss.to_scalar::<f32>()?,
        model.named_params().len()
    );
    check(
        with_grad == model.named_params().len(),
        "every parameter gets a gradient",
    )?;

    // Inpainting as one call: the encoder once, DDIM for 5 steps on the masked patches, the
    // visible pixels pasted back, the x0 trajectory recorded.
    let inpainting = Inpainting::new(
        &cfg,
        Masking::random(&cfg, 0.75)?,
        SamplerKind::Ddim { steps: 5, eta: 0.0 },
    )?
    .with_trajectory(true);
    let out = inpainting.run(&model, &images, key)?;
    println!(
        "sample: DDIM at t = {:?}, images {:?}, {} trajectory steps, {} of {} patches masked",
        inpainting.sampler().timesteps(),
        out.sample.dims(),
        out.trajectory.len(),
        out.mask.num_masked(),
        out.mask.num_tokens()
    );
    check(out.sample.dims() == images.dims(), "the sample has the images' shape")?;
    check(out.trajectory.len() == 5, "one trajectory entry per DDIM step")?;
    let kept = (out.sample.clone() * out.pixel_mask.affine(-1.0, 1.0)?)?;
    let truth = (images.clone() * out.pixel_mask.affine(-1.0, 1.0)?)?;
    check(max_abs_diff(&kept, &truth)? == 0.0, "visible pixels are kept")?;

    // Checkpoint round trip (the config travels in the safetensors metadata).
    let path =
        std::env::temp_dir().join(format!("dmae-consumer-{}.safetensors", std::process::id()));
    model.save(&path)?;
    let loaded = DiffMae::load(&path, &dev)?;
    std::fs::remove_file(&path)?;
    let again = loaded.config() == model.config();
    let diff = max_abs_diff(&out.sample, &inpainting.run(&loaded, &images, key)?.sample)?;
    println!("checkpoint: saved and loaded, inpainting max abs diff {diff:e}");
    check(again && diff == 0.0, "a loaded checkpoint inpaints identically")?;

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
