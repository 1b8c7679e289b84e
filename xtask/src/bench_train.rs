//! `cargo xtask bench train`: the real pre-training step (mask, noise, encoder, decoder, x0 loss,
//! backward, fused AdamW) timed after a warm-up, optionally beside the PyTorch reference
//! (`../shared/reference/diffmae_torch.py`) run with the matching arguments in the same command.
//!
//! FLOPs are the matrix products only, counted from the config (`flops_per_image`): per image a
//! forward costs `2·m·n·k` per `(m, k) @ (k, n)` product, and training costs three forwards (the
//! backward computes the input and the weight gradient of every product). Element-wise ops,
//! norms and softmax are left out, as in the usual MFU convention.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use dmae_core::optim::MasterWeights;
use dmae_core::{AdamW, AdamWConfig, DataParallel, Param};
use dmae_data::{bundled_mnist, Dataset, Split};
use dmae_diffusion::RngKey;
use dmae_models::{DecoderKind, DiffMae, ModelConfig, Pretraining};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model preset (mnist, tiny, small, base, large, huge).
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Device: cpu or cuda[:i] (cuda needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, or bf16 (bf16 weights and activations, f32 master weights in AdamW).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// CPU threads (rayon, gemm and candle's pool); default all cores. A list (`--threads 1,2`)
    /// runs the whole command once per count, each in its own process, and ends with a table of
    /// every count's ratios.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
    /// Also run the PyTorch reference with the same arguments and print the ratio.
    #[arg(long)]
    torch: bool,
    /// The reference script (default: `../shared/reference/diffmae_torch.py` next to the workspace).
    #[arg(long)]
    torch_script: Option<PathBuf>,
    /// Python interpreter with torch (default: $DMAE_TORCH_PYTHON, /tmp/torchref/bin/python3, python3).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// Print the time spent in forward, backward and AdamW per step (an extra device sync each).
    #[arg(long)]
    phases: bool,
}

/// Results of one measured run.
struct Measured {
    img_per_s: f64,
    step_ms_median: f64,
    step_ms_p90: f64,
    loss: f32,
    phases_ms: Option<[f64; 3]>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    for &n in &args.threads {
        dmae_core::check_threads(n)?;
    }
    if args.threads.len() > 1 {
        return run_per_thread_count(&args.threads);
    }
    // Before any tensor op: thread count and candle's pool spin limit (see dmae_core::configure_threads).
    let threads = dmae_core::configure_threads(args.threads.first().copied());
    let dev = crate::device(&args.device)?;
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("--dtype: expected f32 or bf16, got {other:?}"),
    };
    if dtype == DType::BF16 && dev.is_cpu() {
        bail!("--dtype bf16: dmae-core's CPU kernels are f32/f64 only; use --dtype f32 on the CPU");
    }
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be positive");
    }
    let cfg = ModelConfig::preset(&args.model)?;
    let flops = flops_per_image(&cfg, 0.75);
    let ours = measure(&args, &cfg, &dev, dtype, threads)?;
    let rss = peak_rss_kib();
    let torch = if args.torch {
        // A failing reference run is reported, not fatal: our numbers are still worth printing.
        run_torch(&args, &cfg, threads).unwrap_or_else(|e| {
            println!("--torch: the PyTorch reference did not give a result: {e:#}");
            None
        })
    } else {
        None
    };
    // Our sampling, timed as the reference times its own (same images, steps, warm-up).
    let sample_s = match &torch {
        Some(t) if t.sample_imgs > 0 && t.sample_steps > 0 => {
            let model = DiffMae::new(cfg.clone(), 0, &dev)?;
            Some(crate::bench_sample::time_inpaint(
                &model,
                t.sample_imgs as usize,
                t.sample_steps as usize,
                &dev,
            )?)
        }
        _ => None,
    };

    let gflops = flops * ours.img_per_s / 1e9;
    if args.json {
        println!(
            "{{\"model\":\"{}\",\"device\":\"{}\",\"dtype\":\"{}\",\"batch\":{},\"steps\":{},\"threads\":{threads},\"img_per_s\":{:.1},\"step_ms_median\":{:.2},\"step_ms_p90\":{:.2},\"loss\":{},\"peak_rss_mib\":{},\"flops_per_image\":{flops:.0},\"gflop_per_s\":{gflops:.2},\"torch_img_per_s\":{},\"ratio\":{},\"sample_s\":{},\"torch_sample_s\":{},\"torch_peak_rss_mib\":{}}}",
            args.model,
            args.device,
            args.dtype,
            args.batch,
            args.steps,
            ours.img_per_s,
            ours.step_ms_median,
            ours.step_ms_p90,
            ours.loss,
            rss.map_or("null".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            torch.as_ref().map_or("null".into(), |t| format!("{:.1}", t.img_per_s)),
            torch.as_ref().map_or("null".into(), |t| format!("{:.3}", ours.img_per_s / t.img_per_s)),
            sample_s.map_or("null".into(), |s| format!("{s:.3}")),
            torch.as_ref().map_or("null".into(), |t| format!("{:.3}", t.sample_s)),
            torch.as_ref().and_then(|t| t.peak_rss_kib).map_or("null".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
        return Ok(());
    }
    println!(
        "train step: preset {} ({:?} decoder), {} images/step, {}, {}, {threads} threads, {} warm-up + {} timed steps",
        args.model, cfg.decoder.kind, args.batch, args.device, args.dtype, args.warmup, args.steps
    );
    println!(
        "counted matmul FLOPs: {:.3} GFLOP per training image (fwd + bwd)",
        flops / 1e9
    );
    println!();
    println!("| impl | img/s | step ms (median) | step ms (p90) | peak RSS MiB | GFLOP/s | loss |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| diffmae (candle) | {:.1} | {:.1} | {:.1} | {} | {gflops:.1} | {:.4} |",
        ours.img_per_s,
        ours.step_ms_median,
        ours.step_ms_p90,
        rss.map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
        ours.loss
    );
    if let Some(t) = &torch {
        println!(
            "| PyTorch reference | {:.1} | {:.1} | - | {} | {:.1} | {:.4} |",
            t.img_per_s,
            t.step_ms,
            t.peak_rss_kib
                .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            flops * t.img_per_s / 1e9,
            t.loss
        );
        println!();
        println!("ours / PyTorch: {:.2}x img/s", ours.img_per_s / t.img_per_s);
        if let Some(s) = sample_s {
            println!(
                "sampling {} images x {} DDIM steps (encoder included): ours {s:.3} s, PyTorch {:.3} s: {:.2}x faster",
                t.sample_imgs,
                t.sample_steps,
                t.sample_s,
                t.sample_s / s
            );
        }
    }
    if let Some([f, b, o]) = ours.phases_ms {
        println!();
        if f.is_nan() {
            println!(
                "median per step: forward + backward {b:.1} ms (in each shard), AdamW {o:.1} ms"
            );
        } else {
            println!("median per step: forward {f:.1} ms, backward {b:.1} ms, AdamW {o:.1} ms");
        }
    }
    Ok(())
}

/// A batch of training images: bundled MNIST digits for 28-px one-channel presets, else uniform
/// noise of the preset's shape (the step's cost does not depend on the pixel values).
pub(crate) fn images(cfg: &ModelConfig, batch: usize, step: usize, dev: &Device) -> Result<Tensor> {
    let dims = cfg.input_dims();
    if dims == [1, 28, 28] {
        let mnist = bundled_mnist(Split::Train)?;
        let mut data = Vec::with_capacity(batch * 784);
        for i in 0..batch {
            data.extend_from_slice(mnist.get((step * batch + i) % mnist.len())?.data());
        }
        return Ok(Tensor::from_vec(data, (batch, 1, 28, 28), dev)?);
    }
    let mut shape = vec![batch];
    shape.extend(dims);
    Ok(Tensor::rand(0f32, 1.0, shape, dev)?)
}

fn measure(
    args: &TrainArgs,
    cfg: &ModelConfig,
    dev: &Device,
    dtype: DType,
    threads: usize,
) -> Result<Measured> {
    let model = DiffMae::new_with_dtype(cfg.clone(), 0, dev, dtype)?;
    let pre = Pretraining::for_config(cfg)?;
    let shards = DataParallel::for_device(dev, threads, args.batch)?;
    // bf16 training keeps f32 master weights (dmae_core::optim::MasterWeights): the optimiser
    // updates them from f32 copies of the bf16 gradients, the bf16 weights follow.
    let masters = if dtype == DType::F32 {
        None
    } else {
        let work: Vec<Var> = model.named_params().iter().map(|p| p.var.clone()).collect();
        Some(MasterWeights::from_work(&work)?)
    };
    let params: Vec<Param> = match &masters {
        None => model.optimizer_params(0.05),
        Some(m) => model
            .named_params()
            .iter()
            .zip(m.masters())
            .map(|(p, master)| Param::new(master, if p.decays() { 0.05 } else { 0.0 }))
            .collect(),
    };
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    // A few distinct batches, cycled, so data loading stays out of the timing.
    let batches = (0..4)
        .map(|i| {
            images(cfg, args.batch, i, dev)?
                .to_dtype(dtype)
                .map_err(Into::into)
        })
        .collect::<Result<Vec<_>>>()?;

    let mut step_ms = Vec::with_capacity(args.steps);
    let mut phases = Vec::new();
    let mut loss = f32::NAN;
    for step in 0..args.warmup + args.steps {
        let images = &batches[step % batches.len()];
        let t0 = Instant::now();
        let key = RngKey::new(0, step as u64);
        // With one shard, --phases times forward and backward apart (a sync between them); a
        // sharded step runs both inside each shard, so only their sum is timed.
        let (step_loss, t1, mut grads) = if args.phases && shards.shards() == 1 {
            let out = pre.step(&model, images, key)?;
            dev.synchronize()?;
            let t1 = Instant::now();
            (out.loss.detach(), Some(t1), out.loss.backward()?)
        } else {
            let (loss, grads) = pre.backward(&model, images, key, &shards)?;
            (loss, None, grads)
        };
        if args.phases {
            dev.synchronize()?;
        }
        let t2 = Instant::now();
        if let Some(m) = &masters {
            m.to_masters(&mut grads)?;
        }
        opt.step(&grads)?;
        if let Some(m) = &masters {
            m.refresh_work()?;
        }
        dev.synchronize()?;
        let t3 = Instant::now();
        if step >= args.warmup {
            step_ms.push((t3 - t0).as_secs_f64() * 1e3);
            phases.push([
                t1.map_or(f64::NAN, |t1| (t1 - t0).as_secs_f64() * 1e3),
                (t2 - t1.unwrap_or(t0)).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
            ]);
        }
        if step + 1 == args.warmup + args.steps {
            loss = step_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        }
    }
    let total_s: f64 = step_ms.iter().sum::<f64>() / 1e3;
    let phases_ms = args.phases.then(|| {
        let col = |i: usize| median(&phases.iter().map(|p| p[i]).collect::<Vec<_>>());
        [col(0), col(1), col(2)]
    });
    Ok(Measured {
        img_per_s: (args.batch * args.steps) as f64 / total_s,
        step_ms_median: median(&step_ms),
        step_ms_p90: percentile(&step_ms, 0.9),
        loss,
        phases_ms,
    })
}

/// `--threads 1,2,..`: this command again for each count (its own process, so that thread pools
/// and peak memory are its own), each printing its JSON line, then one table of all counts.
fn run_per_thread_count(counts: &[usize]) -> Result<()> {
    // Our own arguments without --threads/--json, then each count's.
    let mut base = Vec::new();
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--threads" => {
                argv.next();
            }
            "--json" => {}
            _ if a.starts_with("--threads=") => {}
            _ => base.push(a),
        }
    }
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut rows = Vec::new();
    for &n in counts {
        let out = Command::new(&exe)
            .args(&base)
            .args(["--threads", &n.to_string(), "--json"])
            .output()
            .with_context(|| format!("running {} with --threads {n}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "--threads {n} failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .with_context(|| format!("no JSON line from --threads {n}:\n{stdout}"))?;
        println!("{line}");
        rows.push((n, line));
    }
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
    let show = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    println!();
    println!("| threads | ours img/s | PyTorch img/s | ours / PyTorch | ours sampling s | PyTorch sampling s | sampling speed-up | peak RSS ours / PyTorch MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, v) in &rows {
        let (s, ts) = (num(v, "sample_s"), num(v, "torch_sample_s"));
        println!(
            "| {n} | {} | {} | {}x | {} | {} | {}x | {} / {} |",
            show(num(v, "img_per_s"), 1),
            show(num(v, "torch_img_per_s"), 1),
            show(num(v, "ratio"), 2),
            show(s, 3),
            show(ts, 3),
            show(s.zip(ts).map(|(s, t)| t / s), 2),
            show(num(v, "peak_rss_mib"), 0),
            show(num(v, "torch_peak_rss_mib"), 0),
        );
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Peak resident set size of this process (`VmHWM`), in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Matrix-product FLOPs of one training image (forward + backward = 3 forwards), from the config,
/// with `mask_ratio` of the patches masked (the encoder sees the rest plus the cls token).
///
/// Per pre-norm block over `l` tokens of width `d` (MLP hidden `h`):
/// self-attention `2·l·d·3d + 2·l·d·d` (qkv, proj) `+ 4·l²·d` (q·kᵀ, p·v), MLP `4·l·d·h`;
/// a cross-attention block attending from `lq` tokens to `lk` context tokens of width `dc`:
/// `4·lq·d²` (q, proj) `+ 4·lk·dc·d` (kv) `+ 4·lq·lk·d`. Plus the patch embeddings, the
/// prediction head and the time-embedding MLP.
pub fn flops_per_image(cfg: &ModelConfig, mask_ratio: f64) -> f64 {
    let l = cfg.num_patches() as f64;
    let p = cfg.patch_dim() as f64;
    let masked = (l * mask_ratio).round();
    let lv = l - masked;
    let (e, d) = (&cfg.encoder, &cfg.decoder);
    let de = e.dim as f64;
    let le = lv + 1.0;
    let self_attn = |l: f64, d: f64| 8.0 * l * d * d + 4.0 * l * l * d;
    let mlp = |l: f64, d: f64, ratio: f64| 4.0 * l * d * (d * ratio).round();
    let mut fwd = 2.0 * lv * p * de;
    fwd += e.depth as f64 * (self_attn(le, de) + mlp(le, de, e.mlp_ratio));
    let dd = d.dim as f64;
    let block = match d.kind {
        DecoderKind::Joint => {
            let lj = l + 1.0;
            fwd += 2.0 * le * de * dd; // decoder.embed
            self_attn(lj, dd) + mlp(lj, dd, d.mlp_ratio)
        }
        kind => {
            let cross = 4.0 * masked * dd * dd + 4.0 * le * de * dd + 4.0 * masked * le * dd;
            let sa = if kind == DecoderKind::CrossSelf {
                self_attn(masked, dd)
            } else {
                0.0
            };
            sa + cross + mlp(masked, dd, d.mlp_ratio)
        }
    };
    fwd += d.depth as f64 * block;
    let lout = if d.kind == DecoderKind::Joint {
        l + 1.0
    } else {
        masked
    };
    fwd += 2.0 * masked * p * dd + 2.0 * lout * dd * p; // patch_embed of x_t, pred
    if d.time_conditioning {
        fwd += 2.0 * (d.time_embed_dim as f64 * dd + dd * dd);
    }
    3.0 * fwd
}

/// What the reference printed.
struct TorchResult {
    img_per_s: f64,
    step_ms: f64,
    loss: f64,
    sample_s: f64,
    sample_imgs: u64,
    sample_steps: u64,
    peak_rss_kib: Option<u64>,
}

/// The reference's network for our model: `(enc_dim, enc_depth, enc_heads, dec_dim, dec_depth,
/// dec_heads)` (its `PRESETS` tuple, registered under our preset's name before its `main` runs, so
/// presets the script does not list, such as `mnist-small`, run the same network), image side and
/// channels. None for what the reference cannot build: clips, non-square images, MLP ratios other
/// than its 4, or a decoder other than its cross-self one.
fn torch_network(cfg: &ModelConfig) -> Option<([usize; 6], usize, usize)> {
    let (e, d) = (&cfg.encoder, &cfg.decoder);
    let square = cfg.image_size[0] == cfg.image_size[1];
    let ratio4 = e.mlp_ratio == 4.0 && d.mlp_ratio == 4.0;
    (cfg.num_frames == 1 && square && ratio4 && d.kind == DecoderKind::CrossSelf).then_some((
        [e.dim, e.depth, e.heads, d.dim, d.depth, d.heads],
        cfg.image_size[0],
        cfg.in_channels,
    ))
}

fn find_python(args: &TrainArgs) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match &args.torch_python {
        Some(p) => vec![p.clone()],
        None => std::env::var_os("DMAE_TORCH_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from("/tmp/torchref/bin/python3"),
                PathBuf::from("python3"),
            ])
            .collect(),
    };
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn run_torch(args: &TrainArgs, cfg: &ModelConfig, threads: usize) -> Result<Option<TorchResult>> {
    let script = match &args.torch_script {
        Some(p) => p.clone(),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/diffmae_torch.py")
        }
    };
    let script = script.canonicalize().unwrap_or(script);
    if !script.is_file() {
        println!(
            "--torch: no reference script at {} (pass --torch-script PATH); skipping PyTorch",
            script.display()
        );
        return Ok(None);
    }
    let Some((widths, img, chans)) = torch_network(cfg) else {
        println!(
            "--torch: the reference cannot build {:?} (clips, non-square images, an MLP ratio \
             other than 4 or a decoder other than cross-self); skipping PyTorch",
            args.model
        );
        return Ok(None);
    };
    let patch = cfg.patch_size;
    let Some(python) = find_python(args) else {
        println!(
            "--torch: no Python with torch found (tried --torch-python, $DMAE_TORCH_PYTHON, \
             /tmp/torchref/bin/python3, python3); skipping PyTorch. Install it with:\n    \
             python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch numpy"
        );
        return Ok(None);
    };
    let device = if args.device.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    let script_args: Vec<String> = [
        "--preset",
        &args.model,
        "--img",
        &img.to_string(),
        "--patch",
        &patch.to_string(),
        "--chans",
        &chans.to_string(),
        "--device",
        device,
        "--dtype",
        &args.dtype,
        "--batch",
        &args.batch.to_string(),
        "--iters",
        &args.steps.to_string(),
        "--threads",
        &threads.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Run the script through runpy so the same interpreter can report its peak RSS afterwards.
    // It registers our network in the script's PRESETS (run_path returns the module's globals;
    // PRESETS is the dict its main reads) and then calls main.
    let wrapper = "import json, resource, runpy, sys\n\
        script, name, widths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n\
        sys.argv = [script] + sys.argv[4:]\n\
        g = runpy.run_path(script, run_name='reference')\n\
        g['PRESETS'][name] = tuple(widths)\n\
        g['main']()\n\
        print(json.dumps({'maxrss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))";
    println!(
        "running {} {} {} (PRESETS[{:?}] = {widths:?})",
        python.display(),
        script.display(),
        script_args.join(" "),
        args.model
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(wrapper)
        .arg(&script)
        .arg(&args.model)
        .arg(format!("{widths:?}"))
        .args(&script_args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed ({}):\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut result: Option<TorchResult> = None;
    let mut rss = None;
    for line in stdout.lines() {
        // The script prints Python's `NaN` (peak memory on the CPU), which is not JSON.
        let line = line.replace("NaN", "null");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(k) = v.get("maxrss_kib").and_then(|x| x.as_u64()) {
            rss = Some(k);
        }
        if let Some(ips) = v.get("train_img_per_s").and_then(|x| x.as_f64()) {
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            result = Some(TorchResult {
                img_per_s: ips,
                step_ms: num("step_ms"),
                loss: num("loss"),
                sample_s: num("sample_s"),
                sample_imgs: v.get("sample_imgs").and_then(|x| x.as_u64()).unwrap_or(0),
                sample_steps: v.get("sample_steps").and_then(|x| x.as_u64()).unwrap_or(0),
                peak_rss_kib: None,
            });
        }
    }
    let mut r = result
        .with_context(|| format!("no train_img_per_s in the reference's output:\n{stdout}"))?;
    r.peak_rss_kib = rss;
    Ok(Some(r))
}
