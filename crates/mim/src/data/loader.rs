//! From images to batches: [`load_batch`] decodes and transforms a batch of
//! a data set in parallel, [`EpochSampler`] says which images make up each
//! training step, and [`load_images`] does for image files what
//! [`load_batch`] does for a data set.

use super::folder::decode;
use super::transform::Transform;
use super::{Dataset, out_of_range};
use crate::error::{MimError, Result};
use crate::rng::{MimRng, mix_seed};
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use std::path::PathBuf;
use tessera_tensor::Tensor;

/// Loads `indices` of `ds` in parallel (rayon) and assembles `(B, C, H, W)`
/// plus their labels.
///
/// The generator of image `k` is seeded from `(seed, indices[k])` only, so a
/// batch is the same whatever the thread count and whichever batch an index
/// falls in. For training, the caller mixes the epoch into `seed` (the
/// pretrain command passes `seed·0x9E3779B97F4A7C15 ^ epoch`) so that an image
/// is augmented differently in every epoch, and identically when a run
/// resumes; evaluation passes a fixed seed and no augmentation. The first error
/// in batch order (naming the file) is returned.
pub fn load_batch(ds: &dyn Dataset, indices: &[usize], t: &Transform, seed: u64) -> Result<(Tensor, Vec<Option<u32>>)> {
    let images = transform_each(indices, t, |&i, chunk| {
        if i >= ds.len() {
            return Err(out_of_range(&ds.name(), i, ds.len()));
        }
        let img = ds.get(i)?;
        let (c, h, w) = (img.channels, img.height, img.width);
        if c == 0 || h == 0 || w == 0 || img.data.len() != c * h * w {
            return Err(MimError::Input(format!(
                "{}: image {i} is {c}x{h}x{w} with {} values",
                ds.name(),
                img.data.len()
            )));
        }
        let mut rng = MimRng::seed_from_u64(mix_seed(seed, i as u64));
        t.apply_into(&img, &mut rng, chunk);
        Ok(())
    })?;
    let labels = indices.iter().map(|&i| ds.label(i)).collect();
    Ok((images, labels))
}

/// `(N, C, H, W)` from `items`, one image each: `fill` writes item `k`'s
/// `C·H·W` values, in parallel (rayon) over the items. The first error in
/// item order is returned.
fn transform_each<T: Sync>(
    items: &[T],
    t: &Transform,
    fill: impl Fn(&T, &mut [f32]) -> Result<()> + Sync,
) -> Result<Tensor> {
    t.validate()?;
    let per = t.output_len();
    let mut out = vec![0f32; items.len() * per];
    let results: Vec<Result<()>> = out
        .par_chunks_mut(per)
        .zip(items.par_iter())
        .map(|(chunk, item)| fill(item, chunk))
        .collect();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let [h, w] = t.size;
    Ok(Tensor::new(out, &[items.len(), t.channels, h, w])?)
}

/// Which images make up training step `step`: epoch `e` is a random
/// permutation of `0..n` seeded from `(seed, e)`; each step takes the next
/// `batch` indices, and the last partial batch of an epoch is dropped (MAE's
/// `drop_last=True`). A pure function of `(n, batch, seed, step)`, so a
/// resumed run sees the same data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochSampler {
    pub n: usize,
    pub batch: usize,
    pub seed: u64,
}

impl EpochSampler {
    /// Full batches per epoch: `⌊n / batch⌋` (0 if `batch` is 0 or above `n`).
    pub fn steps_per_epoch(&self) -> usize {
        self.n.checked_div(self.batch).unwrap_or(0)
    }

    /// The epoch step `step` belongs to (0 when there are no full batches).
    pub fn epoch(&self, step: u64) -> u64 {
        step.checked_div(self.steps_per_epoch() as u64).unwrap_or(0)
    }

    /// The permutation of `0..n` used in `epoch` (Fisher–Yates).
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut rng = MimRng::seed_from_u64(mix_seed(self.seed, epoch));
        let mut perm: Vec<usize> = (0..self.n).collect();
        for i in (1..self.n).rev() {
            let j = rng.random_range(0..=i);
            perm.swap(i, j);
        }
        perm
    }

    /// The `batch` image indices of step `step` (empty when an epoch has no
    /// full batch).
    pub fn indices(&self, step: u64) -> Vec<usize> {
        let spe = self.steps_per_epoch() as u64;
        if spe == 0 {
            return Vec::new();
        }
        let pos = (step % spe) as usize;
        let mut perm = self.permutation(step / spe);
        perm.truncate((pos + 1) * self.batch);
        perm.split_off(pos * self.batch)
    }
}

/// Decodes image files ([`decode`]: PNG or JPEG, grey or RGB) and applies
/// `t` to each (an evaluation transform: no random draws), giving
/// `(N, C, H, W)`. Errors name the file.
pub fn load_images(paths: &[PathBuf], t: &Transform) -> Result<Tensor> {
    transform_each(paths, t, |path, chunk| {
        let img = decode(path)?;
        if img.data.is_empty() {
            return Err(MimError::Input(format!("{}: the image is empty", path.display())));
        }
        t.apply_into(&img, &mut MimRng::seed_from_u64(0), chunk);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::data::synthetic::SyntheticDataset;
    use crate::data::transform::Augment;
    use std::collections::HashSet;

    use crate::data::transform::tests::eval;

    fn synthetic(len: usize) -> SyntheticDataset {
        SyntheticDataset::new(len, [12, 12], 3, 5, Split::Train).unwrap()
    }

    #[test]
    fn load_batch_is_thread_count_independent() {
        let ds = synthetic(40);
        let t = Transform {
            augment: Some(Augment::mae()),
            ..eval([8, 8], 3)
        };
        let idx = [3, 17, 0, 39, 17, 22, 8];
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| load_batch(&ds, &idx, &t, 99).unwrap())
        };
        let (a, la) = run(1);
        let (b, lb) = run(2);
        assert_eq!(a.shape(), &[7, 3, 8, 8]);
        assert_eq!(a.to_vec(), b.to_vec());
        assert_eq!(la, lb);
        assert_eq!(la, idx.iter().map(|&i| ds.label(i)).collect::<Vec<_>>());
        // The same index gives the same image at any position, in any batch.
        let v = a.to_vec();
        assert_eq!(v[192..384], v[4 * 192..5 * 192]);
        let (c, _) = load_batch(&ds, &[17], &t, 99).unwrap();
        assert_eq!(c.to_vec()[..], v[192..384]);
        // Another seed, other augmentations.
        let (d, _) = load_batch(&ds, &[17], &t, 100).unwrap();
        assert_ne!(c.to_vec(), d.to_vec());
    }

    #[test]
    fn load_batch_errors() {
        let ds = synthetic(4);
        let t = eval([8, 8], 3);
        let e = load_batch(&ds, &[0, 4, 7], &t, 0).unwrap_err().to_string();
        assert!(e.contains("index 4"), "the first error in batch order: {e}");
        assert!(load_batch(&ds, &[0], &eval([8, 8], 0), 0).is_err());
        let (empty, labels) = load_batch(&ds, &[], &t, 0).unwrap();
        assert_eq!((empty.shape(), labels.len()), (&[0, 3, 8, 8][..], 0));
    }

    #[test]
    fn epoch_sampler() {
        let s = EpochSampler {
            n: 23,
            batch: 5,
            seed: 7,
        };
        assert_eq!(s.steps_per_epoch(), 4);
        let epoch = |e: u64| -> Vec<usize> { (e * 4..e * 4 + 4).flat_map(|st| s.indices(st)).collect() };
        let e0 = epoch(0);
        assert_eq!(e0.len(), 20, "the last 3 images are dropped");
        assert_eq!(e0.iter().collect::<HashSet<_>>().len(), 20, "no repeats in an epoch");
        assert!(e0.iter().all(|&i| i < 23));
        let mut p = s.permutation(0);
        assert_eq!(&p[..20], &e0[..]);
        p.sort();
        assert_eq!(p, (0..23).collect::<Vec<_>>());
        let e1 = epoch(1);
        assert_ne!(e0, e1, "epochs differ");
        assert_eq!(e1.iter().collect::<HashSet<_>>().len(), 20);
        // Pure in the step: asking again, out of order, gives the same.
        assert_eq!(s.indices(6), s.indices(6));
        assert_eq!(s.indices(6), e1[10..15]);
        assert_eq!(s.epoch(7), 1);
        assert_ne!(s.indices(0), EpochSampler { seed: 8, ..s.clone() }.indices(0));
        // Not even one full batch.
        let tiny = EpochSampler {
            n: 3,
            batch: 5,
            seed: 0,
        };
        assert_eq!(tiny.steps_per_epoch(), 0);
        assert!(tiny.indices(0).is_empty());
        assert_eq!(
            EpochSampler {
                n: 3,
                batch: 0,
                seed: 0
            }
            .steps_per_epoch(),
            0
        );
    }
}
