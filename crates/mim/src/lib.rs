//! # tessera-mim
//!
//! Masked image modeling on the Tessera engine, in the four interchangeable
//! parts of the framework:
//!
//! 1. **masking strategy** ([`model::masking`]): random (MAE), block-wise (BEiT),
//!    square, grid, SimMIM's coarse random masking;
//! 2. **encoder** ([`model::encoder`]): a Vision Transformer ([`model::vit`]: conv patch
//!    embedding, \[CLS\] token, positional embeddings, pre-norm blocks, final
//!    LayerNorm) or a Swin Transformer ([`model::swin`]: shifted windows, patch
//!    merging between stages);
//! 3. **prediction head** ([`model::mim`]): MAE's transformer decoder or SimMIM's
//!    1×1-convolution head (a linear map per token, pixel-shuffle order);
//! 4. **prediction target and loss** ([`model::target`]): pixels (MSE or L1,
//!    optionally normalised per patch) or codebook indices (cross-entropy).
//!
//! Any combination is one [`ModelConfig`]; [`train::pretrain::Trainer`] trains it with
//! MAE's recipe and writes safetensors checkpoints with MAE's tensor names.

#![forbid(unsafe_code)]

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod model;
pub mod rng;
pub mod run;
pub mod train;

pub use config::{
    DecoderConfig, EncoderConfig, InitScheme, Method, ModelConfig, PixelLoss, Pool, PosEmbedKind, QkvBias, RelPosBias,
    SwinConfig, TargetConfig, VitConfig,
};
pub use error::{MimError, Result};
pub use model::encoder::Encoder;
pub use model::masking::{Mask, MaskingConfig, MaskingStrategy};
pub use model::mim::{MimModel, MimOutput};
pub use model::swin::SwinTransformer;
pub use model::vit::{Tokens, VisionTransformer};
pub use rng::MimRng;
pub use train::StepStats;
pub use train::pretrain::{TrainConfig, Trainer};
