//! Training runs as library calls: the loop around a training step, its
//! output folder, checkpoints and metrics.

pub mod finetune;
pub mod pretrain;

use crate::data::Dataset;
use crate::error::{MimError, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Where a run writes and how often.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The output folder.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors`.
    pub resume: bool,
    /// Start afresh in a folder that holds a run, deleting its checkpoint,
    /// metrics and pictures (without it, such a folder is refused).
    pub overwrite: bool,
    /// A checkpoint every this many steps (and at the end).
    pub ckpt_every: u64,
    /// Reconstruction pictures every this many steps (0: only at the end).
    pub recon_every: u64,
    /// Test images in each picture.
    pub recon_count: usize,
    /// MAE's random resized crops and flips on the training images.
    pub augment: bool,
    /// Stop (with a checkpoint) after this step, as if interrupted.
    pub stop_after: Option<u64>,
    /// Also write a checkpoint when this long has passed since the last one
    /// (so an interruption loses little, whatever `ckpt_every`).
    pub ckpt_interval: Option<Duration>,
    /// When set (by a signal handler, say), the run finishes the current
    /// step, writes a checkpoint and returns with `interrupted`.
    pub stop: Option<Arc<AtomicBool>>,
    /// Refuse a run whose estimated memory exceeds this many bytes (default:
    /// the memory the system reports available; see [`crate::train::memory`]).
    pub max_memory: Option<u64>,
}

impl RunOptions {
    /// Defaults: checkpoints and pictures every 100 steps, 6 pictured images,
    /// augmentation on, a fresh run.
    pub fn new(out: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out: out.into(),
            resume: false,
            overwrite: false,
            ckpt_every: 100,
            recon_every: 100,
            recon_count: 6,
            augment: true,
            stop_after: None,
            ckpt_interval: Some(Duration::from_secs(300)),
            stop: None,
            max_memory: None,
        }
    }

    /// `out/checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.out.join("checkpoint.safetensors")
    }
}

/// Refuses a batch larger than the training set, and a fresh run (neither
/// `resume` nor `overwrite`) in a folder that holds one.
pub(crate) fn check_run_start(options: &RunOptions, train: &dyn Dataset, batch: usize) -> Result<()> {
    if batch == 0 || train.len() < batch {
        return Err(MimError::Input(format!(
            "the batch of {batch} images is larger than the {} training images of {}",
            train.len(),
            train.name()
        )));
    }
    let ckpt = options.checkpoint();
    let metrics = options.out.join("metrics.jsonl");
    if !options.resume && !options.overwrite && (ckpt.exists() || metrics.exists()) {
        return Err(MimError::Input(format!(
            "{} holds a run already: continue it with --resume, or start over with --overwrite",
            options.out.display()
        )));
    }
    Ok(())
}

/// Keeps the lines of `metrics.jsonl` whose step is at most `step` (whole
/// JSON lines only), rewriting the file atomically if anything goes.
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(()); // no metrics yet
    };
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let kept: String = keep.iter().map(|l| format!("{l}\n")).collect();
    if kept != text {
        crate::io::safetensors::write_atomically(path, kept.as_bytes())?;
    }
    Ok(())
}
