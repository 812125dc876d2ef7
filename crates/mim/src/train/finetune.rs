//! Fine-tuning steps, checkpoints, and the run with per-epoch validation.

use crate::error::{MimError, Result, config_err};
use crate::model::classifier::Classifier;
use crate::rng::MimRng;
use crate::train::recipe::{FinetuneConfig, adamw, clip_checked, mix_batch, param_groups};
use rand::SeedableRng;

use crate::train::StepStats;
use tessera_tensor::optim::{AdamW, Optimizer};
use tessera_tensor::{GradStore, Tensor};

/// A classifier, its optimizer and its random state.
///
/// Its parts are private, as [`Trainer`](crate::train::pretrain::Trainer)'s:
/// the optimizer's groups are built from the model's parameters.
pub struct Finetuner {
    pub(crate) config: FinetuneConfig,
    pub(crate) model: Classifier,
    pub(crate) optimizer: AdamW,
    pub(crate) step: u64,
    /// Draws mixing and stochastic depth; saved in checkpoints.
    pub(crate) rng: MimRng,
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

    /// The recipe.
    pub fn config(&self) -> &FinetuneConfig {
        &self.config
    }

    /// The classifier being trained.
    pub fn model(&self) -> &Classifier {
        &self.model
    }

    /// Updates done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// A fresh classifier from the recipe's seed (the supervised baseline).
    pub fn from_scratch(config: FinetuneConfig) -> Result<Finetuner> {
        let mut init = MimRng::seed_from_u64(config.seed);
        let model = Classifier::new(config.model.clone(), &mut init)?;
        Self::new(config, model)
    }

    /// One update on `imgs (B, C, H, W)` with their labels: mixing, smoothed
    /// soft targets, cross-entropy, backward, clipping, AdamW.
    pub fn train_step(&mut self, imgs: &Tensor, labels: &[u32]) -> Result<StepStats> {
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
        // The pool's other workers spin between the step's ops (one process).
        let _awake = tessera_kernels::par::keep_awake();
        tessera_tensor::with_matmul_precision(self.config.precision, || {
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
            Ok(StepStats {
                step: self.step,
                loss: value,
                lr,
                grad_norm: norm,
                reduce_s: 0.0,
            })
        })
    }
}
