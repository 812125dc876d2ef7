//! One product shape, repeated: `gemm_one M K N [ta tb]`, for profiling with
//! perf; `TESSERA_MATMUL=bf16` runs it in bf16.
use std::time::Instant;
use tessera_kernels::gemm::{MatMut, MatRef, Precision, gemm};
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (m, k, n) = (args[0], args[1], args[2]);
    let (ta, tb) = (
        args.get(3).copied().unwrap_or(0) == 1,
        args.get(4).copied().unwrap_or(0) == 1,
    );
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let (av, bv) = (MatRef::stored(&a, m, k, ta), MatRef::stored(&b, k, n, tb));
    let prec = match std::env::var("TESSERA_MATMUL").as_deref() {
        Ok("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((1e11 / flops) as usize).max(3);
    let t = Instant::now();
    for _ in 0..reps {
        gemm(prec, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n));
    }
    println!("{:.1} GFLOP/s", flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
}
