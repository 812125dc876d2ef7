//! Softmax over the last dimension of a `(R, N)` matrix.
//!
//! ```text
//! out_rj = e^{x_rj − m_r} / Σ_k e^{x_rk − m_r},   m_r = max_k x_rk   (stable: no overflow)
//! dinp_rj (+)= out_rj · (dout_rj − Σ_k dout_rk · out_rk)
//! ```
//! The backward needs only the forward's output.

use crate::GradOut;
use crate::math;
use crate::par::ROW_CHUNK;
use rayon::prelude::*;

/// One row in place: `row ← softmax(row)`; returns `log Σ e^{x}` (the row's
/// log-sum-exp), which attention keeps for its backward.
#[inline(always)]
pub fn softmax_row_in_place(row: &mut [f32]) -> f32 {
    let m = math::max(row);
    if m == f32::NEG_INFINITY {
        // Every entry is −∞ (fully masked): define the result as all zeros.
        row.fill(0.0);
        return f32::NEG_INFINITY;
    }
    for v in row.iter_mut() {
        *v = math::exp(*v - m);
    }
    let s = math::sum(row);
    let inv = 1.0 / s;
    for v in row.iter_mut() {
        *v *= inv;
    }
    m + s.ln()
}

crate::multiversion! {
    /// Softmax of every row of a block: each input row is copied into its
    /// output row and normalized there while it is still in L1, so memory sees
    /// one read of `inp` and one write of `out`.
    fn forward_rows(out: &mut [f32], inp: &[f32], n: usize) {
        for (o, x) in out.chunks_exact_mut(n).zip(inp.chunks_exact(n)) {
            o.copy_from_slice(x);
            softmax_row_in_place(o);
        }
    }
}

crate::multiversion! {
    /// The backward over a block of rows, added to `dinp` or written over it.
    fn backward_rows(dinp: &mut [f32], dout: &[f32], out: &[f32], n: usize, add: bool) {
        for ((di, g), y) in dinp.chunks_exact_mut(n).zip(dout.chunks_exact(n)).zip(out.chunks_exact(n)) {
            let s = math::dot(g, y);
            if add {
                for j in 0..n {
                    di[j] += y[j] * (g[j] - s);
                }
            } else {
                for j in 0..n {
                    di[j] = y[j] * (g[j] - s);
                }
            }
        }
    }
}

/// `out (R, N) = softmax(inp (R, N))` row by row.
pub fn forward(out: &mut [f32], inp: &[f32], rows: usize, n: usize) {
    let isa = crate::cpu::isa();
    assert!(
        out.len() == rows * n && inp.len() == rows * n,
        "softmax::forward: out {}, inp {} values, want {rows}x{n}",
        out.len(),
        inp.len()
    );
    if rows == 0 || n == 0 {
        return;
    }
    out.par_chunks_mut(ROW_CHUNK * n)
        .zip(inp.par_chunks(ROW_CHUNK * n))
        .for_each(|(o, x)| forward_rows::run(isa, o, x, n));
}

/// `dinp (+)= out ⊙ (dout − rowsum(dout ⊙ out))` (see [`GradOut`]).
pub fn backward(dinp: GradOut, dout: &[f32], out: &[f32], rows: usize, n: usize) {
    let isa = crate::cpu::isa();
    let add = dinp.add;
    let dinp = dinp.data;
    assert!(
        dinp.len() == rows * n && dout.len() == rows * n && out.len() == rows * n,
        "softmax::backward: dinp {}, dout {}, out {} values, want {rows}x{n}",
        dinp.len(),
        dout.len(),
        out.len()
    );
    if rows == 0 || n == 0 {
        return;
    }
    let block = ROW_CHUNK * n;
    dinp.par_chunks_mut(block)
        .zip(dout.par_chunks(block).zip(out.par_chunks(block)))
        .for_each(|(di, (g, y))| backward_rows::run(isa, di, g, y, n, add));
}

/// Row by row in f64 with `f64::exp`.
pub mod reference {
    /// `out = softmax(inp)`.
    pub fn forward(out: &mut [f32], inp: &[f32], rows: usize, n: usize) {
        for r in 0..rows {
            let x = &inp[r * n..(r + 1) * n];
            let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            for j in 0..n {
                out[r * n + j] = ((x[j] as f64 - m).exp() / s) as f32;
            }
        }
    }

    /// `dinp += out ⊙ (dout − rowsum(dout ⊙ out))`.
    pub fn backward(dinp: &mut [f32], dout: &[f32], out: &[f32], rows: usize, n: usize) {
        for r in 0..rows {
            let s: f64 = (0..n).map(|j| dout[r * n + j] as f64 * out[r * n + j] as f64).sum();
            for j in 0..n {
                dinp[r * n + j] += (out[r * n + j] as f64 * (dout[r * n + j] as f64 - s)) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, assert_close, for_each_isa, random_vec};

    /// Every path against f64; tolerance 1e-6 relative for probabilities,
    /// 1e-5 for the backward (a dot product of N terms).
    #[test]
    fn matches_reference_on_odd_sizes() {
        for_each_isa("softmax", |_| {
            for &rows in &ODD_SIZES {
                for &n in ODD_SIZES.iter().chain(&[769]) {
                    let x: Vec<f32> = random_vec(rows * n, (rows * n) as u64)
                        .iter()
                        .map(|v| 20.0 * v)
                        .collect();
                    let mut fast = vec![0.0; rows * n];
                    let mut slow = vec![0.0; rows * n];
                    forward(&mut fast, &x, rows, n);
                    reference::forward(&mut slow, &x, rows, n);
                    assert_close(&fast, &slow, 1e-6, "softmax forward");
                    let dout = random_vec(rows * n, 3);
                    let (mut df, mut ds) = (vec![0.1; rows * n], vec![0.1; rows * n]);
                    backward(GradOut::add(&mut df), &dout, &fast, rows, n);
                    reference::backward(&mut ds, &dout, &slow, rows, n);
                    assert_close(&df, &ds, 1e-5, "softmax backward");
                    // Overwritten: the same gradient without the 0.1 it started from.
                    let mut dw = vec![f32::NAN; rows * n];
                    backward(GradOut::overwrite(&mut dw), &dout, &fast, rows, n);
                    let less: Vec<f32> = ds.iter().map(|v| v - 0.1).collect();
                    assert_close(&dw, &less, 1e-5, "softmax backward, overwritten");
                }
            }
        });
    }

    #[test]
    fn rows_sum_to_one_even_with_huge_inputs() {
        let x = [1000.0, 1001.0, -1e30, 999.0, 0.0, 0.0];
        let mut out = [0.0; 6];
        forward(&mut out, &x, 2, 3);
        assert!((out[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(out[2], 0.0);
    }
}
