use std::time::Instant;
use tessera_kernels::gemm::{MatMut, MatRef, Precision, gemm};
fn bench(name: &str, m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    let bytes = 4 * (m * k + k * n + m * n);
    let sets = (256 << 20) / bytes + 2;
    let a: Vec<Vec<f32>> = (0..sets).map(|s| vec![0.5 + s as f32 * 1e-3; m * k]).collect();
    let b: Vec<Vec<f32>> = (0..sets).map(|s| vec![0.25 + s as f32 * 1e-3; n * k]).collect();
    let mut c: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; m * n]).collect();
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((3e10 / flops) as usize).clamp(sets, 2000);
    let mut out = vec![];
    for hot in [true, false] {
        let t = Instant::now();
        for r in 0..reps {
            let s = if hot { 0 } else { r % sets };
            let av = MatRef::stored(&a[s], m, k, ta);
            let bv = MatRef::stored(&b[s], k, n, tb);
            gemm(Precision::F32, 1.0, av, bv, 0.0, MatMut::row_major(&mut c[s], m, n));
        }
        out.push(flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    println!(
        "{name:<22} m{m:>5} k{k:>5} n{n:>5}: hot {:6.1}  cold {:6.1} GFLOP/s",
        out[0], out[1]
    );
}
fn main() {
    for (name, m, k, n, ta, tb) in [
        ("tiny32 enc fc1 fwd", 1088, 192, 768, false, true),
        ("tiny32 enc fc2 fwd", 1088, 768, 192, false, true),
        ("tiny32 enc fc1 dX", 1088, 768, 192, false, false),
        ("tiny32 enc fc1 dW", 768, 1088, 192, true, false),
        ("tiny32 dec fc1 fwd", 4160, 128, 512, false, true),
        ("tiny32 dec fc1 dW", 512, 4160, 128, true, false),
        ("base224 enc fc1 fwd", 400, 768, 3072, false, true),
        ("base224 enc fc1 dW", 3072, 400, 768, true, false),
        ("base224 dec fc1 fwd", 1576, 512, 2048, false, true),
        ("base224 dec fc1 dX", 1576, 2048, 512, false, false),
        ("base224 dec fc1 dW", 2048, 1576, 512, true, false),
    ] {
        bench(name, m, k, n, ta, tb);
    }
}
