//! Property tests feeding arbitrary bytes to every parser: IDX (plain and gzipped), CIFAR-10/100 batches, image
//! decoding, and the frame-folder reader. Each must return `Ok` or `Err`, never panic or hang; headers that
//! announce sizes in the billions (images, IDX arrays) are refused before anything is allocated for them, which
//! the last property checks on the process's peak memory.
//!
//! Run more cases than the default 64 with, e.g.:
//! `PROPTEST_CASES=20000 cargo test -p dmae-data --release --test fuzz`
//! Failing inputs are shrunk and saved in `crates/dmae-data/tests/fuzz.proptest-regressions` (commit them so
//! they are replayed first).

use std::io::Write;
use std::path::Path;

use dmae_data::decode::{decode_image, MAX_IMAGE_BYTES};
use dmae_data::{
    parse_idx, Channels, Cifar, CifarKind, Dataset, Error, FrameFolder, FrameFolderOptions,
    FrameSampling, Mnist,
};
use proptest::prelude::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A small valid PNG and JPEG to mutate.
fn seeds() -> (Vec<u8>, Vec<u8>) {
    let img = image::RgbImage::from_fn(12, 9, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 25) as u8, 7])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let mut jpg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
    (png.into_inner(), jpg.into_inner())
}

/// Byte strings that start like an IDX file more often than random bytes would.
fn idx_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0x08u8, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
        0u8..5,
        prop::collection::vec(0u32..6, 0..5),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(t, nd, dims, tail)| {
            let mut v = vec![0, 0, t, nd];
            for d in dims {
                v.extend_from_slice(&d.to_be_bytes());
            }
            v.extend(tail);
            v
        })
}

/// A PNG whose header says `w x h`, bit depth `depth`, colour type `color`, with one tiny IDAT.
fn png_header(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
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

/// The JPEG seed with its frame header patched to claim `w x h`.
fn jpeg_claiming(jpg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut b = jpg.to_vec();
    if let Some(sof) = (0..b.len() - 1).find(|&i| b[i] == 0xFF && matches!(b[i + 1], 0xC0 | 0xC2)) {
        b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    }
    b
}

/// A side that is either small or huge: images in between would really be decoded, which costs time and
/// memory without testing the limit.
fn side() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..48, 60_000u32..=u32::MAX]
}

/// The process's peak resident memory in bytes (Linux), to check that refused headers allocated nothing.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn config() -> ProptestConfig {
    config_with(64)
}

/// `default` cases per property (64 keeps the suite fast; the header properties run 512, about a second);
/// PROPTEST_CASES overrides it.
fn config_with(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn idx_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), structured in idx_like()) {
        let src = Path::new("<fuzz>");
        for b in [&bytes, &structured] {
            let plain = parse_idx(b, src);
            let gz = parse_idx(&gzip(b), src);
            // Gzip is transparent: same verdict and, when valid, the same array.
            prop_assert_eq!(plain.is_ok(), gz.is_ok());
            if let (Ok(a), Ok(c)) = (&plain, &gz) {
                prop_assert_eq!(a, c);
                prop_assert_eq!(a.len() * a.dtype().size(), a.raw().len());
                let _ = Mnist::from_arrays(a.clone(), src, a.clone(), src);
            }
        }
        // Raw gzip-looking garbage.
        let mut g = vec![0x1f, 0x8b];
        g.extend_from_slice(&bytes);
        let _ = parse_idx(&g, src);
    }

    #[test]
    fn cifar_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        records in 0usize..3,
        extra in 0usize..3,
        labels in prop::collection::vec(any::<u8>(), 6),
    ) {
        let src = Path::new("<fuzz>");
        for kind in [CifarKind::Cifar10, CifarKind::Cifar100Fine, CifarKind::Cifar100Coarse] {
            let _ = Cifar::from_bytes(kind, &bytes, src);
            // Whole records with arbitrary label bytes, plus a few stray bytes.
            let rec = kind.record_len();
            let mut b = Vec::new();
            for r in 0..records {
                b.extend_from_slice(&labels[2 * r..2 * r + rec - 3072]);
                b.extend(std::iter::repeat_n(r as u8, 3072));
            }
            b.extend(std::iter::repeat_n(1u8, extra));
            match Cifar::from_bytes(kind, &b, src) {
                Ok(ds) => {
                    prop_assert_eq!(ds.len(), records);
                    for i in 0..ds.len() {
                        let s = ds.get(i).unwrap();
                        prop_assert!((s.label() as usize) < ds.num_classes());
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("<fuzz>")),
            }
        }
    }

    #[test]
    fn image_decoding_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (png, jpg) = seeds();
        let p = Path::new("<fuzz>");
        let _ = decode_image(&bytes, p, Channels::Rgb);
        for seed in [png, jpg] {
            let mut m = seed.clone();
            for (i, v) in &flips {
                let k = i.index(m.len());
                m[k] ^= v | 1;
            }
            if let Ok(planes) = decode_image(&m, p, Channels::Rgb) {
                prop_assert_eq!(planes.data.len(), 3 * planes.height * planes.width);
                prop_assert!(planes.data.iter().all(|v| (0.0..=1.0).contains(v)));
            }
            let _ = decode_image(&seed[..cut.index(seed.len())], p, Channels::Gray);
        }
    }

    #[test]
    fn frame_folder_never_panics(
        frames in prop::collection::vec(
            (prop::sample::select(vec!["png", "jpg", "gif"]), prop::collection::vec(any::<u8>(), 0..128)),
            1..4,
        ),
        valid_first in any::<bool>(),
        num_frames in 1usize..5,
        stride in 1usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("class").join("clip");
        std::fs::create_dir_all(&clip).unwrap();
        let (png, _) = seeds();
        for (i, (ext, bytes)) in frames.iter().enumerate() {
            let data = if valid_first && i == 0 { &png } else { bytes };
            std::fs::write(clip.join(format!("f{i}.{ext}")), data).unwrap();
        }
        for sampling in [FrameSampling::Uniform, FrameSampling::Strided { stride }] {
            let opts = FrameFolderOptions { num_frames, sampling, channels: Channels::Rgb };
            let ds = FrameFolder::open(dir.path(), opts).unwrap();
            prop_assert_eq!(ds.len(), 1);
            match ds.get(0) {
                Ok(s) => prop_assert_eq!(s.shape()[..2].to_vec(), vec![3, num_frames]),
                Err(e) => prop_assert!(e.to_string().contains("clip"), "{}", e),
            }
        }
    }
}

proptest! {
    #![proptest_config(config_with(512))]

    #[test]
    fn huge_image_headers_are_refused_before_allocating(
        w in side(),
        h in side(),
        depth in prop::sample::select(vec![1u8, 2, 4, 8, 16, 3]),
        color in prop::sample::select(vec![0u8, 2, 3, 4, 6, 5]),
        (jw, jh) in prop_oneof![(0u16..256, 0u16..256), (33_000u16.., 33_000u16..)],
        gray in any::<bool>(),
    ) {
        let channels = if gray { Channels::Gray } else { Channels::Rgb };
        let p = Path::new("<fuzz>");
        // At least 1 decoded byte and 4 f32 bytes per pixel: past this area every layout is over the limit.
        let refused_area = MAX_IMAGE_BYTES as u128 / 5 + 1;
        let area = u128::from(w) * u128::from(h);
        // Over the limit: an error (the size check, or the PNG decoder's own header and row-buffer checks), with
        // nothing allocated for the pixels (the peak memory check below).
        match decode_image(&png_header(w, h, depth, color), p, channels) {
            Err(Error::ImageTooLarge { width, height, .. }) => {
                prop_assert_eq!((width, height), (w, h));
            }
            Err(_) => {}
            Ok(_) => prop_assert!(area < refused_area, "{}x{} decoded", w, h),
        }
        let (_, jpg) = seeds();
        let area = u128::from(jw) * u128::from(jh);
        match decode_image(&jpeg_claiming(&jpg, jw, jh), p, channels) {
            Err(Error::ImageTooLarge { .. }) => prop_assert!(area >= 1 << 16),
            _ => prop_assert!(area < refused_area, "{}x{} JPEG not refused", jw, jh),
        }
        // Nothing of the gigabytes announced was allocated (the whole test binary stays small).
        if let Some(peak) = peak_rss() {
            prop_assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
        }
    }

    #[test]
    fn huge_idx_headers_are_refused_before_allocating(
        dims in prop::collection::vec(prop_oneof![0u32..8, any::<u32>()], 1..4),
        dtype in prop::sample::select(vec![0x08u8, 0x0B, 0x0E]),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut b = vec![0, 0, dtype, dims.len() as u8];
        for d in &dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(&tail);
        let src = Path::new("<fuzz>");
        for bytes in [b.clone(), gzip(&b)] {
            if let Ok(a) = parse_idx(&bytes, src) {
                prop_assert_eq!(a.raw().len(), tail.len());
            }
        }
        if let Some(peak) = peak_rss() {
            prop_assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
        }
    }
}
