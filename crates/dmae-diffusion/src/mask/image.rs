//! Fixed masks given by the user, e.g. an inpainting mask image of any size.

#[cfg(feature = "mask-image")]
use std::path::Path;

use super::PatchGrid;
use crate::error::{Error, Result};

/// How a pixel-resolution mask is reduced to the patch grid.
///
/// The image (any `height × width`) is laid over the `rows × cols` grid; patch `(r, c)` covers
/// pixel rows `⌊r·H/rows⌋ .. max(⌊r·H/rows⌋ + 1, ⌈(r+1)·H/rows⌉)` and likewise for columns, so
/// every pixel belongs to at least one patch and every patch has at least one pixel, even
/// when the image is smaller than the grid or its size is not a multiple of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ResizeRule {
    /// A patch is masked if **any** of its pixels is masked (default: the hole is always
    /// fully generated, never partly given to the encoder).
    #[default]
    Any,
    /// A patch is masked if **more than half** of its pixels are masked.
    Majority,
}

/// A fixed mask on a patch grid (`true` = masked), applied to every sample by
/// [`MaskStrategy::Fixed`](super::MaskStrategy::Fixed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PatchMask {
    grid: PatchGrid,
    masked: Vec<bool>,
}

impl PatchMask {
    /// A mask given per patch, row-major over `grid` (`true` = masked).
    pub fn from_patches(grid: PatchGrid, masked: Vec<bool>) -> Result<Self> {
        if masked.len() != grid.len() {
            return Err(Error::Shape {
                arg: "masked",
                expected: format!("{} patches ({} x {})", grid.len(), grid.rows, grid.cols),
                got: vec![masked.len()],
            });
        }
        Ok(Self { grid, masked })
    }

    /// Reduces a boolean pixel mask (`height × width`, row-major, `true` = masked) to `grid`
    /// with `rule` (see [`ResizeRule`] for the pixel-to-patch mapping).
    pub fn from_bool_pixels(
        pixels: &[bool],
        height: usize,
        width: usize,
        grid: PatchGrid,
        rule: ResizeRule,
    ) -> Result<Self> {
        if height == 0 || width == 0 || pixels.len() != height * width {
            return Err(Error::Shape {
                arg: "pixels",
                expected: format!("a non-empty height x width = {height} x {width} buffer"),
                got: vec![pixels.len()],
            });
        }
        if grid.is_empty() {
            return Err(Error::invalid("grid", "at least one patch", "0 patches"));
        }
        let span = |i: usize, n: usize, total: usize| {
            let lo = i * total / n;
            let hi = ((i + 1) * total).div_ceil(n).max(lo + 1);
            lo..hi
        };
        let mut masked = Vec::with_capacity(grid.len());
        for r in 0..grid.rows {
            let ys = span(r, grid.rows, height);
            for c in 0..grid.cols {
                let xs = span(c, grid.cols, width);
                let total = ys.len() * xs.len();
                let on = ys
                    .clone()
                    .map(|y| {
                        pixels[y * width + xs.start..y * width + xs.end]
                            .iter()
                            .filter(|&&p| p)
                            .count()
                    })
                    .sum::<usize>();
                masked.push(match rule {
                    ResizeRule::Any => on > 0,
                    ResizeRule::Majority => 2 * on > total,
                });
            }
        }
        Ok(Self { grid, masked })
    }

    /// Like [`from_bool_pixels`](Self::from_bool_pixels) for a grey-level pixel grid: a pixel
    /// is masked when its value is `>= 0.5` (so a 0/1 or [0, 1] image with 1 = hole works).
    /// Non-finite values are rejected.
    pub fn from_pixels(
        pixels: &[f32],
        height: usize,
        width: usize,
        grid: PatchGrid,
        rule: ResizeRule,
    ) -> Result<Self> {
        if let Some(bad) = pixels.iter().find(|p| !p.is_finite()) {
            return Err(Error::invalid("pixels", "finite values", bad));
        }
        let b: Vec<bool> = pixels.iter().map(|&p| p >= 0.5).collect();
        Self::from_bool_pixels(&b, height, width, grid, rule)
    }

    /// Reads a mask image file (PNG, JPEG or BMP) and reduces it to `grid`; see
    /// [`from_image_bytes`](Self::from_image_bytes) for the pixel convention.
    /// A missing or undecodable file gives [`Error::MaskImage`].
    #[cfg(feature = "mask-image")]
    pub fn from_image_path(
        path: impl AsRef<Path>,
        grid: PatchGrid,
        rule: ResizeRule,
    ) -> Result<Self> {
        let path = path.as_ref();
        let img = ::image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| mask_image_error(Some(path), e))?
            .decode()
            .map_err(|e| mask_image_error(Some(path), e))?;
        Self::from_dynamic_image(&img, grid, rule)
    }

    /// Decodes an encoded mask image (PNG, JPEG or BMP) and reduces it to `grid`. The image is
    /// converted to 8-bit luma; a pixel is masked (a hole to generate) when its luma is
    /// `>= 128`, i.e. white = masked, black = visible (the LaMa convention; RePaint's masks
    /// are the inverse and need inverting first). Undecodable bytes give [`Error::MaskImage`].
    #[cfg(feature = "mask-image")]
    pub fn from_image_bytes(bytes: &[u8], grid: PatchGrid, rule: ResizeRule) -> Result<Self> {
        let img = ::image::load_from_memory(bytes).map_err(|e| mask_image_error(None, e))?;
        Self::from_dynamic_image(&img, grid, rule)
    }

    #[cfg(feature = "mask-image")]
    fn from_dynamic_image(
        img: &::image::DynamicImage,
        grid: PatchGrid,
        rule: ResizeRule,
    ) -> Result<Self> {
        let luma = img.to_luma8();
        let (w, h) = (luma.width() as usize, luma.height() as usize);
        let px: Vec<bool> = luma.as_raw().iter().map(|&v| v >= 128).collect();
        Self::from_bool_pixels(&px, h, w, grid, rule)
    }

    /// The grid this mask is defined on.
    pub fn grid(&self) -> PatchGrid {
        self.grid
    }

    /// Per-patch flags, row-major (`true` = masked).
    pub fn as_slice(&self) -> &[bool] {
        &self.masked
    }

    /// Number of masked patches.
    pub fn num_masked(&self) -> usize {
        self.masked.iter().filter(|&&b| b).count()
    }

    /// The complementary mask (visible ↔ masked).
    pub fn inverted(&self) -> Self {
        Self {
            grid: self.grid,
            masked: self.masked.iter().map(|&b| !b).collect(),
        }
    }

    pub(crate) fn check_grid(&self, grid: PatchGrid) -> Result<()> {
        // A deserialised mask may not match its own grid.
        if self.masked.len() != self.grid.len() {
            return Err(Error::Shape {
                arg: "masked",
                expected: format!(
                    "{} patches ({} x {})",
                    self.grid.len(),
                    self.grid.rows,
                    self.grid.cols
                ),
                got: vec![self.masked.len()],
            });
        }
        if grid == self.grid {
            Ok(())
        } else {
            Err(Error::Shape {
                arg: "grid",
                expected: format!("the mask's grid {} x {}", self.grid.rows, self.grid.cols),
                got: vec![grid.rows, grid.cols],
            })
        }
    }
}

#[cfg(feature = "mask-image")]
fn mask_image_error(path: Option<&Path>, err: impl std::fmt::Display) -> Error {
    Error::MaskImage {
        path: path.map(Path::to_path_buf),
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_multiple_any_vs_majority() -> Result<()> {
        // 4 x 4 pixels onto a 2 x 2 grid: each patch is a 2 x 2 pixel block.
        // Patch (0,0): 1 of 4 masked; (0,1): 2 of 4; (1,0): 3 of 4; (1,1): 0 of 4.
        #[rustfmt::skip]
        let px = [
            1., 0., 1., 1.,
            0., 0., 0., 0.,
            1., 1., 0., 0.,
            1., 0., 0., 0.,
        ];
        let g = PatchGrid::new(2, 2);
        let any = PatchMask::from_pixels(&px, 4, 4, g, ResizeRule::Any)?;
        assert_eq!(any.as_slice(), &[true, true, true, false]);
        let maj = PatchMask::from_pixels(&px, 4, 4, g, ResizeRule::Majority)?;
        assert_eq!(maj.as_slice(), &[false, false, true, false]);
        Ok(())
    }

    #[test]
    fn non_multiple_and_smaller_images() -> Result<()> {
        // 5 pixels wide onto 2 columns: column 0 covers x 0..3, column 1 covers x 2..5.
        let px = [false, false, true, false, false];
        let m = PatchMask::from_bool_pixels(&px, 1, 5, PatchGrid::new(1, 2), ResizeRule::Any)?;
        assert_eq!(m.as_slice(), &[true, true]);
        let px = [true, false, false, false, false];
        let m = PatchMask::from_bool_pixels(&px, 1, 5, PatchGrid::new(1, 2), ResizeRule::Any)?;
        assert_eq!(m.as_slice(), &[true, false]);
        // A 2 x 2 image onto a 4 x 4 grid: nearest-neighbour upsampling.
        let px = [true, false, false, true];
        let m = PatchMask::from_bool_pixels(&px, 2, 2, PatchGrid::new(4, 4), ResizeRule::Majority)?;
        let expect: Vec<bool> = (0..16).map(|j| (j / 4 < 2) == (j % 4 < 2)).collect();
        assert_eq!(m.as_slice(), expect.as_slice());
        Ok(())
    }

    #[test]
    fn bad_buffers_are_typed_errors() {
        let g = PatchGrid::new(2, 2);
        assert!(matches!(
            PatchMask::from_pixels(&[0.0; 5], 2, 3, g, ResizeRule::Any),
            Err(Error::Shape { arg: "pixels", .. })
        ));
        assert!(matches!(
            PatchMask::from_pixels(&[f32::NAN; 4], 2, 2, g, ResizeRule::Any),
            Err(Error::InvalidArgument { arg: "pixels", .. })
        ));
        assert!(matches!(
            PatchMask::from_patches(g, vec![true; 3]),
            Err(Error::Shape { arg: "masked", .. })
        ));
    }
}
