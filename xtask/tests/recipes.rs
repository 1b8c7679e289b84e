//! The evidence recipes end to end at a toy budget: `cargo xtask run recipes/*.toml --quick` with
//! every step count cut to a handful through `--set`, on the real bundled digits.
//!
//! These tests check the pipeline (every stage runs, every table is filled, the figures are
//! images, the classifier-feature metrics are computed on the real validation digits), never the
//! scientific outcome: that needs the full budgets (docs/results.md).
//!
//! They run the `dmae` binary next to the `xtask` binary of this build (`cargo test --workspace`
//! builds both); when it is missing it is built with `cargo build -p dmae` in the same profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn dmae_binary() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let dir = xtask.parent().expect("the xtask binary has a directory");
    let dmae = dir.join(format!("dmae{}", std::env::consts::EXE_SUFFIX));
    if !dmae.is_file() {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "dmae"])
            .current_dir(workspace_root());
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p dmae");
        assert!(status.success(), "cargo build -p dmae failed: {status}");
    }
    assert!(dmae.is_file(), "no dmae binary at {}", dmae.display());
    dmae
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmae-recipe-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `xtask run RECIPE --quick --set ...` into `out` and returns its stdout.
fn run_recipe(recipe: &str, set: &[(&str, &str)], out: &Path, dmae: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(workspace_root())
        .args(["run", recipe, "--quick", "--out"])
        .arg(out)
        .arg("--dmae")
        .arg(dmae);
    for (k, v) in set {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let o = cmd.output().expect("starting xtask");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "xtask run {recipe} failed ({}):\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn json(path: &Path) -> Map<String, Value> {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_slice(&text) {
        Ok(Value::Object(m)) => m,
        other => panic!("{}: not a JSON object: {other:?}", path.display()),
    }
}

fn num(m: &Map<String, Value>, key: &str, what: &str) -> f64 {
    m.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{what}: no number {key:?} in {m:?}"))
}

fn results(out: &Path, prefix: &str) -> Vec<(String, Map<String, Value>)> {
    let mut v: Vec<_> = std::fs::read_dir(out.join("results"))
        .expect("results/ written")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                json(&p),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn mnist_evidence_recipe_runs_end_to_end_on_real_digits() {
    let dmae = dmae_binary();
    let out = tmp("mnist");
    let limit = 12;
    let limit_s = limit.to_string();
    let budget = [
        ("pretrain_steps", "6"),
        ("finetune_steps", "4"),
        ("probe_steps", "3"),
        ("classifier_steps", "20"),
        ("lever_steps", "3"),
        ("eval_limit", limit_s.as_str()),
        ("ddpm_limit", "2"),
    ];
    let stdout = run_recipe("recipes/mnist-evidence.toml", &budget, &out, &dmae);
    assert!(stdout.contains("142 stages"), "{stdout}");

    // Every table of the evidence is in the summary, filled by the eval stages.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for title in [
        "Fixed digit classifier",
        "Recognition: val top-1",
        "Inpainting (center:0.25 mask), masked region",
        "Inpainting (random:0.75 mask), masked region",
        "Levers (center:0.25 mask, DDIM 50, 3 pre-training steps, seed 0)",
        "Levers (random:0.75 mask, DDIM 50, 3 pre-training steps, seed 0)",
        "Sampler (center:0.25 mask, DiffMAE seed 0, 6 pre-training steps)",
    ] {
        assert!(summary.contains(title), "no table {title:?} in\n{summary}");
    }
    for row in [
        "finetune-diffmae",
        "finetune-mae",
        "finetune-scratch",
        "probe-diffmae",
        "probe-mae",
        "DiffMAE, DDIM 50, temperature 0",
        "DiffMAE, DDIM 50, temperature 0.5",
        "DiffMAE, DDIM 50, autoguidance 1.5, temperature 0",
    ] {
        assert!(summary.contains(&format!("| {row} |")), "no row {row}");
    }

    // Recognition: 10 classifiers, each evaluated on all 2,000 real validation digits.
    let recog = results(&out, "eval-");
    assert_eq!(recog.len(), 16, "{:?}", recog.iter().map(|r| &r.0));
    for (name, r) in &recog {
        assert_eq!(num(r, "count", name), 2000.0, "{name}");
        assert_eq!(r["data"], "bundled", "{name}");
        let top1 = num(r, "top1", name);
        assert!((0.0..=1.0).contains(&top1), "{name}: top1 {top1}");
    }

    // Inpainting: the classifier-feature metrics exist for every sampler and mask, computed on
    // the bundled validation digits.
    let inpaint = results(&out, "inpaint-");
    assert_eq!(inpaint.len(), 88, "{:?}", inpaint.iter().map(|r| &r.0));
    let real_acc = num(&inpaint[0].1, "classifier_accuracy_real", &inpaint[0].0);
    for (name, r) in &inpaint {
        let ddpm = name.contains("ddpm");
        assert_eq!(num(r, "count", name), if ddpm { 2.0 } else { limit as f64 });
        assert_eq!(r["data"], "bundled", "{name}");
        for key in ["classifier_accuracy", "classifier_accuracy_real", "ssim"] {
            let v = num(r, key, name);
            assert!((0.0..=1.0).contains(&v), "{name}: {key} {v}");
        }
        for key in ["frechet_distance", "psnr", "sharpness_ratio"] {
            let v = num(r, key, name);
            assert!(v.is_finite() && v > 0.0, "{name}: {key} {v}");
        }
        if !ddpm {
            // The same classifier on the same real digits, whatever the inpainting model.
            assert_eq!(num(r, "classifier_accuracy_real", name), real_acc, "{name}");
        }
    }
    // ... and that number is the fixed classifier's accuracy on the first `limit` real
    // validation digits, as `dmae eval --task classify` measures it independently.
    let o = Command::new(&dmae)
        .arg("eval")
        .arg("--checkpoint")
        .arg(out.join("digit-classifier/classifier.safetensors"))
        .args(["--task", "classify", "--limit", &limit_s, "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let direct: Map<String, Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(num(&direct, "top1", "classify"), real_acc);

    // The figures are real PNGs: the trajectory strips and MAE's reconstructions.
    for dir in [
        "figures/diffmae",
        "figures/mae",
        "figures/compare-center",
        "figures/compare-random",
        "figures/compare-center-guided-t0",
        "figures/compare-random-guided-t0",
    ] {
        let pngs: Vec<PathBuf> = std::fs::read_dir(out.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        assert!(!pngs.is_empty(), "no PNG in {dir}");
        for p in pngs {
            let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(img.width() > 28 && img.height() >= 28, "{}", p.display());
        }
    }
    // 8 digits as rows of masked | MAE | DiffMAE draws | truth, 3x scaled, labelled: three draws,
    // or one with the guided sampler at temperature 0.
    for (sheet, draws) in [
        ("compare-center", 3),
        ("compare-random", 3),
        ("compare-center-guided-t0", 1),
        ("compare-random-guided-t0", 1),
    ] {
        let p = out.join("figures").join(sheet).join("sheet.png");
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let panels = 3 + draws;
        assert_eq!(
            img.width(),
            panels * 84 + (panels + 1) * 2,
            "{}",
            p.display()
        );
        assert!(img.height() > 8 * 84 + 9 * 2, "{}", p.display());
    }
    assert!(
        std::fs::read_dir(out.join("figures/diffmae"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("trajectory")),
        "no trajectory figure"
    );

    // A second run resumes: every stage is skipped (but the 6 figure stages, which have no
    // `creates`) and the summary is the same tables.
    let again = run_recipe("recipes/mnist-evidence.toml", &budget, &out, &dmae);
    let skipped = again.matches("(done, skipped)").count();
    assert!(skipped >= 136, "only {skipped} stages skipped:\n{again}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn moving_mnist_recipe_runs_end_to_end_on_real_digit_clips() {
    let dmae = dmae_binary();
    let out = tmp("video");
    run_recipe(
        "recipes/moving-mnist.toml",
        &[
            ("still_steps", "2"),
            ("pretrain_steps", "3"),
            ("finetune_steps", "2"),
            ("eval_every", "1"),
            ("eval_limit", "2"),
            ("classify_limit", "32"),
            ("val_limit", "32"),
        ],
        &out,
        &dmae,
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for title in [
        "Video classification",
        "Video inpainting (tube:0.9 mask)",
        "Video inpainting (future:4 mask)",
    ] {
        assert!(summary.contains(title), "no table {title:?} in\n{summary}");
    }
    // DiffMAE, MAE and scratch encoders, 3 seeds each.
    let evals = results(&out, "eval-");
    assert_eq!(evals.len(), 9);
    for (name, r) in evals {
        assert_eq!(num(&r, "count", &name), 32.0, "{name}");
    }
    let inpaint = results(&out, "inpaint-");
    assert_eq!(inpaint.len(), 12);
    for (name, r) in &inpaint {
        assert_eq!(num(r, "count", name), 2.0, "{name}");
        let psnr = num(r, "psnr", name);
        assert!(psnr.is_finite() && psnr > 0.0, "{name}: psnr {psnr}");
    }
    // One animated sheet per mask with the clip's 8 frames.
    for dir in ["figures/compare-tube", "figures/compare-future"] {
        let g = out.join(dir).join("sheet.gif");
        use image::AnimationDecoder;
        let f = std::io::BufReader::new(
            std::fs::File::open(&g).unwrap_or_else(|e| panic!("{}: {e}", g.display())),
        );
        let frames = image::codecs::gif::GifDecoder::new(f)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap_or_else(|e| panic!("{}: {e}", g.display()));
        assert_eq!(frames.len(), 8, "{}", g.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}
