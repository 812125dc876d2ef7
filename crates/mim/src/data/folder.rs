//! A folder of PNG/JPEG images, read with the `image` crate.
//!
//! Layouts, as torchvision's `ImageFolder`:
//!
//! ```text
//! dir/cat/001.png, dir/dog/xyz.jpg, …   one subfolder per class (sorted names → labels 0, 1, …)
//! dir/001.png, dir/002.jpg, …           a flat folder: unlabelled
//! dir/train/…, dir/test/… (or val/)     the two splits, each in one of the layouts above
//! ```
//!
//! Without `train/` and `test/` (or `val/`), a fraction of the folder
//! (`val_fraction`, [`DEFAULT_VAL_FRACTION`] by default) is held out as the
//! test split: the same share of every class when labelled, chosen by a hash
//! of each file's path relative to the folder, so the split is the same on
//! every machine and adding an image moves at most one other between splits.
//! A fraction of 0 makes both splits the whole folder, and the data set's
//! name says so. The class names are those of both splits together, so a
//! label means the same class in both. Files with other extensions and hidden files
//! are skipped; images inside a class subfolder are found at any depth,
//! each file once (by its canonical path), without following a link that
//! leads back into the tree.
//! Only paths are stored: images are decoded in [`Dataset::get`]. Grey images
//! give 1 channel, anything else RGB; the data set is RGB if any training
//! image has colour (grey ones are then repeated over three channels), else
//! grey. Opening reads every file's header, so a file that is no image is an
//! error at once, all such files listed together.

use super::transform::convert_channels;
use super::{Dataset, Normalization, RawImage, Split, out_of_range};
use crate::error::{MimError, Result, io_err};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions of the files read (case-insensitive).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Share of a folder without `train/`/`test/` held out as its test split.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// How deep image search goes inside a class subfolder.
const MAX_DEPTH: usize = 16;

/// How many folder entries one scan looks at before it gives up (a bound on
/// time and memory whatever the tree).
const MAX_ENTRIES: usize = 1 << 24;

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        && path.is_file()
}

/// One scan of a folder tree. Each folder is entered once, by its
/// canonical path, so a link that leads back into the tree (to `..`, or to
/// a folder seen already) is not followed; each image counts once, by its
/// canonical path, however many links lead to it; and at most
/// [`MAX_ENTRIES`] entries are looked at.
struct Walk {
    root: PathBuf,
    folders: HashSet<PathBuf>,
    images: HashSet<PathBuf>,
    entries: usize,
}

impl Walk {
    fn new(root: &Path) -> Walk {
        Walk {
            root: root.to_path_buf(),
            folders: HashSet::new(),
            images: HashSet::new(),
            entries: 0,
        }
    }

    /// Whether `dir` is entered (first visit of its canonical path).
    fn enter(&mut self, dir: &Path) -> bool {
        std::fs::canonicalize(dir).is_ok_and(|c| self.folders.insert(c))
    }

    /// Whether `file` is counted (first visit of its canonical path).
    fn count(&mut self, file: &Path) -> bool {
        std::fs::canonicalize(file).is_ok_and(|c| self.images.insert(c))
    }

    /// The non-hidden entries of a folder, sorted by name.
    fn entries(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(MimError::Input(format!(
                    "{}: more than {MAX_ENTRIES} files and folders; point at a smaller folder",
                    self.root.display()
                )));
            }
            let path = entry.map_err(|e| io_err(dir, e))?.path();
            if !is_hidden(&path) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// All images under `dir`, at any depth (up to [`MAX_DEPTH`]), in sorted order.
    fn images_below(&mut self, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        for path in self.entries(dir)? {
            if path.is_dir() {
                if depth < MAX_DEPTH && self.enter(&path) {
                    self.images_below(&path, depth + 1, out)?;
                }
            } else if is_image(&path) && self.count(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
}

/// The images of one folder: either flat, or grouped by class subfolder.
enum Layout {
    Flat(Vec<PathBuf>),
    Classes(Vec<(String, Vec<PathBuf>)>),
}

fn scan(dir: &Path) -> Result<Layout> {
    let mut walk = Walk::new(dir);
    walk.enter(dir);
    let entries = walk.entries(dir)?;
    let top: Vec<PathBuf> = entries
        .iter()
        .filter(|p| is_image(p) && walk.count(p))
        .cloned()
        .collect();
    let mut classes = Vec::new();
    for sub in entries.iter().filter(|p| p.is_dir()) {
        if !walk.enter(sub) {
            continue; // a link to a folder seen already
        }
        let mut files = Vec::new();
        walk.images_below(sub, 1, &mut files)?;
        if !files.is_empty() {
            classes.push((
                sub.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                files,
            ));
        }
    }
    match (top.is_empty(), classes.is_empty()) {
        (_, true) => Ok(Layout::Flat(top)),
        (true, false) => Ok(Layout::Classes(classes)),
        (false, false) => Err(MimError::Input(format!(
            "{}: has both images ({}) and class subfolders ({}); put every image in a class subfolder, or none",
            dir.display(),
            top[0].display(),
            classes[0].0
        ))),
    }
}

impl Layout {
    fn groups(&self) -> Vec<&[PathBuf]> {
        match self {
            Layout::Flat(f) => vec![f.as_slice()],
            Layout::Classes(c) => c.iter().map(|(_, f)| f.as_slice()).collect(),
        }
    }

    fn len(&self) -> usize {
        self.groups().iter().map(|g| g.len()).sum()
    }

    /// Splits into (kept, held out): in every group (class), the
    /// `round(fraction × n)` files whose relative paths hash lowest, at least
    /// one and never all of a group of two or more. Order within a group is kept.
    fn hold_out(self, root: &Path, fraction: f64) -> (Layout, Layout) {
        let split = |files: Vec<PathBuf>| -> (Vec<PathBuf>, Vec<PathBuf>) {
            let n = files.len();
            let k = if n < 2 {
                0
            } else {
                ((fraction * n as f64).round() as usize).clamp(1, n - 1)
            };
            let mut order: Vec<(u64, usize)> = files
                .iter()
                .enumerate()
                .map(|(i, f)| (path_hash(f.strip_prefix(root).unwrap_or(f)), i))
                .collect();
            order.sort_unstable();
            let mut held = vec![false; n];
            for &(_, i) in &order[..k] {
                held[i] = true;
            }
            let (mut keep, mut out) = (Vec::new(), Vec::new());
            for (f, h) in files.into_iter().zip(held) {
                if h { out.push(f) } else { keep.push(f) }
            }
            (keep, out)
        };
        match self {
            Layout::Flat(f) => {
                let (keep, out) = split(f);
                (Layout::Flat(keep), Layout::Flat(out))
            }
            Layout::Classes(c) => {
                let (mut keep, mut out) = (Vec::new(), Vec::new());
                for (name, f) in c {
                    let (k, o) = split(f);
                    keep.push((name.clone(), k));
                    out.push((name, o));
                }
                (Layout::Classes(keep), Layout::Classes(out))
            }
        }
    }
}

/// FNV-1a over a path's components joined by `/`, so that the same relative
/// path hashes the same on every platform.
fn path_hash(rel: &Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, c) in rel.components().enumerate() {
        let bytes = c.as_os_str().to_string_lossy();
        for b in (if i > 0 { "/" } else { "" }).bytes().chain(bytes.bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    crate::rng::splitmix64(h)
}

/// How a folder's splits were made, for [`Dataset::name`].
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// `train/` and `test/` (or `val/`) subfolders.
    Subfolders(Split),
    /// A held-out fraction of one folder of `total` images.
    HeldOut {
        split: Split,
        fraction: f64,
        total: usize,
        stratified: bool,
    },
    /// `val_fraction` 0: both splits are the whole folder.
    Whole,
}

/// The split folders `train/` and `test/` (or `val/`), if both exist.
fn split_dirs(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let train = dir.join("train");
    let test = ["test", "val"].iter().map(|n| dir.join(n)).find(|p| p.is_dir())?;
    train.is_dir().then_some((train, test))
}

/// Reads the header of every file: true if any image has colour. Files that
/// cannot be read as an image are listed, all of them, in one error.
fn headers<'a>(files: impl Iterator<Item = &'a PathBuf>) -> Result<bool> {
    let mut colour = false;
    let mut bad = Vec::new();
    let mut total = 0;
    for f in files {
        total += 1;
        let header = image::ImageReader::open(f)
            .map_err(|e| e.to_string())
            .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
            .and_then(|r| r.into_decoder().map_err(|e| e.to_string()));
        match header {
            Ok(d) => colour |= image::ImageDecoder::color_type(&d).has_color(),
            Err(e) => bad.push(format!("{} ({e})", f.display())),
        }
    }
    if bad.is_empty() {
        return Ok(colour);
    }
    let more = if bad.len() > 5 {
        format!(" and {} more", bad.len() - 5)
    } else {
        String::new()
    };
    Err(MimError::Input(format!(
        "{} of {total} image files cannot be read: {}{more}",
        bad.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    )))
}

/// Decodes one image file at its own channels: grey → 1, anything else → RGB
/// (alpha dropped).
pub fn decode(path: &Path) -> Result<RawImage> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| MimError::Input(format!("{}: cannot decode image: {e}", path.display())))?;
    Ok(if img.color().has_color() {
        let rgb = img.to_rgb8();
        RawImage::from_interleaved(rgb.as_raw(), 3, rgb.height() as usize, rgb.width() as usize)
    } else {
        let g = img.to_luma8();
        RawImage::from_interleaved(g.as_raw(), 1, g.height() as usize, g.width() as usize)
    })
}

/// An image folder (one split of it).
pub struct ImageFolder {
    dir: PathBuf,
    origin: Origin,
    files: Vec<PathBuf>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
    channels: usize,
}

impl ImageFolder {
    /// Scans `dir` for the images of `split`, holding out `val_fraction` (in
    /// [0, 1); [`DEFAULT_VAL_FRACTION`] is the usual choice) of a folder
    /// without `train/`/`test/` as its test split (see the module
    /// documentation); 0 makes both splits the whole folder.
    pub fn open(dir: &Path, split: Split, val_fraction: f64) -> Result<ImageFolder> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(MimError::Input(format!(
                "validation fraction {val_fraction} is not in [0, 1)"
            )));
        }
        if !dir.is_dir() {
            return Err(MimError::Input(format!("{}: no such image folder", dir.display())));
        }
        let (layout, other, origin) = match split_dirs(dir) {
            Some((train, test)) => {
                let (mine, theirs) = match split {
                    Split::Train => (train, test),
                    Split::Test => (test, train),
                };
                (scan(&mine)?, Some(scan(&theirs)?), Origin::Subfolders(split))
            }
            None if val_fraction == 0.0 => (scan(dir)?, None, Origin::Whole),
            None => {
                let all = scan(dir)?;
                let total = all.len();
                let stratified = matches!(all, Layout::Classes(_));
                let (keep, held) = all.hold_out(dir, val_fraction);
                if split == Split::Test && held.len() == 0 && total > 0 {
                    return Err(MimError::Input(format!(
                        "{}: {total} image(s) are too few to hold out a test split; \
                         add images, make train/ and test/ subfolders, or use a validation fraction of 0",
                        dir.display()
                    )));
                }
                let origin = Origin::HeldOut {
                    split,
                    fraction: val_fraction,
                    total,
                    stratified,
                };
                match split {
                    Split::Train => (keep, Some(held), origin),
                    Split::Test => (held, Some(keep), origin),
                }
            }
        };
        // Class names of both splits together, so that labels agree.
        let mut classes: Vec<String> = [Some(&layout), other.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|l| match l {
                Layout::Classes(c) => c.iter().map(|(name, _)| name.clone()).collect(),
                Layout::Flat(_) => Vec::new(),
            })
            .collect();
        classes.sort();
        classes.dedup();
        let (files, labels) = match layout {
            Layout::Flat(files) => (files, None),
            Layout::Classes(groups) => {
                let mut files = Vec::new();
                let mut labels = Vec::new();
                for (name, group) in groups {
                    let label = classes.binary_search(&name).expect("class listed above") as u32;
                    labels.extend(std::iter::repeat_n(label, group.len()));
                    files.extend(group);
                }
                (files, Some(labels))
            }
        };
        if files.is_empty() {
            return Err(MimError::Input(format!(
                "{}: no images ({}) in this folder or its subfolders",
                dir.display(),
                EXTENSIONS.join(", ")
            )));
        }
        // Every file's header is read now, so that a file that is no image
        // fails here, all of them in one error, not in the middle of a run.
        // Channels: RGB if any image of the training subfolder (or, for a
        // held-out split, of the whole folder) has colour, else grey, so both
        // splits agree and no colour image is turned grey.
        let other_files = || -> Vec<&PathBuf> { other.iter().flat_map(|o| o.groups()).flatten().collect() };
        let mine_colour = headers(files.iter())?;
        let colour = match origin {
            Origin::Subfolders(Split::Test) => headers(other_files().into_iter())?,
            Origin::HeldOut { .. } => headers(other_files().into_iter())? || mine_colour,
            _ => mine_colour,
        };
        let channels = if colour { 3 } else { 1 };
        Ok(ImageFolder {
            dir: dir.to_path_buf(),
            origin,
            files,
            labels,
            classes,
            channels,
        })
    }

    /// The image files, in label order then name order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl Dataset for ImageFolder {
    fn name(&self) -> String {
        let d = self.dir.display();
        match self.origin {
            Origin::Subfolders(s) => format!("{d} ({})", s.as_str()),
            Origin::HeldOut {
                split,
                fraction,
                total,
                stratified,
            } => format!(
                "{d} ({}: {} of {total} images; {:.0}% held out for test{})",
                split.as_str(),
                self.files.len(),
                fraction * 100.0,
                if stratified { ", per class" } else { "" }
            ),
            Origin::Whole => format!("{d} (all images; test images are the training images)"),
        }
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        None
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().and_then(|l| l.get(i).copied())
    }
    fn get(&self, i: usize) -> Result<RawImage> {
        let path = self
            .files
            .get(i)
            .ok_or_else(|| out_of_range(&self.name(), i, self.len()))?;
        Ok(convert_channels(&decode(path)?, self.channels))
    }
    fn normalization(&self) -> Normalization {
        Normalization::imagenet().for_channels(self.channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{TempDir, msg};
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn rgb(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(w, h, Rgb(colour)).save(path).unwrap();
    }

    fn grey(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_pixel(w, h, Luma([v])).save(path).unwrap();
    }

    #[test]
    fn class_subfolders_are_labels() {
        let tmp = TempDir::new("folder-classes");
        let d = tmp.path();
        rgb(&d.join("zebra/b.png"), 4, 3, [255, 0, 0]);
        rgb(&d.join("zebra/a.png"), 5, 2, [0, 255, 0]);
        grey(&d.join("ant/deep/x.png"), 3, 3, 51);
        std::fs::write(d.join("ant/notes.txt"), "not an image").unwrap();
        std::fs::create_dir(d.join("empty")).unwrap();
        let ds = ImageFolder::open(d, Split::Train, 0.0).unwrap();
        assert_eq!(ds.class_names(), ["ant", "zebra"]);
        assert_eq!(ds.len(), 3);
        assert_eq!(
            ds.channels(),
            3,
            "colour images make the set RGB, though the first is grey"
        );
        assert_eq!((ds.label(0), ds.label(1), ds.label(2)), (Some(0), Some(1), Some(1)));
        assert!(ds.files()[1].ends_with("zebra/a.png"));
        let a = ds.get(1).unwrap();
        assert_eq!((a.channels, a.height, a.width), (3, 2, 5));
        assert_eq!(
            (a.data[0], a.data[10], a.data[20]),
            (0.0, 1.0, 0.0),
            "green stays green"
        );
        let x = ds.get(0).unwrap();
        assert_eq!(
            (x.channels, x.data[0], x.data[9]),
            (3, 51.0 / 255.0, 51.0 / 255.0),
            "grey repeated"
        );
        assert_eq!(ds.native_size(), None);
        assert_eq!(ds.normalization().mean.len(), 3);
        // All grey: a grey set.
        let tmp_grey = TempDir::new("folder-grey");
        grey(&tmp_grey.path().join("a.png"), 2, 2, 9);
        grey(&tmp_grey.path().join("b.png"), 2, 2, 9);
        assert_eq!(
            ImageFolder::open(tmp_grey.path(), Split::Train, 0.0)
                .unwrap()
                .channels(),
            1
        );
        assert!(ds.get(3).is_err());
    }

    /// Links to `..` inside class subfolders once made 10 images count as
    /// tens of thousands (on both sides of the split), and eight of them a
    /// walk that grew without bound; links to a file count it once.
    #[cfg(unix)]
    #[test]
    fn links_back_into_the_tree_are_not_followed_and_files_count_once() {
        use std::os::unix::fs::symlink;
        let tmp = TempDir::new("folder-links");
        let d = tmp.path();
        for i in 0..5 {
            rgb(&d.join(format!("cat/{i}.png")), 2, 2, [9, 9, 9]);
            rgb(&d.join(format!("dog/{i}.png")), 2, 2, [90, 9, 9]);
        }
        for (k, class) in ["cat", "dog"].iter().enumerate() {
            for j in 0..4 {
                symlink("..", d.join(format!("{class}/up{j}"))).unwrap();
            }
            std::fs::create_dir_all(d.join(format!("{class}/deep"))).unwrap();
            symlink("../..", d.join(format!("{class}/deep/top{k}"))).unwrap();
        }
        symlink(d.join("cat/0.png"), d.join("dog/same-as-cat0.png")).unwrap();
        symlink(d.join("cat"), d.join("kitten")).unwrap();
        let train = ImageFolder::open(d, Split::Train, 0.2).unwrap();
        let test = ImageFolder::open(d, Split::Test, 0.2).unwrap();
        assert_eq!(train.len() + test.len(), 10, "{:?} {:?}", train.files(), test.files());
        assert_eq!(train.class_names(), ["cat", "dog"]);
        let mut all: Vec<_> = train
            .files()
            .iter()
            .chain(test.files())
            .map(|f| f.canonicalize().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10, "no image on both sides of the split");
    }

    #[test]
    fn flat_folder_is_unlabelled_rgb() {
        let tmp = TempDir::new("folder-flat");
        rgb(&tmp.path().join("1.png"), 2, 2, [10, 20, 30]);
        grey(&tmp.path().join("2.PNG"), 3, 1, 200);
        std::fs::write(tmp.path().join("3.gif"), "skipped").unwrap();
        let ds = ImageFolder::open(tmp.path(), Split::Test, 0.0).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(
            ds.name().contains("test images are the training images"),
            "{}",
            ds.name()
        );
        assert_eq!(ds.channels(), 3);
        assert!(ds.class_names().is_empty());
        assert_eq!(ds.label(0), None);
        let a = ds.get(0).unwrap();
        let planes: Vec<f32> = [10.0, 20.0, 30.0].iter().flat_map(|&v| [v / 255.0; 4]).collect();
        assert_eq!(a.data, planes);
        let b = ds.get(1).unwrap();
        assert_eq!((b.channels, b.height, b.width), (3, 1, 3), "grey converted to RGB");
        assert_eq!(ds.normalization(), Normalization::imagenet());
    }

    #[test]
    fn train_and_test_subfolders_are_splits() {
        let tmp = TempDir::new("folder-splits");
        let d = tmp.path();
        rgb(&d.join("train/cat/1.png"), 2, 2, [1, 2, 3]);
        rgb(&d.join("train/dog/1.png"), 2, 2, [1, 2, 3]);
        rgb(&d.join("train/dog/2.png"), 2, 2, [1, 2, 3]);
        grey(&d.join("val/dog/1.png"), 2, 2, 9);
        let train = ImageFolder::open(d, Split::Train, DEFAULT_VAL_FRACTION).unwrap();
        let test = ImageFolder::open(d, Split::Test, DEFAULT_VAL_FRACTION).unwrap();
        assert_eq!((train.len(), test.len()), (3, 1));
        assert_eq!(test.class_names(), ["cat", "dog"]);
        assert_eq!(test.label(0), Some(1), "dog is label 1 in both splits");
        assert_eq!(test.channels(), 3, "channels come from the training split");
        assert!(test.name().ends_with("(test)"));
    }

    #[test]
    fn folder_without_splits_holds_out_a_fraction_per_class() {
        let tmp = TempDir::new("folder-held-out");
        let d = tmp.path();
        for i in 0..10 {
            grey(&d.join(format!("cat/{i}.png")), 2, 2, 9);
        }
        for i in 0..5 {
            rgb(&d.join(format!("dog/{i}.png")), 2, 2, [1, 2, 3]);
        }
        let train = ImageFolder::open(d, Split::Train, 0.2).unwrap();
        let test = ImageFolder::open(d, Split::Test, 0.2).unwrap();
        let count = |ds: &ImageFolder, c: u32| (0..ds.len()).filter(|&i| ds.label(i) == Some(c)).count();
        assert_eq!((count(&test, 0), count(&test, 1)), (2, 1), "20% of each class");
        assert_eq!((count(&train, 0), count(&train, 1)), (8, 4));
        let mut all: Vec<&PathBuf> = train.files().iter().chain(test.files()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 15, "the splits are disjoint and cover the folder");
        assert_eq!(
            test.channels(),
            3,
            "colour anywhere in the folder makes both splits RGB"
        );
        assert_eq!(train.channels(), 3);
        assert!(
            test.name()
                .contains("test: 3 of 15 images; 20% held out for test, per class"),
            "{}",
            test.name()
        );
        // Deterministic, and the default fraction is 10%.
        let again = ImageFolder::open(d, Split::Test, 0.2).unwrap();
        assert_eq!(again.files(), test.files());
        assert_eq!(
            ImageFolder::open(d, Split::Test, DEFAULT_VAL_FRACTION).unwrap().len(),
            2,
            "10%: one of each class"
        );
        // One more image moves at most one other between the splits.
        grey(&d.join("cat/10.png"), 2, 2, 9);
        let after = ImageFolder::open(d, Split::Test, 0.2).unwrap();
        let moved = test.files().iter().filter(|f| !after.files().contains(f)).count();
        assert!(moved <= 1, "{moved} images left the test split");
    }

    #[test]
    fn held_out_split_of_a_flat_folder_and_bad_fractions() {
        let tmp = TempDir::new("folder-held-out-flat");
        let d = tmp.path();
        for i in 0..20 {
            grey(&d.join(format!("{i:02}.png")), 2, 2, i as u8);
        }
        let test = ImageFolder::open(d, Split::Test, 0.25).unwrap();
        let train = ImageFolder::open(d, Split::Train, 0.25).unwrap();
        assert_eq!((train.len(), test.len()), (15, 5));
        assert!(test.files().iter().all(|f| !train.files().contains(f)));
        assert!(!test.name().contains("per class"), "{}", test.name());
        for bad in [1.0, -0.1, f64::NAN] {
            assert!(msg(ImageFolder::open(d, Split::Train, bad)).contains("not in [0, 1)"));
        }
        // A single image cannot be split: the test split says so.
        let one = TempDir::new("folder-held-out-one");
        grey(&one.path().join("a.png"), 2, 2, 0);
        assert_eq!(
            ImageFolder::open(one.path(), Split::Train, DEFAULT_VAL_FRACTION)
                .unwrap()
                .len(),
            1
        );
        let m = msg(ImageFolder::open(one.path(), Split::Test, DEFAULT_VAL_FRACTION));
        assert!(m.contains("too few to hold out") && m.contains("fraction of 0"), "{m}");
    }

    #[test]
    fn corrupt_and_truncated_files_name_the_file() {
        let tmp = TempDir::new("folder-corrupt");
        let d = tmp.path();
        rgb(&d.join("a.png"), 8, 8, [1, 2, 3]);
        let good = std::fs::read(d.join("a.png")).unwrap();
        std::fs::write(d.join("b.png"), &good[..good.len() / 2]).unwrap();
        let noise: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(d.join("c.png"), &noise).unwrap();
        // c.png is no image at all: found when the folder is opened.
        let m = msg(ImageFolder::open(d, Split::Train, 0.0));
        assert!(
            m.contains("1 of 3 image files cannot be read") && m.contains("c.png"),
            "{m}"
        );
        std::fs::remove_file(d.join("c.png")).unwrap();
        // b.png has a valid header and half its data: found when decoded.
        let ds = ImageFolder::open(d, Split::Train, 0.0).unwrap();
        assert!(ds.get(0).is_ok());
        let m = msg(ds.get(1));
        assert!(
            m.contains(&d.join("b.png").display().to_string()) && m.contains("cannot decode image"),
            "{m}"
        );
        // A corrupt first image fails at open.
        let tmp2 = TempDir::new("folder-corrupt-first");
        std::fs::write(tmp2.path().join("0.png"), &noise).unwrap();
        assert!(msg(ImageFolder::open(tmp2.path(), Split::Train, DEFAULT_VAL_FRACTION)).contains("0.png"));
    }

    #[test]
    fn empty_missing_and_mixed_folders_are_errors() {
        let tmp = TempDir::new("folder-empty");
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("readme.txt"), "x").unwrap();
        let m = msg(ImageFolder::open(tmp.path(), Split::Train, DEFAULT_VAL_FRACTION));
        assert!(
            m.contains(&tmp.path().display().to_string()) && m.contains("no images"),
            "{m}"
        );
        let missing = tmp.path().join("missing");
        assert!(msg(ImageFolder::open(&missing, Split::Train, DEFAULT_VAL_FRACTION)).contains("missing"));
        rgb(&tmp.path().join("top.png"), 2, 2, [0, 0, 0]);
        rgb(&tmp.path().join("sub/x.png"), 2, 2, [0, 0, 0]);
        let m = msg(ImageFolder::open(tmp.path(), Split::Train, DEFAULT_VAL_FRACTION));
        assert!(m.contains("both images"), "{m}");
    }
}
