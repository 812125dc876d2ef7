//! Per-op profile of MAE training steps on the reference workloads:
//! `cargo run --release -p tessera-mim --example profile_step -- tiny32 5`
//! (or `base224`). Prints step times and the engine's per-op time table.

use rand::{RngExt, SeedableRng};
use std::time::Instant;
use tessera_mim::train::pretrain::{TrainConfig, Trainer};
use tessera_mim::{DecoderConfig, Method, MimRng, ModelConfig, PixelLoss, TargetConfig, VitConfig};
use tessera_tensor::{Tensor, profile};

fn main() {
    if std::env::var("INSTALL").is_ok() {
        // Run the whole loop on a worker of a dedicated pool, so that rayon's
        // splits put the same halves of every tensor on the same core.
        let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
        eprintln!("running inside a {}-thread pool", pool.current_num_threads());
        pool.install(run);
    } else {
        run();
    }
}

fn run() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("tiny32");
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let target = TargetConfig::Pixels {
        loss: PixelLoss::Mse,
        norm_pix: true,
    };
    let (model, batch) = match name {
        "base224" => (
            ModelConfig {
                encoder: VitConfig::preset("vit-base", [224, 224], 16, 3).unwrap().into(),
                method: Method::Mae {
                    decoder: DecoderConfig::mae_default(),
                },
                target,
            },
            8,
        ),
        _ => (
            ModelConfig {
                encoder: VitConfig::preset("vit-tiny", [32, 32], 4, 3).unwrap().into(),
                method: Method::Mae {
                    decoder: DecoderConfig::small(),
                },
                target,
            },
            64,
        ),
    };
    let mut cfg = TrainConfig::mae(model, batch, 1000);
    cfg.warmup_steps = 1;
    if std::env::var("TESSERA_MATMUL").is_ok_and(|v| v == "bf16") {
        cfg.precision = tessera_tensor::Precision::Bf16;
    }
    let mut t = Trainer::new(cfg).unwrap();
    let e = &t.config().model.encoder;
    let n = batch * 3 * e.img_size()[0] * e.img_size()[1];
    let mut rng = MimRng::seed_from_u64(0);
    let imgs: Vec<Tensor> = (0..steps + 2)
        .map(|_| {
            Tensor::new(
                (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
                &[batch, 3, e.img_size()[0], e.img_size()[1]],
            )
            .unwrap()
        })
        .collect();
    for im in &imgs[..2] {
        t.train_step(im).unwrap();
    }
    profile::enable();
    let start = Instant::now();
    for im in &imgs[2..] {
        let s = Instant::now();
        let st = t.train_step(im).unwrap();
        println!(
            "step {:>3}: {:.3} s  loss {:.4}",
            st.step,
            s.elapsed().as_secs_f64(),
            st.loss
        );
    }
    let per = start.elapsed().as_secs_f64() / steps as f64;
    println!("{name}: {per:.3} s/step, {:.1} images/s", batch as f64 / per);
    profile::disable();
    // The ceilings on the threads the steps ran on: the products' peak (f32
    // FMA, or the AMX tiles' for a bf16 step where the CPU has them) and a
    // copy of 512 MiB (DRAM; an op whose data stays in L3, AdamW on a small
    // model, may exceed it).
    let threads = rayon::current_num_threads();
    let time = std::time::Duration::from_millis(400);
    let fma = || tessera_kernels::peak::fma_gflops(tessera_kernels::cpu::isa(), threads, time);
    let amx = (t.config().precision == tessera_tensor::Precision::Bf16)
        .then(|| tessera_kernels::peak::amx_gflops(threads, time))
        .flatten();
    let peaks = profile::Peaks {
        gflops: amx.unwrap_or_else(fma),
        compute: if amx.is_some() { "amx" } else { "fma" },
        gbs: tessera_kernels::peak::copy_gbs(512 << 20, threads, 5),
    };
    println!(
        "ceilings on {threads} threads: {} {:.1} GFLOP/s, copy {:.1} GB/s",
        if amx.is_some() { "AMX bf16" } else { "f32 FMA" },
        peaks.gflops,
        peaks.gbs
    );
    print!("{}", profile::format_report(&profile::report(), Some(&peaks)));
}
