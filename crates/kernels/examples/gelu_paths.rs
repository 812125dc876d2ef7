use std::time::Instant;
use tessera_kernels::cpu;
use tessera_kernels::gelu;
fn main() {
    let n = 1 << 24;
    let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 100.0).collect();
    let mut o = vec![0f32; n];
    let mut d = vec![0f32; n];
    for isa in cpu::available() {
        gelu::forward_with(isa, &mut o, &x);
        gelu::backward_with(isa, &mut d, &x, &x);
        let t = Instant::now();
        for _ in 0..5 {
            gelu::forward_with(isa, &mut o, &x);
        }
        let dt = t.elapsed().as_secs_f64() / 5.0;
        let t = Instant::now();
        for _ in 0..5 {
            gelu::backward_with(isa, &mut d, &x, &x);
        }
        let db = t.elapsed().as_secs_f64() / 5.0;
        println!(
            "{:<7} fwd {:.2} Gelem/s ({:.1} GB/s)  bwd {:.2} Gelem/s ({:.1} GB/s)",
            isa.name(),
            n as f64 / dt / 1e9,
            8.0 * n as f64 / dt / 1e9,
            n as f64 / db / 1e9,
            16.0 * n as f64 / db / 1e9
        );
    }
    println!("{}", d[12345]);
}
