//! End to end: the real `dmae` binary's `sample`, `eval` and `import-hf` on the bundled
//! validation digits, with small checkpoints made here through the library (an untrained
//! DiffMAE, its MAE twin, a video DiffMAE, and a tiny digit classifier trained for a few
//! seconds on bundled training digits).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use candle_core::{Device, Tensor, D};
use dmae_core::{AdamW, AdamWConfig};
use dmae_data::{bundled_mnist, Dataset, Split};
use dmae_models::{Classifier, DiffMae, ModelConfig, Pool};

struct Fixture {
    root: PathBuf,
    diffmae: PathBuf,
    mae: PathBuf,
    video: PathBuf,
    classifier: PathBuf,
    /// Accuracy of the classifier on its last training batch (sanity of the optimisation).
    train_acc: f64,
}

fn small(mut c: ModelConfig) -> ModelConfig {
    c.encoder.dim = 32;
    c.encoder.depth = 2;
    c.encoder.heads = 2;
    c.decoder.dim = 16;
    c.decoder.depth = 2;
    c.decoder.heads = 2;
    c.decoder.time_embed_dim = 16;
    c
}

/// Cross-entropy `mean(logsumexp(z) − z_label)` and the batch accuracy.
fn cross_entropy(logits: &Tensor, labels: &[u32]) -> (Tensor, f64) {
    let n = labels.len();
    let max = logits.max_keepdim(D::Minus1).unwrap();
    let z = logits.broadcast_sub(&max).unwrap();
    let lse = z
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let idx = Tensor::from_vec(labels.to_vec(), (n, 1), logits.device()).unwrap();
    let picked = z.gather(&idx, 1).unwrap();
    let loss = (lse - picked).unwrap().mean_all().unwrap();
    let pred = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
    let acc = pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / n as f64;
    (loss, acc)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Under cargo's per-target scratch directory, recreated on every run (a shared static
        // fixture is never dropped, so a temp dir would leak).
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sample_eval");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dev = Device::Cpu;
        let cfg = small(ModelConfig::mnist());
        let diffmae = root.join("diffmae.safetensors");
        DiffMae::new(cfg.clone(), 1, &dev)
            .unwrap()
            .save(&diffmae)
            .unwrap();
        let mae = root.join("mae.safetensors");
        DiffMae::new(cfg.clone().into_mae(), 2, &dev)
            .unwrap()
            .save(&mae)
            .unwrap();
        let mut vcfg = cfg.clone();
        vcfg.image_size = [32, 32];
        vcfg.num_frames = 4;
        vcfg.tubelet = 2;
        let video = root.join("video.safetensors");
        DiffMae::new(vcfg, 3, &dev).unwrap().save(&video).unwrap();

        // A tiny digit classifier, trained briefly on bundled training digits.
        // Patch 7 (16 tokens), one block: fast, and it learns within a few seconds.
        let mut ccfg = cfg.clone();
        ccfg.patch_size = 7;
        ccfg.encoder.depth = 1;
        ccfg.decoder.depth = 1;
        let clf = Classifier::new(ccfg, 10, Pool::Avg, 4, &dev).unwrap();
        let vars: Vec<_> = clf.named_params().iter().map(|p| p.var.clone()).collect();
        let mut opt = AdamW::from_vars(
            vars,
            AdamWConfig {
                lr: 4e-3,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let train = bundled_mnist(Split::Train).unwrap();
        let t0 = std::time::Instant::now();
        let (bs, steps) = (64, 80);
        let mut train_acc = 0.0;
        for step in 0..steps {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for i in 0..bs {
                let s = train.get((step * bs + i) % 4096).unwrap();
                ys.push(s.label());
                xs.push(s.to_tensor(&dev).unwrap());
            }
            let x = Tensor::stack(&xs, 0).unwrap();
            let (loss, acc) = cross_entropy(&clf.forward(&x, None).unwrap(), &ys);
            opt.step(&loss.backward().unwrap()).unwrap();
            // Accuracy over the last 10 batches (before each update).
            if step + 10 >= steps {
                train_acc += acc / 10.0;
            }
        }
        eprintln!(
            "classifier: {:.1} s, acc {train_acc}",
            t0.elapsed().as_secs_f64()
        );
        let classifier = root.join("classifier.safetensors");
        clf.save(&classifier).unwrap();
        Fixture {
            root,
            diffmae,
            mae,
            video,
            classifier,
            train_acc,
        }
    })
}

fn dmae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(args)
        .output()
        .expect("run dmae")
}

fn ok(args: &[&str]) -> String {
    let o = dmae(args);
    assert!(
        o.status.success(),
        "dmae {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code `code` and exactly one `error:` line on stderr.
fn fails(args: &[&str], code: i32, needle: &str) {
    let o = dmae(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "dmae {args:?}: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "dmae {args:?}: {err}"
    );
    assert!(
        err.contains(needle),
        "dmae {args:?}: {err:?} lacks {needle:?}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The documented grid size (images.rs): `c·s·W + (c+1)·2` by `r·s·H + (r+1)·2`, s = 3 at 28 px.
fn grid_size(rows: u32, cols: u32, side: u32) -> (u32, u32) {
    let s = 64u32.div_ceil(side).clamp(1, 8);
    (
        cols * s * side + (cols + 1) * 2,
        rows * s * side + (rows + 1) * 2,
    )
}

/// The `val_*.png` inpaintings (not trajectories) `dmae sample --data` wrote to `dir`, sorted:
/// `--count N` takes N samples spread over the classes, so their indices depend on the data.
fn sampled(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("val_") && n.ends_with(".png") && !n.contains("_trajectory")
        })
        .collect();
    v.sort();
    v
}

/// A trajectory strip: the grid of `grid_size(rows, cols, side)` under a band with one t label
/// per column (dark-grey border colour with light text somewhere in it).
fn assert_labelled_strip(path: &Path, rows: u32, cols: u32, side: u32) {
    let tr = image::open(path).unwrap().to_rgb8();
    let (w, h) = grid_size(rows, cols, side);
    assert_eq!(tr.width(), w, "{}", path.display());
    let band = tr.height() - h;
    assert!(
        (7..=40).contains(&band),
        "{}: {}x{}, grid {w}x{h}",
        path.display(),
        tr.width(),
        tr.height()
    );
    let ink = (0..band)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| tr.get_pixel(x, y).0[0] > 150)
        .count();
    assert!(ink > 10 * cols as usize, "{}: no t labels", path.display());
}

#[test]
fn sample_writes_triptychs_and_trajectories() {
    let f = fixture();
    let out = f.root.join("sample-data");
    let stdout = ok(&[
        "sample",
        "--checkpoint",
        s(&f.diffmae),
        "--data",
        "bundled",
        "--count",
        "3",
        "--steps",
        "10",
        "--trajectory",
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("ddim 10 steps"), "{stdout}");
    let files = sampled(&out);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let img = image::open(f).unwrap();
        assert_eq!((img.width(), img.height()), grid_size(1, 3, 28));
        let stem = f.file_stem().unwrap().to_string_lossy();
        assert_labelled_strip(
            &f.with_file_name(format!("{stem}_trajectory.png")),
            1,
            10,
            28,
        );
    }
    // The masked panel is grey in the centre (center:0.25 = the middle 4 x 4 of 7 x 7 patches)
    // and the ground-truth panel is not.
    let img = image::open(&files[0]).unwrap().to_rgb8();
    let (cx, cy) = (2 + 42, 2 + 42);
    assert_eq!(img.get_pixel(cx, cy).0, [128, 128, 128]);
    assert_eq!(img.get_pixel(2, 2).0, img.get_pixel(2 + 2 * (84 + 2), 2).0);

    // Image files (a directory, resized from 56 px), a mask file, and the MAE checkpoint.
    let inputs = f.root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let digit = bundled_mnist(Split::Val).unwrap().get(5).unwrap();
    let px: Vec<u8> = digit.data().iter().map(|v| (v * 255.0) as u8).collect();
    let small = image::GrayImage::from_raw(28, 28, px).unwrap();
    image::imageops::resize(&small, 56, 56, image::imageops::FilterType::Nearest)
        .save(inputs.join("digit.png"))
        .unwrap();
    let mask = image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]));
    let mask_path = f.root.join("left.png");
    mask.save(&mask_path).unwrap();
    let out2 = f.root.join("sample-files");
    ok(&[
        "sample",
        "--checkpoint",
        s(&f.mae),
        "--input",
        s(&inputs),
        "--mask",
        s(&mask_path),
        "--out",
        s(&out2),
    ]);
    let img = image::open(out2.join("digit.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), grid_size(1, 3, 28));
    // Columns 0..8 masked: the masked panel is grey there, the sample is not all grey.
    assert_eq!(img.get_pixel(2 + 3, 2 + 40).0, [128, 128, 128]);
    assert_eq!(
        img.get_pixel(2 + 3 * 9, 2 + 40).0,
        img.get_pixel(2 + 2 * 86 + 3 * 9, 2 + 40).0
    );
}

#[test]
fn eval_reports_inpainting_and_classifier_metrics() {
    let f = fixture();
    assert!(
        f.train_acc > 0.3,
        "the test classifier did not learn: {}",
        f.train_acc
    );
    let stdout = ok(&[
        "eval",
        "--checkpoint",
        s(&f.diffmae),
        "--task",
        "inpaint",
        "--limit",
        "24",
        "--steps",
        "5",
        "--feature-classifier",
        s(&f.classifier),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (&v["task"], &v["data"]),
        (&"inpaint".into(), &"bundled".into())
    );
    assert_eq!(v["count"], 24);
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {v}"))
    };
    assert!(num("psnr") > 0.0 && num("psnr").is_finite());
    assert!((-1.0..=1.0).contains(&num("ssim")));
    assert!(num("sharpness_ratio") >= 0.0 && num("sharpness_ratio").is_finite());
    assert!((0.0..=1.0).contains(&num("classifier_accuracy")));
    // The classifier sees real digits here: its accuracy on them is above chance.
    assert!(num("classifier_accuracy_real") > 0.2, "{v}");
    assert!(num("frechet_distance") > 0.0 && num("frechet_distance").is_finite());

    let stdout = ok(&[
        "eval",
        "--checkpoint",
        s(&f.classifier),
        "--task",
        "classify",
        "--limit",
        "300",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["count"], 300);
    let (t1, t5) = (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&t1) && t5 >= t1 && t5 <= 1.0, "{v}");
    assert!(t1 > 0.2, "val top-1 {t1} not above chance");
    // Inpainting 2 validation digits with the DiffMAE, as JSON.
    let inpaint = |flags: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--checkpoint", s(&f.diffmae), "--task", "inpaint"];
        args.extend(["--limit", "2", "--json"]);
        args.extend(flags);
        serde_json::from_str(ok(&args).trim()).unwrap()
    };
    // DDPM runs all 1000 steps.
    let v = inpaint(&["--sampler", "ddpm", "--mask", "block:0.5"]);
    assert_eq!(v["sampler"], "ddpm 1000 steps");
    assert!(v["psnr"].as_f64().unwrap() > 0.0);
    // --eta without --sampler reaches the default DDIM (it was once dropped silently).
    let v = inpaint(&["--steps", "5", "--eta", "1"]);
    assert_eq!(v["sampler"], "ddim 5 steps (eta 1)");
    // --temperature reaches the sampler: at 0, DDIM with eta 0 draws no noise, so under a fixed
    // mask the seed no longer changes the fills; at 1 it does.
    let center = |seed: &str, temperature: &str| {
        let flags = ["--steps", "5", "--mask", "center", "--seed", seed];
        inpaint(&[&flags[..], &["--temperature", temperature]].concat())
    };
    let (a, b) = (center("1", "0"), center("2", "0"));
    assert_eq!(a["sampler"], "ddim 5 steps (eta 0), temperature 0");
    assert_eq!((&a["psnr"], &a["ssim"]), (&b["psnr"], &b["ssim"]));
    let (c, d) = (center("1", "1"), center("2", "1"));
    assert_eq!(c["sampler"], "ddim 5 steps (eta 0)");
    assert_ne!(c["psnr"], d["psnr"]);
    // --guide reaches the sampler; weight 1 is the model alone, bit for bit.
    let guided = inpaint(&[
        "--steps",
        "5",
        "--mask",
        "center",
        "--seed",
        "1",
        "--guide",
        s(&f.diffmae),
        "--guidance",
        "1",
    ]);
    assert_eq!(guided["sampler"], "ddim 5 steps (eta 0), autoguidance w 1");
    assert_eq!((&guided["psnr"], &guided["ssim"]), (&c["psnr"], &c["ssim"]));
    // The table form names the metrics.
    let table = ok(&[
        "eval",
        "--checkpoint",
        s(&f.mae),
        "--task",
        "inpaint",
        "--limit",
        "4",
        "--mask",
        "random:0.75",
    ]);
    assert!(
        table.contains("psnr") && table.contains("mae (one decoder call"),
        "{table}"
    );
}

/// `--samples`, `--compare` and `--sheet`: the draws of one masked input differ only in the
/// masked region, the compared MAE sees the same mask, and draw 1 is what `--samples 1` gives.
#[test]
fn sample_draws_compares_and_writes_a_sheet() {
    let f = fixture();
    let out = f.root.join("sample-sheet");
    let args = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--checkpoint",
            s(&f.diffmae),
            "--data",
            "bundled",
            "--count",
            "2",
            "--mask",
            "random:0.5",
            "--steps",
            "5",
            "--seed",
            "3",
            "--out",
        ];
        a.push(s(out));
        a.extend_from_slice(extra);
        ok(&a.iter().map(|x| &**x).collect::<Vec<_>>())
    };
    let stdout = args(&out, &["--samples", "3", "--compare", s(&f.mae), "--sheet"]);
    assert!(
        stdout.contains("[masked | MAE | DiffMAE 1 | DiffMAE 2 | DiffMAE 3 | truth]"),
        "{stdout}"
    );
    let files = sampled(&out);
    assert_eq!(files.len(), 2, "{files:?}");
    let cell =
        |img: &image::RgbImage, col: u32, x: u32, y: u32| img.get_pixel(2 + col * 86 + x, 2 + y).0;
    for file in &files {
        let img = image::open(file).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), grid_size(1, 6, 28), "{}", file.display());
        let (mut hidden, mut differ) = (0, 0);
        for y in 0..84 {
            for x in 0..84 {
                let truth = cell(&img, 5, x, y);
                if cell(&img, 0, x, y) == [128, 128, 128] && truth != [128, 128, 128] {
                    hidden += 1;
                    differ += usize::from(cell(&img, 2, x, y) != cell(&img, 3, x, y));
                } else {
                    // Visible pixels are pasted back unchanged in every column.
                    for col in 1..5 {
                        assert_eq!(cell(&img, col, x, y), truth, "{} col {col}", file.display());
                    }
                }
            }
        }
        assert!(
            hidden > 84 * 84 / 4,
            "{}: {hidden} hidden pixels",
            file.display()
        );
        assert!(
            differ > hidden / 4,
            "{}: draws 1 and 2 agree on {hidden} - {differ}",
            file.display()
        );
    }
    // One sheet: the rows of both inputs under six labelled columns.
    let sheet = image::open(out.join("sheet.png")).unwrap().to_rgb8();
    let (w, h) = grid_size(2, 6, 28);
    assert_eq!(sheet.width(), w);
    assert!(
        (h + 7..=h + 40).contains(&sheet.height()),
        "{:?}",
        sheet.dimensions()
    );

    // Draw 1 is the single sample of the same seed.
    let single = f.root.join("sample-single");
    args(&single, &[]);
    for (a, b) in sampled(&single).iter().zip(&files) {
        let (a, b) = (
            image::open(a).unwrap().to_rgb8(),
            image::open(b).unwrap().to_rgb8(),
        );
        for y in 0..84 {
            for x in 0..84 {
                assert_eq!(cell(&a, 1, x, y), cell(&b, 2, x, y));
            }
        }
    }
    // A checkpoint that cuts inputs differently cannot share the mask: a usage error.
    fails(
        &[
            "sample",
            "--checkpoint",
            s(&f.diffmae),
            "--data",
            "bundled",
            "--compare",
            s(&f.video),
            "--out",
            s(&f.root.join("sample-bad")),
        ],
        2,
        "one mask cannot serve both",
    );
}

#[test]
fn video_sample_writes_a_gif() {
    let f = fixture();
    let out = f.root.join("video");
    ok(&[
        "sample",
        "--checkpoint",
        s(&f.video),
        "--data",
        "moving-mnist:frames=4,canvas=32,len=4",
        "--count",
        "2",
        "--mask",
        "future:2",
        "--steps",
        "4",
        "--trajectory",
        "--samples",
        "2",
        "--sheet",
        "--out",
        s(&out),
    ]);
    let gif = |name: &str| {
        use image::AnimationDecoder;
        let file = std::io::BufReader::new(std::fs::File::open(out.join(name)).unwrap());
        image::codecs::gif::GifDecoder::new(file)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap()
    };
    let frames = gif("val_00001.gif");
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].buffer().dimensions(), grid_size(1, 4, 32));
    // The sheet: both clips as rows of [masked | DiffMAE 1 | DiffMAE 2 | truth], labelled.
    let sheet = gif("sheet.gif");
    assert_eq!(sheet.len(), 4);
    let (w, h) = grid_size(2, 4, 32);
    let (sw, sh) = sheet[0].buffer().dimensions();
    assert_eq!(sw, w);
    assert!((h + 7..=h + 40).contains(&sh), "{sw}x{sh}");
    assert!(out.join("val_00001_frames/frame_003.png").is_file());
    assert_labelled_strip(&out.join("val_00001_trajectory.png"), 4, 4, 32);
    // Interpolation masks work too; eval scores clips per frame. A tube mask hides the same
    // pixels in every frame: their change from frame to frame is scored against the truth's (on
    // these 32-px canvases a digit moves every other frame, so `middle:2` may see no motion).
    let eval = |mask: &str| -> serde_json::Value {
        let stdout = ok(&[
            "eval",
            "--checkpoint",
            s(&f.video),
            "--data",
            "moving-mnist:frames=4,canvas=32,len=4",
            "--task",
            "inpaint",
            "--mask",
            mask,
            "--steps",
            "3",
            "--json",
        ]);
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let v = eval("middle:2");
    assert_eq!(v["count"], 4);
    assert!(v["psnr"].as_f64().unwrap() > 0.0);
    let v = eval("tube:0.5");
    let real = v["temporal_change_real"].as_f64().unwrap();
    let ratio = v["temporal_change_ratio"].as_f64().unwrap();
    assert!(real > 0.0 && real < 1.0, "{v}");
    assert!(ratio.is_finite() && ratio > 0.0, "{v}");
    assert!(
        (v["temporal_change"].as_f64().unwrap() / real - ratio).abs() < 1e-9,
        "{v}"
    );
}

#[test]
fn import_hf_fixture_round_trips() {
    let f = fixture();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dmae-models/tests/fixtures/vitmae-tiny-32");
    let out = f.root.join("imported.safetensors");
    let stdout = ok(&["import-hf", s(&dir), "--out", s(&out)]);
    let m = DiffMae::load(&out, &Device::Cpu).unwrap();
    assert_eq!(m.config().image_size, [32, 32]);
    assert!(
        stdout.contains(&format!("{} parameters", m.num_params())),
        "{stdout}"
    );
    // The imported MAE inpaints a grey 28-px file resized to its 32-px RGB input.
    let digit = f.root.join("d.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([200]))
        .save(&digit)
        .unwrap();
    ok(&[
        "sample",
        "--checkpoint",
        s(&out),
        "--input",
        s(&digit),
        "--out",
        s(&f.root.join("imp")),
    ]);
    let img = image::open(f.root.join("imp/d.png")).unwrap();
    assert_eq!((img.width(), img.height()), grid_size(1, 3, 32));
    // Bundled 28-px grey digits are fitted to it too (sample and eval).
    ok(&[
        "sample",
        "--checkpoint",
        s(&out),
        "--data",
        "bundled",
        "--count",
        "1",
        "--out",
        s(&f.root.join("imp")),
    ]);
    let img = image::open(&sampled(&f.root.join("imp"))[0]).unwrap();
    assert_eq!((img.width(), img.height()), grid_size(1, 3, 32));
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval",
            "--checkpoint",
            s(&out),
            "--task",
            "inpaint",
            "--limit",
            "4",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert!(v["psnr"].as_f64().unwrap() > 0.0, "{v}");
    fails(
        &["import-hf", "./no/such/dir", "--out", s(&out)],
        1,
        "no such directory",
    );
}

#[test]
fn bad_inputs_fail_with_one_error_line() {
    let f = fixture();
    let out = f.root.join("bad");
    let ck = s(&f.diffmae);
    fails(
        &[
            "sample",
            "--checkpoint",
            "/no/such.safetensors",
            "--data",
            "bundled",
            "--out",
            s(&out),
        ],
        1,
        "cannot load checkpoint",
    );
    let text = f.root.join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    fails(
        &[
            "sample",
            "--checkpoint",
            ck,
            "--input",
            s(&text),
            "--out",
            s(&out),
        ],
        1,
        "notes.png",
    );
    let wrong = f.root.join("wrong.png");
    image::GrayImage::new(10, 10).save(&wrong).unwrap();
    fails(
        &[
            "sample",
            "--checkpoint",
            ck,
            "--data",
            "bundled",
            "--mask",
            s(&wrong),
            "--out",
            s(&out),
        ],
        1,
        "10x10",
    );
    fails(
        &[
            "sample",
            "--checkpoint",
            ck,
            "--data",
            "bundled",
            "--sampler",
            "euler",
            "--out",
            s(&out),
        ],
        2,
        "euler",
    );
    fails(
        &[
            "sample",
            "--checkpoint",
            ck,
            "--data",
            "bundled",
            "--mask",
            "stripes",
            "--out",
            s(&out),
        ],
        2,
        "stripes",
    );
    fails(
        &["eval", "--checkpoint", ck, "--task", "classify"],
        1,
        "not a classifier",
    );
    fails(
        &[
            "sample",
            "--checkpoint",
            s(&f.mae),
            "--data",
            "bundled",
            "--sampler",
            "ddpm",
            "--out",
            s(&out),
        ],
        // A flag that cannot be used with this checkpoint: a usage error, like --mask stripes.
        2,
        "MAE checkpoint",
    );
    // Bad sampler flags are usage errors: a negative temperature, a guide that draws no
    // samples (an MAE), a weight without a guide.
    let inpaint = ["eval", "--checkpoint", s(&f.diffmae), "--task", "inpaint"];
    for (extra, needle) in [
        (&["--temperature=-1"][..], "temperature"),
        (&["--guide", s(&f.mae)], "--guide"),
        (&["--guidance", "2"], "--guide"),
    ] {
        fails(&[&inpaint[..], extra].concat(), 2, needle);
    }
}

/// Timing on the real MNIST preset (untrained weights: the cost, not the quality):
/// `cargo test --release -p dmae --test sample_eval -- --ignored --nocapture`.
#[test]
#[ignore = "timing run, about a minute on 2 cores"]
fn timing_mnist_preset_16_digits_ddim50() {
    let f = fixture();
    let ck = f.root.join("mnist-preset.safetensors");
    DiffMae::new(ModelConfig::mnist(), 0, &Device::Cpu)
        .unwrap()
        .save(&ck)
        .unwrap();
    for sampler in ["mae", "ddim"] {
        let t = std::time::Instant::now();
        let out = ok(&[
            "sample",
            "--checkpoint",
            s(&ck),
            "--data",
            "bundled",
            "--count",
            "16",
            "--sampler",
            sampler,
            "--steps",
            "50",
            "--out",
            s(&f.root.join("timing")),
        ]);
        eprintln!(
            "{sampler}: {:.1} s wall (process)\n{out}",
            t.elapsed().as_secs_f64()
        );
    }
}
