//! The machine's ceilings, measured: fused multiply-add throughput (the
//! compute peak every GFLOP/s figure is compared with) and memory bandwidth
//! (the ceiling of element-wise kernels).
//!
//! The FMA loop keeps 12 independent accumulator registers busy (more than
//! FMA latency × FMA ports, so the loop is throughput-bound), each doing
//! `acc = acc · a + b` on full vectors: 2 FLOPs per lane per instruction.

use crate::cpu::{self, Isa};
use std::time::{Duration, Instant};

/// FLOPs of one call of the inner loop body, per ISA.
fn flops_per_iter(isa: Isa) -> f64 {
    // 12 accumulators × lanes × 2 FLOPs (multiply + add).
    12.0 * isa.lanes() as f64 * 2.0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `iters` rounds of 12 independent 16-lane FMAs. Returns a value
    /// depending on every accumulator so the loop is not optimised away.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (`cpu::detected()` says so).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s)
    }

    /// The same with 8-lane AVX2 FMAs.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (`cpu::detected()` says so).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iters: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for r in acc {
            s = _mm256_add_ps(s, r);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds exactly 8 f32, the width of one store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// Scalar fallback: 12 independent multiply-add chains the compiler keeps in
/// registers (no FMA instruction: the baseline target has none).
fn fma_scalar(iters: u64) -> f32 {
    let mut acc = [1f32; 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = *r * 0.999_999 + 1e-7;
        }
    }
    acc.iter().sum()
}

fn run_fma(isa: Isa, iters: u64) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` never exceeds `cpu::detected()`, checked by the caller.
        Isa::Avx512 => unsafe { x86::fma_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::fma_avx2(iters) },
        _ => fma_scalar(iters),
    }
}

/// FLOPs of [`fma_loop`] for `iters` iterations on `isa`.
pub fn fma_loop_flops(isa: Isa, iters: u64) -> f64 {
    iters as f64 * flops_per_iter(isa.min(cpu::detected()))
}

/// Runs the FMA loop for `iters` iterations on `threads` threads (for
/// benchmarks that time it themselves); returns a value to keep it alive.
pub fn fma_loop(isa: Isa, iters: u64, threads: usize) -> f32 {
    let isa = isa.min(cpu::detected());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(move || run_fma(isa, iters)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// Peak FMA throughput in GFLOP/s of `threads` threads each running the loop
/// for about `time`, with vectors of `isa` (lowered to what the CPU has).
pub fn fma_gflops(isa: Isa, threads: usize, time: Duration) -> f64 {
    let isa = isa.min(cpu::detected());
    let run = move |iters: u64| {
        std::hint::black_box(run_fma(isa, iters));
    };
    loop_gflops(run, 1 << 16, flops_per_iter(isa), threads, time)
}

/// The rate of `run(iters)` (a loop of `flops` FLOPs per iteration) on
/// `threads` threads at once: `iters` is first doubled from `start` until
/// one call on one thread takes `time / 8`, then each thread runs 4× that.
fn loop_gflops(run: impl Fn(u64) + Copy + Send, start: u64, flops: f64, threads: usize, time: Duration) -> f64 {
    let mut iters = start;
    loop {
        let t = Instant::now();
        run(iters);
        if t.elapsed() > time / 8 || iters > 1 << 34 {
            break;
        }
        iters *= 2;
    }
    let begin = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(move || run(iters * 4));
        }
    });
    let secs = begin.elapsed().as_secs_f64();
    threads.max(1) as f64 * (iters * 4) as f64 * flops / secs / 1e9
}

/// Peak bf16 throughput of the AMX tiles in GFLOP/s (`tdpbf16ps` on
/// register-resident tiles) of `threads` threads each running for about
/// `time`; `None` where AMX is not available.
pub fn amx_gflops(threads: usize, time: Duration) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::gemm::amx;
        if !amx::available() {
            return None;
        }
        // SAFETY: AMX is available (checked above).
        let run = |iters: u64| unsafe { amx::tile_peak_loop(iters) };
        Some(loop_gflops(run, 1 << 12, amx::TILE_LOOP_FLOPS, threads, time))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, time);
        None
    }
}

/// Memory bandwidth in GB/s (bytes read + written per second) of `threads`
/// threads copying disjoint parts of a `bytes`-sized buffer, best of `reps`.
pub fn copy_gbs(bytes: usize, threads: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let chunk = n.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, src) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(src));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    2.0 * (n * 4) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_positive_and_wider_vectors_are_not_slower() {
        let t = Duration::from_millis(20);
        let scalar = fma_gflops(Isa::Scalar, 1, t);
        let best = fma_gflops(cpu::detected(), 1, t);
        assert!(scalar > 0.1 && best >= scalar * 0.9, "scalar {scalar}, best {best}");
        assert!(copy_gbs(1 << 22, 1, 2) > 0.1);
    }
}
