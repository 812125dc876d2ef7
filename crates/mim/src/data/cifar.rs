//! CIFAR-10, binary version.
//!
//! Each file is a sequence of 3073-byte records: one label byte, then the
//! 32×32 image as three planes (R, G, B), each row-major. The training split
//! is `data_batch_1.bin` … `data_batch_5.bin` (50000 images), the test split
//! `test_batch.bin` (10000). The files may sit in the given folder or in its
//! `cifar-10-batches-bin` subfolder (the archive's layout). Class names come
//! from `batches.meta.txt` when it is present.

use super::{Dataset, Normalization, RawImage, Split, out_of_range};
use crate::error::{MimError, Result, io_err};
use std::path::{Path, PathBuf};

/// Image side.
pub const SIDE: usize = 32;
/// Bytes of one image: 3 planes of 32×32.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes of one record: the label, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// The standard class names, used when `batches.meta.txt` is absent.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The files of a split.
pub fn split_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|k| format!("data_batch_{k}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Reads the records of one file: `(labels, images (N, 3, 32, 32) bytes)`.
/// Labels must be below `classes`.
pub fn read_batch(path: &Path, classes: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|source| io_err(path, source))?;
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(MimError::Input(format!(
            "{}: {} bytes is not a whole number of CIFAR-10 records \
             ({RECORD_BYTES} bytes each: 1 label + 3x32x32 pixels)",
            path.display(),
            bytes.len()
        )));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut labels = Vec::with_capacity(n);
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] as usize >= classes {
            return Err(MimError::Input(format!(
                "{}: record {i} has label {} but there are {classes} classes",
                path.display(),
                rec[0]
            )));
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((labels, images))
}

/// Class names from `batches.meta.txt`: one per non-empty line.
fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| io_err(path, source))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(MimError::Input(format!("{}: no class names", path.display())));
    }
    Ok(names)
}

/// One split of CIFAR-10, held in memory as bytes.
pub struct Cifar10 {
    split: Split,
    classes: Vec<String>,
    labels: Vec<u8>,
    /// `(N, 3, 32, 32)` bytes.
    images: Vec<u8>,
}

impl Cifar10 {
    /// Reads one split from `dir` or `dir/cifar-10-batches-bin`.
    pub fn open(dir: &Path, split: Split) -> Result<Cifar10> {
        if !dir.is_dir() {
            return Err(MimError::Input(format!(
                "{}: no such folder for cifar10",
                dir.display()
            )));
        }
        let files = split_files(split);
        let root: PathBuf = [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
            .into_iter()
            .find(|d| d.join(&files[0]).is_file())
            .ok_or_else(|| {
                MimError::Input(format!(
                    "{}: missing (nor is it in {}); expected the binary version of CIFAR-10",
                    dir.join(&files[0]).display(),
                    dir.join("cifar-10-batches-bin").display()
                ))
            })?;
        let meta = root.join("batches.meta.txt");
        let classes = if meta.is_file() {
            read_class_names(&meta)?
        } else {
            CLASSES.iter().map(|s| s.to_string()).collect()
        };
        let (mut labels, mut images) = (Vec::new(), Vec::new());
        for name in &files {
            let path = root.join(name);
            if !path.is_file() {
                return Err(MimError::Input(format!("{}: missing", path.display())));
            }
            let (l, im) = read_batch(&path, classes.len().min(256))?;
            labels.extend(l);
            images.extend(im);
        }
        Ok(Cifar10 {
            split,
            classes,
            labels,
            images,
        })
    }
}

impl Dataset for Cifar10 {
    fn name(&self) -> String {
        format!("cifar10 ({})", self.split.as_str())
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn channels(&self) -> usize {
        3
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        Some([SIDE, SIDE])
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.labels.get(i).map(|&l| l as u32)
    }
    fn get(&self, i: usize) -> Result<RawImage> {
        if i >= self.len() {
            return Err(out_of_range(&self.name(), i, self.len()));
        }
        Ok(RawImage::from_planar(
            &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
            3,
            SIDE,
            SIDE,
        ))
    }
    fn normalization(&self) -> Normalization {
        Normalization {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{TempDir, msg};

    /// A record whose R plane is all `r`, G plane `g`, B plane `b`, except
    /// pixel (0, 1) of the R plane, which is 7.
    fn record(label: u8, r: u8, g: u8, b: u8) -> Vec<u8> {
        let mut rec = vec![label];
        for v in [r, g, b] {
            rec.extend(std::iter::repeat_n(v, SIDE * SIDE));
        }
        rec[1 + 1] = 7;
        rec
    }

    #[test]
    fn reads_records_with_planes_in_order() {
        let tmp = TempDir::new("cifar-ok");
        let sub = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        let bytes = [record(3, 10, 20, 30), record(9, 200, 100, 50)].concat();
        std::fs::write(sub.join("test_batch.bin"), &bytes).unwrap();
        let ds = Cifar10::open(tmp.path(), Split::Test).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!((ds.label(0), ds.label(1)), (Some(3), Some(9)));
        assert_eq!(ds.class_names()[9], "truck");
        let img = ds.get(1).unwrap();
        assert_eq!((img.channels, img.height, img.width), (3, 32, 32));
        let hw = SIDE * SIDE;
        assert_eq!(img.data[0], 200.0 / 255.0);
        assert_eq!(img.data[1], 7.0 / 255.0);
        assert_eq!(img.data[hw + 5], 100.0 / 255.0);
        assert_eq!(img.data[2 * hw + hw - 1], 50.0 / 255.0);
        assert!(ds.get(2).is_err());

        // Class names from batches.meta.txt.
        std::fs::write(sub.join("batches.meta.txt"), "a\nb\nc\nd\n\n").unwrap();
        let m = msg(Cifar10::open(tmp.path(), Split::Test));
        assert!(
            m.contains("record 1 has label 9") && m.contains("test_batch.bin"),
            "{m}"
        );
        std::fs::write(sub.join("test_batch.bin"), record(3, 0, 0, 0)).unwrap();
        assert_eq!(
            Cifar10::open(tmp.path(), Split::Test).unwrap().class_names(),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn size_not_a_multiple_of_a_record_is_an_error() {
        let tmp = TempDir::new("cifar-size");
        let path = tmp.path().join("test_batch.bin");
        let mut bytes = record(1, 0, 0, 0);
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let m = msg(Cifar10::open(tmp.path(), Split::Test));
        assert!(
            m.contains(&path.display().to_string()) && m.contains("3072 bytes"),
            "{m}"
        );
    }

    #[test]
    fn missing_training_files_are_named() {
        let tmp = TempDir::new("cifar-missing");
        let m = msg(Cifar10::open(tmp.path(), Split::Train));
        assert!(m.contains("data_batch_1.bin"), "{m}");
        std::fs::write(tmp.path().join("data_batch_1.bin"), record(0, 1, 2, 3)).unwrap();
        let m = msg(Cifar10::open(tmp.path(), Split::Train));
        assert!(m.contains("data_batch_2.bin"), "{m}");
        for k in 2..=5 {
            std::fs::write(tmp.path().join(format!("data_batch_{k}.bin")), record(k, 1, 2, 3)).unwrap();
        }
        let ds = Cifar10::open(tmp.path(), Split::Train).unwrap();
        assert_eq!(ds.len(), 5);
        assert_eq!(ds.label(4), Some(5));
    }
}
