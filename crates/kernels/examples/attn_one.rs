//! One attention shape forward + backward, repeated, for profiling:
//! `attn_one B N D H`.
use tessera_kernels::attention::{AttnDims, AttnGrads, backward, forward};
use tessera_kernels::gemm::Precision;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap()).collect();
    let dims = AttnDims::new(a[0], a[1], a[2], a[3]);
    let (b, n, d, h) = (a[0], a[1], a[2], a[3]);
    let qkv: Vec<f32> = (0..b * n * 3 * d)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let mut out = vec![0f32; b * n * d];
    let mut lse = vec![0f32; b * h * n];
    let dout = vec![0.01f32; b * n * d];
    let mut dqkv = vec![0f32; qkv.len()];
    let t = std::time::Instant::now();
    for _ in 0..200 {
        forward(Precision::F32, &mut out, &mut lse, &qkv, None, dims);
        let grads = AttnGrads {
            dqkv: tessera_kernels::GradOut::overwrite(&mut dqkv),
            dbias: None,
        };
        backward(Precision::F32, grads, &dout, &lse, &qkv, None, dims);
    }
    println!(
        "{:.3} ms per forward + backward",
        t.elapsed().as_secs_f64() * 1e3 / 200.0
    );
}
