//! `dmae serve`: inpainting in the browser, watching the sampler work.
//!
//! One page (HTML, JavaScript and CSS compiled into the binary with `include_str!`, so it works
//! offline) over a small JSON API on [`tiny_http`] with plain threads (docs/serve.md says why):
//!
//! ```text
//! GET  /  /app.js  /style.css     the page
//! GET  /api/info                  the model, the gallery, the limits
//! GET  /api/input/ID.png          an input at the model's size (val-N: gallery, upload-N: uploads)
//! POST /api/upload   (image)      decoded, fitted to the model as `dmae sample` does -> {id, note}
//! POST /api/mask     (json)       center / random / block mask on the patch grid -> [bool]
//! POST /api/inpaint  (json)       a chunked text/event-stream: queued, start, step x N, done | error
//! ```
//!
//! The model is loaded once; one worker thread samples, fed by a bounded queue
//! ([`jobs::Jobs`]): a request that finds it full gets `503` and a "busy" message at once. Every
//! request body has a size limit, every bad input gets a JSON `{"error": ...}` that the page shows,
//! and no request can stop the server.

mod http;
mod inputs;
mod jobs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;
use tiny_http::{Method, Request, Server};

use crate::common::{parse_device, DataSpec};
use crate::sample::{load_model, SamplerArg};
use http::{Body, Reply};
use inputs::{Gallery, InputId, Uploads};
use jobs::{Job, Jobs, StepImages};

/// `dmae serve` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// DiffMAE or MAE checkpoint (safetensors with its config).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// TCP port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; the default is reachable from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Gallery: the validation split of a data SPEC (default: the checkpoint's run's `[train]
    /// data` from config.toml beside it, else the bundled digits, or Moving-MNIST for video).
    #[arg(long, value_name = "SPEC")]
    pub data: Option<DataSpec>,
    /// Sampling jobs that may wait behind the running one (0 to 256; each holds a request
    /// thread); more get a "busy" answer.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=256))]
    pub queue: u64,
    /// Largest upload in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub max_upload_mib: u64,
    /// How each step's x0 prediction travels to the page: raw 8-bit pixels (fastest to make)
    /// or PNG (smaller for large images on a slow link).
    #[arg(long, value_enum, default_value_t = StepImages::Raw)]
    pub step_images: StepImages,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Requests handled at once: a streaming answer holds its thread for the whole run, so there
/// is one per queued or running job and a few more for the page's other requests.
fn handler_threads(queue: usize) -> usize {
    queue + 1 + 4
}

/// Largest JSON request body (a mask of a 64 x 64 grid as `[true, false, ...]` is 25 KB).
const MAX_JSON_BYTES: usize = 1 << 20;

/// Everything a request handler reads.
struct State {
    model: jobs::ModelInfo,
    gallery: Gallery,
    uploads: Uploads,
    jobs: Jobs,
    max_upload: usize,
}

/// Runs `dmae serve` until the process is stopped.
pub fn run(args: Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model = Arc::new(load_model(&args.checkpoint, &device)?);
    let config = model.config().clone();
    let gallery = Gallery::open(args.data.as_ref(), &args.checkpoint, &config, &device)?;
    let max_upload = usize::try_from(args.max_upload_mib.saturating_mul(1 << 20))
        .unwrap_or(usize::MAX)
        .max(1);
    let addr = SocketAddr::new(args.host, args.port);
    let server = Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        .map(Arc::new)?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("the server is not on a TCP address")?;
    let info = jobs::ModelInfo::new(&args.checkpoint, &config, &device);
    let state = Arc::new(State {
        jobs: Jobs::start(Arc::clone(&model), args.queue as usize, args.step_images)?,
        uploads: Uploads::new(config.clone(), device.clone()),
        model: info,
        gallery,
        max_upload,
    });
    println!(
        "dmae serve: {} ({}), gallery: {} validation samples of {}",
        args.checkpoint.display(),
        state.model.summary(),
        state.gallery.len(),
        state.gallery.name()
    );
    // The line tests and scripts wait for; stdout is a pipe there, so flush it.
    println!("listening on http://{bound}/ (Ctrl-C stops)");
    use std::io::Write;
    std::io::stdout().flush().ok();

    let threads: Vec<_> = (0..handler_threads(args.queue as usize))
        .map(|i| {
            let (server, state) = (Arc::clone(&server), Arc::clone(&state));
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || loop {
                    match server.recv() {
                        Ok(request) => handle(request, &state),
                        Err(e) => eprintln!("warning: accepting a request failed: {e}"),
                    }
                })
                .context("cannot start a request thread")
        })
        .collect::<Result<_>>()?;
    for t in threads {
        // The handlers loop forever; a panic in one (a bug) leaves the others serving.
        let _ = t.join();
    }
    Ok(())
}

/// Answers one request; whatever goes wrong becomes an error reply, never a stop.
fn handle(mut request: Request, state: &State) {
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let method = request.method().clone();
    let reply = match (&method, path.as_str()) {
        (Method::Get, "/" | "/index.html") => Reply::asset(INDEX_HTML, "text/html; charset=utf-8"),
        (Method::Get, "/app.js") => Reply::asset(APP_JS, "text/javascript; charset=utf-8"),
        (Method::Get, "/style.css") => Reply::asset(STYLE_CSS, "text/css; charset=utf-8"),
        (Method::Get, "/api/info") => Reply::json(&info(state)),
        (Method::Get, p) if p.starts_with("/api/input/") => input_png(state, p),
        (Method::Post, "/api/upload") => match http::read_body(&mut request, state.max_upload) {
            Ok(bytes) => upload(state, &bytes),
            Err(e) => e,
        },
        (Method::Post, "/api/mask") => match http::read_json(&mut request, MAX_JSON_BYTES) {
            Ok(req) => mask(state, req),
            Err(e) => e,
        },
        (Method::Post, "/api/inpaint") => match http::read_json(&mut request, MAX_JSON_BYTES) {
            Ok(req) => inpaint(state, req),
            Err(e) => e,
        },
        (_, "/" | "/index.html" | "/app.js" | "/style.css" | "/api/info") => {
            Reply::error(405, format!("{method} {path}: use GET"))
        }
        (_, "/api/upload" | "/api/mask" | "/api/inpaint") => {
            Reply::error(405, format!("{method} {path}: use POST"))
        }
        _ => Reply::error(404, format!("no such page: {path}")),
    };
    match reply.body {
        Body::Stream(events) => http::stream_events(request, events),
        _ => http::respond(request, reply),
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn info(state: &State) -> serde_json::Value {
    serde_json::json!({
        "model": state.model,
        "gallery": { "name": state.gallery.name(), "count": state.gallery.len() },
        "limits": {
            "upload_bytes": state.max_upload,
            "queue": state.jobs.capacity(),
            "max_upload_pixels": inputs::MAX_UPLOAD_PIXELS,
        },
    })
}

fn input_png(state: &State, path: &str) -> Reply {
    let id = path
        .strip_prefix("/api/input/")
        .and_then(|s| s.strip_suffix(".png"))
        .unwrap_or("");
    let result = InputId::parse(id).and_then(|id| {
        let image = match id {
            InputId::Val(i) => state.gallery.get(i)?,
            InputId::Upload(i) => state.uploads.get(i)?,
        };
        inputs::strip_png(&image)
    });
    match result {
        Ok(png) => Reply::png(png),
        Err(e) => Reply::error(404, format!("{e:#}")),
    }
}

fn upload(state: &State, bytes: &[u8]) -> Reply {
    match state.uploads.add(bytes) {
        Ok(added) => Reply::json(&added),
        // Bad images are the client's; the message says what was wrong with them.
        Err(e) => Reply::error(422, format!("{e:#}")),
    }
}

/// `POST /api/mask`: `{mode: center|random|block, ratio, seed}`.
#[derive(Deserialize)]
struct MaskRequest {
    mode: String,
    ratio: f64,
    #[serde(default)]
    seed: u64,
}

fn mask(state: &State, req: MaskRequest) -> Reply {
    match inputs::strategy_mask(&state.model.config, &req.mode, req.ratio, req.seed) {
        Ok(mask) => Reply::json(&serde_json::json!({ "mask": mask })),
        Err(e) => Reply::error(400, format!("{e:#}")),
    }
}

/// `POST /api/inpaint`: the input, the patch-grid mask (`rows x cols`, `true` = hidden; a tube
/// for video), the sampler and the seed.
#[derive(Deserialize)]
struct InpaintRequest {
    input: String,
    mask: Vec<bool>,
    sampler: String,
    #[serde(default = "default_steps")]
    steps: usize,
    #[serde(default)]
    eta: f64,
    /// Noise temperature ([`Inpainting::with_temperature`](dmae_models::Inpainting::with_temperature)).
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default)]
    seed: u64,
}

fn default_steps() -> usize {
    50
}

fn default_temperature() -> f64 {
    1.0
}

fn inpaint(state: &State, req: InpaintRequest) -> Reply {
    let job = (|| -> Result<Job> {
        let input = match InputId::parse(&req.input)? {
            InputId::Val(i) => state.gallery.get(i)?,
            InputId::Upload(i) => state.uploads.get(i)?,
        };
        let sampler =
            <SamplerArg as clap::ValueEnum>::from_str(&req.sampler, true).map_err(|_| {
                anyhow::anyhow!("sampler: expected ddim, ddpm or mae, got {:?}", req.sampler)
            })?;
        anyhow::ensure!(
            req.eta.is_finite() && req.eta >= 0.0,
            "eta: expected a number >= 0, got {}",
            req.eta
        );
        Job::new(
            &state.model.config,
            input,
            &req.mask,
            sampler.kind(req.steps, req.eta),
            req.temperature,
            req.seed,
        )
    })();
    match job {
        Ok(job) => match state.jobs.submit(job) {
            Ok(events) => Reply::stream(events),
            Err(busy) => Reply::error(503, busy.to_string()),
        },
        Err(e) => Reply::error(400, format!("{e:#}")),
    }
}
