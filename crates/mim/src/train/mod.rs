//! Training: the pre-training step ([`pretrain::Trainer`]) and the
//! fine-tuning step ([`finetune::Finetuner`]), the recipes they share
//! ([`recipe`]: precision, schedule, weight decay, AdamW, and the
//! fine-tuning recipe), data-parallel training over ranks ([`distributed`]),
//! and what a run will take in memory ([`memory`]).

pub mod distributed;
pub mod finetune;
pub mod memory;
pub mod pretrain;
pub mod recipe;

use serde::{Deserialize, Serialize};

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Number of updates done after this one.
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Seconds this step spent summing gradients over ranks (0 on one
    /// process).
    #[serde(default)]
    pub reduce_s: f32,
}
