//! End-to-end tests of `dmae train` and `dmae finetune`: the real binary on the bundled MNIST
//! digits (and Moving-MNIST clips made from them) with a small model (encoder 64x2, decoder
//! 32x1) so that the file runs in about a minute on 2 cores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::Device;
use dmae_models::{Classifier, DiffMae};

const SMALL: &str = "[model]
encoder = { dim = 64, depth = 2, heads = 2 }
decoder = { dim = 32, depth = 1, heads = 2 }

[train]
batch-size = 32
lr = 0.02
threads = 2
";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmae-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_config(dir: &Path) -> PathBuf {
    let p = dir.join("small.toml");
    std::fs::write(&p, SMALL).unwrap();
    p
}

fn dmae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(args)
        .output()
        .expect("run dmae")
}

fn ok(args: &[&str]) -> Output {
    let out = dmae(args);
    assert!(
        out.status.success(),
        "dmae {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rows(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    rows(dir)
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One 150-step run shared by the tests that need a trained checkpoint.
fn trained() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = tmp("trained");
        let cfg = small_config(&root);
        let out = root.join("run");
        ok(&[
            "train",
            "--config",
            s(&cfg),
            "--steps",
            "150",
            "--log-every",
            "10",
            "--save-every",
            "100",
            "--out",
            s(&out),
        ]);
        out
    })
}

/// Width and height from a PNG's IHDR chunk.
fn image_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[1..4], b"PNG", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn short_train_loss_falls_and_writes_the_run_directory() {
    let out = trained();
    for f in [
        "checkpoint.safetensors",
        "optimizer.safetensors",
        "config.toml",
        "metrics.jsonl",
        "loss.svg",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The plot carries its title, axis labels and ticks (issue 18: the PNG had none).
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    for label in [">Loss</text>", ">step</text>", ">loss</text>"] {
        assert!(svg.contains(label), "loss.svg lacks {label:?}");
    }
    // The inpainting grid of the last step: 3 rows (masked, sample, truth) of 8 digits.
    let grid = out.join("samples").join("step_000150.png");
    let (w, h) = image_size(&grid);
    assert!(
        w > 8 * 28 && h > 3 * 28 && w > h,
        "{}: {w}x{h}",
        grid.display()
    );
    let l = losses(out);
    assert_eq!(l.len(), 15);
    assert_eq!(l.last().unwrap().0, 150);
    let (first, last) = (l[0].1, l[l.len() - 1].1);
    // Measured: 0.95 (mean of steps 1-10) -> 0.29 (MSE in the default [-1, 1] units, 0.073 in
    // [0, 1] pixels; with [0, 1] targets it was 0.70 -> 0.09); < 0.4x is a real margin (an
    // untrained decoder stays near the first value).
    assert!(last < first * 0.4, "loss did not fall: {first} -> {last}");
    let m = DiffMae::load(out.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(m.config().encoder.dim, 64);
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        cfg.contains("[train]") && cfg.contains("steps = 150"),
        "{cfg}"
    );
}

#[test]
fn short_video_train_on_moving_mnist_loss_falls() {
    let root = tmp("video");
    let cfg = small_config(&root);
    let out = root.join("run");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--model",
        "moving-mnist",
        "--data",
        "moving-mnist:frames=8,canvas=32",
        "--steps",
        "60",
        "--batch-size",
        "16",
        "--sample-every",
        "0",
        "--out",
        s(&out),
    ]);
    let l = losses(&out);
    assert_eq!(l.last().unwrap().0, 60);
    let (first, last) = (l[0].1, l[l.len() - 1].1);
    // Measured: 0.48 (mean of steps 1-10) -> 0.09 with 90% tube masks of real moving digits.
    assert!(
        last < first * 0.4,
        "video loss did not fall: {first} -> {last}"
    );
    let m = DiffMae::load(out.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    assert_eq!((m.config().num_frames, m.config().tubelet), (8, 2));
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_losses_exactly() {
    let root = tmp("resume");
    let cfg = small_config(&root);
    let (a, b) = (root.join("a"), root.join("b"));
    let common = [
        "--config",
        s(&cfg),
        "--steps",
        "20",
        "--log-every",
        "1",
        "--save-every",
        "5",
    ];
    ok(&[&["train"], &common[..], &["--out", s(&a)]].concat());
    ok(&[
        &["train"],
        &common[..],
        &["--out", s(&b), "--stop-at", "10"],
    ]
    .concat());
    assert_eq!(losses(&b).len(), 10);
    ok(&["train", "--resume", "--out", s(&b)]);
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 20);
    // Bit-identical: same data order, same mask/noise draws, same optimiser state.
    assert_eq!(la, lb);
    let ma = DiffMae::load(a.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let mb = DiffMae::load(b.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    for (p, q) in ma.named_params().iter().zip(mb.named_params()) {
        let d = (p.var.as_tensor() - q.var.as_tensor())
            .unwrap()
            .abs()
            .unwrap();
        let d = d
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{} differs", p.name);
    }
    // A finished run cannot be resumed further without more steps.
    let e = dmae(&["train", "--resume", "--out", s(&b)]);
    assert_eq!(e.status.code(), Some(1));
}

/// `--init` starts a new run (fresh optimiser, step 0, its own data and masks) from another
/// run's weights: its first loss is the trained model's, far below a fresh model's. A checkpoint
/// of another model is a usage error naming `--init`, and no run directory is left behind.
#[test]
fn init_starts_a_new_run_from_another_runs_weights() {
    let root = tmp("init");
    let cfg = small_config(&root);
    let ckpt = trained().join("checkpoint.safetensors");
    let common = [
        "train",
        "--config",
        s(&cfg),
        "--steps",
        "3",
        "--log-every",
        "1",
    ];
    let (from, fresh) = (root.join("from"), root.join("fresh"));
    ok(&[&common[..], &["--init", s(&ckpt), "--out", s(&from)]].concat());
    ok(&[&common[..], &["--out", s(&fresh)]].concat());
    let (lf, l0) = (losses(&from), losses(&fresh));
    assert_eq!(
        lf.first().map(|r| r.0),
        Some(1),
        "a new run counts from step 1"
    );
    let end = losses(trained()).last().unwrap().1;
    assert!(
        lf[0].1 < 0.6 * l0[0].1 && lf[0].1 < 1.5 * end,
        "first loss from the trained weights {} vs fresh {} (trained run ended at {end})",
        lf[0].1,
        l0[0].1
    );
    let other = root.join("other");
    let e = dmae(&[
        "train",
        "--model",
        "mnist",
        "--steps",
        "3",
        "--init",
        s(&ckpt),
        "--out",
        s(&other),
    ]);
    assert_eq!(e.status.code(), Some(2));
    let line = one_error_line(&e);
    assert!(
        line.contains("--init") && line.contains("differs"),
        "{line}"
    );
    assert!(!other.exists(), "a refused --init leaves no run directory");
}

/// `--threads` sizes the thread pool (it used to fail whenever it differed from the core count),
/// and the batch split it implies (one shard of 32 vs two of 16) leaves the losses the same up
/// to float rounding.
#[test]
fn threads_flag_works_and_the_split_does_not_change_the_losses() {
    let root = tmp("threads");
    let cfg = small_config(&root);
    let run = |threads: &str| {
        let out = root.join(format!("t{threads}"));
        let args = [
            "train",
            "--config",
            s(&cfg),
            "--steps",
            "4",
            "--log-every",
            "1",
        ];
        ok(&[&args[..], &["--threads", threads, "--out", s(&out)]].concat());
        losses(&out)
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one.len(), 4);
    for ((s1, l1), (s2, l2)) in one.iter().zip(&two) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-4 * l1.abs(),
            "step {s1}: {l1} vs {l2}"
        );
    }
}

#[test]
fn killing_the_process_mid_checkpoint_never_leaves_a_corrupt_file() {
    let root = tmp("kill");
    let cfg = small_config(&root);
    let out = root.join("run");
    let mut resumed = false;
    for (i, ms) in [900u64, 1300, 1700, 2100, 2500].iter().enumerate() {
        let mut args: Vec<String> = [
            "train",
            "--steps",
            "2000",
            "--save-every",
            "1",
            "--log-every",
            "1",
            "--out",
            s(&out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if out.join("optimizer.safetensors").is_file() {
            args.push("--resume".into());
            resumed = true;
        } else {
            let _ = std::fs::remove_dir_all(&out);
            args.extend(["--config".to_string(), s(&cfg).to_string()]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_dmae"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Stagger the kill inside a step/checkpoint cycle differently each time.
        std::thread::sleep(Duration::from_millis(ms + 37 * i as u64));
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        let ckpt = out.join("checkpoint.safetensors");
        if ckpt.exists() {
            DiffMae::load(&ckpt, &Device::Cpu)
                .unwrap_or_else(|e| panic!("kill {i}: corrupt checkpoint: {e}"));
        }
    }
    assert!(
        resumed,
        "no checkpoint was written before the kills: raise the sleep times"
    );
    // The state left by the last kill resumes: run to one step past the last logged one.
    let last = losses(&out).last().map_or(0, |r| r.0);
    let stop = (last + 1).to_string();
    ok(&["train", "--resume", "--out", s(&out), "--stop-at", &stop]);
    assert_eq!(losses(&out).last().unwrap().0, last + 1);
    let steps: Vec<u64> = losses(&out).iter().map(|r| r.0).collect();
    assert!(
        steps.windows(2).all(|w| w[1] == w[0] + 1),
        "metrics rows repeat or skip: {steps:?}"
    );
}

fn one_error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {err:?}");
    assert!(lines[0].starts_with("error: "), "{err:?}");
    lines[0].to_string()
}

#[test]
fn bad_input_gives_usage_or_one_line_runtime_errors() {
    for args in [
        &["train", "--bogus"][..],
        &["train", "--steps", "0"],
        &["train", "--lr", "fast"],
        &["train", "--mask-ratio", "1.5"],
        &["train", "--steps", "5", "--epochs", "1"],
        &["finetune"],
        &["finetune", "--init", "none", "--drop-path", "2"],
    ] {
        assert_eq!(dmae(args).status.code(), Some(2), "{args:?}");
    }
    let root = tmp("bad");
    // Missing and corrupt checkpoints.
    let e = dmae(&["finetune", "--init", s(&root.join("missing.safetensors"))]);
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("missing.safetensors"));
    let good = std::fs::read(trained().join("checkpoint.safetensors")).unwrap();
    let cut = root.join("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let e = dmae(&["finetune", "--init", s(&cut)]);
    assert_eq!(e.status.code(), Some(1));
    one_error_line(&e);
    // Resuming a run whose state file was truncated.
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["config.toml", "checkpoint.safetensors"] {
        std::fs::copy(trained().join(f), run.join(f)).unwrap();
    }
    let state = std::fs::read(trained().join("optimizer.safetensors")).unwrap();
    std::fs::write(
        run.join("optimizer.safetensors"),
        &state[..state.len() - 100],
    )
    .unwrap();
    let e = dmae(&["train", "--resume", "--out", s(&run), "--steps", "200"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("optimizer.safetensors"));
    // Config files: unknown keys name the key and the file; bad values name the key.
    let cfg = root.join("c.toml");
    std::fs::write(&cfg, "[train]\nbatch-size = 8\nlearning-rate = 1\n").unwrap();
    let e = dmae(&["train", "--config", s(&cfg)]);
    assert_eq!(
        e.status.code(),
        Some(2),
        "a key the user typed is a usage error"
    );
    let line = one_error_line(&e);
    assert!(
        line.contains("learning-rate") && line.contains("c.toml"),
        "{line}"
    );
    std::fs::write(&cfg, "[model]\nencoder = { depth = 2, widht = 3 }\n").unwrap();
    let line = one_error_line(&dmae(&["train", "--config", s(&cfg)]));
    assert!(line.contains("model.encoder.widht"), "{line}");
    std::fs::write(&cfg, "[train]\nmask-ratio = 0\n").unwrap();
    let line = one_error_line(&dmae(&["train", "--config", s(&cfg)]));
    assert!(line.contains("mask-ratio"), "{line}");
    // An existing non-empty run directory is not overwritten.
    let e = dmae(&["train", "--out", s(trained()), "--steps", "1"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("--resume"));
    // bf16 needs CUDA.
    let e = dmae(&["train", "--dtype", "bf16", "--out", s(&root.join("bf16"))]);
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("CUDA"));
}

fn val_top1(dir: &Path) -> f64 {
    rows(dir).last().unwrap()["val_top1"]
        .as_f64()
        .expect("val_top1 in the last row")
}

#[test]
fn finetune_linear_probe_and_from_scratch_report_val_accuracy() {
    let root = tmp("finetune");
    let ckpt = trained().join("checkpoint.safetensors");
    let common = [
        "--steps",
        "60",
        "--batch-size",
        "32",
        "--log-every",
        "20",
        "--threads",
        "2",
    ];
    let (ft, lp, scratch) = (root.join("ft"), root.join("lp"), root.join("scratch"));
    ok(&[
        &["finetune", "--init", s(&ckpt)],
        &common[..],
        &["--out", s(&ft), "--eval-every", "30"],
    ]
    .concat());
    ok(&[
        &["finetune", "--init", s(&ckpt), "--linear-probe"],
        &common[..],
        &["--out", s(&lp)],
    ]
    .concat());
    ok(&[
        &["finetune", "--init", "none", "--model", "mnist"],
        &["--steps", "2", "--batch-size", "8", "--log-every", "1"][..],
        &["--out", s(&scratch)],
    ]
    .concat());
    for d in [&ft, &lp, &scratch] {
        for f in ["classifier.safetensors", "config.toml", "metrics.jsonl"] {
            assert!(d.join(f).is_file(), "{}: {f} missing", d.display());
        }
        let a = val_top1(d);
        assert!((0.0..=1.0).contains(&a), "{a}");
        let c = Classifier::load(d.join("classifier.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(c.num_classes(), 10);
    }
    // Eval at step 30 and at the end.
    assert_eq!(
        rows(&ft)
            .iter()
            .filter(|r| r.get("val_top1").is_some())
            .count(),
        2
    );
    // No accuracy threshold: 60 steps of this 64x2 encoder stay near chance (10%; 400 steps
    // reach ~39%, README "dmae finetune"). That fine-tuning and probing learn is checked by the
    // finetune unit tests on a fixed batch.
    // The probe trains only the head: the encoder is the pre-trained one, bit for bit.
    let pre = DiffMae::load(&ckpt, &Device::Cpu).unwrap();
    let probe = Classifier::load(lp.join("classifier.safetensors"), &Device::Cpu).unwrap();
    let w = |ps: &[dmae_models::NamedParam], n: &str| {
        ps.iter()
            .find(|p| p.name == n)
            .unwrap()
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let n = "encoder.blocks.1.mlp.fc1.weight";
    assert_eq!(w(pre.named_params(), n), w(probe.named_params(), n));
}

/// Starts a 5,000-step training run of the small config into `out` and returns once its first
/// step is logged, so its Ctrl-C handler is installed and a step is running.
fn start_long_run(cfg: &Path, out: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args([
            "train",
            "--config",
            s(cfg),
            "--steps",
            "5000",
            "--log-every",
            "1",
            "--save-every",
            "4000",
            "--out",
            s(out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !out.join("metrics.jsonl").is_file() || losses(out).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no step logged in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130_and_the_run_resumes() {
    let root = tmp("sigint");
    let cfg = small_config(&root);
    let out = root.join("run");
    let child = start_long_run(&cfg, &out);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(130));
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(
        err.contains("interrupted at step") && err.contains("--resume"),
        "{err}"
    );
    // The checkpoint of the interrupted step exists (long before --save-every) and loads.
    DiffMae::load(out.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let last = losses(&out).last().unwrap().0;
    let stop = (last + 2).to_string();
    ok(&["train", "--resume", "--out", s(&out), "--stop-at", &stop]);
    assert_eq!(losses(&out).last().unwrap().0, last + 2);
}

/// A model trained with a non-default noise schedule keeps it in its checkpoint, and `dmae
/// sample` uses it from the checkpoint alone (DDPM visits every one of its T steps).
#[test]
fn the_noise_schedule_of_training_travels_to_sampling() {
    let root = tmp("schedule");
    let cfg = small_config(&root);
    let out = root.join("run");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--noise-schedule",
        "cosine",
        "--timesteps",
        "40",
        "--rho",
        "2",
        "--steps",
        "2",
        "--sample-every",
        "0",
        "--out",
        s(&out),
    ]);
    let ckpt = out.join("checkpoint.safetensors");
    let m = DiffMae::load(&ckpt, &Device::Cpu).unwrap();
    let d = &m.config().diffusion;
    assert_eq!(
        (d.schedule, d.timesteps, d.rho),
        (dmae_models::ScheduleKind::Cosine, 40, 2.0)
    );
    let toml = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        toml.contains("[model.diffusion]") && toml.contains("schedule = \"cosine\""),
        "{toml}"
    );
    let samples = root.join("samples");
    let o = ok(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--data",
        "bundled",
        "--count",
        "2",
        "--sampler",
        "ddpm",
        "--trajectory",
        "--out",
        s(&samples),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("ddpm 40 steps"), "{stdout}");
    assert!(stdout.contains("t = [39,"), "{stdout}");
    // A bad value in the model's diffusion table is a usage error naming the field.
    std::fs::write(root.join("bad.toml"), "[model.diffusion]\ntimesteps = 0\n").unwrap();
    let e = dmae(&["train", "--config", s(&root.join("bad.toml"))]);
    assert_eq!(e.status.code(), Some(2));
    assert!(one_error_line(&e).contains("diffusion.timesteps"));
}

/// Issue 19, the command's half: values out of range, an empty import source, and an error
/// with `RUST_BACKTRACE` set are one line with exit 2 (or 1 for a missing file); a run that
/// fails before its first checkpoint leaves no directory behind to block the rerun.
#[test]
fn hostile_values_are_usage_errors_and_failed_runs_leave_nothing() {
    let root = tmp("hostile");
    let out = root.join("run");
    // Thread counts above dmae_core::MAX_THREADS used to spawn threads without end.
    let e = dmae(&["train", "--threads", "100000", "--out", s(&out)]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("1024"));
    for args in [
        &["train", "--device", "tpu"][..],
        &["train", "--model", "gigantic"],
        &["train", "--data", "imagenet:/x"],
        &["train", "--data", "moving-mnist:canvas=100000"],
    ] {
        let e = dmae(&[args, &["--out", s(&out)]].concat());
        assert_eq!(e.status.code(), Some(2), "{args:?}");
        one_error_line(&e);
        // Fresh and failed before a checkpoint: the directory it made is gone.
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    let e = dmae(&["import-hf", "", "--out", s(&root.join("m.safetensors"))]);
    assert_eq!(e.status.code(), Some(2));
    assert!(one_error_line(&e).contains("empty"));
    // candle puts a backtrace in its errors when RUST_BACKTRACE is set: still one line.
    let cut = root.join("cut.safetensors");
    std::fs::write(&cut, b"\x08\0\0\0\0\0\0\0{}").unwrap();
    let e = Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(["finetune", "--init", s(&cut), "--out", s(&out)])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(1));
    let line = one_error_line(&e);
    // Each cause once ("X: X" was common).
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "{line}");
    assert!(!out.exists());
}

/// Issue 19 case 6: a step whose gradient overflows is not applied, so the optimiser state on
/// disk stays finite and the last good checkpoint resumes (with --clip-grad bounding the
/// gradient that overflowed). A fresh run that fails before its first checkpoint is removed.
#[test]
fn a_diverging_step_is_not_applied_and_the_last_checkpoint_resumes() {
    let root = tmp("nan");
    let cfg = small_config(&root);
    let out = root.join("run");
    let args = |save: &str| {
        [
            "train",
            "--config",
            s(&cfg),
            "--lr",
            "1e3",
            "--steps",
            "50",
            "--log-every",
            "1",
            "--save-every",
            save,
            "--out",
            s(&out),
        ]
        .map(str::to_string)
    };
    let e = Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(args("1000"))
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("no checkpoint written yet"));
    assert!(!out.exists(), "a run without a checkpoint was left behind");
    let e = Command::new(env!("CARGO_BIN_EXE_dmae"))
        .args(args("1"))
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(1));
    let line = one_error_line(&e);
    assert!(line.contains("was not applied"), "{line}");
    let last = losses(&out).last().unwrap().0;
    assert!(
        line.contains(&format!("last good checkpoint: step {last} in")),
        "{line}"
    );
    // Every AdamW moment on disk is finite (343,294 were +inf before).
    let state =
        candle_core::safetensors::load(out.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in state {
        let sum = t
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(sum.is_finite(), "{name} holds non-finite values");
    }
    let stop = (last + 2).to_string();
    let common = ["train", "--resume", "--out", s(&out), "--lr", "1e-3"];
    ok(&[&common[..], &["--clip-grad", "1", "--stop-at", &stop]].concat());
    assert_eq!(losses(&out).last().unwrap().0, last + 2);
}

/// Issue 19 cases 7, 8 and 10: a run directory in use is refused naming the process; a lock
/// left by a dead process and the temporaries a killed process left are taken over and removed;
/// a resumed run refuses changed settings naming them.
#[test]
fn run_directories_are_locked_and_resume_keeps_the_run_settings() {
    let root = tmp("lock");
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for f in [
        "config.toml",
        "checkpoint.safetensors",
        "optimizer.safetensors",
        "metrics.jsonl",
    ] {
        std::fs::copy(trained().join(f), run.join(f)).unwrap();
    }
    let lock = run.join(".lock");
    {
        let held = std::fs::File::create(&lock).unwrap();
        held.try_lock().unwrap();
        std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        let e = dmae(&["train", "--resume", "--out", s(&run), "--steps", "200"]);
        assert_eq!(e.status.code(), Some(1));
        let line = one_error_line(&e);
        assert!(
            line.contains(&format!("in use by process {}", std::process::id())),
            "{line}"
        );
    }
    // A dead process's lock and temporaries.
    std::fs::write(&lock, "999999999\n").unwrap();
    let stale = run.join(".optimizer.safetensors.tmp-999999999");
    std::fs::write(&stale, b"half").unwrap();
    for (flag, value) in [
        ("--batch-size", "16"),
        ("--data", "mnist:/x"),
        ("--mae", ""),
    ] {
        let mut args = vec!["train", "--resume", "--out", s(&run), flag];
        if !value.is_empty() {
            args.push(value);
        }
        let e = dmae(&args);
        assert_eq!(e.status.code(), Some(2), "{flag}");
        let line = one_error_line(&e);
        assert!(
            line.contains(flag) && line.contains("resumed run keeps"),
            "{line}"
        );
    }
    ok(&[
        "train",
        "--resume",
        "--out",
        s(&run),
        "--steps",
        "200",
        "--stop-at",
        "151",
    ]);
    assert!(!stale.exists(), "the stale temporary was not removed");
    assert_eq!(losses(&run).last().unwrap().0, 151);
    // Another run's optimiser state is refused by name.
    let other = root.join("other");
    ok(&[
        "train",
        "--config",
        s(&small_config(&root)),
        "--batch-size",
        "16",
        "--steps",
        "1",
        "--sample-every",
        "0",
        "--out",
        s(&other),
    ]);
    std::fs::copy(
        other.join("optimizer.safetensors"),
        run.join("optimizer.safetensors"),
    )
    .unwrap();
    let e = dmae(&["train", "--resume", "--out", s(&run), "--steps", "200"]);
    assert_ne!(e.status.code(), Some(0));
    assert!(one_error_line(&e).contains("batch-size"));
}

/// Issue 19 case 5: a second Ctrl-C stops at once, but never leaves a temporary or a
/// checkpoint that does not resume: exit 130 when the step it stopped at is saved, else 3 with
/// the run's last consistent state (for a run without a checkpoint yet: no directory).
#[test]
fn a_second_ctrl_c_leaves_a_consistent_run_directory() {
    let root = tmp("sigint2");
    let cfg = small_config(&root);
    let out = root.join("run");
    let child = start_long_run(&cfg, &out);
    for _ in 0..2 {
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
    }
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    match done.status.code() {
        Some(130) => {
            assert!(err.contains("checkpoint saved"), "{err}");
            let names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.iter().all(|n| !n.contains(".tmp")),
                "temporaries left: {names:?}"
            );
            let last = losses(&out).last().unwrap().0;
            let stop = (last + 1).to_string();
            ok(&["train", "--resume", "--out", s(&out), "--stop-at", &stop]);
        }
        Some(3) => {
            assert!(err.contains("second Ctrl-C"), "{err}");
            assert!(!out.exists(), "an unsaved fresh run was left behind");
        }
        code => panic!("exit {code:?}: {err}"),
    }
}

/// DiffMAE + CLIP (the paper's second target): the pixel+clip loss falls on the bundled digits
/// with the committed tiny CLIP tower; the checkpoint keeps the choice and still inpaints and
/// fine-tunes; a missing or non-CLIP tower is refused with one line.
#[test]
fn pixels_and_clip_features_train_together() {
    let root = tmp("clip");
    let cfg = small_config(&root);
    let out = root.join("run");
    let tower =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dmae-models/tests/fixtures/clip-tiny-16");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--target",
        "pixels+clip",
        "--clip-model",
        s(&tower),
        "--clip-weight",
        "0.5",
        "--steps",
        "60",
        "--sample-every",
        "0",
        "--out",
        s(&out),
    ]);
    let l = losses(&out);
    let (first, last) = (l[0].1, l[l.len() - 1].1);
    // Measured 2026-12-02: 1.23 at step 10 -> 0.27 at step 60.
    assert!(
        last < first * 0.5,
        "pixel+clip loss did not fall: {first} -> {last}"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let m = DiffMae::load(&ckpt, &Device::Cpu).unwrap();
    let d = &m.config().diffusion;
    assert_eq!(d.target, dmae_models::Target::PixelsClip);
    let clip = d.clip.as_ref().unwrap();
    assert_eq!((clip.dim, clip.weight), (32, 0.5));
    assert!(m.decoder.clip_pred.is_some());
    // It resumes (its config.toml holds [model.diffusion.clip]) and keeps its target.
    ok(&["train", "--resume", "--out", s(&out), "--steps", "61"]);
    assert_eq!(losses(&out).last().unwrap().0, 61);
    let e = dmae(&[
        "train",
        "--resume",
        "--out",
        s(&out),
        "--steps",
        "62",
        "--target",
        "pixels",
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(one_error_line(&e).starts_with("error: --target: "));
    ok(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--data",
        "bundled",
        "--count",
        "2",
        "--steps",
        "5",
        "--out",
        s(&root.join("samples")),
    ]);
    ok(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--task",
        "inpaint",
        "--steps",
        "5",
        "--limit",
        "16",
    ]);
    ok(&[
        "finetune",
        "--init",
        s(&ckpt),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        s(&root.join("ft")),
    ]);
    let e = dmae(&["train", "--target", "clip", "--clip-model", "/no/such/clip"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(one_error_line(&e).contains("/no/such/clip"));
    let vitmae =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dmae-models/tests/fixtures/vitmae-tiny-32");
    let e = dmae(&[
        "train",
        "--target",
        "clip",
        "--clip-model",
        s(&vitmae),
        "--out",
        s(&root.join("x")),
    ]);
    assert!(
        one_error_line(&e).contains("not a CLIP model"),
        "{}",
        one_error_line(&e)
    );
    let e = dmae(&["train", "--target", "pixels+clip"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(one_error_line(&e).contains("--clip-model"));
}
