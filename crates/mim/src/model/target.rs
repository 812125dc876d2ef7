//! Prediction targets: what the head must produce for each hidden patch.
//!
//! * pixels, in MAE's patchify order `(row, column, channel)`, optionally
//!   normalised per patch (MAE's `norm_pix_loss`: mean and unbiased variance of
//!   the patch, `(x − mean) / √(var + 1e-6)`), with MSE or L1;
//! * discrete codes: the index of each patch's nearest centroid in a k-means
//!   codebook of training patches (a visual vocabulary), with cross-entropy.
//!
//! Either way the loss is averaged over hidden patches only.

use crate::error::{MimError, Result};
use crate::rng::MimRng;
use rand::RngExt;
use rayon::prelude::*;
use tessera_kernels::gemm::{MatMut, MatRef, Precision, gemm};
use tessera_kernels::patch::{PatchDims, patchify};

/// MAE's patchify of images `(B, C, H, W)` → `(B, L, p·p·C)`.
pub fn patchify_images(imgs: &[f32], dims: PatchDims) -> Vec<f32> {
    let mut out = vec![0f32; imgs.len()];
    patchify(&mut out, imgs, dims);
    out
}

/// Normalises each row of `patches` (rows of `p` values) in place by its mean
/// and unbiased variance: `(x − mean) / √(var + 1e-6)`.
pub fn normalize_patches(patches: &mut [f32], p: usize) {
    patches.par_chunks_mut(p.max(1)).for_each(|row| {
        let (mean, var) = patch_stats(row);
        let inv = 1.0 / (var + 1e-6).sqrt();
        row.iter_mut().for_each(|v| *v = (*v - mean) * inv);
    });
}

/// Mean and unbiased variance of one patch (variance 0 for a single value).
pub fn patch_stats(row: &[f32]) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let ss: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
    let var = if row.len() > 1 { ss / (n - 1.0) } else { 0.0 };
    (mean as f32, var as f32)
}

/// A k-means codebook of patches: `centroids (K, P)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    pub centroids: Vec<f32>,
    pub size: usize,
    pub dim: usize,
    /// Whether patches are normalised (as `norm_pix`) before assignment.
    pub normalize: bool,
}

impl Codebook {
    /// Fits `size` centroids to `patches (N, dim)` with k-means++ seeding and
    /// `iters` Lloyd iterations. Empty clusters are re-seeded with the patch
    /// farthest from its centroid.
    pub fn fit(
        patches: &[f32],
        dim: usize,
        size: usize,
        normalize: bool,
        iters: usize,
        rng: &mut MimRng,
    ) -> Result<Codebook> {
        let n = patches.len() / dim.max(1);
        if n < size {
            return Err(MimError::Input(format!(
                "a codebook of {size} entries needs at least {size} patches, got {n}"
            )));
        }
        let mut data = patches.to_vec();
        if normalize {
            normalize_patches(&mut data, dim);
        }
        // k-means++: each new centroid is drawn with probability ∝ distance².
        let mut centroids = Vec::with_capacity(size * dim);
        let first = rng.random_range(0..n);
        centroids.extend_from_slice(&data[first * dim..(first + 1) * dim]);
        let mut d2: Vec<f32> = (0..n)
            .map(|i| dist2(&data[i * dim..(i + 1) * dim], &centroids[..dim]))
            .collect();
        for _ in 1..size {
            let total: f64 = d2.iter().map(|&v| v as f64).sum();
            let pick = if total <= 0.0 {
                rng.random_range(0..n)
            } else {
                let mut r = rng.random::<f64>() * total;
                d2.iter()
                    .position(|&v| {
                        r -= v as f64;
                        r <= 0.0
                    })
                    .unwrap_or(n - 1)
            };
            let c = data[pick * dim..(pick + 1) * dim].to_vec();
            d2.par_iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = v.min(dist2(&data[i * dim..(i + 1) * dim], &c)));
            centroids.extend_from_slice(&c);
        }
        let mut book = Codebook {
            centroids,
            size,
            dim,
            normalize: false,
        };
        for _ in 0..iters {
            let (assign, dist) = book.nearest(&data);
            let mut sums = vec![0f64; size * dim];
            let mut counts = vec![0usize; size];
            for (i, &a) in assign.iter().enumerate() {
                counts[a as usize] += 1;
                for (s, &v) in sums[a as usize * dim..][..dim]
                    .iter_mut()
                    .zip(&data[i * dim..(i + 1) * dim])
                {
                    *s += v as f64;
                }
            }
            let mut far: Vec<usize> = (0..n).collect();
            far.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]));
            let mut next_far = far.into_iter();
            for k in 0..size {
                let dst = &mut book.centroids[k * dim..(k + 1) * dim];
                if counts[k] == 0 {
                    let i = next_far.next().unwrap_or(0);
                    dst.copy_from_slice(&data[i * dim..(i + 1) * dim]);
                } else {
                    for (c, s) in dst.iter_mut().zip(&sums[k * dim..(k + 1) * dim]) {
                        *c = (*s / counts[k] as f64) as f32;
                    }
                }
            }
        }
        book.normalize = normalize;
        Ok(book)
    }

    /// A codebook from saved centroids.
    pub fn from_centroids(centroids: Vec<f32>, size: usize, dim: usize, normalize: bool) -> Result<Codebook> {
        if centroids.len() != size * dim {
            return Err(MimError::Input(format!(
                "codebook of {} values is not {size} × {dim}",
                centroids.len()
            )));
        }
        Ok(Codebook {
            centroids,
            size,
            dim,
            normalize,
        })
    }

    /// Nearest centroid and squared distance for each row of `data` (already
    /// normalised if the codebook is): `‖x‖² − 2·x·c + ‖c‖²` with one GEMM.
    fn nearest(&self, data: &[f32]) -> (Vec<u32>, Vec<f32>) {
        let (k, dim) = (self.size, self.dim);
        let n = data.len() / dim;
        let mut dots = vec![0f32; n * k]; // (N, K)
        gemm(
            Precision::F32,
            1.0,
            MatRef::row_major(data, n, dim),
            MatRef::row_major(&self.centroids, k, dim).t(),
            0.0,
            MatMut::row_major(&mut dots, n, k),
        );
        let cnorm: Vec<f32> = self
            .centroids
            .chunks(dim)
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        dots.par_chunks(k)
            .enumerate()
            .map(|(i, row)| {
                let xnorm: f32 = data[i * dim..(i + 1) * dim].iter().map(|v| v * v).sum();
                let (best, d) = row
                    .iter()
                    .zip(&cnorm)
                    .map(|(dot, cn)| cn - 2.0 * dot)
                    .enumerate()
                    .fold((0, f32::INFINITY), |acc, (j, d)| if d < acc.1 { (j, d) } else { acc });
                (best as u32, (d + xnorm).max(0.0))
            })
            .unzip()
    }

    /// The code of every patch in `patches (N, dim)`.
    pub fn assign(&self, patches: &[f32]) -> Vec<u32> {
        if self.normalize {
            let mut data = patches.to_vec();
            normalize_patches(&mut data, self.dim);
            self.nearest(&data).0
        } else {
            self.nearest(patches).0
        }
    }
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn norm_pix_uses_unbiased_variance() {
        let mut p = vec![1.0, 2.0, 3.0, 4.0];
        normalize_patches(&mut p, 4);
        // mean 2.5, unbiased var 5/3.
        let s = (5.0f32 / 3.0 + 1e-6).sqrt();
        assert!((p[0] + 1.5 / s).abs() < 1e-6 && (p[3] - 1.5 / s).abs() < 1e-6);
    }

    #[test]
    fn kmeans_finds_separated_clusters() {
        let mut rng = MimRng::seed_from_u64(0);
        // Three tight clusters in 4-D.
        let centres = [[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [0.0, 0.0, -5.0, 5.0]];
        let mut pts = Vec::new();
        let mut labels = Vec::new();
        for i in 0..300 {
            let c = i % 3;
            labels.push(c);
            pts.extend(centres[c].iter().map(|v| v + rng.random_range(-0.3f32..0.3)));
        }
        let book = Codebook::fit(&pts, 4, 3, false, 10, &mut rng).unwrap();
        let codes = book.assign(&pts);
        // Same cluster ⇔ same code.
        for i in 0..300 {
            for j in 0..3 {
                assert_eq!(labels[i] == labels[j], codes[i] == codes[j]);
            }
        }
        assert!(Codebook::fit(&pts[..8], 4, 3, false, 1, &mut rng).is_err());
    }
}
