//! The four parts together: shapes, gradients, overfitting, determinism.

mod common;

use common::*;
use rand::SeedableRng;
use tessera_mim::model::layers::Module;
use tessera_mim::{Mask, MaskingConfig, MimModel, MimRng, PixelLoss, Pool, TargetConfig, VisionTransformer, VitConfig};
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};

fn rng() -> MimRng {
    MimRng::seed_from_u64(42)
}

#[test]
fn encoder_shapes_for_presets_and_channels() {
    let mut r = rng();
    for chans in [1, 3] {
        let vit = VisionTransformer::new(tiny_vit(chans), &mut r).unwrap();
        let imgs = images(2, chans, 16, 16, 1);
        let all = vit.forward_all(&imgs, false, &mut r).unwrap();
        assert_eq!(all.shape(), &[2, 17, 32]);
        assert_eq!(vit.features(&imgs, Pool::Cls).unwrap().shape(), &[2, 32]);
        assert_eq!(vit.features(&imgs, Pool::Mean).unwrap().shape(), &[2, 32]);
        // Both poolings from one pass: [mean | cls] per row, the same values.
        let both = vit.features_mean_and_cls(&imgs).unwrap().to_vec();
        let (mean, cls) = (
            vit.features(&imgs, Pool::Mean).unwrap().to_vec(),
            vit.features(&imgs, Pool::Cls).unwrap().to_vec(),
        );
        for b in 0..2 {
            assert_eq!(&both[b * 64..b * 64 + 32], &mean[b * 32..(b + 1) * 32]);
            assert_eq!(&both[b * 64 + 32..(b + 1) * 64], &cls[b * 32..(b + 1) * 32]);
        }
        let mask = Mask::sample(
            MaskingConfig::mae_default().build(4, [4, 4]).unwrap().as_ref(),
            2,
            [4, 4],
            &mut r,
        );
        assert_eq!(
            vit.forward_visible(&imgs, &mask, true, &mut r).unwrap().shape(),
            &[2, 1 + 4, 32]
        );
        let e = vit
            .forward_all(&images(2, chans, 16, 12, 1), false, &mut r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, ") && e.contains("16, 16"), "{e}");
    }
    // Non-square images and the real presets build with the expected sizes.
    let c = VitConfig::preset("vit-small", [32, 64], 8, 3).unwrap();
    assert_eq!((c.num_patches(), c.embed_dim), (32, 384));
}

#[test]
fn mae_and_simmim_predict_every_patch_with_every_target() {
    let mut r = rng();
    let imgs = images(3, 3, 16, 16, 2);
    let targets = [
        norm_pix(),
        TargetConfig::Pixels {
            loss: PixelLoss::L1,
            norm_pix: false,
        },
        TargetConfig::Codebook {
            size: 8,
            normalize: true,
        },
    ];
    for t in targets {
        for cfg in [tiny_mae(t.clone()), tiny_simmim(t.clone())] {
            let out_dim = cfg.output_dim();
            let mut model = MimModel::new(cfg, &mut r).unwrap();
            if model.codebook.is_none() && matches!(model.config.target, TargetConfig::Codebook { .. }) {
                model.fit_codebook(&imgs, 5, &mut r).unwrap();
            }
            for masking in [
                MaskingConfig::Random { ratio: 0.75 },
                MaskingConfig::Block {
                    ratio: 0.5,
                    min_patches: 16,
                },
                MaskingConfig::Square {
                    side: 2,
                    centered: true,
                },
                MaskingConfig::Grid {
                    k: 2,
                    random_offset: true,
                },
                MaskingConfig::SimMim { ratio: 0.5, cell_px: 8 },
            ] {
                let mask = Mask::sample(masking.build(4, [4, 4]).unwrap().as_ref(), 3, [4, 4], &mut r);
                let out = model.forward(&imgs, &mask, true, &mut r).unwrap();
                assert_eq!(out.pred.shape(), &[3, 16, out_dim]);
                let loss = out.loss.item().unwrap();
                assert!(loss.is_finite() && loss > 0.0, "{masking:?}: loss {loss}");
            }
        }
    }
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let mut r = rng();
    let imgs = images(2, 3, 16, 16, 3);
    for cfg in [
        tiny_mae(norm_pix()),
        tiny_simmim(norm_pix()),
        tiny_mae(TargetConfig::Codebook {
            size: 6,
            normalize: false,
        }),
    ] {
        let mut model = MimModel::new(cfg, &mut r).unwrap();
        if matches!(model.config.target, TargetConfig::Codebook { .. }) {
            model.fit_codebook(&imgs, 3, &mut r).unwrap();
        }
        let mask = mae_mask(2, &mut r);
        let grads = loss_gradients(&model, &imgs, &mask, &mut r);
        let params = model.parameters();
        assert!(params.len() > 20);
        for (name, t) in params {
            let g = grads.get(&t).unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(g.iter().any(|v| *v != 0.0), "{name} has an all-zero gradient");
        }
        // The fixed sin-cos tables are buffers, not parameters.
        let state: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
        // (SimMIM's encoder tensors carry its `encoder.` prefix.)
        let pos = match model.head {
            tessera_mim::model::mim::Head::Mae(_) => "pos_embed",
            tessera_mim::model::mim::Head::SimMim(_) => "encoder.pos_embed",
        };
        assert!(state.contains(&pos.to_string()), "{state:?}");
    }
}

#[test]
fn mae_state_dict_names_and_layouts() {
    let model = MimModel::new(tiny_mae(norm_pix()), &mut rng()).unwrap();
    let state = model.named_tensors();
    let shape = |n: &str| {
        state
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("missing {n}"))
            .1
            .shape()
            .to_vec()
    };
    assert_eq!(shape("patch_embed.proj.weight"), vec![32, 3, 4, 4]);
    assert_eq!(shape("patch_embed.proj.bias"), vec![32]);
    assert_eq!(shape("cls_token"), vec![1, 1, 32]);
    assert_eq!(shape("pos_embed"), vec![1, 17, 32]);
    assert_eq!(shape("blocks.1.attn.qkv.weight"), vec![96, 32]);
    assert_eq!(shape("blocks.0.mlp.fc1.weight"), vec![128, 32]);
    assert_eq!(shape("blocks.0.norm2.bias"), vec![32]);
    assert_eq!(shape("norm.weight"), vec![32]);
    assert_eq!(shape("decoder_embed.weight"), vec![32, 32]);
    assert_eq!(shape("mask_token"), vec![1, 1, 32]);
    assert_eq!(shape("decoder_pos_embed"), vec![1, 17, 32]);
    assert_eq!(shape("decoder_blocks.0.attn.proj.weight"), vec![32, 32]);
    assert_eq!(shape("decoder_norm.bias"), vec![32]);
    assert_eq!(shape("decoder_pred.weight"), vec![48, 32]);
}

/// Trains on one batch with one fixed mask; returns (first, last) loss.
fn overfit(model: &MimModel, steps: usize, lr: f32) -> (f32, f32) {
    let mut r = rng();
    let imgs = images(4, 3, 16, 16, 5);
    let mask = Mask::sample(
        MaskingConfig::mae_default().build(4, [4, 4]).unwrap().as_ref(),
        4,
        [4, 4],
        &mut r,
    );
    let params: Vec<_> = model.parameters().into_iter().map(|(_, t)| t).collect();
    let mut opt = AdamW::new(
        vec![ParamGroup::new(params, 0.0)],
        AdamWConfig {
            lr,
            ..Default::default()
        },
    );
    let (mut first, mut last) = (None, 0.0);
    for _ in 0..steps {
        let out = model.forward(&imgs, &mask, true, &mut r).unwrap();
        last = out.loss.item().unwrap();
        first.get_or_insert(last);
        opt.step(&out.loss.backward().unwrap()).unwrap();
    }
    (first.unwrap(), last)
}

#[test]
fn tiny_mae_overfits_one_batch() {
    let model = MimModel::new(tiny_mae(norm_pix()), &mut rng()).unwrap();
    let (first, last) = overfit(&model, 300, 3e-3);
    assert!(last < 0.1 * first, "MAE loss {first} → {last}");
}

#[test]
fn tiny_simmim_overfits_one_batch() {
    let model = MimModel::new(tiny_simmim(norm_pix()), &mut rng()).unwrap();
    let (first, last) = overfit(&model, 300, 3e-3);
    assert!(last < 0.1 * first, "SimMIM loss {first} → {last}");
}

#[test]
fn codebook_target_overfits_one_batch() {
    let mut r = rng();
    let mut model = MimModel::new(
        tiny_mae(TargetConfig::Codebook {
            size: 16,
            normalize: false,
        }),
        &mut r,
    )
    .unwrap();
    model.fit_codebook(&images(4, 3, 16, 16, 5), 10, &mut r).unwrap();
    let (first, last) = overfit(&model, 300, 3e-3);
    assert!(last < 0.1 * first, "codebook loss {first} → {last}");
}

#[test]
fn features_are_deterministic_and_unmasked() {
    let model = MimModel::new(tiny_mae(norm_pix()), &mut rng()).unwrap();
    let imgs = images(2, 3, 16, 16, 6);
    let a = model.features(&imgs, Pool::Mean).unwrap().to_vec();
    let b = model.features(&imgs, Pool::Mean).unwrap().to_vec();
    assert_eq!(a, b);
    assert!(!model.features(&imgs, Pool::Cls).unwrap().requires_grad());
}

/// `ModelConfig::state_len` counts, without building, exactly the values of
/// the built model's state: MAE and SimMIM heads, other widths, MLP ratios,
/// channels and grids, the ViT's optional tensors, Swin.
#[test]
fn state_len_matches_the_built_model() {
    use tessera_mim::{DecoderConfig, Method, MimModel, ModelConfig};
    let mut configs = vec![tiny_mae(norm_pix()), tiny_simmim(norm_pix())];
    let mut wide = tiny_mae(norm_pix());
    wide.encoder.vit_mut().unwrap().embed_dim = 48;
    wide.encoder.vit_mut().unwrap().num_heads = 3;
    wide.encoder.vit_mut().unwrap().mlp_ratio = 2.5;
    wide.encoder.vit_mut().unwrap().in_chans = 1;
    wide.encoder.vit_mut().unwrap().img_size = [24, 16];
    wide.method = Method::Mae {
        decoder: DecoderConfig {
            embed_dim: 24,
            depth: 3,
            num_heads: 2,
            mlp_ratio: 3.0,
        },
    };
    configs.push(wide);
    // The ViT options that add or replace tensors.
    let mut beit = tiny_simmim(norm_pix());
    {
        let e = beit.encoder.vit_mut().unwrap();
        e.pos_embed = tessera_mim::PosEmbedKind::None;
        e.rel_pos_bias = tessera_mim::RelPosBias::PerBlock;
        e.layer_scale = Some(0.1);
        e.qkv_bias = tessera_mim::QkvBias::QV;
        e.final_norm = false;
    }
    configs.push(beit.clone());
    if let Some(e) = beit.encoder.vit_mut() {
        e.rel_pos_bias = tessera_mim::RelPosBias::Shared;
    }
    configs.push(beit);
    // Swin: stages, merging, clamped windows, the r²-wide SimMIM head, a codebook.
    for (preset, size) in [("swin-mini", 32), ("swin-tiny", 224)] {
        let mut c = tiny_simmim(norm_pix());
        c.encoder = tessera_mim::SwinConfig::preset(preset, [size, size], 3).unwrap().into();
        configs.push(c.clone());
        let mut ape = c.clone();
        if let tessera_mim::EncoderConfig::Swin(s) = &mut ape.encoder {
            s.ape = true;
        }
        configs.push(ape);
        c.target = tessera_mim::TargetConfig::Codebook {
            size: 7,
            normalize: false,
        };
        configs.push(c);
    }
    for cfg in configs {
        let cfg: ModelConfig = cfg;
        let model = MimModel::new(
            cfg.clone(),
            &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0),
        )
        .unwrap();
        let built: usize = model.state().iter().map(|(_, t)| t.numel()).sum();
        assert_eq!(cfg.state_len(), built as u128, "{cfg:?}");
    }
}

/// SimMIM's head is a 1×1 convolution whose channels are in pixel-shuffle
/// order: channel `c·p² + i·p + j` is pixel `(i, j)` of image channel `c`.
/// With zero weights and bias `k` on channel `k`, the prediction in MAE's
/// patchify order `(i, j, c)` must read back `c·p² + i·p + j`.
#[test]
fn simmim_head_channels_are_in_pixel_shuffle_order() {
    let model = MimModel::new(tiny_simmim(norm_pix()), &mut rng()).unwrap();
    let tessera_mim::model::mim::Head::SimMim(head) = &model.head else {
        unreachable!()
    };
    let (out, p, c) = (48, 4, 3);
    assert_eq!(head.weight.shape(), &[out, 32, 1, 1]);
    head.weight.set_data(&vec![0.0; out * 32]).unwrap();
    head.bias
        .set_data(&(0..out).map(|k| k as f32).collect::<Vec<_>>())
        .unwrap();
    let imgs = images(1, 3, 16, 16, 1);
    let mask = Mask::none(1, 16);
    let pred = model.predict(&imgs, &mask, false, &mut rng()).unwrap().to_vec(); // (1, 16, 48)
    for t in 0..16 {
        for i in 0..p {
            for j in 0..p {
                for ch in 0..c {
                    let got = pred[t * out + (i * p + j) * c + ch];
                    assert_eq!(
                        got,
                        (ch * p * p + i * p + j) as f32,
                        "patch {t} pixel ({i}, {j}) channel {ch}"
                    );
                }
            }
        }
    }
}

/// A codebook target on Swin: the head predicts `r²·K` logits per output
/// token, entry `k` of patch `(i, j)` in channel `k·r² + i·r + j` (pixel
/// shuffle of a K-channel map); with zero weights and bias equal to the
/// channel index, the logits of every patch read back its own channels.
#[test]
fn swin_codebook_logits_are_pixel_shuffled_per_patch() {
    use tessera_mim::model::mim::Head;
    use tessera_mim::{MimModel, TargetConfig};
    let mut cfg = tiny_simmim(norm_pix());
    cfg.encoder = tessera_mim::SwinConfig::preset("swin-mini", [32, 32], 3)
        .unwrap()
        .into();
    cfg.target = TargetConfig::Codebook {
        size: 5,
        normalize: false,
    };
    let model = MimModel::new(cfg, &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0)).unwrap();
    let Head::SimMim(head) = &model.head else {
        panic!("SimMIM head")
    };
    let ch = head.bias.numel();
    assert_eq!(ch, 4 * 4 * 5); // r = 8 / 2 = 4 patches a side per output token
    head.weight.set_data(&vec![0.0; head.weight.numel()]).unwrap();
    head.bias
        .set_data(&(0..ch).map(|c| c as f32).collect::<Vec<_>>())
        .unwrap();
    let imgs = tessera_tensor::Tensor::zeros(&[1, 3, 32, 32]);
    let mask = tessera_mim::Mask::from_hidden(vec![false; 256], 1, 256).unwrap();
    let mut rng = <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0);
    let pred = model.predict(&imgs, &mask, false, &mut rng).unwrap().to_vec(); // (1, 256, 5)
    for row in 0..16 {
        for col in 0..16 {
            let (i, j) = (row % 4, col % 4);
            for k in 0..5 {
                let got = pred[(row * 16 + col) * 5 + k];
                assert_eq!(got, (k * 16 + i * 4 + j) as f32, "patch ({row}, {col}) entry {k}");
            }
        }
    }
}

/// MAE needs an encoder that runs on the visible patches alone; Swin's
/// windows and merging need the whole grid, so the pair is refused by name.
#[test]
fn mae_with_swin_is_refused() {
    let mut cfg = tiny_mae(norm_pix());
    cfg.encoder = tessera_mim::SwinConfig::preset("swin-mini", [32, 32], 3)
        .unwrap()
        .into();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("MAE with a Swin encoder") && e.contains("`Method::SimMim`"),
        "{e}"
    );
    assert!(
        tessera_mim::MimModel::new(cfg, &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0)).is_err()
    );
}

/// A Swin model's configuration survives JSON (checkpoint metadata), and a
/// ViT configuration written before Swin existed (a bare encoder object)
/// still reads as a ViT.
#[test]
fn encoder_configs_round_trip_and_old_json_reads() {
    let mut cfg = tiny_simmim(norm_pix());
    cfg.encoder = tessera_mim::SwinConfig::preset("swin-mini", [32, 32], 3)
        .unwrap()
        .into();
    let s = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<tessera_mim::ModelConfig>(&s).unwrap(), cfg);
    let vit = tiny_mae(norm_pix());
    let s = serde_json::to_string(&vit).unwrap();
    assert!(s.contains("\"encoder\":{\"img_size\""), "{s}");
    assert_eq!(serde_json::from_str::<tessera_mim::ModelConfig>(&s).unwrap(), vit);
    let bad = s.replace("\"depth\":", "\"deepness\":");
    let e = serde_json::from_str::<tessera_mim::ModelConfig>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("depth"), "{e}");
}
