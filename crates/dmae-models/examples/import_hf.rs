//! Imports a Hugging Face ViTMAE checkpoint (`ViTMAEForPreTraining`: `config.json` +
//! `model.safetensors`) as a working MAE, prints its configuration, parameter count and shapes,
//! and runs the MAE forward once.
//!
//! ```sh
//! cargo run --release -p dmae-models --example import_hf                 # the committed fixture
//! cargo run --release -p dmae-models --example import_hf -- DIR          # any local checkpoint dir
//! cargo run --release -p dmae-models --example import_hf -- hf:facebook/vit-mae-base  # feature hf-hub
//! ```
//!
//! With no argument it reads `tests/fixtures/vitmae-tiny-32` of this crate's repository, whose
//! `reference.safetensors` holds transformers' outputs for fixed pixels and masking noise: the
//! example then prints the largest difference from them (about 1e-6) and fails above 1e-4.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmae_models::DiffMae;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

/// The checkpoint's `config.json` and `model.safetensors`, and the directory when it is local.
fn files(arg: &str) -> Result<(PathBuf, PathBuf, Option<PathBuf>), Box<dyn std::error::Error>> {
    if let Some(repo) = arg.strip_prefix("hf:") {
        #[cfg(feature = "hf-hub")]
        {
            let (config, weights) = dmae_models::hf::hub_files(repo)?;
            return Ok((config, weights, None));
        }
        #[cfg(not(feature = "hf-hub"))]
        return Err(format!("{repo}: Hub downloads need feature hf-hub (on by default)").into());
    }
    let dir = PathBuf::from(arg);
    Ok((
        dir.join("config.json"),
        dir.join("model.safetensors"),
        Some(dir),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vitmae-tiny-32");
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fixture.display().to_string());
    let dev = Device::Cpu;
    // `DiffMae::from_hf_dir(dir, &dev)` in one call; here in two steps to keep the HF config.
    let (config_json, weights, dir) = files(&arg)?;
    let (hf, tensors) = dmae_models::hf::load_vitmae_files(&config_json, &weights, &dev)?;
    let model = DiffMae::from_tensors(hf.to_model_config()?, tensors, &dev)?;

    let c = model.config();
    println!("{arg}");
    println!(
        "  image {:?}, patch {}, {} channels -> {} patches of {} values",
        c.image_size,
        c.patch_size,
        c.in_channels,
        c.num_patches(),
        c.patch_dim()
    );
    println!(
        "  encoder: dim {}, depth {}, heads {}; decoder {:?}: dim {}, depth {}, heads {}",
        c.encoder.dim,
        c.encoder.depth,
        c.encoder.heads,
        c.decoder.kind,
        c.decoder.dim,
        c.decoder.depth,
        c.decoder.heads
    );
    let params = model.named_params();
    println!(
        "  {} parameters in {} tensors",
        model.num_params(),
        params.len()
    );
    for p in params.iter().take(4) {
        println!("    {:<40} {:?}", p.name, p.var.dims());
    }
    println!("    ...");

    // transformers' reference inputs and outputs when the directory has them, else fixed inputs.
    let reference = dir
        .map(|d| d.join("reference.safetensors"))
        .filter(|p| p.is_file())
        .map(|p| candle_core::safetensors::load(p, &dev))
        .transpose()?;
    let n = 2;
    let (pixels, noise) = match &reference {
        Some(r) => (
            r.get("pixel_values").ok_or("no pixel_values")?.clone(),
            r.get("noise").ok_or("no noise")?.clone(),
        ),
        None => {
            let dims = [n, c.in_channels, c.image_size[0], c.image_size[1]];
            let count = dims.iter().product::<usize>();
            let pixels = (Tensor::arange(0u32, count as u32, &dev)?.to_dtype(DType::F32)? * 0.37)?
                .sin()?
                .reshape(dims.as_slice())?;
            let l = c.num_patches();
            let noise = (Tensor::arange(0u32, (n * l) as u32, &dev)?.to_dtype(DType::F32)? * 1.7)?
                .cos()?
                .reshape((n, l))?;
            (pixels, noise)
        }
    };
    let out = model.mae_forward(&pixels, &noise, hf.mask_ratio)?;
    println!(
        "mae_forward(pixel_values {:?}, noise {:?}, mask_ratio {}):",
        pixels.dims(),
        noise.dims(),
        hf.mask_ratio
    );
    println!(
        "  last_hidden_state {:?}, logits {:?}, mask {:?} ({} masked)",
        out.last_hidden_state.dims(),
        out.logits.dims(),
        out.mask.dims(),
        out.mask.sum_all()?.to_scalar::<f32>()?
    );
    println!(
        "  logits[0, 0, ..4] = {:?}",
        out.logits
            .get(0)?
            .get(0)?
            .narrow(0, 0, 4)?
            .to_vec1::<f32>()?
    );
    if let Some(r) = &reference {
        let e_h = max_abs_diff(
            &out.last_hidden_state,
            r.get("last_hidden_state").ok_or("no last_hidden_state")?,
        )?;
        let e_l = max_abs_diff(&out.logits, r.get("logits").ok_or("no logits")?)?;
        println!("  vs transformers: last_hidden_state max abs diff {e_h:.2e}, logits {e_l:.2e}");
        if e_h.max(e_l) > 1e-4 {
            return Err("outputs differ from transformers' by more than 1e-4".into());
        }
    }
    Ok(())
}
