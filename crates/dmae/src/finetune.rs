//! `dmae finetune`: classification fine-tuning of a pre-trained encoder, MAE's
//! `main_finetune.py` recipe scaled down (average pooling + `fc_norm`, drop path, layer-wise lr
//! decay, label smoothing, AdamW β 0.9/0.999, warm-up + cosine), or with `--linear-probe` a
//! linear classifier on frozen features (MAE's `main_linprobe.py`, with AdamW instead of LARS:
//! only `fc_norm.*` and `head.*` train). Both save a [`Classifier`] checkpoint.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use clap::Parser;
use dmae_core::{AdamW, AdamWConfig, Param};
use dmae_data::{Channels, Dataset, Loader, LoaderConfig, Split};
use dmae_models::{Classifier, DiffMae, ModelConfig, Pool};
use serde::{Deserialize, Serialize};

use crate::common::{
    non_negative, parse_device, positive, train_loader, unit_closed, unit_half_open, DataSpec,
    Interrupted,
};
use crate::run_dir::{self, MetricsLog, MetricsRow, Progress};
use crate::schedule::{self, PendingLosses};
use crate::settings;

/// `dmae finetune` flags.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Pre-trained checkpoint (a `dmae train` checkpoint.safetensors), or `none` to train from
    /// scratch.
    #[arg(long, value_name = "CKPT|none")]
    pub init: String,
    /// Data SPEC (its train split trains, its val split evaluates).
    #[arg(long, value_name = "SPEC", default_value = "bundled")]
    pub data: String,
    /// Model preset for `--init none`.
    #[arg(long, value_name = "PRESET", default_value = "mnist")]
    pub model: String,
    /// Linear probe: frozen encoder, only fc_norm and head train (no drop path, no layer decay).
    #[arg(long)]
    pub linear_probe: bool,
    /// Optimiser steps (default 300).
    #[arg(long, value_name = "N", conflicts_with = "epochs", value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Passes over the training data instead of --steps.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Base learning rate per 256 images (default 8e-3 fine-tuning, 4e-2 linear probe).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub lr: Option<f64>,
    /// Layer-wise lr decay (MAE: 0.75 for ViT-B).
    #[arg(long, value_name = "X", default_value_t = 0.75, value_parser = unit_closed)]
    pub layer_decay: f64,
    /// Stochastic depth rate of the encoder while fine-tuning.
    #[arg(long, value_name = "X", default_value_t = 0.1, value_parser = unit_half_open)]
    pub drop_path: f64,
    /// AdamW weight decay on weight matrices (default 0.05; 0 for the linear probe).
    #[arg(long, value_name = "X", value_parser = non_negative)]
    pub weight_decay: Option<f64>,
    /// Linear warm-up steps (default: 10% of the steps).
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// Label smoothing of the cross-entropy.
    #[arg(long, value_name = "X", default_value_t = 0.1, value_parser = unit_half_open)]
    pub label_smoothing: f64,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Seed of the head init, the data order and drop path.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Run directory (default runs/finetune-<UTC timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Evaluate val top-1 every N steps (always at the end).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_every: Option<u64>,
    /// Read the loss back and log every N steps.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
}

/// The resolved settings, written as the `[finetune]` table of `config.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FinetuneSettings {
    /// Initial checkpoint or `none`.
    pub init: String,
    /// Data SPEC.
    pub data: String,
    /// Linear probe.
    pub linear_probe: bool,
    /// Optimiser steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: u64,
    /// Base lr per 256 images.
    pub base_lr: f64,
    /// Actual peak lr.
    pub lr: f64,
    /// Layer-wise lr decay (1 for the linear probe).
    pub layer_decay: f64,
    /// Drop path (0 for the linear probe).
    pub drop_path: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Label smoothing.
    pub label_smoothing: f64,
    /// Device.
    pub device: String,
    /// Seed.
    pub seed: u64,
}

/// Cross-entropy with label smoothing, `(1 − ε)·NLL(y) + ε·mean_c(−log p_c)` (MAE's
/// `LabelSmoothingCrossEntropy`), averaged over the batch. The log-softmax is composed from
/// candle ops that all have a backward (max is detached: it only shifts for stability and
/// cancels out of the gradient).
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f64,
) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let z = logits.broadcast_sub(&max)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = z.broadcast_sub(&lse)?;
    let nll = logp
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .neg()?
        .mean_all()?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - smoothing))? + (smooth * smoothing)?
}

/// Logits of `images` for training: the full classifier (with drop path), or for the linear
/// probe the head over detached encoder features.
fn logits(
    c: &Classifier,
    images: &Tensor,
    probe: bool,
    drop_path_seed: Option<u64>,
) -> Result<Tensor> {
    if !probe {
        return Ok(c.forward(images, drop_path_seed)?);
    }
    let mut f = c
        .encoder
        .features(images, c.config(), c.pool, None)?
        .detach();
    if let Some(n) = &c.fc_norm {
        f = n.forward(&f)?;
    }
    Ok(c.head.forward(&f)?)
}

/// Top-1 accuracy and mean cross-entropy (no smoothing) on `loader`'s dataset.
fn evaluate(c: &Classifier, loader: &Loader, device: &Device) -> Result<(f64, f64)> {
    let (mut correct, mut total, mut loss_sum) = (0usize, 0usize, 0f64);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let images = batch.images.to_device(device)?;
        let labels = batch.labels.to_device(device)?;
        let out = c.forward(&images, None)?;
        let n = batch.len();
        loss_sum += cross_entropy(&out, &labels, 0.0)?.to_scalar::<f32>()? as f64 * n as f64;
        let pred = out.argmax(D::Minus1)?.to_dtype(DType::U32)?;
        correct += pred
            .eq(&labels.to_dtype(DType::U32)?)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        total += n;
    }
    if total == 0 {
        bail!("--data: the val split is empty");
    }
    Ok((correct as f64 / total as f64, loss_sum / total as f64))
}

/// Runs `dmae finetune`.
pub fn run(args: Args) -> Result<()> {
    let threads = crate::train::set_threads(args.threads)?;
    let device = parse_device(&args.device)?;
    let probe = args.linear_probe;
    let spec: DataSpec = args.data.parse()?;

    // The encoder: from a pre-training checkpoint, or fresh.
    let (config, pretrained) = if args.init == "none" {
        let c = ModelConfig::preset(&args.model).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
        (c, None)
    } else {
        let m = DiffMae::load(&args.init, &device).map_err(|e| {
            anyhow::anyhow!("--init {}: cannot load the checkpoint: {e}", args.init)
        })?;
        (m.config().clone(), Some(m))
    };
    let channels = if config.in_channels == 1 {
        Channels::Gray
    } else {
        Channels::Rgb
    };
    let train_set = spec.open(Split::Train, channels, config.num_frames)?;
    let val_set = spec.open(Split::Val, channels, config.num_frames)?;
    let num_classes = train_set.num_classes();
    if num_classes == 0 {
        bail!("--data {}: the dataset has no classes", args.data);
    }
    let drop_path = if probe { 0.0 } else { args.drop_path };
    let classifier = match &pretrained {
        Some(m) => Classifier::from_pretrained(m, num_classes, Pool::Avg, drop_path, args.seed)?,
        None => {
            let mut c = config.clone();
            c.encoder.drop_path = drop_path;
            Classifier::new(c, num_classes, Pool::Avg, args.seed, &device)?
        }
    };
    drop(pretrained);

    let (loader, bpe) = train_loader(train_set, args.batch_size, args.seed)?;
    let val_loader = Loader::from_arc(
        val_set,
        LoaderConfig {
            batch_size: 250,
            shuffle: false,
            drop_last: false,
            num_threads: 1,
            prefetch: 1,
            ..LoaderConfig::default()
        },
    )?;
    let total = match (args.steps, args.epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => e * bpe,
        (None, None) => 300,
    };
    let warmup = args.warmup_steps.unwrap_or((total / 10).max(1));
    // MAE fine-tunes with blr 5e-4..1e-3 at batch 1024, i.e. an actual lr of 2e-3..4e-3. The
    // linear rule at our batch of 64 would divide that by 16, too slow for a few hundred steps
    // (measured: loss still 2.30 after 60 steps at lr 2.5e-4); blr 8e-3 keeps MAE's actual lr,
    // 2e-3 at batch 64. The probe trains a fresh linear layer only: MAE uses blr 0.1 with LARS;
    // with AdamW 4e-2 (lr 1e-2 at batch 64) is the comparable step.
    let base_lr = args.lr.unwrap_or(if probe { 4e-2 } else { 8e-3 });
    let weight_decay = args.weight_decay.unwrap_or(if probe { 0.0 } else { 0.05 });
    let layer_decay = if probe { 1.0 } else { args.layer_decay };
    let peak_lr = schedule::scaled_lr(base_lr, args.batch_size as usize, 1);
    let params: Vec<Param> = classifier
        .param_groups(weight_decay, layer_decay)
        .into_iter()
        .zip(classifier.named_params())
        .filter(|(_, n)| !probe || n.name.starts_with("fc_norm.") || n.name.starts_with("head."))
        .map(|(p, _)| p)
        .collect();
    let vars: Vec<Var> = params.iter().map(|p| p.var.clone()).collect();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: peak_lr,
            // MAE's fine-tuning keeps PyTorch's default betas (0.9, 0.999).
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        },
    )?;

    let dir = run_dir::fresh_dir(args.out.as_deref(), "finetune-")?;
    let s = FinetuneSettings {
        init: args.init.clone(),
        data: args.data.clone(),
        linear_probe: probe,
        steps: total,
        batch_size: args.batch_size,
        base_lr,
        lr: peak_lr,
        layer_decay,
        drop_path,
        weight_decay,
        warmup_steps: warmup,
        label_smoothing: args.label_smoothing,
        device: args.device.clone(),
        seed: args.seed,
    };
    settings::write_resolved(
        &dir.join("config.toml"),
        classifier.config(),
        "finetune",
        &s,
    )?;
    let ckpt = dir.join("classifier.safetensors");
    println!(
        "{} from {} ({} trainable tensors, {} classes) on {} images, {total} steps of {}, lr {peak_lr:.2e} -> {}",
        if probe { "linear probe" } else { "fine-tuning" },
        args.init,
        vars.len(),
        num_classes,
        loader.dataset().len(),
        args.batch_size,
        dir.display()
    );

    // On the CPU each batch is split over thread groups (dmae_core::DataParallel).
    let shards = dmae_core::DataParallel::for_device(&device, threads, args.batch_size as usize)?;
    let interrupted = crate::train::interrupt_flag();
    let mut metrics = MetricsLog::open(&dir)?;
    let progress = Progress::new(0, total);
    let mut pending = PendingLosses::default();
    let mut epoch = 0u64;
    let mut iter = loader.epoch(0);
    let mut last_log = (std::time::Instant::now(), 0u64);
    let mut step = 0u64;
    while step < total {
        let lr = schedule::lr_at(step, total, warmup, peak_lr);
        opt.set_learning_rate(lr);
        let batch = match iter.next() {
            Some(b) => b?,
            None => {
                epoch += 1;
                iter = loader.epoch(epoch);
                iter.next().context("data: an epoch has no batch")??
            }
        };
        let images = batch.images.to_device(&device)?;
        let labels = batch.labels.to_device(&device)?;
        // Drop path draws from (seed, step): reproducible, different every step.
        let dp_seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step;
        let n = images.dim(0)?;
        let (loss, grads) = shards.backward(n, &vars, |r| {
            // Each shard draws its own drop-path masks (keyed by its first sample): the same
            // --threads and --batch-size reproduce a run.
            let seed = dp_seed ^ (r.start as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let (images, labels) = (
                images.narrow(0, r.start, r.len())?,
                labels.narrow(0, r.start, r.len())?,
            );
            let out = logits(&classifier, &images, probe, Some(seed))
                .map_err(candle_core::Error::wrap)?;
            cross_entropy(&out, &labels, args.label_smoothing)
        })?;
        opt.step(&grads)?;
        step += 1;
        pending.push(step, loss);
        progress.set_step(step);
        let stop = interrupted.load(Ordering::SeqCst);
        let eval_now =
            step == total || stop || args.eval_every.is_some_and(|k| step.is_multiple_of(k));
        if step.is_multiple_of(args.log_every) || eval_now {
            if let Some(at) = pending.sync()? {
                progress.finish();
                bail!("non-finite loss at step {at}; nothing was saved");
            }
            let now = std::time::Instant::now();
            let secs = now.duration_since(last_log.0).as_secs_f64().max(1e-9);
            let mut row = MetricsRow {
                step,
                epoch,
                loss: pending.take_mean(),
                lr: Some(lr),
                img_per_s: Some(((step - last_log.1) * args.batch_size) as f64 / secs),
                elapsed_s: progress.elapsed(),
                ..MetricsRow::default()
            };
            if eval_now {
                let (top1, vloss) = evaluate(&classifier, &val_loader, &device)?;
                row.val_top1 = Some(top1);
                row.val_loss = Some(vloss);
            }
            last_log = (std::time::Instant::now(), step);
            metrics.write(&row)?;
            progress.log(&row);
        }
        if stop && step < total {
            classifier.save(&ckpt)?;
            run_dir::plot_loss(&dir)?;
            progress.finish();
            return Err(Interrupted(format!(
                "interrupted at step {step}/{total}; classifier saved to {}",
                ckpt.display()
            ))
            .into());
        }
    }
    progress.finish();
    classifier.save(&ckpt)?;
    run_dir::plot_loss(&dir)?;
    let last = MetricsLog::read(&dir)?
        .into_iter()
        .rev()
        .find_map(|r| r.val_top1);
    println!(
        "done: {total} steps in {:.0}s; val top-1 {:.2}%; classifier {}",
        progress.elapsed(),
        last.unwrap_or(f64::NAN) * 100.0,
        ckpt.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_the_closed_form_and_has_gradients() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2., 3.], [0., 0., 0.]], &dev).unwrap();
        let labels = Tensor::new(&[2u32, 0], &dev).unwrap();
        let l = cross_entropy(w.as_tensor(), &labels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse0 = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let want = ((lse0 - 3.0) + 3f32.ln()) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        // Smoothing 1 is the mean of -log p over the classes.
        let s = cross_entropy(w.as_tensor(), &labels, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want_s = ((3.0 * lse0 - 6.0) / 3.0 + 3f32.ln()) / 2.0;
        assert!((s - want_s).abs() < 1e-5, "{s} vs {want_s}");
        let g = cross_entropy(w.as_tensor(), &labels, 0.1)
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // d/dz of the smoothed loss: (softmax − (1 − ε)·onehot − ε/C) / N.
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let z: f32 = e.iter().sum();
        for c in 0..3 {
            let target = if c == 2 { 0.9 } else { 0.0 } + 0.1 / 3.0;
            let want = (e[c] / z - target) / 2.0;
            assert!(
                (g[0][c] - want).abs() < 1e-5,
                "class {c}: {} vs {want}",
                g[0][c]
            );
        }
        for row in g {
            assert!(row.iter().sum::<f32>().abs() < 1e-6);
        }
    }

    #[test]
    fn the_probe_and_the_full_classifier_fit_a_small_batch() {
        let dev = Device::Cpu;
        let mut cfg = ModelConfig::mnist();
        cfg.encoder.dim = 32;
        cfg.encoder.depth = 2;
        cfg.encoder.heads = 2;
        cfg.decoder.depth = 1;
        let data = dmae_data::bundled_mnist(Split::Train).unwrap();
        let loader = Loader::new(
            data,
            LoaderConfig {
                batch_size: 16,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        let batch = loader.epoch(0).next().unwrap().unwrap();
        for probe in [false, true] {
            let c = Classifier::new(cfg.clone(), 10, Pool::Avg, 0, &dev).unwrap();
            let params: Vec<Param> = c
                .param_groups(0.0, 1.0)
                .into_iter()
                .zip(c.named_params())
                .filter(|(_, n)| !probe || !n.name.starts_with("encoder."))
                .map(|(p, _)| p)
                .collect();
            let mut opt = AdamW::new(
                params,
                AdamWConfig {
                    lr: 1e-2,
                    ..AdamWConfig::default()
                },
            )
            .unwrap();
            let loss = |c: &Classifier| {
                cross_entropy(
                    &logits(c, &batch.images, probe, None).unwrap(),
                    &batch.labels,
                    0.0,
                )
                .unwrap()
            };
            let first = loss(&c).to_scalar::<f32>().unwrap();
            for _ in 0..40 {
                let g = loss(&c).backward().unwrap();
                opt.step(&g).unwrap();
            }
            let last = loss(&c).to_scalar::<f32>().unwrap();
            // Measured 2.30 -> 1.38 (full) and 2.30 -> 1.72 (probe on fresh random features).
            assert!(last < first * 0.85, "probe {probe}: {first} -> {last}");
        }
    }
}
