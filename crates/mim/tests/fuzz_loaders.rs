//! Every loader fed random and mutated bytes, and real checkpoints with
//! crafted metadata: each must return a value or an error, never panic. (A
//! few thousand cases here; `fuzz/` holds cargo-fuzz targets of the same
//! loaders for longer runs.)

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tessera_mim::data::cifar::read_batch;
use tessera_mim::data::folder::decode;
use tessera_mim::data::idx::{read_images, read_labels};
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::train::pretrain::TrainConfig;

/// A per-test folder (removed at the end of each case's process).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `bytes` with `edits` (position, value) applied and cut to `keep` bytes.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], keep: usize) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, v) in edits {
            let i = at % bytes.len();
            bytes[i] = v;
        }
    }
    bytes.truncate(keep.max(1).min(bytes.len()));
    bytes
}

fn idx_images() -> Vec<u8> {
    let mut b = 0x0000_0803u32.to_be_bytes().to_vec();
    for d in [3u32, 4, 5] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..60).map(|i| i as u8));
    b
}

fn png() -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn checkpoint() -> Vec<u8> {
    let mut f = TensorFile::default();
    f.insert_raw("a", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    f.insert_raw("b", vec![1], vec![-1.0]);
    f.metadata.insert("k".into(), "v".into());
    f.to_bytes().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idx_files_never_panic(random in prop::collection::vec(any::<u8>(), 0..512), e in edits(), keep in 1usize..200) {
        let dir = scratch("idx");
        for bytes in [random.clone(), mutate(idx_images(), &e, keep)] {
            let p = write(&dir, "x-idx3-ubyte", &bytes);
            let _ = read_images(&p);
            let _ = read_labels(&p, 10);
            let gz = dir.join("x-idx3-ubyte.gz");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, &bytes).unwrap();
            std::fs::write(&gz, enc.finish().unwrap()).unwrap();
            let _ = read_images(&gz);
            // Raw bytes under a .gz name: not gzip at all.
            std::fs::write(&gz, &bytes).unwrap();
            let _ = read_images(&gz);
        }
    }

    #[test]
    fn cifar_batches_never_panic(random in prop::collection::vec(any::<u8>(), 0..8000), keep in 1usize..8000) {
        let dir = scratch("cifar");
        let mut record = vec![3u8];
        record.extend((0..3072).map(|i| i as u8));
        for bytes in [random.clone(), mutate(record.repeat(2), &[(keep, 200)], keep)] {
            let p = write(&dir, "data_batch_1.bin", &bytes);
            let _ = read_batch(&p, 10);
        }
    }

    #[test]
    fn image_files_never_panic(
        random in prop::collection::vec(any::<u8>(), 0..512),
        e in edits(),
        keep in 1usize..400,
    ) {
        let dir = scratch("img");
        for bytes in [random.clone(), mutate(png(), &e, keep)] {
            let p = write(&dir, "x.png", &bytes);
            let _ = decode(&p);
            let j = write(&dir, "x.jpg", &bytes);
            let _ = decode(&j);
        }
    }

    #[test]
    fn checkpoints_and_mask_files_never_panic(
        random in prop::collection::vec(any::<u8>(), 0..512),
        e in edits(),
        keep in 1usize..300,
    ) {
        for bytes in [random.clone(), mutate(checkpoint(), &e, keep)] {
            if let Ok(f) = TensorFile::from_bytes(&bytes, Path::new("fuzz.safetensors")) {
                // What was read is whole: every tensor holds its shape's values.
                for t in f.tensors.values() {
                    prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
                }
            }
        }
    }

    #[test]
    fn config_json_never_panics(random in ".{0,200}", e in edits(), keep in 1usize..4000) {
        let valid = serde_json::to_vec(&TrainConfig::mae(
            tessera_mim::ModelConfig {
                encoder: tessera_mim::VitConfig::preset("vit-tiny", [32, 32], 4, 3).unwrap().into(),
                method: tessera_mim::Method::SimMim,
                target: tessera_mim::TargetConfig::Pixels { loss: tessera_mim::PixelLoss::L1, norm_pix: false },
            },
            8,
            10,
        ))
        .unwrap();
        for bytes in [random.as_bytes().to_vec(), mutate(valid, &e, keep)] {
            if let Ok(text) = std::str::from_utf8(&bytes)
                && let Ok(cfg) = serde_json::from_str::<TrainConfig>(text)
            {
                let _ = cfg.validate();
            }
        }
    }
}

/// A tiny pre-training checkpoint and a tiny fine-tuning one, written once.
fn real_checkpoints() -> &'static (TensorFile, TensorFile) {
    use tessera_mim::data::Normalization;
    use tessera_mim::model::classifier::ClassifierConfig;
    use tessera_mim::train::finetune::Finetuner;
    use tessera_mim::train::pretrain::Trainer;
    use tessera_mim::train::recipe::FinetuneConfig;
    static FILES: std::sync::OnceLock<(TensorFile, TensorFile)> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch("real");
        let mut vit = tessera_mim::VitConfig::preset("vit-tiny", [8, 8], 4, 3).unwrap();
        (vit.embed_dim, vit.depth, vit.num_heads) = (8, 1, 2);
        let model = tessera_mim::ModelConfig {
            encoder: vit.clone().into(),
            method: tessera_mim::Method::SimMim,
            target: tessera_mim::TargetConfig::Pixels {
                loss: tessera_mim::PixelLoss::L1,
                norm_pix: false,
            },
        };
        let pre = dir.join("pre.safetensors");
        Trainer::new(TrainConfig::mae(model, 2, 4)).unwrap().save(&pre).unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        let cls = ClassifierConfig::new(vit.into(), names, tessera_mim::config::Pool::Mean, 0.0).unwrap();
        let recipe = FinetuneConfig::mae(cls, Normalization::uniform(0.5, 0.25, 3), 2, 4);
        let ft = dir.join("ft.safetensors");
        Finetuner::from_scratch(recipe).unwrap().save(&ft).unwrap();
        let files = (TensorFile::load(&pre).unwrap(), TensorFile::load(&ft).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        files
    })
}

/// The JSON paths of every leaf of `v` (objects and arrays walked).
fn leaves(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                at.push(k.clone());
                leaves(x, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(i.to_string());
                leaves(x, at, out);
                at.pop();
            }
        }
        _ => out.push(at.clone()),
    }
}

/// `v` with the leaf at `path` replaced by `new`.
fn replace(v: &mut serde_json::Value, path: &[String], new: serde_json::Value) {
    let mut node = v;
    for key in path {
        node = match node {
            serde_json::Value::Object(m) => m.get_mut(key).unwrap(),
            serde_json::Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
            _ => unreachable!("leaves() walked objects and arrays"),
        };
    }
    *node = new;
}

/// Values a hostile file puts in a field: zero, negative, huge, fractional
/// and mistyped.
fn crafted() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1u64 << 40)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e30)),
        Just(serde_json::json!(0.5)),
        Just(serde_json::json!("x")),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([])),
        Just(serde_json::json!(true)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every metadata kind (a pre-training run's configuration and step, a
    /// fine-tuning recipe, the model or classifier configuration `convert`
    /// writes) with one field crafted, through every loader:
    /// an error or a value, never a panic or an abort.
    #[test]
    fn crafted_checkpoint_metadata_never_panics(pick in any::<usize>(), value in crafted(), which in 0usize..5) {
        use tessera_mim::io::checkpoint::{
            CLASSIFIER_KEY, MODEL_KEY, load_classifier, load_model, load_model_hinted, train_config,
        };
        use tessera_mim::io::official::ModelHints;
        let (pre, ft) = real_checkpoints();
        // What `tessera convert` writes into a released file: the model's
        // configuration alone, no training state.
        let converted = |file: &TensorFile, from: &str, key: &str| {
            let mut f = file.clone();
            f.tensors.retain(|n, _| !n.starts_with("optimizer."));
            let v: serde_json::Value = serde_json::from_str(&file.metadata[from]).unwrap();
            f.metadata.clear();
            f.metadata.insert(key.into(), v["model"].to_string());
            f
        };
        let (pre_conv, ft_conv) = (
            converted(pre, "tessera.config", MODEL_KEY),
            converted(ft, "tessera.finetune", CLASSIFIER_KEY),
        );
        let (file, key) = match which {
            0 => (pre, "tessera.config"),
            1 => (pre, "tessera.step"),
            2 => (ft, "tessera.finetune"),
            3 => (&pre_conv, MODEL_KEY),
            _ => (&ft_conv, CLASSIFIER_KEY),
        };
        let mut meta: serde_json::Value = serde_json::from_str(&file.metadata[key]).unwrap();
        let mut paths = Vec::new();
        leaves(&meta, &mut Vec::new(), &mut paths);
        replace(&mut meta, &paths[pick % paths.len()], value);
        let mut crafted = file.clone();
        crafted.metadata.insert(key.into(), meta.to_string());
        let dir = scratch("crafted");
        let p = dir.join("c.safetensors");
        crafted.save(&p).unwrap();
        let _ = load_model(&p, None);
        let _ = load_model_hinted(&p, None, &ModelHints::default(), false);
        let _ = train_config(&p);
        let _ = tessera_mim::train::pretrain::Trainer::resume(&p);
        let _ = load_classifier(&p, &ModelHints::default());
        let _ = tessera_mim::train::finetune::Finetuner::resume(&p);
    }
}
