//! The encoder of a model, a Vision Transformer or a Swin Transformer, behind
//! the one interface the heads, evaluation and checkpoints use: check the
//! images, embed the patches, give one vector per image.
//!
//! The two differ in what they return. The ViT keeps one token per patch and
//! a \[CLS\] token, `(B, 1 + L, D)`; Swin merges 2×2 tokens between stages
//! and ends on a grid `2^(stages−1)` times coarser, `(B, H/s, W/s, C)`, with
//! no \[CLS\]. Its representation is the mean of that grid.

use crate::config::EncoderConfig;
use crate::config::Pool;
use crate::error::{MimError, Result};
use crate::model::layers::{Module, check_image_shape};
use crate::model::swin::SwinTransformer;
use crate::model::vit::VisionTransformer;
use rand::Rng;
use tessera_tensor::Tensor;

/// A built encoder.
pub enum Encoder {
    Vit(VisionTransformer),
    Swin(SwinTransformer),
}

impl Encoder {
    /// A freshly initialised encoder (each family's official initialisation).
    pub fn new<R: Rng + ?Sized>(config: &EncoderConfig, rng: &mut R) -> Result<Encoder> {
        Ok(match config {
            EncoderConfig::Vit(c) => Encoder::Vit(VisionTransformer::new(c.clone(), rng)?),
            EncoderConfig::Swin(c) => Encoder::Swin(SwinTransformer::new(c.clone(), rng)?),
        })
    }

    /// The Vision Transformer, if this is one.
    pub fn vit(&self) -> Option<&VisionTransformer> {
        match self {
            Encoder::Vit(v) => Some(v),
            Encoder::Swin(_) => None,
        }
    }

    /// The Swin Transformer, if this is one.
    pub fn swin(&self) -> Option<&SwinTransformer> {
        match self {
            Encoder::Swin(s) => Some(s),
            Encoder::Vit(_) => None,
        }
    }

    /// Checks that images fit this encoder, naming both shapes if not.
    pub fn check_images(&self, imgs: &Tensor) -> Result<()> {
        match self {
            Encoder::Vit(v) => v.check_images(imgs),
            Encoder::Swin(s) => check_image_shape(imgs, s.config.in_chans, s.config.img_size),
        }
    }

    /// The poolings this encoder offers: mean and \[CLS\] for the ViT, the
    /// mean alone for Swin (it has no \[CLS\] token).
    pub fn poolings(&self) -> &'static [Pool] {
        match self {
            Encoder::Vit(_) => &[Pool::Mean, Pool::Cls],
            Encoder::Swin(_) => &[Pool::Mean],
        }
    }

    /// One feature vector per image `(B, D)`, never masked, deterministic.
    pub fn features(&self, imgs: &Tensor, pool: Pool) -> Result<Tensor> {
        match (self, pool) {
            (Encoder::Vit(v), _) => v.features(imgs, pool),
            (Encoder::Swin(s), Pool::Mean) => {
                check_image_shape(imgs, s.config.in_chans, s.config.img_size)?;
                s.features(imgs)
            }
            (Encoder::Swin(_), Pool::Cls) => Err(MimError::Input(
                "a Swin encoder has no [CLS] token; its representation is the mean of the last stage (pool mean)"
                    .into(),
            )),
        }
    }
}

impl Module for Encoder {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        match self {
            Encoder::Vit(v) => v.visit(prefix, f),
            Encoder::Swin(s) => s.visit(prefix, f),
        }
    }
}
