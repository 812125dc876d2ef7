//! Safetensors files: the container under every checkpoint, mask file and
//! feature dump Tessera writes, and the format PyTorch weights are converted
//! to.
//!
//! A file is an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range (and string metadata under
//! `__metadata__`), then the tensors' data back to back. Tessera writes f32
//! tensors only, in sorted order, so the same state always gives the same
//! bytes; it reads f32 tensors and skips the integer index buffers that
//! PyTorch modules keep in their `state_dict`s but Tessera computes
//! ([`is_recomputed_buffer`]).
//!
//! Files are written atomically ([`write_atomically`]): to a temporary file in
//! the same folder, flushed to disk, then renamed over the target. A crash
//! leaves either the old file or the new one, never half of one.

use crate::error::{MimError, Result, ckpt_err, io_err};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tessera_tensor::Tensor;

/// A tensor read from a file: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The contents of a safetensors file (or of a PyTorch `.pth` file's state
/// dict, [`crate::io::pth`]: [`TensorFile::load`] reads either).
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
///
/// Errors name `path` (the file the caller asked for), not the temporary.
/// While a write is under way [`writes_in_flight`] counts it, so that a
/// handler about to end the process can let it finish.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let _counted = InFlight::start();
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
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        io_err(path, e)
    })
}

static WRITES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many [`write_atomically`] calls are under way in this process.
pub fn writes_in_flight() -> usize {
    WRITES_IN_FLIGHT.load(Ordering::SeqCst)
}

/// Counts one write in [`WRITES_IN_FLIGHT`] while it lives.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        WRITES_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        WRITES_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a file name is one of [`write_atomically`]'s temporaries
/// (`.NAME.tmp-PID`).
pub fn is_atomic_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Removes temporary files that an interrupted [`write_atomically`] left in
/// `dir` (`.NAME.tmp-PID`); returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| is_atomic_temporary(&e.file_name().to_string_lossy()))
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
        if crate::io::pth::is_pth(&bytes) {
            // A PyTorch .pth archive: its state dict, read without running it.
            let mut out = TensorFile::default();
            for t in crate::io::pth::read(&bytes, path)? {
                if t.integer && is_recomputed_buffer(&t.name) {
                    continue; // BEiT's index buffers: Tessera computes them
                }
                if t.integer {
                    return Err(ckpt_err(
                        path,
                        format!(
                            "tensor '{}' holds integers; Tessera reads floating-point tensors",
                            t.name
                        ),
                    ));
                }
                out.tensors.insert(
                    t.name,
                    StoredTensor {
                        shape: t.shape,
                        data: t.data,
                    },
                );
            }
            return Ok(out);
        }
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
            if view.dtype() != Dtype::F32 && is_recomputed_buffer(&name) {
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

/// BEiT's and Swin's integer index buffers and Swin's shifted-window masks,
/// which Tessera computes itself.
pub fn is_recomputed_buffer(name: &str) -> bool {
    name.ends_with("relative_position_index") || name.ends_with(".attn_mask")
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

    /// A failed write names the file asked for (it once named the hidden
    /// temporary), its cause once, and leaves no temporary behind.
    #[test]
    fn write_errors_name_the_users_path() {
        let dir = tmpdir("werr");
        let path = dir.join("out.png");
        // A folder where the temporary would go makes its creation fail.
        fs::create_dir_all(dir.join(format!(".out.png.tmp-{}", std::process::id()))).unwrap();
        let e = write_atomically(&path, b"x").unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(!e.contains(".tmp-"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
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
