//! Which instruction set the fast paths may use, detected once per process.
//!
//! Kernels never rely on `-C target-cpu=native`: a program that imports the
//! library gets the fast path on any machine that has it, and the scalar path
//! everywhere else. Two things lower the choice, for tests and benchmarks of
//! each path: the environment variable `TESSERA_ISA` (`scalar`, `avx2`,
//! `avx512`) for a whole process, and [`with_isa`] for the kernels a closure
//! calls. Asking for an instruction set the CPU lacks falls back to the best
//! one it has.
//!
//! Every kernel entry reads [`isa`] once, on the thread that calls it, and
//! hands that level down to everything it runs, on every thread (the GEMM's
//! tile GELU and attention's products included): a forced level reaches the
//! whole call.

use std::cell::Cell;
use std::sync::OnceLock;

/// An instruction-set level, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust; whatever the compiler auto-vectorises for the baseline target.
    Scalar,
    /// AVX2 with FMA: 8 f32 lanes, fused multiply-add.
    Avx2,
    /// AVX-512F: 16 f32 lanes, 32 vector registers.
    Avx512,
}

impl Isa {
    /// Lower-case name, as accepted by `TESSERA_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name accepted by `TESSERA_ISA`.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Number of f32 lanes in one vector register of this level.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }
}

/// The best level this CPU supports, ignoring `TESSERA_ISA`.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

thread_local! {
    /// The level [`with_isa`] forces on this thread, if any.
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The level the kernels use: the detected one, lowered by `TESSERA_ISA` if
/// set, or what [`with_isa`] forces on this thread — never above the CPU's.
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    let chosen = *CHOSEN.get_or_init(|| {
        let best = detected();
        match std::env::var("TESSERA_ISA").ok().as_deref().and_then(Isa::parse) {
            Some(asked) => asked.min(best),
            None => best,
        }
    });
    FORCED.with(Cell::get).map_or(chosen, clamp)
}

/// Runs `f` with the kernels it calls on this thread using `isa` (lowered to
/// the CPU's level if it asks for more), then restores the previous choice:
/// how tests compare every path and benchmarks time each.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(isa))));
    f()
}

/// `isa`, lowered to [`detected`] if it asks for more than the CPU has: what
/// every kernel body runs, so that forcing a level is always safe.
#[inline]
pub fn clamp(isa: Isa) -> Isa {
    clamp_to(isa, detected())
}

/// `isa`, lowered to `cpu` if it asks for more.
#[inline]
fn clamp_to(isa: Isa, cpu: Isa) -> Isa {
    isa.min(cpu)
}

/// Every level this CPU can run, from scalar up to [`detected`]; tests run each.
pub fn available() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&i| i <= detected())
        .collect()
}

/// Compiles one `#[inline(always)]` kernel body three times — plain, with
/// AVX2+FMA enabled, with AVX-512F enabled — and runs the copy for an [`Isa`].
///
/// ```text
/// multiversion! {
///     /// Doc of the body.
///     pub fn gelu_rows(out: &mut [f32], inp: &[f32]) { ... }
/// }
/// gelu_rows::run(cpu::isa(), out, inp);
/// ```
///
/// expands to a module `gelu_rows` holding `body` (the code as written),
/// `avx512` and `avx2` (`#[target_feature]` functions that only call `body`,
/// so the compiler inlines it and vectorises it at that width), and `run`,
/// which picks one. This is the only place that calls a `#[target_feature]`
/// function, and it does so only for an `Isa` at or below what [`detected`]
/// reported ([`clamp`]).
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        #[allow(non_snake_case, clippy::too_many_arguments)]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$meta])*
            #[inline(always)]
            pub fn body($($arg: $ty),*) $(-> $ret)? $body

            /// The body compiled with AVX-512F enabled.
            ///
            /// # Safety
            /// The CPU must have AVX-512F ([`run`] calls it only then).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            pub unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }

            /// The body compiled with AVX2 and FMA enabled.
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA ([`run`] calls it only then).
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }

            /// Runs the copy compiled for `isa`, lowered to the CPU's best
            /// level if it asks for more (so no safe call runs an instruction
            /// set the CPU lacks).
            #[inline]
            pub fn run(isa: $crate::cpu::Isa, $($arg: $ty),*) $(-> $ret)? {
                match $crate::cpu::clamp(isa) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `clamp` returns at most `cpu::detected()`, so the CPU has AVX-512F.
                    $crate::cpu::Isa::Avx512 => unsafe { avx512($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `clamp` returns at most `cpu::detected()`, so the CPU has AVX2 and FMA.
                    $crate::cpu::Isa::Avx2 => unsafe { avx2($($arg),*) },
                    _ => body($($arg),*),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("neon"), None);
    }

    crate::multiversion! {
        /// A body any level can run: the sum of a slice.
        fn sum(x: &[f32]) -> f32 {
            x.iter().sum()
        }
    }

    /// Asking for more than the CPU has is lowered, never run. Checked
    /// against pretend CPUs below every real one, so the test fails on an
    /// AVX-512 machine too if `clamp` stopped lowering.
    #[test]
    fn forced_levels_above_the_cpu_are_clamped() {
        for cpu in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            for asked in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let got = clamp_to(asked, cpu);
                assert!(got <= cpu && got <= asked, "{asked:?} on a {cpu:?} CPU ran {got:?}");
                assert!(got == asked || got == cpu, "{asked:?} on a {cpu:?} CPU ran {got:?}");
            }
        }
        assert_eq!(clamp_to(Isa::Avx512, Isa::Scalar), Isa::Scalar);
        assert_eq!(clamp(Isa::Avx512), detected());
        let x: Vec<f32> = (0..100).map(|i| i as f32 * 0.25).collect();
        let best = sum::run(detected(), &x);
        assert_eq!(sum::run(Isa::Avx512, &x).to_bits(), best.to_bits());
        assert_eq!(sum::run(Isa::Scalar, &x), 1237.5);
    }

    #[test]
    fn chosen_level_is_supported() {
        assert!(isa() <= detected());
        assert!(available().contains(&isa()));
    }

    /// `with_isa` forces a level for its closure, lowered to the CPU's, and
    /// restores the previous choice after (nested scopes too).
    #[test]
    fn with_isa_is_scoped() {
        let before = isa();
        with_isa(Isa::Scalar, || {
            assert_eq!(isa(), Isa::Scalar);
            with_isa(Isa::Avx512, || assert_eq!(isa(), detected()));
            assert_eq!(isa(), Isa::Scalar);
        });
        assert_eq!(isa(), before);
    }
}
