//! Data parallelism inside one batch on the CPU: the batch is cut into shards, each shard runs
//! forward and backward on its own threads, and the gradients are summed.
//!
//! Why not only parallel ops: a training step at DiffMAE-tiny sizes is thousands of small ops,
//! and splitting each op over all cores makes every op a fork and a join. Measured on 2 cores
//! (docs/benchmarks.md), two independent single-threaded matrix products of half the rows ran
//! 1.3-1.5x faster together than one product split by `gemm` over both threads (125-135 vs
//! 85-100 GFLOP/s at the encoder's shapes), and the ops that stay on the calling thread
//! (candle's gradient bookkeeping, copies) left the other core idle for 13% of the step. With one
//! shard per thread group nothing waits for anything until the gradients are summed.
//!
//! Shards never change the maths: [`DataParallel::backward`] weights each shard's mean loss by its
//! share of the batch, so the summed gradient is the full batch's gradient up to float rounding,
//! and the callers draw every random number for the whole batch before splitting it.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{invalid, Result};
use crate::no_grad::with_grad_enabled;

const OP: &str = "data_parallel";

/// Threads cut into shard groups: a batch is split into [`DataParallel::shards`] contiguous
/// ranges, and each range runs on its own rayon pool (so dmae-core's kernels and `gemm` inside a
/// shard use only that pool's threads).
///
/// With one shard (one thread, a small batch, or a non-CPU device) everything runs on the calling
/// thread and rayon's global pool, exactly as without this type.
pub struct DataParallel {
    /// One pool per shard; empty when there is a single shard.
    pools: Vec<rayon::ThreadPool>,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("shards", &self.shards())
            .field(
                "threads",
                &self
                    .pools
                    .iter()
                    .map(|p| p.current_num_threads())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DataParallel {
    /// Fewest samples per shard: below this a shard's matrix products get too thin for `gemm`
    /// to run near its peak, and splitting the ops of one shard over threads wins again.
    pub const MIN_SHARD: usize = 16;

    /// Everything on the calling thread and rayon's global pool.
    pub fn single() -> Self {
        Self { pools: Vec::new() }
    }

    /// Shards for batches of `batch` samples on `threads` CPU threads: `min(threads, batch /
    /// MIN_SHARD)` shards (at least one), the threads spread over them as evenly as possible.
    pub fn new(threads: usize, batch: usize) -> Result<Self> {
        let shards = threads.min(batch / Self::MIN_SHARD).max(1);
        if shards == 1 {
            return Ok(Self::single());
        }
        let pools = (0..shards)
            .map(|i| {
                let n = threads / shards + usize::from(i < threads % shards);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |j| format!("dmae-shard{i}-{j}"))
                    .build()
                    .map_err(|e| invalid(OP, format!("cannot start shard {i}'s threads: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { pools })
    }

    /// For `device`: shards on the CPU (see [`DataParallel::new`]), a single shard elsewhere
    /// (a GPU runs the whole batch at once).
    pub fn for_device(device: &candle_core::Device, threads: usize, batch: usize) -> Result<Self> {
        if device.is_cpu() {
            Self::new(threads, batch)
        } else {
            Ok(Self::single())
        }
    }

    /// Number of shards a batch is cut into (when it has at least that many samples).
    pub fn shards(&self) -> usize {
        self.pools.len().max(1)
    }

    /// The contiguous sample ranges of a batch of `n`: `min(shards, n)` ranges whose lengths
    /// differ by at most one, in order.
    pub fn ranges(&self, n: usize) -> Vec<Range<usize>> {
        let k = self.shards().min(n).max(1);
        let mut start = 0;
        (0..k)
            .map(|i| {
                let len = n / k + usize::from(i < n % k);
                let r = start..start + len;
                start += len;
                r
            })
            .collect()
    }

    /// Runs `f` on every range of [`DataParallel::ranges`]`(n)`, each on its shard's pool, all at
    /// once; the results are in range order. The caller's inference mode ([`crate::no_grad`])
    /// holds in every shard.
    pub fn map<R, F>(&self, n: usize, f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(Range<usize>) -> R + Sync,
    {
        let ranges = self.ranges(n);
        if self.pools.is_empty() || ranges.len() == 1 {
            return ranges.into_iter().map(f).collect();
        }
        let enabled = crate::grad_enabled();
        let f = &move |r: Range<usize>| with_grad_enabled(enabled, || f(r));
        std::thread::scope(|scope| {
            let mut jobs = ranges.into_iter().zip(&self.pools);
            let first = jobs.next();
            let others: Vec<_> = jobs
                .map(|(r, pool)| scope.spawn(move || pool.install(|| f(r))))
                .collect();
            let mut out = Vec::with_capacity(others.len() + 1);
            if let Some((r, pool)) = first {
                out.push(pool.install(|| f(r)));
            }
            for h in others {
                match h.join() {
                    Ok(v) => out.push(v),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    }

    /// Forward and backward of a batch of `n` samples, one shard at a time on each pool:
    /// `loss_of(range)` must return the **mean** loss over the samples in `range` (a scalar). Each
    /// shard's loss is weighted by `len / n` before its backward pass, so the returned loss is the
    /// batch mean and the gradients of `vars` (summed over shards) are the full batch's. The loss
    /// comes back detached.
    pub fn backward<F>(&self, n: usize, vars: &[Var], loss_of: F) -> Result<(Tensor, GradStore)>
    where
        F: Fn(Range<usize>) -> candle_core::Result<Tensor> + Sync,
    {
        if n == 0 {
            return Err(invalid(OP, "an empty batch"));
        }
        let shards = self.map(n, |r| -> candle_core::Result<(Tensor, GradStore)> {
            let len = r.len();
            let mut loss = loss_of(r)?;
            if len != n {
                loss = (loss * (len as f64 / n as f64))?;
            }
            let grads = loss.backward()?;
            Ok((loss.detach(), grads))
        });
        let mut shards = shards
            .into_iter()
            .collect::<candle_core::Result<Vec<_>>>()?;
        if shards.len() == 1 {
            if let Some(one) = shards.pop() {
                return Ok(one);
            }
        }
        let mut loss = shards[0].0.clone();
        for (l, _) in &shards[1..] {
            loss = (loss + l)?;
        }
        // The sum is itself split over the pools: one shard's worth of parameters each.
        let stores: Vec<&GradStore> = shards.iter().map(|(_, g)| g).collect();
        let sums = self.map(
            vars.len(),
            |r| -> candle_core::Result<Vec<(usize, Tensor)>> {
                let mut out = Vec::with_capacity(r.len());
                for i in r {
                    let v = vars[i].as_tensor();
                    let mut acc: Option<Tensor> = None;
                    for g in stores.iter().filter_map(|s| s.get(v)) {
                        acc = Some(match acc {
                            None => g.clone(),
                            Some(a) => (a + g)?,
                        });
                    }
                    if let Some(a) = acc {
                        out.push((i, a));
                    }
                }
                Ok(out)
            },
        );
        let sums = sums.into_iter().collect::<candle_core::Result<Vec<_>>>()?;
        // GradStore has no public constructor: the first shard's store takes the sums.
        let mut grads = shards.swap_remove(0).1;
        for (i, g) in sums.into_iter().flatten() {
            grads.insert(vars[i].as_tensor(), g);
        }
        Ok((loss, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn ranges_cover_the_batch_in_order() {
        let dp = DataParallel::new(3, 64).unwrap();
        assert_eq!(dp.shards(), 3);
        assert_eq!(dp.ranges(64), vec![0..22, 22..43, 43..64]);
        assert_eq!(dp.ranges(2), vec![0..1, 1..2]);
        assert_eq!(DataParallel::new(8, 40).unwrap().shards(), 2);
        assert_eq!(DataParallel::new(8, 8).unwrap().shards(), 1);
        assert_eq!(DataParallel::single().ranges(5), vec![0..5]);
    }

    #[test]
    fn shards_run_on_their_own_pools() {
        let dp = DataParallel::new(3, 64).unwrap();
        let seen = dp.map(64, |r| (r, rayon::current_num_threads()));
        let threads: Vec<usize> = seen.iter().map(|(_, t)| *t).collect();
        assert_eq!(threads, vec![1, 1, 1]);
        // The caller's inference mode reaches every shard's thread.
        let modes = crate::no_grad(|| dp.map(64, |_| crate::grad_enabled()));
        assert_eq!(modes, vec![false, false, false]);
        assert_eq!(dp.map(64, |_| crate::grad_enabled()), vec![true; 3]);
    }

    /// The sharded gradient equals the whole batch's for a mean loss through dmae-core ops.
    #[test]
    fn sharded_gradients_equal_the_whole_batch() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f64, 0.5, (7, 5), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 0.5, 7, &dev)?)?;
        let x = Tensor::randn(0f64, 1.0, (37, 3, 5), &dev)?;
        let y = Tensor::randn(0f64, 1.0, (37, 3, 7), &dev)?;
        let vars = [w.clone(), b.clone()];
        let loss_of = |r: Range<usize>| -> candle_core::Result<Tensor> {
            let x = x.narrow(0, r.start, r.len())?;
            let h = crate::linear(&x, w.as_tensor(), Some(b.as_tensor()))?;
            let h = crate::gelu(&h, crate::Gelu::Erf)?;
            (h - y.narrow(0, r.start, r.len())?)?.sqr()?.mean_all()
        };
        let (l1, g1) = DataParallel::single().backward(37, &vars, loss_of)?;
        for threads in [2, 3] {
            let dp = DataParallel::new(threads, 64)?;
            let (l, g) = dp.backward(37, &vars, loss_of)?;
            let dl = (l.to_scalar::<f64>()? - l1.to_scalar::<f64>()?).abs();
            assert!(dl < 1e-12, "loss differs by {dl}");
            for v in &vars {
                let d = (g.get(v.as_tensor()).unwrap() - g1.get(v.as_tensor()).unwrap())?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?;
                assert!(d < 1e-12, "{threads} shards: gradient differs by {d}");
                assert_eq!(g.get(v.as_tensor()).unwrap().dtype(), DType::F64);
            }
        }
        Ok(())
    }
}
