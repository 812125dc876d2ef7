//! From native images to batches at the model's size.
//!
//! A [`Transform`] takes one [`RawImage`] `(C₀, H₀, W₀)` to `(C, H, W)`:
//!
//! 1. channels: RGB → grey by luminance `0.299 R + 0.587 G + 0.114 B`, grey →
//!    RGB by repetition ([`convert_channels`]);
//! 2. geometry:
//!    * training (MAE's recipe): torchvision's `RandomResizedCrop` — a box of
//!      area `s·H₀·W₀` (`s` uniform in `scale`) and aspect ratio `r`
//!      (log-uniform in `ratio`), 10 attempts, else a central crop clamped to
//!      the ratio range — resized to `H × W`, then a horizontal flip with
//!      probability ½;
//!    * evaluation: resize so that the image covers `H × W` (the shorter side
//!      to the target, as torchvision's `Resize(size)`), then a centre crop;
//!      the identity when the size already matches;
//! 3. normalization: `(x − mean[c]) / std[c]`.
//!
//! Resizing is bilinear with antialiasing (PIL's and torchvision's
//! `antialias=True`): output pixel `o` samples the source around its centre
//! `(o + ½)·s` with a triangle filter whose half-width is `max(s, 1)` source
//! pixels, `s` being the source pixels per output pixel. When enlarging this
//! is plain bilinear interpolation with half-pixel centres
//! (`align_corners=False`); when shrinking it averages the pixels covered.
//!
//! [`crate::data::loader`] applies a transform to batches of a data set.

use super::{Normalization, RawImage};
use crate::config::EncoderConfig;
use crate::error::{Result, config_err};
use crate::rng::MimRng;
use rand::RngExt;
use std::borrow::Cow;

/// Luminance weights of R, G, B (ITU-R BT.601, as PIL's `convert("L")`).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Random augmentation of MAE's pre-training.
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f32, f32),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f32, f32),
    /// Flip horizontally with probability ½.
    pub hflip: bool,
}

impl Augment {
    /// MAE's: `RandomResizedCrop(scale=(0.2, 1.0))` (ratio 3/4 to 4/3) and
    /// `RandomHorizontalFlip()`.
    pub fn mae() -> Self {
        Augment {
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
        }
    }
}

/// Everything that turns a native image into a model input `(C, H, W)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Output `[H, W]`.
    pub size: [usize; 2],
    /// Output channels.
    pub channels: usize,
    /// Random crop and flip (training), or `None` for resize + centre crop.
    pub augment: Option<Augment>,
    /// Statistics of the output channels.
    pub norm: Normalization,
}

/// A crop of an image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Converts an image to `channels` channels: same count → unchanged, 3 → 1 by
/// luminance ([`LUMA`]), other counts → 1 by the mean, 1 → n by repetition,
/// otherwise channel `c` is channel `c mod C₀`.
pub fn convert_channels(img: &RawImage, channels: usize) -> RawImage {
    converted(img, channels).into_owned()
}

fn converted(img: &RawImage, channels: usize) -> Cow<'_, RawImage> {
    let c0 = img.channels;
    if c0 == channels || c0 == 0 {
        return Cow::Borrowed(img);
    }
    let hw = img.height * img.width;
    let plane = |c: usize| &img.data[c * hw..(c + 1) * hw];
    let data = if channels == 1 {
        let weights: Vec<f32> = if c0 == 3 {
            LUMA.to_vec()
        } else {
            vec![1.0 / c0 as f32; c0]
        };
        (0..hw)
            .map(|p| (0..c0).map(|c| weights[c] * plane(c)[p]).sum::<f32>())
            .collect()
    } else {
        (0..channels).flat_map(|c| plane(c % c0).iter().copied()).collect()
    };
    Cow::Owned(RawImage {
        channels,
        height: img.height,
        width: img.width,
        data,
    })
}

/// A uniform sample of `[a, b)` (just `a` when the range is empty).
fn uniform(rng: &mut MimRng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// torchvision's `RandomResizedCrop.get_params` for an `h × w` image: up to
/// 10 attempts at a box of area `scale·h·w` and log-uniform aspect ratio that
/// fits; otherwise the whole image, cropped centrally to the nearest allowed
/// ratio. The box always lies inside the image and is at least 1 × 1.
pub fn random_resized_crop(h: usize, w: usize, aug: &Augment, rng: &mut MimRng) -> CropBox {
    let area = (h * w) as f64;
    let (s0, s1) = (aug.scale.0 as f64, aug.scale.1 as f64);
    let (r0, r1) = (aug.ratio.0 as f64, aug.ratio.1 as f64);
    for _ in 0..10 {
        let target = area * uniform(rng, s0, s1);
        let aspect = uniform(rng, r0.ln(), r1.ln()).exp();
        let cw = (target * aspect).sqrt().round_ties_even();
        let ch = (target / aspect).sqrt().round_ties_even();
        // NaN (a bad range) fails these comparisons and falls through.
        if cw > 0.0 && cw <= w as f64 && ch > 0.0 && ch <= h as f64 {
            let (ch, cw) = (ch as usize, cw as usize);
            return CropBox {
                top: rng.random_range(0..=h - ch),
                left: rng.random_range(0..=w - cw),
                height: ch,
                width: cw,
            };
        }
    }
    // Fallback: central crop.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < r0.min(r1) {
        ((w as f64 / r0.min(r1)).round_ties_even() as usize, w)
    } else if in_ratio > r0.max(r1) {
        (h, (h as f64 * r0.max(r1)).round_ties_even() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h.max(1)), cw.clamp(1, w.max(1)));
    CropBox {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// The filter taps of one axis: output pixel `o` reads source pixels
/// `first[o] ..` with `weights[o]` (summing to 1).
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Taps {
    /// Resampling the source span `[start, start + extent)` (source pixels,
    /// fractional) to `dst` pixels, reading only pixels in `[lo, hi)`.
    fn new(start: f64, extent: f64, dst: usize, lo: usize, hi: usize) -> Taps {
        let scale = extent / dst as f64;
        let support = scale.max(1.0);
        let mut first = Vec::with_capacity(dst);
        let mut weights = Vec::with_capacity(dst);
        for o in 0..dst {
            let centre = start + (o as f64 + 0.5) * scale;
            let k0 = ((centre - support).floor().max(lo as f64) as usize).min(hi - 1);
            let k1 = ((centre + support).ceil().max(0.0) as usize).clamp(k0 + 1, hi);
            let mut w: Vec<f64> = (k0..k1)
                .map(|k| (1.0 - ((k as f64 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                // Cannot happen for a centre inside [lo, hi); nearest pixel otherwise.
                w.iter_mut().for_each(|v| *v = 0.0);
                let near = (centre.floor().max(lo as f64) as usize).clamp(k0, k1 - 1);
                w[near - k0] = 1.0;
            }
            first.push(k0);
            weights.push(w.into_iter().map(|v| v as f32).collect());
        }
        Taps { first, weights }
    }

    /// The source range the taps read.
    fn span(&self) -> (usize, usize) {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = self
            .first
            .iter()
            .zip(&self.weights)
            .map(|(&f, w)| f + w.len())
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

/// Separable resampling of `img (C, H₀, W₀)` into `out (C, H, W)`: columns
/// first (only the rows the row taps read), then rows.
fn resample(img: &RawImage, rows: &Taps, cols: &Taps, out: &mut [f32]) {
    let (h0, w0) = (img.height, img.width);
    let (oh, ow) = (rows.first.len(), cols.first.len());
    let (r_lo, r_hi) = rows.span();
    let nr = r_hi - r_lo;
    let mut tmp = vec![0f32; nr * ow]; // (rows read, W)
    for c in 0..img.channels {
        let plane = &img.data[c * h0 * w0..(c + 1) * h0 * w0];
        for (r, trow) in tmp.chunks_exact_mut(ow).enumerate() {
            let src = &plane[(r_lo + r) * w0..(r_lo + r + 1) * w0];
            for (o, t) in trow.iter_mut().enumerate() {
                let f = cols.first[o];
                *t = cols.weights[o].iter().zip(&src[f..]).map(|(w, v)| w * v).sum();
            }
        }
        let oplane = &mut out[c * oh * ow..(c + 1) * oh * ow];
        for (o, orow) in oplane.chunks_exact_mut(ow).enumerate() {
            orow.fill(0.0);
            for (k, &w) in rows.weights[o].iter().enumerate() {
                let trow = &tmp[(rows.first[o] + k - r_lo) * ow..][..ow];
                orow.iter_mut().zip(trow).for_each(|(a, &v)| *a += w * v);
            }
        }
    }
}

impl Transform {
    /// The evaluation transform for `encoder`: its size and channels, no
    /// augmentation (resize and centre crop), normalised by `norm` (taken to
    /// the encoder's channels, see [`Normalization::for_channels`]).
    pub fn eval(encoder: &EncoderConfig, norm: &Normalization) -> Transform {
        Transform {
            size: encoder.img_size(),
            channels: encoder.in_chans(),
            augment: None,
            norm: norm.for_channels(encoder.in_chans()),
        }
    }

    /// The same transform with MAE's crops and flips (`augment`) or without.
    pub fn augmented(self, augment: Option<Augment>) -> Transform {
        Transform { augment, ..self }
    }

    /// Values per output image: `C·H·W`.
    pub fn output_len(&self) -> usize {
        self.channels * self.size[0] * self.size[1]
    }

    /// Checks that the transform can produce images.
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.size;
        if h == 0 || w == 0 || self.channels == 0 {
            return Err(config_err(format!(
                "transform output {h}x{w} with {} channels is empty",
                self.channels
            )));
        }
        if self.norm.mean.len() != self.channels || self.norm.std.len() != self.channels {
            return Err(config_err(format!(
                "normalization has {} means and {} standard deviations for {} channels",
                self.norm.mean.len(),
                self.norm.std.len(),
                self.channels
            )));
        }
        if let Some(s) = self.norm.std.iter().find(|&&s| s <= 0.0 || !s.is_finite()) {
            return Err(config_err(format!(
                "normalization standard deviation {s} is not positive"
            )));
        }
        if let Some(a) = &self.augment {
            let ok = |(lo, hi): (f32, f32), max: f32| lo > 0.0 && lo <= hi && hi <= max;
            if !ok(a.scale, 1.0) {
                return Err(config_err(format!(
                    "crop scale range {:?} must satisfy 0 < min <= max <= 1",
                    a.scale
                )));
            }
            if !ok(a.ratio, f32::INFINITY) {
                return Err(config_err(format!(
                    "crop aspect-ratio range {:?} must satisfy 0 < min <= max",
                    a.ratio
                )));
            }
        }
        Ok(())
    }

    /// Converts channels, then: with `augment`, a random resized crop to
    /// `size` and a horizontal flip with probability ½; without, resize so the
    /// image covers `size` (the shorter side to the target) and centre-crop
    /// (identity when the size already matches). Finally normalizes.
    /// Returns `(C, H, W)`.
    ///
    /// # Panics
    /// If `img.data.len() != C₀·H₀·W₀`, or the image or the output is empty
    /// ([`load_batch`](crate::data::loader::load_batch) checks both and returns errors instead).
    pub fn apply(&self, img: &RawImage, rng: &mut MimRng) -> Vec<f32> {
        let mut out = vec![0f32; self.output_len()];
        self.apply_into(img, rng, &mut out);
        out
    }

    /// [`Transform::apply`] into `out` (`C·H·W` values).
    pub fn apply_into(&self, img: &RawImage, rng: &mut MimRng, out: &mut [f32]) {
        assert_eq!(
            img.data.len(),
            img.channels * img.height * img.width,
            "RawImage of {}x{}x{} holds {} values",
            img.channels,
            img.height,
            img.width,
            img.data.len()
        );
        assert!(img.height > 0 && img.width > 0 && img.channels > 0, "empty image");
        assert_eq!(out.len(), self.output_len(), "Transform::apply_into: output length");
        let img = converted(img, self.channels);
        let [th, tw] = self.size;
        let (h, w) = (img.height, img.width);
        match &self.augment {
            Some(aug) => {
                let b = random_resized_crop(h, w, aug, rng);
                let rows = Taps::new(b.top as f64, b.height as f64, th, b.top, b.top + b.height);
                let cols = Taps::new(b.left as f64, b.width as f64, tw, b.left, b.left + b.width);
                resample(&img, &rows, &cols, out);
                if aug.hflip && rng.random::<f32>() < 0.5 {
                    out.chunks_exact_mut(tw).for_each(|row| row.reverse());
                }
            }
            None if [h, w] == self.size => out.copy_from_slice(&img.data),
            None => {
                // Resize to (rh, rw) covering the target, as torchvision's
                // Resize (the longer side truncated), then crop the centre.
                let s = (th as f64 / h as f64).max(tw as f64 / w as f64);
                let rh = ((h as f64 * s) as usize).max(th);
                let rw = ((w as f64 * s) as usize).max(tw);
                let top = ((rh - th) as f64 / 2.0).round_ties_even();
                let left = ((rw - tw) as f64 / 2.0).round_ties_even();
                let (sy, sx) = (h as f64 / rh as f64, w as f64 / rw as f64);
                let rows = Taps::new(top * sy, th as f64 * sy, th, 0, h);
                let cols = Taps::new(left * sx, tw as f64 * sx, tw, 0, w);
                resample(&img, &rows, &cols, out);
            }
        }
        let hw = th * tw;
        for (c, plane) in out.chunks_exact_mut(hw).enumerate() {
            let n = self.norm.mean.len().max(1);
            let mean = self.norm.mean.get(c % n).copied().unwrap_or(0.0);
            let inv = 1.0 / self.norm.std.get(c % n).copied().unwrap_or(1.0);
            plane.iter_mut().for_each(|v| *v = (*v - mean) * inv);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    use std::collections::HashSet;

    fn image(c: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> RawImage {
        let data = (0..c)
            .flat_map(|ch| (0..h).flat_map(move |y| (0..w).map(move |x| (ch, y, x))))
            .map(|(ch, y, x)| f(ch, y, x))
            .collect();
        RawImage {
            channels: c,
            height: h,
            width: w,
            data,
        }
    }

    /// Resize and centre-crop to `size` at `channels`, identity statistics.
    pub(crate) fn eval(size: [usize; 2], channels: usize) -> Transform {
        Transform {
            size,
            channels,
            augment: None,
            norm: Normalization::uniform(0.0, 1.0, channels),
        }
    }

    fn rng(seed: u64) -> MimRng {
        MimRng::seed_from_u64(seed)
    }

    #[test]
    fn identity_when_sizes_match_except_normalization() {
        let img = image(3, 5, 7, |c, y, x| ((c * 31 + y * 7 + x) % 13) as f32 / 13.0);
        let mut t = eval([5, 7], 3);
        assert_eq!(t.apply(&img, &mut rng(0)), img.data);
        t.norm = Normalization {
            mean: vec![0.1, 0.2, 0.3],
            std: vec![0.5, 0.25, 2.0],
        };
        let out = t.apply(&img, &mut rng(0));
        for (k, (&o, &v)) in out.iter().zip(&img.data).enumerate() {
            let c = k / 35;
            assert!((o - (v - t.norm.mean[c]) / t.norm.std[c]).abs() < 1e-6);
        }
    }

    #[test]
    fn resize_and_centre_crop() {
        // A horizontal ramp: value = column. 4x8 → cover 2x2: resize to 2x4
        // (each output pixel averages 2x2 source pixels), keep columns 1..3.
        let ramp = image(1, 4, 8, |_, _, x| x as f32);
        let out = eval([2, 2], 1).apply(&ramp, &mut rng(0));
        assert_eq!(out.len(), 4);
        for (o, want) in out.iter().zip([2.5, 4.5, 2.5, 4.5]) {
            assert!((o - want).abs() < 1e-5, "{out:?}");
        }
        // Enlarging a ramp is bilinear: interior values stay on the line
        // x_src = (o + ½)/2 − ½.
        let small = image(1, 3, 4, |_, _, x| x as f32);
        let out = eval([6, 8], 1).apply(&small, &mut rng(0));
        assert_eq!(out.len(), 48);
        for o in 1..7 {
            let want = (o as f32 + 0.5) / 2.0 - 0.5;
            assert!((out[8 * 2 + o] - want).abs() < 1e-5, "col {o}: {}", out[8 * 2 + o]);
        }
        assert_eq!((out[0], out[7]), (0.0, 3.0), "edges clamp");
        // Non-square targets and odd sizes: shapes and constant images.
        let flat = image(3, 17, 23, |c, _, _| c as f32 * 0.25);
        for size in [[8, 8], [32, 32], [10, 30], [40, 5], [17, 23]] {
            let out = eval(size, 3).apply(&flat, &mut rng(0));
            assert_eq!(out.len(), 3 * size[0] * size[1]);
            for (k, v) in out.iter().enumerate() {
                let c = k / (size[0] * size[1]);
                assert!((v - c as f32 * 0.25).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn random_resized_crop_stays_inside() {
        let aug = Augment::mae();
        let mut r = rng(3);
        for (h, w) in [(32, 32), (28, 28), (1, 1), (3, 50), (50, 3), (17, 23), (224, 160)] {
            let mut seen = HashSet::new();
            for _ in 0..300 {
                let b = random_resized_crop(h, w, &aug, &mut r);
                assert!(b.height >= 1 && b.width >= 1, "{b:?}");
                assert!(b.top + b.height <= h && b.left + b.width <= w, "{b:?} in {h}x{w}");
                seen.insert(b);
            }
            if h * w >= 100 && (h as f32 / w as f32 - 1.0).abs() < 0.5 {
                assert!(seen.len() > 50, "crops of {h}x{w} vary: {}", seen.len());
            }
        }
        // A fitting box respects the scale and ratio ranges (up to rounding).
        for _ in 0..300 {
            let b = random_resized_crop(100, 100, &aug, &mut r);
            let area = (b.height * b.width) as f32 / 1e4;
            let ratio = b.width as f32 / b.height as f32;
            assert!((0.18..=1.0).contains(&area), "{b:?}");
            assert!((0.7..=1.4).contains(&ratio), "{b:?}");
        }
        // Fallback for a very elongated image: a central crop at the ratio limit.
        let thin = Augment {
            scale: (1.0, 1.0),
            ..Augment::mae()
        };
        let b = random_resized_crop(10, 100, &thin, &mut r);
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 43,
                height: 10,
                width: 13
            }
        );
    }

    #[test]
    fn flip_flips() {
        let img = image(2, 4, 6, |c, y, x| (c * 100 + y * 10 + x) as f32);
        // The crop is the whole image: scale 1 and the image's own ratio.
        let t = Transform {
            augment: Some(Augment {
                scale: (1.0, 1.0),
                ratio: (1.5, 1.5),
                hflip: true,
            }),
            ..eval([4, 6], 2)
        };
        let mirrored: Vec<f32> = img.data.chunks(6).flat_map(|r| r.iter().rev().copied()).collect();
        let (mut same, mut flipped) = (0, 0);
        for seed in 0..64 {
            let out = t.apply(&img, &mut rng(seed));
            if out == img.data {
                same += 1;
            } else if out == mirrored {
                flipped += 1;
            } else {
                panic!("neither the image nor its mirror: {out:?}");
            }
        }
        assert!(same > 10 && flipped > 10, "{same} unflipped, {flipped} flipped");
        let no_flip = Transform {
            augment: Some(Augment {
                hflip: false,
                ..t.augment.clone().unwrap()
            }),
            ..t.clone()
        };
        assert!((0..16).all(|s| no_flip.apply(&img, &mut rng(s)) == img.data));
    }

    #[test]
    fn channel_conversion() {
        let rgb = image(3, 2, 2, |c, _, _| [1.0, 0.5, 0.25][c]);
        let grey = convert_channels(&rgb, 1);
        let want = 0.299 + 0.587 * 0.5 + 0.114 * 0.25;
        assert_eq!(grey.channels, 1);
        assert!(grey.data.iter().all(|v| (v - want).abs() < 1e-6));
        let back = convert_channels(&grey, 3);
        assert_eq!(back.data.len(), 12);
        assert!(back.data.iter().all(|v| (v - want).abs() < 1e-6));
        assert_eq!(convert_channels(&rgb, 3), rgb);
        // Through a transform: grey input, RGB output.
        let g = image(1, 3, 3, |_, y, x| (y * 3 + x) as f32 / 9.0);
        let out = eval([3, 3], 3).apply(&g, &mut rng(0));
        assert_eq!(&out[..9], &g.data[..]);
        assert_eq!(&out[18..], &g.data[..]);
    }

    #[test]
    fn validate_rejects_bad_transforms() {
        assert!(eval([0, 4], 1).validate().is_err());
        let mut t = eval([4, 4], 3);
        t.norm = Normalization::uniform(0.5, 0.5, 1);
        assert!(t.validate().is_err());
        t.norm = Normalization::uniform(0.5, 0.0, 3);
        assert!(t.validate().is_err());
        t.norm = Normalization::uniform(0.5, 0.5, 3);
        t.augment = Some(Augment {
            scale: (0.5, 0.2),
            ..Augment::mae()
        });
        assert!(t.validate().is_err());
        t.augment = Some(Augment::mae());
        assert!(t.validate().is_ok());
    }
}
