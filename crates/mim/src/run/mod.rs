//! Training runs as library calls: the loop around a training step, its
//! output folder, checkpoints and metrics.

pub mod pretrain;
