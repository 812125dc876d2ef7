//! The classifier: an encoder with a linear head, and its layer numbering
//! for layer-wise learning-rate decay. It is how MIM pre-training is judged
//! (MAE's headline numbers are fine-tuned top-1).
//!
//! A [`Classifier`] is an encoder (ViT or Swin) with a linear head, named as
//! MAE's `models_vit.VisionTransformer` and Swin's classifier so their
//! fine-tuned checkpoints load:
//!
//! ```text
//! ViT, pool cls:   encoder (final norm)        → token 0            → head (K, D)
//! ViT, pool mean:  encoder (no final norm)     → mean of patch tokens → fc_norm → head
//! Swin:            encoder (final norm)        → mean of the last stage          → head
//! ```
//! `fc_norm` belongs to the ViT encoder ([`VitConfig::fc_norm`]), as in
//! timm's `VisionTransformer`, so an encoder built for mean pooling (BEiT's
//! and SimMIM's `use_mean_pooling`) carries it into its features too.
//!
//! [`VitConfig::fc_norm`]: crate::config::VitConfig::fc_norm
//! The head starts from a truncated normal of std 2e-5 and zero bias (MAE's
//! `trunc_normal_(model.head.weight, std=2e-5)`).
//!
//! **Layer numbering** (for layer-wise learning-rate decay,
//! [`crate::train::recipe`]): with `n` blocks the layers are numbered 0
//! (patch embedding, \[CLS\], positions), 1…n (the blocks, in order) and
//! n + 1 (the final norms and the head). Swin's blocks are numbered across
//! stages; each patch merging shares the number of the block before it
//! (SimMIM's rule).

use crate::config::{EncoderConfig, Pool};
use crate::error::{MimError, Result, config_err};
use crate::model::encoder::Encoder;
use crate::model::layers::{Linear, Module, join};
use crate::rng::MimRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_tensor::Tensor;

/// A classifier's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub encoder: EncoderConfig,
    pub num_classes: usize,
    pub pool: Pool,
    /// The data set's class names (for `predict`), `num_classes` of them.
    pub class_names: Vec<String>,
}

impl ClassifierConfig {
    /// A classifier on `encoder` (whose drop path is set to `drop_path`);
    /// with mean pooling a ViT loses its final norm to `fc_norm`, as MAE's
    /// (with \[CLS\] pooling it has the final norm and no `fc_norm`).
    pub fn new(
        mut encoder: EncoderConfig,
        class_names: Vec<String>,
        pool: Pool,
        drop_path: f32,
    ) -> Result<ClassifierConfig> {
        match &mut encoder {
            EncoderConfig::Vit(v) => {
                v.drop_path = drop_path;
                v.final_norm = pool == Pool::Cls;
                v.fc_norm = pool == Pool::Mean;
            }
            EncoderConfig::Swin(s) => s.drop_path = drop_path,
        }
        let c = ClassifierConfig {
            encoder,
            num_classes: class_names.len(),
            pool,
            class_names,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the parts and how they fit.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if self.num_classes < 2 {
            return Err(config_err(format!(
                "a classifier needs at least 2 classes, got {}",
                self.num_classes
            )));
        }
        if self.class_names.len() != self.num_classes {
            return Err(config_err(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            )));
        }
        if self.pool == Pool::Cls && self.encoder.swin().is_some() {
            return Err(config_err("Swin has no [CLS] token: pool its tokens by their mean"));
        }
        Ok(())
    }

    /// Values in the classifier's state: the encoder's (with a mean-pooled
    /// ViT's `fc_norm`) and the head's `(K, D)` + `(K)`.
    pub fn state_len(&self) -> u128 {
        let (d, k) = (self.encoder.out_dim() as u128, self.num_classes as u128);
        self.encoder.state_len() + d * k + k
    }

    /// Number of layers for layer-wise decay: the blocks plus one (the
    /// embedding is layer 0, the head layer `num_layers`).
    pub fn num_layers(&self) -> usize {
        match &self.encoder {
            EncoderConfig::Vit(v) => v.depth + 1,
            EncoderConfig::Swin(s) => s.depths.iter().sum::<usize>() + 1,
        }
    }

    /// The layer of a parameter (see the module docs).
    pub fn layer_id(&self, name: &str) -> usize {
        let top = self.num_layers();
        let embedding = ["cls_token", "pos_embed", "mask_token"].contains(&name) || name.starts_with("patch_embed.");
        if embedding {
            return 0;
        }
        let index = |rest: &str| rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
        match &self.encoder {
            EncoderConfig::Vit(_) => match name.strip_prefix("blocks.").and_then(index) {
                Some(i) => i + 1,
                None => top,
            },
            EncoderConfig::Swin(s) => {
                let Some(rest) = name.strip_prefix("layers.") else {
                    return top;
                };
                let Some(stage) = index(rest) else { return top };
                let before: usize = s.depths[..stage.min(s.depths.len())].iter().sum();
                let rest = rest.split_once('.').map_or("", |r| r.1);
                if let Some(block) = rest.strip_prefix("blocks.").and_then(index) {
                    before + block + 1
                } else {
                    // downsample: the number of the stage's last block.
                    before + s.depths.get(stage).copied().unwrap_or(0)
                }
            }
        }
    }
}

/// An encoder with a classification head.
pub struct Classifier {
    pub config: ClassifierConfig,
    pub encoder: Encoder,
    pub head: Linear,
}

impl Classifier {
    /// A fresh classifier (the encoder as its family initialises, the head
    /// truncated normal with std 2e-5, zero bias).
    pub fn new<R: Rng + ?Sized>(config: ClassifierConfig, rng: &mut R) -> Result<Classifier> {
        config.validate()?;
        let encoder = Encoder::new(&config.encoder, rng)?;
        let d = config.encoder.out_dim();
        let head = Linear::new(d, config.num_classes, true, rng);
        head.weight.set_data(&tessera_tensor::init::trunc_normal(
            head.weight.numel(),
            0.0,
            2e-5,
            -2.0,
            2.0,
            rng,
        ))?;
        if let Some(b) = &head.bias {
            b.set_data(&vec![0.0; b.numel()])?;
        }
        Ok(Classifier { config, encoder, head })
    }

    /// Copies the pre-trained encoder's weights (same family and shape) into
    /// this classifier's; the tensors it has no use for (a ViT's final norm
    /// under mean pooling) are skipped, and a norm the pre-trained encoder
    /// lacks (`fc_norm` after MAE's pre-training, the final norm after
    /// BEiT's mean-pooled one) starts as the identity, as in MAE's and
    /// BEiT's fine-tuning. Returns how many tensors were copied.
    pub fn load_encoder(&self, pretrained: &Encoder) -> Result<usize> {
        let theirs: BTreeMap<String, Tensor> = pretrained.named_tensors().into_iter().collect();
        let mut copied = 0;
        for (name, t) in self.encoder.named_tensors() {
            let fresh_norm = name.starts_with("norm.") || name.starts_with("fc_norm.");
            if fresh_norm && !theirs.contains_key(&name) && self.encoder.vit().is_some() {
                continue;
            }
            let Some(src) = theirs.get(&name) else {
                return Err(MimError::Input(format!(
                    "the pre-trained encoder has no tensor '{name}' (another encoder family or option?)"
                )));
            };
            if src.shape() != t.shape() {
                return Err(MimError::Input(format!(
                    "the pre-trained encoder's '{name}' has shape {:?}, this classifier's {:?}",
                    src.shape(),
                    t.shape()
                )));
            }
            t.set_data(&src.to_vec())?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Logits `(B, K)` of images `(B, C, H, W)`; `train` turns on stochastic
    /// depth (drawn from `rng`).
    pub fn forward(&self, imgs: &Tensor, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        self.encoder.check_images(imgs)?;
        let pooled = match &self.encoder {
            Encoder::Vit(vit) => {
                let tokens = vit.forward_all(imgs, train, rng)?; // (B, 1 + L, D)
                vit.pool(&tokens, self.config.pool)? // (B, D)
            }
            Encoder::Swin(swin) => swin.stages(&swin.embed(imgs)?, train, rng)?.mean(&[1, 2], false)?,
        };
        Ok(self.head.forward(&pooled)?)
    }

    /// The tensors an optimizer updates.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }
}

impl Module for Classifier {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.encoder.visit(prefix, f);
        self.head.visit(&join(prefix, "head"), f);
    }
}

/// A small ViT classifier for tests: 16×16 images, patch 4, width 16, two
/// heads, three classes.
#[cfg(test)]
pub(crate) fn vit_classifier(depth: usize, pool: Pool) -> ClassifierConfig {
    let mut e = crate::config::VitConfig::preset("vit-tiny", [16, 16], 4, 3).unwrap();
    (e.embed_dim, e.depth, e.num_heads) = (16, depth, 2);
    let names = (0..3).map(|i| format!("c{i}")).collect();
    ClassifierConfig::new(e.into(), names, pool, 0.1).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Swin: blocks numbered across stages, merging with the stage's last
    /// block, the embedding 0, the final norm and head on top.
    #[test]
    fn swin_layer_ids() {
        let s = crate::config::SwinConfig::preset("swin-tiny", [224, 224], 3).unwrap();
        let names = (0..5).map(|i| i.to_string()).collect();
        let cfg = ClassifierConfig::new(s.into(), names, Pool::Mean, 0.1).unwrap();
        assert_eq!(cfg.num_layers(), 13);
        for (name, id) in [
            ("patch_embed.norm.weight", 0),
            ("layers.0.blocks.0.attn.qkv.weight", 1),
            ("layers.0.blocks.1.norm1.weight", 2),
            ("layers.0.downsample.reduction.weight", 2),
            ("layers.2.blocks.0.mlp.fc1.weight", 5),
            ("layers.2.blocks.5.mlp.fc1.weight", 10),
            ("layers.2.downsample.norm.weight", 10),
            ("layers.3.blocks.1.attn.relative_position_bias_table", 12),
            // SimMIM's `get_swin_layer` puts what it does not name (the
            // absolute positions of `ape`) on top.
            ("absolute_pos_embed", 13),
            ("norm.weight", 13),
            ("head.weight", 13),
        ] {
            assert_eq!(cfg.layer_id(name), id, "{name}");
        }
        let bad = ClassifierConfig::new(
            crate::config::SwinConfig::preset("swin-mini", [32, 32], 3)
                .unwrap()
                .into(),
            vec!["a".into(), "b".into()],
            Pool::Cls,
            0.0,
        );
        assert!(bad.unwrap_err().to_string().contains("no [CLS]"));
    }

    /// The declared state length is what a built classifier holds, for
    /// both poolings (a mean-pooled ViT's fc_norm included).
    #[test]
    fn state_len_counts_every_tensor() {
        for pool in [Pool::Cls, Pool::Mean] {
            let cfg = vit_classifier(2, pool);
            let model = Classifier::new(cfg.clone(), &mut MimRng::seed_from_u64(0)).unwrap();
            let held: usize = model.named_tensors().iter().map(|(_, t)| t.numel()).sum();
            assert_eq!(cfg.state_len(), held as u128, "{pool:?}");
        }
    }

    /// Stochastic depth: in evaluation the classifier is deterministic (drop
    /// path is the identity); in training the per-image factors are 0 or
    /// 1/(1 − rate), 1 on average.
    #[test]
    fn drop_path_is_identity_in_eval_and_unbiased_in_train() {
        let cfg = vit_classifier(2, Pool::Cls);
        let model = Classifier::new(cfg, &mut MimRng::seed_from_u64(0)).unwrap();
        let imgs = Tensor::new(
            tessera_tensor::init::normal(2 * 3 * 16 * 16, 0.0, 1.0, &mut MimRng::seed_from_u64(1)),
            &[2, 3, 16, 16],
        )
        .unwrap();
        let a = model
            .forward(&imgs, false, &mut MimRng::seed_from_u64(1))
            .unwrap()
            .to_vec();
        let b = model
            .forward(&imgs, false, &mut MimRng::seed_from_u64(2))
            .unwrap()
            .to_vec();
        assert_eq!(a, b);
        let mut rng = MimRng::seed_from_u64(5);
        let rate = 0.3;
        let s = crate::model::layers::drop_path_scale(40000, rate, &mut rng)
            .unwrap()
            .to_vec();
        assert!(s.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - rate)).abs() < 1e-6));
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean factor {mean}");
    }
}
