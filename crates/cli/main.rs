//! `tessera`: masked image modeling from the command line.
//!
//! ```text
//! tessera info         the model's shapes, parameters and FLOPs; a patched image
//! tessera pretrain     MAE / SimMIM pre-training with checkpoints and reconstructions
//! tessera reconstruct  four-panel reconstructions from a checkpoint
//! tessera attention    per-head attention maps and rollout over images, from a checkpoint
//! tessera probe        linear-probe and k-NN accuracy of the frozen encoder
//! tessera bench        timed training steps, as one JSON line
//! tessera finetune     supervised fine-tuning of a pre-trained encoder (MAE's recipe)
//! tessera evaluate     top-1, top-5, per-class accuracy and confusion matrix
//! tessera predict      the top classes of image files
//! tessera convert      a PyTorch .pth as safetensors, read without running it
//! tessera report       a run folder's HTML page (or several runs overlaid)
//! ```

#![forbid(unsafe_code)]

mod attention;
mod bench;
mod common;
mod convert;
mod finetune;
mod info;
mod messages;
mod pretrain;
mod probe;
mod ranks;
mod reconstruct;
mod report;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// Write attention maps for images, from a checkpoint: per head the last
    /// block's CLS-token attention and rollout (ViT), or the attention each token
    /// receives in the last block (Swin), overlaid on each image.
    Attention(Box<attention::Args>),
    /// Score the frozen encoder with a linear probe and k-NN on a test split.
    Probe(Box<probe::Args>),
    /// Time full training steps (forward, backward, AdamW) and print one JSON line.
    Bench(Box<bench::Args>),
    /// Fine-tune a pre-trained encoder (or a fresh one) as a classifier, with
    /// MAE's recipe: layer decay, mixup/cutmix, label smoothing, drop path.
    Finetune(Box<finetune::Args>),
    /// Top-1, top-5 and per-class accuracy of a fine-tuned classifier, and a
    /// confusion-matrix picture.
    Evaluate(Box<finetune::EvaluateArgs>),
    /// Print the most likely classes of image files.
    Predict(Box<finetune::PredictArgs>),
    /// Write a PyTorch .pth file's state dict (read without running its
    /// pickle) as safetensors.
    Convert(Box<convert::Args>),
    /// Write a run's HTML report (curves, reconstructions, attention, k-NN,
    /// fine-tuning accuracy), or several runs' overlaid.
    Report(Box<report::Args>),
}

/// Clap's error as one line (its message is several: usage, hint): the first,
/// and for missing arguments the indented lines naming them.
fn usage_error(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        e.exit(); // --help, --version
    }
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
    // Under an MPI launcher every rank parses the same command line: one says it.
    if ranks::launcher_rank().unwrap_or(0) == 0 {
        eprintln!("{first} (see --help)");
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `pretrain --resume` and `finetune --checkpoint` need to know which
    // options were typed, not defaulted.
    let typed = |m: &clap::ArgMatches| -> Vec<String> {
        m.ids()
            .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect()
    };
    match (&mut cli.command, matches.subcommand()) {
        (Command::Pretrain(a), Some(("pretrain", m))) => a.given = typed(m),
        (Command::Finetune(a), Some(("finetune", m))) => a.given = typed(m),
        _ => {}
    }
    if cli.threads == Some(0) {
        eprintln!("error: --threads must be at least 1");
        return ExitCode::FAILURE;
    }
    let threads = cli.threads.unwrap_or_else(ranks::default_threads);
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
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
    pool.install(|| {
        // MPI starts on this worker, which then makes every MPI call
        // (funnelled threading).
        let ranks = ranks::Ranks::start();
        let unsupported = ranks::unsupported_launch();
        let result = match cli.command {
            _ if unsupported.is_some() => Err(anyhow::Error::new(unsupported.expect("checked"))),
            Command::Pretrain(a) => pretrain::run(*a, ranks.comm.clone()),
            _ if ranks.comm.size() > 1 => Err(anyhow::Error::new(tessera_mim::MimError::Ranks(format!(
                "started as {} ranks: only `tessera pretrain` runs data-parallel; start other commands without mpirun",
                ranks.comm.size()
            )))),
            Command::Info(a) => info::run(*a),
            Command::Reconstruct(a) => reconstruct::run(*a),
            Command::Attention(a) => attention::run(*a),
            Command::Probe(a) => probe::run(*a),
            Command::Bench(a) => bench::run(*a),
            Command::Finetune(a) => finetune::run(*a),
            Command::Evaluate(a) => finetune::evaluate_run(*a),
            Command::Predict(a) => finetune::predict_run(*a),
            Command::Convert(a) => convert::run(*a),
            Command::Report(a) => report::run(*a),
        };
        match result {
            // A run a signal stopped (with its checkpoint) exits as a shell
            // reports a killed process, so a script can tell it from a
            // finished one.
            Ok(()) => common::signal_exit_code().map_or(ExitCode::SUCCESS, ExitCode::from),
            Err(e) => ranks.fail(&e),
        }
    })
}
