//! The f32 micro-kernel alone on hot panels, for every instruction set this
//! CPU has and several depths k, against the FMA peak of one core: what the
//! GEMM driver can reach at best (`gemm::kernel_gflops`).
//!
//! `cargo run --release -p tessera-kernels --example gemm_hot`
use std::time::Duration;
use tessera_kernels::cpu;
use tessera_kernels::gemm::{APanelKind, amx_kernel_gflops, kernel_gflops};
use tessera_kernels::peak;

fn main() {
    for isa in cpu::available() {
        let peak = peak::fma_gflops(isa, 1, Duration::from_millis(300));
        for kind in [APanelKind::Packed, APanelKind::InPlace] {
            for kc in [64, 128, 192, 256, 384, 512] {
                let reps = (2_000_000_000 / (kc * 768)).max(1);
                let Some(rate) = kernel_gflops(isa, kc, kind, reps) else {
                    continue;
                };
                println!(
                    "{:<7} A {:<8} kc {kc:>4}: {rate:6.1} GFLOP/s = {:5.1}% of the {peak:.1} FMA peak",
                    isa.name(),
                    format!("{kind:?}"),
                    100.0 * rate / peak
                );
            }
        }
    }
    // bf16 on AMX tiles: against the f32 peak (its own register-resident
    // peak is about 13× that: docs/benchmarks.md).
    let peak = peak::fma_gflops(cpu::detected(), 1, Duration::from_millis(300));
    for kc in [64, 128, 192, 256, 384, 512] {
        let reps = (20_000_000_000 / (kc * 2048)).max(1);
        if let Some(rate) = amx_kernel_gflops(kc, reps) {
            println!(
                "amx     A Packed   kc {kc:>4}: {rate:6.1} GFLOP/s = {:5.1}× the f32 FMA peak",
                rate / peak
            );
        }
    }
}
