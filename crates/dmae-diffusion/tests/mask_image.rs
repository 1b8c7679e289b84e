//! Mask images read from files and bytes (feature `mask-image`):
//! `cargo test -p dmae-diffusion --features mask-image`.
#![cfg(feature = "mask-image")]

use std::path::PathBuf;

use candle_core::Device;
use dmae_diffusion::{Error, MaskStrategy, PatchGrid, PatchMask, ResizeRule, Result, RngKey};
use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};

/// A unique temporary path for this test process.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dmae-diffusion-{}-{name}", std::process::id()))
}

/// 40 x 30 (w x h) image, white (hole) in x 10..25, y 0..12, black elsewhere.
fn hole_image() -> GrayImage {
    GrayImage::from_fn(40, 30, |x, y| {
        if (10..25).contains(&x) && y < 12 {
            Luma([255])
        } else {
            Luma([0])
        }
    })
}

#[test]
fn png_file_is_resized_to_the_grid() -> Result<()> {
    let path = temp_path("hole.png");
    hole_image()
        .save_with_format(&path, ImageFormat::Png)
        .expect("write test PNG");
    // Onto a 3 x 4 grid: rows are 10 px, columns 10 px. Any: rows 0..2 (y 0..20), cols 1..3.
    let grid = PatchGrid::new(3, 4);
    let any = PatchMask::from_image_path(&path, grid, ResizeRule::Any);
    // Majority: patch (0,1) fully white, (0,2) half white (x 20..25 of 20..30) -> not masked,
    // (1,1) y 10..12 of 10..20 -> not masked.
    let maj = PatchMask::from_image_path(&path, grid, ResizeRule::Majority);
    std::fs::remove_file(&path).ok();
    let any = any?;
    assert_eq!(
        any.as_slice(),
        &[false, true, true, false, false, true, true, false, false, false, false, false]
    );
    assert_eq!(maj?.num_masked(), 1);
    let mi = MaskStrategy::Fixed(any).sample(grid, 2, RngKey::default(), &Device::Cpu)?;
    assert_eq!(mi.masked().to_vec2::<u32>()?, vec![vec![1, 2, 5, 6]; 2]);
    Ok(())
}

#[test]
fn colour_bytes_use_luma_threshold() -> Result<()> {
    // Bright red has luma ≈ 54 (< 128): visible. White: masked.
    let img = RgbImage::from_fn(4, 2, |x, _| {
        if x < 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
        .expect("encode test PNG");
    let m = PatchMask::from_image_bytes(&bytes, PatchGrid::new(1, 2), ResizeRule::Any)?;
    assert_eq!(m.as_slice(), &[false, true]);
    Ok(())
}

#[test]
fn unreadable_mask_images_are_typed_errors() {
    let grid = PatchGrid::new(2, 2);
    let missing = temp_path("does-not-exist.png");
    match PatchMask::from_image_path(&missing, grid, ResizeRule::Any) {
        Err(Error::MaskImage { path: Some(p), .. }) => assert_eq!(p, missing),
        other => panic!("expected MaskImage error, got {other:?}"),
    }
    let garbage = temp_path("garbage.png");
    std::fs::write(&garbage, b"definitely not an image").expect("write garbage file");
    let r = PatchMask::from_image_path(&garbage, grid, ResizeRule::Any);
    std::fs::remove_file(&garbage).ok();
    assert!(
        matches!(r, Err(Error::MaskImage { path: Some(_), .. })),
        "{r:?}"
    );
    let r = PatchMask::from_image_bytes(b"\x89PNG\r\n\x1a\n truncated", grid, ResizeRule::Any);
    assert!(
        matches!(r, Err(Error::MaskImage { path: None, .. })),
        "{r:?}"
    );
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("<bytes>"), "{msg}");
}
