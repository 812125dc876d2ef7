//! # tessera-mim
//!
//! Masked image modeling on the Tessera engine, in the four interchangeable
//! parts of the framework:
//!
//! 1. **masking strategy** ([`masking`]): random (MAE), block-wise (BEiT),
//!    square, grid, SimMIM's coarse random masking;
//! 2. **encoder** ([`encoder`]): a Vision Transformer ([`vit`]: conv patch
//!    embedding, \[CLS\] token, positional embeddings, pre-norm blocks, final
//!    LayerNorm) or a Swin Transformer ([`swin`]: shifted windows, patch
//!    merging between stages);
//! 3. **prediction head** ([`model`]): MAE's transformer decoder or SimMIM's
//!    1×1-convolution head (a linear map per token, pixel-shuffle order);
//! 4. **prediction target and loss** ([`target`]): pixels (MSE or L1,
//!    optionally normalised per patch) or codebook indices (cross-entropy).
//!
//! Any combination is one [`ModelConfig`]; [`train::Trainer`] trains it with
//! MAE's recipe and writes safetensors checkpoints with MAE's tensor names.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod flops;
pub mod layers;
pub mod masking;
pub mod memory;
pub mod model;
pub mod official;
pub mod pos_embed;
pub mod pretrain;
pub mod swin;
pub mod target;
pub mod train;
pub mod vit;
pub mod viz;

pub use config::{
    DecoderConfig, EncoderConfig, InitScheme, Method, ModelConfig, PixelLoss, PosEmbedKind, QkvBias, RelPosBias,
    SwinConfig, TargetConfig, VitConfig,
};
pub use encoder::Encoder;
pub use error::{MimError, Result};
pub use masking::{Mask, MaskingConfig, MaskingStrategy, MimRng};
pub use model::{MimModel, MimOutput};
pub use swin::SwinTransformer;
pub use train::{MatmulPrecision, StepStats, TrainConfig, Trainer};
pub use vit::{Pool, Tokens, VisionTransformer};
