//! Parity of the Swin encoder with a from-scratch PyTorch Swin
//! (`benches/pytorch/swin_parity.py`, written from the paper and the
//! official architecture): weights under the official names, two images, the
//! last stage's tokens and the pooled features, within 1e-4 relative; and
//! SimMIM on that Swin (`benches/pytorch/swin_simmim_parity.py`): the
//! reconstruction and the loss, from Tessera's model, from the official
//! `state_dict` without metadata, and the encoder from timm's names.

use rand::SeedableRng;
use std::collections::BTreeSet;
use std::path::Path;
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::model::layers::Module;
use tessera_mim::model::swin::{SwinConfig, SwinTransformer};
use tessera_mim::{EncoderConfig, Mask, Method, MimModel, MimRng, ModelConfig, PixelLoss, Pool, TargetConfig};
use tessera_tensor::Tensor;

#[test]
fn swin_encoder_matches_pytorch() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/swin_encoder.safetensors"
    ));
    let file = TensorFile::load(path).unwrap();
    // 16×16×3, patch 2 (an 8×8 grid), window 4: stage 0 has shifted windows,
    // stage 1 is one window, stage 2 (2×2) is smaller than the window.
    let config = SwinConfig {
        img_size: [16, 16],
        patch_size: 2,
        in_chans: 3,
        embed_dim: 16,
        depths: vec![2, 2, 1],
        num_heads: vec![2, 4, 8],
        window: 4,
        mlp_ratio: 4.0,
        drop_path: 0.0,
        norm_eps: 1e-5,
        ape: false,
    };
    let model = SwinTransformer::new(config, &mut MimRng::seed_from_u64(0)).unwrap();
    let weights: Vec<(String, Tensor)> = model.named_tensors();
    let extra = ["images", "tokens", "features"];
    assert_eq!(
        weights.len() + extra.len(),
        file.tensors.len(),
        "every official tensor has a place"
    );
    for (name, t) in &weights {
        let stored = file.get(name, path).unwrap();
        assert_eq!(stored.shape, t.shape(), "{name}");
        t.set_data(&stored.data).unwrap();
    }
    let get = |n: &str| file.get(n, path).unwrap();
    let imgs = Tensor::new(get("images").data.clone(), &get("images").shape).unwrap();
    let tokens = model
        .stages(&model.embed(&imgs).unwrap(), false, &mut MimRng::seed_from_u64(0))
        .unwrap();
    assert_eq!(tokens.shape(), &get("tokens").shape[..]);
    for (what, got, want) in [
        ("tokens", tokens.to_vec(), &get("tokens").data),
        (
            "features",
            model.features(&imgs).unwrap().to_vec(),
            &get("features").data,
        ),
    ] {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * scale, "{what}[{i}]: {g} vs PyTorch {w}");
        }
    }
}

/// The SimMIM fixture (`benches/pytorch/swin_simmim_parity.py`): the same
/// small Swin under SimMIM's names, with mask token and head.
fn simmim_fixture() -> (TensorFile, &'static Path) {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/swin_simmim.safetensors"
    ));
    (TensorFile::load(path).expect("the committed fixture loads"), path)
}

const EXTRA: [&str; 4] = ["images", "mask", "loss", "pred"];

fn simmim_config() -> ModelConfig {
    let encoder = SwinConfig {
        img_size: [16, 16],
        patch_size: 2,
        in_chans: 3,
        embed_dim: 16,
        depths: vec![2, 2, 1],
        num_heads: vec![2, 4, 8],
        window: 4,
        mlp_ratio: 4.0,
        drop_path: 0.0,
        norm_eps: 1e-5,
        ape: false,
    };
    ModelConfig {
        encoder: encoder.into(),
        method: Method::SimMim,
        target: TargetConfig::Pixels {
            loss: PixelLoss::L1,
            norm_pix: false,
        },
    }
}

fn assert_rel_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale.max(1e-6),
            "{what}[{i}]: {g} vs PyTorch {w} (scale {scale})"
        );
    }
}

/// Predictions and loss of `model` on the fixture's images and mask, against
/// PyTorch's.
fn check_simmim(model: &MimModel, file: &TensorFile, path: &Path, what: &str) {
    let get = |name: &str| file.get(name, path).unwrap();
    let imgs = Tensor::new(get("images").data.clone(), &get("images").shape).unwrap();
    let hidden: Vec<bool> = get("mask").data.iter().map(|&v| v == 1.0).collect();
    let mask = Mask::from_hidden(hidden, 2, 64).unwrap();
    let mut rng = MimRng::seed_from_u64(0);
    let pred = model.predict(&imgs, &mask, false, &mut rng).unwrap();
    assert_eq!(pred.shape(), &[2, 64, 12]);
    assert_rel_close(&pred.to_vec(), &get("pred").data, what);
    let loss = model.loss(&pred, &imgs, &mask).unwrap().to_vec()[0];
    let want = get("loss").data[0];
    assert!(
        (loss - want).abs() <= 1e-4 * want.abs(),
        "{what}: loss {loss} vs PyTorch {want}"
    );
}

/// SimMIM on Swin: every tensor has its SimMIM name in the fixture (and
/// nothing is left over), and the reconstruction (a 1×1 convolution to
/// 8²·3 channels, pixel shuffle by 8, reordered to patches) and the loss
/// match PyTorch's.
#[test]
fn simmim_swin_matches_pytorch() {
    let (file, path) = simmim_fixture();
    let mut model = MimModel::new(simmim_config(), &mut MimRng::seed_from_u64(0)).unwrap();
    let ours: BTreeSet<String> = model.state().into_iter().map(|(n, _)| n).collect();
    let theirs: BTreeSet<String> = file
        .tensors
        .keys()
        .filter(|n| !EXTRA.contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(ours, theirs);
    assert!(ours.contains("encoder.layers.0.blocks.1.attn.relative_position_bias_table"));
    assert!(ours.contains("encoder.layers.1.downsample.reduction.weight"));
    assert_eq!(file.get("decoder.0.weight", path).unwrap().shape, [192, 64, 1, 1]);
    model.load_state_where(&file, path, None, |_| true).unwrap();
    check_simmim(&model, &file, path, "reconstruction");
}

/// Writes `tensors` (name, shape, values) as a bare safetensors file, as a
/// PyTorch `state_dict` converted with `safetensors.torch.save_file`.
fn write_state_dict(name: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> std::path::PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let dir = std::env::temp_dir().join(format!("tessera-swin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}.safetensors"));
    std::fs::write(&out, safetensors::serialize(views, None).unwrap()).unwrap();
    out
}

/// The fixture's weights as an official SimMIM-Swin `state_dict` holds
/// them: no Tessera metadata, plus Swin's `attn_mask` buffer of the shifted
/// block (stage 0: 8×8 tokens, window 4, so 4 windows of 16 tokens).
fn official_tensors(file: &TensorFile) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .tensors
        .iter()
        .filter(|(n, _)| !EXTRA.contains(&n.as_str()))
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.clone()))
        .collect();
    let attn_mask = tessera_kernels::window::shifted_window_mask(8, 8, 4, 2);
    tensors.push(("encoder.layers.0.blocks.1.attn_mask".into(), vec![4, 16, 16], attn_mask));
    tensors
}

/// The fixture's weights as an official SimMIM-Swin `state_dict` holds them
/// (no Tessera metadata, Swin's `attn_mask` buffer of the shifted block):
/// the configuration is read off the shapes — stages, depths, heads, window
/// and, from the mask's window count, the image size — and the model
/// reproduces PyTorch's reconstruction.
#[test]
fn an_official_simmim_swin_state_dict_loads_without_metadata() {
    let (file, path) = simmim_fixture();
    let tensors = official_tensors(&file);
    let official = write_state_dict("simmim", &tensors);
    let model = tessera_mim::io::checkpoint::load_model(&official, None).unwrap();
    let mut want = simmim_config();
    if let EncoderConfig::Swin(s) = &mut want.encoder {
        s.drop_path = 0.1; // not in a state dict: Swin's default
    }
    assert_eq!(model.config, want);
    check_simmim(&model, &file, path, "reconstruction of the official file");
    std::fs::remove_dir_all(official.parent().unwrap()).ok();
}

/// The same file with Swin's `ape` table (`encoder.absolute_pos_embed`,
/// zeros): the option is read off the tensor's presence, and a zero table
/// leaves PyTorch's reconstruction unchanged.
#[test]
fn an_official_state_dict_with_absolute_positions_turns_ape_on() {
    let (file, path) = simmim_fixture();
    let mut tensors = official_tensors(&file);
    tensors.push(("encoder.absolute_pos_embed".into(), vec![1, 64, 16], vec![0.0; 64 * 16]));
    let official = write_state_dict("simmim-ape", &tensors);
    let model = tessera_mim::io::checkpoint::load_model(&official, None).unwrap();
    let EncoderConfig::Swin(s) = &model.config.encoder else {
        panic!("a Swin model")
    };
    assert!(s.ape);
    check_simmim(&model, &file, path, "reconstruction with a zero absolute table");
    std::fs::remove_dir_all(official.parent().unwrap()).ok();
}

/// A timm (≥ 0.9) `swin_*` state dict of the same encoder: bare names, patch
/// merging at the start of the next stage (`layers.{i+1}.downsample`), a
/// classifier `head.fc`. It loads as the encoder of a SimMIM model (at the
/// image size given) and gives the fixture's features.
#[test]
fn a_timm_swin_state_dict_loads_as_the_encoder() {
    let (file, path) = simmim_fixture();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (n, t) in &file.tensors {
        let Some(bare) = n.strip_prefix("encoder.") else {
            continue; // the head
        };
        if bare == "mask_token" {
            continue;
        }
        let name = match bare.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
            Some((i, rest)) if rest.starts_with("downsample.") => {
                format!("layers.{}.{rest}", i.parse::<usize>().unwrap() + 1)
            }
            _ => bare.to_string(),
        };
        tensors.push((name, t.shape.clone(), t.data.clone()));
    }
    tensors.push(("head.fc.weight".into(), vec![10, 64], vec![0.0; 640]));
    tensors.push(("head.fc.bias".into(), vec![10], vec![0.0; 10]));
    assert!(
        tensors
            .iter()
            .any(|(n, _, _)| n == "layers.2.downsample.reduction.weight")
    );
    let timm = write_state_dict("timm", &tensors);
    let hints = tessera_mim::io::official::ModelHints::default();
    let model = tessera_mim::io::checkpoint::load_model_hinted(&timm, Some([16, 16]), &hints, false).unwrap();
    assert_eq!(model.config.encoder.swin().unwrap().depths, [2, 2, 1]);

    let mut reference = MimModel::new(simmim_config(), &mut MimRng::seed_from_u64(0)).unwrap();
    reference.load_state_where(&file, path, None, |_| true).unwrap();
    let get = |name: &str| file.get(name, path).unwrap();
    let imgs = Tensor::new(get("images").data.clone(), &get("images").shape).unwrap();
    let got = model.features(&imgs, Pool::Mean).unwrap().to_vec();
    let want = reference.features(&imgs, Pool::Mean).unwrap().to_vec();
    assert_eq!(got, want);
    // No [CLS] to pool.
    assert!(model.features(&imgs, Pool::Cls).is_err());
    std::fs::remove_dir_all(timm.parent().unwrap()).ok();
}

/// Without its `attn_mask` buffers (timm's files; stages of one block) a
/// Swin state dict cannot tell its image size: it once was read as 32 ×
/// window pixels whatever it was trained at (a 32-pixel Swin as 128, its
/// data silently upscaled). Now the size is asked for, and taken as given.
#[test]
fn a_swin_state_dict_without_its_mask_needs_the_image_size() {
    use tessera_mim::io::checkpoint::load_model_hinted;
    use tessera_mim::io::official::ModelHints;
    let (file, _) = simmim_fixture();
    let tensors: Vec<_> = official_tensors(&file)
        .into_iter()
        .filter(|(n, _, _)| !n.ends_with("attn_mask"))
        .collect();
    let official = write_state_dict("simmim-nomask", &tensors);
    let e = tessera_mim::io::checkpoint::load_model(&official, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot tell") && e.contains("`ModelHints::img_size`"), "{e}");
    let hints = ModelHints {
        img_size: Some([16, 16]),
        ..ModelHints::default()
    };
    let model = load_model_hinted(&official, None, &hints, true).unwrap();
    assert_eq!(model.config.encoder.img_size(), [16, 16]);
    // A size asked for at load is the size where the file cannot tell it.
    let model = tessera_mim::io::checkpoint::load_model(&official, Some([16, 16])).unwrap();
    assert_eq!(model.config.encoder.img_size(), [16, 16]);
    std::fs::remove_dir_all(official.parent().unwrap()).ok();
}
