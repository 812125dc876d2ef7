//! `tessera bench`: full training steps (masking, forward, backward, AdamW)
//! timed after a warm-up, reported as one JSON line. The two reference
//! workloads of the PyTorch comparison are available by name.

use crate::common::{ModelArgs, PrecisionArg, default_cell_px, peak_rss_mib};
use anyhow::{Result, bail};
use clap::ValueEnum;
use rand::{RngExt, SeedableRng};
use std::time::{Duration, Instant};
use tessera_mim::model::flops;
use tessera_mim::train::pretrain::{TrainConfig, Trainer};
use tessera_mim::{
    DecoderConfig, MaskingConfig, Method, MimRng, ModelConfig, PixelLoss, SwinConfig, TargetConfig, VitConfig,
};
use tessera_tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 3×32×32, patch 4, encoder 192/12/3, decoder 128/4/4, batch 64.
    Tiny32,
    /// 3×224×224, patch 16, ViT-Base encoder, decoder 512/8/16, batch 8.
    Base224,
    /// SimMIM on Swin-T: 3×224×224, patch 4, window 7, 32-pixel mask cells
    /// at 0.6, L1 on pixels, batch 8.
    SwinTiny224,
    /// SimMIM on swin-mini: 3×32×32, patch 2, window 4, 8-pixel mask cells
    /// at 0.6, L1 on pixels, batch 64.
    SwinMini32,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A reference workload (overrides the model options and --batch).
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Fraction of patches hidden (default: 0.75 with MAE, random patches;
    /// 0.6 with SimMIM, its cells).
    #[arg(long, allow_negative_numbers = true)]
    pub mask_ratio: Option<f32>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Arithmetic of matrix products.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Seed of weights, images and masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The reference workloads: (name, model, batch).
pub fn workload(w: Workload) -> (&'static str, ModelConfig, usize) {
    let target = TargetConfig::Pixels {
        loss: PixelLoss::Mse,
        norm_pix: true,
    };
    match w {
        Workload::Tiny32 => {
            let encoder = VitConfig::preset("vit-tiny", [32, 32], 4, 3)
                .expect("valid preset")
                .into();
            (
                "tiny32",
                ModelConfig {
                    encoder,
                    method: Method::Mae {
                        decoder: DecoderConfig::small(),
                    },
                    target,
                },
                64,
            )
        }
        Workload::Base224 => {
            let encoder = VitConfig::preset("vit-base", [224, 224], 16, 3)
                .expect("valid preset")
                .into();
            (
                "base224",
                ModelConfig {
                    encoder,
                    method: Method::Mae {
                        decoder: DecoderConfig::mae_default(),
                    },
                    target,
                },
                8,
            )
        }
        Workload::SwinTiny224 | Workload::SwinMini32 => {
            let (name, preset, size, batch) = match w {
                Workload::SwinTiny224 => ("swin-tiny224", "swin-tiny", 224, 8),
                _ => ("swin-mini32", "swin-mini", 32, 64),
            };
            let encoder = SwinConfig::preset(preset, [size, size], 3)
                .expect("valid preset")
                .into();
            let target = TargetConfig::Pixels {
                loss: PixelLoss::L1,
                norm_pix: false,
            };
            (
                name,
                ModelConfig {
                    encoder,
                    method: Method::SimMim,
                    target,
                },
                batch,
            )
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (name, model, batch) = match args.workload {
        Some(w) => workload(w),
        None => ("custom", args.model.build(None)?, args.batch),
    };
    // MAE hides random patches; SimMIM random cells of its default size.
    let simmim = matches!(model.method, Method::SimMim);
    let ratio = args.mask_ratio.unwrap_or(if simmim { 0.6 } else { 0.75 });
    let masking = if simmim {
        MaskingConfig::SimMim {
            ratio,
            cell_px: default_cell_px(model.encoder.patch_size(), model.encoder.img_size()),
        }
    } else {
        MaskingConfig::Random { ratio }
    };
    let mut config = TrainConfig::mae(model, batch, (args.warmup + args.steps) as u64);
    config.masking = masking;
    config.warmup_steps = 1;
    config.seed = args.seed;
    config.precision = args.precision.config();
    config.validate()?;
    let e = &config.model.encoder;
    // Fresh random images for every step, made before any timing.
    let n_img = batch * e.in_chans() * e.img_size()[0] * e.img_size()[1];
    // Sized before anything is allocated: the step, and the images.
    let images_bytes = 4 * n_img as u128 * (args.warmup + args.steps) as u128;
    let estimate = tessera_mim::train::memory::training_bytes(&config) + images_bytes;
    tessera_mim::train::memory::check(
        "this benchmark",
        estimate,
        None,
        "reduce --batch, --img-size, --dim, --depth or --steps",
    )?;
    let mut trainer = Trainer::new(config.clone())?;
    let e = &config.model.encoder;
    let mut rng = MimRng::seed_from_u64(args.seed);
    let batches: Vec<Tensor> = (0..args.warmup + args.steps)
        .map(|_| {
            Tensor::new(
                (0..n_img).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
                &[batch, e.in_chans(), e.img_size()[0], e.img_size()[1]],
            )
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut times = Vec::with_capacity(args.steps);
    for (i, imgs) in batches.iter().enumerate() {
        let t = Instant::now();
        trainer.train_step(imgs)?;
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let l = e.num_patches();
    let len_keep = l - tessera_mim::model::masking::hidden_count(l, ratio);
    let gflop = flops::train_step(&config.model, len_keep, batch) / 1e9;
    // Model FLOPs utilisation: the step's useful GFLOP/s over this machine's
    // f32 FMA peak on the same threads, measured now (after the timed steps).
    let threads = rayon::current_num_threads();
    let peak = tessera_kernels::peak::fma_gflops(tessera_kernels::cpu::isa(), threads, Duration::from_millis(400));
    let line = serde_json::json!({
        "engine": "tessera",
        "version": env!("CARGO_PKG_VERSION"),
        "workload": name,
        "batch": batch,
        "threads": threads,
        "cpu": tessera_mim::run::cpu_name(),
        "isa": tessera_kernels::cpu::isa().name(),
        "precision": format!("{:?}", config.precision).to_lowercase(),
        // Which kernel ran the bf16 products (null: f32 ones).
        "bf16_kernel": (config.precision == tessera_kernels::gemm::Precision::Bf16)
            .then(tessera_kernels::gemm::bf16_kernel)
            .flatten(),
        "steps": args.steps,
        "images_per_s": batch as f64 / med,
        "median_step_s": med,
        "min_step_s": min,
        "gflop_per_step": gflop,
        "gflops": gflop / med,
        "peak_gflops": peak,
        "mfu": gflop / med / peak,
        "peak_rss_mb": peak_rss_mib(),
        // What `--max-memory` checks would have assumed (train::memory).
        "estimated_mb": estimate as f64 / (1u64 << 20) as f64,
    });
    println!("{line}");
    Ok(())
}
