//! Prints the machine's measured FMA peak (per ISA, 1 and all threads) and
//! memory bandwidth: `cargo run --release -p tessera-kernels --example peak`.

use std::time::Duration;
use tessera_kernels::cpu::{self, Isa};
use tessera_kernels::peak::{amx_gflops, copy_gbs, fma_gflops};

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("detected ISA: {}, {threads} threads", cpu::detected().name());
    for isa in cpu::available() {
        let one = fma_gflops(isa, 1, Duration::from_millis(500));
        let all = fma_gflops(isa, threads, Duration::from_millis(500));
        println!(
            "FMA peak {:<7} 1 thread {one:7.1} GFLOP/s   {threads} threads {all:7.1} GFLOP/s",
            isa.name()
        );
    }
    let amx = |t| amx_gflops(t, Duration::from_millis(500));
    if let (Some(one), Some(all)) = (amx(1), amx(threads)) {
        println!("AMX bf16 peak   1 thread {one:7.1} GFLOP/s   {threads} threads {all:7.1} GFLOP/s");
    }
    let _ = Isa::Scalar;
    for (label, bytes) in [("L2-resident 1 MiB", 1 << 20), ("DRAM 512 MiB", 512 << 20)] {
        println!(
            "copy bandwidth {label:<18} 1 thread {:6.1} GB/s   {threads} threads {:6.1} GB/s",
            copy_gbs(bytes, 1, 5),
            copy_gbs(bytes, threads, 5)
        );
    }
}
