use std::time::Instant;
use tessera_kernels::gelu;
fn main() {
    let n = 4160 * 512;
    let sets = 30;
    let xs: Vec<Vec<f32>> = (0..sets)
        .map(|s| (0..n).map(|i| ((i + s) % 1000) as f32 / 250.0 - 2.0).collect())
        .collect();
    let mut os: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; n]).collect();
    for hot in [true, false] {
        let reps = 60;
        let t = Instant::now();
        for r in 0..reps {
            let s = if hot { 0 } else { r % sets };
            gelu::forward(&mut os[s], &xs[s]);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{} gelu fwd {:.3} ms = {:.2} Gelem/s, {:.1} GB/s",
            if hot { "hot " } else { "cold" },
            dt * 1e3,
            n as f64 / dt / 1e9,
            8.0 * n as f64 / dt / 1e9
        );
    }
    // Single thread, cold
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let reps = 30;
        let t = Instant::now();
        for r in 0..reps {
            let s = r % sets;
            gelu::forward(&mut os[s], &xs[s]);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "1 thread cold gelu fwd {:.3} ms = {:.2} Gelem/s",
            dt * 1e3,
            n as f64 / dt / 1e9
        );
    });
}
