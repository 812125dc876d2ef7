//! Parity of the Swin encoder with a from-scratch PyTorch Swin
//! (`benches/pytorch/swin_parity.py`, written from the paper and the
//! official architecture): weights under the official names, two images, the
//! last stage's tokens and the pooled features, within 1e-4 relative.

use rand::SeedableRng;
use std::path::Path;
use tessera_mim::MimRng;
use tessera_mim::checkpoint::TensorFile;
use tessera_mim::layers::Module;
use tessera_mim::swin::{SwinConfig, SwinTransformer};
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
