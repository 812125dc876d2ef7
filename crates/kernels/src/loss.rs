//! Losses averaged over weighted rows: the masked reconstruction losses of MIM
//! (a row is a patch, the weight is 1 for a hidden patch and 0 for a visible
//! one) and softmax cross-entropy over discrete targets.
//!
//! Dims: `R` rows (patches of the batch), `P` values per row, `K` classes.
//!
//! ```text
//! ℓ_r  = (1/P) Σ_j e(pred_rj − target_rj)       e(x) = x² (MSE) or |x| (L1)
//! loss = Σ_r w_r ℓ_r / Σ_r w_r                  (MAE: (loss * mask).sum() / mask.sum())
//!
//! cross-entropy:  ℓ_r = logsumexp(logits_r) − logits_r[t_r]
//!                 dlogits_r += dloss · w_r / Σw · (softmax(logits_r) − onehot(t_r))
//! ```
//! Without weights every row has weight 1. If `Σ w = 0` (nothing to predict) the
//! loss is 0 and the gradients are 0. Sums are taken in f64 over fixed chunks of
//! rows, so the value does not depend on the thread count.

use crate::math;
use crate::par::{ROW_CHUNK, sum_f64};
use rayon::prelude::*;

/// Per-element error of a regression loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `(pred − target)²`: mean squared error.
    Squared,
    /// `|pred − target|`: L1.
    Absolute,
}

impl Distance {
    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        match self {
            Distance::Squared => x * x,
            Distance::Absolute => x.abs(),
        }
    }
    /// `de/dx` (L1's subgradient at 0 is 0, as PyTorch's `sign`).
    #[inline(always)]
    fn grad(self, x: f32) -> f32 {
        match self {
            Distance::Squared => 2.0 * x,
            Distance::Absolute => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
        }
    }
}

fn weight_sum(weight: Option<&[f32]>, rows: usize) -> f64 {
    match weight {
        Some(w) => sum_f64(rows, ROW_CHUNK * 16, |r| w[r] as f64),
        None => rows as f64,
    }
}

fn check_rows(name: &str, pred: usize, target: usize, weight: Option<&[f32]>, rows: usize, p: usize) {
    assert!(
        pred == rows * p && target == rows * p,
        "loss::{name}: pred {pred}, target {target} values, want {rows}x{p}"
    );
    if let Some(w) = weight {
        assert_eq!(
            w.len(),
            rows,
            "loss::{name}: weight has {} values, want {rows}",
            w.len()
        );
    }
}

/// The weighted mean over rows of the per-row mean error (see the module docs).
pub fn regression_forward(
    kind: Distance,
    pred: &[f32],
    target: &[f32],
    weight: Option<&[f32]>,
    rows: usize,
    p: usize,
) -> f32 {
    check_rows("regression_forward", pred.len(), target.len(), weight, rows, p);
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 || p == 0 {
        return 0.0;
    }
    let total = sum_f64(rows, ROW_CHUNK, |r| {
        let w = weight.map_or(1.0, |w| w[r]);
        if w == 0.0 {
            return 0.0;
        }
        let (x, t) = (&pred[r * p..(r + 1) * p], &target[r * p..(r + 1) * p]);
        let row: f64 = x.iter().zip(t).map(|(&a, &b)| kind.value(a - b) as f64).sum();
        w as f64 * row / p as f64
    });
    (total / wsum) as f32
}

/// Accumulates `dpred` (and `dtarget`, if given: the negation) for an upstream
/// gradient `dloss` of the scalar loss.
#[allow(clippy::too_many_arguments)]
pub fn regression_backward(
    kind: Distance,
    dpred: Option<&mut [f32]>,
    dtarget: Option<&mut [f32]>,
    dloss: f32,
    pred: &[f32],
    target: &[f32],
    weight: Option<&[f32]>,
    rows: usize,
    p: usize,
) {
    check_rows("regression_backward", pred.len(), target.len(), weight, rows, p);
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 || p == 0 {
        return;
    }
    let coef = (dloss as f64 / (wsum * p as f64)) as f32;
    let row_grad = |r: usize, out: &mut [f32], sign: f32| {
        let w = weight.map_or(1.0, |w| w[r]);
        if w == 0.0 {
            return;
        }
        let c = sign * coef * w;
        for j in 0..p {
            out[j] += c * kind.grad(pred[r * p + j] - target[r * p + j]);
        }
    };
    if let Some(dp) = dpred {
        assert_eq!(
            dp.len(),
            rows * p,
            "loss::regression_backward: dpred has {} values",
            dp.len()
        );
        dp.par_chunks_mut(p)
            .enumerate()
            .for_each(|(r, out)| row_grad(r, out, 1.0));
    }
    if let Some(dt) = dtarget {
        assert_eq!(
            dt.len(),
            rows * p,
            "loss::regression_backward: dtarget has {} values",
            dt.len()
        );
        dt.par_chunks_mut(p)
            .enumerate()
            .for_each(|(r, out)| row_grad(r, out, -1.0));
    }
}

/// Weighted mean cross-entropy of `logits (R, K)` against class indices
/// `targets (R)`; writes each row's log-sum-exp into `lse (R)` for the backward.
/// Panics if a target is not below `K` (callers validate user data first).
pub fn cross_entropy_forward(
    lse: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    weight: Option<&[f32]>,
    rows: usize,
    k: usize,
) -> f32 {
    check_rows(
        "cross_entropy_forward",
        logits.len(),
        targets.len() * k,
        weight,
        rows,
        k,
    );
    assert_eq!(
        lse.len(),
        rows,
        "loss::cross_entropy_forward: lse has {} values, want {rows}",
        lse.len()
    );
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= k) {
        panic!("loss::cross_entropy_forward: target {t} is not below the {k} classes");
    }
    lse.par_iter_mut().enumerate().for_each(|(r, l)| {
        let row = &logits[r * k..(r + 1) * k];
        let m = math::max(row);
        let s: f32 = row.iter().map(|&v| math::exp(v - m)).sum();
        *l = m + s.ln();
    });
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 {
        return 0.0;
    }
    let total = sum_f64(rows, ROW_CHUNK, |r| {
        let w = weight.map_or(1.0, |w| w[r]) as f64;
        if w == 0.0 {
            0.0
        } else {
            w * (lse[r] - logits[r * k + targets[r] as usize]) as f64
        }
    });
    (total / wsum) as f32
}

/// Accumulates `dlogits (R, K)` for an upstream gradient `dloss`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    dlogits: &mut [f32],
    dloss: f32,
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    weight: Option<&[f32]>,
    rows: usize,
    k: usize,
) {
    check_rows("cross_entropy_backward", logits.len(), dlogits.len(), weight, rows, k);
    assert!(
        targets.len() == rows && lse.len() == rows,
        "loss::cross_entropy_backward: {} targets, {} lse, want {rows}",
        targets.len(),
        lse.len()
    );
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 {
        return;
    }
    let coef = (dloss as f64 / wsum) as f32;
    dlogits.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, out)| {
        let w = weight.map_or(1.0, |w| w[r]);
        if w == 0.0 {
            return;
        }
        let c = coef * w;
        for (j, o) in out.iter_mut().enumerate() {
            let p = math::exp(logits[r * k + j] - lse[r]);
            *o += c * (p - if j == targets[r] as usize { 1.0 } else { 0.0 });
        }
    });
}

/// The formulas, one row at a time in f64.
pub mod reference {
    use super::Distance;

    /// See [`super::regression_forward`].
    pub fn regression_forward(
        kind: Distance,
        pred: &[f32],
        target: &[f32],
        weight: Option<&[f32]>,
        rows: usize,
        p: usize,
    ) -> f32 {
        let (mut num, mut den) = (0f64, 0f64);
        for r in 0..rows {
            let w = weight.map_or(1.0, |w| w[r] as f64);
            let e: f64 = (0..p)
                .map(|j| {
                    let x = pred[r * p + j] as f64 - target[r * p + j] as f64;
                    if kind == Distance::Squared { x * x } else { x.abs() }
                })
                .sum::<f64>()
                / p as f64;
            num += w * e;
            den += w;
        }
        if den == 0.0 { 0.0 } else { (num / den) as f32 }
    }

    /// See [`super::cross_entropy_forward`].
    pub fn cross_entropy_forward(
        logits: &[f32],
        targets: &[u32],
        weight: Option<&[f32]>,
        rows: usize,
        k: usize,
    ) -> f32 {
        let (mut num, mut den) = (0f64, 0f64);
        for r in 0..rows {
            let row = &logits[r * k..(r + 1) * k];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let w = weight.map_or(1.0, |w| w[r] as f64);
            num += w * (lse - row[targets[r] as usize] as f64);
            den += w;
        }
        if den == 0.0 { 0.0 } else { (num / den) as f32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, random_vec};

    /// Central differences of a scalar function of one buffer, in f64 steps.
    fn numeric_grad(x: &[f32], f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
        let h = 1e-2f32;
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let old = x[i];
                x[i] = old + h;
                let up = f(&x) as f64;
                x[i] = old - h;
                let down = f(&x) as f64;
                x[i] = old;
                ((up - down) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    #[test]
    fn regression_losses_match_reference_and_finite_differences() {
        for kind in [Distance::Squared, Distance::Absolute] {
            for (t, &rows) in ODD_SIZES.iter().enumerate() {
                let p = ODD_SIZES[(t + 2) % 6];
                let pred = random_vec(rows * p, t as u64);
                let target = random_vec(rows * p, 10 + t as u64);
                let w: Vec<f32> = random_vec(rows, 20 + t as u64)
                    .iter()
                    .map(|v| if *v > 0.0 { 1.0 } else { 0.0 })
                    .collect();
                for weight in [None, Some(&w[..])] {
                    let got = regression_forward(kind, &pred, &target, weight, rows, p);
                    let want = reference::regression_forward(kind, &pred, &target, weight, rows, p);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{kind:?} rows {rows} p {p}: {got} vs {want}"
                    );
                    if rows * p <= 200 {
                        let mut dp = vec![0.0; rows * p];
                        let mut dt = vec![0.0; rows * p];
                        regression_backward(kind, Some(&mut dp), Some(&mut dt), 1.0, &pred, &target, weight, rows, p);
                        let num = numeric_grad(&pred, |x| {
                            reference::regression_forward(kind, x, &target, weight, rows, p)
                        });
                        for i in 0..dp.len() {
                            // Finite differences across L1's kink are meaningless.
                            if kind == Distance::Absolute && (pred[i] - target[i]).abs() < 0.02 {
                                continue;
                            }
                            assert!(
                                (dp[i] - num[i]).abs() < 1e-3,
                                "{kind:?} d/dpred[{i}]: {} vs {}",
                                dp[i],
                                num[i]
                            );
                            assert_eq!(dt[i], -dp[i]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn masked_loss_ignores_visible_rows_and_zero_mask_gives_zero() {
        let pred = [1.0, 1.0, 5.0, 5.0];
        let target = [0.0, 0.0, 0.0, 0.0];
        // Only row 0 is hidden: mean of [1, 1] squared = 1.
        assert_eq!(
            regression_forward(Distance::Squared, &pred, &target, Some(&[1.0, 0.0]), 2, 2),
            1.0
        );
        assert_eq!(
            regression_forward(Distance::Squared, &pred, &target, Some(&[0.0, 0.0]), 2, 2),
            0.0
        );
    }

    #[test]
    fn cross_entropy_matches_reference_and_finite_differences() {
        for (t, &rows) in ODD_SIZES.iter().enumerate() {
            let k = ODD_SIZES[(t + 1) % 6];
            let logits: Vec<f32> = random_vec(rows * k, t as u64).iter().map(|v| 4.0 * v).collect();
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7 + t) % k) as u32).collect();
            let w: Vec<f32> = (0..rows).map(|r| (r % 2) as f32).collect();
            for weight in [None, Some(&w[..])] {
                let mut lse = vec![0.0; rows];
                let got = cross_entropy_forward(&mut lse, &logits, &targets, weight, rows, k);
                let want = reference::cross_entropy_forward(&logits, &targets, weight, rows, k);
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "rows {rows} k {k}: {got} vs {want}"
                );
                if rows * k <= 200 {
                    let mut dl = vec![0.0; rows * k];
                    cross_entropy_backward(&mut dl, 1.0, &logits, &lse, &targets, weight, rows, k);
                    let num = numeric_grad(&logits, |x| {
                        reference::cross_entropy_forward(x, &targets, weight, rows, k)
                    });
                    for i in 0..dl.len() {
                        assert!((dl[i] - num[i]).abs() < 1e-3, "d/dlogits[{i}]: {} vs {}", dl[i], num[i]);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "not below")]
    fn out_of_range_target_panics_with_message() {
        let mut lse = [0.0];
        cross_entropy_forward(&mut lse, &[0.0, 1.0], &[2], None, 1, 2);
    }
}
