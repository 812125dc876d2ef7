//! Training runs as library calls: one loop around a training step, for
//! pre-training ([`pretrain::PretrainRun`] over a
//! [`Trainer`](crate::train::pretrain::Trainer)) and fine-tuning
//! ([`finetune::FinetuneRun`] over a
//! [`Finetuner`](crate::train::finetune::Finetuner)).
//!
//! The loop, written once here:
//!
//! ```text
//! take the folder (rank 0):   its lock, then the folder checked again (see folder.rs)
//! prepare the folder (rank 0): stale temporaries gone, an overwritten run's files gone,
//!                              metrics past a resumed checkpoint dropped, config.json
//! a loader thread:  for each step, the epoch's permutation → this rank's rows
//!                   → decode and transform in parallel → the next batch waits in a channel
//! for each batch:   the step's update → metrics.jsonl line → the run's own work
//!                   (fine-tuning: validation at the end of an epoch)
//!                   → a checkpoint every `ckpt_every` steps, every `ckpt_interval`,
//!                     at the end and when stopped → the run's own work after it
//!                   (pre-training: reconstruction pictures)
//! ```
//!
//! An output folder holds `checkpoint.safetensors` (written atomically),
//! `metrics.jsonl` (one JSON object per step, and the run's own lines),
//! `config.json`, and what the run adds (pictures in `recon/`). With
//! [`RunOptions::resume`] a run continues from its checkpoint along the exact
//! trajectory of an uninterrupted run: the data order is a pure function of
//! the step, each image's augmentation of its index and epoch.
//!
//! One run writes a folder at a time ([`folder::RunLock`]), and only its own
//! files ([`folder`]). A run that fails before its first checkpoint removes
//! what it wrote, so that the folder can start a run again; every failure
//! says what is kept ([`MimError::RunFailed`]).

pub mod finetune;
pub mod folder;
pub mod pretrain;
pub mod report;

use crate::data::Dataset;
use crate::data::loader::{EpochSampler, load_batch};
use crate::data::transform::Transform;
use crate::error::{MimError, Result, io_err};
use crate::eval::accuracy::EvalReport;
use crate::io::safetensors::{remove_stale_temporaries, write_atomically};
use crate::train::StepStats;
use crate::train::distributed::{Communicator, check_agreement, fingerprint};
use folder::{CHECKPOINT, CONFIG, METRICS, RunLock, SEGMENTS, check_config_is_ours, remove_run};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};
use tessera_tensor::Tensor;

/// Where a run writes, how often it checkpoints, and when it stops.
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
    /// Also write a checkpoint when this long has passed since the last one
    /// (so an interruption loses little, whatever `ckpt_every`).
    pub ckpt_interval: Option<Duration>,
    /// Stop (with a checkpoint) after this step, as if interrupted.
    pub stop_after: Option<u64>,
    /// When set (by a signal handler, say), the run finishes the current
    /// step, writes a checkpoint and returns with `interrupted`.
    pub stop: Option<Arc<AtomicBool>>,
    /// Refuse a run whose estimated memory exceeds this many bytes (default:
    /// the memory the system reports available; see [`crate::train::memory`]).
    pub max_memory: Option<u64>,
    /// Refresh `report.html` at every checkpoint ([`report`]; on by default).
    pub report: bool,
}

impl RunOptions {
    /// Defaults: a fresh run, a checkpoint every 100 steps and every 5
    /// minutes, the report refreshed at each.
    pub fn new(out: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out: out.into(),
            resume: false,
            overwrite: false,
            ckpt_every: 100,
            ckpt_interval: Some(Duration::from_secs(300)),
            stop_after: None,
            stop: None,
            max_memory: None,
            report: true,
        }
    }

    /// `out/checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.out.join(CHECKPOINT)
    }

    /// `out/metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.out.join(METRICS)
    }
}

/// What a run is about to do, for [`Observer::started`].
#[derive(Clone, Debug)]
pub struct RunStart {
    pub data_name: String,
    pub train_images: usize,
    pub steps_per_epoch: usize,
    /// The step the run starts from (0, or the checkpoint's).
    pub start_step: u64,
    pub total_steps: u64,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunEnd {
    /// The last step's statistics (`None`: the run was already complete).
    pub last: Option<StepStats>,
    /// Smoothed images per second over the run.
    pub images_per_s: f64,
    pub checkpoint: PathBuf,
    /// The run stopped early because [`RunOptions::stop`] was set (its
    /// checkpoint is written; `resume` continues it).
    pub interrupted: bool,
    /// Pre-training: the final reconstruction picture.
    pub picture: Option<PathBuf>,
    /// Fine-tuning: the validation after the last epoch (or at the end).
    pub validation: Option<EvalReport>,
}

/// What a run reports as it goes; every method does nothing by default, and
/// `()` observes nothing.
pub trait Observer {
    /// Before the first step.
    fn started(&mut self, _run: &RunStart) {}
    /// After every step, with the smoothed throughput.
    fn step(&mut self, _stats: &StepStats, _images_per_s: f64) {}
    /// After a checkpoint was written.
    fn checkpoint(&mut self, _path: &Path, _step: u64) {}
    /// Pre-training: after a reconstruction picture was written.
    fn picture(&mut self, _path: &Path, _step: u64) {}
    /// Fine-tuning: after each epoch's validation.
    fn evaluated(&mut self, _epoch: u64, _report: &EvalReport) {}
    /// Pre-training: after each online k-NN measurement (top-1 in [0, 1]).
    fn knn(&mut self, _step: u64, _top1: f32) {}
}

impl Observer for () {}

/// A training step as the loop drives it: what [`Trainer`] and
/// [`Finetuner`] have in common.
///
/// [`Trainer`]: crate::train::pretrain::Trainer
/// [`Finetuner`]: crate::train::finetune::Finetuner
pub(crate) trait Step {
    /// Images per optimizer step (the global batch).
    fn batch_size(&self) -> usize;
    /// The seed of the data order and augmentation.
    fn seed(&self) -> u64;
    /// Updates done so far.
    fn step(&self) -> u64;
    /// The run's length in updates.
    fn total_steps(&self) -> u64;
    /// One update on this rank's images `(B, C, H, W)` and their labels.
    fn train(&mut self, images: &Tensor, labels: &[Option<u32>]) -> Result<StepStats>;
    /// A checkpoint of everything a resume needs, written atomically.
    fn save(&self, path: &Path) -> Result<()>;
    /// The configuration as `config.json` holds it.
    fn config_json(&self) -> String;
    /// The ranks the step trains over.
    fn communicator(&self) -> Rc<dyn Communicator>;
    /// This rank's rows of each global batch.
    fn local_rows(&self) -> Vec<usize>;
    /// A fingerprint of the trainable state (equal on every rank).
    fn state_fingerprint(&self) -> u64;
}

/// `metrics.jsonl`, open for appending (rank 0's).
pub(crate) struct Metrics {
    path: PathBuf,
    file: File,
    /// The file's length after its last whole line.
    len: u64,
}

impl Metrics {
    fn open(path: PathBuf) -> Result<Metrics> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        Ok(Metrics { path, file, len })
    }

    /// Appends one JSON object as a line, whole or not at all.
    pub(crate) fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        let text = format!("{value}\n");
        append_whole(&mut self.file, &mut self.len, text.as_bytes()).map_err(|e| io_err(&self.path, e))
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }
}

/// A file that can be cut back to a length (a [`File`]; a failing writer in
/// tests).
trait CutBack: Write {
    fn cut_back(&mut self, len: u64) -> std::io::Result<()>;
}

impl CutBack for File {
    fn cut_back(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// Appends `bytes` to `w`, now `len` long: a write that fails part-way (a
/// full disk) is cut back off, so the file never ends in half a line.
fn append_whole(w: &mut impl CutBack, len: &mut u64, bytes: &[u8]) -> std::io::Result<()> {
    match w.write_all(bytes).and_then(|()| w.flush()) {
        Ok(()) => {
            *len += bytes.len() as u64;
            Ok(())
        }
        Err(e) => {
            let _ = w.cut_back(*len);
            Err(e)
        }
    }
}

/// What a kind of run adds to the loop.
pub(crate) trait Extras<S> {
    /// Folders below the output folder that this kind writes (removed with
    /// the rest of a run on `overwrite`).
    fn folders(&self) -> &[&str] {
        &[]
    }
    /// After the step's metrics line, before its checkpoint (rank 0 has the
    /// metrics file).
    fn before_checkpoint(
        &mut self,
        _step: &S,
        _stats: &StepStats,
        _metrics: Option<&mut Metrics>,
        _observer: &mut dyn Observer,
    ) -> Result<()> {
        Ok(())
    }
    /// After the step's checkpoint, if any.
    fn after_checkpoint(&mut self, _step: &S, _stats: &StepStats, _observer: &mut dyn Observer) -> Result<()> {
        Ok(())
    }
    /// After the last step.
    fn finish(&mut self, _step: &S, _stats: &StepStats, _observer: &mut dyn Observer) -> Result<()> {
        Ok(())
    }
}

/// How the loop ended.
pub(crate) struct LoopEnd {
    pub last: Option<StepStats>,
    pub images_per_s: f64,
    pub interrupted: bool,
}

impl LoopEnd {
    /// The run's end, before the kind adds its picture or validation.
    pub(crate) fn ended(self, options: &RunOptions) -> RunEnd {
        RunEnd {
            last: self.last,
            images_per_s: self.images_per_s,
            checkpoint: options.checkpoint(),
            interrupted: self.interrupted,
            picture: None,
            validation: None,
        }
    }
}

/// The seed of the augmentations of `epoch` in a run seeded `seed`: each
/// image is augmented differently in every epoch and identically when a run
/// resumes ([`load_batch`] mixes in the image's index). The formula is the
/// one every checkpoint so far was trained with; a resumed run needs it.
pub(crate) fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch
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
    if options.resume && !ckpt.exists() {
        return Err(MimError::Input(format!(
            "`RunOptions::resume`: no checkpoint at {}",
            ckpt.display()
        )));
    }
    check_folder(options)
}

/// The folder's part of [`check_run_start`], checked again under the run's
/// lock: a fresh run needs a folder without a run's checkpoint or metrics,
/// and any run one whose `config.json` (which it rewrites) is a run's.
fn check_folder(options: &RunOptions) -> Result<()> {
    let ckpt = options.checkpoint();
    if !options.resume && !options.overwrite && (ckpt.exists() || options.metrics().exists()) {
        return Err(MimError::Input(format!(
            "{} holds a run already: continue it with `RunOptions::resume`, or start over with \
             `RunOptions::overwrite`",
            options.out.display()
        )));
    }
    check_config_is_ours(&options.out)
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
        write_atomically(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Rank 0's preparation of the output folder: stale temporaries gone, an
/// overwritten run's files deleted, metrics past a resumed checkpoint
/// dropped, `config.json` written.
fn prepare_folder(opts: &RunOptions, folders: &[&str], start: u64, config_json: &str) -> Result<()> {
    std::fs::create_dir_all(&opts.out).map_err(|e| io_err(&opts.out, e))?;
    // A write interrupted by a crash leaves its temporary file: remove it.
    remove_stale_temporaries(&opts.out);
    if opts.overwrite && !opts.resume {
        remove_run(&opts.out, folders)?;
    }
    // Resuming: metrics past the checkpoint (written after it, before an
    // interruption) would be written again; drop them, and any partial line.
    truncate_metrics(&opts.metrics(), start)?;
    truncate_metrics(&opts.out.join(SEGMENTS), start)?;
    write_atomically(&opts.out.join(CONFIG), config_json.as_bytes())
}

/// The loop: trains `step` on batches of `train` (through `transform`) to
/// its length or `opts.stop_after`, writing the output folder as it goes
/// (rank 0) and reporting to `observer`; `extras` adds a kind's own work.
pub(crate) fn train_loop<S: Step>(
    step: &mut S,
    train: &dyn Dataset,
    transform: &Transform,
    opts: &RunOptions,
    extras: &mut dyn Extras<S>,
    observer: &mut dyn Observer,
) -> Result<LoopEnd> {
    let (start, total, batch) = (step.step(), step.total_steps(), step.batch_size());
    let comm = step.communicator();
    // Rank 0 writes the folder and reports; the others only train.
    let root = comm.rank() == 0;
    let end = opts.stop_after.map_or(total, |s| s.clamp(start, total));
    let sampler = EpochSampler {
        n: train.len(),
        batch,
        seed: step.seed(),
    };
    let config_json = step.config_json();
    if comm.size() > 1 {
        let what = serde_json::json!({
            "config": config_json,
            "data": train.name(),
            "images": train.len(),
            "transform": format!("{transform:?}"),
            "end": end,
        });
        check_agreement(
            comm.as_ref(),
            "configuration or data set",
            fingerprint(what.to_string().as_bytes()),
        )?;
        check_agreement(
            comm.as_ref(),
            "starting state (step, weights or random state)",
            step.state_fingerprint(),
        )?;
    }
    if start >= total {
        return Ok(LoopEnd {
            last: None,
            images_per_s: 0.0,
            interrupted: false,
        });
    }
    if end <= start {
        return Err(MimError::Input(format!(
            "`RunOptions::stop_after` is {end}, but the run is at step {start} already: nothing would run"
        )));
    }
    if !root {
        let span = Span {
            start,
            end,
            written: None,
        };
        return steps(step, train, transform, opts, extras, observer, span);
    }
    // One run per folder: the lock first, then the folder checked again (a
    // run that started meanwhile has written it), then anything written.
    let _lock = RunLock::take(&opts.out)?;
    check_folder(opts)?;
    let had_checkpoint = opts.checkpoint().exists();
    let mut saved = None;
    let ended = (|| -> Result<LoopEnd> {
        prepare_folder(opts, extras.folders(), start, &config_json)?;
        let metrics = Metrics::open(opts.metrics())?;
        let mut segments = Metrics::open(opts.out.join(SEGMENTS))?;
        segments.line(&serde_json::json!({
            "step": start,
            "end": end,
            "total_steps": total,
            "data": train.name(),
            "images": train.len(),
            "cpu": cpu_name(),
            "threads": rayon::current_num_threads(),
            "ranks": comm.size(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "version": env!("CARGO_PKG_VERSION"),
        }))?;
        segments.sync()?;
        observer.started(&RunStart {
            data_name: train.name(),
            train_images: train.len(),
            steps_per_epoch: sampler.steps_per_epoch(),
            start_step: start,
            total_steps: total,
        });
        let span = Span {
            start,
            end,
            written: Some((metrics, &mut saved)),
        };
        steps(step, train, transform, opts, extras, observer, span)
    })();
    ended.map_err(|cause| {
        let kept = match saved.or(had_checkpoint.then_some(start)) {
            Some(at) => format!(
                "the checkpoint of step {at} at {} is intact",
                opts.checkpoint().display()
            ),
            // A run that ends before its first checkpoint leaves the folder
            // as it found it, so the same command can start it again.
            None => match remove_run(&opts.out, extras.folders()) {
                Ok(_) => format!(
                    "no checkpoint was written, and {} holds nothing of this run",
                    opts.out.display()
                ),
                Err(e) => format!("no checkpoint was written, and removing what this run wrote failed: {e}"),
            },
        };
        MimError::RunFailed {
            cause: Box::new(cause),
            kept,
        }
    })
}

/// The CPU that makes a number, as Linux's `/proc/cpuinfo` describes its
/// first processor (or the architecture): its model name, then its family
/// and model and the vector units that decide the kernels (see
/// [`describe_cpu`]).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| describe_cpu(&t))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// `model name (family F model M; avx2 avx512f avx512_bf16 amx_tile)` from a
/// `/proc/cpuinfo` text, naming only the units present. A cloud guest often
/// reports a generic model name ("Intel(R) Xeon(R) Processor") for several
/// generations: the family, model and units tell them apart (a Sapphire
/// Rapids guest without AMX is another machine for bf16).
pub fn describe_cpu(cpuinfo: &str) -> Option<String> {
    // The first processor's block: its lines up to the first blank one.
    let block = cpuinfo.split("\n\n").next()?;
    let field = |key: &str| {
        block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let name = field("model name")?;
    let mut about = Vec::new();
    if let (Some(f), Some(m)) = (field("cpu family"), field("model")) {
        about.push(format!("family {f} model {m}"));
    }
    let flags = field("flags").unwrap_or_default();
    let units: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
        .into_iter()
        .filter(|u| flags.split_whitespace().any(|f| f == *u))
        .collect();
    if !units.is_empty() {
        about.push(units.join(" "));
    }
    Some(if about.is_empty() {
        name
    } else {
        format!("{name} ({})", about.join("; "))
    })
}

/// The steps a loop runs, and (rank 0) where it writes.
struct Span<'a> {
    start: u64,
    end: u64,
    /// Rank 0's metrics, and the step of the last checkpoint it wrote.
    written: Option<(Metrics, &'a mut Option<u64>)>,
}

/// The steps `span.start..span.end` of the loop; rank 0 writes the metrics
/// and notes the step of each checkpoint it writes.
fn steps<S: Step>(
    step: &mut S,
    train: &dyn Dataset,
    transform: &Transform,
    opts: &RunOptions,
    extras: &mut dyn Extras<S>,
    observer: &mut dyn Observer,
    span: Span,
) -> Result<LoopEnd> {
    let Span {
        start,
        end,
        mut written,
    } = span;
    let (batch, comm) = (step.batch_size(), step.communicator());
    let sampler = EpochSampler {
        n: train.len(),
        batch,
        seed: step.seed(),
    };
    let ckpt = opts.checkpoint();
    let spe = sampler.steps_per_epoch() as f64;
    let seed = step.seed();
    // The loader has a pool of its own: this loop holds a worker of the
    // caller's pool while it waits for the next batch, so work sent to that
    // pool would wait forever when it has one thread (`--threads 1`, a
    // one-core machine).
    let loader_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .build()
        .map_err(|e| MimError::Input(format!("cannot start the data loader's threads: {e}")))?;
    // This rank's rows of every global batch (all of them on one process).
    let rows = step.local_rows();
    let (mut last, mut rate, mut interrupted) = (None, None::<f64>, false);
    let (t0, mut last_ckpt) = (Instant::now(), Instant::now());
    std::thread::scope(|scope| -> Result<()> {
        // Load the next batch while this one trains.
        let (tx, rx) = sync_channel(1);
        let (loader_pool, sampler, rows) = (&loader_pool, &sampler, &rows);
        scope.spawn(move || {
            for i in start..end {
                let all = sampler.indices(i);
                let mine: Vec<usize> = rows.iter().map(|&r| all[r]).collect();
                let batch =
                    loader_pool.install(|| load_batch(train, &mine, transform, epoch_seed(seed, sampler.epoch(i))));
                if tx.send((i, batch)).is_err() {
                    break;
                }
            }
        });
        let mut tick = Instant::now();
        for (i, loaded) in rx {
            let (images, labels) = loaded?;
            let stats = step.train(&images, &labels)?;
            let dt = tick.elapsed().as_secs_f64();
            let ips = batch as f64 / dt;
            let r = rate.map_or(ips, |r| 0.9 * r + 0.1 * ips);
            rate = Some(r);
            let stop_now = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            let overdue = opts.ckpt_interval.is_some_and(|d| last_ckpt.elapsed() >= d);
            // Ranks decide together (a signal may reach them a step apart,
            // and clocks differ): stop or save if any rank says so.
            let mut flags = [f32::from(u8::from(stop_now)), f32::from(u8::from(overdue))];
            comm.all_reduce_sum(&mut flags);
            let (stop_now, overdue) = (flags[0] > 0.0, flags[1] > 0.0);
            if let Some((metrics, _)) = written.as_mut() {
                observer.step(&stats, r);
                let mut line = serde_json::json!({
                    "step": stats.step,
                    "epoch": i as f64 / spe,
                    "loss": stats.loss,
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                    "images_per_s": ips,
                    "time_s": t0.elapsed().as_secs_f64(),
                });
                if comm.size() > 1 {
                    // Rank 0's time in the gradient sum (waiting for the
                    // slowest rank included).
                    line["reduce_s"] = stats.reduce_s.into();
                    line["ranks"] = comm.size().into();
                }
                metrics.line(&line)?;
            }
            extras.before_checkpoint(step, &stats, written.as_mut().map(|(m, _)| m), observer)?;
            if stats.step.is_multiple_of(opts.ckpt_every.max(1)) || stats.step == end || stop_now || overdue {
                last_ckpt = Instant::now();
                if comm.size() > 1 {
                    // Identical updates keep the copies identical; a
                    // checkpoint is where that is checked.
                    check_agreement(
                        comm.as_ref(),
                        &format!("model after step {} (the copies diverged)", stats.step),
                        step.state_fingerprint(),
                    )?;
                }
                if let Some((metrics, saved)) = written.as_mut() {
                    // The metrics up to here are on disk before the
                    // checkpoint that a resume truncates them back to.
                    metrics.sync()?;
                    step.save(&ckpt)?;
                    **saved = Some(stats.step);
                    if opts.report {
                        report::refresh(&opts.out)?;
                    }
                    observer.checkpoint(&ckpt, stats.step);
                }
            }
            extras.after_checkpoint(step, &stats, observer)?;
            // A step's images/s is its loading wait and training alone: the
            // checkpoint, pictures, k-NN and report just written are not.
            tick = Instant::now();
            last = Some(stats);
            if stop_now && stats.step < end {
                // Dropping the receiver ends the loader thread.
                interrupted = true;
                break;
            }
        }
        Ok(())
    })?;
    let stats = last.ok_or_else(|| MimError::Input("no step ran".into()))?;
    extras.finish(step, &stats, observer)?;
    Ok(LoopEnd {
        last: Some(stats),
        images_per_s: rate.unwrap_or(0.0),
        interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description names the generation and the units, and nothing absent.
    #[test]
    fn cpu_description_names_family_model_and_units() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n\
                    model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16\n\n\
                    processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(
            describe_cpu(info).as_deref(),
            Some("Intel(R) Xeon(R) Processor (family 6 model 207; avx2 avx512f avx512_bf16)")
        );
        let amd = "cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2 avx512f amx_tile\n";
        assert_eq!(
            describe_cpu(amd).as_deref(),
            Some("AMD EPYC 9R14 (family 25 model 17; avx2 avx512f amx_tile)")
        );
        assert_eq!(describe_cpu("model name\t: Bare\n").as_deref(), Some("Bare"));
        assert_eq!(describe_cpu("flags: avx2\n"), None);
    }

    /// A writer that takes `room` bytes, then fails as a full disk does.
    struct FullDisk {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"));
            }
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl CutBack for FullDisk {
        fn cut_back(&mut self, len: u64) -> std::io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    /// A disk that fills mid-line leaves the lines before it, whole.
    #[test]
    fn metrics_never_end_in_half_a_line() {
        let mut disk = FullDisk {
            data: Vec::new(),
            room: 30,
        };
        let mut len = 0;
        append_whole(&mut disk, &mut len, b"{\"step\": 1}\n").unwrap();
        let e = append_whole(&mut disk, &mut len, b"{\"step\": 2, \"loss\": 0.5}\n").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(disk.data, b"{\"step\": 1}\n");
        assert_eq!(len, 12);
    }
}
