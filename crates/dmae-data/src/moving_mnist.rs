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
