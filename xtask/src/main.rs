//! Project automation: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! Long experiments, benchmarks, toolkit installs and data downloads live here rather than in tests.

mod bench;
mod bench_data;
mod bench_ops;
mod bench_sample;
mod bench_serve;
mod bench_train;
mod check_device;
mod cuda_toolkit;
mod curves;
mod data;
mod recipe;

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
    /// Compare the first training steps on a device (CUDA) with the same steps on the CPU.
    CheckDevice(check_device::CheckDeviceArgs),
    /// Install a CUDA 13.0 toolkit (nvcc + link libraries) from PyPI into a cache dir and print the exports.
    CudaToolkit(cuda_toolkit::CudaToolkitArgs),
    /// Datasets: download official archives and verify their checksums.
    Data(data::DataArgs),
    /// Run a recipe: chained `dmae` commands (pre-train -> fine-tune -> eval -> sample) and a summary.
    Run(recipe::RunArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::CheckDevice(args) => check_device::run(args),
        Command::CudaToolkit(args) => cuda_toolkit::run(args),
        Command::Data(args) => data::run(args),
        Command::Run(args) => recipe::run(args),
    }
}

/// Parses `cpu`, `cuda` or `cuda:i`.
pub(crate) fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => Ok(candle_core::Device::new_cuda(0)?),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(candle_core::Device::new_cuda(i)?),
            _ => anyhow::bail!("--device: expected cpu, cuda or cuda:<index>, got {s:?}"),
        },
    }
}
