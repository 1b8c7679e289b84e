//! `dmae`: the DiffMAE command-line tool (train, finetune, eval, sample, serve).
//!
//! Exit codes: 0 success; 1 runtime error (one `error: ...` line on stderr); 2 usage error
//! (clap, or a value typed on the command line or in a config file that cannot be used); 130
//! stopped by Ctrl-C after saving a checkpoint of the last step done; 3 stopped at once by a
//! second Ctrl-C without saving the steps since the last checkpoint (the run directory keeps
//! that consistent checkpoint pair, or is removed when there was none).

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
// Built once per process from the command line, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
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
    // Errors are one line. candle (like anyhow) captures a backtrace in every error when
    // RUST_BACKTRACE is set, and candle's message prints it: library backtraces stay off unless
    // RUST_LIB_BACKTRACE asks for them (panics still follow RUST_BACKTRACE). Set before any
    // error is made and before other threads start.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
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
                // Not as an error; once, should a second Ctrl-C be deciding to exit too.
                trainer::exit_once(130, &i.0);
            }
            // A fresh run that failed before its first checkpoint leaves nothing behind.
            trainer::discard_unfinished();
            eprintln!("error: {}", one_line(&e));
            // A value the user typed that cannot be used is a usage error, as clap's are.
            let usage = e.chain().any(|c| c.is::<settings::Usage>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// The error and its causes as one line, `error: cause: cause`: inner newlines (TOML parse
/// errors, for instance) become spaces, and a cause whose text its parent's message already
/// ends with (a library error that prints its source and also returns it) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
