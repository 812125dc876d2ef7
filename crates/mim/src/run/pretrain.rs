//! Pre-training as a library call: the loop around [`Trainer`] — data order
//! and augmentation, loading the next batch while one trains, resuming,
//! checkpoints, metrics and reconstruction pictures. `tessera pretrain` is
//! argument parsing and a progress bar on top of [`Pretrainer`].
//!
//! ```no_run
//! use tessera_mim::data::Split;
//! use tessera_mim::data::synthetic::SyntheticDataset;
//! use tessera_mim::run::RunOptions;
//! use tessera_mim::run::pretrain::Pretrainer;
//! use tessera_mim::{DecoderConfig, Method, ModelConfig, PixelLoss, TargetConfig, TrainConfig, VitConfig};
//! # fn main() -> tessera_mim::Result<()> {
//! let model = ModelConfig {
//!     encoder: VitConfig::preset("vit-tiny", [32, 32], 4, 3)?.into(),
//!     method: Method::Mae { decoder: DecoderConfig::small() },
//!     target: TargetConfig::Pixels { loss: PixelLoss::Mse, norm_pix: true },
//! };
//! let train = SyntheticDataset::new(2000, [32, 32], 3, 0, Split::Train)?;
//! let test = SyntheticDataset::new(200, [32, 32], 3, 0, Split::Test)?;
//! let config = TrainConfig::mae(model, 64, 1000);
//! let mut run = Pretrainer::new(config, &train, &test, RunOptions::new("runs/mae"))?;
//! let end = run.run(&mut ())?; // `()` observes nothing; implement `Observer` for progress
//! println!("final loss {:?}", end.last.map(|s| s.loss));
//! # Ok(()) }
//! ```
//!
//! An output folder holds `checkpoint.safetensors` (written atomically every
//! `ckpt_every` steps and at the end), `metrics.jsonl` (one JSON object per
//! step), `config.json`, and `recon/step-NNNNNN.png` (fixed test images, every
//! `recon_every` steps and at the end). With `resume`, a run continues from
//! its checkpoint along the exact trajectory of an uninterrupted run.

use crate::config::TargetConfig;
use crate::data::Dataset;
use crate::data::loader::{EpochSampler, load_batch};
use crate::data::transform::{Augment, Transform};
use crate::error::{MimError, Result, ckpt_err, io_err};
use crate::io::picture::{NormPixView, render_rows, save_png};
use crate::model::masking::Mask;
use crate::model::mim::MimModel;
use crate::rng::MimRng;
use crate::run::{RunOptions, check_run_start, truncate_metrics};
use crate::train::distributed::{Communicator, check_agreement, fingerprint};
use crate::train::pretrain::{StepStats, TrainConfig, Trainer};
use rand::SeedableRng;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::time::Instant;
use tessera_tensor::Tensor;

/// What a run is about to do, for [`Observer::started`].
#[derive(Clone, Debug)]
pub struct RunStart {
    pub data_name: String,
    pub train_images: usize,
    pub steps_per_epoch: usize,
    /// The step the run starts from (0, or the checkpoint's).
    pub start_step: u64,
    pub total_steps: u64,
    /// The masking strategy, as `Mask` describes it.
    pub masking: String,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunEnd {
    /// The last step's statistics (`None`: the run was already complete).
    pub last: Option<StepStats>,
    /// Smoothed images per second over the run.
    pub images_per_s: f64,
    pub checkpoint: PathBuf,
    /// The final reconstruction picture.
    pub picture: Option<PathBuf>,
    /// The run stopped early because `RunOptions::stop` was set (its
    /// checkpoint is written; `resume` continues it).
    pub interrupted: bool,
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
    /// After a reconstruction picture was written.
    fn picture(&mut self, _path: &Path, _step: u64) {}
}

impl Observer for () {}

/// A pre-training run: a [`Trainer`], its data and its output folder.
pub struct Pretrainer<'a> {
    pub trainer: Trainer,
    train: &'a dyn Dataset,
    test: &'a dyn Dataset,
    options: RunOptions,
}

impl<'a> Pretrainer<'a> {
    /// A fresh run of `config` on `train` (pictures of `test` images), or with
    /// `options.resume` the run saved in `options.out` (its model must be
    /// `config`'s, its batch the same; its length becomes `config`'s, so a
    /// finished run can be extended; everything else is the checkpoint's). A codebook target's codebook is fitted
    /// here, on the patches of up to 4096 training images. Nothing is written
    /// until [`Pretrainer::run`].
    pub fn new(
        config: TrainConfig,
        train: &'a dyn Dataset,
        test: &'a dyn Dataset,
        options: RunOptions,
    ) -> Result<Self> {
        config.validate()?;
        check_run_start(&options, train, config.batch_size)?;
        let ckpt = options.checkpoint();
        if options.recon_count == 0 {
            return Err(MimError::Input("--recon-count must be at least 1".into()));
        }
        crate::train::memory::check(
            "pre-training this model",
            crate::train::memory::training_bytes(&config),
            options.max_memory,
            "reduce --batch, --img-size, --dim or --depth (or raise --max-memory)",
        )?;
        let trainer = if options.resume {
            if !ckpt.exists() {
                return Err(MimError::Input(format!(
                    "--resume: no checkpoint at {}",
                    ckpt.display()
                )));
            }
            let mut t = Trainer::resume_checked(&ckpt, &config.model)?;
            if t.config.batch_size != config.batch_size {
                return Err(ckpt_err(
                    &ckpt,
                    format!(
                        "was trained with batch {}, not {}",
                        t.config.batch_size, config.batch_size
                    ),
                ));
            }
            // A run may be given another length: extended (a finished run
            // continues), or shortened to no less than where it is.
            if config.total_steps != t.config.total_steps {
                if config.total_steps < t.step {
                    return Err(MimError::Input(format!(
                        "{} is at step {}; a length of {} steps would end before it",
                        ckpt.display(),
                        t.step,
                        config.total_steps
                    )));
                }
                t.config.total_steps = config.total_steps;
            }
            t
        } else {
            let mut model = MimModel::new(config.model.clone(), &mut MimRng::seed_from_u64(config.seed))?;
            if let TargetConfig::Codebook { .. } = config.model.target {
                let e = &config.model.encoder;
                let n = train.len().min(4096);
                let t = Transform {
                    size: e.img_size(),
                    channels: e.in_chans(),
                    augment: None,
                    norm: train.normalization().for_channels(e.in_chans()),
                };
                let (imgs, _) = load_batch(train, &(0..n).collect::<Vec<_>>(), &t, 0)?;
                model.fit_codebook(&imgs, 10, &mut MimRng::seed_from_u64(config.seed))?;
            }
            Trainer::with_model(config, model)?
        };
        Ok(Pretrainer {
            trainer,
            train,
            test,
            options,
        })
    }

    /// Trains data-parallel over `comm`'s ranks ([`Trainer::set_communicator`]):
    /// every rank builds the same `Pretrainer` (same command, data and
    /// checkpoint; checked when the run starts), each loads and trains on
    /// its rows of every batch, and rank 0 alone writes the output folder
    /// and reports to the observer.
    pub fn set_communicator(&mut self, comm: Rc<dyn Communicator>) -> Result<()> {
        self.trainer.set_communicator(comm)
    }

    /// The run's output options.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Trains to the configured number of steps (or `stop_after`), writing
    /// the output folder as it goes and reporting to `observer`.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<RunEnd> {
        let opts = self.options.clone();
        let config = self.trainer.config.clone();
        let ckpt = opts.checkpoint();
        let (train, test) = (self.train, self.test);
        let e = &config.model.encoder;
        let (size, chans) = (e.img_size(), e.in_chans());
        let start = self.trainer.step;
        let comm = self.trainer.communicator_rc();
        // Rank 0 writes the folder and reports; the others only train.
        let root = comm.rank() == 0;
        let end = opts
            .stop_after
            .map_or(config.total_steps, |s| s.clamp(start, config.total_steps));
        if comm.size() > 1 {
            let what = serde_json::json!({
                "config": &config,
                "data": train.name(),
                "images": train.len(),
                "augment": opts.augment,
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
                self.trainer.state_fingerprint(),
            )?;
        }
        if start >= config.total_steps {
            return Ok(RunEnd {
                last: None,
                images_per_s: 0.0,
                checkpoint: ckpt,
                picture: None,
                interrupted: false,
            });
        }
        let metrics_path = opts.out.join("metrics.jsonl");
        if root {
            self.prepare_folder(&config, &metrics_path)?;
        }
        let norm = train.normalization().for_channels(chans);
        // Fixed test images and masks for the pictures (rank 0's).
        let eval_t = Transform {
            size,
            channels: chans,
            augment: None,
            norm: norm.clone(),
        };
        let n_recon = if root { opts.recon_count.min(test.len()) } else { 0 };
        let (recon_imgs, _) = load_batch(test, &picture_indices(test, n_recon), &eval_t, 0)?;
        let recon_mask = Mask::sample(
            self.trainer.masking(),
            n_recon,
            e.grid(),
            &mut MimRng::seed_from_u64(1234),
        );
        let write_picture = |trainer: &Trainer, step: u64| -> Result<PathBuf> {
            let img = render_rows(
                &trainer.model,
                &recon_imgs,
                &recon_mask,
                &norm,
                NormPixView::VisibleStats,
                None,
            )?;
            let path = opts.out.join("recon").join(format!("step-{step:06}.png"));
            save_png(&img, &path)?;
            Ok(path)
        };
        let sampler = EpochSampler {
            n: train.len(),
            batch: config.batch_size,
            seed: config.seed,
        };
        let train_t = Transform {
            size,
            channels: chans,
            augment: opts.augment.then(Augment::mae),
            norm: norm.clone(),
        };
        let mut metrics = if root {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| io_err(&metrics_path, e))?;
            observer.started(&RunStart {
                data_name: train.name(),
                train_images: train.len(),
                steps_per_epoch: sampler.steps_per_epoch(),
                start_step: start,
                total_steps: config.total_steps,
                masking: self.trainer.masking().describe(),
            });
            Some(file)
        } else {
            None
        };

        let seed = config.seed;
        let mut last = None;
        let mut rate = None::<f64>;
        let t0 = Instant::now();
        // The loader has a pool of its own: this loop holds a worker of the
        // caller's pool while it waits for the next batch, so work sent to
        // that pool would wait forever when it has one thread (`--threads 1`,
        // a one-core machine).
        let loader_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .build()
            .map_err(|e| MimError::Input(format!("cannot start the data loader's threads: {e}")))?;
        // This rank's rows of every global batch (all of them on one process).
        let rows = self.trainer.local_rows();
        let trainer = &mut self.trainer;
        let mut interrupted = false;
        let mut last_ckpt = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            // Load the next batch while this one trains.
            let (tx, rx) = sync_channel(1);
            let (loader_pool, sampler, train_t, rows) = (&loader_pool, &sampler, &train_t, &rows);
            scope.spawn(move || {
                for step in start..end {
                    let epoch = step / sampler.steps_per_epoch() as u64;
                    let aug_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
                    let all = sampler.indices(step);
                    let mine: Vec<usize> = rows.iter().map(|&r| all[r]).collect();
                    let batch = loader_pool
                        .install(|| load_batch(train, &mine, train_t, aug_seed))
                        .map(|b| b.0);
                    if tx.send((step, batch)).is_err() {
                        break;
                    }
                }
            });
            let mut tick = Instant::now();
            for (step, batch) in rx {
                let batch: Tensor = batch?;
                let stats = trainer.train_step(&batch)?;
                let dt = tick.elapsed().as_secs_f64();
                tick = Instant::now();
                let ips = config.batch_size as f64 / dt;
                let r = rate.map_or(ips, |r| 0.9 * r + 0.1 * ips);
                rate = Some(r);
                let stop_now = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                let overdue = opts.ckpt_interval.is_some_and(|d| last_ckpt.elapsed() >= d);
                // Ranks decide together (a signal may reach them a step
                // apart, and clocks differ): stop or save if any rank says so.
                let mut flags = [f32::from(u8::from(stop_now)), f32::from(u8::from(overdue))];
                comm.all_reduce_sum(&mut flags);
                let (stop_now, overdue) = (flags[0] > 0.0, flags[1] > 0.0);
                if let Some(metrics) = metrics.as_mut() {
                    observer.step(&stats, r);
                    let mut line = serde_json::json!({
                        "step": stats.step,
                        "epoch": step as f64 / sampler.steps_per_epoch() as f64,
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
                    writeln!(metrics, "{line}").map_err(|e| io_err(&metrics_path, e))?;
                }
                if stats.step.is_multiple_of(opts.ckpt_every.max(1))
                    || stats.step == config.total_steps
                    || Some(stats.step) == opts.stop_after
                    || stop_now
                    || overdue
                {
                    last_ckpt = Instant::now();
                    if comm.size() > 1 {
                        // Identical updates keep the copies identical; a
                        // checkpoint is where that is checked.
                        check_agreement(
                            comm.as_ref(),
                            &format!("model after step {} (the copies diverged)", stats.step),
                            trainer.state_fingerprint(),
                        )?;
                    }
                    if let Some(metrics) = metrics.as_mut() {
                        // The metrics up to here are on disk before the checkpoint
                        // that a resume truncates them back to.
                        metrics.sync_data().map_err(|e| io_err(&metrics_path, e))?;
                        trainer.save(&ckpt)?;
                        observer.checkpoint(&ckpt, stats.step);
                    }
                }
                if root && opts.recon_every > 0 && stats.step % opts.recon_every == 0 {
                    let p = write_picture(trainer, stats.step)?;
                    observer.picture(&p, stats.step);
                }
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
        let picture = if root {
            let p = write_picture(&self.trainer, stats.step)?;
            observer.picture(&p, stats.step);
            Some(p)
        } else {
            None
        };
        Ok(RunEnd {
            last: Some(stats),
            images_per_s: rate.unwrap_or(0.0),
            checkpoint: ckpt,
            picture,
            interrupted,
        })
    }

    /// Rank 0's preparation of the output folder: stale temporaries gone,
    /// an overwritten run's files deleted, metrics past a resumed
    /// checkpoint dropped, `config.json` written.
    fn prepare_folder(&self, config: &TrainConfig, metrics_path: &Path) -> Result<()> {
        let opts = &self.options;
        let ckpt = opts.checkpoint();
        std::fs::create_dir_all(&opts.out).map_err(|e| io_err(&opts.out, e))?;
        // A write interrupted by a crash leaves its temporary file: remove it.
        crate::io::safetensors::remove_stale_temporaries(&opts.out);
        if opts.overwrite && !opts.resume {
            for old in [&ckpt, metrics_path] {
                if old.exists() {
                    std::fs::remove_file(old).map_err(|e| io_err(old, e))?;
                }
            }
            let recon = opts.out.join("recon");
            if recon.exists() {
                std::fs::remove_dir_all(&recon).map_err(|e| io_err(&recon, e))?;
            }
        }
        // Resuming: metrics past the checkpoint (written after it, before an
        // interruption) would be written again; drop them, and any partial line.
        truncate_metrics(metrics_path, self.trainer.step)?;
        let config_json = opts.out.join("config.json");
        let text = serde_json::to_string_pretty(config).expect("a configuration serialises to JSON");
        crate::io::safetensors::write_atomically(&config_json, text.as_bytes())
    }
}

/// Which `n` images of `ds` to picture: one per class in class order (then
/// round again) where the set has labels, else evenly spread over the set —
/// not the first `n`, which in a folder sorted by class are all one class.
pub fn picture_indices(ds: &dyn Dataset, n: usize) -> Vec<usize> {
    let len = ds.len();
    let n = n.min(len);
    let labels: Vec<Option<u32>> = (0..len).map(|i| ds.label(i)).collect();
    if labels.iter().all(Option::is_some) && len > 0 {
        // Indices of each class, in order; take the k-th of every class in turn.
        let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, l) in labels.iter().enumerate() {
            by_class.entry(l.expect("all labelled")).or_default().push(i);
        }
        let mut picked = Vec::with_capacity(n);
        for k in 0.. {
            let before = picked.len();
            for members in by_class.values() {
                if picked.len() < n
                    && let Some(&i) = members.get(k)
                {
                    picked.push(i);
                }
            }
            if picked.len() == n || picked.len() == before {
                break;
            }
        }
        return picked;
    }
    (0..n).map(|j| j * len / n.max(1)).collect()
}
