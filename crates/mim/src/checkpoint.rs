//! Safetensors checkpoints.
//!
//! A checkpoint holds the model's tensors under MAE's `state_dict` names (so
//! `safetensors.torch.load_file` + `model.load_state_dict` works in PyTorch),
//! the codebook of a discrete target (`codebook`), the AdamW moments
//! (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`), and as JSON
//! metadata the full training configuration, the step, each parameter's
//! optimizer step and the random generator's state.
//!
//! Files are written atomically: to a temporary file in the same folder,
//! flushed to disk, then renamed over the target. A crash leaves either the old
//! checkpoint or the new one, never half of one.

use crate::error::{MimError, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tessera_tensor::Tensor;

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

fn ckpt_err(path: &Path, msg: impl Into<String>) -> MimError {
    MimError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> MimError {
    MimError::Io {
        path: path.to_path_buf(),
        source,
    }
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

    /// Serialises to safetensors bytes (f32, little-endian).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(name, shape, b)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), b)
                    .map_err(|e| MimError::Input(format!("tensor {name}: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let meta = if self.metadata.is_empty() {
            None
        } else {
            Some(self.metadata.clone())
        };
        safetensors::serialize(views, meta).map_err(|e| MimError::Input(format!("serialising tensors: {e}")))
    }

    /// Writes atomically (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
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
            f.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
            drop(f);
            fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
            // Make the rename itself durable.
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
