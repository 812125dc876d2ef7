//! Every loader fed random and mutated bytes: each must return a value or an
//! error, never panic. (A few thousand cases here; `fuzz/` holds cargo-fuzz
//! targets of the same loaders for longer runs.)

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
