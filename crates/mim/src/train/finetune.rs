//! Fine-tuning steps, checkpoints, and the run with per-epoch validation.

use crate::data::Dataset;
use crate::data::transform::{EpochSampler, load_batch};
use crate::error::{MimError, Result, ckpt_err, config_err, io_err};
use crate::eval::accuracy::{EvalReport, evaluate};
use crate::io::checkpoint::{TensorFile, json, parse_meta, restore_optimizer, store_optimizer};
use crate::model::classifier::Classifier;
use crate::model::layers::Module;
use crate::rng::MimRng;
use crate::run::pretrain::{RunOptions, check_run_start, truncate_metrics};
use crate::train::pretrain::{adamw, clip_checked};
use crate::train::recipe::{FinetuneConfig, mix_batch, param_groups};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tessera_tensor::optim::{AdamW, Optimizer};
use tessera_tensor::{GradStore, Tensor};

/// What one fine-tuning step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneStats {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
}

/// A classifier, its optimizer and its random state.
pub struct Finetuner {
    pub config: FinetuneConfig,
    pub model: Classifier,
    pub optimizer: AdamW,
    pub step: u64,
    /// Draws mixing and stochastic depth; saved in checkpoints.
    pub rng: MimRng,
    pub(crate) params: Vec<(String, Tensor)>,
}

impl Finetuner {
    /// Around a classifier (fresh, or with a pre-trained encoder loaded).
    pub fn new(config: FinetuneConfig, model: Classifier) -> Result<Finetuner> {
        config.validate()?;
        if model.config != config.model {
            return Err(config_err("the classifier's configuration differs from the recipe's"));
        }
        let params = model.parameters();
        let optimizer = adamw(param_groups(&config, &params), config.lr_at(0), config.betas);
        let rng = MimRng::seed_from_u64(config.seed ^ 0x6669_6e65_7475_6e65);
        Ok(Finetuner {
            config,
            model,
            optimizer,
            step: 0,
            rng,
            params,
        })
    }

    /// A fresh classifier from the recipe's seed (the supervised baseline).
    pub fn from_scratch(config: FinetuneConfig) -> Result<Finetuner> {
        let mut init = MimRng::seed_from_u64(config.seed);
        let model = Classifier::new(config.model.clone(), &mut init)?;
        Self::new(config, model)
    }

    /// One update on `imgs (B, C, H, W)` with their labels: mixing, smoothed
    /// soft targets, cross-entropy, backward, clipping, AdamW.
    pub fn train_step(&mut self, imgs: &Tensor, labels: &[u32]) -> Result<FinetuneStats> {
        let shape: [usize; 4] = imgs
            .shape()
            .try_into()
            .map_err(|_| MimError::Input(format!("images of shape {:?} are not (B, C, H, W)", imgs.shape())))?;
        if shape[0] != self.config.batch_size || labels.len() != shape[0] {
            return Err(MimError::Input(format!(
                "a step takes {} images and labels, got {} images and {} labels",
                self.config.batch_size,
                shape[0],
                labels.len()
            )));
        }
        let k = self.config.model.num_classes;
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= k) {
            return Err(MimError::Input(format!("label {bad} is not below the {k} classes")));
        }
        self.model.encoder.check_images(imgs)?;
        tessera_tensor::with_matmul_precision(self.config.precision.kernel(), || {
            let lr = self.config.lr_at(self.step);
            self.optimizer.set_lr(lr);
            let mut data = imgs.to_vec();
            let (q, _) = mix_batch(
                &mut data,
                shape,
                labels,
                k,
                self.config.label_smoothing,
                &self.config.mixup,
                &mut self.rng,
            );
            let x = Tensor::new(data, &shape)?;
            let logits = self.model.forward(&x, true, &mut self.rng)?;
            let loss = logits.soft_cross_entropy(&q)?;
            let value = loss.item()?;
            if !value.is_finite() {
                return Err(MimError::NonFinite {
                    step: self.step + 1,
                    what: "loss",
                    value,
                });
            }
            let mut grads = GradStore::new();
            loss.backward_into(&mut grads)?;
            let norm = clip_checked(&mut grads, &self.params, self.config.clip_grad, self.step + 1)?;
            self.optimizer.step(&grads)?;
            self.step += 1;
            Ok(FinetuneStats {
                step: self.step,
                loss: value,
                lr,
                grad_norm: norm,
            })
        })
    }
}

// ------------------------------------------------------------ checkpoints

impl Finetuner {
    /// Writes a checkpoint atomically: the classifier under MAE's names, the
    /// optimizer's moments, the step, the random state and the recipe.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = TensorFile::default();
        for (name, t) in self.model.named_tensors() {
            file.insert(name, &t);
        }
        let steps = store_optimizer(&mut file, &self.params, &self.optimizer);
        let meta = &mut file.metadata;
        meta.insert("format".into(), "pt".into());
        meta.insert("tessera.version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("tessera.finetune".into(), json(&self.config));
        meta.insert("tessera.step".into(), self.step.to_string());
        meta.insert("tessera.rng".into(), json(&self.rng));
        meta.insert("tessera.optimizer_steps".into(), json(&steps));
        file.save(path)
    }

    /// Continues a fine-tuning run from its checkpoint, on the exact
    /// trajectory of an uninterrupted one.
    pub fn resume(path: &Path) -> Result<Finetuner> {
        let file = TensorFile::load(path)?;
        let config: FinetuneConfig = parse_meta(&file, "tessera.finetune", path)?;
        let mut model = Classifier::new(config.model.clone(), &mut MimRng::seed_from_u64(0))?;
        load_tensors(&mut model, &file, path)?;
        let mut t = Finetuner::new(config, model)?;
        t.step = parse_meta(&file, "tessera.step", path)?;
        t.rng = parse_meta(&file, "tessera.rng", path)?;
        restore_optimizer(&file, path, &t.params, &mut t.optimizer)?;
        t.optimizer.set_lr(t.config.lr_at(t.step));
        Ok(t)
    }
}

/// Copies every tensor of `model` from `file`, refusing missing ones, other
/// shapes and non-finite values by name.
pub(crate) fn load_tensors(model: &mut Classifier, file: &TensorFile, path: &Path) -> Result<()> {
    let ckpt = |msg: String| ckpt_err(path, msg);
    for (name, t) in model.named_tensors() {
        let stored = file.get(&name, path)?;
        if stored.shape != t.shape() {
            return Err(ckpt(format!(
                "tensor '{name}' has shape {:?} in the file but {:?} in this classifier",
                stored.shape,
                t.shape()
            )));
        }
        if stored.data.iter().any(|v| !v.is_finite()) {
            return Err(ckpt(format!("tensor '{name}' holds a non-finite value")));
        }
        t.set_data(&stored.data)?;
    }
    Ok(())
}

// ------------------------------------------------------------ the run

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
        crate::io::checkpoint::remove_stale_temporaries(&opts.out);
        let metrics_path = opts.out.join("metrics.jsonl");
        if opts.overwrite && !opts.resume && metrics_path.exists() {
            std::fs::remove_file(&metrics_path).map_err(|err| io_err(&metrics_path, err))?;
        }
        let start = self.tuner.step;
        truncate_metrics(&metrics_path, start)?;
        let text = serde_json::to_string_pretty(&config).expect("a recipe serialises to JSON");
        crate::io::checkpoint::write_atomically(&opts.out.join("config.json"), text.as_bytes())?;
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
