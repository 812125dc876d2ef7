//! Parity with SimMIM's published ViT configuration: a fixture made by
//! `benches/pytorch/simmim_parity.py` (a from-scratch PyTorch SimMIM-ViT: no
//! absolute positions, a shared relative position bias, layer scale, q/v
//! biases, the 1×1-convolution + pixel-shuffle head, L1 on hidden pixels)
//! holds weights under SimMIM's names, images, a mask, the loss and the
//! reconstruction. Tessera loads the weights by name and must agree within
//! 1e-4 relative.

use rand::SeedableRng;
use std::path::Path;
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::{
    Mask, Method, MimModel, MimRng, ModelConfig, PixelLoss, PosEmbedKind, QkvBias, RelPosBias, TargetConfig, VitConfig,
};
use tessera_tensor::Tensor;

fn fixture() -> (TensorFile, &'static Path) {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/simmim_vit.safetensors"
    ));
    (TensorFile::load(path).expect("the committed fixture loads"), path)
}

/// The fixture's model: 16×16×3, patch 4, 32 wide, 2 blocks of 2 heads, with
/// SimMIM's ViT options and target.
fn config() -> ModelConfig {
    let mut e = VitConfig::preset("vit-tiny", [16, 16], 4, 3).unwrap();
    (e.embed_dim, e.depth, e.num_heads) = (32, 2, 2);
    e.pos_embed = PosEmbedKind::None;
    e.rel_pos_bias = RelPosBias::Shared;
    e.layer_scale = Some(0.1);
    e.qkv_bias = QkvBias::QV;
    ModelConfig {
        encoder: e.into(),
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

#[test]
fn simmim_vit_matches_pytorch() {
    let (file, path) = fixture();
    let mut rng = MimRng::seed_from_u64(0);
    let mut model = MimModel::new(config(), &mut rng).unwrap();
    model.load_state_where(&file, path, None, |_| true).unwrap();

    let get = |name: &str| file.get(name, path).unwrap();
    let imgs = Tensor::new(get("images").data.clone(), &get("images").shape).unwrap();
    let hidden: Vec<bool> = get("mask").data.iter().map(|&v| v == 1.0).collect();
    let mask = Mask::from_hidden(hidden, 2, 16).unwrap();

    let pred = model.predict(&imgs, &mask, false, &mut rng).unwrap();
    assert_rel_close(&pred.to_vec(), &get("pred").data, "reconstruction");
    let loss = model.loss(&pred, &imgs, &mask).unwrap().to_vec()[0];
    let want = get("loss").data[0];
    assert!(
        (loss - want).abs() <= 1e-4 * want.abs(),
        "loss {loss} vs PyTorch {want}"
    );
}

/// Every tensor of the model has its SimMIM name in the fixture, and nothing
/// in the fixture's weights is left unused.
#[test]
fn simmim_names_cover_the_official_state_dict() {
    let (file, path) = fixture();
    let model = MimModel::new(config(), &mut MimRng::seed_from_u64(0)).unwrap();
    let ours: std::collections::BTreeSet<String> = model.state().into_iter().map(|(n, _)| n).collect();
    for n in &ours {
        assert!(file.get(n, path).is_ok(), "{n} is not in SimMIM's state_dict");
    }
    let theirs: std::collections::BTreeSet<String> = file
        .tensors
        .keys()
        .filter(|n| !["images", "mask", "loss", "pred"].contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(ours, theirs);
}

/// The fixture's weights as an official SimMIM checkpoint would hold them
/// (no Tessera metadata, plus BEiT's int64 `relative_position_index`
/// buffer): the configuration is read off the shapes, the index buffer is
/// skipped, and the model reproduces PyTorch's reconstruction.
#[test]
fn an_official_simmim_state_dict_loads_without_metadata() {
    use safetensors::tensor::{Dtype, TensorView};
    let (file, path) = fixture();
    let mut views = Vec::new();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors
        .iter()
        .filter(|(n, _)| !["images", "mask", "loss", "pred"].contains(&n.as_str()))
        .map(|(n, t)| {
            (
                n.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    for (n, shape, b) in &bytes {
        views.push((n.clone(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()));
    }
    let index: Vec<u8> = tessera_kernels::relpos::grid_index([4, 4], true)
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    views.push((
        "encoder.rel_pos_bias.relative_position_index".into(),
        TensorView::new(Dtype::I64, vec![17, 17], &index).unwrap(),
    ));
    let dir = std::env::temp_dir().join(format!("tessera-official-simmim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let official = dir.join("simmim.safetensors");
    std::fs::write(&official, safetensors::serialize(views, None).unwrap()).unwrap();

    let model = tessera_mim::io::checkpoint::load_model(&official, None).unwrap();
    let mut want = config();
    want.encoder.vit_mut().unwrap().init = tessera_mim::InitScheme::Beit;
    assert_eq!(model.config, want);

    let get = |name: &str| file.get(name, path).unwrap();
    let imgs = Tensor::new(get("images").data.clone(), &get("images").shape).unwrap();
    let hidden: Vec<bool> = get("mask").data.iter().map(|&v| v == 1.0).collect();
    let mask = Mask::from_hidden(hidden, 2, 16).unwrap();
    let pred = model
        .predict(&imgs, &mask, false, &mut MimRng::seed_from_u64(0))
        .unwrap();
    assert_rel_close(&pred.to_vec(), &get("pred").data, "reconstruction of the official file");
    std::fs::remove_dir_all(&dir).ok();
}
