//! `cargo xtask bench data`: throughput of the dmae-data pipeline (decode + transforms + batching), in images/s.
//!
//! Rows: a JPEG ImageFolder of 256x256 images through MAE's training augmentation (random resized crop to 224,
//! flip, normalize) at 1 and N threads, the same without augmentation (decode + resize only), the bundled MNIST
//! digits raw and augmented, and Moving-MNIST clips. The JPEGs are generated once (smooth colour fields, shapes
//! and sensor-like noise, quality 90, so they decode like photos of that size) and cached.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use dmae_data::{
    bundled_mnist, Channels, Compose, Dataset, ImageFolder, Loader, LoaderConfig, MovingMnist,
    MovingMnistConfig, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, Split,
    Transform,
};
use rand::{Rng, SeedableRng};

#[derive(clap::Args)]
pub struct DataBenchArgs {
    /// Decoding threads for the multi-threaded rows (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// JPEG images to generate for the ImageFolder rows.
    #[arg(long, default_value_t = 1024)]
    images: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Minimum seconds to run each row (whole epochs are timed until this is reached).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Where to cache the generated JPEG folder (default: target/bench-data).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run only the rows whose description contains this text (e.g. "JPEG", "MNIST").
    #[arg(long)]
    only: Option<String>,
}

struct Row {
    what: String,
    threads: usize,
    images: usize,
    secs: f64,
    /// CPU seconds the whole process used meanwhile (user + system), when the platform tells.
    cpu: Option<f64>,
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`; `None` elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux configuration.
    Some(ticks / 100.0)
}

pub fn run(args: DataBenchArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let (folder, avg_kb) = ensure_jpeg_folder(&dir, args.images)?;
    eprintln!(
        "JPEG folder: {} ({} images, {avg_kb:.1} KB each on average)",
        folder.display(),
        args.images
    );

    let mut rows = Vec::new();
    let jpeg = ImageFolder::open(&folder, Channels::Rgb)?;
    let mut thread_counts = vec![1];
    if threads > 1 {
        thread_counts.push(threads);
    }
    for &t in &thread_counts {
        rows.extend(measure(
            "JPEG 256px ImageFolder -> RandomResizedCrop 224 + flip + normalize",
            jpeg.clone(),
            Some(Box::new(Compose::mae_train(224))),
            t,
            &args,
        )?);
    }
    rows.extend(measure(
        "JPEG 256px ImageFolder -> decode only (no transform)",
        jpeg.clone(),
        None,
        threads,
        &args,
    )?);
    rows.extend(measure(
        "JPEG 256px ImageFolder -> Resize 224 + normalize (eval-style)",
        jpeg,
        Some(Box::new(
            Compose::new()
                .then(Resize::exact(224, 224))
                .then(Normalize::imagenet()),
        )),
        threads,
        &args,
    )?);
    let mnist = bundled_mnist(Split::Train)?;
    for &t in &thread_counts {
        rows.extend(measure(
            "bundled MNIST 28px (8,000 digits), no transform",
            mnist.clone(),
            None,
            t,
            &args,
        )?);
    }
    rows.extend(measure(
        "bundled MNIST 28px -> RandomResizedCrop 28 + flip + normalize",
        mnist.clone(),
        Some(Box::new(
            Compose::new()
                .then(RandomResizedCrop::new(28, 28))
                .then(RandomHorizontalFlip::new(0.5))
                .then(Normalize::mnist()),
        )),
        threads,
        &args,
    )?);
    let mm = MovingMnist::new(
        bundled_mnist(Split::Val)?,
        MovingMnistConfig {
            len: 2048,
            ..Default::default()
        },
    )?;
    rows.extend(measure(
        "Moving MNIST clips 20 x 64 x 64 (2 digits)",
        mm,
        None,
        threads,
        &args,
    )?);

    println!(
        "\ndmae-data throughput ({cores} cores available, batch {}, prefetch 2)\n",
        args.batch
    );
    println!("| pipeline | threads | images | seconds | images/s | CPU s | images per CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (cpu, per_cpu) = match r.cpu {
            Some(c) if c > 0.0 => (format!("{c:.2}"), format!("{:.0}", r.images as f64 / c)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {cpu} | {per_cpu} |",
            r.what,
            r.threads,
            r.images,
            r.secs,
            r.images as f64 / r.secs
        );
    }
    println!(
        "\nimages/s is wall-clock throughput; images per CPU s divides by the CPU time the process used, which stays \
         meaningful when other work shares the machine (compare `uptime` load with the core count)."
    );
    Ok(())
}

fn default_dir() -> PathBuf {
    // xtask is built from the workspace: its manifest dir is <workspace>/xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench-data")
}

fn measure(
    what: &str,
    dataset: impl Dataset + 'static,
    transform: Option<Box<dyn Transform>>,
    threads: usize,
    args: &DataBenchArgs,
) -> Result<Option<Row>> {
    if let Some(only) = &args.only {
        if !what.contains(only.as_str()) {
            return Ok(None);
        }
    }
    let mut loader = Loader::new(
        dataset,
        LoaderConfig {
            batch_size: args.batch,
            num_threads: threads,
            prefetch: 2,
            seed: 0,
            ..Default::default()
        },
    )?;
    if let Some(t) = transform {
        loader = loader.with_transform(t);
    }
    // Warm-up: one batch (page cache, thread pool, allocator).
    if let Some(b) = loader.epoch(u64::MAX).next() {
        b?;
    }
    let start = Instant::now();
    let cpu0 = process_cpu_seconds();
    let (mut images, mut epoch) = (0usize, 0u64);
    while start.elapsed().as_secs_f64() < args.seconds {
        for b in loader.epoch(epoch) {
            let b = b.with_context(|| format!("{what}: epoch {epoch}"))?;
            // Touch the tensor so nothing is optimised away.
            debug_assert!(b.images.dims()[0] == b.len());
            images += b.len();
        }
        epoch += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    eprintln!(
        "{what} [{threads} threads]: {:.0} images/s",
        images as f64 / secs
    );
    Ok(Some(Row {
        what: what.to_string(),
        threads,
        images,
        secs,
        cpu,
    }))
}

/// Generates `n` 256x256 JPEGs in 10 class folders (once; reused when complete). Returns the folder and the mean
/// file size in KB.
fn ensure_jpeg_folder(dir: &Path, n: usize) -> Result<(PathBuf, f64)> {
    let root = dir.join(format!("jpeg256-{n}"));
    let marker = root.join(".complete");
    if !marker.is_file() {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        eprintln!("generating {n} JPEGs in {}", root.display());
        use rayon::prelude::*;
        (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
            let class = root.join(format!("class{:02}", i % 10));
            std::fs::create_dir_all(&class)?;
            let img = synth_photo(i as u64);
            let path = class.join(format!("img{i:05}.jpg"));
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&img)
                .with_context(|| format!("encoding {}", path.display()))?;
            Ok(())
        })?;
        std::fs::write(&marker, b"")?;
    }
    let mut total = 0u64;
    let mut count = 0u64;
    for class in std::fs::read_dir(&root)? {
        let class = class?.path();
        if class.is_dir() {
            for f in std::fs::read_dir(&class)? {
                total += f?.metadata()?.len();
                count += 1;
            }
        }
    }
    Ok((root, total as f64 / count.max(1) as f64 / 1024.0))
}

/// A 256x256 image with photo-like statistics: smooth colour gradients, a few soft-edged blobs, fine texture
/// and per-pixel noise (so JPEG has real high-frequency content to code).
fn synth_photo(seed: u64) -> image::RgbImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base: [f32; 3] = [
        rng.random_range(40.0..200.0),
        rng.random_range(40.0..200.0),
        rng.random_range(40.0..200.0),
    ];
    let grad: [f32; 3] = [
        rng.random_range(-0.4..0.4),
        rng.random_range(-0.4..0.4),
        rng.random_range(-0.4..0.4),
    ];
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..6)
        .map(|_| {
            (
                rng.random_range(0.0..256.0),
                rng.random_range(0.0..256.0),
                rng.random_range(15.0..70.0),
                [
                    rng.random_range(-90.0..90.0),
                    rng.random_range(-90.0..90.0),
                    rng.random_range(-90.0..90.0),
                ],
            )
        })
        .collect();
    let freq = rng.random_range(0.05..0.3);
    let mut img = image::RgbImage::new(256, 256);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let texture = 12.0 * (xf * freq).sin() * (yf * freq * 0.7).cos();
        for c in 0..3 {
            let mut v = base[c] + grad[c] * (xf - 128.0) + texture;
            for &(bx, by, r, col) in &blobs {
                let d2 = ((xf - bx).powi(2) + (yf - by).powi(2)) / (r * r);
                v += col[c] * (-d2).exp();
            }
            v += rng.random_range(-10.0..10.0);
            px[c] = v.clamp(0.0, 255.0) as u8;
        }
    }
    img
}
