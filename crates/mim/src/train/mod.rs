//! Supervised fine-tuning and classification: how MIM pre-training is judged
//! (MAE's headline numbers are fine-tuned top-1).
//!
//! A [`Classifier`](crate::model::classifier::Classifier) is an encoder (ViT or Swin) with a linear head, named as
//! MAE's `models_vit.VisionTransformer` and Swin's classifier so their
//! fine-tuned checkpoints load:
//!
//! ```text
//! ViT, pool cls:   encoder (final norm)        → token 0            → head (K, D)
//! ViT, pool mean:  encoder (no final norm)     → mean of patch tokens → fc_norm → head
//! Swin:            encoder (final norm)        → mean of the last stage          → head
//! ```
//! The head starts from a truncated normal of std 2e-5 and zero bias (MAE's
//! `trunc_normal_(model.head.weight, std=2e-5)`).
//!
//! The recipe is MAE's `main_finetune.py` ([`FinetuneConfig::mae`](recipe::FinetuneConfig::mae)): AdamW
//! (β = 0.9, 0.999), layer-wise learning-rate decay 0.75, weight decay 0.05
//! except norms, biases, tokens and tables, linear warm-up then cosine to
//! 1e-6, stochastic depth 0.1, label smoothing 0.1, mixup 0.8 and cutmix 1.0
//! (switchable), random resized crops (scale 0.08–1) and flips. RandAugment
//! and random erasing are not implemented.
//!
//! **Layer-wise decay.** With `n` blocks the layers are numbered 0 (patch
//! embedding, \[CLS\], positions), 1…n (the blocks, in order) and n + 1 (the
//! final norms and the head); layer `i` learns at `lr · decay^(n + 1 − i)`.
//! The head learns at the full rate, the embedding at `0.75^(n+1)` of it
//! (3% for ViT-B): the lower layers hold the most general features, which
//! pre-training made good, and a large update would destroy them before the
//! randomly initialised head has learnt to use them. Swin's blocks are
//! numbered across stages; each patch merging shares the number of the block
//! before it (SimMIM's rule).
//!
//! The parts: [`crate::model::classifier`] (the model and its layer
//! numbering), [`recipe`] (mixup, label smoothing, the recipe and its
//! parameter groups), [`finetune`] (steps, checkpoints, the run with
//! per-epoch validation) and [`crate::eval::accuracy`] (accuracy, confusion
//! matrix, loading classifiers).

pub mod distributed;
pub mod finetune;
pub mod memory;
pub mod pretrain;
pub mod recipe;

#[cfg(test)]
mod tests {
    use crate::config::VitConfig;
    use crate::data::Normalization;
    use crate::eval::accuracy::top_k;
    use crate::model::classifier::{Classifier, ClassifierConfig, ClassifierPool};
    use crate::rng::MimRng;
    use crate::train::recipe::{FinetuneConfig, Mixed, MixupConfig, beta, mix_batch, param_groups, smooth_targets};
    use rand::SeedableRng;
    use tessera_tensor::Tensor;

    fn vit_classifier(depth: usize, pool: ClassifierPool) -> ClassifierConfig {
        let mut e = VitConfig::preset("vit-tiny", [16, 16], 4, 3).unwrap();
        (e.embed_dim, e.depth, e.num_heads) = (16, depth, 2);
        let names = (0..3).map(|i| format!("c{i}")).collect();
        ClassifierConfig::new(e.into(), names, pool, 0.1).unwrap()
    }

    /// MAE's `param_groups_lrd` on a 3-block ViT with decay 0.5: layer 0
    /// (embeddings) at 0.5⁴, block i at 0.5^(3 − i), head and fc_norm at 1;
    /// no weight decay on biases, norms, tokens, positions.
    #[test]
    fn layer_decay_follows_a_hand_computed_table() {
        let cfg = vit_classifier(3, ClassifierPool::Mean);
        let mut recipe = FinetuneConfig::mae(cfg.clone(), Normalization::uniform(0.0, 1.0, 3), 4, 10);
        recipe.layer_decay = 0.5;
        let model = Classifier::new(cfg.clone(), &mut MimRng::seed_from_u64(0)).unwrap();
        let params = model.parameters();
        let table = [
            ("cls_token", 0, 0.0625, false),
            ("patch_embed.proj.weight", 0, 0.0625, true),
            ("patch_embed.proj.bias", 0, 0.0625, false),
            ("blocks.0.attn.qkv.weight", 1, 0.125, true),
            ("blocks.0.norm1.weight", 1, 0.125, false),
            ("blocks.1.mlp.fc1.weight", 2, 0.25, true),
            ("blocks.2.attn.proj.bias", 3, 0.5, false),
            ("blocks.2.mlp.fc2.weight", 3, 0.5, true),
            ("fc_norm.weight", 4, 1.0, false),
            ("head.weight", 4, 1.0, true),
            ("head.bias", 4, 1.0, false),
        ];
        let groups = param_groups(&recipe, &params);
        for (name, id, scale, decayed) in table {
            assert_eq!(cfg.layer_id(name), id, "{name}");
            let t = &params
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name}"))
                .1;
            let g = groups
                .iter()
                .find(|g| g.params.iter().any(|p| p.id() == t.id()))
                .unwrap();
            assert_eq!(g.lr_scale, scale, "{name}");
            assert_eq!(g.weight_decay, if decayed { 0.05 } else { 0.0 }, "{name}");
        }
        // The fixed sin-cos table is no parameter; every parameter is in one group.
        let grouped: usize = groups.iter().map(|g| g.params.len()).sum();
        assert_eq!(grouped, params.len());
        // No final norm under mean pooling (MAE's global_pool deletes it).
        assert!(!params.iter().any(|(n, _)| n.starts_with("norm.")));
    }

    /// Swin: blocks numbered across stages, merging with the stage's last
    /// block, the embedding 0, the final norm and head on top.
    #[test]
    fn swin_layer_ids() {
        let s = crate::config::SwinConfig::preset("swin-tiny", [224, 224], 3).unwrap();
        let names = (0..5).map(|i| i.to_string()).collect();
        let cfg = ClassifierConfig::new(s.into(), names, ClassifierPool::Mean, 0.1).unwrap();
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
            ClassifierPool::Cls,
            0.0,
        );
        assert!(bad.unwrap_err().to_string().contains("no [CLS]"));
    }

    /// Label-smoothed cross-entropy as soft targets equals the direct
    /// formula `(1 − s)·(−log p_y) + s·mean_k(−log p_k)`.
    #[test]
    fn label_smoothing_matches_the_direct_formula() {
        let (b, k, s) = (3, 5, 0.1f32);
        let logits: Vec<f32> = (0..b * k).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4).collect();
        let labels = [4u32, 0, 2];
        let t = Tensor::new(logits.clone(), &[b, k]).unwrap();
        let got = t
            .soft_cross_entropy(&smooth_targets(&labels, k, s))
            .unwrap()
            .item()
            .unwrap();
        let mut want = 0f64;
        for r in 0..b {
            let row = &logits[r * k..(r + 1) * k];
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            let nll = lse - row[labels[r] as usize] as f64;
            let smooth = row.iter().map(|&v| lse - v as f64).sum::<f64>() / k as f64;
            want += (1.0 - s as f64) * nll + s as f64 * smooth;
        }
        want /= b as f64;
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// Mixup blends image i with image B−1−i by lam and mixes the smoothed
    /// targets by the same lam; CutMix pastes the partner's box and its lam is
    /// the area left (every pixel checked); off, nothing changes.
    #[test]
    fn mixup_and_cutmix_mix_labels_as_pixels() {
        let shape = [4, 2, 6, 5];
        let n = shape.iter().product::<usize>();
        let per = n / 4;
        let imgs: Vec<f32> = (0..n).map(|i| (i / per) as f32 * 10.0 + (i % 7) as f32).collect();
        let labels = [0u32, 1, 2, 1];
        let k = 3;
        let own = smooth_targets(&labels, k, 0.1);
        let check_targets = |q: &[f32], lam: f32| {
            for r in 0..4 {
                for j in 0..k {
                    let want = lam * own[r * k + j] + (1.0 - lam) * own[(3 - r) * k + j];
                    assert!((q[r * k + j] - want).abs() < 1e-6);
                }
                assert!((q[r * k..(r + 1) * k].iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        };
        let mut rng = MimRng::seed_from_u64(3);
        let only = |mixup_alpha, cutmix_alpha| MixupConfig {
            mixup_alpha,
            cutmix_alpha,
            prob: 1.0,
            switch_prob: 0.5,
        };
        for _ in 0..5 {
            let mut x = imgs.clone();
            let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &only(0.8, 0.0), &mut rng);
            let Mixed::Mixup { lam } = m else { panic!("{m:?}") };
            assert!((0.0..=1.0).contains(&lam));
            for i in 0..n {
                let partner = imgs[(3 - i / per) * per + i % per];
                assert!((x[i] - (lam * imgs[i] + (1.0 - lam) * partner)).abs() < 1e-4);
            }
            check_targets(&q, lam);

            let mut x = imgs.clone();
            let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &only(0.0, 1.0), &mut rng);
            let Mixed::CutMix {
                lam,
                top,
                bottom,
                left,
                right,
            } = m
            else {
                panic!("{m:?}")
            };
            let inside = |y: usize, xx: usize| (top..bottom).contains(&y) && (left..right).contains(&xx);
            let mut pasted = 0;
            for i in 0..n {
                let (img, rest) = (i / per, i % per);
                let (y, xx) = ((rest % 30) / 5, rest % 5);
                let want = if inside(y, xx) {
                    imgs[(3 - img) * per + rest]
                } else {
                    imgs[i]
                };
                assert_eq!(x[i], want);
                pasted += inside(y, xx) as usize;
            }
            assert!((lam - (1.0 - pasted as f32 / n as f32)).abs() < 1e-6);
            check_targets(&q, lam);
        }
        let mut x = imgs.clone();
        let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &MixupConfig::off(), &mut rng);
        assert_eq!((m, x, q), (Mixed::None, imgs, own));
    }

    /// Beta(α, α) draws have the right mean (½) and variance (1 / (4(2α+1))).
    #[test]
    fn beta_draws_have_the_right_moments() {
        let mut rng = MimRng::seed_from_u64(9);
        for alpha in [0.8, 1.0, 2.0] {
            let v: Vec<f64> = (0..20000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            assert!((mean - 0.5).abs() < 0.01, "α {alpha}: mean {mean}");
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((var - want).abs() < 0.1 * want, "α {alpha}: var {var} vs {want}");
        }
    }

    /// Stochastic depth: in evaluation the classifier is deterministic (drop
    /// path is the identity); in training the per-image factors are 0 or
    /// 1/(1 − rate), 1 on average.
    #[test]
    fn drop_path_is_identity_in_eval_and_unbiased_in_train() {
        let cfg = vit_classifier(2, ClassifierPool::Cls);
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

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5, 0.0], 3), vec![1, 3, 2]);
    }
}
