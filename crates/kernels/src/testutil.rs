//! Helpers shared by the kernel tests.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// `n` uniform values in [-1, 1), reproducible from `seed`.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Asserts `|a - b| <= tol · (1 + |b|)` element by element, naming the first
/// offender.
#[track_caller]
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y} (tolerance {tol})"
        );
    }
}

/// The sizes every kernel is tested on.
pub const ODD_SIZES: [usize; 6] = [1, 3, 7, 17, 65, 197];

/// Runs `f` on every instruction-set path this CPU has (inside
/// [`crate::cpu::with_isa`], so every kernel `f` calls takes that path), and
/// says which ones it lacks (those are skipped, not silently passed).
pub fn for_each_isa(what: &str, mut f: impl FnMut(crate::cpu::Isa)) {
    use crate::cpu::{Isa, available, with_isa};
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        if available().contains(&isa) {
            with_isa(isa, || f(isa));
        } else {
            eprintln!("{what}: skipping the {} path: this CPU lacks it", isa.name());
        }
    }
}
