//! Files: the safetensors container, official weights, checkpoints, pictures.

pub mod checkpoint;
pub mod official;
pub mod picture;
pub mod pth;
pub mod safetensors;
