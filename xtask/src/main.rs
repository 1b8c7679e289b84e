//! Project automation: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! Long experiments, benchmarks, toolkit installs and data downloads live here rather than in tests.

mod bench;
mod bench_data;
mod cuda_toolkit;
mod data;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "diffmae project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that print a table (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Install a CUDA 13.0 toolkit (nvcc + link libraries) from PyPI into a cache dir and print the exports.
    CudaToolkit(cuda_toolkit::CudaToolkitArgs),
    /// Datasets: download official archives and verify their checksums.
    Data(data::DataArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::CudaToolkit(args) => cuda_toolkit::run(args),
        Command::Data(args) => data::run(args),
    }
}
