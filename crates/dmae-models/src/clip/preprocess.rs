//! CLIP's image pre-processing on tensors: images in `[0, 1]` of any size become the tower's
//! `pixel_values` (resized to its square input, normalised with its mean/std).
//!
//! Resize: the whole image goes to `S × S` (the tower's `image_size`) with PIL's bicubic filter
//! (`a = −0.5`, support widened by the scale factor when shrinking, as `PIL.Image.resize`
//! does), then values are clamped to `[0, 1]`. CLIPImageProcessor instead resizes the shortest
//! side to `S` and center-crops `S × S`. For square images (MNIST, ImageNet crops) the two are
//! the same; for other shapes we squash instead of crop, on purpose: the CLIP patch grid must
//! cover the same image area as the model's patch grid, or the border patches would have no
//! CLIP feature to regress. The clamp stands in for the processor's 8-bit PIL round trip (which
//! clips bicubic overshoot), without its quantisation. Grey images are replicated to RGB, as the
//! processor's `convert_rgb` does.
//!
//! The separable filter is two matrix products, `Wh · X · Wwᵀ`, with the weight matrices
//! (`S × H`, `S × W`) built once per call on the host: the images never leave their device.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// OpenAI CLIP's normalisation mean (RGB), CLIPImageProcessor's default.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (RGB), CLIPImageProcessor's default
/// (`[0.26862954, 0.26130258, 0.27577711]`, written as the nearest f32s).
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_55, 0.261_302_6, 0.275_777_1];

/// Resize and normalisation of images for one CLIP tower.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    /// Output side `S` (the tower's `image_size`).
    pub image_size: usize,
    /// Per-channel (RGB) mean subtracted after resizing.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

#[derive(Deserialize)]
struct PreprocessorJson {
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

impl ClipPreprocess {
    /// OpenAI's mean/std for an RGB tower of side `image_size`.
    pub fn openai(image_size: usize) -> Self {
        Self {
            image_size,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
        }
    }

    /// Reads `image_mean` / `image_std` (3 values each) from a `preprocessor_config.json` (`path`
    /// names the file in errors); a missing field keeps OpenAI's value. Its `size` /
    /// `crop_size` are not used: the tower's position embeddings fix the input side.
    pub fn from_json(text: &str, path: &str, image_size: usize) -> Result<Self> {
        let io = |reason: String| Error::Io {
            path: path.to_string(),
            reason,
        };
        let p: PreprocessorJson = serde_json::from_str(text).map_err(|e| io(e.to_string()))?;
        let mut out = Self::openai(image_size);
        for (field, given, slot) in [
            ("image_mean", p.image_mean, &mut out.mean),
            ("image_std", p.image_std, &mut out.std),
        ] {
            if let Some(v) = given {
                *slot = match <[f32; 3]>::try_from(v.as_slice()) {
                    Ok(a) if a.iter().all(|x| x.is_finite()) => a,
                    _ => return Err(io(format!("{field} must hold 3 finite numbers, got {v:?}"))),
                };
            }
        }
        if out.std.iter().any(|&s| s <= 0.0) {
            return Err(io(format!("image_std must be positive, got {:?}", out.std)));
        }
        Ok(out)
    }

    /// `(N, C, H, W)` images in `[0, 1]` (`C` = 1 or 3; any `H, W`) →
    /// `(N, 3, S, S)` f32 `pixel_values`: bicubic resize, clamp to `[0, 1]`, grey → RGB,
    /// `(x − mean) / std` per channel. See the module docs for the resize choice.
    pub fn apply(&self, images: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = images.dims4().map_err(|_| {
            Error::shape(
                "images",
                &[usize::MAX, 3, usize::MAX, usize::MAX],
                images.dims(),
            )
        })?;
        if c != 1 && c != 3 || h == 0 || w == 0 {
            return Err(Error::shape(
                "images",
                &[n, 3, usize::MAX, usize::MAX],
                images.dims(),
            ));
        }
        let dev = images.device();
        let s = self.image_size;
        let mut x = images.to_dtype(DType::F32)?;
        if w != s {
            let ww = bicubic_matrix(w, s, dev)?; // (S, W)
            x = x.broadcast_matmul(&ww.t()?)?;
        }
        if h != s {
            let wh = bicubic_matrix(h, s, dev)?; // (S, H)
            x = wh.broadcast_matmul(&x)?;
        }
        let mut x = x.clamp(0f32, 1f32)?;
        if c == 1 {
            x = x.broadcast_as((n, 3, s, s))?;
        }
        let mean = Tensor::from_slice(&self.mean, (1, 3, 1, 1), dev)?;
        let std = Tensor::from_slice(&self.std, (1, 3, 1, 1), dev)?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?.contiguous()?)
    }
}

/// PIL's bicubic kernel (`a = −0.5`, Keys' cubic convolution).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The `(output, input)` matrix of PIL's 1-D bicubic resampling (`precompute_coeffs` in
/// Pillow's Resample.c): output pixel `o` is centred at `(o + ½)·scale` in input pixels; when
/// shrinking, the kernel is stretched by `scale` (antialiasing); each row is normalised to sum 1.
pub fn bicubic_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let mut w = vec![0f32; output * input];
    for o in 0..output {
        let center = (o as f64 + 0.5) * scale;
        // C's `(int)` truncation, as Pillow rounds the window bounds.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).clamp(0, input as i64) as usize;
        let k: Vec<f64> = (lo..hi)
            .map(|x| cubic((x as f64 - center + 0.5) / filter_scale))
            .collect();
        let sum: f64 = k.iter().sum();
        let norm = if sum == 0.0 { 1.0 } else { sum };
        for (x, k) in (lo..hi).zip(k) {
            w[o * input + x] = (k / norm) as f32;
        }
    }
    w
}

fn bicubic_matrix(input: usize, output: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        bicubic_weights(input, output),
        (output, input),
        dev,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_rows_sum_to_one() {
        let w = bicubic_weights(7, 7);
        for o in 0..7 {
            for i in 0..7 {
                assert_eq!(w[o * 7 + i], f32::from(u8::from(o == i)));
            }
        }
        for (i, o) in [(28, 224), (256, 224), (5, 3), (3, 16)] {
            let w = bicubic_weights(i, o);
            for r in w.chunks(i) {
                assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_and_grey_becomes_rgb() {
        let p = ClipPreprocess::openai(16);
        let img = Tensor::full(0.5f32, (2, 1, 9, 13), &Device::Cpu).unwrap();
        let x = p.apply(&img).unwrap();
        assert_eq!(x.dims(), &[2, 3, 16, 16]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (k, chunk) in v.chunks(256).enumerate() {
            let c = k % 3;
            let want = (0.5 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c];
            assert!(chunk.iter().all(|&x| (x - want).abs() < 1e-5), "{k}");
        }
    }

    #[test]
    fn refuses_wrong_channels_and_bad_json() {
        let p = ClipPreprocess::openai(16);
        let img = Tensor::zeros((1, 2, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(p.apply(&img).unwrap_err().to_string().contains("images"));
        let e = ClipPreprocess::from_json(r#"{"image_mean": [0.5, 0.5]}"#, "p.json", 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.json") && e.contains("image_mean"), "{e}");
        let ok = ClipPreprocess::from_json(r#"{"image_std": [1, 2, 3]}"#, "p.json", 16).unwrap();
        assert_eq!((ok.mean, ok.std), (OPENAI_CLIP_MEAN, [1., 2., 3.]));
    }
}
