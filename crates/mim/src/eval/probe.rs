//! How good are the learned representations? Frozen-encoder features, then a
//! linear probe (multinomial logistic regression on standardised features,
//! trained to convergence with L-BFGS)
//! and a k-nearest-neighbour classifier (cosine similarity, k = 20,
//! temperature-weighted votes as in DINO/InstDisc), both scored on a test split.

use crate::config::Pool;
use crate::data::Dataset;
use crate::data::loader::load_batch;
use crate::data::transform::Transform;
use crate::error::{MimError, Result};
use crate::model::mim::MimModel;
use rayon::prelude::*;
use tessera_kernels::gemm::{MatMut, MatRef, Precision, gemm};
use tessera_tensor::Tensor;

/// Feature vectors `(N, dim)` with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub data: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<u32>,
}

impl Features {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The indices of the first `limit` images of `ds` (all without a limit).
fn first(ds: &dyn Dataset, limit: Option<usize>) -> Vec<usize> {
    (0..limit.map_or(ds.len(), |l| l.min(ds.len()))).collect()
}

/// Runs `f` on batches of the images `rows` of `ds` and gathers `(rows, dim)` outputs.
fn collect(
    ds: &dyn Dataset,
    transform: &Transform,
    batch: usize,
    rows: &[usize],
    progress: &mut dyn FnMut(usize, usize),
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Features> {
    let n = rows.len();
    if n == 0 {
        return Err(MimError::Input(format!("{} has no images", ds.name())));
    }
    let mut data = Vec::new();
    let mut labels = Vec::with_capacity(n);
    let mut dim = 0;
    for idx in rows.chunks(batch.max(1)) {
        let (imgs, lab) = load_batch(ds, idx, transform, 0)?;
        for (i, l) in idx.iter().zip(lab) {
            labels.push(l.ok_or_else(|| {
                MimError::Input(format!(
                    "{}: image {i} has no label; evaluation needs a labelled data set",
                    ds.name()
                ))
            })?);
        }
        let out = f(&imgs)?;
        dim = out.shape()[1];
        data.extend_from_slice(&out.data());
        progress(labels.len(), n);
    }
    Ok(Features { data, dim, labels })
}

/// Frozen-encoder features of the first `limit` images: never masked,
/// deterministic (eval transform, no dropout).
pub fn encoder_features(
    model: &MimModel,
    ds: &dyn Dataset,
    transform: &Transform,
    pool: Pool,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    collect(ds, transform, batch, &first(ds, limit), progress, |imgs| {
        model.features(imgs, pool)
    })
}

/// Frozen-encoder features of the images `rows` of `ds` (a fixed subset:
/// the online k-NN of a pre-training run).
pub fn encoder_features_of(
    model: &MimModel,
    ds: &dyn Dataset,
    rows: &[usize],
    transform: &Transform,
    pool: Pool,
    batch: usize,
) -> Result<Features> {
    collect(ds, transform, batch, rows, &mut |_, _| {}, |imgs| {
        model.features(imgs, pool)
    })
}

/// Mean-pooled and \[CLS\] features of the first `limit` images, both from one
/// encoder pass per batch (see [`encoder_features`]).
pub fn encoder_features_mean_and_cls(
    model: &MimModel,
    ds: &dyn Dataset,
    transform: &Transform,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Features, Features)> {
    let both = collect(ds, transform, batch, &first(ds, limit), progress, |imgs| {
        let vit = model.encoder.vit().ok_or_else(|| {
            MimError::Input("mean and [CLS] features need a Vision Transformer (Swin has no [CLS])".into())
        })?;
        tessera_tensor::no_grad(|| vit.features_mean_and_cls(imgs))
    })?;
    let d = both.dim / 2;
    let half = |first: bool| Features {
        data: both
            .data
            .chunks(2 * d)
            .flat_map(|row| if first { &row[..d] } else { &row[d..] })
            .copied()
            .collect(),
        dim: d,
        labels: both.labels.clone(),
    };
    Ok((half(true), half(false)))
}

/// The normalised input pixels themselves, flattened: the baseline any
/// representation should beat.
pub fn pixel_features(
    ds: &dyn Dataset,
    transform: &Transform,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    collect(ds, transform, 256, &first(ds, limit), progress, |imgs| {
        let b = imgs.shape()[0];
        Ok(imgs.reshape(&[b as isize, -1])?)
    })
}

/// Settings of the linear probe: multinomial logistic regression on
/// standardised features, minimising
///
/// ```text
/// L(W, b) = 1/N · Σ_i −log softmax(W·x_i + b)[y_i]  +  l2/2 · ‖W‖²
/// ```
///
/// to convergence with full-batch L-BFGS. `l2 = 1/(C·N)` is scikit-learn's
/// `LogisticRegression(C)` on the same N images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// L2 penalty on the weights (not the bias), per image as above.
    pub l2: f32,
    /// Stop after this many L-BFGS iterations at most.
    pub max_iter: usize,
    /// Stop when every gradient entry is below this in magnitude.
    pub tol: f32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            l2: 1e-4,
            max_iter: 1000,
            tol: 1e-5,
        }
    }
}

/// How a linear probe ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeReport {
    /// Accuracy on the test features.
    pub accuracy: f32,
    /// L-BFGS iterations run.
    pub iterations: usize,
    /// Largest gradient entry at the end (≤ `tol` when converged).
    pub grad_max: f64,
    /// The objective at the end.
    pub loss: f64,
}

/// Per-dimension mean and standard deviation of the training features (the
/// probe standardises with them, as MAE's affine-free BatchNorm before its head).
fn standardiser(f: &Features) -> (Vec<f32>, Vec<f32>) {
    let (n, d) = (f.len() as f64, f.dim);
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in f.data.chunks(d) {
        for j in 0..d {
            mean[j] += row[j] as f64;
            sq[j] += (row[j] as f64).powi(2);
        }
    }
    let m: Vec<f32> = mean.iter().map(|s| (s / n) as f32).collect();
    let s: Vec<f32> = (0..d)
        .map(|j| ((sq[j] / n - (mean[j] / n).powi(2)).max(0.0) + 1e-6).sqrt() as f32)
        .collect();
    (m, s)
}

fn standardise(f: &Features, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let d = f.dim;
    let mut out = f.data.clone();
    out.par_chunks_mut(d).for_each(|row| {
        for j in 0..d {
            row[j] = (row[j] - mean[j]) / std[j];
        }
    });
    out
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (j, v)| if *v > row[best] { j } else { best })
}

/// Loss and gradient of [`ProbeConfig`]'s objective at `theta` = `[W (c, d)
/// row-major, b (c)]`, for standardised features `x` `(n, d)`. Products in
/// f32 through the GEMM kernel, sums in f64.
fn logistic_loss_grad(x: &[f32], y: &[u32], d: usize, c: usize, l2: f64, theta: &[f64]) -> (f64, Vec<f64>) {
    let n = y.len();
    let w: Vec<f32> = theta[..c * d].iter().map(|&v| v as f32).collect();
    let mut logits = vec![0f32; n * c]; // (n, c) = x · Wᵀ
    gemm(
        Precision::F32,
        1.0,
        MatRef::row_major(x, n, d),
        MatRef::row_major(&w, c, d).t(),
        0.0,
        MatMut::row_major(&mut logits, n, c),
    );
    // Each row becomes (softmax − one-hot)/n, the gradient of the mean loss
    // with respect to the logits; the row's loss is summed on the side.
    let data_loss: f64 = logits
        .par_chunks_mut(c)
        .zip(y.par_iter())
        .map(|(row, &label)| {
            let bias = &theta[c * d..];
            let z = |j: usize| row[j] as f64 + bias[j];
            let max = (0..c).map(z).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..c).map(|j| (z(j) - max).exp()).sum();
            let row_loss = max + sum.ln() - z(label as usize);
            for (j, b) in bias.iter().enumerate() {
                let p = (row[j] as f64 + b - max).exp() / sum;
                row[j] = ((p - (j == label as usize) as u8 as f64) / n as f64) as f32;
            }
            row_loss
        })
        .sum();
    let mut gw = vec![0f32; c * d]; // (c, d) = Gᵀ · x
    gemm(
        Precision::F32,
        1.0,
        MatRef::row_major(&logits, n, c).t(),
        MatRef::row_major(x, n, d),
        0.0,
        MatMut::row_major(&mut gw, c, d),
    );
    let mut grad: Vec<f64> = gw.iter().zip(theta).map(|(&g, &t)| g as f64 + l2 * t).collect();
    for j in 0..c {
        grad.push(logits[j..].iter().step_by(c).map(|&g| g as f64).sum());
    }
    let w_sq: f64 = theta[..c * d].iter().map(|v| v * v).sum();
    (data_loss / n as f64 + 0.5 * l2 * w_sq, grad)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Minimises `f` from `x` with L-BFGS (10 pairs, backtracking Armijo line
/// search) until the largest gradient entry is below `tol`, the line search
/// can no longer decrease `f` (the f32 noise floor), or `max_iter`.
/// Returns (x, f(x), largest gradient entry, iterations).
fn lbfgs(
    mut x: Vec<f64>,
    max_iter: usize,
    tol: f64,
    f: impl Fn(&[f64]) -> (f64, Vec<f64>),
) -> (Vec<f64>, f64, f64, usize) {
    const M: usize = 10;
    let (mut fx, mut g) = f(&x);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut iter = 0;
    while iter < max_iter && max_abs(&g) > tol {
        // Two-loop recursion: d = −H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match pairs.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            None => 1.0 / max_abs(&g).max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let slope = dot(&g, &dir);
        if slope >= 0.0 {
            pairs.clear(); // not a descent direction: restart from −g
            continue;
        }
        let mut step = 1.0;
        let accepted = loop {
            let xn: Vec<f64> = x.iter().zip(&dir).map(|(xi, di)| xi + step * di).collect();
            let (fn_, gn) = f(&xn);
            if fn_ <= fx + 1e-4 * step * slope {
                break Some((xn, fn_, gn));
            }
            step *= 0.5;
            if step < 1e-10 {
                break None;
            }
        };
        let Some((xn, fn_, gn)) = accepted else { break };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if pairs.len() == M {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        (x, fx, g) = (xn, fn_, gn);
        iter += 1;
    }
    let gmax = max_abs(&g);
    (x, fx, gmax, iter)
}

/// Trains a linear classifier on `train` features standardised with their
/// own mean and deviation (as MAE's affine-free BatchNorm before its head),
/// to convergence (see [`ProbeConfig`]), and returns the accuracy on `test`.
pub fn linear_probe(train: &Features, test: &Features, classes: usize, cfg: ProbeConfig) -> Result<f32> {
    Ok(linear_probe_report(train, test, classes, cfg)?.accuracy)
}

/// [`linear_probe`], with how the optimisation ended.
pub fn linear_probe_report(train: &Features, test: &Features, classes: usize, cfg: ProbeConfig) -> Result<ProbeReport> {
    if train.dim != test.dim || train.is_empty() || test.is_empty() {
        return Err(MimError::Input(format!(
            "probe: train ({} × {}) and test ({} × {}) features do not fit",
            train.len(),
            train.dim,
            test.len(),
            test.dim
        )));
    }
    if let Some(&y) = train
        .labels
        .iter()
        .chain(&test.labels)
        .find(|&&y| y as usize >= classes)
    {
        return Err(MimError::Input(format!(
            "probe: label {y} is not below the {classes} classes"
        )));
    }
    let d = train.dim;
    let (mean, std) = standardiser(train);
    let (xtr, xte) = (standardise(train, &mean, &std), standardise(test, &mean, &std));
    let (theta, loss, grad_max, iterations) = lbfgs(vec![0.0; classes * (d + 1)], cfg.max_iter, cfg.tol as f64, |t| {
        logistic_loss_grad(&xtr, &train.labels, d, classes, cfg.l2 as f64, t)
    });
    let (w, b) = theta.split_at(classes * d);
    let correct = xte
        .par_chunks(d)
        .zip(test.labels.par_iter())
        .filter(|(x, y)| {
            let logits: Vec<f32> = (0..classes)
                .map(|j| (dot_f32(&w[j * d..(j + 1) * d], x) + b[j]) as f32)
                .collect();
            argmax(&logits) == **y as usize
        })
        .count();
    Ok(ProbeReport {
        accuracy: correct as f32 / test.len() as f32,
        iterations,
        grad_max,
        loss,
    })
}

fn dot_f32(w: &[f64], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(a, &b)| a * b as f64).sum()
}

/// k-NN accuracy: cosine similarity to every training feature, the `k` most
/// similar vote for their class with weight `exp(sim / temperature)`.
pub fn knn(train: &Features, test: &Features, classes: usize, k: usize, temperature: f32) -> Result<f32> {
    if train.dim != test.dim || train.is_empty() || test.is_empty() || k == 0 {
        return Err(MimError::Input("k-NN: empty or mismatched features".into()));
    }
    let d = train.dim;
    let unit = |f: &Features| {
        let mut x = f.data.clone();
        x.par_chunks_mut(d).for_each(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= n);
        });
        x
    };
    let (xtr, xte) = (unit(train), unit(test));
    let k = k.min(train.len());
    let n_train = train.len();
    const CHUNK: usize = 256;
    let mut correct = 0;
    for (c, rows) in xte.chunks(CHUNK * d).enumerate() {
        let m = rows.len() / d;
        let mut sims = vec![0f32; m * n_train]; // (m, N_train)
        gemm(
            Precision::F32,
            1.0,
            MatRef::row_major(rows, m, d),
            MatRef::row_major(&xtr, n_train, d).t(),
            0.0,
            MatMut::row_major(&mut sims, m, n_train),
        );
        correct += sims
            .par_chunks(n_train)
            .enumerate()
            .filter(|(i, row)| {
                let mut idx: Vec<usize> = (0..n_train).collect();
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                let mut votes = vec![0f64; classes];
                for &j in &idx[..k] {
                    votes[train.labels[j] as usize] += ((row[j] / temperature) as f64).exp();
                }
                let best = votes
                    .iter()
                    .enumerate()
                    .fold(0, |b, (j, v)| if *v > votes[b] { j } else { b });
                best == test.labels[c * CHUNK + i] as usize
            })
            .count();
    }
    Ok(correct as f32 / test.len() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::MimRng;
    use rand::{RngExt, SeedableRng};

    /// Gaussian blobs around class centres in 8-D.
    fn blobs(n: usize, seed: u64, noise: f32) -> Features {
        let mut rng = MimRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..3)
            .map(|c| (0..8).map(|j| if j % 3 == c { 3.0 } else { 0.0 }).collect())
            .collect();
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 3;
            labels.push(c as u32);
            data.extend(centres[c].iter().map(|v| v + rng.random_range(-noise..noise)));
        }
        Features { data, dim: 8, labels }
    }

    #[test]
    fn probe_and_knn_separate_blobs_and_fail_on_noise() {
        let (train, test) = (blobs(300, 1, 1.0), blobs(90, 2, 1.0));
        let acc = linear_probe(&train, &test, 3, ProbeConfig::default()).unwrap();
        assert!(acc > 0.95, "probe accuracy {acc}");
        let acc = knn(&train, &test, 3, 20, 0.07).unwrap();
        assert!(acc > 0.95, "k-NN accuracy {acc}");
        // Labels unrelated to features: chance level.
        let mut shuffled = blobs(300, 1, 1.0);
        shuffled.labels.rotate_left(1);
        let mut test_shuffled = blobs(300, 3, 1.0);
        test_shuffled.labels.rotate_left(2);
        let acc = linear_probe(&shuffled, &test_shuffled, 3, ProbeConfig::default()).unwrap();
        assert!(acc < 0.5, "probe on random labels {acc}");
    }

    #[test]
    fn logistic_gradient_matches_finite_differences() {
        let f = blobs(30, 4, 2.0);
        let (d, c) = (f.dim, 3);
        let mut rng = MimRng::seed_from_u64(5);
        let theta: Vec<f64> = (0..c * (d + 1)).map(|_| rng.random_range(-0.5..0.5)).collect();
        let lg = |t: &[f64]| logistic_loss_grad(&f.data, &f.labels, d, c, 0.1, t);
        let (_, grad) = lg(&theta);
        for k in [0, 5, 13, c * d - 1, c * d, c * (d + 1) - 1] {
            let h = 1e-3;
            let (mut up, mut down) = (theta.clone(), theta.clone());
            up[k] += h;
            down[k] -= h;
            let numeric = (lg(&up).0 - lg(&down).0) / (2.0 * h);
            approx::assert_abs_diff_eq!(grad[k], numeric, epsilon = 2e-4);
        }
    }

    #[test]
    fn probe_converges_to_the_optimum() {
        // Overlapping blobs: a bounded optimum. At the end the gradient is
        // below the tolerance, and no random nearby point is lower.
        let train = blobs(600, 6, 4.0);
        let cfg = ProbeConfig::default();
        let r = linear_probe_report(&train, &blobs(90, 7, 4.0), 3, cfg).unwrap();
        assert!(r.grad_max <= cfg.tol as f64, "{r:?}");
        assert!(r.iterations > 1 && r.iterations < cfg.max_iter, "{r:?}");
        let (mean, std) = standardiser(&train);
        let x = standardise(&train, &mean, &std);
        let (theta, loss, _, _) = lbfgs(vec![0.0; 27], 1000, 1e-5, |t| {
            logistic_loss_grad(&x, &train.labels, 8, 3, 1e-4, t)
        });
        approx::assert_relative_eq!(loss, r.loss, max_relative = 1e-7);
        let mut rng = MimRng::seed_from_u64(8);
        for _ in 0..20 {
            let near: Vec<f64> = theta.iter().map(|v| v + rng.random_range(-1e-2..1e-2)).collect();
            assert!(logistic_loss_grad(&x, &train.labels, 8, 3, 1e-4, &near).0 >= loss);
        }
        // A label beyond the classes is an error, not a panic.
        let mut bad = blobs(30, 1, 1.0);
        bad.labels[3] = 3;
        assert!(linear_probe(&bad, &bad, 3, cfg).is_err());
    }
}
