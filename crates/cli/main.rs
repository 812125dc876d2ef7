//! `tessera`: masked image modeling from the command line.
//!
//! ```text
//! tessera info         the model's shapes, parameters and FLOPs; a patched image
//! tessera pretrain     MAE / SimMIM pre-training with checkpoints and reconstructions
//! tessera reconstruct  four-panel reconstructions from a checkpoint
//! tessera probe        linear-probe and k-NN accuracy of the frozen encoder
//! tessera bench        timed training steps, as one JSON line
//! ```

#![forbid(unsafe_code)]

mod bench;
mod common;
mod info;
mod pretrain;
mod probe;
mod reconstruct;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Masked image modeling (MAE, SimMIM) on a from-scratch CPU tensor engine"
)]
struct Cli {
    /// Worker threads for the kernels (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's patch grid, embedding shapes, parameter counts and FLOPs;
    /// with --image, also write the image cut into its patch grid.
    Info(Box<info::Args>),
    /// Pre-train a masked image model (with no arguments: a small MAE on the
    /// built-in synthetic data set, in a few minutes).
    Pretrain(Box<pretrain::Args>),
    /// Write original | masked | reconstruction | reconstruction + visible panels
    /// for images, from a checkpoint.
    Reconstruct(Box<reconstruct::Args>),
    /// Score the frozen encoder with a linear probe and k-NN on a test split.
    Probe(Box<probe::Args>),
    /// Time full training steps (forward, backward, AdamW) and print one JSON line.
    Bench(Box<bench::Args>),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // Clap's message is several lines (usage, hint); keep the first, and
            // for missing arguments the indented lines naming them.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let mut first = lines
                .next()
                .unwrap_or("error: invalid arguments")
                .trim_end()
                .to_string();
            if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
                let names: Vec<&str> = lines.take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
                first = format!("{} {}", first, names.join(", "));
            }
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    if cli.threads == Some(0) {
        eprintln!("error: --threads must be at least 1");
        return ExitCode::FAILURE;
    }
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Everything runs on a worker of one pool: rayon then splits every
    // tensor the same way across cores, so each core finds the half it
    // worked on last in its own cache (about 10% faster steps than driving
    // the pool from outside).
    let result = pool.install(|| match cli.command {
        Command::Info(a) => info::run(*a),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::Reconstruct(a) => reconstruct::run(*a),
        Command::Probe(a) => probe::run(*a),
        Command::Bench(a) => bench::run(*a),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
