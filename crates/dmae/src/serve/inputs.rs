//! What `dmae serve` inpaints: the gallery (a validation split, read as `dmae sample --data`
//! reads it), uploads (decoded and fitted to the model's size as `dmae sample --input` does),
//! and the preset masks of the page's buttons (the library's strategies on the patch grid).

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use dmae_data::Channels;
use dmae_diffusion::{MaskStrategy, PatchGrid, RngKey};
use dmae_models::ModelConfig;
use serde::Serialize;

use crate::common::{DataSpec, EvalData};
use crate::images;

/// Largest upload in pixels (a 4096 x 4096 photo): decoding is bounded by the body size and
/// by this, whatever a PNG header announces.
pub const MAX_UPLOAD_PIXELS: u64 = 4096 * 4096;

/// Uploads kept (oldest dropped first); each is one input at the model's size.
const KEPT_UPLOADS: usize = 32;

/// An input's id on the page: `val-N` (gallery) or `upload-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputId {
    /// Sample `N` of the gallery.
    Val(usize),
    /// Upload number `N`.
    Upload(u64),
}

impl InputId {
    /// Parses `val-N` or `upload-N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("input: expected val-N or upload-N, got {s:?}");
        if let Some(n) = s.strip_prefix("val-") {
            return n.parse().map(InputId::Val).map_err(|_| bad());
        }
        if let Some(n) = s.strip_prefix("upload-") {
            return n.parse().map(InputId::Upload).map_err(|_| bad());
        }
        Err(bad())
    }
}

/// The validation split the page offers as inputs.
pub struct Gallery {
    name: String,
    data: EvalData,
    device: Device,
}

impl Gallery {
    /// Opens the validation split of `spec`, or of the checkpoint's run (`[train] data` in
    /// `config.toml` beside it), or the bundled digits (Moving-MNIST clips of the model's size
    /// for video models).
    pub fn open(
        spec: Option<&DataSpec>,
        checkpoint: &Path,
        config: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let (name, spec) = match spec {
            Some(s) => (spec_name(s), s.clone()),
            None => default_spec(checkpoint, config)?,
        };
        // As `dmae sample --data` reads it: through the evaluation pipeline, the training
        // images of a folder without validation images.
        let data = EvalData::open_for_pictures(&spec, config, None)
            .with_context(|| format!("gallery {name}"))?;
        let gallery = Self {
            name,
            data,
            device: device.clone(),
        };
        // A dataset of another shape fails here, at start, not on the first click.
        gallery.get(0)?;
        Ok(gallery)
    }

    /// Where the samples come from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.data.dataset.len()
    }

    /// Sample `i` at the model's input shape `(C, [T,] H, W)`.
    pub fn get(&self, i: usize) -> Result<Tensor> {
        ensure!(
            i < self.len(),
            "val-{i}: the gallery has {} samples",
            self.len()
        );
        Ok(self
            .data
            .input(i, &self.device)
            .with_context(|| format!("val-{i}"))?
            .0)
    }
}

/// `--data`'s spec as people wrote it, e.g. `folder:photos/` or `moving-mnist (canvas 64, 20
/// frames, 2 digits)`.
fn spec_name(spec: &DataSpec) -> String {
    match spec {
        DataSpec::Bundled => "bundled".into(),
        DataSpec::Mnist(p) => format!("mnist:{}", p.display()),
        DataSpec::Cifar10(p) => format!("cifar10:{}", p.display()),
        DataSpec::Folder(p) => format!("folder:{}", p.display()),
        DataSpec::Frames(p) => format!("frames:{}", p.display()),
        DataSpec::MovingMnist(c) => format!(
            "moving-mnist (canvas {}, {} frames, {} digit{})",
            c.canvas,
            c.frames,
            c.num_digits,
            if c.num_digits == 1 { "" } else { "s" }
        ),
    }
}

/// The gallery when `--data` is not given (see [`Gallery::open`]).
fn default_spec(checkpoint: &Path, config: &ModelConfig) -> Result<(String, DataSpec)> {
    let run_config = checkpoint
        .parent()
        .map(|d| d.join("config.toml"))
        .filter(|p| p.is_file());
    if let Some(path) = run_config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let data = table
            .get("train")
            .and_then(|t| t.get("data"))
            .and_then(|d| d.as_str());
        if let Some(spec) = data {
            let parsed = spec
                .parse()
                .with_context(|| format!("{}: [train] data", path.display()))?;
            return Ok((format!("{spec} (the run's config.toml)"), parsed));
        }
    }
    if config.is_video() {
        let [h, _] = config.image_size;
        let spec = format!("moving-mnist:frames={},canvas={h}", config.num_frames);
        return Ok((spec.clone(), spec.parse()?));
    }
    Ok(("bundled".into(), DataSpec::Bundled))
}

/// What `POST /api/upload` answers.
#[derive(Debug, Serialize)]
pub struct Added {
    /// The input's id (`upload-N`).
    pub id: String,
    /// What was done to fit it, e.g. `640x480 RGB -> 28x28 grey (resized, center crop)`.
    pub note: String,
}

/// Uploaded inputs, fitted to the model, the newest [`KEPT_UPLOADS`] kept.
pub struct Uploads {
    config: ModelConfig,
    device: Device,
    next: AtomicU64,
    kept: Mutex<VecDeque<(u64, Tensor)>>,
}

impl Uploads {
    /// An empty store for inputs of `config`.
    pub fn new(config: ModelConfig, device: Device) -> Self {
        Self {
            config,
            device,
            next: AtomicU64::new(1),
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// Decodes an uploaded image (PNG, JPEG, GIF, BMP), converts it to the model's channels
    /// and fits it to its size as `dmae sample --input` does; errors say what is wrong with it.
    pub fn add(&self, bytes: &[u8]) -> Result<Added> {
        ensure!(
            !self.config.is_video(),
            "this is a video model: pick a clip from the gallery (uploads are single images)"
        );
        ensure!(!bytes.is_empty(), "the upload is empty");
        let (w, h, colour) = header(bytes)?;
        let pixels = u64::from(w) * u64::from(h);
        ensure!(
            pixels <= MAX_UPLOAD_PIXELS,
            "the image is {w}x{h} ({:.1} megapixels); this server takes at most {:.1} megapixels",
            pixels as f64 / 1e6,
            MAX_UPLOAD_PIXELS as f64 / 1e6
        );
        let c = self.config.in_channels;
        let channels = Channels::from_count(c).map_err(|e| anyhow::anyhow!("{e}"))?;
        let planes = dmae_data::decode::decode_image(bytes, Path::new("upload"), channels)?;
        let [mh, mw] = self.config.image_size;
        let image = images::fit_planes(planes, &self.config, &self.device)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.push_back((id, image));
        while kept.len() > KEPT_UPLOADS {
            kept.pop_front();
        }
        let model_colour = if c == 1 { "grey" } else { "RGB" };
        let mut note = format!("{w}x{h} {colour}");
        if colour != model_colour {
            note += &format!(
                " -> {model_colour} ({})",
                if c == 1 {
                    "Rec. 709 luma, as the model takes 1 channel"
                } else {
                    "grey replicated, as the model takes 3 channels"
                }
            );
        }
        if (w as usize, h as usize) != (mw, mh) {
            note += &format!(", fitted to {mw}x{mh} (shorter side resized, center crop)");
        }
        Ok(Added {
            id: format!("upload-{id}"),
            note,
        })
    }

    /// Upload `id`, if still kept.
    pub fn get(&self, id: u64) -> Result<Tensor> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match kept.iter().find(|(i, _)| *i == id) {
            Some((_, t)) => Ok(t.clone()),
            None => bail!("upload-{id}: no such upload (the server keeps the last {KEPT_UPLOADS})"),
        }
    }
}

/// Width, height and colour (`grey`, `grey+alpha`, `RGB`, `RGBA`) from an image's header,
/// without decoding it; an error names what the bytes are not.
fn header(bytes: &[u8]) -> Result<(u32, u32, &'static str)> {
    use image::ImageDecoder;
    let not_image = || {
        anyhow::anyhow!(
            "not an image this server can read (PNG, JPEG, GIF or BMP); the upload starts with {:02x?}",
            &bytes[..bytes.len().min(8)]
        )
    };
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| not_image())?;
    if reader.format().is_none() {
        return Err(not_image());
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| anyhow::anyhow!("not a readable image: {e}"))?;
    let (w, h) = decoder.dimensions();
    let colour = match decoder.color_type().channel_count() {
        1 => "grey",
        2 => "grey+alpha",
        3 => "RGB",
        _ => "RGBA",
    };
    Ok((w, h, colour))
}

/// An input `(C, H, W)` as a PNG, or a clip `(C, T, H, W)` as its frames side by side.
pub fn strip_png(input: &Tensor) -> Result<Vec<u8>> {
    let frames = match input.rank() {
        3 => input.unsqueeze(1)?,
        _ => input.clone(),
    };
    let (_, t, h, w) = frames.dims4()?;
    let mut strip = image::RgbImage::new((t * w) as u32, h as u32);
    for f in 0..t {
        let frame = images::to_rgb8(&frames.narrow(1, f, 1)?.squeeze(1)?)?;
        image::imageops::replace(&mut strip, &frame, (f * w) as i64, 0);
    }
    png_bytes(&strip)
}

/// An RGB image as PNG bytes.
pub fn png_bytes(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .context("cannot encode a PNG")?;
    Ok(out.into_inner())
}

/// The spatial mask (`rows x cols`, `true` = hidden) of a page button: `center` (a centered
/// block of `ratio` of the area, as `--mask center:F`), `random` (`ratio` of the patches at
/// random, drawn from `seed`) or `block` (BEiT block-wise).
pub fn strategy_mask(config: &ModelConfig, mode: &str, ratio: f64, seed: u64) -> Result<Vec<bool>> {
    ensure!(
        ratio > 0.0 && ratio < 1.0,
        "ratio: expected a fraction in (0, 1), got {ratio}"
    );
    let strategy = match mode {
        "center" => MaskStrategy::center_block(ratio)?,
        "random" => MaskStrategy::random(ratio)?,
        "block" => MaskStrategy::block_wise(ratio)?,
        _ => bail!("mode: expected center, random or block, got {mode:?}"),
    };
    let (rows, cols) = config.grid();
    let drawn = strategy.sample(
        PatchGrid::new(rows, cols),
        1,
        RngKey::new(seed, 0),
        &Device::Cpu,
    )?;
    Ok(drawn.masks()[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_ids_parse() {
        assert_eq!(InputId::parse("val-3").unwrap(), InputId::Val(3));
        assert_eq!(InputId::parse("upload-12").unwrap(), InputId::Upload(12));
        for bad in ["val-", "val--1", "x-1", "upload-a", ""] {
            assert!(InputId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uploads_are_checked_fitted_and_explained() -> Result<()> {
        let uploads = Uploads::new(ModelConfig::mnist(), Device::Cpu);
        let e = uploads
            .add(b"hello, not a picture")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an image"), "{e}");
        // A 40x30 RGB picture becomes one 28x28 grey input.
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([200, 100, 0]));
        let added = uploads.add(&png_bytes(&img)?)?;
        assert!(added.note.contains("40x30 RGB -> grey"), "{}", added.note);
        assert!(added.note.contains("fitted to 28x28"), "{}", added.note);
        let id = match InputId::parse(&added.id)? {
            InputId::Upload(i) => i,
            other => bail!("{other:?}"),
        };
        assert_eq!(uploads.get(id)?.dims(), &[1, 28, 28]);
        assert!(uploads.get(id + 1).is_err());
        // A header announcing a huge image is refused before decoding.
        let big = image::GrayImage::new(5000, 4000);
        let e = uploads.add(&{
            let mut c = Cursor::new(Vec::new());
            big.write_to(&mut c, image::ImageFormat::Png)?;
            c.into_inner()
        });
        assert!(e.unwrap_err().to_string().contains("megapixels"));
        Ok(())
    }

    #[test]
    fn preset_masks_follow_the_library() -> Result<()> {
        let config = ModelConfig::mnist();
        let center = strategy_mask(&config, "center", 0.25, 0)?;
        // As in dmae-models' mask tests: a center block of 0.25 on 7 x 7 is 4 x 4 patches.
        assert_eq!(center.iter().filter(|&&m| m).count(), 16);
        assert!(center[3 * 7 + 3]);
        assert!(!center[0]);
        let random = strategy_mask(&config, "random", 0.5, 7)?;
        assert_eq!(random, strategy_mask(&config, "random", 0.5, 7)?);
        assert!(strategy_mask(&config, "stripes", 0.5, 0).is_err());
        assert!(strategy_mask(&config, "center", 1.5, 0).is_err());
        Ok(())
    }
}
