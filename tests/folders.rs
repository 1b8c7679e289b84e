//! End to end: the real `dmae` binary on image folders as users have them (issue 18): colour
//! photos of mixed sizes in PNG and JPEG, small grey images of another size, folders with and
//! without `val/`, and CIFAR-10 binary batches. Every command runs with its default data flags
//! (no resize, crop or channel option): the pipeline fits every image to the model. Models are
//! tiny (`[model]` widths of 32, two blocks) and budgets a few steps: this checks the plumbing,
//! not learning.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use dmae_models::{Classifier, DiffMae};
use image::{ImageEncoder, Rgb, RgbImage};

/// Narrow model widths over any preset; the data flags stay at their defaults.
const TINY: &str = "[model]
encoder = { dim = 32, depth = 2, heads = 2 }
decoder = { dim = 16, depth = 1, heads = 2, time_embed_dim = 16 }

[train]
batch-size = 4
threads = 2
log-every = 1
";

/// The same widths for `finetune --init none`.
const TINY_FINETUNE: &str = "[model]
encoder = { dim = 32, depth = 2, heads = 2 }
decoder = { dim = 16, depth = 1, heads = 2, time_embed_dim = 16 }

[finetune]
batch-size = 4
threads = 2
log-every = 1
";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmae-folders-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn dmae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(args)
        .output()
        .expect("run dmae")
}

/// Runs `dmae args`, asserts success, returns stdout and stderr together.
fn ok(args: &[&str]) -> String {
    let o = dmae(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "dmae {args:?} failed:\n{out}\n{err}");
    format!("{out}{err}")
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// A colour picture of class `class` (0: warm diagonal gradient, 1: cool stripes) of `w x h`.
fn picture(class: u32, w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * k + y * (k + seed) + seed * 13) % 256) as u8;
        if class == 0 {
            Rgb([200u8.saturating_add(v(3) / 8), v(5) / 2, 40])
        } else {
            let stripe = if (x / 3 + seed).is_multiple_of(2) {
                220
            } else {
                30
            };
            Rgb([30, v(2) / 2, stripe])
        }
    })
}

fn save_jpeg(img: &RgbImage, path: &Path) {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `root/<split>/<class>/...`: per class, PNG and JPEG pictures of different sizes and one grey
/// PNG (grey images in a colour folder are repeated over R, G, B).
fn colour_folder(root: &Path, splits: &[(&str, u32)]) {
    let sizes = [(40, 30), (23, 37), (64, 48), (50, 50), (33, 61), (45, 28)];
    for &(split, per_class) in splits {
        for (class, name) in ["cat", "dog"].iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = sizes[(i as usize + class) % sizes.len()];
                let img = picture(class as u32, w, h, i);
                match i % 3 {
                    0 => img.save(dir.join(format!("{i}.png"))).unwrap(),
                    1 => save_jpeg(&img, &dir.join(format!("{i}.jpg"))),
                    _ => image::DynamicImage::ImageRgb8(img)
                        .to_luma8()
                        .save(dir.join(format!("{i}.png")))
                        .unwrap(),
                }
            }
        }
    }
}

/// `root/<split>/<digit>/*.png`: 8x8 grey "digits" (a bar whose position is the class).
fn grey_folder(root: &Path, splits: &[(&str, u32)]) {
    for &(split, per_class) in splits {
        for class in 0..3u32 {
            let dir = root.join(split).join(class.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                image::GrayImage::from_fn(8, 8, |x, y| {
                    let on = x / 3 == class || (y + i) % 7 == 0;
                    image::Luma([if on { 230 } else { 20 }])
                })
                .save(dir.join(format!("{i}.png")))
                .unwrap();
            }
        }
    }
}

fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Files of `dir` whose names start with `prefix` and end with `.png`.
fn pngs(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".png"))
        .collect();
    v.sort();
    v
}

/// Pre-train, fine-tune, evaluate (classification and inpainting) and sample a folder with
/// the data flags at their defaults; returns (pretrain stdout, finetune stdout).
fn every_command(root: &Path, data: &str, model: &str) -> (String, String) {
    let cfg = write(&root.join("tiny.toml"), TINY);
    let (pre, ft) = (root.join("pre"), root.join("ft"));
    let train = ok(&[
        "train",
        "--data",
        data,
        "--model",
        model,
        "--config",
        s(&cfg),
        "--steps",
        "3",
        "--sample-every",
        "3",
        "--out",
        s(&pre),
    ]);
    let ckpt = pre.join("checkpoint.safetensors");
    let fine = ok(&[
        "finetune",
        "--data",
        data,
        "--init",
        s(&ckpt),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--threads",
        "2",
        "--out",
        s(&ft),
    ]);
    let clf = ft.join("classifier.safetensors");
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            s(&clf),
            "--data",
            data,
            "--task",
            "classify",
            "--json",
        ])
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap(),
    )
    .unwrap();
    assert!((0.0..=1.0).contains(&v["top1"].as_f64().unwrap()), "{v}");
    let inpaint = ok(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--data",
        data,
        "--task",
        "inpaint",
        "--steps",
        "4",
        "--json",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(inpaint.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert!(v["psnr"].as_f64().unwrap().is_finite(), "{v}");
    let samples = root.join("samples");
    let out = ok(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--data",
        data,
        "--count",
        "4",
        "--steps",
        "4",
        "--out",
        s(&samples),
    ]);
    assert!(out.contains("sampled 4 input(s)"), "{out}");
    (train, fine)
}

#[test]
fn colour_photos_of_mixed_sizes_train_finetune_eval_and_sample_with_default_flags() {
    let root = tmp("colour");
    let photos = root.join("photos");
    colour_folder(&photos, &[("train", 6), ("val", 3)]);
    let data = format!("folder:{}", photos.display());
    let (train, fine) = every_command(&root, &data, "tiny-32");

    // One line says what the images become: MAE's training transform for photos, RGB, 32 px.
    let line = lines_with(&train, "data: train split")[0];
    for want in [
        "12 images, 2 classes",
        "32x32 RGB",
        "random-resized-crop (area 20-100%",
        "horizontal flip p=0.5",
        "photos/train",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    assert!(
        lines_with(&train, "previews: 6 val images")[0].contains("photos/val"),
        "{train}"
    );
    let val = lines_with(&fine, "data: val split")[0];
    assert!(
        val.contains("6 images, 2 classes") && val.contains("resize to fill + center crop"),
        "{val}"
    );
    let c = Classifier::load(root.join("ft/classifier.safetensors"), &Device::Cpu).unwrap();
    assert_eq!((c.num_classes(), c.config().in_channels), (2, 3));
    // Each run directory has a loss plot people can read and a report that shows the previews.
    for run in ["pre", "ft"] {
        let svg = std::fs::read_to_string(root.join(run).join("loss.svg")).unwrap();
        for label in [">Loss</text>", ">step</text>", ">loss</text>"] {
            assert!(svg.contains(label), "{run}/loss.svg lacks {label:?}");
        }
        let html = std::fs::read_to_string(root.join(run).join("report.html")).unwrap();
        assert!(html.contains("<svg"), "{run}/report.html has no plot");
    }
    let html = std::fs::read_to_string(root.join("pre/report.html")).unwrap();
    assert!(html.contains("samples/step_000003.png"), "{html}");
    // The resolved transform is part of the run's settings.
    let toml = std::fs::read_to_string(root.join("pre/config.toml")).unwrap();
    assert!(
        toml.contains("crop = \"random\"") && toml.contains("flip = true"),
        "{toml}"
    );
    // `--count 4` of 3 + 3 validation images alternates the classes: indices 0, 3, 1, 4.
    assert_eq!(
        pngs(&root.join("samples"), "val_"),
        [
            "val_00000.png",
            "val_00001.png",
            "val_00003.png",
            "val_00004.png"
        ]
    );
    // A directory of mixed files as --input, fitted to the checkpoint.
    let out = root.join("inputs");
    ok(&[
        "sample",
        "--checkpoint",
        s(&root.join("pre/checkpoint.safetensors")),
        "--input",
        s(&photos.join("val/dog")),
        "--sampler",
        "mae",
        "--out",
        s(&out),
    ]);
    assert_eq!(pngs(&out, "").len(), 3);
}

#[test]
fn small_grey_images_train_a_grey_model_finetune_eval_and_sample_with_default_flags() {
    let root = tmp("grey");
    let digits = root.join("digits");
    grey_folder(&digits, &[("train", 4), ("val", 2)]);
    let data = format!("folder:{}", digits.display());
    // The default preset: 28 px grey; the 8 px images are enlarged to it.
    let (train, _) = every_command(&root, &data, "mnist");
    let line = lines_with(&train, "data: train split")[0];
    for want in [
        "12 images, 3 classes",
        "28x28 grey",
        "random-resized-crop",
        "no flip",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    let m = DiffMae::load(root.join("pre/checkpoint.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        (m.config().image_size, m.config().in_channels),
        ([28, 28], 1)
    );
}

/// Issue 18: a folder without `val/` was evaluated on its own training images (99% "val"
/// accuracy). Now validation there is an error naming both ways out; a hold-out or the explicit
/// flag are printed.
#[test]
fn a_folder_without_val_is_not_silently_evaluated_on_its_training_images() {
    let root = tmp("noval");
    let flat = root.join("flat");
    grey_folder(&root.join("tmp"), &[("train", 8)]);
    std::fs::rename(root.join("tmp/train"), &flat).unwrap();
    let data = format!("folder:{}", flat.display());
    let cfg = write(&root.join("tiny.toml"), TINY_FINETUNE);
    let finetune = |extra: &[&str], name: &str| {
        let out = root.join(name);
        let mut args = vec![
            "finetune",
            "--init",
            "none",
            "--config",
            s(&cfg),
            "--data",
            &data,
            "--steps",
            "2",
        ];
        args.extend_from_slice(extra);
        args.extend(["--out", s(&out)]);
        dmae(&args)
    };
    let o = finetune(&[], "none");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for want in ["no validation images", "--val-fraction", "--val-on-train"] {
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }

    // A stratified hold-out: 2 of each class's 8 images, printed, and left out of training.
    let o = finetune(&["--val-fraction", "0.25"], "holdout");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let train = lines_with(&out, "data: train split")[0];
    let val = lines_with(&out, "data: val split")[0];
    assert!(
        train.contains("18 images") && train.contains("less its 25% validation hold-out"),
        "{train}"
    );
    assert!(
        val.contains("6 images, 3 classes") && val.contains("25% of"),
        "{val}"
    );

    // Only on request, and said so.
    let o = finetune(&["--val-on-train"], "ontrain");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        lines_with(&out, "data: val split")[0].contains("24 images")
            && out.contains("the training images themselves"),
        "{out}"
    );

    // `dmae eval` follows the same rule.
    let clf = root.join("holdout/classifier.safetensors");
    let e = dmae(&[
        "eval",
        "--checkpoint",
        s(&clf),
        "--data",
        &data,
        "--task",
        "classify",
    ]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--val-fraction"));
    let v = ok(&[
        "eval",
        "--checkpoint",
        s(&clf),
        "--data",
        &data,
        "--task",
        "classify",
        "--val-fraction",
        "0.25",
        "--json",
    ]);
    assert!(v.contains("\"count\":6"), "{v}");

    // Pre-training needs no validation split: its previews come from the training images and
    // the start-up lines say so.
    let pre = root.join("pre");
    let cfg_train = write(&root.join("tiny-train.toml"), TINY);
    let out = ok(&[
        "train",
        "--config",
        s(&cfg_train),
        "--data",
        &data,
        "--steps",
        "2",
        "--out",
        s(&pre),
    ]);
    assert!(
        lines_with(&out, "previews: 8 train images")[0].contains("the training images themselves"),
        "{out}"
    );
}

/// CIFAR-10's binary batches (made here: 2 images per training batch, 4 test images); its
/// validation split is the test batch in sample, eval and finetune.
#[test]
fn cifar10_validates_on_its_test_batch() {
    let root = tmp("cifar");
    let dir = root.join("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| ((i * 7 + label as usize * 50) % 256) as u8));
        r
    };
    for b in 1..=5 {
        let bytes: Vec<u8> = [record(b % 10), record((b + 1) % 10)].concat();
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let test: Vec<u8> = (0..4).flat_map(|l| record(l as u8)).collect();
    std::fs::write(dir.join("test_batch.bin"), test).unwrap();
    let data = format!("cifar10:{}", dir.display());
    let cfg = write(&root.join("tiny.toml"), TINY_FINETUNE);
    let ft = root.join("ft");
    let out = ok(&[
        "finetune",
        "--init",
        "none",
        "--model",
        "tiny-32",
        "--config",
        s(&cfg),
        "--data",
        &data,
        "--steps",
        "2",
        "--out",
        s(&ft),
    ]);
    let train = lines_with(&out, "data: train split")[0];
    // 32 px images for a 32 px model: whole images (no random crop), flipped.
    assert!(
        train.contains("10 images")
            && train.contains("no random crop")
            && train.contains("flip p=0.5"),
        "{train}"
    );
    assert!(
        lines_with(&out, "data: val split")[0].contains("4 images"),
        "{out}"
    );
    ok(&[
        "eval",
        "--checkpoint",
        s(&ft.join("classifier.safetensors")),
        "--data",
        &data,
        "--task",
        "classify",
    ]);
    let pre = root.join("pre");
    let cfg_train = write(&root.join("tiny-train.toml"), TINY);
    ok(&[
        "train",
        "--model",
        "tiny-32",
        "--config",
        s(&cfg_train),
        "--data",
        &data,
        "--steps",
        "1",
        "--sample-every",
        "0",
        "--out",
        s(&pre),
    ]);
    let out = ok(&[
        "sample",
        "--checkpoint",
        s(&pre.join("checkpoint.safetensors")),
        "--data",
        &data,
        "--count",
        "2",
        "--sampler",
        "mae",
        "--out",
        s(&root.join("samples")),
    ]);
    assert!(out.contains("test_batch"), "{out}");
}

/// `--image-size` (flag and config key) sets the model's size for pre-training and for
/// `finetune --init none`, checked against the patch size.
#[test]
fn image_size_chooses_the_model_size() {
    let root = tmp("size");
    let photos = root.join("photos");
    colour_folder(&photos, &[("train", 3), ("val", 1)]);
    let data = format!("folder:{}", photos.display());
    let cfg = write(&root.join("tiny.toml"), &format!("{TINY}image-size = 20\n"));
    ok(&[
        "train",
        "--model",
        "tiny-32",
        "--config",
        s(&cfg),
        "--data",
        &data,
        "--steps",
        "1",
        "--sample-every",
        "0",
        "--out",
        s(&root.join("pre")),
    ]);
    let m = DiffMae::load(root.join("pre/checkpoint.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(m.config().image_size, [20, 20]);
    // A 5 x 5 patch grid: `center:0.25` rounds to a 3 x 3 block, and the run says so.
    let out = ok(&[
        "sample",
        "--checkpoint",
        s(&root.join("pre/checkpoint.safetensors")),
        "--data",
        &data,
        "--count",
        "1",
        "--mask",
        "center:0.25",
        "--sampler",
        "mae",
        "--out",
        s(&root.join("samples")),
    ]);
    assert!(
        out.contains("mask center:0.25 (36% of the 25 patches masked)"),
        "{out}"
    );
    let ft_cfg = write(&root.join("ft.toml"), TINY_FINETUNE);
    let out = ok(&[
        "finetune",
        "--init",
        "none",
        "--model",
        "tiny-32",
        "--config",
        s(&ft_cfg),
        "--image-size",
        "16",
        "--data",
        &data,
        "--steps",
        "1",
        "--out",
        s(&root.join("ft")),
    ]);
    assert!(out.contains("16x16 RGB"), "{out}");
    let c = Classifier::load(root.join("ft/classifier.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(c.config().image_size, [16, 16]);
    let bad = root.join("bad");
    let e = dmae(&[
        "train",
        "--model",
        "tiny-32",
        "--image-size",
        "30",
        "--data",
        &data,
        "--out",
        s(&bad),
    ]);
    assert_eq!(e.status.code(), Some(2));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("--image-size 30") && err.contains("patch size 4"),
        "{err}"
    );
}
