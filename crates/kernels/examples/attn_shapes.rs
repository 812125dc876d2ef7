//! Attention forward and backward on the model shapes, with GFLOP/s:
//! `cargo run --release -p tessera-kernels --example attn_shapes`
//! (`TESSERA_MATMUL=bf16`: the per-head products in bf16).
use std::time::Instant;
use tessera_kernels::attention::{AttnDims, AttnGrads, backward, forward};
use tessera_kernels::gemm::Precision;

/// Mean seconds of 20 calls of `f`, after one untimed warm-up call.
fn seconds_per_call(mut f: impl FnMut()) -> f64 {
    const REPS: u32 = 20;
    f();
    let t = Instant::now();
    for _ in 0..REPS {
        f();
    }
    t.elapsed().as_secs_f64() / REPS as f64
}

fn main() {
    let prec = match std::env::var("TESSERA_MATMUL").as_deref() {
        Ok("bf16") => Precision::Bf16.available(),
        _ => Precision::F32,
    };
    println!("products in {}", prec.name());
    for (name, b, n, d, h) in [
        ("tiny32 enc", 64, 17, 192, 3),
        ("tiny32 dec", 64, 65, 128, 4),
        ("base224 enc", 8, 50, 768, 12),
        ("base224 dec", 8, 197, 512, 16),
        ("vit-b full", 8, 197, 768, 12),
    ] {
        let dims = AttnDims::new(b, n, d, h);
        let qkv: Vec<f32> = (0..b * n * 3 * d)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut out = vec![0f32; b * n * d];
        let mut lse = vec![0f32; b * h * n];
        let dout = vec![0.01f32; b * n * d];
        let mut dqkv = vec![0f32; qkv.len()];
        let fl = 2.0 * dims.forward_macs() as f64; // 2 FLOPs per multiply-add
        let tf = seconds_per_call(|| forward(prec, &mut out, &mut lse, &qkv, None, dims));
        let tb = seconds_per_call(|| {
            let grads = AttnGrads {
                dqkv: tessera_kernels::GradOut::add(&mut dqkv),
                dbias: None,
            };
            backward(prec, grads, &dout, &lse, &qkv, None, dims)
        });
        println!(
            "{name:<12} fwd {:7.3} ms {:6.1} GFLOP/s   bwd {:7.3} ms {:6.1} GFLOP/s (bwd counted as 2.5x fwd)",
            tf * 1e3,
            fl / tf / 1e9,
            tb * 1e3,
            2.5 * fl / tb / 1e9
        );
    }
}
