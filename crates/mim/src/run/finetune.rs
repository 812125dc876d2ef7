//! Fine-tuning as a library call: the loop around a [`Finetuner`] with a
//! validation after every epoch.

use crate::data::Dataset;
use crate::data::loader::{EpochSampler, load_batch};
use crate::error::{MimError, Result, ckpt_err, io_err};
use crate::eval::accuracy::{EvalReport, evaluate};
use crate::run::{RunOptions, check_run_start, truncate_metrics};
use crate::train::finetune::{FinetuneStats, Finetuner};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a fine-tuning run reports as it goes; `()` observes nothing.
pub trait FinetuneObserver {
    /// Before the first step: (start step, total steps, steps per epoch).
    fn started(&mut self, _start: u64, _total: u64, _steps_per_epoch: usize) {}
    fn step(&mut self, _stats: &FinetuneStats, _images_per_s: f64) {}
    /// After each epoch's evaluation.
    fn evaluated(&mut self, _epoch: u64, _report: &EvalReport) {}
    fn checkpoint(&mut self, _path: &Path, _step: u64) {}
}

impl FinetuneObserver for () {}

/// How a fine-tuning run ended.
#[derive(Clone, Debug)]
pub struct FinetuneEnd {
    pub last: Option<FinetuneStats>,
    /// The evaluation after the last epoch (or at the end).
    pub report: Option<EvalReport>,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

/// A fine-tuning run: a [`Finetuner`], labelled training and validation
/// sets, and its output folder (`checkpoint.safetensors`, `metrics.jsonl`
/// with a line per step and one `val_top1` line per epoch, `config.json`).
pub struct FinetuneRun<'a> {
    pub tuner: Finetuner,
    train: &'a dyn Dataset,
    val: &'a dyn Dataset,
    options: RunOptions,
    /// Evaluate on at most this many validation images each epoch.
    pub val_limit: Option<usize>,
}

/// Refuses a data set without labels or with another class count.
pub fn check_labelled(ds: &dyn Dataset, classes: usize) -> Result<()> {
    let names = ds.class_names();
    if names.is_empty() || ds.label(0).is_none() {
        return Err(MimError::Input(format!(
            "{} has no labels: fine-tuning and evaluation need a labelled data set",
            ds.name()
        )));
    }
    if names.len() != classes {
        return Err(MimError::Input(format!(
            "{} has {} classes, but the classifier has {classes}",
            ds.name(),
            names.len()
        )));
    }
    Ok(())
}

impl<'a> FinetuneRun<'a> {
    /// A fresh run of `tuner` (or, with `options.resume`, the run saved in
    /// `options.out`, whose recipe must equal `tuner`'s but for its length).
    pub fn new(tuner: Finetuner, train: &'a dyn Dataset, val: &'a dyn Dataset, options: RunOptions) -> Result<Self> {
        let k = tuner.config.model.num_classes;
        check_labelled(train, k)?;
        check_labelled(val, k)?;
        check_run_start(&options, train, tuner.config.batch_size)?;
        let ckpt = options.checkpoint();
        let tuner = if options.resume && ckpt.exists() {
            let mut old = Finetuner::resume(&ckpt)?;
            let mut want = tuner.config.clone();
            want.total_steps = old.config.total_steps;
            want.warmup_steps = old.config.warmup_steps;
            if want != old.config {
                return Err(ckpt_err(
                    &ckpt,
                    "was written by another fine-tuning recipe or model than the one requested",
                ));
            }
            if tuner.config.total_steps < old.step {
                return Err(MimError::Input(format!(
                    "{} is at step {}; {} steps would end before it",
                    ckpt.display(),
                    old.step,
                    tuner.config.total_steps
                )));
            }
            old.config.total_steps = tuner.config.total_steps;
            old
        } else {
            tuner
        };
        Ok(FinetuneRun {
            tuner,
            train,
            val,
            options,
            val_limit: None,
        })
    }

    /// Trains to the configured length, evaluating after every epoch.
    pub fn run(&mut self, observer: &mut dyn FinetuneObserver) -> Result<FinetuneEnd> {
        let opts = self.options.clone();
        let config = self.tuner.config.clone();
        let ckpt = opts.checkpoint();
        let (train, val) = (self.train, self.val);
        std::fs::create_dir_all(&opts.out).map_err(|err| io_err(&opts.out, err))?;
        crate::io::safetensors::remove_stale_temporaries(&opts.out);
        let metrics_path = opts.out.join("metrics.jsonl");
        if opts.overwrite && !opts.resume && metrics_path.exists() {
            std::fs::remove_file(&metrics_path).map_err(|err| io_err(&metrics_path, err))?;
        }
        let start = self.tuner.step;
        truncate_metrics(&metrics_path, start)?;
        let text = serde_json::to_string_pretty(&config).expect("a recipe serialises to JSON");
        crate::io::safetensors::write_atomically(&opts.out.join("config.json"), text.as_bytes())?;
        let (train_t, eval_t) = (config.train_transform(), config.eval_transform());
        let sampler = EpochSampler {
            n: train.len(),
            batch: config.batch_size,
            seed: config.seed,
        };
        let spe = sampler.steps_per_epoch() as u64;
        let mut metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|err| io_err(&metrics_path, err))?;
        observer.started(start, config.total_steps, spe as usize);
        let end = opts
            .stop_after
            .map_or(config.total_steps, |s| s.clamp(start, config.total_steps));
        let (mut last, mut report, mut interrupted) = (None, None, false);
        let (mut rate, t0, mut last_ckpt) = (None::<f64>, Instant::now(), Instant::now());
        let val_limit = self.val_limit;
        let tuner = &mut self.tuner;
        // Each epoch ends with the validation accuracy, a metrics line of its own.
        let evaluate_now =
            |tuner: &Finetuner, epoch: u64, step: u64, metrics: &mut std::fs::File| -> Result<EvalReport> {
                let r = evaluate(
                    &tuner.model,
                    val,
                    &eval_t,
                    config.batch_size.max(64),
                    val_limit,
                    &mut |_, _| {},
                )?;
                let line = serde_json::json!({"step": step, "epoch": epoch, "val_top1": r.top1, "val_top5": r.top5});
                writeln!(metrics, "{line}").map_err(|err| io_err(&metrics_path, err))?;
                Ok(r)
            };
        for step in start..end {
            let epoch = step / spe;
            let aug_seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
            let tick = Instant::now();
            let (imgs, labels) = load_batch(train, &sampler.indices(step), &train_t, aug_seed)?;
            let labels: Vec<u32> = labels
                .into_iter()
                .map(|l| l.ok_or_else(|| MimError::Input(format!("{} has an unlabelled image", train.name()))))
                .collect::<Result<_>>()?;
            let stats = tuner.train_step(&imgs, &labels)?;
            let ips = config.batch_size as f64 / tick.elapsed().as_secs_f64();
            let r = rate.map_or(ips, |r| 0.9 * r + 0.1 * ips);
            rate = Some(r);
            observer.step(&stats, r);
            let line = serde_json::json!({
                "step": stats.step,
                "epoch": step as f64 / spe as f64,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "images_per_s": ips,
                "time_s": t0.elapsed().as_secs_f64(),
            });
            writeln!(metrics, "{line}").map_err(|err| io_err(&metrics_path, err))?;
            if stats.step.is_multiple_of(spe) || stats.step == config.total_steps {
                let epoch = stats.step.div_ceil(spe);
                let r = evaluate_now(tuner, epoch, stats.step, &mut metrics)?;
                observer.evaluated(epoch, &r);
                report = Some(r);
            }
            let stop_now = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            let overdue = opts.ckpt_interval.is_some_and(|d| last_ckpt.elapsed() >= d);
            if stats.step.is_multiple_of(opts.ckpt_every.max(1))
                || stats.step.is_multiple_of(spe)
                || stats.step == end
                || stop_now
                || overdue
            {
                last_ckpt = Instant::now();
                metrics.sync_data().map_err(|err| io_err(&metrics_path, err))?;
                tuner.save(&ckpt)?;
                observer.checkpoint(&ckpt, stats.step);
            }
            last = Some(stats);
            if stop_now && stats.step < end {
                interrupted = true;
                break;
            }
        }
        Ok(FinetuneEnd {
            last,
            report,
            checkpoint: ckpt,
            interrupted,
        })
    }
}
