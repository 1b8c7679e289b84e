//! # dmae (library part)
//!
//! What the `dmae` command writes for people to look at, shared with `cargo xtask` (which depends on this
//! crate for it) so that both draw the same way without a copy:
//! - [`plot`]: line plots as dependency-free SVG (title, axes with round ticks and labels, legend, log scale
//!   when the values span decades).
//! - [`report`]: a run directory's `report.html` (plots of `metrics.jsonl`, the `samples/` grids), offline.
//! - [`label`]: text on PNG figures with a built-in 5x7 pixel font (`t = 999 ... 0` over trajectory strips).
//!
//! The command itself (flags, training, sampling) is the binary target `src/main.rs`; the models, data and
//! diffusion logic live in the `dmae-*` library crates.

#![deny(missing_docs)]

pub mod label;
pub mod plot;
pub mod report;
