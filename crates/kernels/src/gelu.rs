//! GELU with the exact error function (PyTorch's default, used by MAE):
//!
//! ```text
//! gelu(x)  = x · Φ(x) = ½ · x · (1 + erf(x / √2))
//! gelu'(x) = Φ(x) + x · φ(x),   φ(x) = e^{−x²/2} / √(2π)
//! ```
//! Element-wise over any number of values `n`.

use crate::GradOut;
use crate::math;
use rayon::prelude::*;

/// Elements per parallel task: large enough that rayon's overhead is noise.
const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + math::erf(x * FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + math::erf(x * FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * math::exp(-0.5 * x * x);
    cdf + x * pdf
}

crate::multiversion! {
    /// `out = gelu(inp)` on one chunk.
    fn forward_chunk(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = gelu(x);
        }
    }
}

crate::multiversion! {
    /// `dinp (+)= dout · gelu'(inp)` on one chunk.
    fn backward_chunk(dinp: &mut [f32], dout: &[f32], inp: &[f32], add: bool) {
        if add {
            for ((di, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
                *di += g * gelu_grad(x);
            }
        } else {
            for ((di, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
                *di = g * gelu_grad(x);
            }
        }
    }
}

/// `out = gelu(inp)` on the calling thread (a GEMM tile's epilogue).
pub(crate) fn gelu_into(isa: crate::cpu::Isa, out: &mut [f32], inp: &[f32]) {
    forward_chunk::run(isa, out, inp)
}

/// `x = gelu(x)` on the calling thread.
pub(crate) fn gelu_in_place(isa: crate::cpu::Isa, x: &mut [f32]) {
    gelu_in_place_chunk::run(isa, x)
}

crate::multiversion! {
    /// `x = gelu(x)` on one chunk.
    fn gelu_in_place_chunk(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu(*v);
        }
    }
}

/// `out = gelu(inp)`.
pub fn forward(out: &mut [f32], inp: &[f32]) {
    let isa = crate::cpu::isa();
    assert_eq!(
        out.len(),
        inp.len(),
        "gelu::forward: out has {} values, inp {}",
        out.len(),
        inp.len()
    );
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| forward_chunk::run(isa, o, x));
}

/// `dinp (+)= dout · gelu'(inp)` (see [`GradOut`]).
pub fn backward(dinp: GradOut, dout: &[f32], inp: &[f32]) {
    let isa = crate::cpu::isa();
    let add = dinp.add;
    let dinp = dinp.data;
    assert!(
        dinp.len() == inp.len() && dout.len() == inp.len(),
        "gelu::backward: dinp {}, dout {}, inp {} values",
        dinp.len(),
        dout.len(),
        inp.len()
    );
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(inp.par_chunks(CHUNK)))
        .for_each(|(di, (g, x))| backward_chunk::run(isa, di, g, x, add));
}

/// The formulas in f64 with a series erf.
pub mod reference {
    use crate::math::erf_f64;

    /// `out = gelu(inp)`.
    pub fn forward(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            let x = x as f64;
            *o = (0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))) as f32;
        }
    }

    /// `dinp += dout · gelu'(inp)`.
    pub fn backward(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        for ((di, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
            let x = x as f64;
            let cdf = 0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            *di += (g as f64 * (cdf + x * pdf)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, assert_close, for_each_isa, random_vec};

    /// Every path against the f64 reference, tolerance 2e-6 (see below).
    #[test]
    fn matches_reference_on_odd_sizes_and_wide_range() {
        for_each_isa("gelu", |_| {
            for &n in ODD_SIZES.iter().chain(&[769, 40_000]) {
                let x: Vec<f32> = random_vec(n, n as u64).iter().map(|v| 6.0 * v).collect();
                let mut fast = vec![0.0; n];
                let mut slow = vec![0.0; n];
                forward(&mut fast, &x);
                reference::forward(&mut slow, &x);
                // For x ≪ 0, 1 + erf(x/√2) cancels: an absolute erf error of 4e-7
                // becomes ½·|x|·4e-7 in gelu (PyTorch's float GELU has the same tail).
                assert_close(&fast, &slow, 2e-6, "gelu forward");
                let dout = random_vec(n, 7 + n as u64);
                let mut df = vec![0.25; n];
                let mut ds = vec![0.25; n];
                backward(GradOut::add(&mut df), &dout, &x);
                reference::backward(&mut ds, &dout, &x);
                assert_close(&df, &ds, 2e-6, "gelu backward");
            }
        });
    }

    #[test]
    fn known_values() {
        // gelu(1) = Φ(1) = 0.841344746..., gelu(-1) = -0.158655254...
        let mut out = [0.0; 3];
        forward(&mut out, &[1.0, -1.0, 0.0]);
        assert!((out[0] - 0.841_344_7).abs() < 1e-6);
        assert!((out[1] + 0.158_655_2).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
    }
}
