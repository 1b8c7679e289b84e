//! `dmae sample`: inpainting with a DiffMAE (or MAE) checkpoint, written as pictures. The
//! inpainting itself is one library call, [`dmae_models::Inpainting`]: the encoder once on the
//! visible patches, the sampler over the masked ones with the model's own noise schedule, the
//! visible patches pasted back unchanged. This module parses `--mask` and `--sampler`, reads
//! the inputs and writes the pictures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use dmae_diffusion::{MaskStrategy, PatchGrid, PatchMask, ResizeRule, RngKey, SamplerKind};
use dmae_models::{DiffMae, Inpainted, Inpainting, Masking, ModelConfig};

use crate::common::{parse_device, unit_open, DataSpec, EvalData, VAL_FRACTION_HELP};
use crate::images;
use crate::settings::Usage;

/// Columns of a trajectory strip (evenly spaced over the visited timesteps, first and last
/// always included).
pub const TRAJECTORY_COLUMNS: usize = 10;

/// `--mask`: which patches to hide.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSpec {
    /// `center[:F]`: a centered block of about `F` of the area (default 0.25); on video, the
    /// same block in every frame.
    Center(f64),
    /// `random:R`: `R` of the patches at random (MAE's 0.75 by default); on video, random
    /// space-time tokens.
    Random(f64),
    /// `block:R`: BEiT block-wise masking of `R` of the patches (default 0.4).
    Block(f64),
    /// `tube:R` (video): a random spatial mask of `R` (default 0.9), the same in every frame.
    Tube(f64),
    /// `future:K` (video): the last `K` frames are masked (prediction).
    Future(usize),
    /// `middle:K` (video): the `K` middle frames are masked (interpolation).
    Middle(usize),
    /// A mask image (white = masked), the checkpoint's image size or its patch-grid size;
    /// any patch touching a white pixel is masked. On video, the same mask in every frame.
    File(PathBuf),
    /// `A+B[+...]`: the masks take turns batch by batch (batch `s` uses part `s mod n`), e.g.
    /// `tube:0.75+random:0.75` pre-trains a video model on tubes and space-time tokens alike.
    Alternate(Vec<MaskSpec>),
}

impl std::fmt::Display for MaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaskSpec::Center(r) => write!(f, "center:{r}"),
            MaskSpec::Random(r) => write!(f, "random:{r}"),
            MaskSpec::Block(r) => write!(f, "block:{r}"),
            MaskSpec::Tube(r) => write!(f, "tube:{r}"),
            MaskSpec::Future(k) => write!(f, "future:{k}"),
            MaskSpec::Middle(k) => write!(f, "middle:{k}"),
            MaskSpec::File(p) => write!(f, "{}", p.display()),
            MaskSpec::Alternate(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    write!(f, "{}{p}", if i == 0 { "" } else { "+" })?;
                }
                Ok(())
            }
        }
    }
}

/// As written on the command line (`random:0.75`), so a run's saved settings read back.
impl serde::Serialize for MaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for MaskSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.contains('+') && !is_image_path(s) {
            let parts = s
                .split('+')
                .map(|p| {
                    ensure!(!p.is_empty(), "{s:?}: an empty mask between '+' signs");
                    p.parse()
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(MaskSpec::Alternate(parts));
        }
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let ratio = |default: f64| -> Result<f64> {
            let r = match arg {
                None => default,
                Some(a) => a
                    .parse::<f64>()
                    .with_context(|| format!("{kind}: expected a fraction, got {a:?}"))?,
            };
            ensure!(
                r > 0.0 && r < 1.0,
                "{kind}: the fraction must be in (0, 1), got {r}"
            );
            Ok(r)
        };
        let frames = || -> Result<usize> {
            let a = arg.with_context(|| format!("{kind}: expected {kind}:K (frames)"))?;
            let k = a
                .parse::<usize>()
                .with_context(|| format!("{kind}: K must be a whole number, got {a:?}"))?;
            ensure!(k > 0, "{kind}: K must be at least 1");
            Ok(k)
        };
        Ok(match kind {
            "center" => MaskSpec::Center(ratio(0.25)?),
            "random" => MaskSpec::Random(ratio(0.75)?),
            "block" => MaskSpec::Block(ratio(0.4)?),
            "tube" => MaskSpec::Tube(ratio(0.9)?),
            "future" => MaskSpec::Future(frames()?),
            "middle" => MaskSpec::Middle(frames()?),
            _ if is_image_path(s) => MaskSpec::File(PathBuf::from(s)),
            _ => bail!(
                "unknown mask {s:?} (center[:F], random:R, block:R, tube:R, future:K, middle:K, \
                 a .png/.jpg/.bmp mask image, or several joined by + to take turns)"
            ),
        })
    }
}

fn is_image_path(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".bmp", ".gif"]
        .iter()
        .any(|e| l.ends_with(e))
}

impl MaskSpec {
    /// The default: `center:0.25` for images (the center-inpainting benchmark), `tube:0.9` for
    /// video (VideoMAE's tube masking).
    pub fn default_for(config: &ModelConfig) -> Self {
        if config.is_video() {
            MaskSpec::Tube(0.9)
        } else {
            MaskSpec::Center(0.25)
        }
    }

    /// The library mask this spec means for `config`. Errors when the mask does not fit the
    /// checkpoint or hides nothing.
    pub fn masking(&self, config: &ModelConfig) -> Result<Masking> {
        let (rows, cols) = config.grid();
        let image = |strategy: MaskStrategy| Masking::spatial(config, strategy);
        let m = match self {
            MaskSpec::Center(r) => image(MaskStrategy::center_block(*r)?),
            MaskSpec::Random(r) if config.is_video() => {
                Masking::Video(dmae_diffusion::VideoMaskStrategy::random_space_time(*r)?)
            }
            MaskSpec::Random(r) => image(MaskStrategy::random(*r)?),
            MaskSpec::Block(r) => image(MaskStrategy::block_wise(*r)?),
            MaskSpec::File(p) => image(MaskStrategy::Fixed(mask_file(
                p,
                config,
                PatchGrid::new(rows, cols),
            )?)),
            MaskSpec::Tube(r) if config.is_video() => Masking::random(config, *r)?,
            MaskSpec::Future(k) => Masking::future_frames(config, *k)
                .map_err(|e| anyhow::anyhow!("--mask {self}: {e}"))?,
            MaskSpec::Middle(k) => Masking::middle_frames(config, *k)
                .map_err(|e| anyhow::anyhow!("--mask {self}: {e}"))?,
            MaskSpec::Tube(_) => {
                bail!("--mask {self}: needs a video checkpoint (this one takes images)")
            }
            MaskSpec::Alternate(parts) => Masking::alternate(
                parts
                    .iter()
                    .map(|p| p.masking(config))
                    .collect::<Result<_>>()?,
            )?,
        };
        ensure!(m.num_masked(config)? > 0, "--mask {self} hides no patch");
        Ok(m)
    }
}

/// A mask image of exactly the checkpoint's image size or its patch-grid size.
fn mask_file(path: &Path, config: &ModelConfig, grid: PatchGrid) -> Result<PatchMask> {
    let (w, h) = image::image_dimensions(path)
        .with_context(|| format!("--mask {}: not a readable image", path.display()))?;
    let [ih, iw] = config.image_size;
    let (w, h) = (w as usize, h as usize);
    ensure!(
        (h, w) == (ih, iw) || (h, w) == (grid.rows, grid.cols),
        "--mask {}: the mask is {w}x{h} pixels; this checkpoint needs {iw}x{ih} (image) or {}x{} \
         (one pixel per patch)",
        path.display(),
        grid.cols,
        grid.rows
    );
    PatchMask::from_image_path(path, grid, ResizeRule::Any)
        .with_context(|| format!("--mask {}", path.display()))
}

/// `--sampler`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerArg {
    /// DDIM over `--steps` evenly spaced timesteps, noise `--eta`.
    Ddim,
    /// DDPM ancestral sampling over all 1000 steps.
    Ddpm,
    /// One prediction at t = T−1 (MAE, and DiffMAE's first step).
    Mae,
}

impl SamplerArg {
    /// The sampler kind: DDIM with `steps` and `eta`, DDPM, or one MAE call.
    pub fn kind(self, steps: usize, eta: f64) -> SamplerKind {
        match self {
            SamplerArg::Ddim => SamplerKind::Ddim { steps, eta },
            SamplerArg::Ddpm => SamplerKind::Ddpm,
            SamplerArg::Mae => SamplerKind::Mae,
        }
    }
}

/// A short description of a sampler, e.g. `ddim 50 steps (eta 0)` (and its temperature when
/// it is not 1).
pub fn describe(inpainting: &Inpainting) -> String {
    let sampler = inpainting.sampler();
    let kind = match sampler.kind() {
        SamplerKind::Ddpm => format!("ddpm {} steps", sampler.timesteps().len()),
        SamplerKind::Ddim { steps, eta } => format!("ddim {steps} steps (eta {eta})"),
        SamplerKind::Mae => "mae (one decoder call at t = T-1)".into(),
    };
    let tau = sampler.temperature();
    let kind = if tau == 1.0 {
        kind
    } else {
        format!("{kind}, temperature {tau}")
    };
    match inpainting.guidance() {
        Some(w) => format!("{kind}, autoguidance w {w}"),
        None => kind,
    }
}

/// `k` indices evenly spaced over `0..len`, first and last included.
pub fn spaced(len: usize, k: usize) -> Vec<usize> {
    if len <= k {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..k)
        .map(|i| ((i as f64) * (len - 1) as f64 / (k - 1).max(1) as f64).round() as usize)
        .collect();
    v.dedup();
    v
}

/// Loads a DiffMAE/MAE checkpoint, naming the file in errors.
pub fn load_model(path: &Path, device: &Device) -> Result<DiffMae> {
    DiffMae::load(path, device)
        .with_context(|| format!("cannot load checkpoint {}", path.display()))
}

/// One named input: `(name for output files, (C, H, W) or (C, T, H, W) tensor)`.
pub type NamedInput = (String, Tensor);

/// Image files from `--input` (a file, or every image file of a directory, sorted by name).
fn read_inputs(path: &Path, config: &ModelConfig, device: &Device) -> Result<Vec<NamedInput>> {
    ensure!(
        !config.is_video(),
        "--input: video checkpoints take clips from --data (moving-mnist[...] or frames:DIR)"
    );
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.to_str().is_some_and(is_image_path))
            .collect();
        f.sort();
        ensure!(
            !f.is_empty(),
            "--input {}: no .png/.jpg/.jpeg/.bmp/.gif files",
            path.display()
        );
        f
    } else {
        ensure!(path.exists(), "--input {}: no such file", path.display());
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| {
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "input".into());
            Ok((name, images::load_image(f, config, device)?))
        })
        .collect()
}

/// `count` validation samples of `spec` spread over the classes (the training images when a
/// folder has no validation split), named `<split>_<index>`, and the data's start-up line.
pub fn read_data(
    spec: &DataSpec,
    count: usize,
    fraction: Option<f64>,
    config: &ModelConfig,
    device: &Device,
) -> Result<(Vec<NamedInput>, String)> {
    let data = EvalData::open_for_pictures(spec, config, fraction)?;
    let inputs = data
        .pick(count)?
        .into_iter()
        .map(|i| Ok((format!("{}_{i:05}", data.split), data.input(i, device)?.0)))
        .collect::<Result<Vec<_>>>()?;
    Ok((inputs, data.summary()))
}

/// `secs` for people: milliseconds under a second, else seconds with one decimal.
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        let ms = secs * 1e3;
        if ms < 10.0 {
            format!("{ms:.2} ms")
        } else {
            format!("{ms:.0} ms")
        }
    } else {
        format!("{secs:.1} s")
    }
}

/// `--mask` as typed and the share of the patches it hides on the checkpoint's grid, e.g.
/// `center:0.25 (36% of the 25 patches masked)`: a center block is rounded to whole patches.
pub fn describe_mask(
    spec: &MaskSpec,
    inpainting: &Inpainting,
    config: &ModelConfig,
) -> Result<String> {
    let f = inpainting.mask.masked_fraction(config)?;
    Ok(format!(
        "{spec} ({} of the {} patches masked)",
        percent(f),
        config.num_patches()
    ))
}

/// A fraction as a percentage with at most one decimal (`36%`, `32.7%`).
fn percent(f: f64) -> String {
    let p = format!("{:.1}", f * 100.0);
    format!("{}%", p.trim_end_matches(".0"))
}

/// How to inpaint: the mask and the sampler (the same flags in `dmae sample` and `dmae eval`).
#[derive(clap::Args, Debug)]
pub struct InpaintArgs {
    /// center[:F] | random:R | block:R | FILE.png; video: tube:R | future:K | middle:K.
    /// Default center:0.25 (images), tube:0.9 (video).
    #[arg(long)]
    pub mask: Option<MaskSpec>,
    /// Default ddim (mae for MAE checkpoints).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Noise temperature: scales the sampler's starting noise and any noise it adds per step.
    /// Below 1 the fills lean towards the likeliest; 0 with DDIM eta 0 gives one fill per input.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Autoguidance: a weaker DiffMAE checkpoint of the same task (fewer training steps, a
    /// smaller decoder) whose predictions each step is pushed away from (Karras et al. 2024).
    #[arg(long, value_name = "CKPT")]
    pub guide: Option<PathBuf>,
    /// Weight w of --guide: x0 = guide's + w (model's - guide's); 1 is the model alone.
    #[arg(long, default_value_t = 2.0, requires = "guide")]
    pub guidance: f64,
}

impl InpaintArgs {
    /// The mask (the model's default when `--mask` is absent) and the inpainting call for
    /// `config` (MAE checkpoints take only the one-call MAE sampler).
    /// `device` is where a `--guide` checkpoint is loaded.
    pub fn resolve(&self, config: &ModelConfig, device: &Device) -> Result<(MaskSpec, Inpainting)> {
        let spec = self
            .mask
            .clone()
            .unwrap_or_else(|| MaskSpec::default_for(config));
        // A mask or sampler the checkpoint cannot take is a usage error (exit 2).
        let kind = match self.sampler {
            Some(a) if !config.is_diffusion() && a != SamplerArg::Mae => bail!(Usage(format!(
                "--sampler {}: this is an MAE checkpoint (mask-token decoder): it inpaints in one \
                 decoder call, use --sampler mae or leave --sampler out",
                format!("{a:?}").to_lowercase()
            ))),
            Some(a) => a.kind(self.steps, self.eta),
            None => Inpainting::default_sampler(config, self.steps, self.eta),
        };
        let masking = spec.masking(config).map_err(|e| match spec {
            // A mask file that cannot be read is a runtime error, like any input file.
            MaskSpec::File(_) => e,
            _ => Usage(format!("{e:#}")).into(),
        })?;
        let inpainting = Inpainting::new(config, masking, kind)
            .and_then(|i| i.with_temperature(self.temperature))
            .map_err(|e| Usage(format!("{e}")))?;
        let inpainting = match &self.guide {
            None => inpainting,
            Some(path) => {
                let guide = load_model(path, device)?;
                inpainting
                    .with_guide(guide, self.guidance)
                    .map_err(|e| Usage(format!("--guide {}: {e}", path.display())))?
            }
        };
        Ok((spec, inpainting))
    }
}

/// `dmae sample` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// DiffMAE or MAE checkpoint (safetensors with its config).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image file, or a directory of them (resized/cropped to the checkpoint's size).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub input: Option<PathBuf>,
    /// Validation samples of a data SPEC instead of files: bundled, mnist:DIR, cifar10:DIR (its
    /// test batch), folder:DIR (DIR/val, a --val-fraction hold-out, else the training images),
    /// frames:DIR, moving-mnist[:opts].
    #[arg(long, value_name = "SPEC")]
    pub data: Option<DataSpec>,
    /// With --data: how many samples, spread over the classes (class 0's first, class 1's first,
    /// ..., then the second of each).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    #[arg(long, value_name = "F", value_parser = unit_open, help = VAL_FRACTION_HELP, requires = "data")]
    pub val_fraction: Option<f64>,
    #[command(flatten)]
    pub inpaint: InpaintArgs,
    /// Seed of the masks and the sampler noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the strip of x0 predictions from t = T-1 to 0.
    #[arg(long)]
    pub trajectory: bool,
    /// Draws per input: N inpaintings of the same masked input with different sampler noise
    /// (DiffMAE generates; the draws show what it is unsure about).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub samples: u64,
    /// A second checkpoint (e.g. an MAE baseline) that inpaints the same masked inputs with its
    /// own default sampler; shown in a column after the masked input.
    #[arg(long, value_name = "CHECKPOINT")]
    pub compare: Option<PathBuf>,
    /// Also write every input on one labelled sheet: sheet.png (clips: sheet.gif), a row per
    /// input, columns [masked | compare | samples | truth].
    #[arg(long)]
    pub sheet: bool,
    /// Images per sampler batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `dmae sample`.
pub fn run(args: Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    if args.batch_size == 0 {
        bail!(Usage("--batch-size must be positive".into()));
    }
    let model = load_model(&args.checkpoint, &device)?;
    let config = model.config().clone();
    // The mask is checked against the checkpoint before any input is read.
    let (mask_spec, inpainting) = args.inpaint.resolve(&config, &device)?;
    let inpainting = inpainting.with_trajectory(args.trajectory);
    let compare = match &args.compare {
        Some(path) => Some(load_compare(
            path,
            &config,
            &inpainting,
            &args.inpaint,
            &device,
        )?),
        None => None,
    };
    let inputs = match (&args.input, &args.data) {
        (Some(p), _) => read_inputs(p, &config, &device)?,
        (None, Some(spec)) => {
            let (inputs, summary) =
                read_data(spec, args.count, args.val_fraction, &config, &device)?;
            println!("{summary}");
            inputs
        }
        (None, None) => bail!("give --input IMG|DIR or --data SPEC"),
    };
    ensure!(!inputs.is_empty(), "no input to sample");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // Draws after the first skip the trajectory (only the first one's is written).
    let more_draws = inpainting.clone().with_trajectory(false);
    let labels = column_labels(&inpainting, compare.as_ref().map(|c| &c.1), args.samples);
    let start = Instant::now();
    let mut written = Vec::new();
    let mut sheet_rows: Vec<Vec<Tensor>> = Vec::new();
    for (b, chunk) in inputs.chunks(args.batch_size).enumerate() {
        let batch = Tensor::stack(&chunk.iter().map(|(_, t)| t).collect::<Vec<_>>(), 0)?;
        let key = RngKey::new(args.seed, b as u64);
        // One mask per input for every draw and for the compared model.
        let mask = inpainting.mask.sample(&config, chunk.len(), key, &device)?;
        let mut draws = Vec::with_capacity(args.samples as usize);
        for k in 0..args.samples {
            // Draw 0 is what `--samples 1` gives; the others take their own noise streams.
            let noise = RngKey::new(args.seed, b as u64 | (k << 32));
            let with = if k == 0 { &inpainting } else { &more_draws };
            draws.push(with.run_with(&model, &batch, mask.clone(), noise, None)?);
        }
        let first = &draws[0];
        let mut columns = vec![images::grey_out(&first.input, &first.pixel_mask)?];
        if let Some((other, with)) = &compare {
            columns.push(
                with.run_with(other, &batch, mask.clone(), key, None)?
                    .sample,
            );
        }
        columns.extend(draws.iter().map(|d| d.sample.clone()));
        columns.push(first.input.clone());
        for (i, (name, _)) in chunk.iter().enumerate() {
            let row = columns
                .iter()
                .map(|c| Ok(c.get(i)?.unsqueeze(0)?))
                .collect::<Result<Vec<_>>>()?;
            written.extend(write_one(
                &args.out,
                name,
                &row,
                first,
                i,
                config.is_video(),
            )?);
            if args.sheet {
                sheet_rows.push(row);
            }
        }
    }
    if args.sheet {
        written.push(write_sheet(
            &args.out,
            &sheet_rows,
            &labels,
            config.is_video(),
        )?);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sampled {} input(s) x {} draw(s) in {} ({} each): {}, mask {}, seed {}",
        inputs.len(),
        args.samples,
        duration(secs),
        duration(secs / inputs.len() as f64),
        describe(&inpainting),
        describe_mask(&mask_spec, &inpainting, &config)?,
        args.seed
    );
    if let (Some(path), Some((_, with))) = (&args.compare, &compare) {
        println!("compared with {} ({})", path.display(), describe(with));
    }
    if args.trajectory {
        let ts = inpainting.sampler().timesteps();
        let cols: Vec<usize> = spaced(ts.len(), TRAJECTORY_COLUMNS)
            .into_iter()
            .map(|i| ts[i])
            .collect();
        println!("trajectory columns: x0 predictions at t = {cols:?} (the first is MAE-like)");
    }
    if config.norm_pix_loss {
        println!(
            "note: this checkpoint predicts per-patch normalised pixels; they are shown \
             de-normalised with each true patch's mean/variance (display only, as MAE's demo)"
        );
    }
    println!(
        "wrote {} file(s) to {} ([{}] per input)",
        written.len(),
        args.out.display(),
        labels.join(" | ")
    );
    Ok(())
}

/// `--compare`: the second checkpoint and its default inpainting with our mask. It must cut
/// inputs of the same size into the same patches, so that one mask hides the same pixels.
fn load_compare(
    path: &Path,
    config: &ModelConfig,
    ours: &Inpainting,
    flags: &InpaintArgs,
    device: &Device,
) -> Result<(DiffMae, Inpainting)> {
    let other = load_model(path, device)?;
    let c = other.config();
    let grid = |c: &ModelConfig| (c.input_dims(), c.patch_size, c.tubelet);
    if grid(c) != grid(config) {
        bail!(Usage(format!(
            "--compare {}: takes inputs {:?} in {}-pixel patches (tubelet {}), --checkpoint \
             {:?} in {}-pixel patches (tubelet {}): one mask cannot serve both",
            path.display(),
            c.input_dims(),
            c.patch_size,
            c.tubelet,
            config.input_dims(),
            config.patch_size,
            config.tubelet
        )));
    }
    let kind = Inpainting::default_sampler(c, flags.steps, flags.eta);
    let with = Inpainting::new(c, ours.mask.clone(), kind)
        .with_context(|| format!("--compare {}", path.display()))?;
    Ok((other, with))
}

/// The column labels of the pictures: masked, the compared model, the draws, the truth.
fn column_labels(ours: &Inpainting, compare: Option<&Inpainting>, samples: u64) -> Vec<String> {
    let name = |i: &Inpainting| match i.sampler().kind() {
        SamplerKind::Mae => "MAE",
        _ => "DiffMAE",
    };
    let mut labels = vec!["masked".to_string()];
    labels.extend(compare.map(|c| name(c).to_string()));
    if samples == 1 {
        labels.push(name(ours).to_string());
    } else {
        labels.extend((1..=samples).map(|k| format!("{} {k}", name(ours))));
    }
    labels.push("truth".into());
    labels
}

/// `sheet.png` (images) or `sheet.gif` (clips): the rows of every input under labelled
/// columns.
fn write_sheet(
    out: &Path,
    rows: &[Vec<Tensor>],
    labels: &[String],
    video: bool,
) -> Result<PathBuf> {
    let cat = |row: &[Tensor]| -> Result<Tensor> { Ok(Tensor::cat(row, 0)?) };
    if !video {
        let rows = rows.iter().map(|r| cat(r)).collect::<Result<Vec<_>>>()?;
        let p = out.join("sheet.png");
        let grid = images::grid_image(&rows)?;
        images::save_png(
            &p,
            &dmae::label::label_columns(&grid, labels, images::GRID_PAD),
        )?;
        return Ok(p);
    }
    let frames = rows
        .first()
        .and_then(|r| r.first())
        .map_or(Ok(0), |t| t.dim(2))?;
    let pictures = (0..frames)
        .map(|f| {
            let rows = rows
                .iter()
                .map(|r| cat(&r.iter().map(|c| frame(c, f)).collect::<Result<Vec<_>>>()?))
                .collect::<Result<Vec<_>>>()?;
            let grid = images::grid_image(&rows)?;
            Ok(dmae::label::label_columns(&grid, labels, images::GRID_PAD))
        })
        .collect::<Result<Vec<_>>>()?;
    let p = out.join("sheet.gif");
    images::write_gif(&p, &pictures, 250)?;
    Ok(p)
}

/// Frame `f` of clips `(N, C, T, H, W)` as images `(N, C, H, W)`.
fn frame(t: &Tensor, f: usize) -> Result<Tensor> {
    Ok(t.narrow(2, f, 1)?.squeeze(2)?)
}

/// Writes the pictures of input `i` of a batch, `row` its columns (each `(1, ...)`, see
/// [`column_labels`]) and the trajectory of `r`, its first draw; returns the paths written.
fn write_one(
    out: &Path,
    name: &str,
    row: &[Tensor],
    r: &Inpainted,
    i: usize,
    video: bool,
) -> Result<Vec<PathBuf>> {
    let one = |t: &Tensor| -> Result<Tensor> { Ok(t.get(i)?.unsqueeze(0)?) };
    let steps = spaced(r.trajectory.len(), TRAJECTORY_COLUMNS);
    // Trajectory strips carry their timesteps over the columns.
    let t_labels =
        dmae::label::timestep_labels(&steps.iter().map(|&k| r.trajectory[k].0).collect::<Vec<_>>());
    let labelled =
        |grid: &image::RgbImage| dmae::label::label_columns(grid, &t_labels, images::GRID_PAD);
    let mut paths = Vec::new();
    if !video {
        let p = out.join(format!("{name}.png"));
        images::write_grid(&p, &[Tensor::cat(row, 0)?])?;
        paths.push(p);
        if !steps.is_empty() {
            let strip = steps
                .iter()
                .map(|&k| one(&r.trajectory[k].1))
                .collect::<Result<Vec<_>>>()?;
            let p = out.join(format!("{name}_trajectory.png"));
            let grid = images::grid_image(&[Tensor::cat(&strip, 0)?])?;
            images::save_png(&p, &labelled(&grid))?;
            paths.push(p);
        }
        return Ok(paths);
    }
    // Clips (1, C, T, H, W): one picture of the columns per frame.
    let frames = row[0].dim(2)?;
    let dir = out.join(format!("{name}_frames"));
    let mut pictures = Vec::with_capacity(frames);
    for f in 0..frames {
        let cells = row
            .iter()
            .map(|c| frame(c, f))
            .collect::<Result<Vec<_>>>()?;
        let pic = images::grid_image(&[Tensor::cat(&cells, 0)?])?;
        let p = dir.join(format!("frame_{f:03}.png"));
        images::save_png(&p, &pic)?;
        paths.push(p);
        pictures.push(pic);
    }
    let p = out.join(format!("{name}.gif"));
    images::write_gif(&p, &pictures, 250)?;
    paths.push(p);
    if !steps.is_empty() {
        // Rows: frames; columns: the trajectory's x0 predictions.
        let rows = (0..frames)
            .map(|f| {
                let cells = steps
                    .iter()
                    .map(|&k| frame(&one(&r.trajectory[k].1)?, f))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&cells, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let p = out.join(format!("{name}_trajectory.png"));
        images::save_png(&p, &labelled(&images::grid_image(&rows)?))?;
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_specs_parse() {
        assert_eq!(
            "center".parse::<MaskSpec>().unwrap(),
            MaskSpec::Center(0.25)
        );
        assert_eq!(
            "random:0.5".parse::<MaskSpec>().unwrap(),
            MaskSpec::Random(0.5)
        );
        assert_eq!("future:2".parse::<MaskSpec>().unwrap(), MaskSpec::Future(2));
        assert_eq!(
            "holes/m.png".parse::<MaskSpec>().unwrap(),
            MaskSpec::File("holes/m.png".into())
        );
        let mixed = "tube:0.75+random:0.75".parse::<MaskSpec>().unwrap();
        assert_eq!(
            mixed,
            MaskSpec::Alternate(vec![MaskSpec::Tube(0.75), MaskSpec::Random(0.75)])
        );
        assert_eq!(mixed.to_string(), "tube:0.75+random:0.75");
        for bad in [
            "random:1.5",
            "future",
            "middle:x",
            "stripes",
            "center:0",
            "tube:0.75+",
            "tube+random:2",
        ] {
            assert!(bad.parse::<MaskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn spaced_keeps_ends() {
        assert_eq!(spaced(50, 10).first(), Some(&0));
        assert_eq!(spaced(50, 10).last(), Some(&49));
        assert_eq!(spaced(50, 10).len(), 10);
        assert_eq!(spaced(3, 10), vec![0, 1, 2]);
        assert_eq!(spaced(1, 10), vec![0]);
    }

    #[test]
    fn mask_specs_become_library_masks_for_the_model() {
        let mut c = ModelConfig::mnist();
        c.num_frames = 8;
        c.tubelet = 2;
        c.image_size = [8, 8];
        assert!(matches!(
            MaskSpec::Middle(4).masking(&c),
            Ok(Masking::Video(_))
        ));
        assert_eq!(
            MaskSpec::Future(2)
                .masking(&c)
                .unwrap()
                .num_masked(&c)
                .unwrap(),
            4
        );
        assert!(MaskSpec::Future(3).masking(&c).is_err());
        assert!(MaskSpec::Tube(0.5).masking(&ModelConfig::mnist()).is_err());
        let mixed = "tube:0.75+random:0.75".parse::<MaskSpec>().unwrap();
        assert!(matches!(mixed.masking(&c), Ok(Masking::Alternate(p)) if p.len() == 2));
        let e = mixed
            .masking(&ModelConfig::mnist())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tube:0.75") && e.contains("video"), "{e}");
        assert!(matches!(
            MaskSpec::Center(0.25).masking(&ModelConfig::mnist()),
            Ok(Masking::Image(_))
        ));
    }
}
