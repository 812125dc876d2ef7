//! Optimizer updates, element-wise over one parameter tensor.
//!
//! AdamW (Loshchilov & Hutter), in PyTorch's order of operations:
//! ```text
//! θ ← θ · (1 − lr·λ)                         decoupled weight decay
//! m ← β1·m + (1 − β1)·g                      v ← β2·v + (1 − β2)·g²
//! θ ← θ − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```
//! SGD with momentum, also as PyTorch (dampening 0):
//! ```text
//! g ← g + λ·θ      buf ← μ·buf + g  (buf = g on the first step)
//! θ ← θ − lr · (nesterov ? g + μ·buf : buf)
//! ```

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Hyper-parameters of one AdamW step on one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count of this tensor (for bias correction).
    pub step: u64,
}

crate::multiversion! {
    /// AdamW on one chunk: `decay = 1 − lr·λ`, `step_size = lr / (1 − β1^t)`,
    /// `inv_bc2_sqrt = 1 / √(1 − β2^t)`.
    fn adamw_chunk(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        beta1: f32,
        beta2: f32,
        eps: f32,
        decay: f32,
        step_size: f32,
        inv_bc2_sqrt: f32,
    ) {
        for i in 0..p.len() {
            let gi = g[i];
            m[i] += (1.0 - beta1) * (gi - m[i]);
            v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            let denom = v[i].sqrt() * inv_bc2_sqrt + eps;
            p[i] = p[i] * decay - step_size * m[i] / denom;
        }
    }
}

/// One AdamW update of `param` in place, with its moments `m`, `v`.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let isa = crate::cpu::isa();
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "adamw: param {n}, grad {}, m {}, v {} values",
        grad.len(),
        m.len(),
        v.len()
    );
    assert!(s.step >= 1, "adamw: step counts from 1");
    let bc1 = 1.0 - (s.beta1 as f64).powi(s.step.min(i32::MAX as u64) as i32);
    let bc2 = 1.0 - (s.beta2 as f64).powi(s.step.min(i32::MAX as u64) as i32);
    let step_size = (s.lr as f64 / bc1) as f32;
    let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
    let decay = 1.0 - s.lr * s.weight_decay;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            adamw_chunk::run(isa, p, g, m, v, s.beta1, s.beta2, s.eps, decay, step_size, inv_bc2_sqrt)
        });
}

/// Hyper-parameters of one SGD step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// True on the tensor's first step (the buffer starts as the gradient).
    pub first: bool,
}

/// One SGD-with-momentum update of `param` in place, with its buffer `buf`.
pub fn sgd(param: &mut [f32], grad: &[f32], buf: &mut [f32], s: SgdStep) {
    let n = param.len();
    assert!(
        grad.len() == n && buf.len() == n,
        "sgd: param {n}, grad {}, buf {} values",
        grad.len(),
        buf.len()
    );
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK).zip(buf.par_chunks_mut(CHUNK)))
        .for_each(|(p, (g, b))| {
            for i in 0..p.len() {
                let gi = g[i] + s.weight_decay * p[i];
                b[i] = if s.first { gi } else { s.momentum * b[i] + gi };
                let step = if s.nesterov { gi + s.momentum * b[i] } else { b[i] };
                p[i] -= s.lr * step;
            }
        });
}

/// The formulas in f64, one element at a time.
pub mod reference {
    use super::AdamWStep;

    /// See [`super::adamw`].
    pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
        let (b1, b2) = (s.beta1 as f64, s.beta2 as f64);
        let bc1 = 1.0 - b1.powi(s.step as i32);
        let bc2 = 1.0 - b2.powi(s.step as i32);
        for i in 0..param.len() {
            let g = grad[i] as f64;
            let mut p = param[i] as f64 * (1.0 - s.lr as f64 * s.weight_decay as f64);
            let mi = b1 * m[i] as f64 + (1.0 - b1) * g;
            let vi = b2 * v[i] as f64 + (1.0 - b2) * g * g;
            p -= s.lr as f64 / bc1 * mi / (vi.sqrt() / bc2.sqrt() + s.eps as f64);
            (param[i], m[i], v[i]) = (p as f32, mi as f32, vi as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ODD_SIZES, assert_close, for_each_isa, random_vec};

    /// Every path against f64 over five steps, tolerance 1e-5 relative.
    #[test]
    fn adamw_matches_reference_over_several_steps() {
        for_each_isa("adamw", |_| {
            for &n in ODD_SIZES.iter().chain(&[769, 50_000]) {
                let mut p = random_vec(n, 1);
                let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
                let (mut rp, mut rm, mut rv) = (p.clone(), m.clone(), v.clone());
                for step in 1..=5 {
                    let g = random_vec(n, 10 + step);
                    let s = AdamWStep {
                        lr: 1e-2,
                        beta1: 0.9,
                        beta2: 0.95,
                        eps: 1e-8,
                        weight_decay: 0.05,
                        step,
                    };
                    adamw(&mut p, &g, &mut m, &mut v, s);
                    reference::adamw(&mut rp, &g, &mut rm, &mut rv, s);
                }
                assert_close(&p, &rp, 1e-5, "adamw param");
                assert_close(&m, &rm, 1e-5, "adamw m");
                assert_close(&v, &rv, 1e-5, "adamw v");
            }
        });
    }

    #[test]
    fn first_adamw_step_moves_by_lr_in_gradient_sign() {
        // After one step m̂ = g and v̂ = g², so the update is lr·g/(|g| + ε) ≈ lr·sign(g).
        let mut p = vec![1.0, -1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw(
            &mut p,
            &[0.3, -2.0],
            &mut m,
            &mut v,
            AdamWStep {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                step: 1,
            },
        );
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn sgd_momentum_follows_the_recurrence() {
        let mut p = vec![1.0f32];
        let mut buf = vec![0.0f32];
        let s = |first| SgdStep {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
            first,
        };
        sgd(&mut p, &[1.0], &mut buf, s(true));
        assert!((p[0] - 0.9).abs() < 1e-7);
        sgd(&mut p, &[1.0], &mut buf, s(false));
        // buf = 0.9·1 + 1 = 1.9; p = 0.9 − 0.19.
        assert!((p[0] - 0.71).abs() < 1e-6 && (buf[0] - 1.9).abs() < 1e-6);
        let mut q = vec![1.0f32];
        let mut b = vec![0.0f32];
        sgd(
            &mut q,
            &[1.0],
            &mut b,
            SgdStep {
                nesterov: true,
                weight_decay: 0.5,
                ..s(true)
            },
        );
        // g = 1 + 0.5 = 1.5, buf = 1.5, step = 1.5 + 0.9·1.5 = 2.85.
        assert!((q[0] - (1.0 - 0.285)).abs() < 1e-6);
    }
}
