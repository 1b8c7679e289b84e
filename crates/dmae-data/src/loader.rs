//! The data loader: shuffled, sharded epochs of batches decoded in parallel and prefetched in the background.
//!
//! Determinism: the epoch order comes from `(seed, epoch)` and each sample's augmentation from
//! `(seed, epoch, dataset index)`, and results are collected in order, so a batch is the same bytes whatever the
//! thread count, prefetch depth or timing. With `skip_bad`, a batch that loses samples is refilled from the next
//! indices of the epoch, so batches stay full and the result is still deterministic.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::RngCore;
use rayon::prelude::*;

use crate::dataset::{Dataset, Sample};
use crate::error::{Error, Result};
use crate::rng::{sample_rng, shuffle_rng};
use crate::transforms::Transform;

/// Options of a [`Loader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (>= 1).
    pub batch_size: usize,
    /// Shuffle the order every epoch (from `(seed, epoch)`); otherwise dataset order.
    pub shuffle: bool,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the shuffles and of the per-sample transform generators.
    pub seed: u64,
    /// Decoding threads (a private rayon pool); 0 means the machine's available parallelism.
    pub num_threads: usize,
    /// Batches prepared ahead on a background thread (bounded); 0 prepares each batch on the calling thread
    /// when it is asked for.
    pub prefetch: usize,
    /// This process's rank in data-parallel training, `0..world_size`.
    pub rank: usize,
    /// Number of data-parallel processes; each rank sees a disjoint shard of every epoch.
    pub world_size: usize,
    /// Skip samples whose loading fails (counted, see [`Epoch::skipped`]) instead of ending the epoch with
    /// the error.
    pub skip_bad: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            drop_last: false,
            seed: 0,
            num_threads: 0,
            prefetch: 2,
            rank: 0,
            world_size: 1,
            skip_bad: false,
        }
    }
}

/// A batch of samples stacked along a new leading axis.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(N, C, H, W)` (images) or `(N, C, T, H, W)` (video), f32.
    pub images: Tensor,
    /// `(N,)` u32 class labels.
    pub labels: Tensor,
    /// The dataset index of each row.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of samples `N`.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for a batch without samples (the loader never yields one).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Copies images and labels to `device`.
    pub fn to_device(&self, device: &Device) -> Result<Batch> {
        Ok(Batch {
            images: self.images.to_device(device)?,
            labels: self.labels.to_device(device)?,
            indices: self.indices.clone(),
        })
    }

    /// Stacks samples of identical shape into a CPU batch; `indices[i]` is the dataset index of `samples[i]`.
    /// The copy runs on the current rayon pool.
    pub fn collate(samples: &[Sample], indices: &[usize]) -> Result<Batch> {
        let first = samples
            .first()
            .ok_or_else(|| Error::Config("cannot collate an empty batch".into()))?;
        if samples.len() != indices.len() {
            return Err(Error::Config(format!(
                "{} samples but {} indices",
                samples.len(),
                indices.len()
            )));
        }
        let numel = first.data().len();
        let mut labels = Vec::with_capacity(samples.len());
        for (s, &index) in samples.iter().zip(indices) {
            if s.shape() != first.shape() {
                return Err(Error::ShapeMismatch {
                    index,
                    got: s.shape().to_vec(),
                    expected: first.shape().to_vec(),
                });
            }
            labels.push(s.label());
        }
        // Zeroed allocation is lazy (fresh pages); copying in parallel spreads the page faults of a batch that
        // can be tens of megabytes over the calling rayon pool's threads.
        let mut data = vec![0f32; numel * samples.len()];
        data.par_chunks_mut(numel)
            .zip(samples.par_iter())
            .for_each(|(dst, s)| dst.copy_from_slice(s.data()));
        let mut shape = vec![samples.len()];
        shape.extend_from_slice(first.shape());
        Ok(Batch {
            images: Tensor::from_vec(data, shape, &Device::Cpu)?,
            labels: Tensor::from_vec(labels, samples.len(), &Device::Cpu)?,
            indices: indices.to_vec(),
        })
    }
}

/// A sample that failed to load and was skipped (`skip_bad`).
#[derive(Debug)]
pub struct SkippedSample {
    /// Its dataset index.
    pub index: usize,
    /// Why it failed (names the file and cause).
    pub error: Error,
}

/// Iterates a [`Dataset`] in batches. See the module docs for the determinism guarantees.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Option<Arc<dyn Transform>>,
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.dataset.len())
            .field("transform", &self.transform.is_some())
            .field("config", &self.config)
            .finish()
    }
}

impl Loader {
    /// A loader over `dataset`; errors on an invalid configuration or an empty dataset.
    pub fn new(dataset: impl Dataset + 'static, config: LoaderConfig) -> Result<Self> {
        Self::from_arc(Arc::new(dataset), config)
    }

    /// A loader over a shared dataset.
    pub fn from_arc(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(Error::Config(format!(
                "rank {} must be below world_size {} (and world_size >= 1)",
                config.rank, config.world_size
            )));
        }
        if dataset.is_empty() {
            return Err(Error::Config("the dataset is empty".into()));
        }
        let threads = if config.num_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.num_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dmae-data-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("cannot start {threads} decoding threads: {e}")))?;
        Ok(Loader {
            dataset,
            transform: None,
            config,
            pool: Arc::new(pool),
        })
    }

    /// Applies `transform` to every sample (with its `(seed, epoch, index)` generator).
    pub fn with_transform(mut self, transform: impl Transform + 'static) -> Self {
        self.transform = Some(Arc::new(transform));
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &dyn Dataset {
        self.dataset.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// This rank's dataset indices for `epoch`, in iteration order.
    ///
    /// All ranks compute the same permutation; rank `r` takes positions `r, r + world_size, ...`. When the length
    /// is not a multiple of `world_size`, the permutation wraps around so every rank gets `ceil(len /
    /// world_size)` indices (a few samples appear twice per epoch, as with PyTorch's `DistributedSampler`) and
    /// all ranks run the same number of steps.
    pub fn shard_indices(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut perm: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            shuffle(&mut perm, &mut shuffle_rng(self.config.seed, epoch));
        }
        let ws = self.config.world_size;
        if ws == 1 {
            return perm;
        }
        let per = n.div_ceil(ws);
        (0..per)
            .map(|k| perm[(k * ws + self.config.rank) % n])
            .collect()
    }

    /// Batches per epoch on this rank when no sample is skipped.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len().div_ceil(self.config.world_size);
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// Loads and transforms dataset sample `index` exactly as `epoch` would.
    pub fn load(&self, epoch: u64, index: usize) -> Result<Sample> {
        load_one(
            self.dataset.as_ref(),
            self.transform.as_deref(),
            self.config.seed,
            epoch,
            index,
        )
    }

    /// Starts iterating `epoch`; with `prefetch > 0` a background thread starts preparing batches now.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let producer = Producer {
            dataset: Arc::clone(&self.dataset),
            transform: self.transform.clone(),
            pool: Arc::clone(&self.pool),
            config: self.config.clone(),
            epoch,
            indices: self.shard_indices(epoch),
            cursor: 0,
            done: false,
            skipped: Arc::clone(&skipped),
        };
        let source = if self.config.prefetch == 0 {
            Source::Inline(Box::new(producer))
        } else {
            let (tx, rx) = sync_channel(self.config.prefetch - 1);
            let spawned = std::thread::Builder::new()
                .name("dmae-data-prefetch".into())
                .spawn(move || {
                    let mut producer = producer;
                    while let Some(batch) = producer.next_batch() {
                        if tx.send(batch).is_err() {
                            break; // the Epoch was dropped
                        }
                    }
                });
            match spawned {
                Ok(handle) => Source::Background {
                    rx: Some(rx),
                    handle: Some(handle),
                },
                Err(e) => Source::Failed(Some(Error::Worker(format!(
                    "cannot spawn the prefetch thread: {e}"
                )))),
            }
        };
        Epoch { source, skipped }
    }
}

/// Fisher-Yates with a 128-bit multiply range reduction; implemented here so epoch orders do not change with
/// the `rand` crate's version.
fn shuffle(v: &mut [usize], rng: &mut impl RngCore) {
    for i in (1..v.len()).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

fn load_one(
    dataset: &dyn Dataset,
    transform: Option<&dyn Transform>,
    seed: u64,
    epoch: u64,
    index: usize,
) -> Result<Sample> {
    let sample = dataset.get(index)?;
    match transform {
        Some(t) => t.apply(sample, &mut sample_rng(seed, epoch, index as u64)),
        None => Ok(sample),
    }
}

struct Producer {
    dataset: Arc<dyn Dataset>,
    transform: Option<Arc<dyn Transform>>,
    pool: Arc<rayon::ThreadPool>,
    config: LoaderConfig,
    epoch: u64,
    indices: Vec<usize>,
    cursor: usize,
    done: bool,
    skipped: Arc<Mutex<Vec<SkippedSample>>>,
}

impl Producer {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        let bs = self.config.batch_size;
        let mut samples = Vec::with_capacity(bs);
        let mut indices = Vec::with_capacity(bs);
        while samples.len() < bs && self.cursor < self.indices.len() {
            let end = (self.cursor + bs - samples.len()).min(self.indices.len());
            let chunk = &self.indices[self.cursor..end];
            self.cursor = end;
            let (dataset, transform) = (self.dataset.as_ref(), self.transform.as_deref());
            let (seed, epoch) = (self.config.seed, self.epoch);
            let results: Vec<Result<Sample>> = self.pool.install(|| {
                chunk
                    .par_iter()
                    .map(|&i| load_one(dataset, transform, seed, epoch, i))
                    .collect()
            });
            for (&index, r) in chunk.iter().zip(results) {
                match r {
                    Ok(s) => {
                        samples.push(s);
                        indices.push(index);
                    }
                    Err(error) if self.config.skip_bad => {
                        tracing::warn!(index, %error, "skipping a sample that failed to load");
                        if let Ok(mut v) = self.skipped.lock() {
                            v.push(SkippedSample { index, error });
                        }
                    }
                    Err(error) => {
                        self.done = true;
                        return Some(Err(Error::Sample {
                            index,
                            cause: Box::new(error),
                        }));
                    }
                }
            }
        }
        if samples.is_empty() || (self.config.drop_last && samples.len() < bs) {
            self.done = true;
            return None;
        }
        let batch = self.pool.install(|| Batch::collate(&samples, &indices));
        for s in samples {
            crate::pool::give(s.into_parts().0);
        }
        if batch.is_err() {
            self.done = true;
        }
        Some(batch)
    }
}

enum Source {
    Inline(Box<Producer>),
    Background {
        rx: Option<Receiver<Result<Batch>>>,
        handle: Option<JoinHandle<()>>,
    },
    Failed(Option<Error>),
}

/// One epoch of batches: an iterator of `Result<Batch>`.
///
/// After an error (without `skip_bad`) the iterator ends. Dropping it early stops the background thread.
pub struct Epoch {
    source: Source,
    skipped: Arc<Mutex<Vec<SkippedSample>>>,
}

impl Epoch {
    /// Number of samples skipped so far (only with `skip_bad`; with prefetch this includes batches prepared but
    /// not yet yielded).
    pub fn skipped(&self) -> usize {
        self.skipped.lock().map_or(0, |v| v.len())
    }

    /// Takes the skipped samples recorded so far, with their errors.
    pub fn take_skipped(&self) -> Vec<SkippedSample> {
        self.skipped
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match &mut self.source {
            Source::Inline(p) => p.next_batch(),
            Source::Failed(e) => e.take().map(Err),
            Source::Background { rx, handle } => {
                let received = rx.as_ref()?.recv();
                match received {
                    Ok(batch) => Some(batch),
                    Err(_) => {
                        // The producer is gone: a normal end or a panic (e.g. in a user transform).
                        *rx = None;
                        match handle.take().map(JoinHandle::join) {
                            Some(Err(panic)) => {
                                let msg = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "panic".into());
                                Some(Err(Error::Worker(msg)))
                            }
                            _ => None,
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        if let Source::Background { rx, handle } = &mut self.source {
            // Disconnect first so a producer blocked on `send` wakes up and exits, then wait for it.
            drop(rx.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..1000).collect();
        shuffle(&mut v, &mut shuffle_rng(3, 0));
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
