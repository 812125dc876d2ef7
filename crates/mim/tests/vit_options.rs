//! BEiT's and SimMIM's ViT options: relative position bias (shared or per
//! block), no absolute table, layer scale, `q_bias`/`v_bias`.

mod common;

use common::*;
use rand::SeedableRng;
use tessera_mim::model::layers::Module;
use tessera_mim::{
    Mask, MimModel, MimRng, PixelLoss, PosEmbedKind, QkvBias, RelPosBias, TargetConfig, VisionTransformer, VitConfig,
};

fn rng() -> MimRng {
    MimRng::seed_from_u64(5)
}

/// The tiny encoder with every option of SimMIM's ViT.
fn beit_like(rel: RelPosBias) -> VitConfig {
    let mut c = tiny_vit(3);
    c.rel_pos_bias = rel;
    c.pos_embed = PosEmbedKind::None;
    c.layer_scale = Some(0.1);
    c.qkv_bias = QkvBias::QV;
    c
}

/// Random, non-zero relative position tables, q/v biases and layer scales
/// (they start at zeros and constants, which would hide mistakes).
fn randomise(vit: &VisionTransformer, seed: u64) {
    let mut r = MimRng::seed_from_u64(seed);
    for (name, t) in vit.named_tensors() {
        if name.contains("relative_position") || name.contains("_bias") || name.contains("gamma") {
            let v = tessera_tensor::init::normal(t.numel(), 0.0, 0.5, &mut r);
            t.set_data(&v).unwrap();
        }
    }
}

/// A mask that hides nothing but visits the patches in a shuffled order:
/// MAE's path then sees every token, permuted.
fn all_visible_shuffled(batch: usize, l: usize, seed: u64) -> Mask {
    use rand::seq::SliceRandom;
    let mut r = MimRng::seed_from_u64(seed);
    let mut ids_shuffle = Vec::new();
    let mut ids_restore = vec![0; batch * l];
    for b in 0..batch {
        let mut p: Vec<usize> = (0..l).collect();
        p.shuffle(&mut r);
        for (k, &i) in p.iter().enumerate() {
            ids_restore[b * l + i] = k;
        }
        ids_shuffle.extend(p);
    }
    Mask {
        batch,
        num_patches: l,
        hidden: vec![false; batch * l],
        ids_shuffle,
        ids_restore,
        len_keep: Some(l),
    }
}

/// Attention does not care about token order, so MAE's path over every patch
/// in a shuffled order gives forward_all's outputs, shuffled — only if each
/// image's relative position index follows its own tokens.
#[test]
fn visible_tokens_get_their_own_relative_positions() {
    for rel in [RelPosBias::Shared, RelPosBias::PerBlock] {
        let vit = VisionTransformer::new(beit_like(rel), &mut rng()).unwrap();
        randomise(&vit, 1);
        let imgs = images(3, 3, 16, 16, 2);
        let l = 16;
        let mask = all_visible_shuffled(3, l, 3);
        let mut r = rng();
        let all = vit.forward_all(&imgs, false, &mut r).unwrap().to_vec(); // (B, 1+L, D)
        let vis = vit.forward_visible(&imgs, &mask, false, &mut r).unwrap().to_vec();
        let d = 32;
        for b in 0..3 {
            let row = |x: &[f32], t: usize| x[(b * (1 + l) + t) * d..][..d].to_vec();
            let close = |a: Vec<f32>, e: Vec<f32>, what: &str| {
                for (x, y) in a.iter().zip(&e) {
                    assert!((x - y).abs() < 1e-4, "{rel:?} image {b} {what}: {x} vs {y}");
                }
            };
            close(row(&vis, 0), row(&all, 0), "[CLS]");
            for k in 0..l {
                let patch = mask.ids_shuffle[b * l + k];
                close(row(&vis, 1 + k), row(&all, 1 + patch), &format!("token {k}"));
            }
        }
        // Without the bias the shuffle would not matter at all (no absolute
        // table either), so the bias must have changed something.
        let mut plain = beit_like(RelPosBias::None);
        plain.layer_scale = Some(0.1);
        let flat = VisionTransformer::new(plain, &mut rng()).unwrap();
        let o = flat.forward_all(&imgs, false, &mut r).unwrap().to_vec();
        assert_ne!(o, all);
    }
}

/// Names follow BEiT's / SimMIM's `state_dict`; no absolute table, no `qkv.bias`.
#[test]
fn names_and_shapes_of_the_options() {
    let shapes = |c: VitConfig| -> Vec<(String, Vec<usize>)> {
        let vit = VisionTransformer::new(c, &mut rng()).unwrap();
        vit.named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect()
    };
    let shared = shapes(beit_like(RelPosBias::Shared));
    let has = |s: &[(String, Vec<usize>)], n: &str| s.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    // (2·4 − 1)² + 3 = 52 rows, 2 heads.
    assert_eq!(
        has(&shared, "rel_pos_bias.relative_position_bias_table"),
        Some(vec![52, 2])
    );
    assert_eq!(has(&shared, "blocks.1.gamma_1"), Some(vec![32]));
    assert_eq!(has(&shared, "blocks.0.gamma_2"), Some(vec![32]));
    assert_eq!(has(&shared, "blocks.0.attn.q_bias"), Some(vec![32]));
    assert_eq!(has(&shared, "blocks.0.attn.v_bias"), Some(vec![32]));
    assert_eq!(has(&shared, "blocks.0.attn.qkv.weight"), Some(vec![96, 32]));
    for absent in [
        "pos_embed",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.relative_position_bias_table",
    ] {
        assert_eq!(has(&shared, absent), None, "{absent}");
    }
    let per_block = shapes(beit_like(RelPosBias::PerBlock));
    assert_eq!(
        has(&per_block, "blocks.1.attn.relative_position_bias_table"),
        Some(vec![52, 2])
    );
    assert_eq!(has(&per_block, "rel_pos_bias.relative_position_bias_table"), None);
    // The defaults are MAE's: none of these tensors.
    let mae = shapes(tiny_vit(3));
    assert!(
        mae.iter()
            .all(|(n, _)| !n.contains("gamma") && !n.contains("relative") && !n.contains("q_bias"))
    );
}

/// Each option off in effect gives the plain block: layer scale 1 is no
/// layer scale, zero q/v biases are a zero qkv.bias (the same weights are
/// drawn in the same order).
#[test]
fn options_at_their_neutral_values_change_nothing() {
    let imgs = images(2, 3, 16, 16, 4);
    let run = |c: VitConfig| {
        let vit = VisionTransformer::new(c, &mut rng()).unwrap();
        vit.forward_all(&imgs, false, &mut rng()).unwrap().to_vec()
    };
    let base = run(tiny_vit(3));
    let mut scaled = tiny_vit(3);
    scaled.layer_scale = Some(1.0);
    let mut qv = tiny_vit(3);
    qv.qkv_bias = QkvBias::QV;
    // A zero relative bias table (its initial value) adds nothing.
    let mut rel = tiny_vit(3);
    rel.rel_pos_bias = RelPosBias::Shared;
    for (what, c) in [
        ("layer scale 1", scaled),
        ("q/v bias", qv),
        ("zero relative table", rel),
    ] {
        let out = run(c);
        for (a, b) in out.iter().zip(&base) {
            assert!((a - b).abs() < 1e-5, "{what}: {a} vs {b}");
        }
    }
}

/// Every new parameter learns: SimMIM and MAE with all options give each a
/// non-zero gradient, and a few steps lower the loss.
#[test]
fn every_option_gets_a_gradient_with_both_methods() {
    for (cfg, rel) in [
        (tiny_simmim(norm_pix()), RelPosBias::Shared),
        (tiny_mae(norm_pix()), RelPosBias::PerBlock),
    ] {
        let mut cfg = cfg;
        cfg.encoder = beit_like(rel).into();
        let mut r = rng();
        let model = MimModel::new(cfg, &mut r).unwrap();
        randomise(model.encoder.vit().unwrap(), 7);
        let imgs = images(2, 3, 16, 16, 5);
        let mask = mae_mask(2, &mut r);
        let grads = loss_gradients(&model, &imgs, &mask, &mut r);
        for (name, t) in model.parameters() {
            if name.contains("relative") || name.contains("gamma") || name.contains("q_bias") || name.contains("v_bias")
            {
                let g = grads
                    .get(&t)
                    .unwrap_or_else(|| panic!("{rel:?}: {name} has no gradient"));
                assert!(g.iter().any(|v| *v != 0.0), "{rel:?}: {name} has an all-zero gradient");
            }
        }
    }
}

/// A checkpoint of a model with the options loads back to the same outputs.
#[test]
fn checkpoints_keep_the_options() {
    let dir = std::env::temp_dir().join(format!("tessera-vit-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let mut cfg = tiny_simmim(norm_pix());
    cfg.encoder = beit_like(RelPosBias::PerBlock).into();
    let trainer = tessera_mim::Trainer::new(tessera_mim::TrainConfig::mae(cfg, 2, 10)).unwrap();
    let model = trainer.model();
    randomise(model.encoder.vit().unwrap(), 9);
    trainer.save(&path).unwrap();
    let loaded = tessera_mim::io::checkpoint::load_model(&path, None).unwrap();
    assert_eq!(loaded.config, model.config);
    let imgs = images(1, 3, 16, 16, 6);
    let f = |m: &MimModel| m.features(&imgs, tessera_mim::Pool::Mean).unwrap().to_vec();
    assert_eq!(f(&loaded), f(model));
    std::fs::remove_dir_all(&dir).ok();
}

/// Stochastic depth: the identity in evaluation; in training, each image's
/// branch is either dropped or scaled by 1/(1 − rate), which leaves it
/// unchanged in expectation; the rate rises linearly over the blocks.
#[test]
fn drop_path_is_identity_in_eval_and_unbiased_in_train() {
    use tessera_mim::model::layers::drop_path_scale;
    let mut r = rng();
    let rate = 0.3;
    let s = drop_path_scale(20_000, rate, &mut r).unwrap().to_vec();
    let keep = 1.0 / (1.0 - rate);
    assert!(s.iter().all(|&v| v == 0.0 || (v - keep).abs() < 1e-6));
    let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
    assert!((mean - 1.0).abs() < 0.02, "mean factor {mean}");

    let mut c = tiny_vit(3);
    c.depth = 3;
    c.drop_path = 0.2;
    assert_eq!(
        [c.drop_path_at(0), c.drop_path_at(1), c.drop_path_at(2)],
        [0.0, 0.1, 0.2]
    );
    let mut plain = c.clone();
    plain.drop_path = 0.0;
    let vit = VisionTransformer::new(c, &mut rng()).unwrap();
    let same = VisionTransformer::new(plain, &mut rng()).unwrap();
    let imgs = images(8, 3, 16, 16, 8);
    let eval = vit.forward_all(&imgs, false, &mut rng()).unwrap().to_vec();
    assert_eq!(eval, same.forward_all(&imgs, false, &mut rng()).unwrap().to_vec());
    let train = |seed| {
        vit.forward_all(&imgs, true, &mut MimRng::seed_from_u64(seed))
            .unwrap()
            .to_vec()
    };
    assert_eq!(train(1), train(1), "deterministic by seed");
    assert_ne!(train(1), eval, "some branch of 8 images × 2 blocks was dropped");
    // Without drop path, training draws nothing and equals evaluation.
    assert_eq!(same.forward_all(&imgs, true, &mut rng()).unwrap().to_vec(), eval);
}

/// BEiT's initialisation: linear weights with std 0.02, `proj` and `fc2` of
/// block i (from 1) divided by √(2i), zero biases, the patch convolution in
/// ±1/√fan_in.
#[test]
fn beit_initialisation() {
    let mut c = tiny_vit(3);
    c.embed_dim = 64;
    c.depth = 3;
    c.init = tessera_mim::InitScheme::Beit;
    let vit = VisionTransformer::new(c, &mut rng()).unwrap();
    let std = |t: &tessera_tensor::Tensor| {
        let v = t.to_vec();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt()
    };
    for (i, b) in vit.blocks.iter().enumerate() {
        let rescale = 1.0 / (2.0 * (i + 1) as f32).sqrt();
        for (what, t, want) in [
            ("qkv", &b.attn.qkv.weight, 0.02),
            ("fc1", &b.mlp.fc1.weight, 0.02),
            ("proj", &b.attn.proj.weight, 0.02 * rescale),
            ("fc2", &b.mlp.fc2.weight, 0.02 * rescale),
        ] {
            let s = std(t);
            assert!((s - want).abs() < 0.1 * want, "block {i} {what}: std {s}, want {want}");
        }
        assert!(b.mlp.fc1.bias.as_ref().unwrap().to_vec().iter().all(|&v| v == 0.0));
    }
    let bound = 1.0 / 48f32.sqrt(); // fan_in = 3·4·4
    let w = vit.patch_embed.weight.to_vec();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.9 * bound));
}

/// The SimMIM ViT-B preset is the published pre-training configuration.
#[test]
fn simmim_vit_base_preset() {
    let c = VitConfig::simmim_vit_base();
    assert_eq!(
        (c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads),
        ([224, 224], 16, 768, 12, 12)
    );
    assert_eq!(c.pos_embed, PosEmbedKind::None);
    assert_eq!(c.rel_pos_bias, RelPosBias::Shared);
    assert_eq!((c.layer_scale, c.qkv_bias, c.drop_path), (Some(0.1), QkvBias::QV, 0.1));
    assert_eq!(c.init, tessera_mim::InitScheme::Beit);
    // Any size, as every preset.
    let small = VitConfig::preset("simmim-vit-base", [32, 32], 4, 1).unwrap();
    assert_eq!((small.grid(), small.rel_pos_bias), ([8, 8], RelPosBias::Shared));
}

/// Without the final norm (SimMIM's ViT for mean pooling) the tokens are
/// the blocks' outputs: applying a fresh LayerNorm to them gives the normed
/// encoder's; `norm.*` is absent from the names.
#[test]
fn without_the_final_norm() {
    let mut c = tiny_vit(3);
    c.final_norm = false;
    let bare = VisionTransformer::new(c, &mut rng()).unwrap();
    let normed = VisionTransformer::new(tiny_vit(3), &mut rng()).unwrap();
    assert!(bare.named_tensors().iter().all(|(n, _)| !n.starts_with("norm.")));
    let imgs = images(2, 3, 16, 16, 9);
    let x = bare.forward_all(&imgs, false, &mut rng()).unwrap();
    let ln = tessera_mim::model::layers::LayerNorm::new(32, 1e-6);
    let want = normed.forward_all(&imgs, false, &mut rng()).unwrap().to_vec();
    assert_eq!(ln.forward(&x).unwrap().to_vec(), want);
}

/// SimMIM's and BEiT's ViT with `qkv_bias=False`: no `q_bias`, `v_bias` or
/// `qkv.bias` at all. Its official state dict (no metadata) once failed
/// with "missing 2 tensor(s): encoder.blocks.0.attn.qkv.bias …"; now the
/// option is read off the tensors' absence and the model computes the same.
#[test]
fn a_vit_without_any_qkv_bias_round_trips_through_an_official_file() {
    let dir = std::env::temp_dir().join(format!("tessera-vit-nobias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = tiny_simmim(TargetConfig::Pixels {
        loss: PixelLoss::L1,
        norm_pix: false,
    });
    let mut vit = beit_like(RelPosBias::Shared);
    vit.qkv_bias = QkvBias::None;
    cfg.encoder = vit.into();
    let model = MimModel::new(cfg, &mut rng()).unwrap();
    randomise(model.encoder.vit().unwrap(), 4);
    let names: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("q_bias") || n.contains("v_bias") || n.contains("qkv.bias")),
        "{names:?}"
    );
    let mut file = tessera_mim::io::safetensors::TensorFile::default();
    model.store_state(&mut file);
    file.metadata.clear(); // as the official code saves it
    let path = dir.join("official.safetensors");
    file.save(&path).unwrap();
    let loaded = tessera_mim::io::checkpoint::load_model(&path, None).unwrap();
    assert_eq!(loaded.config.encoder.vit().unwrap().qkv_bias, QkvBias::None);
    let imgs = images(1, 3, 16, 16, 6);
    let f = |m: &MimModel| m.features(&imgs, tessera_mim::Pool::Mean).unwrap().to_vec();
    assert_eq!(f(&loaded), f(&model));
    std::fs::remove_dir_all(&dir).ok();
}
