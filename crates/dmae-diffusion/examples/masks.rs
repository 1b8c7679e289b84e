//! Draws masks of every image strategy on ViT-B's 14 × 14 patch grid (224 px, 16 px patches) and
//! writes them as one grey PNG: one column per strategy, one row per sample, white = masked.
//!
//! `cargo run --release -p dmae-diffusion --example masks -- [out.png]` (default `masks.png`).
//! It prints the masked count of every panel, checked against [`MaskStrategy::num_masked`], and
//! the file it wrote. The PNG encoder is a dev-dependency: the library itself has no image code
//! unless feature `mask-image` is on.

use candle_core::Device;
use dmae_diffusion::{MaskStrategy, PatchGrid, PatchMask, ResizeRule, RngKey};

/// Pixels per patch in the picture, and the gap between panels.
const CELL: usize = 8;
const GAP: usize = 6;
const SAMPLES: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "masks.png".into());
    let grid = PatchGrid::for_image(224, 224, 16)?;

    // A user's inpainting mask given per pixel: a disc of radius 60 px off the centre, reduced to
    // patches (a patch is masked if any of its pixels is).
    let (h, w) = (224usize, 224usize);
    let disc: Vec<bool> = (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f64 - 130.0, (i % w) as f64 - 90.0);
            x * x + y * y <= 60.0 * 60.0
        })
        .collect();
    let fixed = PatchMask::from_bool_pixels(&disc, h, w, grid, ResizeRule::Any)?;

    let strategies = [
        ("random 0.75", MaskStrategy::random(0.75)?),
        ("block-wise 0.75", MaskStrategy::block_wise(0.75)?),
        ("center block 0.25", MaskStrategy::center_block(0.25)?),
        ("fixed (disc)", MaskStrategy::Fixed(fixed)),
    ];

    let panel = grid.cols * CELL;
    let (img_w, img_h) = (
        strategies.len() * (panel + GAP) + GAP,
        SAMPLES * (grid.rows * CELL + GAP) + GAP,
    );
    let mut pixels = vec![96u8; img_w * img_h]; // grey background between panels
    let key = RngKey::new(0, 0);
    for (col, (name, strategy)) in strategies.iter().enumerate() {
        let masks = strategy.sample(grid, SAMPLES, key, &Device::Cpu)?;
        let expected = strategy.num_masked(grid)?;
        let counts: Vec<usize> = masks
            .masks()
            .iter()
            .map(|m| m.iter().filter(|&&b| b).count())
            .collect();
        println!(
            "{name:>18}: {counts:?} of {} patches masked (expected {expected})",
            grid.len()
        );
        if counts.iter().any(|&c| c != expected) {
            return Err(format!("{name}: masked counts {counts:?} differ from {expected}").into());
        }
        for (row, mask) in masks.masks().iter().enumerate() {
            let (x0, y0) = (
                GAP + col * (panel + GAP),
                GAP + row * (grid.rows * CELL + GAP),
            );
            for (i, &masked) in mask.iter().enumerate() {
                let (pr, pc) = (i / grid.cols, i % grid.cols);
                // Visible patches black, masked white, with a one-pixel darker border per patch.
                let fill = if masked { 255u8 } else { 0 };
                let edge = if masked { 200u8 } else { 40 };
                for dy in 0..CELL {
                    for dx in 0..CELL {
                        let border = dy == CELL - 1 || dx == CELL - 1;
                        pixels[(y0 + pr * CELL + dy) * img_w + x0 + pc * CELL + dx] =
                            if border { edge } else { fill };
                    }
                }
            }
        }
    }
    image::GrayImage::from_raw(img_w as u32, img_h as u32, pixels)
        .ok_or("pixel buffer does not match the image size")?
        .save(&out)?;
    println!(
        "wrote {out} ({img_w} x {img_h}): {} strategies x {SAMPLES} samples, white = masked",
        strategies.len()
    );
    Ok(())
}
