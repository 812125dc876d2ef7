//! Checking a backward pass against finite differences.
//!
//! For an operation `out = f(inputs)`, a fixed random tensor `R` of `out`'s
//! shape turns it into the scalar `L = Σ out ⊙ R`, whose gradient with respect
//! to `out` is exactly `R`. Backward gives `∂L/∂x` for every input; central
//! differences `(L(x + h·e_j) − L(x − h·e_j)) / 2h` give the same numbers
//! independently, element by element. A second, one-call check perturbs every
//! input at once along a random direction `v` and compares
//! `(L(x + h·v) − L(x − h·v)) / 2h` with `Σ ∂L/∂x · v`.
//!
//! `L` is accumulated in f64 from f32 outputs, so with `h ≈ 1e-2` the
//! truncation and rounding errors both stay near 1e-4 for well-scaled inputs.

use crate::tensor::{Tensor, no_grad};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Settings of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub h: f32,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of the larger magnitude).
    pub rtol: f64,
    /// At most this many coordinates per input are checked (evenly spaced).
    pub max_elems: usize,
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            h: 4e-3,
            atol: 5e-4,
            rtol: 2e-3,
            max_elems: 64,
            seed: 0,
        }
    }
}

fn random(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Checks the gradients of `f` at `inputs` (which must be mutable tensors,
/// e.g. [`Tensor::param`]; those not requiring gradients are held fixed).
/// Returns a description of the first mismatch.
pub fn check<F>(inputs: &[Tensor], f: F, cfg: GradCheck) -> Result<(), String>
where
    F: Fn(&[Tensor]) -> crate::Result<Tensor>,
{
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let out = f(inputs).map_err(|e| e.to_string())?;
    let r = random(out.numel(), &mut rng);
    let weights = Tensor::from_slice(&r, out.shape()).map_err(|e| e.to_string())?;
    let loss = out.mul(&weights).map_err(|e| e.to_string())?.sum_all();
    let grads = loss.backward().map_err(|e| e.to_string())?;
    drop((loss, out));

    let eval = || -> Result<f64, String> {
        no_grad(|| {
            let out = f(inputs).map_err(|e| e.to_string())?;
            Ok(out.data().iter().zip(&r).map(|(&o, &w)| o as f64 * w as f64).sum())
        })
    };
    let h = cfg.h as f64;
    let close = |a: f64, n: f64| (a - n).abs() <= cfg.atol + cfg.rtol * a.abs().max(n.abs());

    // Coordinate by coordinate.
    for (i, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            continue;
        }
        let zeros = vec![0.0; x.numel()];
        let analytic = grads.get(x).unwrap_or(&zeros).to_vec();
        let n = x.numel();
        let step = n.div_ceil(cfg.max_elems.max(1)).max(1);
        for j in (0..n).step_by(step) {
            let old = x.data()[j];
            x.data_mut().map_err(|e| e.to_string())?[j] = old + cfg.h;
            let up = eval()?;
            x.data_mut().map_err(|e| e.to_string())?[j] = old - cfg.h;
            let down = eval()?;
            x.data_mut().map_err(|e| e.to_string())?[j] = old;
            let numeric = (up - down) / (2.0 * h);
            if !close(analytic[j] as f64, numeric) {
                return Err(format!(
                    "input {i} {:?}, element {j}: backward gives {}, finite differences {numeric}",
                    x.shape(),
                    analytic[j]
                ));
            }
        }
    }

    // All at once along a random direction.
    let dirs: Vec<Vec<f32>> = inputs.iter().map(|x| random(x.numel(), &mut rng)).collect();
    let shift = |sign: f32| -> Result<(), String> {
        for (x, v) in inputs.iter().zip(&dirs) {
            if x.requires_grad() {
                let mut d = x.data_mut().map_err(|e| e.to_string())?;
                d.iter_mut().zip(v).for_each(|(a, b)| *a += sign * cfg.h * b);
            }
        }
        Ok(())
    };
    shift(1.0)?;
    let up = eval()?;
    shift(-2.0)?;
    let down = eval()?;
    shift(1.0)?;
    let numeric = (up - down) / (2.0 * h);
    let analytic: f64 = inputs
        .iter()
        .zip(&dirs)
        .filter(|(x, _)| x.requires_grad())
        .filter_map(|(x, v)| {
            grads
                .get(x)
                .map(|g| g.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>())
        })
        .sum();
    let scale = dirs.iter().map(|v| v.len()).sum::<usize>().max(1) as f64;
    if (analytic - numeric).abs() > cfg.atol * scale.sqrt() + cfg.rtol * analytic.abs().max(numeric.abs()) {
        return Err(format!(
            "directional derivative: backward gives {analytic}, finite differences {numeric}"
        ));
    }
    Ok(())
}
