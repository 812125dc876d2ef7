//! Files: checkpoints, official weights, pictures.

pub mod checkpoint;
pub mod official;
pub mod picture;
