//! Image file decoding (PNG, JPEG, GIF via the `image` crate) into f32 planes.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::error::{Error, Result};

/// Colour layout to convert decoded images to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One luminance channel (colour images are converted with the Rec. 709 luma weights).
    Gray,
    /// Three channels R, G, B (grayscale is replicated; alpha is dropped).
    Rgb,
}

impl Channels {
    /// Number of channels, 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }

    /// The layout with `n` channels (1 or 3).
    pub fn from_count(n: usize) -> Result<Self> {
        match n {
            1 => Ok(Channels::Gray),
            3 => Ok(Channels::Rgb),
            _ => Err(Error::Config(format!(
                "image channels must be 1 or 3, got {n}"
            ))),
        }
    }
}

/// A decoded image as channel-planar f32 in `[0, 1]`: `data.len() == channels * height * width`.
#[derive(Debug, Clone, PartialEq)]
pub struct Planes {
    /// Pixels, `(C, H, W)` row-major.
    pub data: Vec<f32>,
    /// Number of channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// Decodes an encoded image held in memory; the format is guessed from the content. `path` names it in errors.
///
/// Truncated JPEGs (no end-of-image marker) are rejected even where the decoder would fill the missing part
/// with grey, so a half-written file never trains silently.
pub fn decode_image(bytes: &[u8], path: &Path, channels: Channels) -> Result<Planes> {
    let fail = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let reader: ImageReader<Cursor<&[u8]>> = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let format = reader.format().ok_or_else(|| {
        fail(format!(
            "unrecognised image format (first bytes {:02x?})",
            &bytes[..bytes.len().min(8)]
        ))
    })?;
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes).map_err(fail)?;
    }
    // `ImageReader` applies the crate's default limits (512 MiB per allocation), so a header claiming an absurd
    // size is an error rather than an abort. Third-party decoders aim to be panic-free but do not promise it; a
    // panic on hostile bytes becomes an error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_with(reader, channels)
    }))
    .map_err(|_| fail("the image decoder panicked on this file".into()))?
    .map_err(|e| fail(e.to_string()))
}

/// Largest decoded image accepted (the `image` crate's default allocation limit).
const MAX_DECODED_BYTES: u64 = 512 << 20;

thread_local! {
    /// Per-thread decode buffer for the 8-bit fast path.
    static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes 8-bit RGB and grayscale images (JPEG, most PNGs) into a reused byte buffer and converts them straight
/// into pooled f32 planes; other colour types go through `image`'s conversions.
fn decode_with(
    reader: ImageReader<Cursor<&[u8]>>,
    channels: Channels,
) -> image::ImageResult<Planes> {
    use image::{ColorType, ImageDecoder};
    let decoder = reader.into_decoder()?;
    let (w, h) = decoder.dimensions();
    let (w, h) = (w as usize, h as usize);
    let fast = matches!(
        (decoder.color_type(), channels),
        (ColorType::Rgb8, Channels::Rgb) | (ColorType::L8, _)
    );
    if !fast {
        return Ok(to_planes(&DynamicImage::from_decoder(decoder)?, channels));
    }
    // The decoders enforce the reader's limits; check again before sizing buffers from header values.
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(image::ImageError::Limits(
            image::error::LimitError::from_kind(image::error::LimitErrorKind::InsufficientMemory),
        ));
    }
    let src_channels = decoder.color_type().channel_count() as usize;
    let n = w * h;
    BYTES.with(|cell| {
        let mut owned = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let buf = match guard.as_mut() {
            Ok(b) => &mut **b,
            Err(_) => &mut owned,
        };
        buf.clear();
        // Exactly what `read_image` requires: w * h * channels bytes, at most MAX_DECODED_BYTES (checked above).
        buf.resize(decoder.total_bytes() as usize, 0);
        decoder.read_image(buf)?;
        let mut data = crate::pool::take(n * channels.count());
        match (src_channels, channels) {
            (3, Channels::Rgb) => {
                for c in 0..3 {
                    data.extend(
                        buf.iter()
                            .skip(c)
                            .step_by(3)
                            .map(|&b| BYTE_TO_UNIT[usize::from(b)]),
                    );
                }
            }
            (1, Channels::Gray) => data.extend(buf.iter().map(|&b| BYTE_TO_UNIT[usize::from(b)])),
            _ => {
                // Gray to RGB: the same plane three times.
                for _ in 0..3 {
                    data.extend(buf.iter().map(|&b| BYTE_TO_UNIT[usize::from(b)]));
                }
            }
        }
        Ok(Planes {
            data,
            channels: channels.count(),
            height: h,
            width: w,
        })
    })
}

/// Reads and decodes an image file.
pub fn read_image(path: &Path, channels: Channels) -> Result<Planes> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path, channels)
}

/// Walks the JPEG marker structure up to the end-of-image marker, so a truncated file is an error (the decoder
/// itself fills missing scan data with grey). Bytes after the end-of-image marker are allowed. In entropy-coded
/// data `FF` is always followed by `00` or a restart marker, so the first other marker ends the scan.
pub(crate) fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let n = b.len();
    if n < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG stream (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // Seek the next marker (tolerating garbage between segments, like libjpeg), skip fill bytes.
        while i < n && b[i] != 0xFF {
            i += 1;
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return Err(format!(
                "truncated JPEG: the file ends at byte {n} before the end-of-image marker"
            ));
        }
        let marker = b[i];
        let at = i - 1;
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => {}
            _ => {
                if i + 2 > n {
                    return Err(format!(
                        "truncated JPEG: segment {marker:#04x} at byte {at} has no length"
                    ));
                }
                let len = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
                if len < 2 || i + len > n {
                    return Err(format!(
                        "truncated JPEG: segment {marker:#04x} at byte {at} needs {len} bytes, {} remain",
                        n - i
                    ));
                }
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data until a marker other than a stuffed 00 or a restart marker.
                    loop {
                        if i + 1 >= n {
                            return Err(format!(
                                "truncated JPEG: the file ends inside the scan data started at byte {at}"
                            ));
                        }
                        if b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1]) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
}

/// `BYTE_TO_UNIT[b] == b as f32 / 255.0`, exactly (a table lookup is several times faster than the division).
static BYTE_TO_UNIT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// Converts a decoded image to f32 planes with the requested channel count.
pub fn to_planes(img: &DynamicImage, channels: Channels) -> Planes {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = w * h;
    let mut data = crate::pool::take(n * channels.count());
    match channels {
        Channels::Gray => {
            let g = match img {
                DynamicImage::ImageLuma8(g) => std::borrow::Cow::Borrowed(g),
                other => std::borrow::Cow::Owned(other.to_luma8()),
            };
            data.extend(g.as_raw().iter().map(|&b| BYTE_TO_UNIT[usize::from(b)]));
        }
        Channels::Rgb => {
            let rgb = match img {
                DynamicImage::ImageRgb8(c) => std::borrow::Cow::Borrowed(c),
                other => std::borrow::Cow::Owned(other.to_rgb8()),
            };
            let raw = rgb.as_raw();
            for c in 0..3 {
                data.extend(
                    raw.iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&b| BYTE_TO_UNIT[usize::from(b)]),
                );
            }
        }
    }
    Planes {
        data,
        channels: channels.count(),
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, (x * y) as u8])
        });
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Jpeg).unwrap();
        buf.into_inner()
    }

    #[test]
    fn every_truncation_of_a_jpeg_is_rejected() {
        let b = jpeg(40, 24);
        assert!(check_jpeg_complete(&b).is_ok());
        let mut trailing = b.clone();
        trailing.extend_from_slice(&[0u8; 3000]);
        assert!(check_jpeg_complete(&trailing).is_ok());
        let p = Path::new("x.jpg");
        assert!(decode_image(&trailing, p, Channels::Rgb).is_ok());
        // The image decoder alone accepts most of these; every prefix must fail here.
        for cut in 0..b.len() - 1 {
            let e = decode_image(&b[..cut], p, Channels::Rgb);
            assert!(e.is_err(), "prefix of {cut} bytes decoded");
        }
    }
}
