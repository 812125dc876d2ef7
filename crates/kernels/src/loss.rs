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
//!                 dlogits_r (+)= dloss · w_r / Σw · (softmax(logits_r) − onehot(t_r))
//!
//! soft targets (label smoothing, mixup; rows of q sum to 1):
//!                 ℓ_r = Σ_k q_rk (logsumexp(logits_r) − logits_rk)
//!                 dlogits_r (+)= dloss / R · (softmax(logits_r) · Σ_k q_rk − q_r)
//! ```
//! Without weights every row has weight 1. If `Σ w = 0` (nothing to predict) the
//! loss is 0 and the gradients are 0. Sums are taken in f64 over fixed chunks of
//! rows, so the value does not depend on the thread count.

use crate::GradOut;
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

/// A regression loss: its distance, over `rows` rows of `p` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regression {
    pub distance: Distance,
    pub rows: usize,
    pub p: usize,
}

/// The shape of a cross-entropy: `rows` rows of `k` logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassDims {
    pub rows: usize,
    pub k: usize,
}

/// The buffer of a [`GradOut`], zeroed first if it is to be overwritten: the
/// backwards below accumulate, and a fresh buffer must start from zero.
fn accumulating<'a>(g: GradOut<'a>) -> &'a mut [f32] {
    if !g.add {
        g.data.fill(0.0);
    }
    g.data
}

crate::multiversion! {
    /// Mean error of each row of a block: `e[r] = (1/P) Σ_j err(x_rj − t_rj)`.
    fn row_errors(e: &mut [f32], x: &[f32], t: &[f32], squared: bool) {
        let p = x.len() / e.len().max(1);
        for (r, out) in e.iter_mut().enumerate() {
            let (xr, tr) = (&x[r * p..(r + 1) * p], &t[r * p..(r + 1) * p]);
            // 16 lanes over whole blocks (zipped chunks: no bounds checks), then the tail.
            let mut acc = [0f32; 16];
            let (xb, tb) = (xr.chunks_exact(16), tr.chunks_exact(16));
            let (xt, tt) = (xb.remainder(), tb.remainder());
            if squared {
                for (xs, ts) in xb.zip(tb) {
                    for l in 0..16 {
                        let d = xs[l] - ts[l];
                        acc[l] += d * d;
                    }
                }
            } else {
                for (xs, ts) in xb.zip(tb) {
                    for l in 0..16 {
                        acc[l] += (xs[l] - ts[l]).abs();
                    }
                }
            }
            for (l, (&xj, &tj)) in xt.iter().zip(tt).enumerate() {
                let d = xj - tj;
                acc[l] += if squared { d * d } else { d.abs() };
            }
            *out = acc.iter().sum::<f32>() / p as f32;
        }
    }
}

crate::multiversion! {
    /// `out_rj += c_r · err'(x_rj − t_rj)` for a block of rows with coefficients `c`.
    fn row_grads(out: &mut [f32], x: &[f32], t: &[f32], c: &[f32], squared: bool) {
        let p = x.len() / c.len().max(1);
        for (r, &cr) in c.iter().enumerate() {
            if cr == 0.0 {
                continue;
            }
            for j in r * p..(r + 1) * p {
                let d = x[j] - t[j];
                let g = if squared { 2.0 * d } else if d > 0.0 { 1.0 } else if d < 0.0 { -1.0 } else { 0.0 };
                out[j] += cr * g;
            }
        }
    }
}

crate::multiversion! {
    /// Log-sum-exp of every row of `logits (rows, K)` into `lse`.
    fn row_lse(lse: &mut [f32], logits: &[f32]) {
        let k = logits.len() / lse.len().max(1);
        for (l, row) in lse.iter_mut().zip(logits.chunks_exact(k)) {
            let m = math::max(row);
            let mut acc = [0f32; 16];
            let whole = row.len() - row.len() % 16;
            for j0 in (0..whole).step_by(16) {
                for l in 0..16 {
                    acc[l] += math::exp(row[j0 + l] - m);
                }
            }
            for (l, &v) in row[whole..].iter().enumerate() {
                acc[l] += math::exp(v - m);
            }
            *l = m + acc.iter().sum::<f32>().ln();
        }
    }
}

crate::multiversion! {
    /// `dlogits_rj += c_r · (softmax_rj − [j = t_r])` for a block of rows.
    fn ce_grads(dl: &mut [f32], logits: &[f32], lse: &[f32], targets: &[u32], c: &[f32]) {
        let k = logits.len() / lse.len().max(1);
        for r in 0..lse.len() {
            if c[r] == 0.0 {
                continue;
            }
            let (o, row) = (&mut dl[r * k..(r + 1) * k], &logits[r * k..(r + 1) * k]);
            for j in 0..k {
                o[j] += c[r] * math::exp(row[j] - lse[r]);
            }
            o[targets[r] as usize] -= c[r];
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

/// The weighted mean over rows of the per-row mean error (see the module
/// docs) of `pred (R, P)` against `target (R, P)`, rows weighted by
/// `weight (R)` if given.
pub fn regression_forward(pred: &[f32], target: &[f32], weight: Option<&[f32]>, loss: Regression) -> f32 {
    let Regression {
        distance: kind,
        rows,
        p,
    } = loss;
    let isa = crate::cpu::isa();
    check_rows("regression_forward", pred.len(), target.len(), weight, rows, p);
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 || p == 0 {
        return 0.0;
    }
    // Per-row mean errors in parallel (vectorised, 16-lane f32 sums), then
    // the weighted sum over rows in f64, in a fixed order.
    let mut errs = vec![0f32; rows];
    errs.par_chunks_mut(ROW_CHUNK)
        .zip(pred.par_chunks(ROW_CHUNK * p).zip(target.par_chunks(ROW_CHUNK * p)))
        .for_each(|(e, (x, t))| row_errors::run(isa, e, x, t, kind == Distance::Squared));
    let total = sum_f64(rows, ROW_CHUNK, |r| {
        weight.map_or(1.0, |w| w[r]) as f64 * errs[r] as f64
    });
    (total / wsum) as f32
}

/// `dpred (R, P)` and `dtarget (R, P)` (each if given: the negation of the
/// other; see [`GradOut`]) for an upstream gradient `dloss` of the scalar loss.
pub fn regression_backward(
    dpred: Option<GradOut>,
    dtarget: Option<GradOut>,
    dloss: f32,
    pred: &[f32],
    target: &[f32],
    weight: Option<&[f32]>,
    loss: Regression,
) {
    let Regression {
        distance: kind,
        rows,
        p,
    } = loss;
    let isa = crate::cpu::isa();
    check_rows("regression_backward", pred.len(), target.len(), weight, rows, p);
    let (dpred, dtarget) = (dpred.map(accumulating), dtarget.map(accumulating));
    let wsum = weight_sum(weight, rows);
    if wsum == 0.0 || p == 0 {
        return;
    }
    let coef = (dloss as f64 / (wsum * p as f64)) as f32;
    let squared = kind == Distance::Squared;
    for (buf, sign) in [(dpred, 1.0f32), (dtarget, -1.0f32)] {
        let Some(buf) = buf else { continue };
        assert_eq!(
            buf.len(),
            rows * p,
            "loss::regression_backward: gradient has {} values, want {}",
            buf.len(),
            rows * p
        );
        let c: Vec<f32> = (0..rows).map(|r| sign * coef * weight.map_or(1.0, |w| w[r])).collect();
        buf.par_chunks_mut(ROW_CHUNK * p)
            .zip(pred.par_chunks(ROW_CHUNK * p).zip(target.par_chunks(ROW_CHUNK * p)))
            .zip(c.par_chunks(ROW_CHUNK))
            .for_each(|((o, (x, t)), c)| row_grads::run(isa, o, x, t, c, squared));
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
    dims: ClassDims,
) -> f32 {
    let ClassDims { rows, k } = dims;
    let isa = crate::cpu::isa();
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
    lse.par_chunks_mut(ROW_CHUNK)
        .zip(logits.par_chunks(ROW_CHUNK * k))
        .for_each(|(l, x)| row_lse::run(isa, l, x));
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

/// `dlogits (R, K)` (see [`GradOut`]) for an upstream gradient `dloss`, from
/// the forward's saved `lse (R)`, its `logits`, `targets` and `weight`.
pub fn cross_entropy_backward(
    dlogits: GradOut,
    dloss: f32,
    lse: &[f32],
    logits: &[f32],
    targets: &[u32],
    weight: Option<&[f32]>,
    dims: ClassDims,
) {
    let ClassDims { rows, k } = dims;
    let dlogits = accumulating(dlogits);
    let isa = crate::cpu::isa();
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
    let c: Vec<f32> = (0..rows).map(|r| coef * weight.map_or(1.0, |w| w[r])).collect();
    dlogits
        .par_chunks_mut(ROW_CHUNK * k)
        .zip(logits.par_chunks(ROW_CHUNK * k))
        .zip(
            lse.par_chunks(ROW_CHUNK)
                .zip(targets.par_chunks(ROW_CHUNK))
                .zip(c.par_chunks(ROW_CHUNK)),
        )
        .for_each(|((dl, x), ((l, t), c))| ce_grads::run(isa, dl, x, l, t, c));
}

/// Mean cross-entropy of `logits (R, K)` against soft targets `q (R, K)`
/// (timm's `SoftTargetCrossEntropy`: label smoothing, mixup, cutmix); writes
/// each row's log-sum-exp into `lse (R)` for the backward.
pub fn soft_cross_entropy_forward(lse: &mut [f32], logits: &[f32], q: &[f32], dims: ClassDims) -> f32 {
    let ClassDims { rows, k } = dims;
    let isa = crate::cpu::isa();
    check_rows("soft_cross_entropy_forward", logits.len(), q.len(), None, rows, k);
    assert_eq!(
        lse.len(),
        rows,
        "loss::soft_cross_entropy_forward: lse has {} values, want {rows}",
        lse.len()
    );
    if rows == 0 {
        return 0.0;
    }
    lse.par_chunks_mut(ROW_CHUNK)
        .zip(logits.par_chunks(ROW_CHUNK * k))
        .for_each(|(l, x)| row_lse::run(isa, l, x));
    let total = sum_f64(rows, ROW_CHUNK, |r| {
        (0..k)
            .map(|j| q[r * k + j] as f64 * (lse[r] - logits[r * k + j]) as f64)
            .sum::<f64>()
    });
    (total / rows as f64) as f32
}

/// `dlogits (R, K)` of [`soft_cross_entropy_forward`] (see [`GradOut`]) for
/// an upstream gradient `dloss`, from the saved `lse (R)`, `logits` and `q`.
pub fn soft_cross_entropy_backward(
    dlogits: GradOut,
    dloss: f32,
    lse: &[f32],
    logits: &[f32],
    q: &[f32],
    dims: ClassDims,
) {
    let ClassDims { rows, k } = dims;
    let dlogits = accumulating(dlogits);
    check_rows(
        "soft_cross_entropy_backward",
        logits.len(),
        dlogits.len(),
        None,
        rows,
        k,
    );
    assert!(
        q.len() == rows * k && lse.len() == rows,
        "loss::soft_cross_entropy_backward: q or lse size"
    );
    if rows == 0 {
        return;
    }
    let c = dloss / rows as f32;
    dlogits
        .par_chunks_mut(k)
        .zip(logits.par_chunks(k).zip(q.par_chunks(k)))
        .zip(lse.par_iter())
        .for_each(|((dl, (x, q)), &l)| {
            let mass: f32 = q.iter().sum();
            for j in 0..k {
                dl[j] += c * ((x[j] - l).exp() * mass - q[j]);
            }
        });
}

/// The formulas, one row at a time in f64.
pub mod reference {
    use super::{ClassDims, Distance, Regression};

    /// See [`super::regression_forward`].
    pub fn regression_forward(pred: &[f32], target: &[f32], weight: Option<&[f32]>, loss: Regression) -> f32 {
        let Regression {
            distance: kind,
            rows,
            p,
        } = loss;
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
    pub fn cross_entropy_forward(logits: &[f32], targets: &[u32], weight: Option<&[f32]>, dims: ClassDims) -> f32 {
        let ClassDims { rows, k } = dims;
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

    /// See [`super::soft_cross_entropy_forward`].
    pub fn soft_cross_entropy_forward(logits: &[f32], q: &[f32], dims: ClassDims) -> f32 {
        let ClassDims { rows, k } = dims;
        let mut num = 0f64;
        for r in 0..rows {
            let row = &logits[r * k..(r + 1) * k];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            num += (0..k).map(|j| q[r * k + j] as f64 * (lse - row[j] as f64)).sum::<f64>();
        }
        if rows == 0 { 0.0 } else { (num / rows as f64) as f32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, for_each_isa, random_vec};

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

    /// Every path against f64 (tolerance 1e-5 relative) and finite differences.
    #[test]
    fn regression_losses_match_reference_and_finite_differences() {
        for_each_isa("regression loss", |_| {
            for kind in [Distance::Squared, Distance::Absolute] {
                for (t, &rows) in ODD_SIZES.iter().enumerate() {
                    let p = ODD_SIZES[(t + 2) % 6];
                    let pred = random_vec(rows * p, t as u64);
                    let target = random_vec(rows * p, 10 + t as u64);
                    let w: Vec<f32> = random_vec(rows, 20 + t as u64)
                        .iter()
                        .map(|v| if *v > 0.0 { 1.0 } else { 0.0 })
                        .collect();
                    let loss = Regression {
                        distance: kind,
                        rows,
                        p,
                    };
                    for weight in [None, Some(&w[..])] {
                        let got = regression_forward(&pred, &target, weight, loss);
                        let want = reference::regression_forward(&pred, &target, weight, loss);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{kind:?} rows {rows} p {p}: {got} vs {want}"
                        );
                        if rows * p <= 200 {
                            // dpred accumulated onto 0.5, dtarget overwritten.
                            let mut dp = vec![0.5; rows * p];
                            let mut dt = vec![f32::NAN; rows * p];
                            let (gp, gt) = (GradOut::add(&mut dp), GradOut::overwrite(&mut dt));
                            regression_backward(Some(gp), Some(gt), 1.0, &pred, &target, weight, loss);
                            dp.iter_mut().for_each(|v| *v -= 0.5);
                            let num = numeric_grad(&pred, |x| reference::regression_forward(x, &target, weight, loss));
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
                                assert!((dt[i] + dp[i]).abs() <= 1e-6, "{} vs {}", dt[i], dp[i]);
                            }
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn masked_loss_ignores_visible_rows_and_zero_mask_gives_zero() {
        let pred = [1.0, 1.0, 5.0, 5.0];
        let target = [0.0, 0.0, 0.0, 0.0];
        // Only row 0 is hidden: mean of [1, 1] squared = 1.
        let loss = Regression {
            distance: Distance::Squared,
            rows: 2,
            p: 2,
        };
        assert_eq!(regression_forward(&pred, &target, Some(&[1.0, 0.0]), loss), 1.0);
        assert_eq!(regression_forward(&pred, &target, Some(&[0.0, 0.0]), loss), 0.0);
    }

    /// Every path against f64 (tolerance 1e-5 relative) and finite differences.
    #[test]
    fn cross_entropy_matches_reference_and_finite_differences() {
        for_each_isa("cross-entropy", |_| {
            for (t, &rows) in ODD_SIZES.iter().enumerate() {
                let k = ODD_SIZES[(t + 1) % 6];
                let logits: Vec<f32> = random_vec(rows * k, t as u64).iter().map(|v| 4.0 * v).collect();
                let targets: Vec<u32> = (0..rows).map(|r| ((r * 7 + t) % k) as u32).collect();
                let w: Vec<f32> = (0..rows).map(|r| (r % 2) as f32).collect();
                let dims = ClassDims { rows, k };
                for weight in [None, Some(&w[..])] {
                    let mut lse = vec![0.0; rows];
                    let got = cross_entropy_forward(&mut lse, &logits, &targets, weight, dims);
                    let want = reference::cross_entropy_forward(&logits, &targets, weight, dims);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "rows {rows} k {k}: {got} vs {want}"
                    );
                    if rows * k <= 200 {
                        let mut dl = vec![f32::NAN; rows * k];
                        let g = GradOut::overwrite(&mut dl);
                        cross_entropy_backward(g, 1.0, &lse, &logits, &targets, weight, dims);
                        let num =
                            numeric_grad(&logits, |x| reference::cross_entropy_forward(x, &targets, weight, dims));
                        for i in 0..dl.len() {
                            assert!((dl[i] - num[i]).abs() < 1e-3, "d/dlogits[{i}]: {} vs {}", dl[i], num[i]);
                        }
                    }
                }
            }
        });
    }

    /// Soft targets (smoothed, mixed, and one not summing to 1) against f64
    /// and finite differences; a one-hot `q` is the hard cross-entropy.
    #[test]
    fn soft_cross_entropy_matches_reference_and_finite_differences() {
        for_each_isa("soft cross-entropy", |_| {
            for (t, &rows) in ODD_SIZES.iter().enumerate() {
                let k = ODD_SIZES[(t + 2) % 6].max(2);
                let logits: Vec<f32> = random_vec(rows * k, t as u64).iter().map(|v| 4.0 * v).collect();
                let q: Vec<f32> = random_vec(rows * k, 50 + t as u64).iter().map(|v| v.abs()).collect();
                let dims = ClassDims { rows, k };
                let mut lse = vec![0.0; rows];
                let got = soft_cross_entropy_forward(&mut lse, &logits, &q, dims);
                let want = reference::soft_cross_entropy_forward(&logits, &q, dims);
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "rows {rows} k {k}: {got} vs {want}"
                );
                if rows * k <= 200 {
                    let mut dl = vec![0.0; rows * k];
                    soft_cross_entropy_backward(GradOut::add(&mut dl), 1.0, &lse, &logits, &q, dims);
                    let num = numeric_grad(&logits, |x| reference::soft_cross_entropy_forward(x, &q, dims));
                    for i in 0..dl.len() {
                        assert!((dl[i] - num[i]).abs() < 1e-3, "d/dlogits[{i}]: {} vs {}", dl[i], num[i]);
                    }
                }
                // One-hot targets: the hard loss.
                let targets: Vec<u32> = (0..rows).map(|r| ((r * 3 + t) % k) as u32).collect();
                let mut onehot = vec![0.0; rows * k];
                for (r, &c) in targets.iter().enumerate() {
                    onehot[r * k + c as usize] = 1.0;
                }
                let soft = soft_cross_entropy_forward(&mut lse, &logits, &onehot, dims);
                let hard = reference::cross_entropy_forward(&logits, &targets, None, dims);
                assert!((soft - hard).abs() <= 1e-5 * (1.0 + hard.abs()));
            }
        });
    }

    #[test]
    #[should_panic(expected = "not below")]
    fn out_of_range_target_panics_with_message() {
        let mut lse = [0.0];
        cross_entropy_forward(&mut lse, &[0.0, 1.0], &[2], None, ClassDims { rows: 1, k: 2 });
    }
}
