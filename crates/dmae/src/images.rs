//! Tensors to pictures and back: image files in at a checkpoint's size (through dmae-data's
//! [`Pipeline`]), PNG grids and animated GIFs out.
//!
//! Grid layout (used by `dmae sample`, and by training's `samples/` grids): every cell is an
//! `H x W` image scaled up by the integer factor [`display_scale`] (nearest neighbour, so
//! 28-px digits stay crisp), cells are separated and surrounded by [`GRID_PAD`] pixels of dark
//! grey, so a grid of `r` rows and `c` columns is `c·s·W + (c+1)·GRID_PAD` pixels wide and
//! `r·s·H + (r+1)·GRID_PAD` high.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use dmae_data::rng::sample_rng;
use dmae_data::{Channels, Pipeline, Sample, Transform};
use dmae_models::ModelConfig;
use image::codecs::gif::{GifEncoder, Repeat};
use image::imageops::FilterType;
use image::{Delay, DynamicImage, Frame, Rgb, RgbImage};

/// Pixels between and around grid cells.
pub const GRID_PAD: u32 = 2;
/// Colour of the padding.
const PAD_COLOUR: Rgb<u8> = Rgb([40, 40, 40]);
/// The grey value (in [0, 1]) that marks masked pixels in a "masked input" panel.
pub const MASK_GREY: f64 = 0.5;

/// Integer up-scaling for display: the smallest `s >= 1` with `s · max(H, W) >= 64`, at most 8.
pub fn display_scale(height: usize, width: usize) -> u32 {
    let side = height.max(width).max(1);
    (64usize.div_ceil(side)).clamp(1, 8) as u32
}

/// Reads an image file for `config`: decoded by dmae-data (format from the content, truncated
/// JPEGs refused, errors name the file) into the checkpoint's channels (1 = luma, 3 = RGB),
/// then fitted to its size by the evaluation [`Pipeline`] (resize to fill + center crop, the
/// one resampling implementation of the project). Returns `(C, H, W)` f32 in [0, 1].
pub fn load_image(path: &Path, config: &ModelConfig, device: &Device) -> Result<Tensor> {
    let channels = Channels::from_count(config.in_channels)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let planes = dmae_data::decode::read_image(path, channels)?;
    fit_planes(planes, config, device).with_context(|| path.display().to_string())
}

/// Decoded planes (in the checkpoint's channels) fitted to its size by the evaluation
/// [`Pipeline`], as `(C, H, W)` f32 in [0, 1] (files: [`load_image`]; `dmae serve`'s uploads).
pub fn fit_planes(
    planes: dmae_data::decode::Planes,
    config: &ModelConfig,
    device: &Device,
) -> Result<Tensor> {
    let sample = Sample::image(planes.data, planes.channels, planes.height, planes.width, 0)?;
    let fitted = Pipeline::eval(config.image_size, config.in_channels)?
        .apply(sample, &mut sample_rng(0, 0, 0))?;
    Ok(fitted.to_tensor(device)?)
}

/// One image `(C, H, W)` (C = 1 or 3, values in [0, 1], clamped) as 8-bit RGB; grey images are
/// replicated over the three channels.
pub fn to_rgb8(image: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = image.dims3().context("to_rgb8: expected (C, H, W)")?;
    ensure!(
        c == 1 || c == 3,
        "cannot show a {c}-channel image (1 or 3 channels)"
    );
    let v = image
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .clamp(0f32, 1f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let byte = |x: f32| (x * 255.0).round() as u8;
    let mut out = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = |ch: usize| byte(v[(ch.min(c - 1) * h + y) * w + x]);
            out.put_pixel(x as u32, y as u32, Rgb([px(0), px(1), px(2)]));
        }
    }
    Ok(out)
}

/// A grid picture: row `i` shows the `N_i` images of `rows[i]` (each `(N_i, C, H, W)`, values
/// in [0, 1]) left to right; every image must have the same `H x W`. Layout in the module docs.
pub fn grid_image(rows: &[Tensor]) -> Result<RgbImage> {
    ensure!(!rows.is_empty(), "a grid needs at least one row");
    let mut hw = None;
    let mut cols = 0;
    for r in rows {
        let (n, _, h, w) = r.dims4().context("grid rows must be (N, C, H, W)")?;
        match hw {
            None => hw = Some((h, w)),
            Some(s) => ensure!(
                s == (h, w),
                "grid rows must hold images of one size: {s:?} and {:?}",
                (h, w)
            ),
        }
        cols = cols.max(n);
    }
    let (h, w) = hw.unwrap_or((1, 1));
    let s = display_scale(h, w);
    let (cw, ch) = (w as u32 * s, h as u32 * s);
    let width = cols as u32 * cw + (cols as u32 + 1) * GRID_PAD;
    let height = rows.len() as u32 * ch + (rows.len() as u32 + 1) * GRID_PAD;
    let mut out = RgbImage::from_pixel(width, height, PAD_COLOUR);
    for (i, r) in rows.iter().enumerate() {
        for j in 0..r.dim(0)? {
            let cell = to_rgb8(&r.get(j)?)?;
            let cell = image::imageops::resize(&cell, cw, ch, FilterType::Nearest);
            let x = GRID_PAD + j as u32 * (cw + GRID_PAD);
            let y = GRID_PAD + i as u32 * (ch + GRID_PAD);
            image::imageops::replace(&mut out, &cell, i64::from(x), i64::from(y));
        }
    }
    Ok(out)
}

/// Writes [`grid_image`]`(rows)` as a PNG at `path` (parent directories are created).
pub fn write_grid(path: &Path, rows: &[Tensor]) -> Result<()> {
    let img = grid_image(rows)?;
    save_png(path, &img)
}

/// Saves an RGB image as PNG, creating parent directories.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Encoded in memory, then written atomically: a killed run never leaves half a PNG.
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    dmae_models::write_atomic(path, &png)?;
    Ok(())
}

/// Writes `frames` as an endlessly looping animated GIF, `delay_ms` per frame.
pub fn write_gif(path: &Path, frames: &[RgbImage], delay_ms: u32) -> Result<()> {
    ensure!(!frames.is_empty(), "a GIF needs at least one frame");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Encoded in memory, then written atomically, as save_png.
    let mut gif = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut gif, 10);
        enc.set_repeat(Repeat::Infinite)?;
        for f in frames {
            let rgba = DynamicImage::ImageRgb8(f.clone()).to_rgba8();
            enc.encode_frame(Frame::from_parts(
                rgba,
                0,
                0,
                Delay::from_numer_denom_ms(delay_ms, 1),
            ))
            .with_context(|| format!("cannot encode {}", path.display()))?;
        }
    }
    dmae_models::write_atomic(path, &gif)?;
    Ok(())
}

/// `images` with the pixels where `pixel_mask` is 1 replaced by [`MASK_GREY`] (same shapes).
pub fn grey_out(images: &Tensor, pixel_mask: &Tensor) -> Result<Tensor> {
    let grey = (pixel_mask * MASK_GREY)?;
    let keep = pixel_mask.affine(-1.0, 1.0)?;
    Ok(((images * keep)? + grey)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_the_documented_size_and_pixels() -> Result<()> {
        let dev = Device::Cpu;
        let white = Tensor::ones((2, 1, 28, 28), DType::F32, &dev)?;
        let black = Tensor::zeros((3, 3, 28, 28), DType::F32, &dev)?;
        let img = grid_image(&[white, black])?;
        let s = display_scale(28, 28);
        assert_eq!(s, 3);
        assert_eq!(img.width(), 3 * 28 * s + 4 * GRID_PAD);
        assert_eq!(img.height(), 2 * 28 * s + 3 * GRID_PAD);
        assert_eq!(img.get_pixel(GRID_PAD, GRID_PAD).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 0).0, PAD_COLOUR.0);
        assert_eq!(img.get_pixel(GRID_PAD, 2 * GRID_PAD + 28 * s).0, [0, 0, 0]);
        // The third cell of the first row is empty (padding colour).
        assert_eq!(
            img.get_pixel(3 * GRID_PAD + 2 * 28 * s + 1, GRID_PAD + 1).0,
            PAD_COLOUR.0
        );
        let bad = Tensor::zeros((1, 1, 14, 14), DType::F32, &dev)?;
        assert!(grid_image(&[Tensor::zeros((1, 1, 28, 28), DType::F32, &dev)?, bad]).is_err());
        Ok(())
    }

    #[test]
    fn grey_out_replaces_only_masked_pixels() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.0f32, 1.0, 0.2, 0.9], &dev)?;
        let m = Tensor::new(&[1.0f32, 0.0, 1.0, 0.0], &dev)?;
        assert_eq!(
            grey_out(&x, &m)?.to_vec1::<f32>()?,
            vec![0.5, 1.0, 0.5, 0.9]
        );
        Ok(())
    }
}
