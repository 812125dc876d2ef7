//! Accuracy of a classifier: top-1, top-5, per class, the confusion matrix.

use crate::data::Dataset;
use crate::data::loader::load_batch;
use crate::data::transform::Transform;
use crate::error::{MimError, Result};
use crate::model::classifier::Classifier;
use crate::rng::MimRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tessera_tensor::Tensor;

/// Top-1, top-5, per-class accuracy and the confusion matrix of a
/// classifier on a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`, counts.
    pub confusion: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

impl EvalReport {
    /// Accuracy of each class (`None` for a class without test images).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[c] as f64 / n as f64)
            })
            .collect()
    }
}

/// Class probabilities `(B, K)` of images, without a graph (evaluation mode).
pub fn probabilities(model: &Classifier, imgs: &Tensor) -> Result<Vec<f32>> {
    let mut rng = MimRng::seed_from_u64(0);
    let logits = tessera_tensor::no_grad(|| model.forward(imgs, false, &mut rng))?;
    Ok(logits.softmax()?.to_vec())
}

/// Evaluates on the first `limit` images of a labelled set (eval transform:
/// resize and centre crop), in batches of `batch`.
pub fn evaluate(
    model: &Classifier,
    ds: &dyn Dataset,
    transform: &Transform,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let k = model.config.num_classes;
    let n = limit.unwrap_or(usize::MAX).min(ds.len());
    if n == 0 {
        return Err(MimError::Input(format!("{} has no images to evaluate", ds.name())));
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut top1, mut top5) = (0usize, 0usize);
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let (imgs, labels) = load_batch(ds, &idx, transform, 0)?;
        let probs = probabilities(model, &imgs)?;
        for (r, label) in labels.iter().enumerate() {
            let Some(y) = *label else {
                return Err(MimError::Input(format!(
                    "image {} of {} has no label (evaluation needs a labelled set)",
                    idx[r],
                    ds.name()
                )));
            };
            let y = y as usize;
            if y >= k {
                return Err(MimError::Input(format!(
                    "image {} of {} is of class {y}, but the classifier knows {k} classes",
                    idx[r],
                    ds.name()
                )));
            }
            let row = &probs[r * k..(r + 1) * k];
            let ranked = top_k(row, 5);
            confusion[y][ranked[0]] += 1;
            top1 += (ranked[0] == y) as usize;
            top5 += ranked.contains(&y) as usize;
        }
        progress(idx[idx.len() - 1] + 1, n);
    }
    Ok(EvalReport {
        images: n,
        top1: top1 as f64 / n as f64,
        top5: top5 as f64 / n as f64,
        confusion,
        class_names: model.config.class_names.clone(),
    })
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5, 0.0], 3), vec![1, 3, 2]);
    }
}
