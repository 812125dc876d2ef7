//! Kernel benchmarks: `cargo bench --bench kernels`.
//!
//! Every kernel on real ViT shapes, on every instruction-set path this CPU has,
//! with criterion's throughput in FLOP/s (compute-bound kernels:
//! `Throughput::Elements(flops)`) or bytes/s (memory-bound ones:
//! `Throughput::Bytes(bytes read + written)`). The `peak` group measures the
//! ceilings the other numbers are compared with: the FMA peak on 1 and all
//! threads, and the bandwidth of a large copy. docs/benchmarks.md holds a run.
//!
//! Shapes: ViT-Base MAE on 224×224 with batch 8 (encoder 8 × 50 tokens of 768,
//! decoder 8 × 197 tokens of 512; full ViT-B/16 8 × 197 × 768) and ViT-Tiny on
//! 32×32 with batch 64 (encoder 64 × 17 × 192, decoder 64 × 65 × 128).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use tessera_kernels::attention::{self, AttnDims, AttnGrads};
use tessera_kernels::cpu;
use tessera_kernels::gemm::{self, MatMut, MatRef, Precision};
use tessera_kernels::layernorm::{LnDims, LnGrads};
use tessera_kernels::patch::{self, EmbedDims, EmbedGrads, PatchDims};
use tessera_kernels::{GradOut, adamw, gelu, layernorm, loss, peak, softmax};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// A group with short runs: 10 samples over about a second.
fn quick<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g
}

fn threads() -> usize {
    rayon::current_num_threads()
}

fn bench_peak(c: &mut Criterion) {
    let mut g = quick(c, "peak");
    let iters = 1 << 20;
    for isa in cpu::available() {
        for t in [1, threads()] {
            g.throughput(Throughput::Elements(peak::fma_loop_flops(isa, iters) as u64 * t as u64));
            g.bench_function(
                BenchmarkId::new(format!("fma_{}", isa.name()), format!("{t}_threads")),
                |b| b.iter(|| black_box(peak::fma_loop(isa, iters, t))),
            );
        }
    }
    let n = 64 << 20; // 256 MiB of f32: far beyond the caches
    let mut src = vec![0f32; n]; // allocated like the copy in examples/peak.rs
    src.fill(1.0);
    let mut dst = vec![0f32; n];
    g.throughput(Throughput::Bytes(8 * n as u64));
    g.bench_function("copy_256MiB", |b| {
        b.iter(|| {
            let chunk = n.div_ceil(threads());
            std::thread::scope(|s| {
                for (d, x) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                    s.spawn(move || d.copy_from_slice(x));
                }
            });
        })
    });
    g.finish();
}

fn bench_gemm(c: &mut Criterion) {
    let mut g = quick(c, "gemm");
    // (name, M, K, N): a linear layer's forward is (tokens, in) · (in, out); the
    // backward's dX is (tokens, out) · (out, in) and dW is (out, tokens) · (tokens, in).
    let shapes = [
        ("vitb_enc_qkv", 400, 768, 2304),
        ("vitb_enc_fc1", 400, 768, 3072),
        ("vitb_enc_fc2", 400, 3072, 768),
        ("vitb_dec_fc1", 1576, 512, 2048),
        ("vitb_full_fc1", 1576, 768, 3072),
        ("vitt_enc_fc1", 1088, 192, 768),
        ("vitt_dec_fc1", 4160, 128, 512),
    ];
    let precisions: Vec<Precision> = if gemm::bf16_available() {
        vec![Precision::F32, Precision::Bf16]
    } else {
        vec![Precision::F32]
    };
    for &(name, m, k, n) in &shapes {
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let dy = data(m * n, 3);
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        for &p in &precisions {
            g.bench_function(BenchmarkId::new(format!("{name}_fwd"), p.name()), |b| {
                b.iter(|| {
                    gemm::gemm(
                        p,
                        1.0,
                        MatRef::row_major(&x, m, k),
                        MatRef::row_major(&w, n, k).t(),
                        0.0,
                        MatMut::row_major(&mut y, m, n),
                    )
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}_dx"), p.name()), |b| {
                b.iter(|| {
                    gemm::gemm(
                        p,
                        1.0,
                        MatRef::row_major(&dy, m, n),
                        MatRef::row_major(&w, n, k),
                        0.0,
                        MatMut::row_major(&mut dx, m, k),
                    )
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}_dw"), p.name()), |b| {
                b.iter(|| {
                    gemm::gemm(
                        p,
                        1.0,
                        MatRef::row_major(&dy, m, n).t(),
                        MatRef::row_major(&x, m, k),
                        0.0,
                        MatMut::row_major(&mut dw, n, k),
                    )
                })
            });
        }
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let mut g = quick(c, "attention");
    let cases = [
        ("vitb_full", AttnDims::new(8, 197, 768, 12)),
        ("vitb_dec", AttnDims::new(8, 197, 512, 16)),
        ("vitb_enc", AttnDims::new(8, 50, 768, 12)),
        ("vitt_dec", AttnDims::new(64, 65, 128, 4)),
        ("vitt_enc", AttnDims::new(64, 17, 192, 3)),
    ];
    for (name, d) in cases {
        let qkv = data(d.b * d.n * 3 * d.d, 1);
        let dout = data(d.b * d.n * d.d, 2);
        let mut out = vec![0f32; d.b * d.n * d.d];
        let mut lse = vec![0f32; d.b * d.h * d.n];
        let mut dqkv = vec![0f32; qkv.len()];
        attention::forward(Precision::F32, &mut out, &mut lse, &qkv, None, d);
        for isa in cpu::available() {
            // Forward: QKᵀ and PV, 2·(2·N²·Dh) per head.
            g.throughput(Throughput::Elements(2 * d.forward_macs() as u64));
            g.bench_function(BenchmarkId::new(format!("{name}_fwd"), isa.name()), |b| {
                b.iter(|| {
                    cpu::with_isa(isa, || {
                        attention::forward(Precision::F32, &mut out, &mut lse, &qkv, None, d)
                    })
                })
            });
            // Backward: five products of the same size (S recomputed, dP, dV, dQ, dK).
            g.throughput(Throughput::Elements(5 * d.forward_macs() as u64));
            g.bench_function(BenchmarkId::new(format!("{name}_bwd"), isa.name()), |b| {
                b.iter(|| {
                    let grads = AttnGrads {
                        dqkv: GradOut::overwrite(&mut dqkv),
                        dbias: None,
                    };
                    cpu::with_isa(isa, || {
                        attention::backward(Precision::F32, grads, &dout, &lse, &qkv, None, d)
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let mut g = quick(c, "elementwise");
    // ViT-B/16 activations of a batch of 8: 1576 tokens × 768 (LayerNorm) and
    // × 3072 (the MLP's GELU), 19 MB: beyond L2.
    let (rows, d, hidden) = (1576usize, 768usize, 3072usize);
    let x = data(rows * d, 1);
    let w = data(d, 2);
    let bias = data(d, 3);
    let dout = data(rows * d, 4);
    let (mut y, mut mean, mut rstd) = (vec![0f32; rows * d], vec![0f32; rows], vec![0f32; rows]);
    let mut dx = vec![0f32; rows * d];
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    let h = data(rows * hidden, 5);
    let dh = data(rows * hidden, 6);
    let mut gy = vec![0f32; rows * hidden];
    let scores = data(8 * 12 * 197 * 197, 7);
    let mut probs = vec![0f32; scores.len()];
    let mut dscores = vec![0f32; scores.len()];
    let params = 16 << 20;
    let (mut p, grad) = (data(params, 8), data(params, 9));
    let (mut m, mut v) = (vec![0f32; params], vec![0f32; params]);
    let step = adamw::AdamWStep {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.05,
        step: 10,
    };
    let (pred, target) = (data(8 * 196 * 768, 10), data(8 * 196 * 768, 11));
    let mask: Vec<f32> = (0..8 * 196).map(|i| (i % 4 != 0) as u8 as f32).collect();
    let mut dpred = vec![0f32; pred.len()];
    let mse = loss::Regression {
        distance: loss::Distance::Squared,
        rows: 8 * 196,
        p: 768,
    };
    let ln = LnDims { rows, d, eps: 1e-6 };
    layernorm::forward(&mut y, &mut mean, &mut rstd, &x, &w, &bias, ln);
    for isa in cpu::available() {
        let id = |name: &str| BenchmarkId::new(name.to_string(), isa.name());
        g.throughput(Throughput::Bytes((4 * 2 * rows * d) as u64));
        g.bench_function(id("layernorm_fwd_vitb"), |b| {
            b.iter(|| {
                cpu::with_isa(isa, || {
                    layernorm::forward(&mut y, &mut mean, &mut rstd, &x, &w, &bias, ln)
                })
            })
        });
        g.throughput(Throughput::Bytes((4 * 3 * rows * d) as u64));
        g.bench_function(id("layernorm_bwd_vitb"), |b| {
            b.iter(|| {
                let grads = LnGrads {
                    dinp: Some(GradOut::overwrite(&mut dx)),
                    dweight: GradOut::add(&mut dw),
                    dbias: GradOut::add(&mut db),
                };
                cpu::with_isa(isa, || layernorm::backward(grads, &dout, &mean, &rstd, &x, &w, ln))
            })
        });
        g.throughput(Throughput::Bytes((4 * 2 * rows * hidden) as u64));
        g.bench_function(id("gelu_fwd_vitb_mlp"), |b| {
            b.iter(|| cpu::with_isa(isa, || gelu::forward(&mut gy, &h)))
        });
        g.throughput(Throughput::Bytes((4 * 3 * rows * hidden) as u64));
        g.bench_function(id("gelu_bwd_vitb_mlp"), |b| {
            b.iter(|| cpu::with_isa(isa, || gelu::backward(GradOut::overwrite(&mut gy), &dh, &h)))
        });
        g.throughput(Throughput::Bytes((4 * 2 * scores.len()) as u64));
        g.bench_function(id("softmax_fwd_vitb_scores"), |b| {
            b.iter(|| cpu::with_isa(isa, || softmax::forward(&mut probs, &scores, 8 * 12 * 197, 197)))
        });
        g.throughput(Throughput::Bytes((4 * 3 * scores.len()) as u64));
        g.bench_function(id("softmax_bwd_vitb_scores"), |b| {
            b.iter(|| {
                let g = GradOut::add(&mut dscores);
                cpu::with_isa(isa, || softmax::backward(g, &scores, &probs, 8 * 12 * 197, 197))
            })
        });
        g.throughput(Throughput::Bytes((4 * 2 * pred.len()) as u64));
        g.bench_function(id("mse_fwd_vitb_patches"), |b| {
            b.iter(|| {
                black_box(cpu::with_isa(isa, || {
                    loss::regression_forward(&pred, &target, Some(&mask), mse)
                }))
            })
        });
        g.throughput(Throughput::Bytes((4 * 3 * pred.len()) as u64));
        g.bench_function(id("mse_bwd_vitb_patches"), |b| {
            b.iter(|| {
                let g = Some(GradOut::add(&mut dpred));
                cpu::with_isa(isa, || {
                    loss::regression_backward(g, None, 1.0, &pred, &target, Some(&mask), mse)
                })
            })
        });
        // AdamW reads p, g, m, v and writes p, m, v.
        g.throughput(Throughput::Bytes((4 * 7 * params) as u64));
        g.bench_function(id("adamw_16M_params"), |b| {
            b.iter(|| cpu::with_isa(isa, || adamw::adamw(&mut p, &grad, &mut m, &mut v, step)))
        });
    }
    g.finish();
}

fn bench_patch(c: &mut Criterion) {
    let mut g = quick(c, "patch_embed");
    let d = PatchDims::new(8, 3, 224, 224, 16);
    let dim = 768;
    let img = data(d.b * d.image_len(), 1);
    let w = data(dim * d.patch_len(), 2);
    let bias = data(dim, 3);
    let dout = data(d.b * d.l() * dim, 4);
    let mut cols = vec![0f32; img.len()];
    let mut out = vec![0f32; d.b * d.l() * dim];
    let (mut dw, mut db) = (vec![0f32; w.len()], vec![0f32; dim]);
    let flops = 2 * (d.b * d.l() * d.patch_len() * dim) as u64;
    g.throughput(Throughput::Elements(flops));
    let dims = EmbedDims { patches: d, dim };
    g.bench_function("vitb16_fwd", |b| {
        b.iter(|| patch::embed_forward(Precision::F32, &mut out, &mut cols, &img, &w, Some(&bias), dims))
    });
    g.bench_function("vitb16_bwd_weights", |b| {
        b.iter(|| {
            let grads = EmbedGrads {
                dimg: None,
                dweight: Some(GradOut::add(&mut dw)),
                dbias: Some(GradOut::add(&mut db)),
            };
            patch::embed_backward(Precision::F32, grads, &mut cols, &dout, &img, &w, dims)
        })
    });
    let mut patches = vec![0f32; img.len()];
    g.throughput(Throughput::Bytes(8 * img.len() as u64));
    g.bench_function("patchify_vitb16", |b| b.iter(|| patch::patchify(&mut patches, &img, d)));
    g.finish();
}

fn isa_note(_: &mut Criterion) {
    eprintln!(
        "tessera kernels: detected {}, using {}, {} rayon threads, bf16 AMX {}",
        cpu::detected().name(),
        cpu::isa().name(),
        threads(),
        if gemm::bf16_available() {
            "available"
        } else {
            "unavailable"
        }
    );
}

criterion_group!(
    benches,
    isa_note,
    bench_peak,
    bench_gemm,
    bench_attention,
    bench_elementwise,
    bench_patch
);
criterion_main!(benches);
