//! Inference mode: dmae-core's ops skip the work only a backward pass needs.
//!
//! A sampling step runs the decoder on weights that are `Var`s, so every op sees inputs that
//! track gradients, and a fused op cannot tell from its inputs that nobody will ever call its
//! backward. Inside [`no_grad`] it can: `linear_gelu` computes GELU's value only (not its
//! derivative, kept otherwise for the backward), `attention` keeps no probabilities, and every
//! dmae-core op returns a detached tensor, so no graph links one op's output to the next (candle's
//! own ops in between still record theirs, as they always do; gradients stop at every dmae-core op).
//! PyTorch's `torch.no_grad()` is the same idea.
//!
//! The mode is per thread; [`crate::DataParallel`] carries it into the threads of its shards.

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with dmae-core's ops in inference mode on this thread (see the module docs): their
/// results are the same values, detached, computed without the work that only their backward
/// needs. Nesting is fine; the previous mode comes back when `f` returns or panics.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let w = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let x = Tensor::new(&[[0.5f32, -1.0]], &Device::Cpu)?;
/// let y = dmae_core::no_grad(|| dmae_core::linear(&x, &w, None))?;
/// assert!(!y.track_op());
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![-1.5, -2.5]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_enabled(false, f)
}

/// Whether dmae-core's ops record their backward on this thread (`false` inside [`no_grad`]).
pub fn grad_enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Runs `f` with the mode set to `enabled`, restoring the previous mode afterwards (also on panic).
pub(crate) fn with_grad_enabled<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENABLED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(ENABLED.with(|e| e.replace(enabled)));
    f()
}

/// Whether an op with these inputs must prepare its backward: the mode is on and at least one
/// input is part of a graph (a `Var` or the result of a recorded op).
pub(crate) fn needs_grad(inputs: &[&candle_core::Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.track_op())
}

/// The op's result as it leaves dmae-core: detached in inference mode.
pub(crate) fn finish(t: candle_core::Tensor) -> candle_core::Tensor {
    if grad_enabled() {
        t
    } else {
        t.detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_nests_and_survives_a_panic() {
        assert!(grad_enabled());
        no_grad(|| {
            assert!(!grad_enabled());
            no_grad(|| assert!(!grad_enabled()));
            assert!(!grad_enabled());
            with_grad_enabled(true, || assert!(grad_enabled()));
            assert!(!grad_enabled());
        });
        assert!(grad_enabled());
        let r = std::panic::catch_unwind(|| no_grad(|| panic!("inside")));
        assert!(r.is_err());
        assert!(grad_enabled());
    }
}
