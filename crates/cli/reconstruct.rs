//! `tessera reconstruct`: what a trained model fills in.
//!
//! One PNG, one row per image: original | masked | reconstruction |
//! reconstruction with the visible patches pasted back (the four panels of
//! MAE's demo). Norm-pix predictions are turned back into pixels with the mean
//! and standard deviation of the image's *visible* patches (`--norm-pix-view
//! visible-stats`, the default) or shown normalised (`normalized`).
//! `--dump FILE` also writes `loss` `(1)`, `pred (N, L, out)`, `mask (N, L)`
//! (1 = hidden) and the model inputs `images (N, C, H, W)` as safetensors, to
//! compare number by number with PyTorch.

use crate::common::{EncoderArg, ImageArgs, MaskArgs, OfficialArgs, check_encoder};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tessera_mim::io::checkpoint::{load_model_hinted, train_config};
use tessera_mim::io::picture::{NormPixView, render_rows, save_png};
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::{Mask, MimRng};
use tessera_tensor::{Tensor, no_grad};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ViewArg {
    /// De-normalise hidden patches with the visible patches' statistics.
    VisibleStats,
    /// Show patches normalised, as the model predicts them.
    Normalized,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint written by `tessera pretrain`, or a released MAE or SimMIM
    /// pre-training `state_dict` (`.pth` or safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub official: OfficialArgs,
    /// The encoder family the checkpoint must hold (default: whichever it holds).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    #[command(flatten)]
    pub input: ImageArgs,
    #[command(flatten)]
    pub mask: MaskArgs,
    /// Take the mask from a safetensors file holding `mask (N, L)`, 1 = hidden.
    #[arg(long)]
    pub mask_file: Option<PathBuf>,
    /// Seed of the masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write loss, predictions, mask and inputs as safetensors.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "reconstruction.png")]
    pub out: PathBuf,
    /// How normalised (norm-pix) predictions are shown.
    #[arg(long, value_enum, default_value = "visible-stats")]
    pub norm_pix_view: ViewArg,
    /// Integer upscaling of every panel (default: to at least 96 pixels).
    #[arg(long)]
    pub scale: Option<u32>,
}

fn load_mask_file(path: &Path, n: usize, l: usize) -> Result<Mask> {
    let file = TensorFile::load(path)?;
    let m = file.get("mask", path)?;
    if m.shape != [n, l] {
        bail!(
            "{}: mask has shape {:?}, want [{n}, {l}] (images × patches)",
            path.display(),
            m.shape
        );
    }
    if let Some(v) = m.data.iter().find(|v| **v != 0.0 && **v != 1.0) {
        bail!("{}: mask values must be 0 or 1, found {v}", path.display());
    }
    Ok(Mask::from_hidden(m.data.iter().map(|v| *v == 1.0).collect(), n, l)?)
}

pub fn run(args: Args) -> Result<()> {
    let model = load_model_hinted(&args.checkpoint, None, &args.official.hints(), true)?;
    check_encoder(args.encoder, &model, &args.checkpoint)?;
    // The masking it was trained with, where the checkpoint says (MAE's own
    // weights do not: random masking at 0.75, MAE's recipe).
    let trained_masking =
        train_config(&args.checkpoint)?.map_or(tessera_mim::MaskingConfig::Random { ratio: 0.75 }, |c| c.masking);
    let e = model.config.encoder.clone();
    let (imgs, norm) = args.input.load(&e, None)?;
    let n = imgs.shape()[0];
    let mask = match &args.mask_file {
        Some(p) => load_mask_file(p, n, e.num_patches())?,
        None => {
            // The checkpoint's strategy unless one is given on the command line.
            let cfg = if !args.mask.given() {
                trained_masking.clone()
            } else {
                args.mask.build(&model.config)?
            };
            let strategy = cfg.build(e.patch_size(), e.grid())?;
            Mask::sample(strategy.as_ref(), n, e.grid(), &mut MimRng::seed_from_u64(args.seed))
        }
    };
    let view = match args.norm_pix_view {
        ViewArg::VisibleStats => NormPixView::VisibleStats,
        ViewArg::Normalized => NormPixView::Normalized,
    };
    if let Some(scale) = args.scale {
        // Four panels per image, each upscaled; 3 bytes a pixel.
        let [h, w] = e.img_size();
        let pixels = n as u128 * 4 * (h as u128 * scale as u128 + 4) * (w as u128 * scale as u128 + 4);
        tessera_mim::train::memory::check("this picture", 3 * pixels, None, "reduce --scale or --count")?;
    }
    let picture = render_rows(&model, &imgs, &mask, &norm, view, args.scale)?;
    let (loss, pred) = no_grad(|| -> Result<(f32, Tensor)> {
        let out = model.forward(&imgs, &mask, false, &mut MimRng::seed_from_u64(0))?;
        Ok((out.loss.item()?, out.pred))
    })?;
    // The dump first, then the picture: if either cannot be written, the
    // command fails having left neither (each is written whole or not at all).
    if let Some(dump) = &args.dump {
        let mut f = TensorFile::default();
        f.insert_raw("loss", vec![1], vec![loss]);
        f.insert("pred", &pred);
        f.insert("mask", &mask.weights());
        f.insert("images", &imgs);
        f.metadata.insert("format".into(), "pt".into());
        f.save(dump)
            .with_context(|| format!("cannot write {}", dump.display()))?;
    }
    if let Err(e) = save_png(&picture, &args.out) {
        if let Some(dump) = &args.dump {
            let _ = std::fs::remove_file(dump);
        }
        return Err(e.into());
    }
    println!(
        "wrote {} ({} images, {}x{} px); loss on hidden patches {loss:.4}{}",
        args.out.display(),
        n,
        picture.width(),
        picture.height(),
        args.dump
            .as_ref()
            .map(|d| format!("; dump {}", d.display()))
            .unwrap_or_default()
    );
    Ok(())
}
