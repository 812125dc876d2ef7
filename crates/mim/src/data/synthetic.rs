//! The embedded default data set: procedurally drawn shapes and textures.
//!
//! Nothing to download: image `i` of a split is drawn on demand from a
//! generator seeded by `(seed, split, i)`, at any size and channel count, and
//! its label is `i mod 10`. A class is a shape or the layout of a texture,
//! never a colour:
//!
//! | label | class | varies |
//! | --- | --- | --- |
//! | 0 | circle | radius, position |
//! | 1 | square | side, position, rotation |
//! | 2 | triangle | size, position, rotation |
//! | 3 | cross | arm length and width, position, rotation (+ or ×) |
//! | 4 | ring | radius, thickness, position |
//! | 5 | horizontal stripes | period, duty, phase, tilt ±17° |
//! | 6 | vertical stripes | period, duty, phase, tilt ±17° |
//! | 7 | diagonal stripes | period, duty, phase, ±45° ± 17° |
//! | 8 | checkerboard | cell, phase, rotation ±23° |
//! | 9 | dot grid | period, dot radius, phase, rotation ±23° |
//!
//! Every image has its own dark background (each channel in [0, 0.35], a
//! gentle linear gradient across it) and light foreground (each channel in
//! [0.6, 1]), so hue and brightness say nothing of the class, and 2×2
//! supersampled edges. Shapes are large (a quarter to four fifths of the
//! shorter side across) and textures coarse (periods of a fifth to two fifths
//! of it), so that a 75%-masked image keeps parts of every shape visible and
//! the hidden rest can be inferred. There is no pixel noise: it cannot be
//! predicted, and under a per-patch normalised target it would be all that
//! flat patches hold. Geometry is in units of the shorter image side, so an
//! image looks the same at 28×28 and 224×224. Grey images are the luminance
//! `0.299 R + 0.587 G + 0.114 B` of the colour ones.
//!
//! Positions, phases and colours vary enough that the classes are not
//! linearly separable in pixel space (a linear probe on raw pixels reaches
//! about 42%), while an encoder pre-trained on them for three minutes
//! separates them far better (docs/mim.md, "What a first run shows").

use super::transform::convert_channels;
use super::{Dataset, Normalization, RawImage, Split, out_of_range};
use crate::error::{Result, config_err};
use crate::rng::{MimRng, mix_seed};
use rand::{RngExt, SeedableRng};
use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, TAU};

/// The class names, label `k` being `CLASSES[k]`.
pub const CLASSES: [&str; 10] = [
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dot grid",
];

/// Procedural shapes and textures (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticDataset {
    len: usize,
    size: [usize; 2],
    channels: usize,
    seed: u64,
    split: Split,
}

/// What is drawn in foreground colour: a test on a point `(u, v)` in units of
/// the shorter side, relative to the image centre.
#[derive(Clone, Debug)]
enum Pattern {
    Circle {
        c: [f32; 2],
        r: f32,
    },
    Square {
        c: [f32; 2],
        rot: f32,
        half: f32,
    },
    Triangle {
        c: [f32; 2],
        rot: f32,
        inradius: f32,
    },
    Cross {
        c: [f32; 2],
        rot: f32,
        arm: f32,
        half_width: f32,
    },
    Ring {
        c: [f32; 2],
        r: f32,
        half_width: f32,
    },
    /// Stripes across direction `angle`: `fract(t / period + phase) < duty`.
    Stripes {
        angle: f32,
        period: f32,
        phase: f32,
        duty: f32,
    },
    Checker {
        rot: f32,
        cell: f32,
        phase: [f32; 2],
    },
    Dots {
        rot: f32,
        period: f32,
        radius: f32,
        phase: [f32; 2],
    },
}

/// `(u, v)` relative to `c`, rotated by `−rot`.
fn local(u: f32, v: f32, c: [f32; 2], rot: f32) -> (f32, f32) {
    let (du, dv) = (u - c[0], v - c[1]);
    let (s, co) = rot.sin_cos();
    (co * du + s * dv, -s * du + co * dv)
}

impl Pattern {
    fn covers(&self, u: f32, v: f32) -> bool {
        match *self {
            Pattern::Circle { c, r } => (u - c[0]).hypot(v - c[1]) < r,
            Pattern::Square { c, rot, half } => {
                let (x, y) = local(u, v, c, rot);
                x.abs() < half && y.abs() < half
            }
            Pattern::Triangle { c, rot, inradius } => {
                // Inside the three half-planes whose normals are 120° apart.
                let (x, y) = local(u, v, c, rot);
                (0..3).all(|k| {
                    let a = FRAC_PI_2 + k as f32 * TAU / 3.0;
                    x * a.cos() + y * a.sin() < inradius
                })
            }
            Pattern::Cross {
                c,
                rot,
                arm,
                half_width,
            } => {
                let (x, y) = local(u, v, c, rot);
                (x.abs() < half_width && y.abs() < arm) || (y.abs() < half_width && x.abs() < arm)
            }
            Pattern::Ring { c, r, half_width } => ((u - c[0]).hypot(v - c[1]) - r).abs() < half_width,
            Pattern::Stripes {
                angle,
                period,
                phase,
                duty,
            } => {
                let t = u * angle.cos() + v * angle.sin();
                (t / period + phase).rem_euclid(1.0) < duty
            }
            Pattern::Checker { rot, cell, phase } => {
                let (x, y) = local(u, v, [0.0, 0.0], rot);
                let (i, j) = ((x / cell + phase[0]).floor(), (y / cell + phase[1]).floor());
                (i + j).rem_euclid(2.0) < 0.5
            }
            Pattern::Dots {
                rot,
                period,
                radius,
                phase,
            } => {
                let (x, y) = local(u, v, [0.0, 0.0], rot);
                let fx = (x / period + phase[0]).rem_euclid(1.0) - 0.5;
                let fy = (y / period + phase[1]).rem_euclid(1.0) - 0.5;
                fx.hypot(fy) * period < radius
            }
        }
    }
}

impl SyntheticDataset {
    /// `len` images of `size` `[H, W]` with `channels` channels (1 = grey,
    /// 3 = RGB; other counts repeat R, G, B cyclically).
    pub fn new(len: usize, size: [usize; 2], channels: usize, seed: u64, split: Split) -> Result<Self> {
        if len == 0 {
            return Err(config_err("the synthetic data set needs at least 1 image"));
        }
        if size[0] == 0 || size[1] == 0 || channels == 0 {
            return Err(config_err(format!(
                "synthetic images of {}x{} with {channels} channels are empty",
                size[0], size[1]
            )));
        }
        Ok(SyntheticDataset {
            len,
            size,
            channels,
            seed,
            split,
        })
    }

    /// The generator of image `i`: train and test never share one.
    fn rng(&self, i: usize) -> MimRng {
        let split_tag = match self.split {
            Split::Train => 0x7472_6169_6e00_0001,
            Split::Test => 0x7465_7374_0000_0002,
        };
        MimRng::seed_from_u64(mix_seed(mix_seed(self.seed, split_tag), i as u64))
    }

    /// Draws the pattern of class `class`. `min_period` (in units of the
    /// shorter side) keeps textures above 3 pixels per period.
    fn pattern(class: usize, rng: &mut MimRng, min_period: f32) -> Pattern {
        let mut centre = || [rng.random_range(-0.25..0.25f32), rng.random_range(-0.25..0.25f32)];
        let c = centre();
        let tilt = |rng: &mut MimRng, max: f32| rng.random_range(-max..max);
        let period = |rng: &mut MimRng, lo: f32, hi: f32| rng.random_range(lo..hi).max(min_period);
        match class {
            0 => Pattern::Circle {
                c,
                r: rng.random_range(0.22..0.4),
            },
            1 => Pattern::Square {
                c,
                rot: rng.random_range(0.0..FRAC_PI_2),
                half: rng.random_range(0.18..0.32),
            },
            2 => Pattern::Triangle {
                c,
                rot: rng.random_range(0.0..TAU / 3.0),
                inradius: rng.random_range(0.12..0.2),
            },
            3 => Pattern::Cross {
                c,
                rot: rng.random_range(0.0..FRAC_PI_2),
                arm: rng.random_range(0.25..0.42),
                half_width: rng.random_range(0.06..0.12),
            },
            4 => {
                let r = rng.random_range(0.22..0.38);
                Pattern::Ring {
                    c,
                    r,
                    half_width: rng.random_range(0.05..0.1f32).min(r * 0.5),
                }
            }
            5..=7 => {
                let base = match class {
                    5 => FRAC_PI_2, // varies along v: horizontal stripes
                    6 => 0.0,
                    _ if rng.random::<bool>() => FRAC_PI_4,
                    _ => -FRAC_PI_4,
                };
                Pattern::Stripes {
                    angle: base + tilt(rng, 0.3),
                    period: period(rng, 0.22, 0.4),
                    phase: rng.random(),
                    duty: rng.random_range(0.35..0.65),
                }
            }
            8 => Pattern::Checker {
                rot: tilt(rng, 0.4),
                cell: period(rng, 0.15, 0.28),
                phase: [rng.random(), rng.random()],
            },
            _ => {
                let p = period(rng, 0.25, 0.4).max(min_period * 1.5);
                Pattern::Dots {
                    rot: tilt(rng, 0.4),
                    period: p,
                    radius: p * rng.random_range(0.2..0.33),
                    phase: [rng.random(), rng.random()],
                }
            }
        }
    }

    /// Draws image `i` (any `i`; [`Dataset::get`] checks the range).
    pub fn render(&self, i: usize) -> RawImage {
        let [h, w] = self.size;
        let class = i % CLASSES.len();
        let mut rng = self.rng(i);
        let side = h.min(w) as f32;
        let pattern = Self::pattern(class, &mut rng, 3.0 / side);

        // Colours: a dark background with a gradient, a light foreground.
        let colour = |rng: &mut MimRng| [rng.random::<f32>(), rng.random(), rng.random()];
        let bg0 = colour(&mut rng).map(|v| 0.35 * v);
        let fg = colour(&mut rng).map(|v| 0.6 + 0.4 * v);
        let grad_dir = rng.random_range(0.0..TAU);
        let grad: Vec<f32> = (0..3).map(|_| rng.random_range(-0.15..0.15)).collect();
        let (gc, gs) = (grad_dir.cos(), grad_dir.sin());

        // 2×2 supersampled coverage, then colour.
        let hw = h * w;
        let mut rgb = vec![0f32; 3 * hw];
        for y in 0..h {
            for x in 0..w {
                let mut cover = 0.0;
                for (dy, dx) in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)] {
                    let u = (x as f32 + dx - w as f32 / 2.0) / side;
                    let v = (y as f32 + dy - h as f32 / 2.0) / side;
                    if pattern.covers(u, v) {
                        cover += 0.25;
                    }
                }
                let u = (x as f32 + 0.5 - w as f32 / 2.0) / side;
                let v = (y as f32 + 0.5 - h as f32 / 2.0) / side;
                let t = u * gc + v * gs; // in about [−0.7, 0.7]
                for c in 0..3 {
                    let bg = bg0[c] + grad[c] * t;
                    let value = bg * (1.0 - cover) + fg[c] * cover;
                    rgb[c * hw + y * w + x] = value.clamp(0.0, 1.0);
                }
            }
        }
        let img = RawImage {
            channels: 3,
            height: h,
            width: w,
            data: rgb,
        };
        convert_channels(&img, self.channels)
    }
}

impl Dataset for SyntheticDataset {
    fn name(&self) -> String {
        format!("synthetic ({})", self.split.as_str())
    }
    fn len(&self) -> usize {
        self.len
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        Some(self.size)
    }
    fn class_names(&self) -> Vec<String> {
        CLASSES.iter().map(|s| s.to_string()).collect()
    }
    fn label(&self, i: usize) -> Option<u32> {
        (i < self.len).then_some((i % CLASSES.len()) as u32)
    }
    fn get(&self, i: usize) -> Result<RawImage> {
        if i >= self.len {
            return Err(out_of_range(&self.name(), i, self.len));
        }
        Ok(self.render(i))
    }
    /// Measured on 2000 images: mean 0.39 and std 0.30 per RGB channel;
    /// mean 0.39 and std 0.29 in grey.
    fn normalization(&self) -> Normalization {
        let std = if self.channels == 1 { 0.29 } else { 0.30 };
        Normalization::uniform(0.39, std, self.channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(len: usize, size: [usize; 2], channels: usize, split: Split) -> SyntheticDataset {
        SyntheticDataset::new(len, size, channels, 42, split).unwrap()
    }

    #[test]
    fn deterministic_and_splits_differ() {
        let train = ds(100, [28, 28], 1, Split::Train);
        let again = ds(100, [28, 28], 1, Split::Train);
        let test = ds(100, [28, 28], 1, Split::Test);
        for i in [0, 7, 99] {
            assert_eq!(train.get(i).unwrap(), again.get(i).unwrap());
            assert_ne!(train.get(i).unwrap(), test.get(i).unwrap());
            assert_eq!(train.label(i), test.label(i));
        }
        assert_ne!(train.get(0).unwrap(), train.get(10).unwrap(), "same class, other image");
        let other_seed = SyntheticDataset::new(100, [28, 28], 1, 43, Split::Train).unwrap();
        assert_ne!(train.get(3).unwrap(), other_seed.get(3).unwrap());
        assert!(train.get(100).is_err());
        assert_eq!(train.label(100), None);
    }

    #[test]
    fn all_classes_any_size_values_in_range() {
        for (size, c) in [([28, 28], 1), ([32, 32], 3), ([17, 23], 3), ([9, 40], 1), ([64, 48], 2)] {
            let d = ds(30, size, c, Split::Train);
            let mut seen = [false; 10];
            for i in 0..d.len() {
                let img = d.get(i).unwrap();
                assert_eq!((img.channels, img.height, img.width), (c, size[0], size[1]));
                assert_eq!(img.data.len(), c * size[0] * size[1]);
                assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
                // Something is drawn: the image is not flat.
                let (lo, hi) = img.data.iter().fold((1f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
                assert!(hi - lo > 0.2, "image {i} at {size:?} is nearly flat");
                seen[d.label(i).unwrap() as usize] = true;
            }
            assert!(seen.iter().all(|&s| s));
        }
        assert_eq!(ds(1, [4, 4], 1, Split::Test).class_names().len(), 10);
    }

    #[test]
    fn grey_is_the_luminance_of_colour() {
        let rgb = ds(10, [16, 16], 3, Split::Train).get(4).unwrap();
        let grey = ds(10, [16, 16], 1, Split::Train).get(4).unwrap();
        for p in 0..256 {
            let want = 0.299 * rgb.data[p] + 0.587 * rgb.data[256 + p] + 0.114 * rgb.data[512 + p];
            assert!((grey.data[p] - want).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(SyntheticDataset::new(0, [8, 8], 1, 0, Split::Train).is_err());
        assert!(SyntheticDataset::new(5, [0, 8], 1, 0, Split::Train).is_err());
        assert!(SyntheticDataset::new(5, [8, 8], 0, 0, Split::Train).is_err());
    }

    /// Classes are learnable but not linearly trivial: a nearest-class-mean
    /// classifier on raw pixels (a linear classifier) is far from perfect but
    /// better than chance.
    #[test]
    fn classes_are_not_trivially_separable() {
        let train = ds(2000, [16, 16], 1, Split::Train);
        let test = ds(500, [16, 16], 1, Split::Test);
        let d = 256;
        let mut means = vec![0f64; 10 * d];
        for i in 0..train.len() {
            let img = train.get(i).unwrap();
            let k = train.label(i).unwrap() as usize;
            for (m, &v) in means[k * d..(k + 1) * d].iter_mut().zip(&img.data) {
                *m += v as f64 / 200.0;
            }
        }
        let correct = (0..test.len())
            .filter(|&i| {
                let img = test.get(i).unwrap();
                let best = (0..10)
                    .min_by(|&a, &b| {
                        let dist = |k: usize| -> f64 {
                            means[k * d..(k + 1) * d]
                                .iter()
                                .zip(&img.data)
                                .map(|(m, &v)| (m - v as f64).powi(2))
                                .sum()
                        };
                        dist(a).total_cmp(&dist(b))
                    })
                    .unwrap();
                best as u32 == test.label(i).unwrap()
            })
            .count();
        let acc = correct as f64 / test.len() as f64;
        assert!(acc < 0.6, "nearest class mean reaches {acc}");
    }
}
