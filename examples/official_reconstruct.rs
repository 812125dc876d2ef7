//! Load an official MAE checkpoint and see what it fills in:
//! `cargo run --release --example official_reconstruct -- MAE.safetensors IMAGE... [--out r.png]`.
//!
//! `MAE.safetensors` is MAE's released pre-training `state_dict` converted with
//! the one line of Python in the README. Each image gets a row of four panels
//! (original | masked | reconstruction | reconstruction with the visible
//! patches pasted back) under MAE's random masking at 0.75.

use rand::SeedableRng;
use std::path::PathBuf;
use tessera_mim::data::Normalization;
use tessera_mim::data::loader::load_images;
use tessera_mim::data::transform::Transform;
use tessera_mim::io::checkpoint::load_model_hinted;
use tessera_mim::io::official::ModelHints;
use tessera_mim::io::picture::{NormPixView, render_rows, save_png};
use tessera_mim::{Mask, MaskingConfig, MimRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let out = match files.iter().position(|f| f.as_os_str() == "--out") {
        Some(i) if i + 1 < files.len() => files.drain(i..i + 2).nth(1).expect("two drained"),
        _ => PathBuf::from("reconstruction.png"),
    };
    if files.len() < 2 {
        return Err("usage: official_reconstruct MAE.safetensors IMAGE... [--out r.png]".into());
    }
    let ckpt = files.remove(0);
    // MAE's released weights: shapes give the model; ViT presets give the heads.
    let model = load_model_hinted(&ckpt, None, &ModelHints::default(), true)?;
    let e = &model.config.encoder;
    let norm = Normalization::imagenet().for_channels(e.in_chans());
    let imgs = load_images(&files, &Transform::eval(e, &norm))?;
    let strategy = MaskingConfig::Random { ratio: 0.75 }.build(e.patch_size(), e.grid())?;
    let mask = Mask::sample(strategy.as_ref(), files.len(), e.grid(), &mut MimRng::seed_from_u64(0));
    let picture = render_rows(&model, &imgs, &mask, &norm, NormPixView::VisibleStats, None)?;
    save_png(&picture, &out)?;
    println!("{} images through {}: {}", files.len(), ckpt.display(), out.display());
    Ok(())
}
