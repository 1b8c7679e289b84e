//! `cargo xtask bench ...`: benchmarks that print a table (results recorded in docs/benchmarks.md).

use clap::Subcommand;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// dmae-core ops, forward + backward, against the stock candle composition.
    Ops(crate::bench_ops::OpsArgs),
    /// DDIM inpainting with and without the cross-attention K/V cache (dmae-models).
    Sample(crate::bench_sample::SampleArgs),
    /// Data pipeline throughput (dmae-data).
    Data(crate::bench_data::DataBenchArgs),
    /// The pre-training step (forward, backward, AdamW), optionally beside the PyTorch reference.
    Train(crate::bench_train::TrainArgs),
    /// Inpainting through `dmae serve` (HTTP, steps streamed) against `dmae sample`.
    Serve(crate::bench_serve::ServeArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Data(a) => crate::bench_data::run(a),
        BenchCommand::Ops(a) => crate::bench_ops::run(a),
        BenchCommand::Sample(a) => crate::bench_sample::run(a),
        BenchCommand::Train(a) => crate::bench_train::run(a),
        BenchCommand::Serve(a) => crate::bench_serve::run(a),
    }
}
