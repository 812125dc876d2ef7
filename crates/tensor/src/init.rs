//! Random initialisation, as PyTorch's `torch.nn.init` functions.

use rand::{Rng, RngExt};

/// `n` samples of a normal distribution (Box–Muller, in f64).
pub fn normal<R: Rng + ?Sized>(n: usize, mean: f32, std: f32, rng: &mut R) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // u1 in (0, 1] so the logarithm is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        if out.len() < n {
            out.push(mean + std * (r * t.sin()) as f32);
        }
    }
    out
}

/// `n` samples of a normal distribution truncated to `[a, b]` (rejection).
pub fn trunc_normal<R: Rng + ?Sized>(n: usize, mean: f32, std: f32, a: f32, b: f32, rng: &mut R) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(
            normal(n - out.len(), mean, std, rng)
                .into_iter()
                .filter(|v| (a..=b).contains(v)),
        );
    }
    out
}

/// `n` samples uniform in `[lo, hi)`.
pub fn uniform<R: Rng + ?Sized>(n: usize, lo: f32, hi: f32, rng: &mut R) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Xavier/Glorot uniform for a weight with `fan_in` inputs and `fan_out`
/// outputs: `U(−a, a)`, `a = √(6 / (fan_in + fan_out))`.
pub fn xavier_uniform<R: Rng + ?Sized>(fan_out: usize, fan_in: usize, rng: &mut R) -> Vec<f32> {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    uniform(fan_out * fan_in, -a, a, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    #[test]
    fn normal_has_the_right_moments() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let x = normal(100_001, 1.0, 2.0, &mut rng);
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(
            (m - 1.0).abs() < 0.03 && (v.sqrt() - 2.0).abs() < 0.03,
            "mean {m} std {}",
            v.sqrt()
        );
        assert!(
            trunc_normal(1000, 0.0, 1.0, -0.5, 0.5, &mut rng)
                .iter()
                .all(|v| v.abs() <= 0.5)
        );
    }

    #[test]
    fn xavier_bound() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let w = xavier_uniform(30, 20, &mut rng);
        let a = (6.0f32 / 50.0).sqrt();
        assert_eq!(w.len(), 600);
        assert!(w.iter().all(|v| v.abs() <= a) && w.iter().any(|v| v.abs() > 0.8 * a));
    }
}
