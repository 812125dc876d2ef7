//! The encoder: a Vision Transformer exactly as in the seed document.
//!
//! ```text
//! images (B, C, H, W)
//!   → patch embedding: conv, kernel = stride = p        (B, L, D)
//!   → + positional embeddings of the patches             (B, L, D)
//!   → [MAE] keep the visible patches (gather)            (B, K, D)
//!   → prepend [CLS] (+ its positional embedding)         (B, 1+K, D)
//!   → position dropout, `depth` blocks, final LayerNorm  (B, 1+K, D)
//! ```
//! Adding positions before dropping hidden patches is MAE's order; it lets the
//! encoder run on the visible tokens only. Without a mask (`K = L`) this is the
//! plain ViT of the seed document.

use crate::config::{PosEmbedKind, VitConfig};
use crate::error::{MimError, Result};
use crate::layers::{Block, LayerNorm, Module, PatchEmbed, join, visit_blocks};
use crate::masking::{Mask, MimRng};
use crate::pos_embed::sincos_2d;
use rand::{Rng, SeedableRng};
use tessera_tensor::Tensor;
use tessera_tensor::init::{normal, trunc_normal};

/// How to turn the encoder's tokens into one vector per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// The \[CLS\] token's output.
    Cls,
    /// The mean of the patch tokens' outputs.
    Mean,
}

/// The Vision Transformer encoder.
pub struct VisionTransformer {
    pub config: VitConfig,
    pub patch_embed: PatchEmbed,
    /// `(1, 1, D)`.
    pub cls_token: Tensor,
    /// `(1, 1 + L, D)`: fixed (not trained) for sin-cos, a parameter if learned.
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
}

impl VisionTransformer {
    /// A freshly initialised encoder (MAE's initialisation).
    pub fn new<R: Rng + ?Sized>(config: VitConfig, rng: &mut R) -> Result<Self> {
        config.validate()?;
        let d = config.embed_dim;
        let l = config.num_patches();
        let patch_embed = PatchEmbed::new(config.in_chans, d, config.patch_size, rng);
        let pos_embed = match config.pos_embed {
            PosEmbedKind::SinCos => Tensor::var(sincos_2d(d, config.grid(), true), &[1, 1 + l, d])?,
            PosEmbedKind::Learned => {
                Tensor::param(trunc_normal((1 + l) * d, 0.0, 0.02, -2.0, 2.0, rng), &[1, 1 + l, d])?
            }
        };
        let cls_token = Tensor::param(normal(d, 0.0, 0.02, rng), &[1, 1, d])?;
        let blocks = (0..config.depth)
            .map(|_| Block::new(d, config.num_heads, config.mlp_hidden(), config.norm_eps, rng))
            .collect();
        let norm = LayerNorm::new(d, config.norm_eps);
        Ok(VisionTransformer {
            config,
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
        })
    }

    /// Checks that images fit this encoder, naming both shapes if not.
    pub fn check_images(&self, imgs: &Tensor) -> Result<()> {
        let c = &self.config;
        let want = [c.in_chans, c.img_size[0], c.img_size[1]];
        if imgs.rank() != 4 || imgs.shape()[1..] != want {
            return Err(MimError::Input(format!(
                "images of shape {:?} do not fit this encoder, which takes (B, {}, {}, {})",
                imgs.shape(),
                want[0],
                want[1],
                want[2]
            )));
        }
        Ok(())
    }

    /// Patch embeddings plus the patches' positional embeddings: `(B, L, D)`.
    pub fn embed_patches(&self, imgs: &Tensor) -> Result<Tensor> {
        self.check_images(imgs)?;
        let x = self.patch_embed.forward(imgs)?; // (B, L, D)
        let pos = self.pos_embed.narrow(1, 1, self.config.num_patches())?; // (1, L, D)
        Ok(x.add(&pos)?)
    }

    /// Prepends the \[CLS\] token (with its positional embedding) to `x (B, N, D)`.
    pub fn prepend_cls(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.shape()[0];
        let cls = self.cls_token.add(&self.pos_embed.narrow(1, 0, 1)?)?; // (1, 1, D)
        let cls = cls.broadcast_to(&[b, 1, self.config.embed_dim])?;
        Ok(Tensor::cat(&[&cls, x], 1)?)
    }

    /// Position dropout, the blocks and the final norm over `x (B, N, D)`.
    pub fn transform(&self, x: &Tensor, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        let mut x = x.dropout(self.config.pos_drop, train, rng)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// MAE's encoder: only the visible patches of `mask` → `(B, 1 + K, D)`.
    pub fn forward_visible(&self, imgs: &Tensor, mask: &Mask, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?; // (B, L, D)
        let k = mask.len_keep.unwrap_or(0);
        let x = x.gather_rows(&mask.ids_keep()?, k)?; // (B, K, D)
        self.transform(&self.prepend_cls(&x)?, train, rng)
    }

    /// The plain ViT over every patch → `(B, 1 + L, D)`.
    pub fn forward_all(&self, imgs: &Tensor, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?;
        self.transform(&self.prepend_cls(&x)?, train, rng)
    }

    /// One feature vector per image `(B, D)`, never masked, deterministic.
    pub fn features(&self, imgs: &Tensor, pool: Pool) -> Result<Tensor> {
        // Evaluation mode draws no random numbers; the generator is a formality.
        let mut rng = MimRng::seed_from_u64(0);
        let tokens = self.forward_all(imgs, false, &mut rng)?; // (B, 1 + L, D)
        pool_tokens(&tokens, pool)
    }

    /// Both feature vectors of every image from one pass: `(B, 2·D)`, the
    /// mean of the patch tokens in the first `D` columns, \[CLS\] in the last.
    pub fn features_mean_and_cls(&self, imgs: &Tensor) -> Result<Tensor> {
        let mut rng = MimRng::seed_from_u64(0);
        let tokens = self.forward_all(imgs, false, &mut rng)?; // (B, 1 + L, D)
        let (mean, cls) = (pool_tokens(&tokens, Pool::Mean)?, pool_tokens(&tokens, Pool::Cls)?);
        Ok(Tensor::cat(&[&mean, &cls], 1)?)
    }
}

/// Pools encoder outputs `(B, 1 + N, D)` into `(B, D)`.
pub fn pool_tokens(tokens: &Tensor, pool: Pool) -> Result<Tensor> {
    let n = tokens.shape()[1];
    Ok(match pool {
        Pool::Cls => tokens.narrow(1, 0, 1)?.mean(&[1], false)?,
        Pool::Mean => tokens.narrow(1, 1, n - 1)?.mean(&[1], false)?,
    })
}

impl Module for VisionTransformer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "cls_token"), &self.cls_token);
        f(join(prefix, "pos_embed"), &self.pos_embed);
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        visit_blocks(&self.blocks, &join(prefix, "blocks"), f);
        self.norm.visit(&join(prefix, "norm"), f);
    }
}
