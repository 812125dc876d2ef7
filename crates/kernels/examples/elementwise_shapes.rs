use std::time::Instant;
use tessera_kernels::{gelu, layernorm, par};
fn main() {
    // tiny32 encoder fc1 output: 64·17 rows × 768; decoder: 64·65 × 512.
    for (name, rows, d) in [
        ("tiny32 enc mlp", 1088, 768),
        ("tiny32 dec mlp", 4160, 512),
        ("base224 dec mlp", 1576, 2048),
    ] {
        let n = rows * d;
        let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 100.0).collect();
        let mut o = vec![0f32; n];
        let mut g = vec![0f32; n];
        let reps = 50;
        gelu::forward(&mut o, &x);
        let t = Instant::now();
        for _ in 0..reps {
            gelu::forward(&mut o, &x);
        }
        let f = t.elapsed().as_secs_f64() / reps as f64;
        gelu::backward(&mut g, &x, &x);
        let t = Instant::now();
        for _ in 0..reps {
            gelu::backward(&mut g, &x, &x);
        }
        let b = t.elapsed().as_secs_f64() / reps as f64;
        let mut cs = vec![0f32; d];
        let t = Instant::now();
        for _ in 0..reps {
            par::col_sum_add(&mut cs, &x, rows, d);
        }
        let c = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:<16} {n:>8} elems  gelu fwd {:6.3} ms ({:5.2} G/s)  bwd {:6.3} ms ({:5.2} G/s)  colsum {:6.3} ms ({:5.1} GB/s)",
            f * 1e3,
            n as f64 / f / 1e9,
            b * 1e3,
            n as f64 / b / 1e9,
            c * 1e3,
            4.0 * n as f64 / c / 1e9
        );
        let (dd, r2) = (if d == 768 { 192 } else { d / 4 }, rows);
        let xs = &x[..r2 * dd];
        let w = vec![1.0f32; dd];
        let bb = vec![0.0f32; dd];
        let mut out = vec![0f32; r2 * dd];
        let (mut m, mut s) = (vec![0f32; r2], vec![0f32; r2]);
        let t = Instant::now();
        for _ in 0..reps {
            layernorm::forward(&mut out, &mut m, &mut s, xs, &w, &bb, r2, dd, 1e-6);
        }
        let lf = t.elapsed().as_secs_f64() / reps as f64;
        let mut di = vec![0f32; r2 * dd];
        let (mut dw, mut db) = (vec![0f32; dd], vec![0f32; dd]);
        let t = Instant::now();
        for _ in 0..reps {
            layernorm::backward(Some(&mut di), &mut dw, &mut db, xs, xs, &w, &m, &s, r2, dd);
        }
        let lb = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{:<16} layernorm {r2}x{dd}: fwd {:6.3} ms ({:5.1} GB/s) bwd {:6.3} ms ({:5.1} GB/s)",
            "",
            lf * 1e3,
            8.0 * (r2 * dd) as f64 / lf / 1e9,
            lb * 1e3,
            16.0 * (r2 * dd) as f64 / lb / 1e9
        );
    }
}
