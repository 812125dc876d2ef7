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
use crate::masking::{Mask, MaskingConfig, MaskingStrategy, MimRng};
use crate::model::MimModel;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tessera_tensor::Precision;
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, clip_grad_norm, grad_norm};
use tessera_tensor::{GradStore, Tensor};

/// The arithmetic of matrix products during training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatmulPrecision {
    /// f32 throughout (MAE's numerics).
    #[default]
    F32,
    /// Mixed precision: matrix products take bfloat16 inputs and accumulate in
    /// f32 (Intel AMX, or AVX512-BF16); weights, activations, gradients and AdamW stay f32.
    Bf16,
}

impl MatmulPrecision {
    pub(crate) fn kernel(self) -> Precision {
        match self {
            MatmulPrecision::F32 => Precision::F32,
            MatmulPrecision::Bf16 => Precision::Bf16,
        }
    }
}

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
    #[serde(default)]
    pub precision: MatmulPrecision,
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
            precision: MatmulPrecision::F32,
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
        if self.precision == MatmulPrecision::Bf16 && !tessera_kernels::gemm::bf16_available() {
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

/// MAE's schedule (`lr_sched.adjust_learning_rate`, per step): the rate of
/// update `step` (0-based) rises linearly from 0 to `peak` over `warmup`
/// steps, then follows a half-cycle cosine to `min` at `total`.
pub fn warmup_cosine(step: u64, warmup: u64, total: u64, peak: f32, min: f32) -> f32 {
    let (peak, min) = (peak as f64, min as f64);
    let (s, w, t) = (step as f64, warmup as f64, total as f64);
    let lr = if s < w {
        peak * s / w
    } else {
        let progress = if t > w { ((s - w) / (t - w)).min(1.0) } else { 1.0 };
        min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    };
    lr as f32
}

/// MAE's rule: no weight decay on 1-D tensors (biases, norms, layer scales)
/// and on tokens and positional embeddings; nor, as BEiT and SimMIM, on
/// relative position bias tables.
pub fn decays(name: &str, t: &Tensor) -> bool {
    let skip = ["cls_token", "mask_token", "pos_embed", "decoder_pos_embed"];
    // The last part of the name (SimMIM's carry an `encoder.` prefix).
    let leaf = name.rsplit('.').next().unwrap_or(name);
    t.rank() > 1 && !name.ends_with(".bias") && leaf != "relative_position_bias_table" && !skip.contains(&leaf)
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Number of updates done after this one.
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// A model with its optimizer, masking strategy and random state.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: MimModel,
    pub optimizer: AdamW,
    /// Updates done so far.
    pub step: u64,
    /// Draws masks (and dropout); saved in checkpoints.
    pub rng: MimRng,
    masking: Box<dyn MaskingStrategy>,
    pub(crate) params: Vec<(String, Tensor)>,
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
            params,
        })
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

    /// One optimizer update on `imgs (B, C, H, W)`, B = the configured batch.
    pub fn train_step(&mut self, imgs: &Tensor) -> Result<StepStats> {
        let b = imgs.shape().first().copied().unwrap_or(0);
        if b != self.config.batch_size {
            return Err(MimError::Input(format!(
                "a step takes {} images, got a batch of {b}",
                self.config.batch_size
            )));
        }
        self.model.encoder.check_images(imgs)?;
        // Products of this step (forward and backward) run at the configured
        // precision: the engine's ops take it from this scope and hand it to
        // their kernels; the caller's setting is restored afterwards.
        tessera_tensor::with_matmul_precision(self.config.precision.kernel(), || self.step_inner(imgs, b))
    }

    fn step_inner(&mut self, imgs: &Tensor, b: usize) -> Result<StepStats> {
        let lr = self.config.lr_at(self.step);
        self.optimizer.set_lr(lr);
        let accum = self.config.accum_steps;
        let micro = b / accum;
        let mut grads = GradStore::new();
        let mut loss_sum = 0f64;
        for i in 0..accum {
            let part = if accum == 1 {
                imgs.clone()
            } else {
                imgs.narrow(0, i * micro, micro)?
            };
            let mask = self.sample_mask(micro);
            let out = self.model.forward(&part, &mask, true, &mut self.rng)?;
            let loss = out.loss.item()?;
            if !loss.is_finite() {
                return Err(MimError::NonFinite {
                    step: self.step + 1,
                    what: "loss",
                    value: loss,
                });
            }
            loss_sum += loss as f64;
            let scaled = if accum == 1 {
                out.loss
            } else {
                out.loss.mul_scalar(1.0 / accum as f32)
            };
            scaled.backward_into(&mut grads)?;
        }
        let norm = clip_checked(&mut grads, &self.params, self.config.clip_grad, self.step + 1)?;
        let loss = (loss_sum / accum as f64) as f32;
        self.optimizer.step(&grads)?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
        })
    }
}

/// AdamW over `groups` at rate `lr` with `betas` and ε = 1e-8 (PyTorch's).
pub(crate) fn adamw(groups: Vec<ParamGroup>, lr: f32, betas: [f32; 2]) -> AdamW {
    AdamW::new(
        groups,
        AdamWConfig {
            lr,
            beta1: betas[0],
            beta2: betas[1],
            eps: 1e-8,
        },
    )
}

/// The global gradient norm of `params` (clipped to `clip` if given), or
/// an error naming update `step` if it is not finite (before any update).
pub(crate) fn clip_checked(
    grads: &mut GradStore,
    params: &[(String, Tensor)],
    clip: Option<f32>,
    step: u64,
) -> Result<f32> {
    let params: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let norm = match clip {
        Some(max) => clip_grad_norm(grads, &params, max),
        None => grad_norm(grads, &params),
    };
    if !norm.is_finite() {
        return Err(MimError::NonFinite {
            step,
            what: "gradient norm",
            value: norm,
        });
    }
    Ok(norm)
}

impl TrainConfig {
    /// One line for logs: "ViT 192/12/3 (patch 4, 32x32x3), MAE, decoder
    /// 128/4/4, target normalised Mse on pixels, F32 products".
    pub fn describe(&self) -> String {
        let e = &self.model.encoder;
        let method = match &self.model.method {
            crate::Method::Mae { decoder } => format!(
                "MAE, decoder {}/{}/{}",
                decoder.embed_dim, decoder.depth, decoder.num_heads
            ),
            crate::Method::SimMim => "SimMIM".to_string(),
        };
        let target = match self.model.target {
            crate::TargetConfig::Pixels { loss, norm_pix } => {
                format!("{}{:?} on pixels", if norm_pix { "normalised " } else { "" }, loss)
            }
            crate::TargetConfig::Codebook { size, .. } => format!("codebook of {size}"),
        };
        format!(
            "{}, {method}, target {target}, {:?} products",
            e.describe(),
            self.precision
        )
    }
}
