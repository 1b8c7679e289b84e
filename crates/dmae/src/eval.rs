//! `dmae eval`: recognition accuracy of a classifier, or inpainting quality of a DiffMAE/MAE
//! checkpoint, on the validation split of a data SPEC.
//!
//! - `--task classify`: top-1 and top-5 accuracy (`top-k` = min(5, classes)) of a classifier
//!   checkpoint.
//! - `--task inpaint`: the first `--limit` validation images are masked (`--mask`, default
//!   `center:0.25`, random masks drawn per batch from `--seed`) and inpainted ([`dmae_models::Inpainting`]);
//!   on the **masked pixels only** ([`crate::metrics`] has the exact definitions): `psnr`
//!   (mean over images of per-image PSNR), `ssim` (Gaussian SSIM computed on the whole image,
//!   averaged over the masked pixels, then over images) and `sharpness_ratio`
//!   (Σ over images of the mean gradient magnitude of the sample in the masked region / the same
//!   sum for the ground truth; 1 = as sharp as real digits, below 1 = blurrier). Clips are scored
//!   per frame (frames without masked pixels skipped) and averaged; for clips also
//!   `temporal_change` (mean |x_{f+1} − x_f| over the pixels masked in consecutive frames: how
//!   much the generated region moves), the same for the truth (`temporal_change_real`) and
//!   their ratio `temporal_change_ratio` (1 = moves as much as the truth, below 1 frozen or
//!   blurred, above 1 flickering); and `motion_error` (mean over consecutive masked frames of
//!   ‖Δc_sample − Δc_truth‖, `c` the centre of mass of the masked region in pixels: does the
//!   fill move along the truth's track), the fill's own mean step `motion_sample`, the truth's
//!   `motion_real` and the ratio of error to truth's step
//!   `motion_error_ratio` (0 = follows the truth, 1 = no better than standing still; flicker that
//!   does not displace the ink is not motion here).
//!   With `--feature-classifier CKPT` (a classifier trained on the train split): its accuracy on
//!   the inpainted images (`classifier_accuracy`; on the real images `classifier_accuracy_real`)
//!   and the Fréchet distance between its pre-head features (pooled, after `fc_norm`) of the
//!   inpainted and the real images (`frechet_distance`, an "MNIST-FID"; biased upwards for
//!   small counts, compare only at equal `--limit`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use dmae_diffusion::RngKey;
use dmae_models::{Classifier, ModelConfig};
use serde_json::{json, Map, Value};

use crate::common::{
    parse_device, unit_open, DataSpec, EvalData, ValSplit, VAL_FRACTION_HELP, VAL_ON_TRAIN_HELP,
};
use crate::metrics;
use crate::sample::{self, InpaintArgs};

/// `--task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Top-1/top-5 of a classifier checkpoint.
    Classify,
    /// Inpainting quality of a DiffMAE/MAE checkpoint on the masked region.
    Inpaint,
}

/// `dmae eval` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Classifier (classify) or DiffMAE/MAE (inpaint) checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data SPEC; its validation split is used: bundled, mnist:DIR, cifar10:DIR (its test batch),
    /// folder:DIR (DIR/val, or --val-fraction), frames:DIR, moving-mnist[:opts]. Images are
    /// resized to fill the model's size and center-cropped, and converted to its channels.
    #[arg(long, default_value = "bundled", value_parser = parse_data)]
    pub data: DataArg,
    #[arg(long, value_name = "F", value_parser = unit_open, help = VAL_FRACTION_HELP)]
    pub val_fraction: Option<f64>,
    #[arg(long, help = VAL_ON_TRAIN_HELP, conflicts_with = "val_fraction")]
    pub val_on_train: bool,
    /// What to measure.
    #[arg(long, value_enum)]
    pub task: Task,
    /// Inpaint: the mask and the sampler, as in `dmae sample`.
    #[command(flatten)]
    pub inpaint: InpaintArgs,
    /// Evaluate only the first N validation samples (default: all; inpainting: 256).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Samples per forward batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Inpaint: a classifier checkpoint for classifier accuracy and Fréchet distance.
    #[arg(long)]
    pub feature_classifier: Option<PathBuf>,
    /// Seed of random masks and sampler noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--data` as given (for the report) and parsed.
#[derive(Clone, Debug)]
pub struct DataArg {
    /// The SPEC as typed.
    pub raw: String,
    /// The parsed SPEC.
    pub spec: DataSpec,
}

fn parse_data(s: &str) -> Result<DataArg> {
    Ok(DataArg {
        raw: s.to_string(),
        spec: s.parse()?,
    })
}

/// Default number of images for inpainting (sampling is the slow part).
const DEFAULT_INPAINT_LIMIT: usize = 256;

/// Runs `dmae eval`.
pub fn run(args: Args) -> Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be positive");
    let device = parse_device(&args.device)?;
    let start = Instant::now();
    let mut out = Map::new();
    out.insert(
        "task".into(),
        json!(match args.task {
            Task::Classify => "classify",
            Task::Inpaint => "inpaint",
        }),
    );
    out.insert(
        "checkpoint".into(),
        json!(args.checkpoint.display().to_string()),
    );
    out.insert("data".into(), json!(args.data.raw));
    match args.task {
        Task::Classify => classify(&args, &device, &mut out)?,
        Task::Inpaint => inpaint(&args, &device, &mut out)?,
    }
    out.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        for (k, v) in &out {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                other => other.to_string(),
            };
            println!("{k:<26} {v}");
        }
    }
    Ok(())
}

/// The validation split for `config`, its start-up line on stderr (stdout holds the results).
fn open_val(args: &Args, config: &ModelConfig) -> Result<EvalData> {
    let val = ValSplit {
        fraction: args.val_fraction,
        on_train: args.val_on_train,
    };
    let data = EvalData::open(&args.data.spec, config, val)?;
    eprintln!("{}", data.summary());
    Ok(data)
}

/// Samples `range` of `data` as one batch tensor and their labels.
fn batch(
    data: &EvalData,
    range: std::ops::Range<usize>,
    device: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let mut xs = Vec::with_capacity(range.len());
    let mut labels = Vec::with_capacity(range.len());
    for i in range {
        let (x, label) = data.input(i, device)?;
        labels.push(label);
        xs.push(x);
    }
    Ok((Tensor::stack(&xs, 0)?, labels))
}

/// `(top-1 hits, top-k hits)` of a batch of logits.
fn hits(logits: &Tensor, labels: &[u32], k: usize) -> Result<(usize, usize)> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut h = (0, 0);
    for (row, &l) in rows.iter().zip(labels) {
        h.0 += usize::from(metrics::top_k_hit(row, l as usize, 1));
        h.1 += usize::from(metrics::top_k_hit(row, l as usize, k));
    }
    Ok(h)
}

fn load_classifier(path: &std::path::Path, device: &Device) -> Result<Classifier> {
    Classifier::load(path, device)
        .with_context(|| format!("cannot load classifier checkpoint {}", path.display()))
}

fn classify(args: &Args, device: &Device, out: &mut Map<String, Value>) -> Result<()> {
    let clf = load_classifier(&args.checkpoint, device)?;
    let ds = open_val(args, clf.config())?;
    let n = args.limit.unwrap_or(usize::MAX).min(ds.dataset.len());
    ensure!(n > 0, "--limit 0: nothing to evaluate");
    let k = clf.num_classes().min(5);
    let (mut top1, mut topk) = (0, 0);
    for lo in (0..n).step_by(args.batch_size) {
        let (x, labels) = batch(&ds, lo..(lo + args.batch_size).min(n), device)?;
        let (a, b) = hits(&clf.forward(&x, None)?, &labels, k)?;
        top1 += a;
        topk += b;
    }
    out.insert("count".into(), json!(n));
    out.insert("top1".into(), json!(top1 as f64 / n as f64));
    out.insert("top5".into(), json!(topk as f64 / n as f64));
    if k < 5 {
        out.insert("top5_k".into(), json!(k));
    }
    Ok(())
}

/// `(N·T', C, H, W)`-style per-frame host views: for images `(N, C, H, W)` the images
/// themselves; for clips `(N, C, T, H, W)` every frame. Returns `(planes, C, H, W)` where
/// `planes[i]` is one `(C, H, W)` image.
fn frames(x: &Tensor) -> Result<(Vec<Vec<f32>>, usize, usize, usize)> {
    let x = if x.rank() == 5 {
        let (n, c, t, h, w) = x.dims5()?;
        x.transpose(1, 2)?.contiguous()?.reshape((n * t, c, h, w))?
    } else {
        x.clone()
    };
    let (m, c, h, w) = x.dims4()?;
    let flat = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = c * h * w;
    Ok((
        (0..m)
            .map(|i| flat[i * per..(i + 1) * per].to_vec())
            .collect(),
        c,
        h,
        w,
    ))
}

/// Pre-head features of a classifier: pooled encoder output through `fc_norm` (when average
/// pooling), `(N, D)` as f64 rows.
fn features(clf: &Classifier, x: &Tensor) -> Result<Vec<f64>> {
    let mut f = clf.encoder.features(x, clf.config(), clf.pool, None)?;
    if let Some(norm) = &clf.fc_norm {
        f = norm.forward(&f)?;
    }
    Ok(f.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn inpaint(args: &Args, device: &Device, out: &mut Map<String, Value>) -> Result<()> {
    let model = sample::load_model(&args.checkpoint, device)?;
    let config = model.config().clone();
    let ds = open_val(args, &config)?;
    let n = args
        .limit
        .unwrap_or(DEFAULT_INPAINT_LIMIT)
        .min(ds.dataset.len());
    ensure!(n > 0, "--limit 0: nothing to evaluate");
    let (mask_spec, inpainting) = args.inpaint.resolve(&config, device)?;
    let clf = match &args.feature_classifier {
        Some(p) => {
            let c = load_classifier(p, device)?;
            ensure!(
                c.config().input_dims() == config.input_dims(),
                "--feature-classifier {}: takes {:?}, the checkpoint's images are {:?}",
                p.display(),
                c.config().input_dims(),
                config.input_dims()
            );
            Some(c)
        }
        None => None,
    };
    let (mut psnr_sum, mut ssim_sum, mut scored) = (0.0, 0.0, 0usize);
    let (mut sharp_sample, mut sharp_truth) = (0.0, 0.0);
    let (mut clf_hits, mut clf_hits_real) = (0usize, 0usize);
    let (mut feat_fake, mut feat_real) = (Vec::new(), Vec::new());
    // Clips: frame-to-frame change in the masked region, sample and truth (sums, pixels).
    let (mut change_sample, mut change_truth, mut change_px) = (0.0, 0.0, 0usize);
    // Clips: centre-of-mass steps of the sample against the truth's (sums, pixels, pairs).
    let mut motion = metrics::MotionSums::default();
    for (b, lo) in (0..n).step_by(args.batch_size).enumerate() {
        let (x, labels) = batch(&ds, lo..(lo + args.batch_size).min(n), device)?;
        let r = inpainting.run(&model, &x, RngKey::new(args.seed, b as u64))?;
        let (fake, _, h, w) = frames(&r.sample)?;
        let (real, ..) = frames(&r.input)?;
        let (pm, ..) = frames(&r.pixel_mask)?;
        // The mask is the same in every channel: take the first plane.
        let masks: Vec<Vec<bool>> = pm
            .iter()
            .map(|m| m[..h * w].iter().map(|&v| v > 0.5).collect())
            .collect();
        for ((f, t), m) in fake.iter().zip(&real).zip(&masks) {
            let (Some(mse), Some(s)) = (
                metrics::masked_mse(f, t, m),
                metrics::masked_ssim(f, t, m, h, w),
            ) else {
                continue;
            };
            psnr_sum += metrics::psnr(mse);
            ssim_sum += s;
            scored += 1;
            sharp_sample += metrics::masked_sharpness(f, m, h, w).unwrap_or(0.0);
            sharp_truth += metrics::masked_sharpness(t, m, h, w).unwrap_or(0.0);
        }
        if config.is_video() {
            let t = config.num_frames;
            for ((f, r), m) in fake.chunks(t).zip(real.chunks(t)).zip(masks.chunks(t)) {
                let (s, px) = metrics::masked_frame_change(f, m, h, w);
                change_sample += s;
                change_truth += metrics::masked_frame_change(r, m, h, w).0;
                change_px += px;
                motion += metrics::masked_motion_error(f, r, m, h, w);
            }
        }
        if let Some(c) = &clf {
            let k = c.num_classes().min(5);
            clf_hits += hits(&c.forward(&r.sample, None)?, &labels, k)?.0;
            clf_hits_real += hits(&c.forward(&r.input, None)?, &labels, k)?.0;
            feat_fake.extend(features(c, &r.sample)?);
            feat_real.extend(features(c, &r.input)?);
        }
    }
    ensure!(scored > 0, "no masked pixels to score");
    out.insert("count".into(), json!(n));
    out.insert("mask".into(), json!(mask_spec.to_string()));
    // What the mask really hides on this grid (a center block is rounded to whole patches).
    out.insert(
        "masked_fraction".into(),
        json!(inpainting.mask.masked_fraction(&config)?),
    );
    out.insert("sampler".into(), json!(sample::describe(&inpainting)));
    out.insert("psnr".into(), json!(psnr_sum / scored as f64));
    out.insert("ssim".into(), json!(ssim_sum / scored as f64));
    // Sample over truth; NaN (JSON null) when the truth has none of the quantity.
    let ratio = |sample: f64, truth: f64| {
        json!(if truth > 0.0 {
            sample / truth
        } else {
            f64::NAN
        })
    };
    out.insert("sharpness_ratio".into(), ratio(sharp_sample, sharp_truth));
    if change_px > 0 {
        let px = change_px as f64;
        out.insert("temporal_change".into(), json!(change_sample / px));
        out.insert("temporal_change_real".into(), json!(change_truth / px));
        out.insert(
            "temporal_change_ratio".into(),
            ratio(change_sample, change_truth),
        );
    }
    if motion.pairs > 0 {
        let pairs = motion.pairs as f64;
        out.insert("motion_error".into(), json!(motion.error / pairs));
        out.insert("motion_sample".into(), json!(motion.sample_step / pairs));
        out.insert("motion_real".into(), json!(motion.truth_step / pairs));
        out.insert(
            "motion_error_ratio".into(),
            ratio(motion.error, motion.truth_step),
        );
    }
    if let Some(c) = &clf {
        out.insert(
            "classifier_accuracy".into(),
            json!(clf_hits as f64 / n as f64),
        );
        out.insert(
            "classifier_accuracy_real".into(),
            json!(clf_hits_real as f64 / n as f64),
        );
        let d = c.config().encoder.dim;
        let fd = if n >= 2 {
            json!(metrics::frechet_distance(&feat_fake, &feat_real, d))
        } else {
            Value::Null
        };
        out.insert("frechet_distance".into(), fd);
    }
    if config.norm_pix_loss {
        out.insert(
            "note".into(),
            json!("norm_pix_loss checkpoint: samples de-normalised with the true patches' mean/variance (optimistic)"),
        );
    }
    Ok(())
}
