//! `cargo xtask bench serve`: inpainting through `dmae serve` (HTTP, every step's x̂0 streamed)
//! against `dmae sample` on the same image with the same mask, sampler and steps.
//!
//! Both sides run the release binary and do the same work `--repeats` times in one process: `dmae
//! sample --input DIR --batch-size 1` over `--repeats` copies of one image (its printed sampling
//! time), and as many `POST /api/inpaint` requests one after another on the same image uploaded
//! to the server, timed by the client from sending the request to the end of the event stream
//! (so the figure includes HTTP, the per-step images and the result pictures). The image is the
//! server's own first validation sample at the model's size, fetched as PNG and used on both
//! sides. `--rounds` alternate the two, each round in fresh processes (no warm-up on either side).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use dmae_models::{DiffMae, ModelConfig};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Checkpoint to serve and sample (default: an untrained model of --model; the time does
    /// not depend on the weights).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Model preset for the default checkpoint.
    #[arg(long, default_value = "mnist")]
    model: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Runs on each side.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Alternating blocks of `--repeats` runs on each side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Center mask area fraction.
    #[arg(long, default_value_t = 0.25)]
    center: f64,
    /// How the server sends step images (`dmae serve --step-images`).
    #[arg(long, default_value = "raw")]
    step_images: String,
}

pub fn run(args: ServeArgs) -> Result<()> {
    ensure!(args.repeats > 0, "--repeats must be positive");
    let dmae = crate::recipe::build_dmae()?;
    let dir = std::env::temp_dir().join(format!("dmae-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let checkpoint = match &args.checkpoint {
        Some(p) => p.clone(),
        None => {
            let p = dir.join(format!("{}.safetensors", args.model));
            DiffMae::new(ModelConfig::preset(&args.model)?, 0, &Device::Cpu)?.save(&p)?;
            p
        }
    };

    // The server's first validation sample at the model's size is the image of both sides.
    let png = {
        let server = Server::start(&dmae, &checkpoint, &args.step_images)?;
        let (status, png) = http(server.port, "GET", "/api/input/val-0.png", "", b"")?;
        ensure!(status == 200, "GET /api/input/val-0.png: {status}");
        png
    };
    // `dmae sample` reads copies of it, one per batch.
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    for i in 0..args.repeats {
        std::fs::write(inputs.join(format!("img{i:03}.png")), &png)?;
    }
    // Alternating blocks, so that a change in the machine's load falls on both sides; each
    // block is a fresh process whose first run is cold, as `dmae sample`'s.
    // Per round: (client, server sampling, dmae sample) seconds.
    let mut rounds: Vec<[f64; 3]> = Vec::with_capacity(args.rounds);
    let mut note = String::new();
    for _ in 0..args.rounds {
        let server = Server::start(&dmae, &checkpoint, &args.step_images)?;
        let (job, n) = prepare(server.port, &png, &args)?;
        note = n;
        let mut round = [0.0; 3];
        for _ in 0..args.repeats {
            let (client, sampling) = serve_once(server.port, &job, args.steps)?;
            round[0] += client;
            round[1] += sampling;
        }
        drop(server);
        round[2] = sample_once(&dmae, &checkpoint, &inputs, &dir, &args)?;
        rounds.push(round);
    }
    let total = |k: usize| rounds.iter().map(|r| r[k]).sum::<f64>();
    let (client_s, sampling_s, sample_s) = (total(0), total(1), total(2));
    // On a shared machine the load changes from round to round; the median of the rounds'
    // ratios is the figure that a burst in one round does not move.
    let median_ratio = |k: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[k] / r[2]).collect();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    let _ = std::fs::remove_dir_all(&dir);

    let per = |s: f64| s * 1e3 / (args.repeats * args.rounds) as f64;
    println!(
        "DDIM {} steps (eta 0), center:{} mask, validation image 0 ({}), one image per run, {} \
         rounds of {} runs each, checkpoint {}",
        args.steps,
        args.center,
        note,
        args.rounds,
        args.repeats,
        checkpoint.display()
    );
    println!();
    println!("| path | ms per image | vs dmae sample (all runs) | (median of rounds) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `dmae sample` (its printed sampling time) | {:.1} | 1.00 | 1.00 |",
        per(sample_s)
    );
    println!(
        "| `dmae serve`, client: request to end of stream | {:.1} | {:.3} | {:.3} |",
        per(client_s),
        client_s / sample_s,
        median_ratio(0)
    );
    println!(
        "| `dmae serve`, its sampling time (steps only) | {:.1} | {:.3} | {:.3} |",
        per(sampling_s),
        sampling_s / sample_s,
        median_ratio(1)
    );
    Ok(())
}

/// Uploads `png` and asks for the center mask: the body of an inpainting request, and the
/// server's note on the upload.
fn prepare(port: u16, png: &[u8], args: &ServeArgs) -> Result<(String, String)> {
    let (status, added) = http(port, "POST", "/api/upload", "image/png", png)?;
    ensure!(
        status == 200,
        "upload: {status} {}",
        String::from_utf8_lossy(&added)
    );
    let added: serde_json::Value = serde_json::from_slice(&added)?;
    let input = added["id"].as_str().context("upload: no id")?;
    let ratio = serde_json::json!({ "mode": "center", "ratio": args.center }).to_string();
    let (status, mask) = http(
        port,
        "POST",
        "/api/mask",
        "application/json",
        ratio.as_bytes(),
    )?;
    ensure!(status == 200, "mask: {status}");
    let mask: serde_json::Value = serde_json::from_slice(&mask)?;
    let job = serde_json::json!({
        "input": input, "mask": mask["mask"], "sampler": "ddim", "steps": args.steps, "eta": 0.0,
        "seed": 0,
    });
    let note = added["note"].as_str().unwrap_or("?").to_string();
    Ok((job.to_string(), note))
}

/// One inpainting request: seconds from sending it to the end of its stream, and the server's
/// own sampling seconds.
fn serve_once(port: u16, job: &str, steps: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    let (status, body) = http(
        port,
        "POST",
        "/api/inpaint",
        "application/json",
        job.as_bytes(),
    )?;
    let client = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&body);
    ensure!(status == 200, "inpaint: {status} {text}");
    let seen = text.matches("event: step").count();
    ensure!(seen == steps, "inpaint: {seen} step events of {steps}");
    let done = text
        .split("event: done\ndata: ")
        .nth(1)
        .and_then(|d| d.lines().next())
        .context("inpaint: no done event")?;
    let done: serde_json::Value = serde_json::from_str(done)?;
    let sampling = done["sampling_ms"].as_f64().context("no sampling_ms")? / 1e3;
    Ok((client, sampling))
}

/// `dmae sample` over the images of `inputs`, one per batch: its printed sampling seconds.
fn sample_once(
    dmae: &Path,
    checkpoint: &Path,
    inputs: &Path,
    dir: &Path,
    args: &ServeArgs,
) -> Result<f64> {
    let out = Command::new(dmae)
        .arg("sample")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--input")
        .arg(inputs)
        .args([
            "--batch-size",
            "1",
            "--sampler",
            "ddim",
            "--eta",
            "0",
            "--seed",
            "0",
        ])
        .args(["--steps", &args.steps.to_string()])
        .args(["--mask", &format!("center:{}", args.center)])
        .arg("--out")
        .arg(dir.join("samples"))
        .output()
        .context("running dmae sample")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dmae sample failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "sampled N input(s) in 450 ms (90.0 ms each): ..." or "... in 1.2 s (...)": the unit
    // follows the number (dmae::sample's `duration`).
    stdout
        .lines()
        .find_map(|l| {
            let mut words = l.strip_prefix("sampled ")?.split(" in ").nth(1)?.split(' ');
            let value: f64 = words.next()?.parse().ok()?;
            match words.next()? {
                "ms" => Some(value / 1e3),
                "s" => Some(value),
                _ => None,
            }
        })
        .with_context(|| {
            format!("no 'sampled ... in T ms|s' line in dmae sample's output:\n{stdout}")
        })
}

/// A running `dmae serve` on a free port, stopped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dmae: &Path, checkpoint: &Path, step_images: &str) -> Result<Self> {
        let mut child = Command::new(dmae)
            .arg("serve")
            .arg("--checkpoint")
            .arg(checkpoint)
            .args(["--port", "0", "--step-images", step_images])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start dmae serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let Some(line) = lines.next().transpose()? else {
                let _ = child.kill();
                bail!("dmae serve exited before it printed its address");
            };
            if let Some(rest) = line.strip_prefix("listening on http://127.0.0.1:") {
                break rest.split('/').next().unwrap_or("").parse()?;
            }
        };
        // Keep draining the log (one line per run) so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`): the status and the de-chunked body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut rest = &raw[split + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    if !head.contains("transfer-encoding: chunked") {
        return Ok((status, rest.to_vec()));
    }
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(rest.get(eol + 2..eol + 2 + n).context("truncated chunk")?);
        rest = rest.get(eol + 2 + n + 2..).context("truncated chunk")?;
    }
    Ok((status, body))
}
