//! Safetensors checkpoints.
//!
//! A checkpoint holds the model's tensors under MAE's `state_dict` names (so
//! `safetensors.torch.load_file` + `model.load_state_dict` works in PyTorch),
//! the codebook of a discrete target (`codebook`), the AdamW moments
//! (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`), and as JSON
//! metadata the full training configuration, the step, each parameter's
//! optimizer step and the random generator's state.
//!
//! Everything about checkpoints lives here: the file format ([`TensorFile`]),
//! a model's tensors in and out ([`MimModel::load_state`], [`MimModel::store_state`]),
//! a training run's save and resume ([`Trainer::save`], [`Trainer::resume`]),
//! and loading a model for use ([`load_model`], [`load_model_hinted`]; MAE's
//! own `state_dict`s through [`crate::io::official`]).
//!
//! Files are written atomically: to a temporary file in the same folder,
//! flushed to disk, then renamed over the target. A crash leaves either the old
//! checkpoint or the new one, never half of one.

use crate::error::{MimError, Result, ckpt_err, io_err};
use crate::io::official::{self, ModelHints};
use crate::model::mim::MimModel;
use crate::model::target::Codebook;
use crate::rng::MimRng;
use crate::train::pretrain::{TrainConfig, Trainer};
use crate::{ModelConfig, TargetConfig};
use rand::SeedableRng;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tessera_tensor::Tensor;
use tessera_tensor::optim::{AdamState, AdamW, Optimizer};

/// A tensor read from a file: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The contents of a safetensors file.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, StoredTensor>,
    pub metadata: HashMap<String, String>,
}

/// Writes `bytes` to `path` whole or not at all: a temporary file in the same
/// folder (`.NAME.tmp-PID`), flushed to disk, renamed over `path`, then the
/// folder synced so the rename itself is durable. A crash leaves the old file
/// or the new one, and at most a temporary file that the next run removes
/// ([`remove_stale_temporaries`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| ckpt_err(path, "not a file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes temporary files that an interrupted [`write_atomically`] left in
/// `dir` (`.NAME.tmp-PID`); returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.') && n.contains(".tmp-")
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

impl TensorFile {
    /// Adds a tensor's current values.
    pub fn insert(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(
            name.into(),
            StoredTensor {
                shape: t.shape().to_vec(),
                data: t.to_vec(),
            },
        );
    }

    /// Adds raw values.
    pub fn insert_raw(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.tensors.insert(name.into(), StoredTensor { shape, data });
    }

    /// Serialises to safetensors bytes (f32, little-endian), deterministically:
    /// tensors and metadata keys in sorted order, so the same state always
    /// gives the same bytes (and checksum). The format: an 8-byte
    /// little-endian header length, the JSON header (space-padded to a
    /// multiple of 8), then the tensors' data back to back.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let quote = |s: &str| serde_json::to_string(s).expect("a string serialises to JSON");
        let mut header = String::from("{");
        if !self.metadata.is_empty() {
            let meta: BTreeMap<&String, &String> = self.metadata.iter().collect();
            let entries: Vec<String> = meta.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
            header.push_str(&format!("\"__metadata__\":{{{}}}", entries.join(",")));
        }
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            if t.shape.iter().product::<usize>() != t.data.len() {
                return Err(MimError::Input(format!(
                    "tensor {name}: shape {:?} does not hold {} values",
                    t.shape,
                    t.data.len()
                )));
            }
            let end = offset + 4 * t.data.len();
            if header.len() > 1 {
                header.push(',');
            }
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            header.push_str(&format!(
                "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                quote(name),
                shape.join(",")
            ));
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut bytes = Vec::with_capacity(8 + header.len() + offset);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for t in self.tensors.values() {
            for v in &t.data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(bytes)
    }

    /// Writes atomically (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }

    /// Reads a safetensors file; every tensor must be f32.
    pub fn load(path: &Path) -> Result<TensorFile> {
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses safetensors bytes (`path` only names the source in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<TensorFile> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ckpt_err(path, format!("not a valid safetensors file ({e})")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ckpt_err(path, format!("not a valid safetensors file ({e})")))?;
        let mut out = TensorFile {
            metadata: meta.metadata().clone().unwrap_or_default(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            // BEiT's integer index buffers are recomputed, never read.
            if view.dtype() != Dtype::F32 && crate::io::official::is_recomputed_buffer(&name) {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(ckpt_err(
                    path,
                    format!("tensor '{name}' is {:?}; Tessera reads f32 tensors", view.dtype()),
                ));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.tensors.insert(
                name,
                StoredTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(out)
    }

    /// The tensor `name`, with an error naming the file and key if missing.
    pub fn get(&self, name: &str, path: &Path) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ckpt_err(path, format!("has no tensor '{name}'")))
    }

    /// A metadata entry, with an error naming it if missing.
    pub fn meta(&self, key: &str, path: &Path) -> Result<&str> {
        self.metadata
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| ckpt_err(path, format!("has no '{key}' metadata (not written by Tessera?)")))
    }
}

// ------------------------------------------------------------- models

impl MimModel {
    /// Copies tensors from a checkpoint file into this model. Every tensor of
    /// the model must be present with the same shape, except positional
    /// tables, which are resized from `file_grid` (the patch grid they were
    /// trained on; a square grid is assumed if `None`).
    pub fn load_state(
        &mut self,
        file: &TensorFile,
        path: &std::path::Path,
        file_grid: Option<[usize; 2]>,
    ) -> Result<()> {
        self.load_state_where(file, path, file_grid, |_| true)
    }

    /// [`MimModel::load_state`] for the tensors whose names `wanted` accepts
    /// (an encoder-only checkpoint leaves the decoder as it is).
    pub fn load_state_where(
        &mut self,
        file: &TensorFile,
        path: &std::path::Path,
        file_grid: Option<[usize; 2]>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<()> {
        use crate::config::PosEmbedKind;
        use crate::model::pos_embed::resize;
        let grid = self.config.encoder.grid();
        // Only a ViT has absolute positional tables to resize.
        let enc_kind = self.config.encoder.vit().map_or(PosEmbedKind::None, |v| v.pos_embed);
        for (name, t) in self.state() {
            if !wanted(&name) {
                continue;
            }
            let stored = file.get(&name, path)?;
            if let Some(i) = stored.data.iter().position(|v| !v.is_finite()) {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor '{name}' holds a non-finite value ({}) at index {i}",
                        stored.data[i]
                    ),
                ));
            }
            // The encoder's table is `encoder.pos_embed` in SimMIM's names.
            let is_pos = name == "pos_embed" || name == "encoder.pos_embed" || name == "decoder_pos_embed";
            let data = if stored.shape == t.shape() {
                stored.data.clone()
            } else if is_pos && stored.shape.len() == 3 && stored.shape[2] == t.shape()[2] {
                let old_l = stored.shape[1] - 1;
                let old = file_grid.unwrap_or_else(|| {
                    let s = (old_l as f64).sqrt().round() as usize;
                    [s, s]
                });
                if old[0] * old[1] != old_l {
                    return Err(ckpt_err(
                        path,
                        format!(
                            "'{name}' has {old_l} patch positions, which is not a {}x{} grid",
                            old[0], old[1]
                        ),
                    ));
                }
                let kind = if name != "decoder_pos_embed" {
                    enc_kind
                } else {
                    PosEmbedKind::SinCos
                };
                resize(&stored.data, t.shape()[2], old, grid, kind)
            } else {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?} in the file but {:?} in this model \
                         (a checkpoint of another configuration?)",
                        stored.shape,
                        t.shape()
                    ),
                ));
            };
            t.set_data(&data)?;
        }
        if let TargetConfig::Codebook { size, normalize } = self.config.target {
            let c = file.get("codebook", path)?;
            self.codebook = Some(Codebook::from_centroids(
                c.data.clone(),
                size,
                self.config.encoder.patch_dim(),
                normalize,
            )?);
        }
        Ok(())
    }

    /// Adds this model's tensors (and codebook) to a file.
    pub fn store_state(&self, file: &mut TensorFile) {
        for (name, t) in self.state() {
            file.insert(name, &t);
        }
        if let Some(book) = &self.codebook {
            file.insert_raw("codebook", vec![book.size, book.dim], book.centroids.clone());
        }
    }
}

// ------------------------------------------------------------- training runs

impl Trainer {
    /// Writes a checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = TensorFile::default();
        self.model.store_state(&mut file);
        let steps = store_optimizer(&mut file, &self.params, &self.optimizer);
        let meta = &mut file.metadata;
        meta.insert("format".into(), "pt".into());
        meta.insert("tessera.version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("tessera.config".into(), json(&self.config));
        meta.insert("tessera.step".into(), self.step.to_string());
        meta.insert("tessera.rng".into(), json(&self.rng));
        meta.insert("tessera.optimizer_steps".into(), json(&steps));
        file.save(path)
    }

    /// Continues a run from a checkpoint: same weights, optimizer moments,
    /// step and random state, so the loss trajectory is that of an
    /// uninterrupted run.
    pub fn resume(path: &Path) -> Result<Trainer> {
        let file = TensorFile::load(path)?;
        let config: TrainConfig = parse_meta(&file, "tessera.config", path)?;
        check_declared_size(&config.model, &file, path)?;
        let mut trainer = Trainer::new(config)?;
        trainer.restore(&file, path)?;
        Ok(trainer)
    }

    /// Like [`Trainer::resume`], refusing a checkpoint whose model differs from `expected`.
    pub fn resume_checked(path: &Path, expected: &ModelConfig) -> Result<Trainer> {
        let file = TensorFile::load(path)?;
        let config: TrainConfig = parse_meta(&file, "tessera.config", path)?;
        check_declared_size(&config.model, &file, path)?;
        if &config.model != expected {
            return Err(ckpt_err(
                path,
                "was written for another model configuration than the one requested",
            ));
        }
        let mut trainer = Trainer::new(config)?;
        trainer.restore(&file, path)?;
        Ok(trainer)
    }

    fn restore(&mut self, file: &TensorFile, path: &Path) -> Result<()> {
        self.model.load_state(file, path, None)?;
        self.step = parse_meta(file, "tessera.step", path)?;
        self.rng = parse_meta(file, "tessera.rng", path)?;
        restore_optimizer(file, path, &self.params, &mut self.optimizer)?;
        self.optimizer.set_lr(self.config.lr_at(self.step));
        Ok(())
    }
}

/// Adds AdamW's moments of every parameter to `file`
/// (`optimizer.exp_avg.NAME`, `optimizer.exp_avg_sq.NAME`) and returns each
/// one's step count (for the `tessera.optimizer_steps` metadata).
pub(crate) fn store_optimizer(
    file: &mut TensorFile,
    params: &[(String, Tensor)],
    optimizer: &AdamW,
) -> BTreeMap<String, u64> {
    let mut steps = BTreeMap::new();
    for (name, t) in params {
        if let Some(st) = optimizer.state(t) {
            file.insert_raw(format!("optimizer.exp_avg.{name}"), t.shape().to_vec(), st.m.clone());
            file.insert_raw(format!("optimizer.exp_avg_sq.{name}"), t.shape().to_vec(), st.v.clone());
            steps.insert(name.clone(), st.step);
        }
    }
    steps
}

/// Restores what [`store_optimizer`] wrote.
pub(crate) fn restore_optimizer(
    file: &TensorFile,
    path: &Path,
    params: &[(String, Tensor)],
    optimizer: &mut AdamW,
) -> Result<()> {
    let steps: BTreeMap<String, u64> = parse_meta(file, "tessera.optimizer_steps", path)?;
    for (name, t) in params {
        let Some(&step) = steps.get(name) else { continue };
        let m = file.get(&format!("optimizer.exp_avg.{name}"), path)?.data.clone();
        let v = file.get(&format!("optimizer.exp_avg_sq.{name}"), path)?.data.clone();
        optimizer
            .set_state(t, AdamState { step, m, v })
            .map_err(|e| ckpt_err(path, format!("optimizer state of '{name}': {e}")))?;
    }
    Ok(())
}

/// Refuses metadata that describes another model than the tensors hold,
/// before any memory is taken for it: the model's state would not fit in the
/// file (a 500 KB file claiming a 65536-wide model).
fn check_declared_size(model: &ModelConfig, file: &TensorFile, path: &Path) -> Result<()> {
    let held: u128 = file
        .tensors
        .iter()
        .filter(|(name, _)| !name.starts_with("optimizer."))
        .map(|(_, t)| t.data.len() as u128)
        .sum();
    let wanted = model.state_len();
    // Positional tables of another grid are resized on load, so allow the
    // stored state to differ by them; anything far larger is not this file.
    if wanted > 2 * held + (1 << 20) {
        return Err(ckpt_err(
            path,
            format!(
                "its metadata describes a model of {wanted} values, but the file holds {held}: \
                 corrupt metadata or another file"
            ),
        ));
    }
    Ok(())
}

/// Reads a JSON metadata entry of a checkpoint.
pub fn parse_meta<T: serde::de::DeserializeOwned>(file: &TensorFile, key: &str, path: &Path) -> Result<T> {
    serde_json::from_str(file.meta(key, path)?)
        .map_err(|e| ckpt_err(path, format!("metadata '{key}' is malformed: {e}")))
}

/// A metadata value as JSON.
pub(crate) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("configuration and state serialise to JSON")
}

// ------------------------------------------------------------- loading for use

/// Loads a model (for evaluation or reconstruction) from a checkpoint,
/// optionally at another image size (positional tables are resized): a
/// Tessera checkpoint, or an official MAE pre-training `state_dict` in
/// safetensors (see [`load_model_hinted`]).
pub fn load_model(path: &Path, img_size: Option<[usize; 2]>) -> Result<MimModel> {
    load_model_hinted(path, img_size, &ModelHints::default(), true)
}

/// [`load_model`], also for checkpoints without Tessera's metadata (MAE's
/// released weights): their configuration is read off the tensors' shapes,
/// with `hints` for what shapes cannot say ([`crate::io::official`]). With
/// `need_decoder` false an encoder-only file is accepted (for features); its
/// decoder stays randomly initialised.
pub fn load_model_hinted(
    path: &Path,
    img_size: Option<[usize; 2]>,
    hints: &ModelHints,
    need_decoder: bool,
) -> Result<MimModel> {
    let file = TensorFile::load(path)?;
    let official = !file.metadata.contains_key("tessera.config");
    let file = if official {
        official::timm_swin_to_simmim(file)
    } else {
        file
    };
    let model_config = if official {
        let config = official::infer_config(&file, path, hints, need_decoder)?;
        if need_decoder && !official::has_decoder(&file) {
            return Err(ckpt_err(
                path,
                "holds an encoder alone (no decoder tensors); this needs the pre-training weights",
            ));
        }
        config
    } else {
        let model = parse_meta::<TrainConfig>(&file, "tessera.config", path)?.model;
        check_declared_size(&model, &file, path)?;
        model
    };
    let trained_grid = model_config.encoder.grid();
    let mut model_config = model_config;
    if let Some(size) = img_size {
        model_config.encoder.set_img_size(size);
    }
    let mut model = MimModel::new(model_config, &mut MimRng::seed_from_u64(0))?;
    if official {
        let encoder_only = !official::has_decoder(&file);
        let wanted = |name: &str| !encoder_only || official::is_encoder_tensor(name);
        let names: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
        official::check_names(&file, path, &names, wanted)?;
        model.load_state_where(&file, path, Some(trained_grid), wanted)?;
    } else {
        model.load_state(&file, path, Some(trained_grid))?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_atomic_overwrite() {
        let dir = tmpdir("rt");
        let path = dir.join("a.safetensors");
        let mut f = TensorFile::default();
        f.insert_raw("w", vec![2, 3], (0..6).map(|v| v as f32).collect());
        f.metadata.insert("k".into(), "v".into());
        f.save(&path).unwrap();
        let g = TensorFile::load(&path).unwrap();
        assert_eq!(g.tensors, f.tensors);
        assert_eq!(g.metadata["k"], "v");
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    /// The same state gives the same bytes, whatever order it was built in
    /// (metadata is a hash map), and the bytes read back through the
    /// safetensors crate (shapes, values, metadata).
    #[test]
    fn same_state_same_bytes() {
        let build = |order: &[usize]| {
            let mut f = TensorFile::default();
            for &i in order {
                f.insert_raw(
                    format!("t{i}"),
                    vec![2, i + 1],
                    (0..2 * (i + 1)).map(|x| x as f32 * 0.5 - i as f32).collect(),
                );
                f.metadata.insert(format!("key{i}"), format!("value \"{i}\""));
            }
            f
        };
        let a = build(&[0, 1, 2, 3, 4, 5, 6, 7]).to_bytes().unwrap();
        let b = build(&[7, 3, 5, 0, 2, 6, 1, 4]).to_bytes().unwrap();
        assert_eq!(a, b);
        let back = TensorFile::from_bytes(&a, Path::new("x")).unwrap();
        assert_eq!(back.tensors, build(&[0, 1, 2, 3, 4, 5, 6, 7]).tensors);
        assert_eq!(back.metadata["key3"], "value \"3\"");
        let st = SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("t2").unwrap().shape(), &[2, 3]);
    }

    #[test]
    fn truncated_and_garbage_files_are_clear_errors() {
        let dir = tmpdir("bad");
        let path = dir.join("a.safetensors");
        let mut f = TensorFile::default();
        f.insert_raw("w", vec![64], vec![1.0; 64]);
        let bytes = f.to_bytes().unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = TensorFile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("a.safetensors") && e.contains("not a valid safetensors"),
            "{e}"
        );
        fs::write(&path, b"hello").unwrap();
        assert!(TensorFile::load(&path).is_err());
        let e = TensorFile::load(&dir.join("missing.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }
}
