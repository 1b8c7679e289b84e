//! `dmae`: the DiffMAE command-line tool (train, finetune, eval, sample, serve).
//!
//! Exit codes: 0 success, 1 runtime error (one `error: ...` line on stderr), 2 usage error
//! (clap, or a value typed on the command line or in a config file that cannot be used), 130
//! stopped by Ctrl-C after saving a checkpoint.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod common;
mod eval;
mod finetune;
mod images;
mod import_hf;
mod metrics;
mod run_dir;
mod sample;
mod serve;
mod settings;
mod train;
mod trainer;

#[derive(Parser)]
#[command(
    name = "dmae",
    version,
    about = "DiffMAE: diffusion models as masked autoencoders"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// One variant per subcommand, each `X(x::Args)` run by `x::run`.
#[derive(Subcommand)]
enum Command {
    /// DiffMAE (or MAE) pre-training; with no arguments the mnist preset on the bundled digits.
    Train(train::Args),
    /// Classification fine-tuning (or linear probing) of a pre-trained encoder.
    Finetune(finetune::Args),
    /// Inpaint images or clips with a DiffMAE/MAE checkpoint and write pictures.
    Sample(sample::Args),
    /// Evaluate a classifier (top-1/top-5) or an inpainting model (PSNR, SSIM, sharpness, FD).
    Eval(eval::Args),
    /// Convert a Hugging Face ViTMAE checkpoint (directory or Hub repo id) to a dmae checkpoint.
    ImportHf(import_hf::Args),
    /// Inpaint in the browser: a local web page that draws masks and streams the sampler's steps.
    Serve(serve::Args),
}

fn run(cli: Cli, argv: &[std::ffi::OsString]) -> anyhow::Result<()> {
    // The subcommand's own arguments (there are no global flags before it): train and
    // finetune parse them again behind a config file's table.
    let sub = argv.get(2..).unwrap_or_default();
    match cli.command {
        Some(Command::Train(args)) => train::run(args, sub),
        Some(Command::Finetune(args)) => finetune::run(args, sub),
        Some(Command::Sample(args)) => sample::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::ImportHf(args)) => import_hf::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        // `dmae` alone trains with the defaults, as `dmae train`.
        None => train::run(train::Args::parse_from(["train"]), &[]),
    }
}

fn main() -> ExitCode {
    // candle's CPU pool settings (element-wise ops on the calling thread, a short barrier spin)
    // and the allocator must be set before the first tensor op: see dmae_core::threads.
    // `--threads N` sizes rayon later, still before any op.
    dmae_core::configure_threads(None);
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    match run(cli, &argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(i) = e.downcast_ref::<common::Interrupted>() {
                eprintln!("{i}");
                return ExitCode::from(130);
            }
            // One line: anyhow's `{:#}` joins the context chain with ": "; inner messages
            // may still hold newlines (TOML parse errors, for instance).
            let msg = format!("{e:#}")
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("error: {msg}");
            // A value the user typed that cannot be used is a usage error, as clap's are.
            let usage = e.chain().any(|c| c.is::<settings::Usage>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
