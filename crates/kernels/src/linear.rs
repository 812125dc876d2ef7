//! Fully connected layer with PyTorch's weight layout.
//!
//! Dims: `M` rows (every token of every image, `B·N`), `K` input features,
//! `N` output features.
//!
//! ```text
//! forward:  out (M, N) = inp (M, K) · weightᵀ (K, N) + bias (N)     weight is (N, K)
//! backward: dinp    (M, K) += dout (M, N) · weight (N, K)
//!           dweight (N, K) += doutᵀ (N, M) · inp (M, K)
//!           dbias   (N)    += Σ_rows dout
//! ```
//!
//! The bias is fused into the product ([`gemm_bias`]): the GEMM kernel adds it
//! while writing `out`, so the output is written once and never re-read.

use crate::GradOut;
use crate::gemm::{MatMut, MatRef, Precision, gemm, gemm_bias, gemm_bias_gelu, gemm_bias_residual};
use crate::par::{col_sum_add, col_sum_into};

/// A linear layer's sizes: `m` rows of `k` input features to `n` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// The gradients [`backward`] writes, each if asked for (see [`GradOut`]):
/// `dinp (M, K)`, `dweight (N, K)`, `dbias (N)`.
pub struct LinearGrads<'a> {
    pub dinp: Option<GradOut<'a>>,
    pub dweight: Option<GradOut<'a>>,
    pub dbias: Option<GradOut<'a>>,
}

fn check(name: &str, what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "linear::{name}: {what} has {len} values, want {want}");
}

/// `out = inp · weightᵀ + bias` (see the module docs for shapes), the product
/// in `prec` (bf16 where the CPU can, else f32; the same for every function
/// here).
pub fn forward(prec: Precision, out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, dims: LinearDims) {
    let LinearDims { m, k, n } = dims;
    check("forward", "out (M, N)", out.len(), m * n);
    check("forward", "inp (M, K)", inp.len(), m * k);
    check("forward", "weight (N, K)", weight.len(), n * k);
    let (x, wt) = (MatRef::row_major(inp, m, k), MatRef::row_major(weight, n, k).t());
    match bias {
        Some(bias) => {
            check("forward", "bias (N)", bias.len(), n);
            gemm_bias(prec, 1.0, x, wt, bias, 0.0, MatMut::row_major(out, m, n));
        }
        None => gemm(prec, 1.0, x, wt, 0.0, MatMut::row_major(out, m, n)),
    }
}

/// `act = gelu(pre)` and `pre = inp · weightᵀ + bias`: an MLP's first layer
/// in one pass over the output ([`gemm_bias_gelu`]: each tile's GELU is taken
/// while the tile is in cache). `pre` is what the backward needs. Bit-identical
/// to [`forward`] followed by `gelu::forward`.
pub fn forward_gelu(
    prec: Precision,
    act: &mut [f32],
    pre: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    dims: LinearDims,
) {
    let LinearDims { m, k, n } = dims;
    check("forward_gelu", "pre (M, N)", pre.len(), m * n);
    check("forward_gelu", "act (M, N)", act.len(), m * n);
    check("forward_gelu", "inp (M, K)", inp.len(), m * k);
    check("forward_gelu", "weight (N, K)", weight.len(), n * k);
    check("forward_gelu", "bias (N)", bias.len(), n);
    let (x, wt) = (MatRef::row_major(inp, m, k), MatRef::row_major(weight, n, k).t());
    gemm_bias_gelu(prec, x, wt, bias, MatMut::row_major(pre, m, n), act);
}

/// `out = residual + inp · weightᵀ + bias`: a linear layer and the residual
/// connection around it in one pass over `out` ([`gemm_bias_residual`]);
/// `residual` is `(M, N)`.
pub fn forward_residual(
    prec: Precision,
    out: &mut [f32],
    inp: &[f32],
    residual: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    dims: LinearDims,
) {
    let LinearDims { m, k, n } = dims;
    check("forward_residual", "out (M, N)", out.len(), m * n);
    check("forward_residual", "inp (M, K)", inp.len(), m * k);
    check("forward_residual", "weight (N, K)", weight.len(), n * k);
    check("forward_residual", "residual (M, N)", residual.len(), m * n);
    if let Some(b) = bias {
        check("forward_residual", "bias (N)", b.len(), n);
    }
    let (x, wt) = (MatRef::row_major(inp, m, k), MatRef::row_major(weight, n, k).t());
    gemm_bias_residual(
        prec,
        x,
        wt,
        bias,
        MatRef::row_major(residual, m, n),
        MatMut::row_major(out, m, n),
    );
}

/// The gradients of [`forward`], into whichever of [`LinearGrads`] are
/// given, from `dout (M, N)`, `inp` and `weight`.
pub fn backward(prec: Precision, grads: LinearGrads, dout: &[f32], inp: &[f32], weight: &[f32], dims: LinearDims) {
    let LinearDims { m, k, n } = dims;
    let LinearGrads { dinp, dweight, dbias } = grads;
    check("backward", "dout (M, N)", dout.len(), m * n);
    check("backward", "inp (M, K)", inp.len(), m * k);
    check("backward", "weight (N, K)", weight.len(), n * k);
    if let Some(g) = dinp {
        check("backward", "dinp (M, K)", g.data.len(), m * k);
        let beta = g.beta();
        gemm(
            prec,
            1.0,
            MatRef::row_major(dout, m, n),
            MatRef::row_major(weight, n, k),
            beta,
            MatMut::row_major(g.data, m, k),
        );
    }
    if let Some(g) = dweight {
        check("backward", "dweight (N, K)", g.data.len(), n * k);
        let beta = g.beta();
        gemm(
            prec,
            1.0,
            MatRef::row_major(dout, m, n).t(),
            MatRef::row_major(inp, m, k),
            beta,
            MatMut::row_major(g.data, n, k),
        );
    }
    if let Some(g) = dbias {
        check("backward", "dbias (N)", g.data.len(), n);
        if g.add {
            col_sum_add(g.data, dout, m, n);
        } else {
            col_sum_into(g.data, dout, m, n);
        }
    }
}

/// Plain loops, one output element at a time.
pub mod reference {
    use super::LinearDims;

    /// `out = inp · weightᵀ + bias`.
    pub fn forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, dims: LinearDims) {
        let LinearDims { m, k, n } = dims;
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |b| b[j]);
                for p in 0..k {
                    acc += inp[i * k + p] * weight[j * k + p];
                }
                out[i * n + j] = acc;
            }
        }
    }

    /// Accumulating gradients of [`forward`]: `grads` holds `dinp (M, K)`,
    /// `dweight (N, K)`, `dbias (N)`, each if given.
    pub fn backward(grads: [Option<&mut [f32]>; 3], dout: &[f32], inp: &[f32], weight: &[f32], dims: LinearDims) {
        let LinearDims { m, k, n } = dims;
        let [dinp, dweight, dbias] = grads;
        if let Some(dinp) = dinp {
            for i in 0..m {
                for p in 0..k {
                    let mut acc = 0.0;
                    for j in 0..n {
                        acc += dout[i * n + j] * weight[j * k + p];
                    }
                    dinp[i * k + p] += acc;
                }
            }
        }
        if let Some(dweight) = dweight {
            for j in 0..n {
                for p in 0..k {
                    let mut acc = 0.0;
                    for i in 0..m {
                        acc += dout[i * n + j] * inp[i * k + p];
                    }
                    dweight[j * k + p] += acc;
                }
            }
        }
        if let Some(dbias) = dbias {
            for j in 0..n {
                dbias[j] += (0..m).map(|i| dout[i * n + j]).sum::<f32>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random_vec};

    #[test]
    fn forward_and_backward_match_reference_on_odd_sizes() {
        let sizes = [1usize, 3, 7, 17, 65, 197];
        for (t, &m) in sizes.iter().enumerate() {
            let k = sizes[(t + 1) % 6];
            let n = sizes[(t + 3) % 6];
            let seed = t as u64;
            let inp = random_vec(m * k, seed);
            let w = random_vec(n * k, seed + 10);
            let b = random_vec(n, seed + 20);
            let dout = random_vec(m * n, seed + 30);
            let dims = LinearDims { m, k, n };
            for bias in [Some(&b[..]), None] {
                let mut fast = vec![f32::NAN; m * n];
                forward(Precision::F32, &mut fast, &inp, &w, bias, dims);
                let mut slow = vec![0.0; m * n];
                reference::forward(&mut slow, &inp, &w, bias, dims);
                assert_close(&fast, &slow, 1e-4, "linear forward");
            }
            // Gradients accumulate onto existing contents.
            let (g0, w0, b0) = (
                random_vec(m * k, seed + 40),
                random_vec(n * k, seed + 50),
                random_vec(n, seed + 60),
            );
            let (mut dx, mut dw, mut db) = (g0.clone(), w0.clone(), b0.clone());
            let grads = LinearGrads {
                dinp: Some(GradOut::add(&mut dx)),
                dweight: Some(GradOut::add(&mut dw)),
                dbias: Some(GradOut::add(&mut db)),
            };
            backward(Precision::F32, grads, &dout, &inp, &w, dims);
            let (mut rx, mut rw, mut rb) = (g0, w0, b0);
            reference::backward([Some(&mut rx), Some(&mut rw), Some(&mut rb)], &dout, &inp, &w, dims);
            assert_close(&dx, &rx, 1e-4, "linear dinp");
            assert_close(&dw, &rw, 1e-4, "linear dweight");
            assert_close(&db, &rb, 1e-4, "linear dbias");
            // Overwriting ignores whatever the buffers held (even NaN).
            let (mut ox, mut ow, mut ob) = (vec![f32::NAN; m * k], vec![f32::NAN; n * k], vec![f32::NAN; n]);
            let grads = LinearGrads {
                dinp: Some(GradOut::overwrite(&mut ox)),
                dweight: Some(GradOut::overwrite(&mut ow)),
                dbias: Some(GradOut::overwrite(&mut ob)),
            };
            backward(Precision::F32, grads, &dout, &inp, &w, dims);
            let (mut zx, mut zw, mut zb) = (vec![0.0; m * k], vec![0.0; n * k], vec![0.0; n]);
            reference::backward([Some(&mut zx), Some(&mut zw), Some(&mut zb)], &dout, &inp, &w, dims);
            assert_close(&ox, &zx, 1e-4, "linear dinp overwrite");
            assert_close(&ow, &zw, 1e-4, "linear dweight overwrite");
            assert_close(&ob, &zb, 1e-4, "linear dbias overwrite");
        }
    }

    #[test]
    fn forward_gelu_is_forward_then_gelu_bit_for_bit() {
        for &(m, k, n) in &[(1, 1, 1), (7, 17, 65), (197, 64, 33)] {
            let inp = random_vec(m * k, 1);
            let w = random_vec(n * k, 2);
            let b = random_vec(n, 3);
            let dims = LinearDims { m, k, n };
            let (mut pre, mut act) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            forward_gelu(Precision::F32, &mut act, &mut pre, &inp, &w, &b, dims);
            let mut want = vec![0.0; m * n];
            forward(Precision::F32, &mut want, &inp, &w, Some(&b), dims);
            let mut want_act = vec![0.0; m * n];
            crate::gelu::forward(&mut want_act, &want);
            assert_eq!(pre, want, "pre m{m} k{k} n{n}");
            assert_eq!(act, want_act, "act m{m} k{k} n{n}");
        }
    }

    #[test]
    fn forward_residual_is_forward_plus_the_residual() {
        for &(m, k, n) in &[(1, 1, 1), (7, 17, 65), (197, 64, 33)] {
            let inp = random_vec(m * k, 4);
            let w = random_vec(n * k, 5);
            let b = random_vec(n, 6);
            let r = random_vec(m * n, 7);
            let dims = LinearDims { m, k, n };
            for bias in [Some(&b[..]), None] {
                let mut out = vec![f32::NAN; m * n];
                forward_residual(Precision::F32, &mut out, &inp, &r, &w, bias, dims);
                let mut want = vec![0.0; m * n];
                reference::forward(&mut want, &inp, &w, bias, dims);
                for (x, y) in want.iter_mut().zip(&r) {
                    *x += y;
                }
                assert_close(&out, &want, 1e-4, "linear forward_residual");
            }
        }
    }

    #[test]
    fn independent_check_of_one_output() {
        // out[1][2] by hand for a 2x3 input and a 4x3 weight.
        let inp = [1.0, 2.0, 3.0, -1.0, 0.5, 2.0];
        let w = [0.1, 0.2, 0.3, 1.0, 0.0, -1.0, 2.0, 1.0, 0.0, -0.5, 0.5, 0.25];
        let b = [0.0, 0.0, 1.5, 0.0];
        let mut out = [0.0; 8];
        forward(
            Precision::F32,
            &mut out,
            &inp,
            &w,
            Some(&b),
            LinearDims { m: 2, k: 3, n: 4 },
        );
        assert!((out[4 + 2] - (-2.0 + 0.5 + 0.0 + 1.5)).abs() < 1e-6);
    }
}
