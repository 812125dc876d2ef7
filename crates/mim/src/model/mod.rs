//! The networks: layers, positional embeddings, the two encoders (ViT and
//! Swin), masking, prediction targets, the MIM model (encoder, mask, head,
//! loss), the classifier, and FLOP counts.

pub mod classifier;
pub mod encoder;
pub mod flops;
pub mod layers;
pub mod masking;
pub mod mim;
pub mod pos_embed;
pub mod swin;
pub mod target;
pub mod vit;
