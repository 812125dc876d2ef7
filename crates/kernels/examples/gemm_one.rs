use tessera_kernels::gemm::{MatMut, MatRef, gemm_serial};
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let t = std::time::Instant::now();
    let reps = 10;
    for _ in 0..reps {
        gemm_serial(
            1.0,
            MatRef::row_major(&a, n, n),
            MatRef::row_major(&b, n, n),
            0.0,
            MatMut::row_major(&mut c, n, n),
        );
    }
    println!(
        "{:.1} GFLOP/s",
        2.0 * (n * n * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
    );
}
