//! CPU thread setup for candle and dmae-core, done once at program start.
//!
//! Two thread pools run a training step on the CPU: rayon's global pool (dmae-core's kernels, and the
//! `gemm` crate behind every candle matmul) and candle 0.11's own barrier pool (candle's element-wise
//! ops, reductions and copies, `candle_core::utils::barrier_pool()`). After each op the barrier pool's
//! workers busy-wait for the next one, by default for 25,000 `pause` instructions (about a
//! millisecond) before parking. A training step is thousands of small ops, and the next one is
//! usually a matmul or a dmae-core kernel on rayon's threads: with as many threads as cores, the
//! spinning workers take the cores those threads need. Measured on 2 cores, a spin limit of 200
//! made small candle ops 1.5-8x faster and a DiffMAE-tiny training step about 2x faster (see
//! docs/benchmarks.md). Both pools read their settings from the environment when first used,
//! which is why [`configure_threads`] must run before any tensor op.

/// Spin iterations of candle's barrier-pool workers before they park, when the user has not set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`: long enough to catch back-to-back element-wise ops, short
/// enough not to steal a core from the next matmul.
pub const DEFAULT_SPIN_LIMIT: u32 = 200;

/// Configures the CPU thread pools; call it first thing in `main`, before any tensor op and before
/// other threads start (it sets environment variables, which is not thread-safe).
///
/// - `threads`: worker threads for rayon's global pool, candle's barrier pool and gemm
///   (`None`: keep `RAYON_NUM_THREADS` if set, else all cores, as candle does);
/// - sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`DEFAULT_SPIN_LIMIT`] unless the user set it.
///
/// Returns the thread count in effect. If rayon's global pool was already built (some op ran
/// first), its size cannot change any more; the call then still returns the count in effect.
pub fn configure_threads(threads: Option<usize>) -> usize {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var(
            "CANDLE_BARRIER_POOL_SPIN_LIMIT",
            DEFAULT_SPIN_LIMIT.to_string(),
        );
    }
    if let Some(n) = threads.filter(|&n| n > 0) {
        // candle sizes its barrier pool and gemm's parallelism from RAYON_NUM_THREADS.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    rayon::current_num_threads()
}
