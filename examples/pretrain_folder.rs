//! Pre-train MAE on a folder of images, as a library call:
//! `cargo run --release --example pretrain_folder -- DIR [OUT] [STEPS]`.
//!
//! `DIR` holds PNG/JPEG files (class subfolders are fine; `train/` and
//! `test/` subfolders are used as the splits if present). The run writes
//! checkpoints, metrics and reconstruction pictures into `OUT`
//! (default `runs/folder`) and can be resumed by running it again.

use std::path::PathBuf;
use tessera_mim::data::Split;
use tessera_mim::data::folder::{DEFAULT_VAL_FRACTION, ImageFolder};
use tessera_mim::run::pretrain::PretrainRun;
use tessera_mim::run::{Observer, RunOptions, RunStart};
use tessera_mim::{DecoderConfig, Method, ModelConfig, PixelLoss, StepStats, TargetConfig, TrainConfig, VitConfig};

/// Prints a line every 20 steps.
struct Print;

impl Observer for Print {
    fn started(&mut self, run: &RunStart) {
        println!(
            "{} images of {}, step {} of {}",
            run.train_images, run.data_name, run.start_step, run.total_steps
        );
    }
    fn step(&mut self, s: &StepStats, images_per_s: f64) {
        if s.step.is_multiple_of(20) {
            println!(
                "step {:5}  loss {:.4}  lr {:.2e}  {images_per_s:.0} images/s",
                s.step, s.loss, s.lr
            );
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: pretrain_folder DIR [OUT] [STEPS]")?);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "runs/folder".into()));
    let steps: u64 = args.next().map_or(Ok(2000), |s| s.parse())?;
    let (train, test) = (
        ImageFolder::open(&dir, Split::Train, DEFAULT_VAL_FRACTION)?,
        ImageFolder::open(&dir, Split::Test, DEFAULT_VAL_FRACTION)?,
    );
    // A ViT-Tiny on 64×64 images in patches of 8, MAE's normalised-pixel
    // target, batches of 8.
    let model = ModelConfig {
        encoder: VitConfig::preset("vit-tiny", [64, 64], 8, 3)?.into(),
        method: Method::Mae {
            decoder: DecoderConfig::small(),
        },
        target: TargetConfig::Pixels {
            loss: PixelLoss::Mse,
            norm_pix: true,
        },
    };
    let config = TrainConfig::mae(model, 8, steps);
    let mut options = RunOptions::new(&out);
    options.resume = out.join("checkpoint.safetensors").exists();
    let end = PretrainRun::new(config, &train, &test, options)?.run(&mut Print)?;
    println!("checkpoint {}, pictures {:?}", end.checkpoint.display(), end.picture);
    Ok(())
}
