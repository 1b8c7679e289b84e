//! `dmae import-hf`: a Hugging Face `ViTMAEForPreTraining` checkpoint (a local directory with
//! `config.json` + `model.safetensors`, or a Hub repo id through the hf-hub cache) converted to
//! a dmae checkpoint (safetensors with the config in its metadata, written atomically). The
//! result is a plain MAE (joint decoder, mask-token input) that `dmae sample`/`eval` take.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dmae_models::{DiffMae, ModelConfig};

use crate::common::parse_device;
use crate::settings::Usage;

/// `dmae import-hf` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A local directory (config.json + model.safetensors) or a Hub repo id
    /// (e.g. facebook/vit-mae-base; HF_HUB_OFFLINE=1 reads only the cache).
    pub source: String,
    /// Output checkpoint (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:<index> (where the conversion runs).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Whether `s` can only be a filesystem path (a Hub id is `name` or `owner/name`).
pub(crate) fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with('.')
        || s.starts_with('~')
        || s.contains('\\')
        || s.matches('/').count() > 1
}

/// One line per part of the config, for the user.
pub fn summary(c: &ModelConfig) -> String {
    format!(
        "image {}x{}x{} (patch {}), frames {} (tubelet {}), {} patches\n\
         encoder: dim {} x depth {}, {} heads, mlp ratio {}\n\
         decoder: {:?}, dim {} x depth {}, {} heads, masked input {:?}, time conditioning {}\n\
         norm_eps {:e}, norm_pix_loss {}",
        c.image_size[0],
        c.image_size[1],
        c.in_channels,
        c.patch_size,
        c.num_frames,
        c.tubelet,
        c.num_patches(),
        c.encoder.dim,
        c.encoder.depth,
        c.encoder.heads,
        c.encoder.mlp_ratio,
        c.decoder.kind,
        c.decoder.dim,
        c.decoder.depth,
        c.decoder.heads,
        c.decoder.masked_input,
        c.decoder.time_conditioning,
        c.norm_eps,
        c.norm_pix_loss,
    )
}

/// Runs `dmae import-hf`.
pub fn run(args: Args) -> Result<()> {
    if args.source.trim().is_empty() {
        // Would be sent to the Hub as an empty repo id.
        bail!(Usage(
            "import-hf: SOURCE is empty: give a directory (config.json + model.safetensors) or a Hub repo id such as facebook/vit-mae-base".into()
        ));
    }
    let device = parse_device(&args.device)?;
    let path = Path::new(&args.source);
    let model = if path.is_dir() {
        DiffMae::from_hf_dir(path, &device)
            .with_context(|| format!("cannot import {}", path.display()))?
    } else if path.exists() {
        bail!(
            "{} is a file: give the directory holding config.json and model.safetensors, or a Hub repo id",
            path.display()
        );
    } else if looks_like_path(&args.source) {
        bail!("{}: no such directory", path.display());
    } else {
        DiffMae::from_hf_hub(&args.source, &device)
            .with_context(|| format!("cannot import hf://{}", args.source))?
    };
    // The library's error says "cannot write PATH: cause" itself.
    model.save(&args.out)?;
    println!("imported {}", args.source);
    println!("{}", summary(model.config()));
    println!(
        "{} parameters -> {}",
        model.num_params(),
        args.out.display()
    );
    Ok(())
}
