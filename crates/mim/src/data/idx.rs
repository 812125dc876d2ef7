//! MNIST and Fashion-MNIST in the IDX format, gzipped (`.gz`) or not.
//!
//! An IDX file is a big-endian header, then the payload:
//!
//! | file | magic | dims | payload |
//! | --- | --- | --- | --- |
//! | images | `0x00000803` (u8, 3 dims) | `N, H, W` | `N·H·W` bytes, row-major |
//! | labels | `0x00000801` (u8, 1 dim) | `N` | `N` bytes, each below 10 |
//!
//! Files of a split: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`
//! and `t10k-…` for the test split. Pixels stay in memory as bytes
//! (47 MB for Fashion-MNIST's training set) and become floats in [`Dataset::get`].

use super::{Dataset, Normalization, RawImage, Split, out_of_range};
use crate::error::{MimError, Result, io_err};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// What to do when Fashion-MNIST's default folder or files are missing.
const FASHION_MNIST_HINT: &str =
    " (install it with `apt-get install dataset-fashion-mnist`, or give the folder holding the IDX files)";

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Fashion-MNIST's classes.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which IDX data set: the class names and statistics differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    FashionMnist,
    Mnist,
}

impl IdxKind {
    fn name(self) -> &'static str {
        match self {
            IdxKind::FashionMnist => "fashion-mnist",
            IdxKind::Mnist => "mnist",
        }
    }
}

/// Images `(N, H, W)` as read from an IDX file.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    /// `(N, H, W)` bytes.
    pub pixels: Vec<u8>,
}

/// Finds `<dir>/<name>` or `<dir>/<name>.gz`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads a whole file, decompressing it if its name ends in `.gz`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| io_err(path, source))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        // Inflate the header first, then no more than the size it declares
        // (and one byte, to notice a longer stream): a small file that would
        // inflate to gigabytes is refused after reading what it claims to hold.
        let gz_err =
            |e: std::io::Error| MimError::Input(format!("{}: cannot decompress gzip data: {e}", path.display()));
        let mut dec = GzDecoder::new(&raw[..]);
        let mut out = Vec::new();
        (&mut dec).take(4).read_to_end(&mut out).map_err(gz_err)?;
        if out.len() < 4 {
            return Ok(out); // too short: parse_header says so
        }
        let ndims = out[3] as usize;
        (&mut dec)
            .take(4 * ndims as u64)
            .read_to_end(&mut out)
            .map_err(gz_err)?;
        if out.len() < 4 + 4 * ndims {
            return Ok(out); // ends inside its header: parse_header says so
        }
        let declared = (0..ndims)
            .map(|d| be_u32(&out, 4 + 4 * d) as u64)
            .try_fold(1u64, |acc, v| acc.checked_mul(v))
            .unwrap_or(u64::MAX);
        dec.take(declared.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(gz_err)?;
        if (out.len() - 4 - 4 * ndims) as u64 > declared {
            return Err(MimError::Input(format!(
                "{}: the data is longer than the {declared} bytes its header declares",
                path.display()
            )));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The big-endian `u32` at byte `at`.
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks the magic number and returns the dimensions and the payload.
fn parse_header<'a>(bytes: &'a [u8], path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(MimError::Input(format!(
            "{}: {} bytes is too short for an IDX file",
            path.display(),
            bytes.len()
        )));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(MimError::Input(format!(
            "{}: magic number 0x{found:08x} is not that of an IDX {what} file (0x{magic:08x})",
            path.display()
        )));
    }
    if bytes.len() < header {
        return Err(MimError::Input(format!(
            "{}: the file ends inside its header ({} bytes, the header has {header})",
            path.display(),
            bytes.len()
        )));
    }
    let dims = (0..ndims).map(|d| be_u32(bytes, 4 + 4 * d) as usize).collect();
    Ok((dims, &bytes[header..]))
}

/// Reads an IDX images file (`.gz` or raw) and validates its size.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path)?;
    let (dims, payload) = parse_header(&bytes, path, IMAGES_MAGIC, "images")?;
    let (count, height, width) = (dims[0], dims[1], dims[2]);
    if height == 0 || width == 0 {
        return Err(MimError::Input(format!(
            "{}: header declares images of {height}x{width} pixels",
            path.display()
        )));
    }
    let expected = count.checked_mul(height).and_then(|v| v.checked_mul(width));
    if expected != Some(payload.len()) {
        let declared = expected.map_or("more than 2^64".to_string(), |e| e.to_string());
        return Err(MimError::Input(format!(
            "{}: header declares {count} images of {height}x{width} ({declared} bytes) but the file holds {} bytes",
            path.display(),
            payload.len()
        )));
    }
    Ok(IdxImages {
        count,
        height,
        width,
        pixels: payload.to_vec(),
    })
}

/// Reads an IDX labels file (`.gz` or raw) and validates its size and values
/// (each below `classes`).
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (dims, payload) = parse_header(&bytes, path, LABELS_MAGIC, "labels")?;
    if dims[0] != payload.len() {
        return Err(MimError::Input(format!(
            "{}: header declares {} labels but the file holds {} bytes",
            path.display(),
            dims[0],
            payload.len()
        )));
    }
    if let Some((i, &l)) = payload.iter().enumerate().find(|&(_, &l)| l as usize >= classes) {
        return Err(MimError::Input(format!(
            "{}: label {l} of item {i} is not below the {classes} classes",
            path.display()
        )));
    }
    Ok(payload.to_vec())
}

/// One split of MNIST or Fashion-MNIST, held in memory as bytes.
pub struct IdxDataset {
    kind: IdxKind,
    split: Split,
    images: IdxImages,
    labels: Vec<u8>,
}

impl IdxDataset {
    /// Fashion-MNIST from `dir`, or from [`FASHION_MNIST_DEFAULT_DIR`] with a
    /// hint to install the Debian package when it is missing.
    pub fn open_fashion_mnist(dir: Option<&Path>, split: Split) -> Result<IdxDataset> {
        match dir {
            Some(d) => Self::open(d, IdxKind::FashionMnist, split),
            None => Self::open_hinted(
                Path::new(FASHION_MNIST_DEFAULT_DIR),
                IdxKind::FashionMnist,
                split,
                FASHION_MNIST_HINT,
            ),
        }
    }

    /// Reads one split from the IDX files in `dir`.
    pub fn open(dir: &Path, kind: IdxKind, split: Split) -> Result<IdxDataset> {
        Self::open_hinted(dir, kind, split, "")
    }

    fn open_hinted(dir: &Path, kind: IdxKind, split: Split, hint: &str) -> Result<IdxDataset> {
        if !dir.is_dir() {
            return Err(MimError::Input(format!(
                "{}: no such folder for {}{hint}",
                dir.display(),
                kind.name()
            )));
        }
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let locate = |name: String| {
            find_file(dir, &name).ok_or_else(|| {
                MimError::Input(format!(
                    "{}: missing (neither it nor {name}.gz is there){hint}",
                    dir.join(&name).display()
                ))
            })
        };
        let images_path = locate(format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = locate(format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_images(&images_path)?;
        let labels = read_labels(&labels_path, 10)?;
        if labels.len() != images.count {
            return Err(MimError::Input(format!(
                "{}: {} labels for the {} images of {}",
                labels_path.display(),
                labels.len(),
                images.count,
                images_path.display()
            )));
        }
        Ok(IdxDataset {
            kind,
            split,
            images,
            labels,
        })
    }

    /// The images as read (`(N, H, W)` bytes).
    pub fn images(&self) -> &IdxImages {
        &self.images
    }
}

impl Dataset for IdxDataset {
    fn name(&self) -> String {
        format!("{} ({})", self.kind.name(), self.split.as_str())
    }
    fn len(&self) -> usize {
        self.images.count
    }
    fn channels(&self) -> usize {
        1
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        Some([self.images.height, self.images.width])
    }
    fn class_names(&self) -> Vec<String> {
        match self.kind {
            IdxKind::FashionMnist => FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
            IdxKind::Mnist => (0..10).map(|d| d.to_string()).collect(),
        }
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.labels.get(i).map(|&l| l as u32)
    }
    fn get(&self, i: usize) -> Result<RawImage> {
        if i >= self.len() {
            return Err(out_of_range(&self.name(), i, self.len()));
        }
        let (h, w) = (self.images.height, self.images.width);
        Ok(RawImage::from_planar(
            &self.images.pixels[i * h * w..(i + 1) * h * w],
            1,
            h,
            w,
        ))
    }
    fn normalization(&self) -> Normalization {
        match self.kind {
            IdxKind::FashionMnist => Normalization::uniform(0.2860, 0.3530, 1),
            IdxKind::Mnist => Normalization::uniform(0.1307, 0.3081, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{TempDir, msg};
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(payload);
        b
    }

    fn write(path: &Path, bytes: &[u8]) {
        if path.extension().is_some_and(|e| e == "gz") {
            let mut enc = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::default());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// `n` images of 3x2 whose pixel `p` of image `i` is `10·i + p`, labels `i % 10`.
    fn write_split(dir: &Path, prefix: &str, n: u32, gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        let pixels: Vec<u8> = (0..n).flat_map(|i| (0..6).map(move |p| (10 * i + p) as u8)).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write(
            &dir.join(format!("{prefix}-images-idx3-ubyte{ext}")),
            &idx_bytes(IMAGES_MAGIC, &[n, 3, 2], &pixels),
        );
        write(
            &dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")),
            &idx_bytes(LABELS_MAGIC, &[n], &labels),
        );
    }

    #[test]
    fn reads_raw_and_gzipped_files() {
        let tmp = TempDir::new("idx-ok");
        write_split(tmp.path(), "train", 12, false);
        write_split(tmp.path(), "t10k", 4, true);
        let train = IdxDataset::open(tmp.path(), IdxKind::Mnist, Split::Train).unwrap();
        assert_eq!(train.len(), 12);
        assert_eq!(train.native_size(), Some([3, 2]));
        assert_eq!(train.channels(), 1);
        assert_eq!(train.label(11), Some(1));
        assert_eq!(train.label(12), None);
        let img = train.get(5).unwrap();
        assert_eq!((img.channels, img.height, img.width), (1, 3, 2));
        let want: Vec<f32> = (0..6).map(|p| (50 + p) as f32 / 255.0).collect();
        assert_eq!(img.data, want);
        assert!(train.get(12).is_err());
        assert_eq!(train.name(), "mnist (train)");
        assert_eq!(train.class_names()[3], "3");

        let test = IdxDataset::open(tmp.path(), IdxKind::FashionMnist, Split::Test).unwrap();
        assert_eq!(test.len(), 4);
        assert_eq!(test.label(3), Some(3));
        assert_eq!(test.get(2).unwrap().data[1], 21.0 / 255.0);
        assert_eq!(test.class_names()[9], "Ankle boot");
        assert_eq!(test.normalization(), Normalization::uniform(0.2860, 0.3530, 1));
    }

    #[test]
    fn wrong_magic_names_the_file() {
        let tmp = TempDir::new("idx-magic");
        let path = tmp.path().join("train-images-idx3-ubyte");
        write(&path, &idx_bytes(LABELS_MAGIC, &[1, 3, 2], &[0; 6]));
        let m = msg(read_images(&path));
        assert!(m.contains(&path.display().to_string()) && m.contains("magic"), "{m}");
        let labels = tmp.path().join("train-labels-idx1-ubyte");
        write(&labels, &idx_bytes(IMAGES_MAGIC, &[1], &[0]));
        let m = msg(read_labels(&labels, 10));
        assert!(m.contains(&labels.display().to_string()) && m.contains("magic"), "{m}");
    }

    #[test]
    fn truncated_and_oversized_payloads_are_errors() {
        let tmp = TempDir::new("idx-size");
        let path = tmp.path().join("train-images-idx3-ubyte.gz");
        write(&path, &idx_bytes(IMAGES_MAGIC, &[3, 3, 2], &[0; 17]));
        let m = msg(read_images(&path));
        assert!(m.contains(&path.display().to_string()), "{m}");
        assert!(
            m.contains("3 images of 3x2 (18 bytes) but the file holds 17 bytes"),
            "{m}"
        );
        write(&path, &idx_bytes(IMAGES_MAGIC, &[3, 3, 2], &[0; 19]));
        // (gzip data stops at the declared size, so the excess is found there)
        assert!(msg(read_images(&path)).contains("longer than the 18 bytes its header declares"));
        let raw = tmp.path().join("train-images-idx3-ubyte");
        write(&raw, &idx_bytes(IMAGES_MAGIC, &[3, 3, 2], &[0; 19]));
        assert!(msg(read_images(&raw)).contains("holds 19 bytes"));
        // A header that ends early.
        write(&path, &IMAGES_MAGIC.to_be_bytes());
        assert!(msg(read_images(&path)).contains("header"));
        // Corrupt gzip data.
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2]).unwrap();
        let m = msg(read_images(&path));
        assert!(m.contains(&path.display().to_string()) && m.contains("gzip"), "{m}");
        // Huge declared dimensions do not overflow.
        write(&path, &idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]));
        assert!(msg(read_images(&path)).contains("holds 0 bytes"));
    }

    /// A small gzip file that would inflate far beyond what its header
    /// declares stops after the declared size: an error, not gigabytes.
    #[test]
    fn gzip_data_stops_at_the_declared_size() {
        let tmp = TempDir::new("idx-gz-bomb");
        let path = tmp.path().join("train-images-idx3-ubyte.gz");
        // Declares 2 images of 3x2 (12 bytes), then 64 MiB of zeros.
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = GzEncoder::new(file, Compression::best());
        enc.write_all(&idx_bytes(IMAGES_MAGIC, &[2, 3, 2], &[7; 12])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().len() < 1 << 20,
            "the test file should be small"
        );
        let m = msg(read_images(&path));
        assert!(m.contains("longer than the 12 bytes its header declares"), "{m}");
        // The declared size itself reads fine.
        write(&path, &idx_bytes(IMAGES_MAGIC, &[2, 3, 2], &[7; 12]));
        assert_eq!(read_images(&path).unwrap().pixels, vec![7; 12]);
    }

    #[test]
    fn label_count_mismatch_and_bad_labels() {
        let tmp = TempDir::new("idx-labels");
        write_split(tmp.path(), "train", 5, false);
        let labels = tmp.path().join("train-labels-idx1-ubyte");
        write(&labels, &idx_bytes(LABELS_MAGIC, &[4], &[0, 1, 2, 3]));
        let m = msg(IdxDataset::open(tmp.path(), IdxKind::Mnist, Split::Train));
        assert!(
            m.contains(&labels.display().to_string()) && m.contains("4 labels for the 5 images"),
            "{m}"
        );
        write(&labels, &idx_bytes(LABELS_MAGIC, &[5], &[0, 1, 2, 10, 3]));
        let m = msg(IdxDataset::open(tmp.path(), IdxKind::Mnist, Split::Train));
        assert!(
            m.contains(&labels.display().to_string()) && m.contains("label 10"),
            "{m}"
        );
        write(&labels, &idx_bytes(LABELS_MAGIC, &[6], &[0; 5]));
        assert!(msg(read_labels(&labels, 10)).contains("declares 6 labels"));
    }

    #[test]
    fn missing_files_and_folders_are_named() {
        let tmp = TempDir::new("idx-missing");
        write_split(tmp.path(), "train", 2, true);
        std::fs::remove_file(tmp.path().join("train-labels-idx1-ubyte.gz")).unwrap();
        let m = msg(IdxDataset::open(tmp.path(), IdxKind::Mnist, Split::Train));
        assert!(
            m.contains("train-labels-idx1-ubyte") && m.contains(&tmp.path().display().to_string()),
            "{m}"
        );
        let m = msg(IdxDataset::open(tmp.path(), IdxKind::Mnist, Split::Test));
        assert!(m.contains("t10k-images-idx3-ubyte"), "{m}");
        let nowhere = tmp.path().join("nowhere");
        let m = msg(IdxDataset::open_fashion_mnist(Some(&nowhere), Split::Train));
        assert!(m.contains(&nowhere.display().to_string()), "{m}");
        assert!(!m.contains("apt-get"), "{m}");
        // The default folder's messages say how to install it.
        let m = msg(IdxDataset::open_hinted(
            &nowhere,
            IdxKind::FashionMnist,
            Split::Train,
            FASHION_MNIST_HINT,
        ));
        assert!(
            m.contains(&nowhere.display().to_string()) && m.contains("apt-get install dataset-fashion-mnist"),
            "{m}"
        );
        let m = msg(IdxDataset::open_hinted(
            tmp.path(),
            IdxKind::FashionMnist,
            Split::Test,
            FASHION_MNIST_HINT,
        ));
        assert!(m.contains("t10k-images-idx3-ubyte") && m.contains("apt-get"), "{m}");
    }

    #[test]
    fn debian_fashion_mnist_if_installed() {
        let dir = Path::new(FASHION_MNIST_DEFAULT_DIR);
        if !dir.is_dir() {
            eprintln!("skipped: {FASHION_MNIST_DEFAULT_DIR} is not installed (apt-get install dataset-fashion-mnist)");
            return;
        }
        for (split, n) in [(Split::Train, 60000), (Split::Test, 10000)] {
            let ds = IdxDataset::open_fashion_mnist(None, split).unwrap();
            assert_eq!(ds.len(), n);
            assert_eq!(ds.native_size(), Some([28, 28]));
            let mut counts = [0usize; 10];
            for i in 0..n {
                counts[ds.label(i).unwrap() as usize] += 1;
            }
            // Fashion-MNIST is balanced: 6000 / 1000 images per class.
            assert!(counts.iter().all(|&c| c == n / 10), "{counts:?}");
            let img = ds.get(n - 1).unwrap();
            assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(img.data.iter().any(|&v| v > 0.0));
        }
    }
}
