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
