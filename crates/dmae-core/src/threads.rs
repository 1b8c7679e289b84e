//! CPU thread setup for candle and dmae-core, done once at program start.
//!
//! Two thread pools run a training step on the CPU: rayon's global pool (dmae-core's kernels, and the
//! `gemm` crate behind every candle matmul) and candle 0.11's own barrier pool (candle's element-wise
//! ops, reductions and copies, `candle_core::utils::barrier_pool()`). The barrier pool splits every
//! op over its workers and the calling thread, then waits (spinning) until the slowest worker is
//! done; after the op its workers busy-wait for the next one, by default for 25,000 `pause`
//! instructions (about a millisecond) before parking. A training step is thousands of small ops,
//! and the next one is usually a matmul or a dmae-core kernel on rayon's threads: with as many
//! threads as cores in each pool, a descheduled worker stalls every op and the spinning workers take
//! the cores rayon's threads need. Measured on 2 shared cores (docs/benchmarks.md), a DiffMAE-tiny
//! training step ran 1.9x faster with candle's pool reduced to the calling thread
//! (`CANDLE_NUM_THREADS=1`), and small candle ops 1.5-8x faster with a spin limit of 200. candle's
//! element-wise ops are memory-bound and small at these sizes, so one thread loses little there,
//! while matmuls still use every core (gemm sizes its parallelism from `RAYON_NUM_THREADS`).
//! Both pools read their settings from the environment when first used, which is why
//! [`configure_threads`] must run before any tensor op.
//!
//! The training and sampling loops go one step further and split each batch over thread groups
//! ([`crate::DataParallel`]): with one shard per core, every op of a shard runs on its own thread
//! and nothing waits until the gradients are summed.
//!
//! The allocator: every candle op returns a fresh buffer, and glibc serves buffers over 128 KiB
//! with `mmap` and returns them with `munmap` on free, so each step's activations and gradients
//! were new pages, zeroed by the kernel on first touch (page faults were ~15% of a sampling
//! step's CPU time). [`configure_threads`] raises glibc's mmap threshold to its 32 MiB maximum and
//! disables trimming, so freed buffers are reused from the heap; this cut the CPU time of 20 DDIM
//! steps by about a third.

use crate::error::{Error, Result};

/// Spin iterations of candle's barrier-pool workers before they park, when the user has not set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`: long enough to catch back-to-back element-wise ops, short
/// enough not to steal a core from the next matmul.
pub const DEFAULT_SPIN_LIMIT: u32 = 200;

/// Most worker threads [`configure_threads`] starts: more than the logical cores of current
/// machines (a count over the core count only adds contention), and few enough that starting them
/// is instant. A larger request (`--threads 100000` started threads without end) is clamped here;
/// a program checks user input first with [`check_threads`] to report it as a usage error.
pub const MAX_THREADS: usize = 1024;

/// Checks a thread count given by a user: `1..=`[`MAX_THREADS`]. Returns the count, or an
/// [`Error::InvalidArgument`] saying what is allowed.
pub fn check_threads(n: usize) -> Result<usize> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(Error::InvalidArgument {
            op: "threads",
            msg: format!(
                "{n} threads: expected 1 to {MAX_THREADS} (dmae_core::MAX_THREADS; this machine has {} cores)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        })
    }
}

/// Configures the CPU thread pools; call it first thing in `main`, before any tensor op and before
/// other threads start (it sets environment variables, which is not thread-safe).
///
/// - `threads`: worker threads for rayon's global pool, candle's barrier pool and gemm
///   (`None`: keep `RAYON_NUM_THREADS` if set, else all cores, as candle does);
/// - sets `CANDLE_NUM_THREADS=1` (candle's element-wise ops on the calling thread, no barrier) and
///   `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`DEFAULT_SPIN_LIMIT`], each unless the user set it.
///
/// Counts over [`MAX_THREADS`] (given here or in `RAYON_NUM_THREADS`) are clamped to it.
///
/// Returns the thread count in effect (with `None`: the count the pool will start with). A call
/// with `None` does not start rayon's global pool, so a later call with `Some(n)` (a `--threads`
/// flag parsed after the early `None` call) still sizes it. Once the pool runs (some op ran
/// first), its size cannot change any more; the call then returns the count in effect.
pub fn configure_threads(threads: Option<usize>) -> usize {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var(
            "CANDLE_BARRIER_POOL_SPIN_LIMIT",
            DEFAULT_SPIN_LIMIT.to_string(),
        );
    }
    keep_freed_memory();
    if std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<u128>().ok())
        .is_some_and(|n| n > MAX_THREADS as u128)
    {
        std::env::set_var("RAYON_NUM_THREADS", MAX_THREADS.to_string());
    }
    match threads.filter(|&n| n > 0).map(|n| n.min(MAX_THREADS)) {
        Some(n) => {
            // candle sizes its barrier pool and gemm's parallelism from RAYON_NUM_THREADS.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
            rayon::current_num_threads()
        }
        // Without a count, leave rayon's global pool unbuilt (asking it for its size would start
        // it with the default), so that a later call with `Some(n)` can still size it.
        None => planned_threads(),
    }
}

/// The size rayon's global pool gets when it starts with its defaults: `RAYON_NUM_THREADS` if set
/// to a positive number, else the available parallelism.
fn planned_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Makes glibc's malloc keep freed buffers up to 32 MiB for reuse instead of unmapping them (see
/// the module docs). No-op on other C libraries.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit targets; larger values are rejected.
        const MAX_MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;
        // SAFETY: mallopt only changes malloc's tuning parameters; it is safe to call at any time
        // (glibc takes its own lock). Failure (0) leaves the defaults, which is harmless.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_thread_counts_are_refused() {
        assert_eq!(check_threads(1).unwrap(), 1);
        assert_eq!(check_threads(MAX_THREADS).unwrap(), MAX_THREADS);
        for n in [0, MAX_THREADS + 1, 100_000, usize::MAX] {
            let e = check_threads(n).unwrap_err().to_string();
            assert!(e.contains(&n.to_string()) && e.contains("1024"), "{e}");
        }
    }
}
