//! Loader throughput on the bundled MNIST digits (8,000 training images, `datasets/mnist`): one
//! epoch raw and one with MAE-style augmentation, printing batches, images per second and the
//! epoch's pixel mean (the same for any thread count: the loader is deterministic).
//!
//! `cargo run --release -p dmae-data --example loader -- [batch_size] [threads]` (defaults 128 and
//! all cores). Outside the repository, set `DMAE_DATASETS` to a folder holding `mnist/`.

use std::time::Instant;

use dmae_data::{
    bundled_mnist, Compose, Loader, LoaderConfig, Normalize, RandomHorizontalFlip,
    RandomResizedCrop, Split,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let batch_size: usize = args.next().map_or(Ok(128), |s| s.parse())?;
    let num_threads: usize = args.next().map_or(Ok(0), |s| s.parse())?;
    let config = LoaderConfig {
        batch_size,
        num_threads,
        seed: 0,
        ..Default::default()
    };
    let augment = || {
        Compose::new()
            .then(RandomResizedCrop::new(28, 28))
            .then(RandomHorizontalFlip::new(0.5))
            .then(Normalize::mnist())
    };
    let runs = [
        (
            "raw",
            Loader::new(bundled_mnist(Split::Train)?, config.clone())?,
        ),
        (
            "crop+flip+normalize",
            Loader::new(bundled_mnist(Split::Train)?, config.clone())?.with_transform(augment()),
        ),
    ];
    println!(
        "bundled MNIST train, batch {batch_size}, threads {}",
        if num_threads == 0 {
            "all".to_string()
        } else {
            num_threads.to_string()
        }
    );
    for (name, loader) in runs {
        let start = Instant::now();
        let (mut images, mut batches, mut pixel_sum) = (0usize, 0usize, 0f64);
        let mut first_shape = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch?;
            if batches == 0 {
                first_shape = batch.images.dims().to_vec();
            }
            pixel_sum += f64::from(batch.images.sum_all()?.to_scalar::<f32>()?);
            images += batch.len();
            batches += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let pixels = images * first_shape.iter().skip(1).product::<usize>();
        println!(
            "{name:>20}: {images} images in {batches} batches of {first_shape:?}, {:.0} images/s, pixel mean {:.4}",
            images as f64 / secs,
            pixel_sum / pixels as f64
        );
        if images != loader.dataset().len() {
            return Err(format!(
                "{name}: {images} images, the dataset has {}",
                loader.dataset().len()
            )
            .into());
        }
    }
    Ok(())
}
