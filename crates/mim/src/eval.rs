//! How good are the learned representations? Frozen-encoder features, then a
//! linear probe (multinomial logistic regression trained with Tessera itself)
//! and a k-nearest-neighbour classifier (cosine similarity, k = 20,
//! temperature-weighted votes as in DINO/InstDisc), both scored on a test split.

use crate::data::Dataset;
use crate::data::transform::{Transform, load_batch};
use crate::error::{MimError, Result};
use crate::masking::MimRng;
use crate::model::MimModel;
use crate::vit::Pool;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use tessera_kernels::gemm::{MatMut, MatRef, gemm};
use tessera_tensor::Tensor;
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};

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

/// Runs `f` on batches of the first `limit` images and gathers `(rows, dim)` outputs.
fn collect(
    ds: &dyn Dataset,
    transform: &Transform,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Features> {
    let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
    if n == 0 {
        return Err(MimError::Input(format!("{} has no images", ds.name())));
    }
    let mut data = Vec::new();
    let mut labels = Vec::with_capacity(n);
    let mut dim = 0;
    for start in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let (imgs, lab) = load_batch(ds, &idx, transform, 0)?;
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
    collect(ds, transform, batch, limit, progress, |imgs| model.features(imgs, pool))
}

/// The normalised input pixels themselves, flattened: the baseline any
/// representation should beat.
pub fn pixel_features(
    ds: &dyn Dataset,
    transform: &Transform,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    collect(ds, transform, 256, limit, progress, |imgs| {
        let b = imgs.shape()[0];
        Ok(imgs.reshape(&[b as isize, -1])?)
    })
}

/// Settings of the linear probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 30,
            batch: 256,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
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

/// Trains a linear classifier on standardised `train` features (AdamW,
/// cross-entropy, cosine learning rate) and returns the accuracy on `test`.
pub fn linear_probe(train: &Features, test: &Features, classes: usize, cfg: ProbeConfig) -> Result<f32> {
    if train.dim != test.dim || train.is_empty() || test.is_empty() {
        return Err(MimError::Input(format!(
            "probe: train ({} × {}) and test ({} × {}) features do not fit",
            train.len(),
            train.dim,
            test.len(),
            test.dim
        )));
    }
    let d = train.dim;
    let (mean, std) = standardiser(train);
    let (xtr, xte) = (standardise(train, &mean, &std), standardise(test, &mean, &std));
    let w = Tensor::param(vec![0.0; classes * d], &[classes, d])?;
    let b = Tensor::param(vec![0.0; classes], &[classes])?;
    let groups = vec![
        ParamGroup::new(vec![w.clone()], cfg.weight_decay),
        ParamGroup::new(vec![b.clone()], 0.0),
    ];
    let mut opt = AdamW::new(
        groups,
        AdamWConfig {
            lr: cfg.lr,
            ..Default::default()
        },
    );
    let mut rng = MimRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let steps_per_epoch = train.len().div_ceil(cfg.batch);
    let total = (cfg.epochs * steps_per_epoch).max(1);
    let mut step = 0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch) {
            let mut xb = Vec::with_capacity(chunk.len() * d);
            let mut yb = Vec::with_capacity(chunk.len());
            for &i in chunk {
                xb.extend_from_slice(&xtr[i * d..(i + 1) * d]);
                yb.push(train.labels[i]);
            }
            let x = Tensor::new(xb, &[chunk.len(), d])?;
            opt.set_lr(cfg.lr * 0.5 * (1.0 + (std::f32::consts::PI * step as f32 / total as f32).cos()));
            let loss = x.linear(&w, Some(&b))?.cross_entropy(&yb, None)?;
            opt.step(&loss.backward()?)?;
            step += 1;
        }
    }
    let logits = tessera_tensor::no_grad(|| Tensor::new(xte, &[test.len(), d])?.linear(&w, Some(&b)))?;
    let logits = logits.data();
    let correct = logits
        .chunks(classes)
        .zip(&test.labels)
        .filter(|(row, y)| argmax(row) == **y as usize)
        .count();
    Ok(correct as f32 / test.len() as f32)
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
    use rand::RngExt;

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
        let acc = linear_probe(
            &train,
            &test,
            3,
            ProbeConfig {
                epochs: 20,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(acc > 0.95, "probe accuracy {acc}");
        let acc = knn(&train, &test, 3, 20, 0.07).unwrap();
        assert!(acc > 0.95, "k-NN accuracy {acc}");
        // Labels unrelated to features: chance level.
        let mut shuffled = blobs(300, 1, 1.0);
        shuffled.labels.rotate_left(1);
        let mut test_shuffled = blobs(300, 3, 1.0);
        test_shuffled.labels.rotate_left(2);
        let acc = linear_probe(
            &shuffled,
            &test_shuffled,
            3,
            ProbeConfig {
                epochs: 5,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(acc < 0.5, "probe on random labels {acc}");
    }
}
