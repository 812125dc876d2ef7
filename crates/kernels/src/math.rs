//! Scalar building blocks for the element-wise kernels: `exp` and `erf` in f32
//! written with only multiplies, adds, compares and bit operations, so that a
//! loop calling them is auto-vectorised (and, inside an `avx2`/`avx512f`
//! `#[target_feature]` function, vectorised at that width). `f32::exp` is a
//! libm call per element, which no compiler vectorises.
//!
//! Accuracy (checked against f64 in the tests below): `exp` within 2 ulp over
//! its whole range; `erf` within 4e-7 absolute (a few f32 ulp of 1).

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a high part with few mantissa bits (so `k·LN2_HI` is exact for
/// |k| < 2^9) and the remainder: Cody–Waite range reduction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2^23 rounds an f32 of magnitude < 2^22 to the
/// nearest integer, and leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` for f32, vectorisable.
///
/// `x = k·ln2 + r` with `k = round(x·log2 e)` and `|r| ≤ ln2/2`; then
/// `e^x = 2^k · e^r`, where `e^r` is its Taylor polynomial of degree 7
/// (truncation error `r^8/8! < 6e-9`) and `2^k` is built in the exponent bits.
/// Inputs below -87 (where the result would be subnormal) give 0, including
/// -∞; inputs above 88 are clamped (`e^88 ≈ 1.65e38`), so the result stays finite.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND_MAGIC;
    let k = t - ROUND_MAGIC; // round(x·log2 e), as a float
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32); // the same, as an integer
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k: k + 127 in the exponent field; -126 ≤ k ≤ 127 after the clamp.
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// The error function in f32, vectorisable: `erf(x) = x·P(x²)/Q(x²)` on
/// `[-4, 4]` (outside it erf rounds to ±1 in f32), with the minimax
/// coefficients used by Eigen and XLA for single precision.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 + -2.101_024e-6;
    let p = p * x2 + -5.692_506_4e-5;
    let p = p * x2 + -7.349_906_3e-4;
    let p = p * x2 + -2.9546e-3;
    let p = p * x2 + -1.609_603_3e-2;
    let q = -1.456_607_2e-5;
    let q = q * x2 + -2.133_740_6e-4;
    let q = q * x2 + -1.682_827e-3;
    let q = q * x2 + -7.373_329e-3;
    let q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// `erf` in f64 to about 1e-15: `erf(x) = 2/√π · e^{-x²} · Σ_n 2^n x^{2n+1} / (1·3·…·(2n+1))`.
/// All terms are positive, so the series has no cancellation; it is summed until
/// the terms stop mattering. Beyond |x| = 6 erf is ±1 to f64 precision.
/// Used by the reference kernels and the tests, never in a hot loop.
pub fn erf_f64(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let ax = x.abs();
    if ax >= 6.0 {
        return x.signum();
    }
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0.0;
    while term > 1e-17 * sum {
        n += 1.0;
        term *= 2.0 * ax * ax / (2.0 * n + 1.0);
        sum += term;
    }
    let v = 2.0 / std::f64::consts::PI.sqrt() * (-ax * ax).exp() * sum;
    v.min(1.0).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "exp error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_f64_matches_known_values() {
        // Values from Abramowitz & Stegun, table 7.1.
        for (x, want) in [
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (0.1, 0.112_462_916_0),
        ] {
            assert!((erf_f64(x) - want).abs() < 1e-9, "erf({x})");
            assert!((erf_f64(-x) + want).abs() < 1e-9, "erf(-{x})");
        }
        assert_eq!(erf_f64(0.0), 0.0);
        assert_eq!(erf_f64(7.0), 1.0);
    }

    #[test]
    fn erf_f32_is_within_4e7() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) as f64 - erf_f64(x as f64)).abs());
            x += 0.00113;
        }
        assert!(worst < 4e-7, "erf error {worst}");
    }
}

/// Lanes of the partial sums in [`sum`] and [`dot`]: 16 independent
/// accumulators, which the compiler keeps in one AVX-512 register (or two AVX2
/// ones). The summation order is fixed by this constant, not by the CPU.
const LANES: usize = 16;

/// `Σ xs`, in a fixed order: 16 interleaved partial sums, then the tail, then
/// the partials added pairwise.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        acc[l] += x;
    }
    reduce(acc)
}

/// `Σ a_i·b_i`, in the same fixed order as [`sum`].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[l] += x * y;
    }
    reduce(acc)
}

/// `max xs` (−∞ for an empty slice), lane-wise like [`sum`].
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        acc[l] = acc[l].max(x);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod reduction_tests {
    use super::*;

    #[test]
    fn sum_dot_max_match_plain_loops() {
        for n in [0usize, 1, 3, 7, 15, 16, 17, 65, 197, 769] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7919 % 211) as f32 - 105.0) / 37.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 97) as f32 - 48.0) / 11.0).collect();
            let s: f64 = a.iter().map(|&x| x as f64).sum();
            let d: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((sum(&a) as f64 - s).abs() < 1e-4 * (1.0 + s.abs()), "sum n={n}");
            assert!((dot(&a, &b) as f64 - d).abs() < 1e-4 * (1.0 + d.abs()), "dot n={n}");
            let m = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), m, "max n={n}");
        }
    }
}
