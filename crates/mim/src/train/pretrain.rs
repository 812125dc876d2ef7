//! Pre-training: MAE's optimisation recipe, deterministic steps, checkpoints
//! and exact resumption.
//!
//! * AdamW with β = (0.9, 0.95) and weight decay 0.05, except on biases, norms,
//!   tokens and positional embeddings (MAE's `param_groups_weight_decay`).
//! * Learning rate `base_lr · batch / 256` (the effective batch, counting
//!   gradient accumulation), linear warm-up per step, then a half-cycle cosine
//!   down to `min_lr` (MAE's `adjust_learning_rate`, per step).
//! * Optional clipping by global gradient norm, optional gradient accumulation.
//! * A non-finite loss or gradient stops the step before any update.
//! * Same seed and config → same losses to the bit, whatever the thread count
//!   (every kernel reduces in a fixed order).
//!
//! Call [`Trainer::train_step`] from a worker of a rayon pool
//! (`pool.install(|| ...)`), as the `tessera` command does: rayon then splits
//! every tensor the same way across cores step after step, so each core
//! finds its part in its own cache — about 10% faster than driving the pool
//! from another thread.

use crate::config::{ModelConfig, is_positive};
use crate::error::{MimError, Result, config_err};
use crate::model::layers::with_batch_shard;
use crate::model::masking::{Mask, MaskingConfig, MaskingStrategy};
use crate::model::mim::MimModel;
use crate::rng::MimRng;
use crate::train::StepStats;
use crate::train::distributed::{BUCKET_FLOATS, BucketPlan, Communicator, GradientSum, Solo, shard};
use crate::train::recipe::{Schedule, adamw, clip_checked, decays, precision_serde, warmup_cosine};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tessera_tensor::optim::{AdamW, Optimizer, ParamGroup};
use tessera_tensor::{GradStore, Precision, Tensor};

/// Everything that defines a training run (saved in every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub masking: MaskingConfig,
    /// Images per optimizer step (split into `accum_steps` micro-batches).
    pub batch_size: usize,
    pub accum_steps: usize,
    /// Learning rate per 256 images (MAE's `blr`); the absolute rate is
    /// `base_lr · batch_size / 256`.
    pub base_lr: f32,
    pub min_lr: f32,
    pub weight_decay: f32,
    pub betas: [f32; 2],
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f32>,
    pub seed: u64,
    /// Arithmetic of the matrix products.
    #[serde(default = "precision_serde::f32", with = "precision_serde")]
    pub precision: Precision,
}

impl TrainConfig {
    /// MAE's recipe for a model and step budget (warm-up: 5% of the steps).
    pub fn mae(model: ModelConfig, batch_size: usize, total_steps: u64) -> Self {
        TrainConfig {
            model,
            masking: MaskingConfig::mae_default(),
            batch_size,
            accum_steps: 1,
            base_lr: 1.5e-4,
            min_lr: 0.0,
            weight_decay: 0.05,
            betas: [0.9, 0.95],
            warmup_steps: total_steps / 20,
            total_steps,
            clip_grad: None,
            seed: 0,
            precision: Precision::F32,
        }
    }

    /// [`TrainConfig::mae`] on `images` training images, scheduled by
    /// `schedule` (length, warm-up and learning rate).
    pub fn scheduled(model: ModelConfig, batch_size: usize, schedule: &Schedule, images: usize) -> TrainConfig {
        let s = schedule.steps(images, batch_size);
        TrainConfig {
            warmup_steps: s.warmup,
            base_lr: s.base_lr,
            ..TrainConfig::mae(model, batch_size, s.total)
        }
    }

    /// Checks the options, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.masking
            .build(self.model.encoder.patch_size(), self.model.encoder.grid())?;
        if self.batch_size == 0 {
            return Err(config_err("batch size must be at least 1"));
        }
        if self.accum_steps == 0 || !self.batch_size.is_multiple_of(self.accum_steps) {
            return Err(config_err(format!(
                "batch size {} is not divisible into {} accumulation steps",
                self.batch_size, self.accum_steps
            )));
        }
        if !is_positive(self.base_lr) || !(self.min_lr == 0.0 || is_positive(self.min_lr)) {
            return Err(config_err(format!(
                "learning rates must be positive (base {}, min {})",
                self.base_lr, self.min_lr
            )));
        }
        if self.min_lr > self.peak_lr() {
            return Err(config_err(format!(
                "the minimum learning rate {} is above the peak {} (base {} · batch {} / 256): the rate would rise",
                self.min_lr,
                self.peak_lr(),
                self.base_lr,
                self.batch_size
            )));
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(config_err(format!("AdamW betas {:?} must be in [0, 1)", self.betas)));
        }
        if self.total_steps == 0 {
            return Err(config_err("at least one training step is needed (steps or epochs)"));
        }
        if self.warmup_steps > self.total_steps {
            return Err(config_err(format!(
                "warm-up {} must not exceed the {} total steps",
                self.warmup_steps, self.total_steps
            )));
        }
        if self.precision == Precision::Bf16 && !tessera_kernels::gemm::bf16_available() {
            return Err(config_err(
                "bf16 matrix products need Intel AMX (Sapphire Rapids or newer, and a Linux kernel that allows \
                 it) or AVX512-BF16 (AMD Zen 4, Intel Cooper Lake); use f32",
            ));
        }
        if let Some(c) = self.clip_grad
            && !is_positive(c)
        {
            return Err(config_err(format!("gradient clipping norm must be positive, got {c}")));
        }
        Ok(())
    }

    /// The peak learning rate, `base_lr · batch / 256`.
    pub fn peak_lr(&self) -> f32 {
        self.base_lr * self.batch_size as f32 / 256.0
    }

    /// The learning rate of update number `step` (0-based): linear warm-up
    /// from 0, then a half-cycle cosine to `min_lr`.
    pub fn lr_at(&self, step: u64) -> f32 {
        warmup_cosine(step, self.warmup_steps, self.total_steps, self.peak_lr(), self.min_lr)
    }
}

/// A model with its optimizer, masking strategy and random state.
///
/// Its parts are private: the optimizer's parameter groups, the gradient
/// buckets and the parameter list are built from the model and must stay
/// the model's (read them with the accessors; checkpoints are written and
/// resumed in [`crate::io::checkpoint`]).
pub struct Trainer {
    pub(crate) config: TrainConfig,
    pub(crate) model: MimModel,
    pub(crate) optimizer: AdamW,
    /// Updates done so far.
    pub(crate) step: u64,
    /// Draws masks (and dropout); saved in checkpoints.
    pub(crate) rng: MimRng,
    masking: Box<dyn MaskingStrategy>,
    pub(crate) params: Vec<(String, Tensor)>,
    /// The ranks this model is trained over ([`Solo`] unless
    /// [`Trainer::set_communicator`] says otherwise).
    comm: Rc<dyn Communicator>,
    /// How gradients are bucketed for the sum over ranks.
    buckets: BucketPlan,
    /// Start each bucket's sum during backward (else after it).
    overlap: bool,
}

impl Trainer {
    /// A new run: the model is initialised from `config.seed`.
    pub fn new(config: TrainConfig) -> Result<Trainer> {
        config.validate()?;
        let mut init_rng = MimRng::seed_from_u64(config.seed);
        let model = MimModel::new(config.model.clone(), &mut init_rng)?;
        Self::with_model(config, model)
    }

    /// A new run around an existing model (e.g. one whose codebook was fitted).
    pub fn with_model(config: TrainConfig, model: MimModel) -> Result<Trainer> {
        config.validate()?;
        if model.config != config.model {
            return Err(config_err(
                "the model's configuration differs from the training configuration's",
            ));
        }
        let masking = config
            .masking
            .build(config.model.encoder.patch_size(), config.model.encoder.grid())?;
        let params = model.parameters();
        let (decay, no_decay): (Vec<_>, Vec<_>) = params.iter().partition(|(n, t)| decays(n, t));
        let groups = vec![
            ParamGroup::new(decay.into_iter().map(|(_, t)| t.clone()).collect(), config.weight_decay),
            ParamGroup::new(no_decay.into_iter().map(|(_, t)| t.clone()).collect(), 0.0),
        ];
        let optimizer = adamw(groups, config.lr_at(0), config.betas);
        // The mask generator is seeded apart from the initialisation.
        let rng = MimRng::seed_from_u64(config.seed ^ 0x6d61_736b_5f72_6e67);
        Ok(Trainer {
            config,
            model,
            optimizer,
            step: 0,
            rng,
            masking,
            buckets: BucketPlan::new(&params, BUCKET_FLOATS),
            params,
            comm: Rc::new(Solo),
            overlap: true,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model being trained.
    pub fn model(&self) -> &MimModel {
        &self.model
    }

    /// Updates done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Gives the run another length: extended (a finished run continues),
    /// or shortened to no less than where it is.
    pub fn set_total_steps(&mut self, total_steps: u64) -> Result<()> {
        if total_steps < self.step {
            return Err(MimError::Input(format!(
                "the run is at step {}; a length of {total_steps} steps would end before it",
                self.step
            )));
        }
        self.config.total_steps = total_steps;
        Ok(())
    }

    /// With several ranks, start summing each bucket of gradients while
    /// backward still runs (`true`, the default) or only after it.
    pub fn set_overlap(&mut self, overlap: bool) {
        self.overlap = overlap;
    }

    /// Trains data-parallel over `comm`'s ranks from now on: each step this
    /// rank takes its rows of every (micro-)batch ([`Trainer::local_rows`])
    /// and gradients are summed over ranks before the update. Every rank must
    /// hold the same trainer state. Refused if a micro-batch has fewer images
    /// than there are ranks.
    pub fn set_communicator(&mut self, comm: Rc<dyn Communicator>) -> Result<()> {
        let micro = self.config.batch_size / self.config.accum_steps;
        if micro < comm.size() {
            return Err(config_err(format!(
                "a batch of {} images ({micro} per accumulation step) cannot be split over {} ranks: \
                 every rank needs at least one image",
                self.config.batch_size,
                comm.size()
            )));
        }
        self.comm = comm;
        Ok(())
    }

    /// The ranks this trainer trains over.
    pub fn communicator(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    pub(crate) fn communicator_rc(&self) -> Rc<dyn Communicator> {
        self.comm.clone()
    }

    /// A fingerprint of the trainable state (step, parameters, random
    /// state): equal on every rank of a data-parallel run, or they diverged.
    pub fn state_fingerprint(&self) -> u64 {
        let mut h = crate::train::distributed::fingerprint(&self.step.to_le_bytes());
        let rng = serde_json::to_string(&self.rng).unwrap_or_default();
        h ^= crate::train::distributed::fingerprint(rng.as_bytes()).rotate_left(1);
        for (i, (_, t)) in self.params.iter().enumerate() {
            let values = crate::train::distributed::fingerprint_iter(t.data().iter().flat_map(|v| v.to_le_bytes()));
            h ^= values.rotate_left((i % 63) as u32 + 2);
        }
        h
    }

    /// The rows of each global batch (positions `0..batch`) this rank
    /// trains on: its [`shard`] of every accumulation step's micro-batch.
    /// All of them on one process.
    pub fn local_rows(&self) -> Vec<usize> {
        let accum = self.config.accum_steps;
        let micro = self.config.batch_size / accum;
        let (rank, size) = (self.comm.rank(), self.comm.size());
        (0..accum)
            .flat_map(|i| shard(micro, rank, size).map(move |r| i * micro + r))
            .collect()
    }

    /// The masking strategy in use.
    pub fn masking(&self) -> &dyn MaskingStrategy {
        self.masking.as_ref()
    }

    /// Draws the mask for a batch of `batch` images.
    pub fn sample_mask(&mut self, batch: usize) -> Mask {
        Mask::sample(
            self.masking.as_ref(),
            batch,
            self.config.model.encoder.grid(),
            &mut self.rng,
        )
    }

    /// One optimizer update on `imgs (B, C, H, W)`: the configured batch on
    /// one process, this rank's [`Trainer::local_rows`] of it when
    /// data-parallel. Every rank returns the same statistics (the loss of
    /// the whole batch).
    pub fn train_step(&mut self, imgs: &Tensor) -> Result<StepStats> {
        let b = imgs.shape().first().copied().unwrap_or(0);
        let want = self.local_rows().len();
        if b != want {
            let of = if self.comm.size() > 1 {
                format!(" (rank {} of {})", self.comm.rank(), self.comm.size())
            } else {
                String::new()
            };
            return Err(MimError::Input(format!(
                "a step takes {want} images{of}, got a batch of {b}"
            )));
        }
        self.model.encoder.check_images(imgs)?;
        // The pool's other workers spin between this step's ops instead of
        // sleeping (one process only: ranks sharing a machine would lose
        // cores to it while they exchange gradients).
        let _awake = (self.comm.size() == 1).then(tessera_kernels::par::keep_awake);
        // Products of this step (forward and backward) run at the configured
        // precision: the engine's ops take it from this scope and hand it to
        // their kernels; the caller's setting is restored afterwards.
        tessera_tensor::with_matmul_precision(self.config.precision, || self.step_inner(imgs, b))
    }

    fn step_inner(&mut self, imgs: &Tensor, b: usize) -> Result<StepStats> {
        let lr = self.config.lr_at(self.step);
        self.optimizer.set_lr(lr);
        let accum = self.config.accum_steps;
        let micro = self.config.batch_size / accum;
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let mut grads = GradStore::new();
        let mut loss_sum = 0f64;
        let mut at = 0;
        // The sum over ranks (with one rank, nothing is ever started).
        let mut sum = GradientSum::new(&self.buckets, &self.params, self.comm.as_ref());
        let mut started_s = 0f64;
        for micro_step in 0..accum {
            let rows = shard(micro, rank, size);
            let part = if rows.len() == b {
                imgs.clone()
            } else {
                imgs.narrow(0, at, rows.len())?
            };
            at += rows.len();
            // The mask of the whole micro-batch, so that the mask stream
            // advances alike on every rank; this rank keeps its rows, and its
            // loss (a mean over its hidden patches) counts by its share of
            // the micro-batch's hidden patches.
            // (`sample_mask`'s body: `sum` above holds parts of `self`.)
            let whole = Mask::sample(
                self.masking.as_ref(),
                micro,
                self.config.model.encoder.grid(),
                &mut self.rng,
            );
            let (mask, share) = if size == 1 {
                (whole, 1.0)
            } else {
                let mine = whole.rows(rows.clone())?;
                let share = mine.hidden_total() as f64 / whole.hidden_total().max(1) as f64;
                (mine, share)
            };
            let (model, rng) = (&self.model, &mut self.rng);
            let out = with_batch_shard(rows.start, micro, || model.forward(&part, &mask, true, rng))?;
            let loss = out.loss.item()?;
            // With several ranks a bad loss is found after the sum below, by
            // every rank at once (a rank that stopped alone would leave the
            // others waiting for its gradients).
            if size == 1 {
                check_loss(loss, self.step + 1)?;
            }
            loss_sum += loss as f64 * share;
            let weight = share / accum as f64;
            let scaled = if weight == 1.0 {
                out.loss
            } else {
                out.loss.mul_scalar(weight as f32)
            };
            if size > 1 && self.overlap && micro_step + 1 == accum {
                // The last backward of the step: each bucket's sum starts as
                // soon as its gradients are complete.
                scaled.backward_into_with(&mut grads, &mut |leaf, g| {
                    let t = std::time::Instant::now();
                    sum.leaf_ready(leaf, g);
                    started_s += t.elapsed().as_secs_f64();
                })?;
            } else {
                scaled.backward_into(&mut grads)?;
            }
        }
        let mut loss = (loss_sum / accum as f64) as f32;
        let mut reduce_s = 0.0;
        if size > 1 {
            let t0 = std::time::Instant::now();
            loss = sum.finish(&mut grads, loss)?;
            reduce_s = (t0.elapsed().as_secs_f64() + started_s) as f32;
            check_loss(loss, self.step + 1)?;
        }
        let norm = clip_checked(&mut grads, &self.params, self.config.clip_grad, self.step + 1)?;
        self.optimizer.step(&grads)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
            reduce_s,
        })
    }
}

/// A non-finite loss at update `step` is an error (before any update).
fn check_loss(loss: f32, step: u64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(MimError::NonFinite {
            step,
            what: "loss",
            value: loss,
        })
    }
}

impl TrainConfig {
    /// One line for logs: "ViT 192/12/3 (patch 4, 32x32x3), MAE, decoder
    /// 128/4/4, target normalised Mse on pixels, F32 products".
    pub fn describe(&self) -> String {
        let e = &self.model.encoder;
        let method = match &self.model.method {
            crate::config::Method::Mae { decoder } => format!(
                "MAE, decoder {}/{}/{}",
                decoder.embed_dim, decoder.depth, decoder.num_heads
            ),
            crate::config::Method::SimMim => "SimMIM".to_string(),
        };
        let target = match self.model.target {
            crate::config::TargetConfig::Pixels { loss, norm_pix } => {
                format!("{}{:?} on pixels", if norm_pix { "normalised " } else { "" }, loss)
            }
            crate::config::TargetConfig::Codebook { size, .. } => format!("codebook of {size}"),
        };
        format!(
            "{}, {method}, target {target}, {:?} products",
            e.describe(),
            self.precision
        )
    }
}
