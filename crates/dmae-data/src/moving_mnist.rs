//! Moving MNIST: real digits bouncing inside a canvas (Srivastava et al., 2015), generated on the fly.
//!
//! The recipe follows the original generator: each digit starts at a uniform position `(x, y)` in `[0, 1)^2`
//! (scaled to `canvas - digit` pixels) with a uniform direction `theta` in `[0, 2 pi)` and moves
//! `step_length` per frame; hitting an edge clamps the position and reflects that velocity component. The
//! position is advanced before each frame is drawn, and overlapping digits combine with a per-pixel maximum.
//! Clip `i` depends only on `(seed, i)`.

use std::sync::Arc;

use rand::Rng;

use crate::dataset::{check_index, Dataset, Sample};
use crate::error::{Error, Result};
use crate::mnist::Mnist;
use crate::rng::stream_rng;

const STREAM: u64 = 0x4d4f_5649_4e47_4d4e; // "MOVINGMN"

/// Most memory one generated clip may take, in bytes (1 GiB): see [`MovingMnistConfig::clip_bytes`]. The
/// standard 64x64 clip of 20 frames takes 0.3 MB; `canvas = 100000` would take 800 GB.
pub const MAX_CLIP_BYTES: u64 = 1 << 30;

/// Most clips a [`MovingMnist`] may report (100 million): a loader keeps an 8-byte index per clip for each
/// epoch's order, so this is 800 MB of indices.
pub const MAX_CLIPS: usize = 100_000_000;

/// Parameters of [`MovingMnist`] (defaults: the standard 64x64, 20 frames, 2 digits, step 0.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovingMnistConfig {
    /// Canvas height and width in pixels (at least the digit size).
    pub canvas: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Digits per clip (at least 1).
    pub num_digits: usize,
    /// Distance moved per frame, as a fraction of the free range `canvas - digit`.
    pub step_length: f64,
    /// Number of clips the dataset reports (clips are generated, so any length works).
    pub len: usize,
    /// Seed; clip `i` is a function of `(seed, i)` only.
    pub seed: u64,
}

impl Default for MovingMnistConfig {
    fn default() -> Self {
        MovingMnistConfig {
            canvas: 64,
            frames: 20,
            num_digits: 2,
            step_length: 0.1,
            len: 10_000,
            seed: 0,
        }
    }
}

impl MovingMnistConfig {
    /// Bytes one clip takes in memory: its f32 frames (`frames * canvas^2 * 4`) plus the digits' paths
    /// (`num_digits * frames` positions of 16 bytes). Saturates instead of overflowing.
    pub fn clip_bytes(&self) -> u64 {
        let frames = self.frames as u128;
        let canvas = self.canvas as u128;
        let bytes = frames * canvas * canvas * 4 + self.num_digits as u128 * frames * 16;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// One digit's path: its source image index and its top-left corner in each frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// Index of the digit in the source [`Mnist`].
    pub digit: usize,
    /// `(top, left)` pixel offsets, one per frame.
    pub positions: Vec<(usize, usize)>,
}

/// A deterministic Moving-MNIST video dataset over real digits. Samples are `(1, T, canvas, canvas)` f32 in
/// `[0, 1]`; the label is the class of the first digit.
#[derive(Debug, Clone)]
pub struct MovingMnist {
    digits: Arc<Mnist>,
    config: MovingMnistConfig,
}

impl MovingMnist {
    /// Generator over the digits of `digits` (e.g. [`crate::bundled_mnist`]).
    pub fn new(digits: impl Into<Arc<Mnist>>, config: MovingMnistConfig) -> Result<Self> {
        let digits = digits.into();
        if digits.is_empty() {
            return Err(Error::Config(
                "Moving MNIST needs at least one source digit".into(),
            ));
        }
        if config.canvas < digits.rows().max(digits.cols()) {
            return Err(Error::Config(format!(
                "canvas {} is smaller than the {}x{} digits",
                config.canvas,
                digits.rows(),
                digits.cols()
            )));
        }
        if config.frames == 0 || config.num_digits == 0 {
            return Err(Error::Config(
                "Moving MNIST needs at least one frame and one digit".into(),
            ));
        }
        if config.clip_bytes() > MAX_CLIP_BYTES {
            return Err(Error::Config(format!(
                "Moving MNIST clips of canvas {}, {} frames and {} digits would take {} MiB each, over the \
                 limit of {} MiB (dmae_data::moving_mnist::MAX_CLIP_BYTES)",
                config.canvas,
                config.frames,
                config.num_digits,
                config.clip_bytes().div_ceil(1 << 20),
                MAX_CLIP_BYTES >> 20
            )));
        }
        if config.len > MAX_CLIPS {
            return Err(Error::Config(format!(
                "Moving MNIST len {} is over the limit of {MAX_CLIPS} clips (dmae_data::moving_mnist::MAX_CLIPS)",
                config.len
            )));
        }
        if !(config.step_length.is_finite() && config.step_length >= 0.0) {
            return Err(Error::Config(format!(
                "step_length must be finite and >= 0, got {}",
                config.step_length
            )));
        }
        Ok(MovingMnist { digits, config })
    }

    /// The configuration.
    pub fn config(&self) -> &MovingMnistConfig {
        &self.config
    }

    /// The digits and paths of clip `index`.
    pub fn trajectories(&self, index: usize) -> Vec<Trajectory> {
        let c = &self.config;
        let mut rng = stream_rng(STREAM, c.seed, index as u64);
        let free_y = (c.canvas - self.digits.rows()) as f64;
        let free_x = (c.canvas - self.digits.cols()) as f64;
        (0..c.num_digits)
            .map(|_| {
                let digit = rng.random_range(0..self.digits.len());
                let mut y: f64 = rng.random();
                let mut x: f64 = rng.random();
                let theta = rng.random::<f64>() * std::f64::consts::TAU;
                let (mut vy, mut vx) = (theta.sin(), theta.cos());
                let positions = (0..c.frames)
                    .map(|_| {
                        y += vy * c.step_length;
                        x += vx * c.step_length;
                        if x <= 0.0 {
                            x = 0.0;
                            vx = -vx;
                        }
                        if x >= 1.0 {
                            x = 1.0;
                            vx = -vx;
                        }
                        if y <= 0.0 {
                            y = 0.0;
                            vy = -vy;
                        }
                        if y >= 1.0 {
                            y = 1.0;
                            vy = -vy;
                        }
                        ((free_y * y) as usize, (free_x * x) as usize)
                    })
                    .collect();
                Trajectory { digit, positions }
            })
            .collect()
    }
}

impl Dataset for MovingMnist {
    fn len(&self) -> usize {
        self.config.len
    }

    fn classes(&self) -> &[String] {
        self.digits.classes()
    }

    /// Moving digits: mirrored digits are not digits.
    fn default_flip(&self) -> bool {
        false
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        let (s, t) = (self.config.canvas, self.config.frames);
        let (dh, dw) = (self.digits.rows(), self.digits.cols());
        let paths = self.trajectories(index);
        let mut data = vec![0f32; t * s * s];
        for path in &paths {
            let img = self
                .digits
                .image_bytes(path.digit)
                .ok_or(Error::IndexOutOfRange {
                    index: path.digit,
                    len: self.digits.len(),
                })?;
            for (f, &(top, left)) in path.positions.iter().enumerate() {
                let frame = &mut data[f * s * s..(f + 1) * s * s];
                for r in 0..dh {
                    let dst = &mut frame[(top + r) * s + left..(top + r) * s + left + dw];
                    for (d, &b) in dst.iter_mut().zip(&img[r * dw..(r + 1) * dw]) {
                        *d = d.max(f32::from(b) / 255.0);
                    }
                }
            }
        }
        let label = self.digits.label(paths[0].digit).map_or(0, u32::from);
        Sample::video(data, 1, t, s, s, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::{IdxArray, IdxType};
    use std::path::Path;

    fn digits() -> Mnist {
        let images = IdxArray::new(IdxType::U8, vec![2, 28, 28], vec![200; 2 * 784]).unwrap();
        let labels = IdxArray::new(IdxType::U8, vec![2], vec![3, 7]).unwrap();
        let p = Path::new("<memory>");
        Mnist::from_arrays(images, p, labels, p).unwrap()
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        let d = Arc::new(digits());
        let base = MovingMnistConfig::default();
        assert_eq!(base.clip_bytes(), 20 * 64 * 64 * 4 + 2 * 20 * 16);
        for (cfg, words) in [
            (
                MovingMnistConfig {
                    canvas: 100_000,
                    ..base
                },
                "canvas 100000",
            ),
            (
                MovingMnistConfig {
                    frames: 1 << 40,
                    ..base
                },
                "1099511627776 frames",
            ),
            (
                MovingMnistConfig {
                    num_digits: usize::MAX,
                    ..base
                },
                "digits",
            ),
            (
                MovingMnistConfig {
                    canvas: usize::MAX,
                    frames: usize::MAX,
                    ..base
                },
                "MAX_CLIP_BYTES",
            ),
            (
                MovingMnistConfig {
                    len: usize::MAX,
                    ..base
                },
                "MAX_CLIPS",
            ),
        ] {
            let e = MovingMnist::new(Arc::clone(&d), cfg)
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{e}");
        }
        // Large but sane settings pass, and a clip has the size the estimate counts.
        let ok = MovingMnistConfig {
            canvas: 256,
            frames: 4,
            len: MAX_CLIPS,
            ..base
        };
        let mm = MovingMnist::new(d, ok).unwrap();
        assert_eq!(mm.get(0).unwrap().data().len() * 4, 4 * 256 * 256 * 4);
    }
}
