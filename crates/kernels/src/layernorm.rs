//! Layer normalization over the last dimension.
//!
//! Dims: `R` rows (every token of every image), `D` normalized width.
//!
//! ```text
//! mean_r = Σ_i x_ri / D          var_r = Σ_i (x_ri − mean_r)² / D   (biased, as PyTorch)
//! rstd_r = 1 / √(var_r + eps)    x̂_ri  = (x_ri − mean_r) · rstd_r
//! out_ri = x̂_ri · w_i + b_i
//! ```
//! Backward, with `g_i = dout_ri · w_i`:
//! ```text
//! dinp_ri += rstd_r · (g_i − mean_i(g) − x̂_ri · mean_i(g · x̂_r))
//! dw_i    += Σ_r dout_ri · x̂_ri        db_i += Σ_r dout_ri
//! ```
//! `mean` and `rstd` (one per row) are saved by the forward for the backward.
//! MAE uses eps = 1e-6.

use crate::GradOut;
use crate::math;
use crate::par::ROW_CHUNK;
use rayon::prelude::*;

/// The sizes of a LayerNorm: `rows` vectors of `d` values, and its `eps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LnDims {
    pub rows: usize,
    pub d: usize,
    pub eps: f32,
}

/// The gradients [`backward`] writes (see [`GradOut`]): `dinp (R, D)` if
/// asked for, `dweight (D)`, `dbias (D)`.
pub struct LnGrads<'a> {
    pub dinp: Option<GradOut<'a>>,
    pub dweight: GradOut<'a>,
    pub dbias: GradOut<'a>,
}

fn check(name: &str, what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "layernorm::{name}: {what} has {len} values, want {want}");
}

/// Normalizes one row, returning `(mean, rstd)`.
#[inline(always)]
fn forward_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = math::sum(x) / d;
    // Two passes: the centred sum of squares does not lose digits to cancellation.
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v - mean;
    }
    let var = math::dot(out, out) / d;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((o, &wi), &bi) in out.iter_mut().zip(w).zip(b) {
        *o = *o * rstd * wi + bi;
    }
    (mean, rstd)
}

crate::multiversion! {
    /// [`forward_row`] over a block of rows.
    fn forward_rows(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let d = w.len();
        for (((o, x), m), r) in out.chunks_exact_mut(d).zip(inp.chunks_exact(d)).zip(mean).zip(rstd) {
            (*m, *r) = forward_row(o, x, w, b, eps);
        }
    }
}

/// `out (R, D)`, `mean (R)`, `rstd (R)` from `inp (R, D)`, `weight (D)`, `bias (D)`.
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    dims: LnDims,
) {
    let LnDims { rows, d, eps } = dims;
    let isa = crate::cpu::isa();
    check("forward", "out (R, D)", out.len(), rows * d);
    check("forward", "inp (R, D)", inp.len(), rows * d);
    check("forward", "mean (R)", mean.len(), rows);
    check("forward", "rstd (R)", rstd.len(), rows);
    check("forward", "weight (D)", weight.len(), d);
    check("forward", "bias (D)", bias.len(), d);
    if rows == 0 || d == 0 {
        return;
    }
    out.par_chunks_mut(ROW_CHUNK * d)
        .zip(inp.par_chunks(ROW_CHUNK * d))
        .zip(mean.par_chunks_mut(ROW_CHUNK).zip(rstd.par_chunks_mut(ROW_CHUNK)))
        .for_each(|((o, x), (m, r))| forward_rows::run(isa, o, m, r, x, weight, bias, eps));
}

/// Lanes of the per-row partial sums of the backward (as in `math::sum`).
const LANES: usize = 16;

crate::multiversion! {
    /// The backward over a block of rows: `dinp` rows (if given) and this
    /// block's share of `dw`, `db` added into `acc` (`2·D`: dw then db).
    fn backward_rows(
        dinp: Option<&mut [f32]>,
        add: bool,
        acc: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        mean: &[f32],
        rstd: &[f32],
    ) {
        let d = w.len();
        let (dw, db) = acc.split_at_mut(d);
        let mut dinp = dinp;
        let whole = d - d % LANES;
        for (r, (g_row, x)) in dout.chunks_exact(d).zip(inp.chunks_exact(d)).enumerate() {
            let (m, s) = (mean[r], rstd[r]);
            // Σ g and Σ g·x̂ with g = dout·w, in 16 lanes so they vectorise:
            // whole blocks of 16 first (zipped chunks: no bounds checks in the
            // loop), then the tail into the first lanes.
            let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
            let blocks = g_row[..whole]
                .chunks_exact(LANES)
                .zip(x[..whole].chunks_exact(LANES))
                .zip(w[..whole].chunks_exact(LANES))
                .zip(dw[..whole].chunks_exact_mut(LANES).zip(db[..whole].chunks_exact_mut(LANES)));
            for (((gb, xb), wb), (dwb, dbb)) in blocks {
                for l in 0..LANES {
                    let xhat = (xb[l] - m) * s;
                    let g = gb[l] * wb[l];
                    sg[l] += g;
                    sgx[l] += g * xhat;
                    dwb[l] += gb[l] * xhat;
                    dbb[l] += gb[l];
                }
            }
            for i in whole..d {
                let xhat = (x[i] - m) * s;
                let g = g_row[i] * w[i];
                sg[i - whole] += g;
                sgx[i - whole] += g * xhat;
                dw[i] += g_row[i] * xhat;
                db[i] += g_row[i];
            }
            if let Some(dinp) = dinp.as_deref_mut() {
                let mg = sg.iter().sum::<f32>() / d as f32;
                let mgx = sgx.iter().sum::<f32>() / d as f32;
                let di = &mut dinp[r * d..(r + 1) * d];
                let grad = |gi: f32, xi: f32, wi: f32| s * (gi * wi - mg - (xi - m) * s * mgx);
                let terms = di.iter_mut().zip(g_row).zip(x).zip(w);
                if add {
                    terms.for_each(|(((o, &gi), &xi), &wi)| *o += grad(gi, xi, wi));
                } else {
                    terms.for_each(|(((o, &gi), &xi), &wi)| *o = grad(gi, xi, wi));
                }
            }
        }
    }
}

/// The gradients of [`forward`] ([`LnGrads`]) from `dout (R, D)`, the saved
/// `mean (R)` and `rstd (R)`, `inp (R, D)` and `weight (D)`.
///
/// Parameter gradients are summed per fixed chunk of rows in parallel, then the
/// chunk partials in order: the result does not depend on the thread count.
pub fn backward(grads: LnGrads, dout: &[f32], mean: &[f32], rstd: &[f32], inp: &[f32], weight: &[f32], dims: LnDims) {
    let LnDims { rows, d, .. } = dims;
    let LnGrads { dinp, dweight, dbias } = grads;
    let isa = crate::cpu::isa();
    let (dw_add, dweight) = (dweight.add, dweight.data);
    let (db_add, dbias) = (dbias.add, dbias.data);
    check("backward", "dout (R, D)", dout.len(), rows * d);
    check("backward", "inp (R, D)", inp.len(), rows * d);
    check("backward", "weight (D)", weight.len(), d);
    check("backward", "dweight (D)", dweight.len(), d);
    check("backward", "dbias (D)", dbias.len(), d);
    check("backward", "mean (R)", mean.len(), rows);
    check("backward", "rstd (R)", rstd.len(), rows);
    if !dw_add {
        dweight.fill(0.0);
    }
    if !db_add {
        dbias.fill(0.0);
    }
    if rows == 0 || d == 0 {
        return;
    }
    let n_chunks = rows.div_ceil(ROW_CHUNK);
    let mut partial = vec![0f32; n_chunks * 2 * d]; // (chunks, 2, D)
    let block = ROW_CHUNK * d;
    let add = dinp.as_ref().is_some_and(|g| g.add);
    let run = |c: usize, acc: &mut [f32], di: Option<&mut [f32]>| {
        let (lo, hi) = (c * ROW_CHUNK, ((c + 1) * ROW_CHUNK).min(rows));
        backward_rows::run(
            isa,
            di,
            add,
            acc,
            &dout[lo * d..hi * d],
            &inp[lo * d..hi * d],
            weight,
            &mean[lo..hi],
            &rstd[lo..hi],
        );
    };
    match dinp.map(|g| g.data) {
        Some(dinp) => {
            check("backward", "dinp (R, D)", dinp.len(), rows * d);
            partial
                .par_chunks_mut(2 * d)
                .zip(dinp.par_chunks_mut(block))
                .enumerate()
                .for_each(|(c, (acc, di))| run(c, acc, Some(di)));
        }
        None => partial
            .par_chunks_mut(2 * d)
            .enumerate()
            .for_each(|(c, acc)| run(c, acc, None)),
    }
    for acc in partial.chunks_exact(2 * d) {
        for i in 0..d {
            dweight[i] += acc[i];
            dbias[i] += acc[d + i];
        }
    }
}

/// One row at a time, straight from the formulas, accumulating in f64.
pub mod reference {
    use super::LnDims;

    /// Forward, as in the module docs.
    pub fn forward(
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: &[f32],
        dims: LnDims,
    ) {
        let LnDims { rows, d, eps } = dims;
        for r in 0..rows {
            let x = &inp[r * d..(r + 1) * d];
            let m = x.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
            let s = 1.0 / (var + eps as f64).sqrt();
            for i in 0..d {
                out[r * d + i] = (((x[i] as f64 - m) * s) * weight[i] as f64 + bias[i] as f64) as f32;
            }
            mean[r] = m as f32;
            rstd[r] = s as f32;
        }
    }

    /// Backward, as in the module docs, every gradient accumulated:
    /// `grads` holds `dinp (R, D)`, `dweight (D)`, `dbias (D)`.
    pub fn backward(
        grads: [&mut [f32]; 3],
        dout: &[f32],
        mean: &[f32],
        rstd: &[f32],
        inp: &[f32],
        weight: &[f32],
        dims: LnDims,
    ) {
        let LnDims { rows, d, .. } = dims;
        let [dinp, dweight, dbias] = grads;
        for r in 0..rows {
            let (m, s) = (mean[r] as f64, rstd[r] as f64);
            let xhat: Vec<f64> = (0..d).map(|i| (inp[r * d + i] as f64 - m) * s).collect();
            let g: Vec<f64> = (0..d).map(|i| dout[r * d + i] as f64 * weight[i] as f64).collect();
            let mg = g.iter().sum::<f64>() / d as f64;
            let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
            for i in 0..d {
                dinp[r * d + i] += (s * (g[i] - mg - xhat[i] * mgx)) as f32;
                dweight[i] += (dout[r * d + i] as f64 * xhat[i]) as f32;
                dbias[i] += dout[r * d + i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, assert_close, for_each_isa, random_vec};

    /// Every path against the f64 reference. Tolerance: 2e-5 relative (the
    /// output is O(1) after normalisation); 1e-4 for gradients (sums of D terms
    /// in f32); looser for D = 1, where rstd = 1/√eps = 1000 amplifies rounding.
    #[test]
    fn forward_and_backward_match_reference_on_odd_sizes() {
        for_each_isa("layernorm", |isa| {
            for &rows in &ODD_SIZES {
                for &d in &[1usize, 3, 7, 17, 65, 197, 769] {
                    let seed = (rows * 1000 + d) as u64;
                    // Offset and scale the input so mean and variance are not trivial.
                    let x: Vec<f32> = random_vec(rows * d, seed).iter().map(|v| 3.0 * v + 0.5).collect();
                    let w = random_vec(d, seed + 1);
                    let b = random_vec(d, seed + 2);
                    let (mut o, mut m, mut s) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
                    let dims = LnDims { rows, d, eps: 1e-6 };
                    forward(&mut o, &mut m, &mut s, &x, &w, &b, dims);
                    let (mut ro, mut rm, mut rs) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
                    reference::forward(&mut ro, &mut rm, &mut rs, &x, &w, &b, dims);
                    let tol = if d == 1 { 1e-3 } else { 2e-5 };
                    assert_close(&o, &ro, tol, &format!("layernorm out {isa:?}"));
                    assert_close(&m, &rm, 1e-5, "layernorm mean");
                    assert_close(&s, &rs, 1e-4, "layernorm rstd");

                    let dout = random_vec(rows * d, seed + 3);
                    let g0 = random_vec(rows * d, seed + 4);
                    let (mut di, mut dw, mut db) = (g0.clone(), vec![0.5; d], vec![-0.5; d]);
                    let grads = LnGrads {
                        dinp: Some(GradOut::add(&mut di)),
                        dweight: GradOut::add(&mut dw),
                        dbias: GradOut::add(&mut db),
                    };
                    backward(grads, &dout, &m, &s, &x, &w, dims);
                    let (mut ri, mut rw, mut rb) = (g0, vec![0.5; d], vec![-0.5; d]);
                    reference::backward([&mut ri, &mut rw, &mut rb], &dout, &m, &s, &x, &w, dims);
                    let tol = if d == 1 { 1e-2 } else { 1e-4 };
                    assert_close(&di, &ri, tol, &format!("layernorm dinp {isa:?}"));
                    assert_close(&dw, &rw, 1e-4, "layernorm dweight");
                    assert_close(&db, &rb, 1e-4, "layernorm dbias");
                    // Every gradient overwritten: as accumulated into zeros.
                    let (mut over, mut ow, mut ob) = (vec![f32::NAN; rows * d], vec![f32::NAN; d], vec![f32::NAN; d]);
                    let grads = LnGrads {
                        dinp: Some(GradOut::overwrite(&mut over)),
                        dweight: GradOut::overwrite(&mut ow),
                        dbias: GradOut::overwrite(&mut ob),
                    };
                    backward(grads, &dout, &m, &s, &x, &w, dims);
                    let (mut zero, mut zw, mut zb) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
                    reference::backward([&mut zero, &mut zw, &mut zb], &dout, &m, &s, &x, &w, dims);
                    assert_close(&over, &zero, tol, &format!("layernorm dinp overwrite {isa:?}"));
                    assert_close(&ow, &zw, 1e-4, "layernorm dweight overwrite");
                    assert_close(&ob, &zb, 1e-4, "layernorm dbias overwrite");
                }
            }
        });
    }

    #[test]
    fn output_has_zero_mean_unit_variance_before_affine() {
        let (rows, d) = (5, 64);
        let x: Vec<f32> = random_vec(rows * d, 9).iter().map(|v| 10.0 * v - 3.0).collect();
        let (mut o, mut m, mut s) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        forward(
            &mut o,
            &mut m,
            &mut s,
            &x,
            &vec![1.0; d],
            &vec![0.0; d],
            LnDims { rows, d, eps: 1e-6 },
        );
        for row in o.chunks(d) {
            let mean: f32 = row.iter().sum::<f32>() / d as f32;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / d as f32;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "mean {mean} var {var}");
        }
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_thread_count() {
        let (rows, d) = (1000, 192);
        let x = random_vec(rows * d, 1);
        let w = random_vec(d, 2);
        let dout = random_vec(rows * d, 3);
        let (m, s): (Vec<f32>, Vec<f32>) = (vec![0.1; rows], vec![1.3; rows]);
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
            let grads = LnGrads {
                dinp: None,
                dweight: GradOut::add(&mut dw),
                dbias: GradOut::add(&mut db),
            };
            let dims = LnDims { rows, d, eps: 1e-6 };
            pool.install(|| backward(grads, &dout, &m, &s, &x, &w, dims));
            (dw, db)
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }
}
