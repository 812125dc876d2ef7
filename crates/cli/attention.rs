//! `tessera attention`: where a trained encoder looks.
//!
//! One PNG, one row per image: the image, then one panel per head, then a
//! combined map, each map a heat overlay on the image (scaled by its own
//! minimum and maximum). For a ViT the heads show the last block's \[CLS\]
//! attention over the patches and the combined map is attention rollout
//! across all blocks; for Swin the heads show the attention each token
//! receives in the last block (the mean over its window's queries) and the
//! combined map their mean. `tessera_mim::eval::attention` says exactly
//! what each number is.

use crate::common::{ImageArgs, OfficialArgs};
use anyhow::Result;
use std::path::PathBuf;
use tessera_mim::Encoder;
use tessera_mim::data::Normalization;
use tessera_mim::eval::attention::{MapKind, encoder_attention};
use tessera_mim::io::checkpoint::{is_classifier, load_classifier_from, load_model_from};
use tessera_mim::io::picture::{attention_rows, save_png};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint: from `tessera pretrain` or `tessera finetune`, or a
    /// released MAE/SimMIM/BEiT/timm state dict or classifier (`.pth` or
    /// safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub official: OfficialArgs,
    #[command(flatten)]
    pub input: ImageArgs,
    /// The PNG to write.
    #[arg(long, default_value = "attention.png")]
    pub out: PathBuf,
    /// Integer upscaling of every panel (default: to at least 96 pixels).
    #[arg(long)]
    pub scale: Option<u32>,
}

/// The encoder of a pre-training checkpoint (or a released state dict), or
/// else of a fine-tuned classifier, with the normalization its inputs take
/// when they come from files (a classifier's own; ImageNet's otherwise, as
/// `reconstruct` does).
fn load_encoder(args: &Args) -> Result<(Encoder, Option<Normalization>)> {
    let file = tessera_mim::io::safetensors::TensorFile::load(&args.checkpoint)?;
    // A classifier's own normalisation comes with it; a pre-training
    // checkpoint's images are the data set's.
    if is_classifier(&file) {
        let (classifier, norm) = load_classifier_from(file, &args.checkpoint, &args.official.hints())?;
        return Ok((classifier.encoder, Some(norm)));
    }
    let model = load_model_from(file, &args.checkpoint, None, &args.official.hints(), false)?;
    Ok((model.encoder, None))
}

pub fn run(args: Args) -> Result<()> {
    let (encoder, own_norm) = load_encoder(&args)?;
    let e = match &encoder {
        Encoder::Vit(v) => tessera_mim::EncoderConfig::Vit(v.config.clone()),
        Encoder::Swin(s) => tessera_mim::EncoderConfig::Swin(s.config.clone()),
    };
    let (imgs, norm) = args.input.load(&e, own_norm)?;
    let n = imgs.shape()[0];
    let maps = encoder_attention(&encoder, &imgs)?;
    // Image, one panel per head, the combined map; 3 bytes a pixel.
    let panels = maps.heads() as u128 + 2;
    if let Some(scale) = args.scale {
        let [h, w] = e.img_size();
        let pixels = n as u128 * panels * (h as u128 * scale as u128 + 4) * (w as u128 * scale as u128 + 4);
        tessera_mim::train::memory::check("this picture", 3 * pixels, None, "reduce --scale or --count")?;
    }
    let picture = attention_rows(&maps, &imgs, &norm, args.scale)?;
    save_png(&picture, &args.out)?;
    let what = match maps.kind {
        MapKind::VitCls => "[CLS] attention of the last block per head, then rollout",
        MapKind::SwinReceived => "attention received in the last block per head, then their mean",
    };
    println!(
        "wrote {} ({} images, {}x{} px): image, {what}, on a {}x{} grid",
        args.out.display(),
        n,
        picture.width(),
        picture.height(),
        maps.grid[0],
        maps.grid[1]
    );
    Ok(())
}
