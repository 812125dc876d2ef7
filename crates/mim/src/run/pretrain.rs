//! Pre-training as a library call: [`PretrainRun`] is the run loop of
//! [`crate::run`] around a [`Trainer`], with reconstruction pictures of
//! fixed test images. `tessera pretrain` is argument parsing and a progress
//! bar on top of it.
//!
//! ```no_run
//! use tessera_mim::data::Split;
//! use tessera_mim::data::synthetic::SyntheticDataset;
//! use tessera_mim::run::RunOptions;
//! use tessera_mim::run::pretrain::PretrainRun;
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
//! let mut run = PretrainRun::new(config, &train, &test, RunOptions::new("runs/mae"))?;
//! let end = run.run(&mut ())?; // `()` observes nothing; implement `run::Observer` for progress
//! println!("final loss {:?}", end.last.map(|s| s.loss));
//! # Ok(()) }
//! ```
//!
//! Besides what every run writes, a pre-training run writes
//! `recon/step-NNNNNN.png`: fixed test images, masked and reconstructed,
//! and `attention/step-NNNNNN.png`: the encoder's attention maps of the same
//! images ([`crate::eval::attention`]), every [`Pictures::every`] steps and
//! at the end.

use crate::config::TargetConfig;
use crate::data::Dataset;
use crate::data::loader::load_batch;
use crate::data::transform::{Augment, Transform};
use crate::error::{MimError, Result, ckpt_err};
use crate::io::picture::{NormPixView, render_rows, save_png};
use crate::model::masking::Mask;
use crate::model::mim::MimModel;
use crate::rng::MimRng;
use crate::run::folder::{ATTENTION, RECON};
use crate::run::{Extras, Observer, RunEnd, RunOptions, Step, check_run_start, train_loop};
use crate::train::StepStats;
use crate::train::distributed::Communicator;
use crate::train::pretrain::{TrainConfig, Trainer};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tessera_tensor::Tensor;

/// The reconstruction pictures of a pre-training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pictures {
    /// A picture every this many steps (0: only at the end).
    pub every: u64,
    /// Test images in each picture.
    pub count: usize,
}

impl Default for Pictures {
    /// Every 100 steps, 6 images.
    fn default() -> Self {
        Pictures { every: 100, count: 6 }
    }
}

/// Representation quality during pre-training: a k-NN classifier on the
/// frozen encoder's mean-pooled features every `every` steps (0: off), the
/// InstDisc/DINO protocol — cosine similarity, the `k` nearest training
/// features vote for their class with weight `exp(sim / temperature)`. The
/// cost is bounded: the same `train` training images (the memory bank) and
/// `test` test images each time, class-balanced and spread over the sets
/// ([`picture_indices`]), features in batches. Each evaluation writes
/// `{"step", "knn_top1", "knn_s", "knn_train", "knn_test"}` into
/// `metrics.jsonl` (`knn_s`: the seconds it took).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnlineKnn {
    pub every: u64,
    pub train: usize,
    pub test: usize,
    pub k: usize,
    pub temperature: f32,
}

impl Default for OnlineKnn {
    /// Off; when on, 1000 training and 500 test images, k = 20, T = 0.07.
    fn default() -> Self {
        OnlineKnn {
            every: 0,
            train: 1000,
            test: 500,
            k: 20,
            temperature: 0.07,
        }
    }
}

/// A pre-training run: a [`Trainer`], its data and its output folder.
pub struct PretrainRun<'a> {
    trainer: Trainer,
    train: &'a dyn Dataset,
    test: &'a dyn Dataset,
    options: RunOptions,
    /// MAE's random resized crops and flips on the training images (on by
    /// default).
    pub augment: bool,
    /// The reconstruction pictures.
    pub pictures: Pictures,
    /// The online k-NN (off by default).
    pub knn: OnlineKnn,
}

impl<'a> PretrainRun<'a> {
    /// A fresh run of `config` on `train` (pictures of `test` images), or with
    /// `options.resume` the run saved in `options.out` (its model must be
    /// `config`'s, its batch the same; its length becomes `config`'s, so a
    /// finished run can be extended; everything else is the checkpoint's). A
    /// codebook target's codebook is fitted here, on the patches of up to
    /// 4096 training images. Nothing is written until [`PretrainRun::run`].
    pub fn new(
        config: TrainConfig,
        train: &'a dyn Dataset,
        test: &'a dyn Dataset,
        options: RunOptions,
    ) -> Result<Self> {
        config.validate()?;
        check_run_start(&options, train, config.batch_size)?;
        let ckpt = options.checkpoint();
        crate::train::memory::check(
            "pre-training this model",
            crate::train::memory::training_bytes(&config),
            options.max_memory,
            "reduce `TrainConfig::batch_size`, `EncoderConfig::img_size`, `VitConfig::embed_dim` or \
             `VitConfig::depth` (or raise `RunOptions::max_memory`)",
        )?;
        let trainer = if options.resume {
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
            if config.total_steps < t.step {
                return Err(MimError::Input(format!(
                    "{} is at step {}; a length of {} steps would end before it",
                    ckpt.display(),
                    t.step,
                    config.total_steps
                )));
            }
            t.set_total_steps(config.total_steps)?;
            t
        } else {
            let mut model = MimModel::new(config.model.clone(), &mut MimRng::seed_from_u64(config.seed))?;
            if let TargetConfig::Codebook { .. } = config.model.target {
                let n = train.len().min(4096);
                let t = Transform::eval(&config.model.encoder, &train.normalization());
                let (imgs, _) = load_batch(train, &(0..n).collect::<Vec<_>>(), &t, 0)?;
                model.fit_codebook(&imgs, 10, &mut MimRng::seed_from_u64(config.seed))?;
            }
            Trainer::with_model(config, model)?
        };
        Ok(PretrainRun {
            trainer,
            train,
            test,
            options,
            augment: true,
            pictures: Pictures::default(),
            knn: OnlineKnn::default(),
        })
    }

    /// The trainer (resumed or fresh).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The run's output options.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Trains data-parallel over `comm`'s ranks ([`Trainer::set_communicator`]):
    /// every rank builds the same `PretrainRun` (same command, data and
    /// checkpoint; checked when the run starts), each loads and trains on
    /// its rows of every batch, and rank 0 alone writes the output folder
    /// and reports to the observer.
    pub fn set_communicator(&mut self, comm: Rc<dyn Communicator>) -> Result<()> {
        self.trainer.set_communicator(comm)
    }

    /// With several ranks, sum gradients while backward runs (the default)
    /// or after it ([`Trainer::set_overlap`]).
    pub fn set_overlap(&mut self, overlap: bool) {
        self.trainer.set_overlap(overlap);
    }

    /// Trains to the configured number of steps (or `stop_after`), writing
    /// the output folder as it goes and reporting to `observer`.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<RunEnd> {
        if self.pictures.count == 0 {
            return Err(MimError::Input("`Pictures::count` must be at least 1".into()));
        }
        let e = &self.trainer.config.model.encoder;
        let norm = self.train.normalization().for_channels(e.in_chans());
        let eval = Transform::eval(e, &norm);
        let train_t = eval.clone().augmented(self.augment.then(Augment::mae));
        // Fixed test images and masks for the pictures (rank 0's).
        let root = self.trainer.communicator().rank() == 0;
        let n = if root {
            self.pictures.count.min(self.test.len())
        } else {
            0
        };
        let (images, _) = load_batch(self.test, &picture_indices(self.test, n), &eval, 0)?;
        let mask = Mask::sample(self.trainer.masking(), n, e.grid(), &mut MimRng::seed_from_u64(1234));
        let pictures = PictureWriter {
            images,
            mask,
            norm,
            every: self.pictures.every,
            out: self.options.out.clone(),
            root,
            last: None,
        };
        let knn = if root && self.knn.every > 0 {
            Some(KnnWatch::new(self.knn, self.train, self.test, eval.clone())?)
        } else {
            None
        };
        let mut extras = PretrainExtras { pictures, knn };
        let end = train_loop(
            &mut self.trainer,
            self.train,
            &train_t,
            &self.options,
            &mut extras,
            observer,
        )?;
        Ok(RunEnd {
            picture: extras.pictures.last,
            ..end.ended(&self.options)
        })
    }
}

impl Step for Trainer {
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
    fn train(&mut self, images: &Tensor, _labels: &[Option<u32>]) -> Result<StepStats> {
        self.train_step(images)
    }
    fn save(&self, path: &Path) -> Result<()> {
        Trainer::save(self, path)
    }
    fn config_json(&self) -> String {
        serde_json::to_string_pretty(&self.config).expect("a configuration serialises to JSON")
    }
    fn communicator(&self) -> Rc<dyn Communicator> {
        self.communicator_rc()
    }
    fn local_rows(&self) -> Vec<usize> {
        Trainer::local_rows(self)
    }
    fn state_fingerprint(&self) -> u64 {
        Trainer::state_fingerprint(self)
    }
}

/// Writes the reconstruction pictures into `out/recon/` (rank 0 only).
struct PictureWriter {
    /// The fixed test images `(N, C, H, W)` and their masks.
    images: Tensor,
    mask: Mask,
    norm: crate::data::Normalization,
    every: u64,
    out: PathBuf,
    root: bool,
    /// The last picture written.
    last: Option<PathBuf>,
}

impl PictureWriter {
    fn write(&mut self, trainer: &Trainer, step: u64, observer: &mut dyn Observer) -> Result<()> {
        let img = render_rows(
            &trainer.model,
            &self.images,
            &self.mask,
            &self.norm,
            NormPixView::VisibleStats,
            None,
        )?;
        let path = self.out.join(RECON).join(format!("step-{step:06}.png"));
        save_png(&img, &path)?;
        observer.picture(&path, step);
        self.last = Some(path);
        // What the encoder attends to in the same images, unmasked.
        let maps = crate::eval::attention::encoder_attention(&trainer.model.encoder, &self.images)?;
        let img = crate::io::picture::attention_rows(&maps, &self.images, &self.norm, None)?;
        save_png(&img, &self.out.join(ATTENTION).join(format!("step-{step:06}.png")))?;
        Ok(())
    }
}

impl Extras<Trainer> for PictureWriter {
    fn folders(&self) -> &[&str] {
        &[RECON, ATTENTION]
    }
    fn after_checkpoint(&mut self, trainer: &Trainer, stats: &StepStats, observer: &mut dyn Observer) -> Result<()> {
        if self.root && self.every > 0 && stats.step.is_multiple_of(self.every) {
            self.write(trainer, stats.step, observer)?;
        }
        Ok(())
    }
    fn finish(&mut self, trainer: &Trainer, stats: &StepStats, observer: &mut dyn Observer) -> Result<()> {
        if self.root {
            self.write(trainer, stats.step, observer)?;
        }
        Ok(())
    }
}

/// The online k-NN of a run: its fixed subsets and settings (rank 0).
struct KnnWatch<'a> {
    cfg: OnlineKnn,
    train: &'a dyn Dataset,
    test: &'a dyn Dataset,
    train_rows: Vec<usize>,
    test_rows: Vec<usize>,
    classes: usize,
    transform: Transform,
}

impl<'a> KnnWatch<'a> {
    fn new(cfg: OnlineKnn, train: &'a dyn Dataset, test: &'a dyn Dataset, transform: Transform) -> Result<Self> {
        let classes = train.class_names().len();
        if classes < 2 || test.class_names().len() != classes {
            return Err(MimError::Input(format!(
                "the online k-NN needs labelled data with the same classes in both splits; \
                 {} has {} classes, {} has {}",
                train.name(),
                classes,
                test.name(),
                test.class_names().len()
            )));
        }
        if cfg.k == 0
            || cfg.train == 0
            || cfg.test == 0
            || cfg.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(MimError::Input(format!(
                "the online k-NN needs k, subsets and a temperature above 0, got {cfg:?}"
            )));
        }
        Ok(KnnWatch {
            train_rows: picture_indices(train, cfg.train),
            test_rows: picture_indices(test, cfg.test),
            cfg,
            train,
            test,
            classes,
            transform,
        })
    }

    /// Top-1 of the k-NN on the current encoder, and the seconds it took.
    fn measure(&self, model: &MimModel) -> Result<(f32, f64)> {
        use crate::eval::probe::{encoder_features_of, knn};
        let t = std::time::Instant::now();
        let pool = crate::config::Pool::Mean;
        let bank = encoder_features_of(model, self.train, &self.train_rows, &self.transform, pool, 256)?;
        let queries = encoder_features_of(model, self.test, &self.test_rows, &self.transform, pool, 256)?;
        let top1 = knn(&bank, &queries, self.classes, self.cfg.k, self.cfg.temperature)?;
        Ok((top1, t.elapsed().as_secs_f64()))
    }
}

/// What a pre-training run adds to the loop: pictures and the online k-NN.
struct PretrainExtras<'a> {
    pictures: PictureWriter,
    knn: Option<KnnWatch<'a>>,
}

impl Extras<Trainer> for PretrainExtras<'_> {
    fn folders(&self) -> &[&str] {
        self.pictures.folders()
    }
    fn before_checkpoint(
        &mut self,
        trainer: &Trainer,
        stats: &StepStats,
        metrics: Option<&mut crate::run::Metrics>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        if let (Some(watch), Some(metrics)) = (&self.knn, metrics)
            && stats.step.is_multiple_of(watch.cfg.every)
        {
            let (top1, secs) = watch.measure(&trainer.model)?;
            metrics.line(&serde_json::json!({
                "step": stats.step,
                "knn_top1": top1,
                "knn_s": secs,
                "knn_train": watch.train_rows.len(),
                "knn_test": watch.test_rows.len(),
            }))?;
            observer.knn(stats.step, top1);
        }
        Ok(())
    }
    fn after_checkpoint(&mut self, trainer: &Trainer, stats: &StepStats, observer: &mut dyn Observer) -> Result<()> {
        self.pictures.after_checkpoint(trainer, stats, observer)
    }
    fn finish(&mut self, trainer: &Trainer, stats: &StepStats, observer: &mut dyn Observer) -> Result<()> {
        self.pictures.finish(trainer, stats, observer)
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
