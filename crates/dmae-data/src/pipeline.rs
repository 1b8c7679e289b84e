//! [`Pipeline`]: any decoded image (any size, grey or colour) to the model's input, built in one call.
//!
//! | stage | spatial | flip | channels |
//! |---|---|---|---|
//! | [`Stage::Train`] | random resized crop to `H x W`: area 20-100 % of the image, aspect 3/4-4/3 (MAE's defaults); or, [`Pipeline::with_random_crop`]`(false)`, the eval stage's | left-right with p = 0.5 when `flip` | grey <-> RGB to the model's count |
//! | [`Stage::Eval`] | resize to fill `H x W` + center crop (crop fraction 1) | never | the same |
//!
//! Choices, and why:
//! - **Antialiased bilinear** resampling (PIL's triangle filter, widened when shrinking), not MAE's bicubic:
//!   bicubic overshoots, so it would hand the model pixels outside `[0, 1]` (real-pixel presets such as `mnist`
//!   and `tiny-32` regress raw pixels), and the loader's bilinear path is the fast one.
//! - **Evaluation crops nothing it does not have to**: the largest centered window of the model's aspect ratio
//!   is resized to `H x W` (a plain resize-to-fill), instead of MAE's "resize to `size / 0.875`, center crop
//!   `size`". Inpainting is judged on the whole picture, and an image already at the model's size (the bundled
//!   digits, CIFAR at 32 px) must pass through untouched; MAE's 12.5 % border crop would upscale and cut every one.
//!   [`crate::Compose::mae_eval`] keeps MAE's version for recognition numbers that must match the paper's protocol.
//! - **No normalisation**: the models take pixels in `[0, 1]` (per-patch normalisation of the targets is the
//!   model's `norm_pix_loss`), so sample grids show the model's input as it is.
//! - **Random crops are optional** ([`Pipeline::with_random_crop`]): a dataset whose images already have the
//!   model's size (the bundled digits at 28 px) can train on whole images, as MAE-style digit recipes do; a
//!   crop of 20 % of a digit is rarely still that digit.
//! - **Flip** is a per-dataset default ([`crate::Dataset::default_flip`]: off for digits) that a caller may
//!   override.
//!
//! Randomness comes only from the generator the [`crate::Loader`] derives from `(seed, epoch, sample index)`, so a
//! resumed run sees exactly the crops and flips it would have seen.

use crate::dataset::{Dataset, Sample, Split};
use crate::error::{Error, Result};
use crate::rng::SampleRng;
use crate::transforms::{hflip, resized_crop, CropBox, RandomResizedCrop, ToChannels, Transform};

/// What a [`Pipeline`] prepares images for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Training: random resized crops and (optionally) flips.
    Train,
    /// Evaluation, sampling and previews: the whole image, deterministic.
    Eval,
}

impl Stage {
    /// The stage that reads `split`: [`Stage::Train`] for the training split, [`Stage::Eval`] otherwise.
    pub fn for_split(split: Split) -> Self {
        match split {
            Split::Train => Stage::Train,
            Split::Val | Split::Test => Stage::Eval,
        }
    }
}

/// Horizontal flip probability of [`Stage::Train`] when flipping is on.
pub const FLIP_P: f64 = 0.5;

/// The transform from a decoded sample of any size and 1 or 3 channels to the model's `channels x H x W` input;
/// see the module docs for what each stage does and why. Video samples `(C, T, H, W)` get the same crop and flip
/// on every frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    height: usize,
    width: usize,
    channels: ToChannels,
    stage: Stage,
    flip: bool,
    crop: RandomResizedCrop,
    random_crop: bool,
}

impl Pipeline {
    /// The pipeline to `image_size = [H, W]` and `channels` (1 or 3) for `stage`; `flip` applies to
    /// [`Stage::Train`] only (evaluation never flips). Errors name the bad value.
    pub fn new(image_size: [usize; 2], channels: usize, stage: Stage, flip: bool) -> Result<Self> {
        let [height, width] = image_size;
        if height == 0 || width == 0 {
            return Err(Error::Config(format!(
                "image size {height}x{width}: both sides must be positive"
            )));
        }
        Ok(Pipeline {
            height,
            width,
            channels: ToChannels::new(channels)?,
            stage,
            flip: flip && stage == Stage::Train,
            crop: RandomResizedCrop::new(height, width),
            random_crop: true,
        })
    }

    /// [`Stage::Train`]: random resized crop (MAE's scale and ratio), flip when `flip`, channel conversion.
    pub fn train(image_size: [usize; 2], channels: usize, flip: bool) -> Result<Self> {
        Self::new(image_size, channels, Stage::Train, flip)
    }

    /// [`Stage::Eval`]: resize to fill and center crop, channel conversion.
    pub fn eval(image_size: [usize; 2], channels: usize) -> Result<Self> {
        Self::new(image_size, channels, Stage::Eval, false)
    }

    /// Sets the training crop's area range (fractions of the image, `0 < lo <= hi <= 1`; MAE: 0.2-1).
    pub fn with_scale(mut self, lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(Error::Config(format!(
                "crop scale {lo}-{hi}: expected 0 < lo <= hi <= 1"
            )));
        }
        self.crop = self.crop.with_scale(lo, hi);
        Ok(self)
    }

    /// Whether [`Stage::Train`] takes random resized crops (the default) or, with `false`, the whole image as
    /// [`Stage::Eval`] does (resize to fill + center crop: the identity for images at the output size); the flip
    /// and the channel conversion stay. No effect on [`Stage::Eval`].
    pub fn with_random_crop(mut self, random_crop: bool) -> Self {
        self.random_crop = random_crop;
        self
    }

    /// Whether [`Stage::Train`] takes random resized crops.
    pub fn random_crop(&self) -> bool {
        self.random_crop && self.stage == Stage::Train
    }

    /// Output `[H, W]`.
    pub fn image_size(&self) -> [usize; 2] {
        [self.height, self.width]
    }

    /// Output channels (1 or 3).
    pub fn channels(&self) -> usize {
        self.channels.channels
    }

    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether training flips (always false for [`Stage::Eval`]).
    pub fn flips(&self) -> bool {
        self.flip
    }

    /// The training crop's area range.
    pub fn scale(&self) -> (f64, f64) {
        self.crop.scale
    }

    /// One line for people, e.g. `32x32 RGB, random-resized-crop (area 20-100%, aspect 3/4-4/3, bilinear),
    /// horizontal flip p=0.5`.
    pub fn describe(&self) -> String {
        let colour = if self.channels() == 1 {
            "grey (colour images to luma)"
        } else {
            "RGB (grey images repeated)"
        };
        const FILL: &str = "resize to fill + center crop (antialiased bilinear)";
        let spatial = match self.stage {
            Stage::Train => {
                let (lo, hi) = self.crop.scale;
                let crop = if self.random_crop {
                    format!(
                        "random-resized-crop (area {}-{}%, aspect 3/4-4/3, antialiased bilinear)",
                        percent(lo),
                        percent(hi)
                    )
                } else {
                    format!("no random crop, {FILL}")
                };
                let flip = if self.flip {
                    format!("horizontal flip p={FLIP_P}")
                } else {
                    "no flip".to_string()
                };
                format!("{crop}, {flip}")
            }
            Stage::Eval => FILL.to_string(),
        };
        format!("{}x{} {colour}, {spatial}", self.height, self.width)
    }

    /// The start-up line of a run: which split, how many images of how many classes, and what they become,
    /// e.g. `train split: 8,000 images, 10 classes -> 28x28 grey (...), random-resized-crop (...), no flip`.
    pub fn summary(&self, split: Split, dataset: &dyn Dataset) -> String {
        let n = dataset.len();
        format!(
            "{split} split: {} image{}, {} class{} -> {}",
            thousands(n),
            if n == 1 { "" } else { "s" },
            dataset.num_classes(),
            if dataset.num_classes() == 1 { "" } else { "es" },
            self.describe()
        )
    }

    /// The largest centered window of the output's aspect ratio in an `h x w` image ([`Stage::Eval`]'s crop).
    pub fn fill_box(&self, h: usize, w: usize) -> CropBox {
        // Compare h / w with H / W in integers: h * W against w * H.
        let (ch, cw) = if h * self.width > w * self.height {
            // Taller than the output: full width, trim rows.
            let ch = ((w * self.height) as f64 / self.width as f64).round() as usize;
            (ch.clamp(1, h), w)
        } else {
            let cw = ((h * self.width) as f64 / self.height as f64).round() as usize;
            (h, cw.clamp(1, w))
        };
        CropBox {
            top: (h - ch) / 2,
            left: (w - cw) / 2,
            height: ch,
            width: cw,
        }
    }
}

impl std::fmt::Display for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Transform for Pipeline {
    fn apply(&self, sample: Sample, rng: &mut SampleRng) -> Result<Sample> {
        // Converting channels commutes with the (linear, per-plane) resampling: reduce before it, expand after,
        // so the resampling touches the fewest planes.
        let reduce = sample.channels() > self.channels();
        let mut sample = if reduce {
            self.channels.apply(sample, rng)?
        } else {
            sample
        };
        sample = match self.stage {
            Stage::Train => {
                let s = if self.random_crop {
                    self.crop.apply(sample, rng)?
                } else {
                    let b = self.fill_box(sample.height(), sample.width());
                    resized_crop(sample, b, self.height, self.width)?
                };
                // Draw the flip only when flipping, so the crop draws do not depend on it.
                if self.flip && rand::Rng::random::<f64>(rng) < FLIP_P {
                    hflip(s)
                } else {
                    s
                }
            }
            Stage::Eval => {
                let b = self.fill_box(sample.height(), sample.width());
                resized_crop(sample, b, self.height, self.width)?
            }
        };
        if reduce {
            Ok(sample)
        } else {
            self.channels.apply(sample, rng)
        }
    }
}

fn percent(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}", p.round() as i64)
    } else {
        format!("{p:.1}")
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    fn ramp(c: usize, h: usize, w: usize) -> Sample {
        let data = (0..c * h * w).map(|i| (i % 97) as f32 / 97.0).collect();
        Sample::image(data, c, h, w, 3).unwrap()
    }

    #[test]
    fn any_size_and_colour_becomes_the_model_input() {
        for stage in [Stage::Train, Stage::Eval] {
            for &(c, h, w) in &[
                (1, 8, 8),
                (3, 50, 120),
                (3, 333, 17),
                (1, 32, 32),
                (3, 1, 1),
            ] {
                for out_c in [1, 3] {
                    let p = Pipeline::new([32, 24], out_c, stage, true).unwrap();
                    let s = p.apply(ramp(c, h, w), &mut sample_rng(0, 0, 0)).unwrap();
                    assert_eq!(s.shape(), &[out_c, 32, 24], "{stage:?} {c}x{h}x{w}");
                    assert_eq!(s.label(), 3);
                    assert!(s.data().iter().all(|v| (0.0..=1.0).contains(v)));
                }
            }
        }
    }

    #[test]
    fn eval_at_the_model_size_is_the_identity_and_otherwise_fills_the_center() {
        let p = Pipeline::eval([32, 32], 3).unwrap();
        let x = ramp(3, 32, 32);
        let y = p.apply(x.clone(), &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(x, y);
        // A wide image keeps its full height and the central square.
        assert_eq!(
            p.fill_box(40, 100),
            CropBox {
                top: 0,
                left: 30,
                height: 40,
                width: 40
            }
        );
        // An exact 2x image of alternating rows: the triangle filter at scale 2 averages them to 0.5 (away from
        // the first and last row, where the filter is cut off and renormalised).
        let data: Vec<f32> = (0..64 * 64).map(|i| ((i / 64) % 2) as f32).collect();
        let big = Sample::image(data, 1, 64, 64, 0).unwrap();
        let small = Pipeline::eval([32, 32], 1)
            .unwrap()
            .apply(big, &mut sample_rng(0, 0, 0))
            .unwrap();
        assert_eq!(small.shape(), &[1, 32, 32]);
        assert!(small.data()[32..31 * 32]
            .iter()
            .all(|v| (v - 0.5).abs() < 1e-5));
    }

    #[test]
    fn training_without_random_crops_fills_and_is_the_identity_at_the_output_size() {
        let p = Pipeline::train([32, 32], 3, false)
            .unwrap()
            .with_random_crop(false);
        assert!(!p.random_crop());
        let x = ramp(3, 32, 32);
        for i in 0..8 {
            assert_eq!(p.apply(x.clone(), &mut sample_rng(3, 1, i)).unwrap(), x);
        }
        // Other sizes: exactly the eval pipeline's output; a flip on top when asked.
        let big = ramp(1, 40, 100);
        let e = Pipeline::eval([32, 32], 3)
            .unwrap()
            .apply(big.clone(), &mut sample_rng(0, 0, 0))
            .unwrap();
        assert_eq!(p.apply(big.clone(), &mut sample_rng(5, 0, 0)).unwrap(), e);
        let f = Pipeline::train([32, 32], 3, true)
            .unwrap()
            .with_random_crop(false);
        let outs: Vec<Sample> = (0..16)
            .map(|i| f.apply(big.clone(), &mut sample_rng(5, 0, i)).unwrap())
            .collect();
        assert!(outs.contains(&e) && outs.iter().any(|o| o != &e));
        assert!(p.describe().contains("no random crop, resize to fill"));
        assert!(!Pipeline::eval([8, 8], 1)
            .unwrap()
            .with_random_crop(true)
            .random_crop());
    }

    #[test]
    fn draws_depend_only_on_the_generator() {
        let p = Pipeline::train([16, 16], 3, true).unwrap();
        let run = |i| p.apply(ramp(3, 40, 60), &mut sample_rng(7, 2, i)).unwrap();
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        // Eval ignores the generator entirely.
        let e = Pipeline::eval([16, 16], 3).unwrap();
        assert_eq!(
            e.apply(ramp(3, 40, 60), &mut sample_rng(0, 0, 0)).unwrap(),
            e.apply(ramp(3, 40, 60), &mut sample_rng(9, 9, 9)).unwrap()
        );
    }

    #[test]
    fn flips_only_when_asked_and_only_in_training() {
        // A left-right ramp; a full-image "crop" (scale 1 and a square image) makes the flip the only change.
        let data: Vec<f32> = (0..16 * 16).map(|i| (i % 16) as f32 / 15.0).collect();
        let x = Sample::image(data, 1, 16, 16, 0).unwrap();
        let flipped_in = |p: &Pipeline| {
            (0..64)
                .filter(|&i| {
                    let s = p.apply(x.clone(), &mut sample_rng(1, 0, i)).unwrap();
                    s.data()[0] > s.data()[15]
                })
                .count()
        };
        let square = |flip| {
            let mut p = Pipeline::train([16, 16], 1, flip)
                .unwrap()
                .with_scale(1.0, 1.0)
                .unwrap();
            p.crop = p.crop.with_ratio(1.0, 1.0);
            p
        };
        let n = flipped_in(&square(true));
        assert!((16..=48).contains(&n), "{n} of 64 flipped");
        assert_eq!(flipped_in(&square(false)), 0);
        assert!(!Pipeline::new([16, 16], 1, Stage::Eval, true)
            .unwrap()
            .flips());
    }

    #[test]
    fn grey_and_rgb_convert_with_luma_weights() {
        let rgb = Sample::image(vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0], 3, 1, 2, 0).unwrap();
        let g = ToChannels::new(1)
            .unwrap()
            .apply(rgb, &mut sample_rng(0, 0, 0))
            .unwrap();
        assert_eq!(g.shape(), &[1, 1, 2]);
        assert!((g.data()[0] - 0.2126).abs() < 1e-6 && (g.data()[1] - 0.7152).abs() < 1e-6);
        let back = ToChannels::new(3)
            .unwrap()
            .apply(g.clone(), &mut sample_rng(0, 0, 0))
            .unwrap();
        assert_eq!(back.data(), [g.data(), g.data(), g.data()].concat());
        assert!(ToChannels::new(4).is_err());
        let rgba = Sample::image(vec![0.0; 4], 4, 1, 1, 0).unwrap();
        assert!(ToChannels::new(3)
            .unwrap()
            .apply(rgba, &mut sample_rng(0, 0, 0))
            .is_err());
    }

    #[test]
    fn descriptions_say_size_colour_and_transform() {
        let t = Pipeline::train([32, 32], 3, true).unwrap().describe();
        assert_eq!(
            t,
            "32x32 RGB (grey images repeated), random-resized-crop (area 20-100%, aspect 3/4-4/3, \
             antialiased bilinear), horizontal flip p=0.5"
        );
        let e = Pipeline::eval([28, 28], 1).unwrap().to_string();
        assert!(
            e.starts_with("28x28 grey") && e.contains("center crop"),
            "{e}"
        );
        assert!(Pipeline::train([0, 28], 1, false).is_err());
        assert!(Pipeline::train([28, 28], 2, false).is_err());
        assert!(Pipeline::train([28, 28], 1, false)
            .unwrap()
            .with_scale(0.0, 1.0)
            .is_err());
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
