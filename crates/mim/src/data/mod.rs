//! Image data: data sets that decode one image at a time, and the transforms
//! that turn them into batches at the model's size.
//!
//! A [`Dataset`] hands out [`RawImage`]s at their native size, `(C, H, W)`
//! values in `[0, 1]`, with an optional class label. [`transform::Transform`]
//! converts the channels, crops and resizes (with MAE's augmentation when
//! training) and normalizes; [`loader::load_batch`] does that for a batch in
//! parallel and assembles a `(B, C, H, W)` tensor.
//!
//! | data set | module | files |
//! | --- | --- | --- |
//! | synthetic shapes and textures (the default, nothing to download) | [`synthetic`] | none |
//! | Fashion-MNIST, MNIST | [`idx`] | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` |
//! | CIFAR-10 (binary version) | [`cifar`] | `data_batch_{1..5}.bin`, `test_batch.bin` |
//! | a folder of PNG/JPEG images, one subfolder per class | [`folder`] | `*.png`, `*.jpg`, `*.jpeg` |

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod synthetic;
pub mod transform;

use crate::error::{MimError, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One decoded image at its native size: `(C, H, W)` values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawImage {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `(C, H, W)`, row-major planes.
    pub data: Vec<f32>,
}

impl RawImage {
    /// An image from interleaved 8-bit pixels `(H, W, C)` (the layout of the
    /// `image` crate's buffers), scaled to `[0, 1]`.
    ///
    /// # Panics
    /// If `pixels.len() != height · width · channels` (a bug in the caller:
    /// the buffers of the `image` crate always have that length).
    pub fn from_interleaved(pixels: &[u8], channels: usize, height: usize, width: usize) -> RawImage {
        let hw = height * width;
        assert_eq!(
            pixels.len(),
            hw * channels,
            "RawImage::from_interleaved: {} bytes for {height}x{width}x{channels}",
            pixels.len()
        );
        let mut data = vec![0f32; hw * channels];
        for (p, px) in pixels.chunks_exact(channels.max(1)).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[c * hw + p] = v as f32 / 255.0;
            }
        }
        RawImage {
            channels,
            height,
            width,
            data,
        }
    }

    /// An image from planar 8-bit pixels `(C, H, W)` (IDX and CIFAR records),
    /// scaled to `[0, 1]`. The caller guarantees the length.
    pub(crate) fn from_planar(pixels: &[u8], channels: usize, height: usize, width: usize) -> RawImage {
        debug_assert_eq!(pixels.len(), channels * height * width);
        RawImage {
            channels,
            height,
            width,
            data: pixels.iter().map(|&v| v as f32 / 255.0).collect(),
        }
    }
}

/// Per-channel normalization applied after augmentation: `(x − mean[c]) / std[c]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The same value for every one of `channels` channels.
    pub fn uniform(mean: f32, std: f32, channels: usize) -> Normalization {
        Normalization {
            mean: vec![mean; channels],
            std: vec![std; channels],
        }
    }

    /// ImageNet's statistics (used for image folders).
    pub fn imagenet() -> Normalization {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// The same statistics for `channels` output channels: a 3-channel set
    /// averaged to 1 channel, or a 1-channel set repeated to 3. (In general:
    /// many channels to one are averaged, otherwise channel `c` takes the
    /// statistics of channel `c mod n`; an empty set becomes mean 0, std 1.)
    pub fn for_channels(&self, channels: usize) -> Normalization {
        let adapt = |v: &[f32], empty: f32| -> Vec<f32> {
            match v.len() {
                0 => vec![empty; channels],
                n if n == channels => v.to_vec(),
                n if channels == 1 => vec![v.iter().sum::<f32>() / n as f32],
                n => (0..channels).map(|c| v[c % n]).collect(),
            }
        };
        Normalization {
            mean: adapt(&self.mean, 0.0),
            std: adapt(&self.std, 1.0),
        }
    }
}

/// A collection of images, decoded one at a time (from memory or from disk).
pub trait Dataset: Send + Sync {
    /// A name for messages, e.g. `fashion-mnist (train)`.
    fn name(&self) -> String;
    /// Number of images.
    fn len(&self) -> usize;
    /// True if there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Native number of channels (1 grey, 3 RGB).
    fn channels(&self) -> usize;
    /// Native `[H, W]`; `None` when images may differ in size (folders).
    fn native_size(&self) -> Option<[usize; 2]>;
    /// Class names, label `k` being `class_names()[k]`; empty if unlabelled.
    fn class_names(&self) -> Vec<String>;
    /// Label of image `i`, if the data set is labelled.
    fn label(&self, i: usize) -> Option<u32>;
    /// Image `i`; errors name the file.
    fn get(&self, i: usize) -> Result<RawImage>;
    /// The normalization statistics of this data set (native channels).
    fn normalization(&self) -> Normalization;
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// What a user asks for on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// Procedural shapes and textures at any size and channel count.
    Synthetic {
        len: usize,
        size: [usize; 2],
        channels: usize,
        seed: u64,
    },
    /// Fashion-MNIST IDX files; the default folder is
    /// [`idx::FASHION_MNIST_DEFAULT_DIR`] (Debian's `dataset-fashion-mnist`).
    FashionMnist { dir: Option<PathBuf> },
    /// MNIST IDX files.
    Mnist { dir: PathBuf },
    /// CIFAR-10, binary version.
    Cifar10 { dir: PathBuf },
    /// A folder of PNG/JPEG images; without `train/`/`test/` subfolders,
    /// `val_fraction` of it is held out as the test split
    /// ([`folder::DEFAULT_VAL_FRACTION`] is the usual choice).
    Folder { dir: PathBuf, val_fraction: f64 },
}

/// The first `len` images of a data set (`--limit`): a view, nothing copied.
pub struct First<'a> {
    inner: &'a dyn Dataset,
    len: usize,
}

impl<'a> First<'a> {
    /// The first `min(len, inner.len())` images of `inner`.
    pub fn new(inner: &'a dyn Dataset, len: usize) -> Self {
        First {
            len: len.min(inner.len()),
            inner,
        }
    }
}

impl Dataset for First<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        self.inner.native_size()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.inner.label(i)
    }
    fn get(&self, i: usize) -> Result<RawImage> {
        self.inner.get(i)
    }
    fn normalization(&self) -> Normalization {
        self.inner.normalization()
    }
}

/// Opens one split of the data set a user asked for.
pub fn open(spec: &DataSpec, split: Split) -> Result<Box<dyn Dataset>> {
    Ok(match spec {
        &DataSpec::Synthetic {
            len,
            size,
            channels,
            seed,
        } => Box::new(synthetic::SyntheticDataset::new(len, size, channels, seed, split)?),
        DataSpec::FashionMnist { dir } => Box::new(idx::IdxDataset::open_fashion_mnist(dir.as_deref(), split)?),
        DataSpec::Mnist { dir } => Box::new(idx::IdxDataset::open(dir, idx::IdxKind::Mnist, split)?),
        DataSpec::Cifar10 { dir } => Box::new(cifar::Cifar10::open(dir, split)?),
        &DataSpec::Folder { ref dir, val_fraction } => Box::new(folder::ImageFolder::open(dir, split, val_fraction)?),
    })
}

/// Refuses a data set without labels or with another class count.
pub fn check_labelled(ds: &dyn Dataset, classes: usize) -> Result<()> {
    let names = ds.class_names();
    if names.is_empty() || ds.label(0).is_none() {
        return Err(MimError::Input(format!(
            "{} has no labels: fine-tuning and evaluation need a labelled data set",
            ds.name()
        )));
    }
    if names.len() != classes {
        return Err(MimError::Input(format!(
            "{} has {} classes, but the classifier has {classes}",
            ds.name(),
            names.len()
        )));
    }
    Ok(())
}

/// The error for an image index beyond the end of a data set.
pub(crate) fn out_of_range(name: &str, i: usize, len: usize) -> MimError {
    MimError::Input(format!("{name}: image index {i} is out of range ({len} images)"))
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty folder under the system's temporary folder, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("tessera-data-{tag}-{}-{n}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The message of an error, for assertions.
    pub fn msg<T>(r: crate::error::Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_for_channels() {
        let rgb = Normalization {
            mean: vec![0.3, 0.6, 0.9],
            std: vec![0.1, 0.2, 0.3],
        };
        let grey = rgb.for_channels(1);
        assert!((grey.mean[0] - 0.6).abs() < 1e-6 && (grey.std[0] - 0.2).abs() < 1e-6);
        assert_eq!(rgb.for_channels(3), rgb);
        let one = Normalization::uniform(0.5, 0.25, 1);
        assert_eq!(one.for_channels(3), Normalization::uniform(0.5, 0.25, 3));
        let empty = Normalization {
            mean: vec![],
            std: vec![],
        };
        assert_eq!(empty.for_channels(2), Normalization::uniform(0.0, 1.0, 2));
    }

    #[test]
    fn from_interleaved_is_planar() {
        // 1x2 RGB: pixels (255, 0, 51) and (0, 255, 102).
        let img = RawImage::from_interleaved(&[255, 0, 51, 0, 255, 102], 3, 1, 2);
        assert_eq!(img.data, vec![1.0, 0.0, 0.0, 1.0, 0.2, 0.4]);
    }
}
