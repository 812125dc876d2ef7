//! PyTorch `.pth` files (tests/fixtures/pth, written by
//! benches/pytorch/pth_fixtures.py with torch.save): read as torch.load
//! would, without running them.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tessera_mim::io::safetensors::TensorFile;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pth")
        .join(name)
}

/// MAE's checkpoint layout ({'model': …, 'args': Namespace, 'epoch'}): the
/// state dict found under 'model', f16 and bf16 widened exactly, a
/// transposed tensor read by its strides, the index buffer skipped.
#[test]
fn a_checkpoint_of_mixed_dtypes_loads_as_torch_load_gives_it() {
    let file = TensorFile::load(&fixture("mixed.pth")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mixed.json")).unwrap()).unwrap();
    let names: Vec<&String> = file.tensors.keys().collect();
    assert_eq!(names, ["a", "b", "h", "t"], "the index buffer is skipped");
    for (name, values) in want["values"].as_object().unwrap() {
        let t = &file.tensors[name];
        let shape: Vec<usize> = want["shapes"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let values: Vec<f32> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(t.data, values, "{name}");
    }
}

/// A tiny MAE saved as MAE's released files are: the same tensors as its
/// safetensors copy, and the same model through the loaders.
#[test]
fn an_mae_state_dict_in_pth_equals_its_safetensors_copy() {
    use tessera_mim::io::checkpoint::load_model_hinted;
    use tessera_mim::io::official::ModelHints;
    let pth = TensorFile::load(&fixture("mae_tiny.pth")).unwrap();
    let st = TensorFile::load(&fixture("mae_tiny.safetensors")).unwrap();
    assert_eq!(pth.tensors, st.tensors);
    let hints = ModelHints {
        heads: Some(2),
        decoder_heads: Some(2),
        ..ModelHints::default()
    };
    let a = load_model_hinted(&fixture("mae_tiny.pth"), None, &hints, true).unwrap();
    let b = load_model_hinted(&fixture("mae_tiny.safetensors"), None, &hints, true).unwrap();
    assert_eq!(a.config, b.config);
    let (sa, sb) = (a.state(), b.state());
    for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
        assert_eq!(na, nb);
        assert_eq!(ta.to_vec(), tb.to_vec(), "{na}");
    }
}

/// A pickle that would run a shell command is refused, naming the global.
#[test]
fn a_pickle_that_runs_code_is_refused_by_name() {
    let e = TensorFile::load(&fixture("evil.pth")).unwrap_err().to_string();
    assert!(
        e.contains("evil.pth") && e.contains("refuses the global") && e.contains("system"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated and cut archives: an error or a state dict, never a panic.
    #[test]
    fn mutated_pth_files_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        keep in 1usize..3000,
        which in 0usize..2,
    ) {
        let src = if which == 0 { "mixed.pth" } else { "evil.pth" };
        let mut bytes = std::fs::read(fixture(src)).unwrap();
        for (at, v) in &edits {
            let i = at % bytes.len();
            bytes[i] = *v;
        }
        bytes.truncate(keep.min(bytes.len()));
        let dir = std::env::temp_dir().join(format!("tessera-pth-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pth");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(f) = TensorFile::load(&p) {
            for t in f.tensors.values() {
                prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
            }
        }
    }
}

/// MAE's fine-tuned classifier layout (`fc_norm`, `head`, no final norm),
/// as a `.pth`: loaded by `load_classifier` and giving PyTorch's
/// probabilities (models_vit.py's global pooling) within 1e-4.
#[test]
fn an_mae_finetuned_classifier_in_pth_gives_pytorchs_probabilities() {
    use tessera_mim::io::checkpoint::load_classifier;
    use tessera_mim::io::official::ModelHints;
    let hints = ModelHints {
        heads: Some(2),
        ..ModelHints::default()
    };
    let (model, _) = load_classifier(&fixture("mae_tiny_finetuned.pth"), &hints).unwrap();
    assert_eq!(model.config.num_classes, 5);
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mae_tiny_finetuned.json")).unwrap()).unwrap();
    let f = |k: &str| -> Vec<f32> {
        want[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let x = tessera_tensor::Tensor::new(f("input"), &[2, 3, 16, 16]).unwrap();
    let got = tessera_mim::eval::accuracy::probabilities(&model, &x).unwrap();
    for (g, w) in got.iter().zip(f("probabilities")) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1e-3), "{got:?} against {w}");
    }
}

/// The values of `key` in `variants.json` (pth_fixtures.py: PyTorch's
/// outputs of each released variant on its `input`).
fn variant(key: &str) -> Vec<f32> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("variants.json")).unwrap()).unwrap();
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("variants.json has no '{key}'"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Within 1e-4 relative (absolute near zero).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1e-2),
            "{what}: {g} against PyTorch's {w}"
        );
    }
}

fn variant_input() -> tessera_tensor::Tensor {
    tessera_tensor::Tensor::new(variant("input"), &[2, 3, 16, 16]).unwrap()
}

/// Every released classifier layout loads through `load_classifier` with
/// no more than what its file cannot say, and gives PyTorch's
/// probabilities: BEiT's/SimMIM's fine-tuned ViT (relative tables per
/// block, q/v biases, layer scale, fc_norm), timm's ViT ([CLS] pooling,
/// final norm), timm's Swin (merging at the start of a stage, `head.fc`,
/// no masks: the image size given) and SimMIM's fine-tuned Swin.
#[test]
fn released_classifiers_give_pytorchs_probabilities() {
    use tessera_mim::Pool;
    use tessera_mim::io::checkpoint::load_classifier;
    use tessera_mim::io::official::ModelHints;
    let none = ModelHints::default();
    let heads = ModelHints {
        heads: Some(2),
        ..ModelHints::default()
    };
    let size = ModelHints {
        img_size: Some([16, 16]),
        ..ModelHints::default()
    };
    for (name, hints, classes, pool) in [
        ("beit_vit_finetuned", &none, 4, Pool::Mean),
        ("timm_vit", &heads, 3, Pool::Cls),
        ("timm_swin", &size, 3, Pool::Mean),
        ("simmim_swin_finetuned", &none, 3, Pool::Mean),
    ] {
        let (model, _) = load_classifier(&fixture(&format!("{name}.pth")), hints).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((model.config.num_classes, model.config.pool), (classes, pool), "{name}");
        let got = tessera_mim::eval::accuracy::probabilities(&model, &variant_input()).unwrap();
        assert_close(&got, &variant(name), name);
    }
    // timm's Swin cannot tell its image size: asked for, never guessed.
    let e = load_classifier(&fixture("timm_swin.pth"), &none)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("timm_swin.pth") && e.contains("image size"), "{e}");
}

/// SimMIM's pre-training ViT built with `qkv_bias=False` and
/// `use_mean_pooling=True` (no qkv bias, no final norm, `encoder.fc_norm`)
/// loads as a pre-training model, and its mean-pooled features are
/// PyTorch's (through fc_norm).
#[test]
fn a_simmim_vit_without_qkv_bias_and_with_mean_pooling_loads() {
    use tessera_mim::io::checkpoint::load_model_hinted;
    use tessera_mim::io::official::ModelHints;
    let model = load_model_hinted(&fixture("simmim_vit_nobias.pth"), None, &ModelHints::default(), true)
        .unwrap_or_else(|e| panic!("{e}"));
    let vit = model.config.encoder.vit().unwrap();
    assert!(vit.fc_norm && !vit.final_norm);
    assert_eq!(vit.qkv_bias, tessera_mim::config::QkvBias::None);
    let got = model
        .features(&variant_input(), tessera_mim::Pool::Mean)
        .unwrap()
        .to_vec();
    assert_close(&got, &variant("simmim_vit_nobias"), "features");
}

/// A classifier's encoder is an encoder: `probe` and `finetune` take every
/// released classifier file (its head set aside), and a BEiT-style
/// classifier's mean-pooled features are what its head reads.
#[test]
fn released_classifiers_serve_as_encoders() {
    use tessera_mim::io::checkpoint::{load_classifier, load_model_hinted};
    use tessera_mim::io::official::ModelHints;
    let hints = ModelHints {
        heads: Some(2),
        img_size: Some([16, 16]),
        ..ModelHints::default()
    };
    for name in [
        "beit_vit_finetuned",
        "timm_vit",
        "timm_swin",
        "simmim_swin_finetuned",
        "mae_tiny_finetuned",
    ] {
        let path = fixture(&format!("{name}.pth"));
        let model = load_model_hinted(&path, None, &hints, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = load_model_hinted(&path, None, &hints, true).err().unwrap().to_string();
        assert!(e.contains("encoder alone"), "{name}: {e}");
        if name == "beit_vit_finetuned" {
            let (classifier, _) = load_classifier(&path, &hints).unwrap();
            let x = variant_input();
            let f = model.features(&x, tessera_mim::Pool::Mean).unwrap();
            let logits = classifier.head.forward(&f).unwrap().to_vec();
            let mut rng = <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0);
            let want = classifier.forward(&x, false, &mut rng).unwrap().to_vec();
            assert_close(&logits, &want, "head on the encoder's features");
        }
    }
}

/// The attention maps of a BEiT-style ViT (relative tables per block, q/v
/// biases, layer scale) are the probabilities PyTorch's attention computes:
/// the last block's [CLS] row over the patches, per image and head.
#[test]
fn a_beit_vits_attention_maps_are_pytorchs() {
    use tessera_mim::io::checkpoint::load_classifier;
    use tessera_mim::io::official::ModelHints;
    let (model, _) = load_classifier(&fixture("beit_vit_finetuned.pth"), &ModelHints::default()).unwrap();
    let vit = model.encoder.vit().unwrap();
    let maps = tessera_mim::eval::attention::vit_attention(vit, &variant_input()).unwrap();
    let got: Vec<f32> = maps
        .images
        .iter()
        .flat_map(|m| m.heads.iter().flatten().copied())
        .collect();
    assert_close(&got, &variant("beit_vit_finetuned_cls_attention"), "[CLS] attention");
}
