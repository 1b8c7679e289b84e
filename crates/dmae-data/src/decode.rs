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

/// Most memory one image may take to decode, in bytes (2 GiB): the decoder's output, the colour
/// conversion and the f32 planes together, as computed from the header before any of it is
/// allocated. A 100-megapixel 8-bit RGB photo needs 1.5 GB and passes; a header announcing
/// 65500x65500 (64 GB as RGB planes) is refused with [`Error::ImageTooLarge`]. Image files
/// themselves are read only up to this size.
pub const MAX_IMAGE_BYTES: u64 = 2 << 30;

/// Decodes an encoded image held in memory; the format is guessed from the content. `path` names it in errors.
///
/// The header is read first: an image that would need more than [`MAX_IMAGE_BYTES`] to decode and convert
/// is refused before its pixels are allocated. Truncated JPEGs (no end-of-image marker) are rejected even
/// where the decoder would fill the missing part with grey, so a half-written file never trains silently.
pub fn decode_image(bytes: &[u8], path: &Path, channels: Channels) -> Result<Planes> {
    let fail = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader: ImageReader<Cursor<&[u8]>> = ImageReader::new(Cursor::new(bytes))
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
    // The same bound for the decoders' own allocations (the PNG decoder honours it internally).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    // Third-party decoders aim to be panic-free but do not promise it; a panic on hostile bytes becomes an
    // error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        use image::ImageDecoder;
        let decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
        let (width, height) = decoder.dimensions();
        let color = decoder.color_type();
        let bytes = decode_bytes(width, height, color, channels);
        if bytes > MAX_IMAGE_BYTES {
            return Err(Error::ImageTooLarge {
                path: path.to_path_buf(),
                width,
                height,
                color: format!("{color:?}"),
                bytes,
                limit: MAX_IMAGE_BYTES,
            });
        }
        decode_with(decoder, channels).map_err(|e| fail(e.to_string()))
    }))
    .map_err(|_| fail("the image decoder panicked on this file".into()))?
}

/// Worst-case bytes of decoding a `width x height` image of colour type `color` and converting it to
/// `channels` f32 planes: the decoder's output buffer, the 8-bit conversion (unless the decoded image is
/// already in the target layout) and the planes. Computed in u128 so absurd headers cannot overflow.
fn decode_bytes(width: u32, height: u32, color: image::ColorType, channels: Channels) -> u64 {
    let pixels = u128::from(width) * u128::from(height);
    let decoded = pixels * u128::from(color.bytes_per_pixel());
    let converted = if is_fast(color, channels) {
        0
    } else {
        pixels * channels.count() as u128
    };
    let planes = pixels * channels.count() as u128 * 4;
    u64::try_from(decoded + converted + planes).unwrap_or(u64::MAX)
}

/// 8-bit grey, or 8-bit RGB to RGB: decoded into a byte buffer and converted straight to planes.
fn is_fast(color: image::ColorType, channels: Channels) -> bool {
    use image::ColorType;
    matches!(
        (color, channels),
        (ColorType::Rgb8, Channels::Rgb) | (ColorType::L8, _)
    )
}

thread_local! {
    /// Per-thread decode buffer for the 8-bit fast path.
    static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes 8-bit RGB and grayscale images (JPEG, most PNGs) into a reused byte buffer and converts them straight
/// into pooled f32 planes; other colour types go through `image`'s conversions. The caller has checked the
/// size against [`MAX_IMAGE_BYTES`].
fn decode_with(
    decoder: impl image::ImageDecoder,
    channels: Channels,
) -> image::ImageResult<Planes> {
    let (w, h) = decoder.dimensions();
    let (w, h) = (w as usize, h as usize);
    if !is_fast(decoder.color_type(), channels) {
        return Ok(to_planes(&DynamicImage::from_decoder(decoder)?, channels));
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
        // Exactly what `read_image` requires: w * h * channels bytes, at most MAX_IMAGE_BYTES (checked).
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

/// Reads and decodes an image file. Only regular files (after following links) of at most
/// [`MAX_IMAGE_BYTES`] are read: a link to a device, a FIFO or a directory is refused before it is opened
/// ([`crate::file`]).
pub fn read_image(path: &Path, channels: Channels) -> Result<Planes> {
    let bytes = crate::file::read_regular(path, MAX_IMAGE_BYTES)?;
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

    /// A PNG whose header says `w x h` at `depth` bits, colour type `color` (6 = RGBA, 2 = RGB, 0 = grey),
    /// followed by one tiny (wrong-sized) IDAT: only the header matters here.
    pub(crate) fn png_header(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// A real JPEG whose start-of-frame header is patched to claim `w x h`.
    fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
        let mut b = jpeg(16, 16);
        let sof = (0..b.len() - 1)
            .find(|&i| b[i] == 0xFF && matches!(b[i + 1], 0xC0 | 0xC2))
            .unwrap();
        // FF C0, length (2), precision (1), height (2), width (2).
        b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        b
    }

    #[test]
    fn headers_announcing_huge_images_are_refused_before_allocating() {
        let p = Path::new("dir/huge.png");
        // 16-bit RGBA (aborted the process before), RGB8 for a grey model, 8-bit grey.
        for (png, channels) in [
            (png_header(100_000, 100_000, 16, 6), Channels::Rgb),
            (png_header(100_000, 100_000, 16, 6), Channels::Gray),
            (png_header(30_000, 30_000, 8, 2), Channels::Gray),
            (png_header(100_000, 100_000, 8, 0), Channels::Gray),
        ] {
            let e = decode_image(&png, p, channels).unwrap_err();
            assert!(matches!(e, Error::ImageTooLarge { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("dir/huge.png") && msg.contains("x"), "{msg}");
        }
        let e = decode_image(&png_header(100_000, 100_000, 16, 6), p, Channels::Rgb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("100000x100000 Rgba16"), "{e}");
        // A 70 KB-class JPEG whose header says 65500x65500 (reached 6.3 GB before).
        let jpg = jpeg_claiming(65_500, 65_500);
        for channels in [Channels::Rgb, Channels::Gray] {
            let e = decode_image(&jpg, Path::new("x.jpg"), channels).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::ImageTooLarge {
                        width: 65_500,
                        height: 65_500,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn the_limit_lets_real_photos_through() {
        use image::ColorType;
        // A 100-megapixel 8-bit RGB photo, a 48-megapixel 16-bit RGB PNG.
        assert!(decode_bytes(11_648, 8_736, ColorType::Rgb8, Channels::Rgb) < MAX_IMAGE_BYTES);
        assert!(decode_bytes(8_000, 6_000, ColorType::Rgb16, Channels::Rgb) < MAX_IMAGE_BYTES);
        assert!(decode_bytes(8_000, 6_000, ColorType::Rgba16, Channels::Gray) < MAX_IMAGE_BYTES);
        assert_eq!(
            decode_bytes(u32::MAX, u32::MAX, ColorType::Rgba32F, Channels::Rgb),
            u64::MAX
        );
        // Sizes just under the limit decode (a small real image takes the same path).
        let img = image::Rgba::<u16>([1000, 2000, 3000, 65535]);
        let big = image::ImageBuffer::from_pixel(7, 5, img);
        let mut buf = Cursor::new(Vec::new());
        big.write_to(&mut buf, ImageFormat::Png).unwrap();
        let planes = decode_image(buf.get_ref(), Path::new("a.png"), Channels::Gray).unwrap();
        assert_eq!((planes.height, planes.width, planes.data.len()), (5, 7, 35));
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
