//! Sampling jobs of `dmae serve`: a bounded queue in front of one worker thread that holds the
//! model, and the events a run sends back (its x̂0 at every visited step, then the pictures).
//!
//! One worker, because a run already uses every core (rayon inside candle and
//! `DataParallel`): two runs side by side would each take twice as long. Jobs are counted as
//! they are submitted, so a full queue is known at once and answered "busy" rather than left
//! waiting. Events go through a small bounded channel per run: a client that reads slowly slows
//! its own run down instead of filling memory, one that stops reading for [`STALL_LIMIT`] or
//! goes away stops its run at the next step.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use base64::Engine;
use candle_core::{DType, Device, Tensor};
use dmae_diffusion::{MaskStrategy, PatchGrid, PatchMask, RngKey, SamplerKind};
use dmae_models::{DiffMae, InpaintStep, Inpainted, Inpainting, Masking, ModelConfig};
use serde::Serialize;

use super::inputs::{png_bytes, strip_png};
use crate::images;
use crate::sample::{describe, spaced, TRAJECTORY_COLUMNS};
use dmae::label::{label_columns, timestep_labels};

/// Events buffered per run before the sampler waits for the client.
const EVENT_BUFFER: usize = 32;
/// How long a run waits for a client that does not read before it stops.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// How each step's prediction is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepImages {
    /// 8-bit pixels, frames x height x width x channels, base64.
    Raw,
    /// A PNG (frames side by side), base64.
    Png,
}

/// The model as the page needs to know it.
#[derive(Serialize)]
pub struct ModelInfo {
    #[serde(skip)]
    pub config: ModelConfig,
    checkpoint: String,
    kind: &'static str,
    image_size: [usize; 2],
    channels: usize,
    patch_size: usize,
    grid: [usize; 2],
    frames: usize,
    tubelet: usize,
    timesteps: usize,
    video: bool,
    diffusion: bool,
    parameters: u64,
    device: String,
}

impl ModelInfo {
    /// What the page shows of the model loaded from `checkpoint`.
    pub fn new(checkpoint: &Path, config: &ModelConfig, device: &Device) -> Self {
        let (rows, cols) = config.grid();
        Self {
            config: config.clone(),
            checkpoint: checkpoint
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: if config.is_diffusion() {
                "DiffMAE"
            } else {
                "MAE"
            },
            image_size: config.image_size,
            channels: config.in_channels,
            patch_size: config.patch_size,
            grid: [rows, cols],
            frames: config.num_frames,
            tubelet: config.tubelet,
            timesteps: config.diffusion.timesteps,
            video: config.is_video(),
            diffusion: config.is_diffusion(),
            parameters: config.param_count(),
            device: if device.is_cpu() { "cpu" } else { "cuda" }.into(),
        }
    }

    /// One line, e.g. `DiffMAE 6.5M parameters, 1x28x28, patch 4 (7x7), cpu`.
    pub fn summary(&self) -> String {
        let [h, w] = self.image_size;
        let frames = if self.video {
            format!("{} frames of ", self.frames)
        } else {
            String::new()
        };
        format!(
            "{} {} parameters, {frames}{}x{h}x{w}, patch {} ({}x{}), {}",
            self.kind,
            count(self.parameters),
            self.channels,
            self.patch_size,
            self.grid[0],
            self.grid[1],
            self.device
        )
    }
}

/// `86.4M`, `41.2K`, `960`: a parameter count as people say it.
fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// One inpainting request, checked against the model.
pub struct Job {
    input: Tensor,
    inpainting: Inpainting,
    seed: u64,
    masked: usize,
}

impl Job {
    /// Inpainting `input` (`(C, [T,] H, W)` at the model's size) where `mask` (`rows x cols`,
    /// `true` = hidden; the same in every frame of a clip) hides patches, with a sampler of
    /// `kind` and noise from `seed`.
    pub fn new(
        config: &ModelConfig,
        input: Tensor,
        mask: &[bool],
        kind: SamplerKind,
        temperature: f64,
        seed: u64,
    ) -> Result<Self> {
        let (rows, cols) = config.grid();
        ensure!(
            mask.len() == rows * cols,
            "mask: expected {} values ({rows} rows x {cols} columns of patches), got {}",
            rows * cols,
            mask.len()
        );
        let masked = mask.iter().filter(|&&m| m).count();
        ensure!(masked > 0, "mask: hide at least one patch");
        ensure!(
            masked < mask.len(),
            "mask: leave at least one patch visible (the encoder sees only visible patches)"
        );
        let fixed = PatchMask::from_patches(PatchGrid::new(rows, cols), mask.to_vec())?;
        let masking = Masking::spatial(config, MaskStrategy::Fixed(fixed));
        let inpainting = Inpainting::new(config, masking, kind)?.with_temperature(temperature)?;
        Ok(Self {
            input,
            inpainting,
            seed,
            masked,
        })
    }
}

/// What a run tells its client, in order: `queued`, `start`, `step` per visited timestep, and
/// `done` or `error`.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Accepted; `ahead` jobs run or wait before it.
    Queued { ahead: usize },
    /// The run starts.
    Start {
        sampler: String,
        steps: usize,
        timesteps: Vec<usize>,
        masked_patches: usize,
    },
    /// `x̂0` of step `index` (at timestep `t`), pasted into the visible pixels; `ms` is the
    /// sampler's time for this step (the first includes the encoder pass).
    Step {
        index: usize,
        t: usize,
        ms: f64,
        image: StepImage,
    },
    /// The run is over: the pictures `dmae sample` would write, as PNG (base64).
    Done {
        /// Encoder + sampler, as `dmae sample` times it.
        sampling_ms: f64,
        /// Encoding and sending the steps.
        streaming_ms: f64,
        /// The whole job, pictures included.
        total_ms: f64,
        /// `[masked input | sample | ground truth]` (a row per frame for clips).
        result_png: String,
        /// `x̂0` at up to 10 evenly spaced visited steps, labelled with `t`.
        trajectory_png: String,
        trajectory_t: Vec<usize>,
    },
    /// The run failed (the message says why).
    Error { message: String },
}

impl Event {
    /// The event as a server-sent event: `event: NAME` and one `data:` line of JSON.
    pub fn to_sse(&self) -> String {
        let name = match self {
            Event::Queued { .. } => "queued",
            Event::Start { .. } => "start",
            Event::Step { .. } => "step",
            Event::Done { .. } => "done",
            Event::Error { .. } => "error",
        };
        let data = serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::json!({ "event": "error", "message": e.to_string() }).to_string()
        });
        format!("event: {name}\ndata: {data}\n\n")
    }
}

/// One step's image on the wire.
#[derive(Serialize)]
pub struct StepImage {
    format: &'static str,
    frames: usize,
    channels: usize,
    height: usize,
    width: usize,
    /// base64 of the pixels (`raw`: frames x height x width x channels bytes) or of the PNG.
    data: String,
}

impl StepImage {
    /// Image 0 of `images` (`(N, C, H, W)` or `(N, C, T, H, W)`, in [0, 1]).
    fn new(images: &Tensor, format: StepImages) -> Result<Self> {
        let one = images.get(0)?;
        let frames = match one.rank() {
            3 => one.unsqueeze(1)?,
            _ => one.clone(),
        };
        let (channels, t, height, width) = frames.dims4()?;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let (format, data) = match format {
            StepImages::Png => ("png", b64(&strip_png(&one)?)),
            StepImages::Raw => {
                let pixels = frames
                    .permute((1, 2, 3, 0))?
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let bytes: Vec<u8> = pixels
                    .iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                ("raw", b64(&bytes))
            }
        };
        Ok(Self {
            format,
            frames: t,
            channels,
            height,
            width,
            data,
        })
    }
}

/// The queue and its worker.
pub struct Jobs {
    queue: SyncSender<(Job, SyncSender<Event>)>,
    capacity: usize,
    /// Jobs submitted and not finished (waiting or running).
    pending: Arc<AtomicUsize>,
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy {
    pending: usize,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "busy: {} sampling job(s) already running or waiting; try again in a moment",
            self.pending
        )
    }
}

impl Jobs {
    /// Starts the worker for `model`; up to `capacity` jobs wait behind the running one.
    pub fn start(model: Arc<DiffMae>, capacity: usize, format: StepImages) -> Result<Self> {
        // Admission is decided by `pending` (see `submit`); the channel holds every admitted job,
        // so a send never fails. A channel of `capacity` alone would be a rendezvous channel at
        // `--queue 0`, refusing a job to an idle server whenever the worker thread is not parked
        // in `recv` at that instant (seen under load: a spurious "busy").
        let (queue, jobs) = sync_channel::<(Job, SyncSender<Event>)>(capacity + 1);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                for (job, events) in jobs {
                    // A bug in a run must not take the server down: report it and go on.
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run(&model, job, &events, format)
                    }));
                    let message = match outcome {
                        Ok(Ok(())) | Ok(Err(Stop::Gone)) => None,
                        Ok(Err(Stop::Failed(e))) => Some(format!("{e:#}")),
                        Err(_) => Some("the run panicked (a bug; see the server's log)".into()),
                    };
                    if let Some(message) = message {
                        eprintln!("inpaint failed: {message}");
                        let _ = send(&events, Event::Error { message });
                    }
                    done.fetch_sub(1, Ordering::SeqCst);
                }
            })?;
        Ok(Self {
            queue,
            capacity,
            pending,
        })
    }

    /// Jobs that may wait behind the running one.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `job`; its events arrive on the returned receiver (dropping it stops the run).
    pub fn submit(&self, job: Job) -> std::result::Result<Receiver<Event>, Busy> {
        let (tx, rx) = sync_channel(EVENT_BUFFER);
        // One job runs and `capacity` wait; each caller gets its own `ahead`, so concurrent
        // submits cannot both take the last place.
        let ahead = self.pending.fetch_add(1, Ordering::SeqCst);
        let refuse = |pending: &AtomicUsize| Busy {
            pending: pending.fetch_sub(1, Ordering::SeqCst) - 1,
        };
        if ahead > self.capacity {
            return Err(refuse(&self.pending));
        }
        // Room for it: the buffer is empty.
        let _ = tx.try_send(Event::Queued { ahead });
        match self.queue.try_send((job, tx)) {
            Ok(()) => Ok(rx),
            // Full cannot happen (the channel holds every admitted job); Disconnected means
            // the worker thread is gone.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Err(refuse(&self.pending))
            }
        }
    }
}

/// Why a run ended early.
enum Stop {
    /// The client went away or stopped reading.
    Gone,
    /// The run failed.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// Sends `event`, waiting up to [`STALL_LIMIT`] for room.
fn send(events: &SyncSender<Event>, mut event: Event) -> std::result::Result<(), Stop> {
    let deadline = Instant::now() + STALL_LIMIT;
    loop {
        match events.try_send(event) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(Stop::Gone),
            Err(TrySendError::Full(e)) if Instant::now() < deadline => {
                event = e;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Full(_)) => return Err(Stop::Gone),
        }
    }
}

/// Runs one job, sending its events.
fn run(
    model: &DiffMae,
    job: Job,
    events: &SyncSender<Event>,
    format: StepImages,
) -> std::result::Result<(), Stop> {
    let start = Instant::now();
    let config = model.config();
    let sampler = job.inpainting.sampler();
    let timesteps = sampler.timesteps().to_vec();
    let steps = timesteps.len();
    send(
        events,
        Event::Start {
            sampler: describe(&job.inpainting),
            steps,
            timesteps: timesteps.clone(),
            masked_patches: job.masked,
        },
    )?;
    let key = RngKey::new(job.seed, 0);
    let images = job.input.unsqueeze(0)?;
    let mask = job
        .inpainting
        .mask
        .sample(config, 1, key, images.device())?;
    let keep = spaced(steps, TRAJECTORY_COLUMNS);
    let mut kept: Vec<(usize, Tensor)> = Vec::with_capacity(keep.len());
    let (mut sampling, mut streaming) = (Duration::ZERO, Duration::ZERO);
    let mut gone = false;
    let mut last = Instant::now();
    let mut on_step = |s: &InpaintStep| -> dmae_models::Result<()> {
        let computed = Instant::now();
        let ms = (computed - last).as_secs_f64() * 1e3;
        sampling += computed - last;
        if keep.contains(&s.index) {
            kept.push((s.t, s.images.clone()));
        }
        let image =
            StepImage::new(&s.images, format).map_err(|e| dmae_models::Error::InvalidArgument {
                arg: "step image",
                reason: format!("{e:#}"),
            })?;
        let event = Event::Step {
            index: s.index,
            t: s.t,
            ms,
            image,
        };
        if send(events, event).is_err() {
            gone = true;
            return Err(dmae_models::Error::InvalidArgument {
                arg: "client",
                reason: "went away".into(),
            });
        }
        last = Instant::now();
        streaming += last - computed;
        Ok(())
    };
    let result = job
        .inpainting
        .run_with(model, &images, mask, key, Some(&mut on_step));
    let done = match result {
        Ok(done) => done,
        Err(_) if gone => return Err(Stop::Gone),
        Err(e) => return Err(e.into()),
    };
    // The decoder's last call ends in the last step's callback; the final paste is short.
    let result_png = result_picture(&done, config.is_video())?;
    let trajectory_t: Vec<usize> = kept.iter().map(|(t, _)| *t).collect();
    let trajectory_png = trajectory_picture(&kept, config.is_video())?;
    let total = start.elapsed();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "inpainted: {}, {} masked patches, {steps} steps in {:.1} ms ({:.2} ms/step; streaming {:.1} ms)",
        describe(&job.inpainting),
        job.masked,
        ms(sampling),
        ms(sampling) / steps.max(1) as f64,
        ms(streaming)
    );
    send(
        events,
        Event::Done {
            sampling_ms: ms(sampling),
            streaming_ms: ms(streaming),
            total_ms: ms(total),
            result_png: b64(&result_png),
            trajectory_png: b64(&trajectory_png),
            trajectory_t,
        },
    )
}

/// `[masked input | sample | ground truth]` as `dmae sample` draws it (a row per frame).
fn result_picture(r: &Inpainted, video: bool) -> Result<Vec<u8>> {
    let masked = images::grey_out(&r.input, &r.pixel_mask)?;
    let panels = [&masked, &r.sample, &r.input];
    let rows = if video {
        let frames = r.input.dim(2)?;
        (0..frames)
            .map(|f| {
                let cells = panels
                    .iter()
                    .map(|p| Ok(p.narrow(2, f, 1)?.squeeze(2)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&cells, 0)?)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![Tensor::cat(&panels, 0)?]
    };
    png_bytes(&images::grid_image(&rows)?)
}

/// The kept `x̂0` predictions left to right, labelled `t=...` (a row per frame for clips).
fn trajectory_picture(kept: &[(usize, Tensor)], video: bool) -> Result<Vec<u8>> {
    let cells: Vec<&Tensor> = kept.iter().map(|(_, x)| x).collect();
    let rows = if video {
        let frames = cells.first().map(|c| c.dim(2)).transpose()?.unwrap_or(0);
        (0..frames)
            .map(|f| {
                let row = cells
                    .iter()
                    .map(|c| Ok(c.narrow(2, f, 1)?.squeeze(2)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&row, 0)?)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![Tensor::cat(&cells, 0)?]
    };
    let grid = images::grid_image(&rows)?;
    let ts: Vec<usize> = kept.iter().map(|(t, _)| *t).collect();
    png_bytes(&label_columns(
        &grid,
        &timestep_labels(&ts),
        images::GRID_PAD,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<DiffMae> {
        let mut c = ModelConfig::mnist();
        (c.encoder.dim, c.encoder.depth, c.encoder.heads) = (16, 1, 2);
        (c.decoder.dim, c.decoder.depth, c.decoder.heads) = (8, 1, 2);
        Arc::new(DiffMae::new(c, 0, &Device::Cpu).unwrap())
    }

    fn job(model: &DiffMae, kind: SamplerKind) -> Job {
        let input = Tensor::zeros((1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let mask: Vec<bool> = (0..49).map(|i| i % 2 == 0).collect();
        Job::new(model.config(), input, &mask, kind, 1.0, 0).unwrap()
    }

    /// `--queue 0` on an idle server takes the job even when the worker thread has not reached
    /// its `recv` yet (submitted right after `start`); a rendezvous channel refused it.
    #[test]
    fn queue_zero_admits_one_job_and_refuses_the_next() {
        let model = model();
        let (first, second) = (
            job(&model, SamplerKind::Ddpm),
            job(&model, SamplerKind::Ddpm),
        );
        let jobs = Jobs::start(Arc::clone(&model), 0, StepImages::Raw).unwrap();
        // DDPM sends 1000 step events into a buffer of 32: unread, the run stays pending.
        let running = jobs.submit(first).expect("idle server");
        let busy = jobs.submit(second).expect_err("busy");
        assert_eq!(busy.pending, 1);
        // The client goes away: the run stops at its next step and the place frees up.
        drop(running);
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let events = jobs
            .submit(job(&model, SamplerKind::Ddim { steps: 2, eta: 0.0 }))
            .expect("free again");
        let names: Vec<String> = events
            .iter()
            .map(|e| e.to_sse().lines().next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("event: queued"));
        assert_eq!(names.last().map(String::as_str), Some("event: done"));
    }
}
