//! Files written here, byte by byte, then read back: IDX (plain and gzipped), CIFAR-10/100, ImageFolder (with
//! corrupt and truncated PNG/JPEG files), frame folders, Moving MNIST.

use std::io::Write;
use std::path::{Path, PathBuf};

use dmae_data::{
    bundled_mnist, Channels, Cifar, CifarKind, Dataset, Error, FrameFolder, FrameFolderOptions,
    FrameSampling, ImageFolder, Mnist, MovingMnist, MovingMnistConfig, Split,
};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An MNIST-style pair: `n` images of `rows x cols` whose pixel (r, c) of image i is `(i * 7 + r * cols + c) % 256`.
fn idx_pair(n: u32, rows: u32, cols: u32) -> (Vec<u8>, Vec<u8>) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    for i in 0..n {
        for p in 0..rows * cols {
            img.push(((i * 7 + p) % 256) as u8);
        }
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&n.to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    (img, lab)
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn format_offset(e: &Error) -> Option<u64> {
    match e {
        Error::Format { offset, .. } => Some(*offset),
        _ => None,
    }
}

#[test]
fn idx_plain_and_gzipped_read_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = idx_pair(25, 5, 4);
    write(&dir.path().join("train-images-idx3-ubyte"), &img);
    write(&dir.path().join("train-labels-idx1-ubyte"), &lab);
    write(&dir.path().join("t10k-images-idx3-ubyte.gz"), &gzip(&img));
    write(&dir.path().join("t10k-labels-idx1-ubyte.gz"), &gzip(&lab));
    let plain = Mnist::open(dir.path(), Split::Train).unwrap();
    let gz = Mnist::open(dir.path(), Split::Test).unwrap();
    assert_eq!((plain.len(), plain.rows(), plain.cols()), (25, 5, 4));
    for i in [0, 13, 24] {
        let (a, b) = (plain.get(i).unwrap(), gz.get(i).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.shape(), &[1, 5, 4]);
        assert_eq!(a.label(), (i % 10) as u32);
        assert_eq!(a.data()[3], ((i * 7 + 3) % 256) as f32 / 255.0);
    }
    assert!(matches!(
        Mnist::open(dir.path(), Split::Val),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn idx_truncation_and_bad_labels_name_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut lab) = idx_pair(10, 3, 3);
    // Truncated image file: header 16 bytes + 90 pixels; keep 16 + 50.
    let ip = write(&dir.path().join("short-images"), &img[..66]);
    let lp = write(&dir.path().join("labels"), &lab);
    let e = Mnist::from_idx_files(&ip, &lp).unwrap_err();
    assert_eq!(format_offset(&e), Some(66), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("short-images") && msg.contains("truncated"),
        "{msg}"
    );
    // Same truncation inside a gzip stream: offset in the decompressed data.
    let gp = write(&dir.path().join("short-images.gz"), &gzip(&img[..66]));
    let e = Mnist::from_idx_files(&gp, &lp).unwrap_err();
    assert_eq!(format_offset(&e), Some(66), "{e}");
    assert!(e.to_string().contains("decompressed"), "{e}");
    // A corrupt gzip stream (payload bytes flipped) is an error, not a panic.
    let mut bad = gzip(&img);
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 8] {
        *b ^= 0x5a;
    }
    let cp = write(&dir.path().join("corrupt.gz"), &bad);
    assert!(Mnist::from_idx_files(&cp, &lp).is_err());
    // Label 12 at position 4: offset 8 + 4 in the label file.
    lab[8 + 4] = 12;
    let ip = write(&dir.path().join("images"), &img);
    let lp = write(&dir.path().join("bad-labels"), &lab);
    let e = Mnist::from_idx_files(&ip, &lp).unwrap_err();
    assert_eq!(format_offset(&e), Some(12), "{e}");
    // Label count mismatch.
    let (_, lab9) = idx_pair(9, 3, 3);
    let lp = write(&dir.path().join("labels9"), &lab9);
    assert!(Mnist::from_idx_files(&ip, &lp)
        .unwrap_err()
        .to_string()
        .contains("9 labels for 10 images"));
    // Missing file: an I/O error naming it.
    let e = Mnist::from_idx_files(dir.path().join("nope"), &lp).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
}

fn cifar_record(label: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label.to_vec();
    r.extend((0..3072u32).map(|p| (p as u8).wrapping_mul(3).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    for b in 1..=5u8 {
        let mut bytes = Vec::new();
        for k in 0..3u8 {
            bytes.extend(cifar_record(&[(b + k) % 10], b * 10 + k));
        }
        write(&root.join(format!("data_batch_{b}.bin")), &bytes);
    }
    write(&root.join("test_batch.bin"), &cifar_record(&[9], 99));
    write(
        &root.join("batches.meta.txt"),
        b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n",
    );
    let train = Cifar::open(dir.path(), CifarKind::Cifar10, Split::Train).unwrap();
    assert_eq!(train.len(), 15);
    assert_eq!(train.classes()[9], "j");
    let s = train.get(4).unwrap(); // batch 2, record 1: label 3, seed 21
    assert_eq!((s.shape(), s.label()), (&[3usize, 32, 32][..], 3));
    // Channel-planar: pixel byte p of the record is data[p]; red (0,1) is byte 1, green (0,0) byte 1024.
    assert_eq!(s.data()[1], f32::from(3u8.wrapping_add(21)) / 255.0);
    assert_eq!(s.data()[1024], 21.0 / 255.0); // (1024 as u8) * 3 + 21
    let test = Cifar::open(&root, CifarKind::Cifar10, Split::Test).unwrap();
    assert_eq!((test.len(), test.get(0).unwrap().label()), (1, 9));
    // CIFAR's validation split is its test batch (never the training batches).
    let val = Cifar::open(&root, CifarKind::Cifar10, Split::Val).unwrap();
    assert_eq!((val.len(), val.get(0).unwrap().label()), (1, 9));
    assert_eq!(val.get(0).unwrap(), test.get(0).unwrap());
    // Default names without the meta file.
    std::fs::remove_file(root.join("batches.meta.txt")).unwrap();
    let train = Cifar::open(&root, CifarKind::Cifar10, Split::Train).unwrap();
    assert_eq!(train.classes()[0], "airplane");
}

#[test]
fn cifar_errors_name_file_and_offset() {
    let src = Path::new("batch.bin");
    let mut bytes = cifar_record(&[1], 0);
    bytes.extend(cifar_record(&[2], 0));
    // Truncated second record.
    let e = Cifar::from_bytes(CifarKind::Cifar10, &bytes[..3073 + 100], src).unwrap_err();
    assert_eq!(format_offset(&e), Some(3073), "{e}");
    assert!(e.to_string().contains("batch.bin") && e.to_string().contains("truncated"));
    // Label 10 in record 1.
    bytes[3073] = 10;
    let e = Cifar::from_bytes(CifarKind::Cifar10, &bytes, src).unwrap_err();
    assert_eq!(format_offset(&e), Some(3073), "{e}");
    assert!(Cifar::from_bytes(CifarKind::Cifar10, &[], src).is_err());
    // A missing batch is reported by name.
    let dir = tempfile::tempdir().unwrap();
    let e = Cifar::open(dir.path(), CifarKind::Cifar10, Split::Train).unwrap_err();
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
}

#[test]
fn cifar100_fine_and_coarse() {
    let mut bytes = cifar_record(&[3, 77], 5);
    bytes.extend(cifar_record(&[19, 99], 6));
    let fine = Cifar::from_bytes(CifarKind::Cifar100Fine, &bytes, Path::new("train.bin")).unwrap();
    let coarse =
        Cifar::from_bytes(CifarKind::Cifar100Coarse, &bytes, Path::new("train.bin")).unwrap();
    assert_eq!(fine.labels(), &[77, 99]);
    assert_eq!(coarse.labels(), &[3, 19]);
    assert_eq!((fine.num_classes(), coarse.num_classes()), (100, 20));
    assert_eq!(fine.classes()[99], "worm");
    assert_eq!(coarse.classes()[19], "vehicles_2");
    assert_eq!(fine.get(1).unwrap().data()[0], 6.0 / 255.0);
    // Fine label 100 is at byte 3074 + 1 of the second record.
    let mut bad = bytes.clone();
    bad[3074 + 1] = 100;
    let e = Cifar::from_bytes(CifarKind::Cifar100Fine, &bad, Path::new("train.bin")).unwrap_err();
    assert_eq!(format_offset(&e), Some(3075));
    // Wrong variant: a CIFAR-100 file (3,074-byte records) read as CIFAR-10 is rejected by length.
    assert!(Cifar::from_bytes(CifarKind::Cifar10, &bytes, Path::new("train.bin")).is_err());
}

/// A w x h RGB image with a recognisable gradient.
fn test_image(w: u32, h: u32, tint: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, tint])
    })
}

fn save(img: &image::RgbImage, path: &Path, format: image::ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

#[test]
fn image_folder_classes_channels_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(
        &test_image(20, 10, 200),
        &root.join("cat/a.png"),
        image::ImageFormat::Png,
    );
    save(
        &test_image(16, 16, 10),
        &root.join("cat/b.jpg"),
        image::ImageFormat::Jpeg,
    );
    save(
        &test_image(8, 12, 90),
        &root.join("dog/c.png"),
        image::ImageFormat::Png,
    );
    write(&root.join("dog/notes.txt"), b"not an image");
    write(&root.join(".hidden/x.png"), b"ignored");
    let ds = ImageFolder::open(root, Channels::Rgb).unwrap();
    assert_eq!(ds.classes(), &["cat".to_string(), "dog".to_string()]);
    assert_eq!(ds.len(), 3);
    let a = ds.get(0).unwrap();
    assert_eq!((a.shape(), a.label()), (&[3usize, 10, 20][..], 0));
    // PNG is lossless: red (x=10) = 10*255/20 = 127, blue = 200.
    assert_eq!(a.data()[10], 127.0 / 255.0);
    assert_eq!(a.data()[2 * 200], 200.0 / 255.0);
    let c = ds.get(2).unwrap();
    assert_eq!((c.shape(), c.label()), (&[3usize, 12, 8][..], 1));
    let gray = ImageFolder::open(root, Channels::Gray).unwrap();
    assert_eq!(gray.get(1).unwrap().shape(), &[1, 16, 16]);
    // RGB to gray uses image's Rec. 709 luma: red ramp x*255/20, green y*255/10, blue 200 at (x=10, y=0).
    let g = gray.get(0).unwrap();
    let luma = image::DynamicImage::ImageRgb8(test_image(20, 10, 200)).to_luma8();
    assert_eq!(g.data()[10], f32::from(luma.get_pixel(10, 0)[0]) / 255.0);

    // An 8-bit grayscale PNG: exact in gray, replicated into three equal planes in RGB.
    let l8 = image::GrayImage::from_fn(7, 5, |x, y| image::Luma([(x * 30 + y) as u8]));
    std::fs::create_dir_all(root.join("gray")).unwrap();
    l8.save(root.join("gray/l.png")).unwrap();
    let rgb = ImageFolder::open(root, Channels::Rgb).unwrap();
    let gray = ImageFolder::open(root, Channels::Gray).unwrap();
    let i = (0..rgb.len())
        .find(|&i| rgb.item(i).unwrap().0.ends_with("gray/l.png"))
        .unwrap();
    let (a, b) = (rgb.get(i).unwrap(), gray.get(i).unwrap());
    assert_eq!(
        (a.shape(), b.shape()),
        (&[3usize, 5, 7][..], &[1usize, 5, 7][..])
    );
    assert_eq!(b.data()[7 + 3], f32::from(3u8 * 30 + 1) / 255.0);
    for c in 0..3 {
        assert_eq!(&a.data()[c * 35..(c + 1) * 35], b.data());
    }
    std::fs::remove_dir_all(root.join("gray")).unwrap();

    // Now break files: a corrupt PNG, a truncated PNG, a truncated JPEG, garbage with an image name.
    let png = std::fs::read(root.join("cat/a.png")).unwrap();
    let jpg = std::fs::read(root.join("cat/b.jpg")).unwrap();
    let mut corrupt = png.clone();
    let n = corrupt.len();
    for b in &mut corrupt[40..n - 20] {
        *b = b.wrapping_add(77);
    }
    write(&root.join("bad/corrupt.png"), &corrupt);
    write(&root.join("bad/truncated.png"), &png[..png.len() * 2 / 3]);
    write(&root.join("bad/truncated.jpg"), &jpg[..jpg.len() * 2 / 3]);
    write(&root.join("bad/random.jpeg"), &[0x13; 300]);
    let ds = ImageFolder::open(root, Channels::Rgb).unwrap();
    assert_eq!(ds.classes().len(), 3);
    for i in 0..ds.len() {
        let (path, _) = ds.item(i).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let r = ds.get(i);
        if path.parent().unwrap().ends_with("bad") {
            let e = r.expect_err(&name);
            assert!(matches!(e, Error::Decode { .. }), "{name}: {e}");
            assert!(e.to_string().contains(&name), "{e}");
        } else {
            assert!(r.is_ok(), "{name}");
        }
    }
}

#[test]
fn frame_folder_clips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Class "run": clip of 10 frames whose blue channel encodes the frame number; class "walk": 2 frames.
    for f in 0..10u8 {
        let img = image::RgbImage::from_pixel(6, 4, image::Rgb([1, 2, f * 20]));
        save(
            &img,
            &root.join(format!("run/clip1/frame{f}.png")),
            image::ImageFormat::Png,
        );
    }
    for f in 0..2u8 {
        let img = image::RgbImage::from_pixel(6, 4, image::Rgb([0, 0, 100 + f]));
        save(
            &img,
            &root.join(format!("walk/x/{f}.png")),
            image::ImageFormat::Png,
        );
    }
    let opts = FrameFolderOptions {
        num_frames: 4,
        sampling: FrameSampling::Uniform,
        channels: Channels::Rgb,
    };
    let ds = FrameFolder::open(root, opts).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (2, 2));
    let s = ds.get(0).unwrap();
    assert_eq!(s.shape(), &[3, 4, 4, 6]);
    assert!(s.is_video());
    // Natural order: frame0..frame9 (frame10 would sort last); uniform picks 0, 3, 6, 9.
    let blue = |t: usize| s.data()[(2 * 4 + t) * 24];
    let want: Vec<f32> = [0u8, 3, 6, 9]
        .iter()
        .map(|f| f32::from(f * 20) / 255.0)
        .collect();
    assert_eq!((0..4).map(blue).collect::<Vec<_>>(), want);
    let s = ds.get(1).unwrap();
    assert_eq!(s.label(), 1);
    // A frame of another size is an error naming it.
    let img = image::RgbImage::from_pixel(5, 4, image::Rgb([0, 0, 0]));
    save(&img, &root.join("walk/x/1.png"), image::ImageFormat::Png);
    let e = ds.get(1).unwrap_err();
    assert!(e.to_string().contains("1.png"), "{e}");
    // A corrupt frame is an error naming it.
    write(
        &root.join("run/clip1/frame3.png"),
        b"\x89PNG\r\n\x1a\n garbage",
    );
    let e = ds.get(0).unwrap_err();
    assert!(e.to_string().contains("frame3.png"), "{e}");
}

#[test]
fn moving_mnist_is_deterministic_and_made_of_real_digits() {
    let digits = bundled_mnist(Split::Val).unwrap();
    let cfg = MovingMnistConfig {
        len: 50,
        seed: 7,
        ..Default::default()
    };
    let mm = MovingMnist::new(digits.clone(), cfg).unwrap();
    let a = mm.get(3).unwrap();
    assert_eq!(a.shape(), &[1, 20, 64, 64]);
    assert_eq!(
        a,
        MovingMnist::new(digits.clone(), cfg)
            .unwrap()
            .get(3)
            .unwrap()
    );
    assert_ne!(a, mm.get(4).unwrap());
    let other_seed =
        MovingMnist::new(digits.clone(), MovingMnistConfig { seed: 8, ..cfg }).unwrap();
    assert_ne!(a, other_seed.get(3).unwrap());
    assert!(a.data().iter().all(|v| (0.0..=1.0).contains(v)));
    // Every frame contains the digits at their trajectory positions: the frame's maximum over each digit's
    // box is at least the digit's own pixels there.
    let paths = mm.trajectories(3);
    assert_eq!(paths.len(), 2);
    for p in &paths {
        let img = digits.image_bytes(p.digit).unwrap();
        for (f, &(top, left)) in p.positions.iter().enumerate() {
            assert!(top + 28 <= 64 && left + 28 <= 64);
            for r in 0..28 {
                for c in 0..28 {
                    let v = a.data()[f * 4096 + (top + r) * 64 + left + c];
                    assert!(v >= f32::from(img[r * 28 + c]) / 255.0);
                }
            }
        }
        // Consecutive positions move by at most step * free range (+1 for rounding) per axis.
        for w in p.positions.windows(2) {
            assert!(w[0].0.abs_diff(w[1].0) <= 4 && w[0].1.abs_diff(w[1].1) <= 4);
        }
    }
    assert_eq!(a.label(), u32::from(digits.label(paths[0].digit).unwrap()));
    assert!(MovingMnist::new(digits, MovingMnistConfig { canvas: 20, ..cfg }).is_err());
}
