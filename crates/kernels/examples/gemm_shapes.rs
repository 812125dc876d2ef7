use std::time::Instant;
use tessera_kernels::gemm::{MatMut, MatRef, Precision, gemm, gemm_serial};
fn bench(name: &str, m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let av = MatRef::stored(&a, m, k, ta);
    let bv = MatRef::stored(&b, k, n, tb);
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((2e10 / flops) as usize).clamp(3, 2000);
    let mut run = |par: bool| {
        for _ in 0..2 {
            if par {
                gemm(Precision::F32, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n))
            } else {
                gemm_serial(Precision::F32, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n))
            }
        }
        let t = Instant::now();
        for _ in 0..reps {
            if par {
                gemm(Precision::F32, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n))
            } else {
                gemm_serial(Precision::F32, 1.0, av, bv, 0.0, MatMut::row_major(&mut c, m, n))
            }
        }
        flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    let s = run(false);
    let p = run(true);
    println!("{name:<28} m{m:>5} k{k:>5} n{n:>5}  1 thread {s:6.1}  rayon split {p:6.1} GFLOP/s");
}
fn main() {
    for (name, m, k, n, ta, tb) in [
        ("tiny32 enc qkv fwd", 1088, 192, 576, false, true),
        ("tiny32 enc fc1 fwd", 1088, 192, 768, false, true),
        ("tiny32 enc fc2 fwd", 1088, 768, 192, false, true),
        ("tiny32 enc fc1 dX", 1088, 768, 192, false, false),
        ("tiny32 enc fc1 dW", 768, 1088, 192, true, false),
        ("tiny32 dec fc1 fwd", 4160, 128, 512, false, true),
        ("tiny32 dec fc2 fwd", 4160, 512, 128, false, true),
        ("tiny32 dec fc1 dW", 512, 4160, 128, true, false),
        ("base224 enc qkv fwd", 400, 768, 2304, false, true),
        ("base224 enc fc1 fwd", 400, 768, 3072, false, true),
        ("base224 enc fc2 fwd", 400, 3072, 768, false, true),
        ("base224 enc fc1 dW", 3072, 400, 768, true, false),
        ("base224 dec fc1 fwd", 1576, 512, 2048, false, true),
        ("base224 dec fc2 fwd", 1576, 2048, 512, false, true),
        ("base224 dec fc1 dX", 1576, 2048, 512, false, false),
        ("base224 dec fc1 dW", 2048, 1576, 512, true, false),
        ("square 2048", 2048, 2048, 2048, false, false),
    ] {
        bench(name, m, k, n, ta, tb);
    }
}
