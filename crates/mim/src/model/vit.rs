//! The encoder: the Vision Transformer of Dosovitskiy et al. (2021), as
//! docs/mim.md describes it and timm builds it.
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
//! plain ViT of Dosovitskiy et al.
//!
//! Options of BEiT's and SimMIM's ViT (all off by default): a relative
//! position bias added to every attention's logits, one table shared by all
//! blocks or one per block, with or without an absolute table
//! ([`PosEmbedKind::None`]); layer scale; `q_bias`/`v_bias` in place of
//! `qkv.bias`. On MAE's visible tokens the relative bias is gathered for each
//! image's own tokens.

use crate::config::{InitScheme, Pool, PosEmbedKind, RelPosBias, VitConfig};
use crate::error::Result;
use crate::model::layers::{Attention, Block, LayerNorm, Module, PatchEmbed, join, visit_blocks};
use crate::model::masking::Mask;
use crate::model::pos_embed::sincos_2d;
use crate::rng::MimRng;
use rand::{Rng, SeedableRng};
use std::borrow::Cow;
use tessera_kernels::relpos;
use tessera_tensor::Tensor;
use tessera_tensor::init::{normal, trunc_normal, uniform};

/// The Vision Transformer encoder.
pub struct VisionTransformer {
    pub config: VitConfig,
    pub patch_embed: PatchEmbed,
    /// `(1, 1, D)`.
    pub cls_token: Tensor,
    /// `(1, 1 + L, D)`: fixed (not trained) for sin-cos, a parameter if
    /// learned, absent with [`PosEmbedKind::None`].
    pub pos_embed: Option<Tensor>,
    /// `(T, H)`, with [`RelPosBias::Shared`] (`rel_pos_bias.relative_position_bias_table`).
    pub rel_pos_table: Option<Tensor>,
    /// BEiT's relative position index of all `1 + L` tokens, `(1+L, 1+L)`,
    /// with a relative position bias.
    pub rel_pos_index: Vec<u32>,
    pub blocks: Vec<Block>,
    /// The final LayerNorm, unless `final_norm` is off.
    pub norm: Option<LayerNorm>,
    /// The LayerNorm after mean pooling, with `fc_norm` on.
    pub fc_norm: Option<LayerNorm>,
}

/// Called before each block of a pass with the block, its input and its bias.
type BlockObserver<'a> = dyn FnMut(&Block, &Tensor, Option<&Tensor>) -> Result<()> + 'a;

/// Which tokens a pass through the blocks holds (after \[CLS\]).
#[derive(Clone, Copy, Debug)]
pub enum Tokens<'a> {
    /// Every patch, in order.
    All,
    /// The visible patches of each image, in `mask.ids_keep()` order.
    Visible(&'a Mask),
}

impl VisionTransformer {
    /// A freshly initialised encoder (MAE's initialisation).
    pub fn new<R: Rng + ?Sized>(config: VitConfig, rng: &mut R) -> Result<Self> {
        config.validate()?;
        let d = config.embed_dim;
        let l = config.num_patches();
        let patch_embed = PatchEmbed::new(config.in_chans, d, config.patch_size, rng);
        let pos_embed = match config.pos_embed {
            PosEmbedKind::SinCos => Some(Tensor::var(sincos_2d(d, config.grid(), true), &[1, 1 + l, d])?),
            PosEmbedKind::Learned => Some(Tensor::param(
                trunc_normal((1 + l) * d, 0.0, 0.02, -2.0, 2.0, rng),
                &[1, 1 + l, d],
            )?),
            PosEmbedKind::None => None,
        };
        let cls_token = Tensor::param(normal(d, 0.0, 0.02, rng), &[1, 1, d])?;
        let (h, rows) = (config.num_heads, relpos::table_rows(config.grid(), true));
        let rel_pos_table = match config.rel_pos_bias {
            RelPosBias::Shared => Some(Tensor::param(vec![0.0; rows * h], &[rows, h])?),
            _ => None,
        };
        let rel_pos_index = match config.rel_pos_bias {
            RelPosBias::None => Vec::new(),
            _ => relpos::grid_index(config.grid(), true),
        };
        let own_table = (config.rel_pos_bias == RelPosBias::PerBlock).then_some(rows);
        let blocks = (0..config.depth)
            .map(|i| {
                let attn = Attention::with(d, h, config.qkv_bias, own_table, rng);
                let mut block = Block::with(attn, config.mlp_hidden(), config.norm_eps, config.layer_scale, rng);
                block.drop_path = config.drop_path_at(i);
                block
            })
            .collect();
        let norm = config.final_norm.then(|| LayerNorm::new(d, config.norm_eps));
        let fc_norm = config.fc_norm.then(|| LayerNorm::new(d, config.norm_eps));
        let vit = VisionTransformer {
            config,
            patch_embed,
            cls_token,
            pos_embed,
            rel_pos_table,
            rel_pos_index,
            blocks,
            norm,
            fc_norm,
        };
        if vit.config.init == InitScheme::Beit {
            vit.beit_init(rng)?;
        }
        Ok(vit)
    }

    /// Redraws the weights as BEiT's and SimMIM's ViT (see [`InitScheme::Beit`]).
    fn beit_init<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<()> {
        let set = |t: &Tensor, v: Vec<f32>| t.set_data(&v);
        // PyTorch's default for a convolution: uniform in ±1/√fan_in.
        let fan_in = self.patch_embed.weight.numel() / self.config.embed_dim;
        let bound = 1.0 / (fan_in as f32).sqrt();
        set(
            &self.patch_embed.weight,
            uniform(self.patch_embed.weight.numel(), -bound, bound, rng),
        )?;
        set(
            &self.patch_embed.bias,
            uniform(self.config.embed_dim, -bound, bound, rng),
        )?;
        set(
            &self.cls_token,
            trunc_normal(self.config.embed_dim, 0.0, 0.02, -2.0, 2.0, rng),
        )?;
        if let (Some(p), PosEmbedKind::Learned) = (&self.pos_embed, self.config.pos_embed) {
            set(p, trunc_normal(p.numel(), 0.0, 0.02, -2.0, 2.0, rng))?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let rescale = 1.0 / (2.0 * (i + 1) as f32).sqrt();
            for (linear, scale) in [
                (&block.attn.qkv, 1.0),
                (&block.attn.proj, rescale),
                (&block.mlp.fc1, 1.0),
                (&block.mlp.fc2, rescale),
            ] {
                let w: Vec<f32> = trunc_normal(linear.weight.numel(), 0.0, 0.02, -2.0, 2.0, rng)
                    .into_iter()
                    .map(|v| v * scale)
                    .collect();
                set(&linear.weight, w)?;
                if let Some(b) = &linear.bias {
                    set(b, vec![0.0; b.numel()])?;
                }
            }
        }
        Ok(())
    }

    /// Checks that images fit this encoder, naming both shapes if not.
    pub fn check_images(&self, imgs: &Tensor) -> Result<()> {
        crate::model::layers::check_image_shape(imgs, self.config.in_chans, self.config.img_size)
    }

    /// The patches' absolute positional embeddings `(1, L, D)`, if any.
    pub fn patch_positions(&self) -> Result<Option<Tensor>> {
        let l = self.config.num_patches();
        Ok(match &self.pos_embed {
            Some(p) => Some(p.narrow(1, 1, l)?),
            None => None,
        })
    }

    /// Patch embeddings plus the patches' positional embeddings: `(B, L, D)`.
    pub fn embed_patches(&self, imgs: &Tensor) -> Result<Tensor> {
        self.check_images(imgs)?;
        let x = self.patch_embed.forward(imgs)?; // (B, L, D)
        Ok(match self.patch_positions()? {
            Some(pos) => x.add(&pos)?, // + (1, L, D)
            None => x,
        })
    }

    /// Prepends the \[CLS\] token (with its positional embedding) to `x (B, N, D)`.
    pub fn prepend_cls(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.shape()[0];
        let cls = match &self.pos_embed {
            Some(p) => self.cls_token.add(&p.narrow(1, 0, 1)?)?, // (1, 1, D)
            None => self.cls_token.clone(),
        };
        let cls = cls.broadcast_to(&[b, 1, self.config.embed_dim])?;
        Ok(Tensor::cat(&[&cls, x], 1)?)
    }

    /// The relative position index of a pass over `tokens` (\[CLS\] first):
    /// `(groups, n, n)` as `(index, groups, n)`. Every image shares the
    /// full index; visible tokens take each image's own rows and columns.
    fn rel_pos_index_of(&self, tokens: Tokens) -> Result<(Cow<'_, [u32]>, usize, usize)> {
        let full = 1 + self.config.num_patches();
        match tokens {
            Tokens::All => Ok((Cow::Borrowed(&self.rel_pos_index), 1, full)),
            Tokens::Visible(mask) => {
                let ids = mask.ids_keep()?; // (B, K)
                let k = mask.len_keep.unwrap_or(0);
                let n = 1 + k;
                let mut index = Vec::with_capacity(mask.batch * n * n);
                for b in 0..mask.batch {
                    // Token t of this pass is token sel(t) of the full grid.
                    let sel = |t: usize| if t == 0 { 0 } else { 1 + ids[b * k + t - 1] };
                    for i in 0..n {
                        let row = &self.rel_pos_index[sel(i) * full..][..full];
                        index.extend((0..n).map(|j| row[sel(j)]));
                    }
                }
                Ok((Cow::Owned(index), mask.batch, n))
            }
        }
    }

    /// Position dropout, the blocks and the final norm over `x (B, N, D)`,
    /// which holds \[CLS\] and then `tokens`.
    pub fn transform(&self, x: &Tensor, tokens: Tokens, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        self.transform_observed(x, tokens, train, rng, &mut |_, _, _| Ok(()))
    }

    /// The attention probabilities of every block, `depth` tensors
    /// `(B, H, 1+L, 1+L)` (\[CLS\] first, then every patch), from a pass in
    /// evaluation mode over `imgs (B, C, H, W)`. No gradient.
    pub fn attention_probabilities(&self, imgs: &Tensor) -> Result<Vec<Tensor>> {
        let mut probs = Vec::with_capacity(self.blocks.len());
        tessera_tensor::no_grad(|| -> Result<()> {
            let x = self.prepend_cls(&self.embed_patches(imgs)?)?;
            let mut rng = MimRng::seed_from_u64(0); // evaluation draws nothing
            self.transform_observed(&x, Tokens::All, false, &mut rng, &mut |block, x, bias| {
                probs.push(block.attention_probabilities(x, bias)?);
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(probs)
    }

    /// [`VisionTransformer::transform`], calling `observe(block, input, bias)`
    /// before each block with what that block's forward is given.
    fn transform_observed(
        &self,
        x: &Tensor,
        tokens: Tokens,
        train: bool,
        rng: &mut MimRng,
        observe: &mut BlockObserver,
    ) -> Result<Tensor> {
        let mut x = x.dropout(self.config.pos_drop, train, rng)?;
        let index = match self.config.rel_pos_bias {
            RelPosBias::None => None,
            _ => Some(self.rel_pos_index_of(tokens)?),
        };
        // A shared table is gathered once for every block.
        let shared = match (&self.rel_pos_table, &index) {
            (Some(t), Some((idx, g, n))) => Some(t.relpos_bias(idx, *g, *n)?),
            _ => None,
        };
        for block in &self.blocks {
            let own = match (&block.attn.relative_position_bias_table, &index) {
                (Some(t), Some((idx, g, n))) => Some(t.relpos_bias(idx, *g, *n)?),
                _ => None,
            };
            let bias = own.as_ref().or(shared.as_ref());
            observe(block, &x, bias)?;
            x = block.forward_train(&x, bias, train, rng)?;
        }
        Ok(match &self.norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        })
    }

    /// MAE's encoder: only the visible patches of `mask` → `(B, 1 + K, D)`.
    pub fn forward_visible(&self, imgs: &Tensor, mask: &Mask, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?; // (B, L, D)
        let k = mask.len_keep.unwrap_or(0);
        let x = x.gather_rows(&mask.ids_keep()?, k)?; // (B, K, D)
        self.transform(&self.prepend_cls(&x)?, Tokens::Visible(mask), train, rng)
    }

    /// The plain ViT over every patch → `(B, 1 + L, D)`.
    pub fn forward_all(&self, imgs: &Tensor, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?;
        self.transform(&self.prepend_cls(&x)?, Tokens::All, train, rng)
    }

    /// One feature vector per image `(B, D)`, never masked, deterministic.
    pub fn features(&self, imgs: &Tensor, pool: Pool) -> Result<Tensor> {
        // Evaluation mode draws no random numbers; the generator is a formality.
        let mut rng = MimRng::seed_from_u64(0);
        let tokens = self.forward_all(imgs, false, &mut rng)?; // (B, 1 + L, D)
        self.pool(&tokens, pool)
    }

    /// Pools the encoder's outputs `(B, 1 + N, D)` into `(B, D)`: \[CLS\],
    /// or the mean of the patch tokens (through `fc_norm` if the encoder
    /// has one).
    pub fn pool(&self, tokens: &Tensor, pool: Pool) -> Result<Tensor> {
        let pooled = pool_tokens(tokens, pool)?;
        Ok(match (pool, &self.fc_norm) {
            (Pool::Mean, Some(norm)) => norm.forward(&pooled)?,
            _ => pooled,
        })
    }

    /// Both feature vectors of every image from one pass: `(B, 2·D)`, the
    /// mean of the patch tokens in the first `D` columns, \[CLS\] in the last.
    pub fn features_mean_and_cls(&self, imgs: &Tensor) -> Result<Tensor> {
        let mut rng = MimRng::seed_from_u64(0);
        let tokens = self.forward_all(imgs, false, &mut rng)?; // (B, 1 + L, D)
        let (mean, cls) = (self.pool(&tokens, Pool::Mean)?, self.pool(&tokens, Pool::Cls)?);
        Ok(Tensor::cat(&[&mean, &cls], 1)?)
    }
}

/// Pools encoder outputs `(B, 1 + N, D)` into `(B, D)` (no `fc_norm`:
/// see [`VisionTransformer::pool`]).
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
        if let Some(p) = &self.pos_embed {
            f(join(prefix, "pos_embed"), p);
        }
        if let Some(t) = &self.rel_pos_table {
            f(join(prefix, "rel_pos_bias.relative_position_bias_table"), t);
        }
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        visit_blocks(&self.blocks, &join(prefix, "blocks"), f);
        if let Some(norm) = &self.norm {
            norm.visit(&join(prefix, "norm"), f);
        }
        if let Some(norm) = &self.fc_norm {
            norm.visit(&join(prefix, "fc_norm"), f);
        }
    }
}
