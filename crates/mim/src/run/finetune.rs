//! Fine-tuning as a library call: [`FinetuneRun`] is the run loop of
//! [`crate::run`] around a [`Finetuner`], with a validation at the end of
//! every epoch (a `{"step", "epoch", "val_top1", "val_top5"}` line in
//! `metrics.jsonl`). `tessera finetune` is argument parsing and a progress
//! bar on top of it.

use crate::data::loader::EpochSampler;
use crate::data::transform::Transform;
use crate::data::{Dataset, check_labelled};
use crate::error::{MimError, Result, ckpt_err};
use crate::eval::accuracy::{EvalReport, evaluate};
use crate::run::{Extras, Metrics, Observer, RunEnd, RunOptions, Step, check_run_start, train_loop};
use crate::train::StepStats;
use crate::train::distributed::{Communicator, Solo};
use crate::train::finetune::Finetuner;
use std::path::Path;
use std::rc::Rc;
use tessera_tensor::Tensor;

/// A fine-tuning run: a [`Finetuner`], labelled training and validation
/// sets, and its output folder.
pub struct FinetuneRun<'a> {
    tuner: Finetuner,
    train: &'a dyn Dataset,
    val: &'a dyn Dataset,
    options: RunOptions,
    /// Evaluate on at most this many validation images each epoch.
    pub val_limit: Option<usize>,
}

impl<'a> FinetuneRun<'a> {
    /// A fresh run of `tuner` (or, with `options.resume`, the run saved in
    /// `options.out`, whose recipe must equal `tuner`'s but for its length).
    pub fn new(tuner: Finetuner, train: &'a dyn Dataset, val: &'a dyn Dataset, options: RunOptions) -> Result<Self> {
        let k = tuner.config.model.num_classes;
        check_labelled(train, k)?;
        check_labelled(val, k)?;
        check_run_start(&options, train, tuner.config.batch_size)?;
        crate::train::memory::check(
            "fine-tuning this model",
            crate::train::memory::finetune_bytes(&tuner.config),
            options.max_memory,
            "reduce `TrainConfig::batch_size` or `EncoderConfig::img_size` (or raise `RunOptions::max_memory`)",
        )?;
        let ckpt = options.checkpoint();
        let tuner = if options.resume {
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

    /// The fine-tuner (resumed or fresh).
    pub fn tuner(&self) -> &Finetuner {
        &self.tuner
    }

    /// The run's output options.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Trains to the configured length (or `stop_after`), validating after
    /// every epoch, writing the output folder as it goes and reporting to
    /// `observer`.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<RunEnd> {
        let config = &self.tuner.config;
        let train_t = config.train_transform();
        let mut validation = Validation {
            val: self.val,
            transform: config.eval_transform(),
            batch: config.batch_size.max(64),
            limit: self.val_limit,
            steps_per_epoch: EpochSampler {
                n: self.train.len(),
                batch: config.batch_size,
                seed: config.seed,
            }
            .steps_per_epoch() as u64,
            out: self.options.out.clone(),
            last: None,
        };
        let end = train_loop(
            &mut self.tuner,
            self.train,
            &train_t,
            &self.options,
            &mut validation,
            observer,
        )?;
        Ok(RunEnd {
            validation: validation.last,
            ..end.ended(&self.options)
        })
    }
}

impl Step for Finetuner {
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }
    fn seed(&self) -> u64 {
        self.config.seed
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn total_steps(&self) -> u64 {
        self.config.total_steps
    }
    fn train(&mut self, images: &Tensor, labels: &[Option<u32>]) -> Result<StepStats> {
        let labels: Vec<u32> = labels
            .iter()
            .map(|l| l.ok_or_else(|| MimError::Input("a training image has no label".into())))
            .collect::<Result<_>>()?;
        self.train_step(images, &labels)
    }
    fn save(&self, path: &Path) -> Result<()> {
        Finetuner::save(self, path)
    }
    fn config_json(&self) -> String {
        serde_json::to_string_pretty(&self.config).expect("a recipe serialises to JSON")
    }
    fn communicator(&self) -> Rc<dyn Communicator> {
        Rc::new(Solo)
    }
    fn local_rows(&self) -> Vec<usize> {
        (0..self.config.batch_size).collect()
    }
    fn state_fingerprint(&self) -> u64 {
        0
    }
}

/// The validation at the end of every epoch (and of the run).
struct Validation<'a> {
    val: &'a dyn Dataset,
    transform: Transform,
    batch: usize,
    limit: Option<usize>,
    steps_per_epoch: u64,
    /// The run folder (its `validation.json`).
    out: std::path::PathBuf,
    /// The last report.
    last: Option<EvalReport>,
}

impl Extras<Finetuner> for Validation<'_> {
    fn before_checkpoint(
        &mut self,
        tuner: &Finetuner,
        stats: &StepStats,
        metrics: Option<&mut Metrics>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let spe = self.steps_per_epoch;
        if !(stats.step.is_multiple_of(spe) || stats.step == tuner.config.total_steps) {
            return Ok(());
        }
        let epoch = stats.step.div_ceil(spe);
        let r = evaluate(
            &tuner.model,
            self.val,
            &self.transform,
            self.batch,
            self.limit,
            &mut |_, _| {},
        )?;
        if let Some(metrics) = metrics {
            metrics.line(
                &serde_json::json!({"step": stats.step, "epoch": epoch, "val_top1": r.top1, "val_top5": r.top5}),
            )?;
            // The whole report (its confusion matrix) for the run's report.
            let json = serde_json::to_vec(&r).expect("a report serialises to JSON");
            crate::io::safetensors::write_atomically(&self.out.join(crate::run::folder::VALIDATION), &json)?;
        }
        observer.evaluated(epoch, &r);
        self.last = Some(r);
        Ok(())
    }
}
