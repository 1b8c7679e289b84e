//! `dmae train`: DiffMAE (or, with `--mae`, MAE) pre-training (paper § 3; MAE's
//! `main_pretrain.py` recipe) through the shared loop of [`crate::trainer`]: AdamW (β 0.9/0.95,
//! weight decay 0.05 off norms, biases and tokens), linear lr scaling by batch/256, warm-up then
//! cosine decay, optional clipping, accumulation and EMA, bf16 compute with f32 master weights
//! on CUDA. One step is [`Pretraining::backward`]: mask, noise, encode, decode, loss.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use dmae_core::optim::{Ema, LrSchedule, MasterWeights};
use dmae_core::{AdamWConfig, DataParallel};
use dmae_data::Batch;
use dmae_diffusion::Prediction;
use dmae_diffusion::RngKey;
use dmae_models::clip::ClipVision;
use dmae_models::{
    ClipTarget, DataRange, DecoderKind, DiffMae, Inpainting, Masking, ModelConfig, NamedParam,
    Pretraining, ScheduleKind, Target, Weighting,
};
use serde::Serialize;

use crate::common::{
    image_size, open_training, parse_device, positive, unit_open, DataArgs, EvalData, LoopArgs,
};
use crate::sample::MaskSpec;
use crate::settings::{self, ConfigFile, Usage};
use crate::trainer::{self, Optimizer, Plan, Task};

/// Default optimiser steps of `dmae train` with no arguments: the `mnist-small` preset at
/// batch 64 trains about 8.5 steps a second on 2 idle cores, so 2,400 steps stay under the
/// 5 minutes issue 17 allows (README "dmae train": 282 s on 2026-12-03). Fewer steps leave the
/// samples fragments of strokes (issue 17: grey blobs at 240 steps, about half readable at
/// 1,500, digits at 2,400).
pub const DEFAULT_STEPS: u64 = 2400;

/// Validation inputs in each `samples/` grid.
const PREVIEW_COUNT: usize = 8;

/// `dmae train` flags. Every flag but `--config`, `--out`, `--resume` and `--stop-at` can also
/// come from the `[train]` table of `--config` (same names); flags win.
#[derive(Parser, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// TOML file with a `[model]` table (ModelConfig fields over the preset) and a `[train]`
    /// table (the flags below, same names).
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data SPEC: bundled, mnist:DIR, cifar10:DIR, folder:DIR (any image sizes, grey or colour:
    /// DIR/<class>/*.png|jpg, or DIR/train/<class>/... with DIR/val/<class>/...), frames:DIR,
    /// moving-mnist[:opts].
    #[arg(long, value_name = "SPEC", default_value = "bundled")]
    pub data: String,
    #[command(flatten)]
    #[serde(flatten)]
    pub prep: DataArgs,
    /// Model preset: mnist, mnist-small, moving-mnist, tiny-32, tiny-64, tiny, small, base,
    /// large, huge.
    #[arg(long, value_name = "PRESET", default_value = crate::common::DEFAULT_PRESET)]
    pub model: String,
    /// The model's image size N (N x N pixels; a multiple of the patch size), instead of the
    /// preset's; every image is cropped or resized to it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub image_size: Option<u64>,
    /// Decoder design (paper § 3.2).
    #[arg(long, value_name = "KIND", value_parser = ["joint", "cross", "cross-self"])]
    pub decoder: Option<String>,
    /// Plain MAE: mask tokens instead of noisy patches, no time conditioning.
    #[arg(long)]
    pub mae: bool,
    /// Fraction of patches masked (default: 0.75 for images, MAE's; 0.9 tubes for video):
    /// `--mask random:R` for images, `--mask tube:R` for video.
    #[arg(long, value_name = "R", value_parser = unit_open)]
    pub mask_ratio: Option<f64>,
    /// The pre-training mask, in `dmae sample --mask`'s terms: random:R (on video random
    /// space-time tokens, MAE-ST's masking), tube:R, block:R, center[:F], future:K, middle:K or
    /// a mask image, or several joined by + to take turns batch by batch
    /// (tube:0.75+random:0.75); at least one patch must stay visible.
    #[arg(long, value_name = "SPEC", conflicts_with = "mask_ratio")]
    pub mask: Option<MaskSpec>,
    /// Base noise schedule (default: the model's, linear).
    #[arg(long, value_name = "KIND", value_parser = ["linear", "cosine"])]
    pub noise_schedule: Option<String>,
    /// The paper's noise exponent ρ on ᾱ (default: the model's, 1).
    #[arg(long, value_name = "R", value_parser = positive)]
    pub rho: Option<f64>,
    /// Diffusion steps T (default: the model's, 1000).
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub timesteps: Option<u64>,
    /// What the decoder predicts (default: the model's, x0).
    #[arg(long, value_name = "KIND", value_parser = ["x0", "eps", "v"])]
    pub prediction: Option<String>,
    /// How pixels enter the diffusion: unit ([0, 1]) or symmetric ([-1, 1]) (default: the
    /// model's; symmetric in every preset).
    #[arg(long, value_name = "RANGE", value_parser = ["unit", "symmetric"])]
    pub data_range: Option<String>,
    /// Timestep loss weighting: uniform, or min-snr (Hang et al. 2023; γ from
    /// --min-snr-gamma) (default: the model's, uniform).
    #[arg(long, value_name = "KIND", value_parser = ["uniform", "min-snr"])]
    pub loss_weighting: Option<String>,
    /// γ of min-SNR weighting (default: the model's, 5).
    #[arg(long, value_name = "G", value_parser = positive)]
    pub min_snr_gamma: Option<f64>,
    /// What the decoder regresses: pixels (DiffMAE), clip (a frozen CLIP tower's patch
    /// features, by a second head) or pixels+clip (default: the model's, pixels).
    #[arg(long, value_name = "TARGET", value_parser = ["pixels", "clip", "pixels+clip"])]
    pub target: Option<String>,
    /// The CLIP tower for a clip target: a directory with config.json and model.safetensors, or
    /// a Hugging Face Hub id such as openai/clip-vit-base-patch16 (HF_HUB_OFFLINE=1 reads only
    /// the cache) (default: the model's, on --resume).
    #[arg(long, value_name = "REPO_OR_DIR")]
    pub clip_model: Option<String>,
    /// Weight of the CLIP feature loss against the pixel loss (default: the model's, 1).
    #[arg(long, value_name = "W", value_parser = positive)]
    pub clip_weight: Option<f64>,
    /// Start from the weights of this checkpoint (a `dmae train` checkpoint.safetensors of the
    /// same model: give the --model/--config it was trained with) with a fresh optimiser at step
    /// 0, e.g. the second stage of a curriculum on other data or masks. `--resume` continues a
    /// run instead; a resumed run keeps the weights it has.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init: Option<PathBuf>,
    /// Write an inpainting grid of validation images to samples/ every N steps and at the end
    /// (0 turns it off).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub sample_every: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: LoopArgs,
}

/// Runs `dmae train`; `argv` is the command line after `train` (for `--config` and
/// `--resume`, whose tables go in front of it).
pub fn run(args: Args, argv: &[OsString]) -> Result<()> {
    // A resumed run starts from its own config.toml; flags still override it, except these.
    let config_path = args.config.clone();
    let run = args.run.clone();
    let trainer::RunSetup {
        dir,
        resuming,
        file,
        mut args,
        mut settings,
    } = trainer::setup(
        "train",
        args,
        config_path.as_deref(),
        &run,
        argv,
        &["model", "data", "batch-size", "accum-steps", "seed"],
    )?;
    let threads = crate::common::set_threads(args.run.threads)?;
    let device = parse_device(&args.run.device)?;
    let (config, clip) = clip_target(model_config(&args, &file)?, &args, &device)?;
    if resuming {
        // config.toml's [model] table is complete: merged over anything, it is the run's model.
        trainer::check_resumed_model(&dir, &file.model(config.clone())?, &config)?;
    }
    settings.insert(
        trainer::MODEL_SETTING.into(),
        serde_json::to_string(&config)?,
    );
    let mask = pretraining_mask(&args, &config)?;
    let compute = args.run.compute_dtype(&device)?;
    let data = open_training(
        &args.data,
        &mut args.prep,
        &config,
        args.run.batch_size,
        args.run.seed,
    )?;
    let (loader, per_epoch) = (&data.loader, data.batches_per_epoch);
    let accum = args.run.accum_steps;
    let total = args.run.total_steps(DEFAULT_STEPS, per_epoch);
    let warmup = args.run.warmup_steps.unwrap_or((total / 20).clamp(1, 100));
    let base_lr = *args.run.lr.get_or_insert(4e-3);
    let weight_decay = *args.run.weight_decay.get_or_insert(0.05);
    args.run.steps = Some(total);
    args.run.epochs = None;
    args.run.warmup_steps = Some(warmup);
    let lr = LrSchedule::new(
        base_lr,
        args.run.batch_size as usize,
        accum as usize,
        warmup,
        total,
    );

    // The model as f32 masters (what AdamW updates and checkpoints hold); with bf16 a second
    // copy runs forward and backward.
    let model = DiffMae::new(config.clone(), args.run.seed, &device)?;
    if let (Some(path), false) = (&args.init, resuming) {
        model.load_weights(path).map_err(|e| {
            Usage(format!(
                "--init {}: {e} (give the --model/--config it was trained with)",
                path.display()
            ))
        })?;
    }
    let copy = |dtype: DType| -> Result<DiffMae> {
        let m = DiffMae::new_with_dtype(config.clone(), args.run.seed, &device, dtype)?;
        for (d, s) in m.named_params().iter().zip(model.named_params()) {
            d.var.set(&s.var.as_tensor().to_dtype(dtype)?)?;
        }
        Ok(m)
    };
    let work = (compute != DType::F32).then(|| copy(compute)).transpose()?;
    let ema_model = args.run.ema.map(|_| copy(DType::F32)).transpose()?;
    let mut opt = Optimizer::new(
        model.optimizer_params(weight_decay),
        model
            .named_params()
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        AdamWConfig {
            lr: lr.peak,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
        },
    )?;
    if let Some(w) = &work {
        opt.masters = Some(MasterWeights::new(
            &vars(w.named_params()),
            &vars(model.named_params()),
        )?);
    }
    if let (Some(e), Some(decay)) = (&ema_model, args.run.ema) {
        opt.ema = Some((
            Ema::new(decay, vars(e.named_params()))?,
            model.named_params().to_vec(),
        ));
    }
    let mut pre = Pretraining::for_config(&config)?;
    if let Some(tower) = clip {
        pre = pre.with_clip(&config, tower)?;
    }
    if let Some(m) = mask {
        pre.mask = m;
    }

    let start = if resuming {
        let meta = trainer::load_state(&dir.join(trainer::STATE_FILE), &mut opt, &settings)?;
        if meta.seed != args.run.seed {
            bail!(Usage(format!(
                "--seed {}: the run in {} used seed {}",
                args.run.seed,
                dir.display(),
                meta.seed
            )));
        }
        if meta.micro_step != meta.step * accum {
            bail!(Usage(format!(
                "--accum-steps {accum}: the run in {} consumed {} micro-batches in {} steps",
                dir.display(),
                meta.micro_step,
                meta.step
            )));
        }
        if let Some(m) = &opt.masters {
            m.refresh_work()?;
        }
        // Steps after the last checkpoint are repeated; drop their old rows.
        crate::run_dir::truncate_metrics(&dir, meta.step)?;
        meta.step
    } else {
        0
    };
    if start >= total {
        bail!(
            "--steps {total}: the run in {} has done {start} steps already",
            dir.display()
        );
    }
    settings::write_resolved(&dir.join("config.toml"), &config, "train", &args)?;
    println!(
        "{} {} ({:.2}M parameters, {} decoder) on {} images of {}, {} steps of {} x {} images, lr {:.2e}, {}{} -> {}",
        if start > 0 { "resuming" } else { "training" },
        if config.is_diffusion() { "DiffMAE" } else { "MAE" },
        model.num_params() as f64 / 1e6,
        serde_json::to_value(config.decoder.kind)?.as_str().unwrap_or("?"),
        loader.dataset().len(),
        args.data,
        total,
        accum,
        args.run.batch_size,
        lr.peak,
        args.run.device,
        if start > 0 { format!(" from step {start}") } else { String::new() },
        dir.display()
    );
    println!("{}", data.summary);
    // A CLIP-only model has no trained pixel head to inpaint with.
    let preview = if args.sample_every > 0 && config.diffusion.target != Target::Clip {
        let spec = args.data.parse()?;
        let val = EvalData::open_for_pictures(&spec, &config, args.prep.val_fraction)?;
        let picks = val.pick(PREVIEW_COUNT)?;
        println!(
            "previews: {} {} images across the classes, every {} steps and at the end, in {}; from {}",
            picks.len(),
            val.split,
            args.sample_every,
            dir.join("samples").display(),
            val.origin
        );
        let inputs = picks
            .iter()
            .map(|&i| Ok(val.input(i, &device)?.0))
            .collect::<Result<Vec<_>>>()?;
        Some(Tensor::stack(&inputs, 0)?)
    } else {
        None
    };
    let plan = Plan {
        lr,
        accum,
        clip_grad: args.run.clip_grad,
        log_every: args.run.log_every,
        save_every: args.run.save_every,
        eval_every: None,
        sample_every: args.sample_every,
        stop_at: args.run.stop_at.unwrap_or(total).min(total),
        batch_size: args.run.batch_size,
        seed: args.run.seed,
        resume_hint: format!("dmae train --resume --out {}", dir.display()),
        settings,
    };
    let mut task = Pretrain {
        shards: DataParallel::for_device(&device, threads, args.run.batch_size as usize)?,
        model,
        work,
        ema: ema_model,
        pre,
        seed: args.run.seed,
        device,
        compute,
        preview,
    };
    let step = trainer::run(&mut task, &mut opt, &plan, loader, &dir, start)?;
    let ckpt = dir.join("checkpoint.safetensors");
    if step < total {
        println!(
            "stopped at step {step}/{total} (--stop-at); checkpoint {}; continue with: {}",
            ckpt.display(),
            plan.resume_hint
        );
    } else {
        println!("done: {step} steps; checkpoint {}", ckpt.display());
    }
    Ok(())
}

/// The mask `--mask` or `--mask-ratio` asks for (`None`: the model's default).
fn pretraining_mask(args: &Args, config: &ModelConfig) -> Result<Option<Masking>> {
    let Some(spec) = &args.mask else {
        return Ok(args
            .mask_ratio
            .map(|r| Masking::random(config, r))
            .transpose()?);
    };
    let m = spec.masking(config).map_err(|e| Usage(format!("{e:#}")))?;
    if m.num_masked(config)? >= config.num_patches() {
        bail!(Usage(format!(
            "--mask {spec}: hides all {} patches; pre-training needs at least one visible",
            config.num_patches()
        )));
    }
    Ok(Some(m))
}

fn vars(params: &[NamedParam]) -> Vec<Var> {
    params.iter().map(|p| p.var.clone()).collect()
}

/// The network the flags describe: preset, then the file's `[model]` table, then `--decoder`,
/// `--mae` and the diffusion flags.
pub fn model_config(args: &Args, file: &ConfigFile) -> Result<ModelConfig> {
    let preset = ModelConfig::preset(&args.model).map_err(|e| Usage(format!("--model: {e}")))?;
    let mut c = file.model(preset)?;
    image_size(&mut c, args.image_size)?;
    if let Some(d) = &args.decoder {
        c.decoder.kind = match d.as_str() {
            "joint" => DecoderKind::Joint,
            "cross" => DecoderKind::Cross,
            _ => DecoderKind::CrossSelf,
        };
    }
    if args.mae {
        c = c.into_mae();
    }
    if let Some(s) = &args.noise_schedule {
        c.diffusion.schedule = match s.as_str() {
            "cosine" => ScheduleKind::Cosine,
            _ => ScheduleKind::Linear,
        };
    }
    if let Some(r) = args.rho {
        c.diffusion.rho = r;
    }
    if let Some(t) = args.timesteps {
        c.diffusion.timesteps = t as usize;
    }
    if let Some(p) = &args.prediction {
        c.diffusion.prediction = match p.as_str() {
            "eps" => Prediction::Eps,
            "v" => Prediction::V,
            _ => Prediction::X0,
        };
    }
    if let Some(r) = &args.data_range {
        c.diffusion.data_range = match r.as_str() {
            "symmetric" => DataRange::Symmetric,
            _ => DataRange::Unit,
        };
    }
    if let Some(w) = &args.loss_weighting {
        c.diffusion.loss_weighting = match w.as_str() {
            "min-snr" => Weighting::MinSnr,
            _ => Weighting::Uniform,
        };
    }
    if let Some(g) = args.min_snr_gamma {
        c.diffusion.min_snr_gamma = g;
    }
    c.validate().map_err(|e| match &file.model {
        Some(_) => Usage(format!("--config {}: [model]: {e}", file.path)),
        None => Usage(format!("--model {}: {e}", args.model)),
    })?;
    Ok(c)
}

/// The CLIP target of `--target clip|pixels+clip` (or of the model being resumed): loads the
/// frozen tower (a directory, or a Hub id through the hf-hub cache) and records it with its
/// width in `config.diffusion.clip`.
fn clip_target(
    mut config: ModelConfig,
    args: &Args,
    device: &Device,
) -> Result<(ModelConfig, Option<std::sync::Arc<ClipVision>>)> {
    let d = &mut config.diffusion;
    if let Some(t) = &args.target {
        d.target = match t.as_str() {
            "clip" => Target::Clip,
            "pixels+clip" => Target::PixelsClip,
            _ => Target::Pixels,
        };
    }
    if d.target == Target::Pixels {
        d.clip = None;
        return Ok((config, None));
    }
    let model = match (&args.clip_model, &d.clip) {
        (Some(m), _) => m.clone(),
        (None, Some(c)) => c.model.clone(),
        (None, None) => bail!(Usage(
            "--target: a clip target needs --clip-model REPO_OR_DIR (e.g. openai/clip-vit-base-patch16)".into()
        )),
    };
    let path = Path::new(&model);
    let tower = if path.is_dir() {
        ClipVision::from_dir(path, device)
    } else if crate::import_hf::looks_like_path(&model) {
        bail!("--clip-model {model}: no such directory")
    } else {
        ClipVision::from_hf_hub(&model, device)
    }
    .map_err(|e| anyhow::anyhow!("--clip-model {model}: {e}"))?;
    let previous = d.clip.take();
    d.clip = Some(ClipTarget {
        model,
        dim: tower.dim(),
        features: previous.as_ref().map(|c| c.features).unwrap_or_default(),
        weight: args
            .clip_weight
            .or(previous.map(|c| c.weight))
            .unwrap_or(1.0),
    });
    config
        .validate()
        .map_err(|e| Usage(format!("--target: {e}")))?;
    Ok((config, Some(std::sync::Arc::new(tower))))
}

/// DiffMAE pre-training as the loop's [`Task`].
struct Pretrain {
    model: DiffMae,
    work: Option<DiffMae>,
    ema: Option<DiffMae>,
    pre: Pretraining,
    shards: DataParallel,
    seed: u64,
    device: Device,
    compute: DType,
    preview: Option<Tensor>,
}

impl Task for Pretrain {
    fn backward(&mut self, batch: &Batch, micro: u64) -> Result<(Tensor, GradStore)> {
        let images = batch
            .images
            .to_device(&self.device)?
            .to_dtype(self.compute)?;
        let model = self.work.as_ref().unwrap_or(&self.model);
        let key = RngKey::new(self.seed, micro);
        Ok(self.pre.backward(model, &images, key, &self.shards)?)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.model.save(dir.join("checkpoint.safetensors"))?;
        if let Some(e) = &self.ema {
            e.save(dir.join("ema.safetensors"))?;
        }
        Ok(())
    }

    /// Inpaints the preview inputs with the pre-training mask (a fixed draw) and writes the
    /// grid [masked | sample | ground truth], one row each: DDIM 20 steps for DiffMAE, one call
    /// for MAE. Clips show the frames of the first clip.
    fn preview(&mut self, dir: &Path, step: u64) -> Result<()> {
        let Some(images) = &self.preview else {
            return Ok(());
        };
        let config = self.model.config();
        let kind = Inpainting::default_sampler(config, 20, 0.0);
        let inpaint = Inpainting::new(config, self.pre.mask.clone(), kind)?;
        let out = inpaint.run(&self.model, images, RngKey::new(self.seed, u64::MAX))?;
        let masked = crate::images::grey_out(&out.input, &out.pixel_mask)?;
        let rows: Vec<Tensor> = [&masked, &out.sample, &out.input]
            .into_iter()
            .map(|t| {
                if config.is_video() {
                    // (N, C, T, H, W) -> the T frames of clip 0 as (T, C, H, W).
                    t.get(0)?.permute((1, 0, 2, 3))?.contiguous()
                } else {
                    Ok(t.clone())
                }
            })
            .collect::<candle_core::Result<_>>()?;
        let path = dir.join("samples").join(format!("step_{step:06}.png"));
        crate::images::write_grid(&path, &rows)?;
        // The report lists the grids: the last one is written after the last checkpoint.
        crate::run_dir::write_figures(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_flags_choose_the_pretraining_mask() {
        let file = ConfigFile::parse("", "x.toml", "train").unwrap();
        let args = |flags: &[&str]| -> Result<Args> {
            let argv: Vec<OsString> = flags.iter().map(Into::into).collect();
            settings::layered("train", &file, &argv)
        };
        let video = ModelConfig::moving_mnist();
        let image = ModelConfig::mnist();
        let video_mask = |flags: &[&str]| pretraining_mask(&args(flags).unwrap(), &video);
        // On video random:R is MAE-ST's space-time masking, --mask-ratio R tubes.
        assert_eq!(
            video_mask(&["--mask", "random:0.75"]).unwrap(),
            Some(Masking::Video(
                dmae_diffusion::VideoMaskStrategy::random_space_time(0.75).unwrap()
            ))
        );
        assert_eq!(
            video_mask(&["--mask-ratio", "0.75"]).unwrap(),
            Some(Masking::random(&video, 0.75).unwrap())
        );
        assert_eq!(
            video_mask(&["--mask", "tube:0.75"]).unwrap(),
            Some(Masking::random(&video, 0.75).unwrap())
        );
        assert_eq!(video_mask(&[]).unwrap(), None);
        // Tubes and space-time tokens on alternate batches.
        let random =
            |r| Masking::Video(dmae_diffusion::VideoMaskStrategy::random_space_time(r).unwrap());
        assert_eq!(
            video_mask(&["--mask", "tube:0.75+random:0.75"]).unwrap(),
            Some(Masking::Alternate(vec![
                Masking::random(&video, 0.75).unwrap(),
                random(0.75)
            ]))
        );
        // A mask that leaves nothing visible, or does not fit the model, is a usage error.
        let e = video_mask(&["--mask", "future:8"]).unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
        assert!(e.to_string().contains("fewer than the 8 frames"), "{e}");
        let e = pretraining_mask(&args(&["--mask", "center:0.99"]).unwrap(), &image).unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
        assert!(e.to_string().contains("hides all 49 patches"), "{e}");
        // ... in any of its turns.
        let e = pretraining_mask(&args(&["--mask", "random+center:0.99"]).unwrap(), &image);
        assert!(e.unwrap_err().to_string().contains("hides all 49 patches"));
        let e = pretraining_mask(&args(&["--mask", "tube:0.5"]).unwrap(), &image).unwrap_err();
        assert!(e.to_string().contains("needs a video checkpoint"), "{e}");
        assert!(args(&["--mask", "random:0.5", "--mask-ratio", "0.5"]).is_err());
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = ConfigFile::parse(
            "[model]\nencoder = { dim = 64, depth = 2, heads = 2 }\ndecoder = { depth = 1 }\n[train]\nsteps = 30\nbatch-size = 8\nlr = 0.01\nmae = true\n",
            "x.toml",
            "train",
        )
        .unwrap();
        let a: Args = settings::layered("train", &file, &[]).unwrap();
        assert_eq!(
            (a.run.steps, a.run.batch_size, a.run.lr),
            (Some(30), 8, Some(0.01))
        );
        assert_eq!(a.run.log_every, 10, "defaults fill the rest");
        let argv: Vec<OsString> = [
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--noise-schedule",
            "cosine",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let a: Args = settings::layered("train", &file, &argv).unwrap();
        assert_eq!(
            (a.run.batch_size, a.run.lr, a.run.steps, a.run.epochs, a.mae),
            (16, Some(0.01), None, Some(2), true)
        );
        let c = model_config(&a, &file).unwrap();
        assert_eq!(c.encoder.dim, 64);
        assert_eq!(c.decoder.masked_input, dmae_models::MaskedInput::MaskToken);
        assert_eq!(c.diffusion.schedule, ScheduleKind::Cosine);

        for (text, needle) in [
            ("[train]\nbatch_size = 3\n", "batch_size"),
            ("[train]\nmask-ratio = 1.5\n", "mask-ratio"),
            ("[train]\nsteps = [1]\n", "steps"),
        ] {
            let f = ConfigFile::parse(text, "y.toml", "train").unwrap();
            let e = settings::layered::<Args>("train", &f, &[]).unwrap_err();
            assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
            let e = e.to_string();
            assert!(e.contains("y.toml") && e.contains(needle), "{e}");
        }
    }
}
