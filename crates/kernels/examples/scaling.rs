//! What P threads would pay for splitting the ViT products, measured on one
//! core: `cargo run --release -p tessera-kernels --example scaling`.
//!
//! For each shape the driver's split for P threads runs part after part on
//! this thread (`gemm::split_profile`). With `T1` the undivided product's
//! time, P threads would take at best `pack/P + max(part)`; against the ideal
//! `T1/P` the overhead is `(pack/P + max part) / (T1/P) − 1`, made of extra
//! work (Σ parts + pack > T1: smaller blocks, repeated A packing) and
//! imbalance (max part > mean part). What it does not see: memory bandwidth
//! and L3 shared by P cores, and fork/join latency.

use std::time::Duration;
use tessera_kernels::gemm::{MatMut, MatRef, SplitTimes, split_profile};

fn best(runs: usize, f: &mut dyn FnMut() -> SplitTimes) -> SplitTimes {
    // Element-wise minimum over runs: each part's least disturbed time.
    let mut best = f();
    for _ in 1..runs {
        let t = f();
        best.pack = best.pack.min(t.pack);
        for (b, x) in best.parts.iter_mut().zip(t.parts) {
            *b = (*b).min(x);
        }
    }
    best
}

fn main() {
    println!(
        "{:<22} {:>16} {:>9} {:>3} {:>6} {:>8} {:>10} {:>9}",
        "shape", "M K N", "T1 ms", "P", "parts", "extra", "imbalance", "overhead"
    );
    for (name, m, k, n, ta, tb) in [
        ("tiny32 enc qkv fwd", 1088, 192, 576, false, true),
        ("tiny32 enc fc2 fwd", 1088, 768, 192, false, true),
        ("tiny32 enc fc1 dW", 768, 1088, 192, true, false),
        ("tiny32 dec fc1 fwd", 4160, 128, 512, false, true),
        ("base224 enc qkv fwd", 400, 768, 2304, false, true),
        ("base224 enc fc2 fwd", 400, 3072, 768, false, true),
        ("base224 enc fc1 dW", 3072, 400, 768, true, false),
        ("base224 dec fc1 fwd", 1576, 512, 2048, false, true),
        ("base224 dec fc1 dX", 1576, 2048, 512, false, false),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let (av, bv) = (MatRef::stored(&a, m, k, ta), MatRef::stored(&b, k, n, tb));
        let mut profile = |p: usize| {
            best(5, &mut || {
                split_profile(p, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n))
                    .expect("the driver needs AVX2 or AVX-512")
            })
        };
        let one = profile(1);
        let t1 = one.pack + one.parts.iter().sum::<Duration>();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for p in [2, 4, 8, 16] {
            let t = profile(p);
            let sum = t.pack + t.parts.iter().sum::<Duration>();
            let max = *t.parts.iter().max().unwrap();
            let mean = t.parts.iter().sum::<Duration>() / t.parts.len() as u32;
            let predicted = ms(t.pack) / p as f64 + ms(max);
            println!(
                "{name:<22} {:>16} {:>9.3} {p:>3} {:>6} {:>7.1}% {:>9.1}% {:>8.1}%",
                format!("{m} {k} {n}"),
                ms(t1),
                t.parts.len(),
                (ms(sum) / ms(t1) - 1.0) * 100.0,
                (ms(max) / ms(mean) - 1.0) * 100.0,
                (predicted / (ms(t1) / p as f64) - 1.0) * 100.0,
            );
        }
    }
}
