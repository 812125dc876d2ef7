//! `tessera info`: what a ViT tutorial's code prints, for any model: the
//! image, its patch grid, the shape of the embeddings at every stage, the
//! parameter counts and the FLOPs per image. `--image FILE` also writes the
//! picture cut into its patch grid (the "patched image"), as the model sees it.

use crate::common::{ModelArgs, si};
use anyhow::{Context, Result};
use rand::SeedableRng;
use std::path::PathBuf;
use tessera_mim::data::Normalization;
use tessera_mim::data::folder::decode;
use tessera_mim::data::transform::Transform;
use tessera_mim::io::picture::{patched, save_png, to_rgb, upscale};
use tessera_mim::model::flops;
use tessera_mim::model::layers::Module;
use tessera_mim::model::masking::hidden_count;
use tessera_mim::{EncoderConfig, Method, MimModel, MimRng, SwinConfig, VitConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Fraction of patches MAE hides (for the encoder's visible token count).
    #[arg(long, default_value_t = 0.75, allow_negative_numbers = true)]
    pub mask_ratio: f32,
    /// An image to cut into the model's patch grid.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Where to write the patched image.
    #[arg(long, default_value = "patched.png")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.model.build(None)?;
    if !(0.0..1.0).contains(&args.mask_ratio) {
        anyhow::bail!("--mask-ratio {} is outside [0, 1)", args.mask_ratio);
    }
    tessera_mim::train::memory::check(
        "building this model",
        tessera_mim::train::memory::model_bytes(&cfg),
        None,
        "reduce --img-size, --dim or --depth",
    )?;
    let model = MimModel::new(cfg.clone(), &mut MimRng::seed_from_u64(0))?;
    let e = &cfg.encoder;
    let ([h, w], c, p) = (e.img_size(), e.in_chans(), e.patch_size());
    let [gh, gw] = e.grid();
    let l = e.num_patches();
    let k = l - hidden_count(l, args.mask_ratio);
    let d = e.out_dim();
    let row = |what: &str, shape: String, note: String| println!("  {what:<22} {shape:<22} {note}");

    println!("image");
    row("input", format!("(B, {c}, {h}, {w})"), String::new());
    row(
        "patch grid",
        format!("{gh} x {gw} = {l}"),
        format!("patches of {p}x{p}x{c} = {} values", e.patch_dim()),
    );
    match e {
        EncoderConfig::Vit(v) => print_vit(v, &row),
        EncoderConfig::Swin(s) => print_swin(s, &row),
    }
    match &cfg.method {
        Method::Mae { decoder } => {
            let dd = decoder.embed_dim;
            println!(
                "MAE ({:.0}% masked: the encoder sees {k} visible patches + [CLS])",
                100.0 * args.mask_ratio
            );
            row("encoder output", format!("(B, {}, {d})", k + 1), String::new());
            row("decoder_embed", format!("(B, {}, {dd})", k + 1), String::new());
            row(
                "+ mask tokens",
                format!("(B, {}, {dd})", l + 1),
                format!("{} mask tokens, unshuffled, + decoder_pos_embed", l - k),
            );
            row(
                &format!("{} decoder blocks", decoder.depth),
                format!("(B, {}, {dd})", l + 1),
                format!("{} heads", decoder.num_heads),
            );
            row(
                "decoder_pred",
                format!("(B, {l}, {})", cfg.output_dim()),
                "[CLS] dropped".into(),
            );
        }
        Method::SimMim => {
            println!("SimMIM (hidden patch embeddings replaced by encoder.mask_token)");
            let r = e.token_patches();
            let tokens = l / (r * r);
            row(
                "decoder.0",
                format!("(B, {tokens}, {})", cfg.head_channels()),
                format!(
                    "1x1 convolution [{}, {}, 1, 1] on the output tokens, then pixel shuffle x{}",
                    cfg.head_channels(),
                    e.out_dim(),
                    r * p
                ),
            );
            row(
                "predictions",
                format!("(B, {l}, {})", cfg.output_dim()),
                "per patch, in MAE's patchify order; the loss over hidden patches".into(),
            );
        }
    }
    let count = |ts: Vec<(String, tessera_tensor::Tensor)>| {
        ts.iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t.numel())
            .sum::<usize>() as f64
    };
    let total = count(model.named_tensors());
    let enc = count(model.encoder.named_tensors());
    println!("parameters");
    row("encoder", si(enc), String::new());
    row("head", si(total - enc), String::new());
    row(
        "total (trainable)",
        si(total),
        format!("{} tensors in the state dict", model.named_tensors().len()),
    );
    let f = flops::forward(&cfg, k);
    println!("FLOPs per image (2 per multiply-add)");
    row("features", si(flops::features(&cfg)), "encoder over every patch".into());
    row(
        "pre-training forward",
        si(f.total()),
        format!(
            "patch embedding {}, encoder {}, head {}",
            si(f.patch_embed),
            si(f.encoder_blocks),
            si(f.head)
        ),
    );
    row("pre-training step", si(3.0 * f.total()), "forward + backward".into());

    if let Some(path) = &args.image {
        let raw = decode(path)?;
        println!(
            "image {}: {}x{} pixels, {} channel{}",
            path.display(),
            raw.height,
            raw.width,
            raw.channels,
            if raw.channels == 1 { "" } else { "s" }
        );
        // What the model sees: resized to cover its size, centre-cropped.
        let t = Transform::eval(e, &Normalization::uniform(0.0, 1.0, c));
        let resized = to_rgb(&t.apply(&raw, &mut MimRng::seed_from_u64(0)), c, h, w, &t.norm);
        let factor = 224u32.div_ceil(h.min(w) as u32).max(1);
        let out = patched(&upscale(&resized, factor), p as u32 * factor, 2);
        save_png(&out, &args.out).with_context(|| format!("writing the patched image to {}", args.out.display()))?;
        println!(
            "wrote {} ({gh}x{gw} patches of {p} px, at {factor}x)",
            args.out.display()
        );
    }
    Ok(())
}

/// The ViT's shapes, stage by stage.
fn print_vit(e: &VitConfig, row: &dyn Fn(&str, String, String)) {
    let (c, p, d, l) = (e.in_chans, e.patch_size, e.embed_dim, e.num_patches());
    println!(
        "encoder (ViT {d} wide, {} deep, {} heads of {})",
        e.depth,
        e.num_heads,
        d / e.num_heads
    );
    row(
        "patch embedding",
        format!("(B, {l}, {d})"),
        format!("conv {p}x{p} stride {p}: patch_embed.proj.weight [{d}, {c}, {p}, {p}]"),
    );
    row(
        "+ [CLS] token",
        format!("(B, {}, {d})", l + 1),
        "cls_token [1, 1, {d}]".replace("{d}", &d.to_string()),
    );
    let absolute = match e.pos_embed {
        tessera_mim::PosEmbedKind::None => "no absolute table".to_string(),
        kind => format!("pos_embed [1, {}, {d}] ({kind:?})", l + 1),
    };
    row("+ positions", format!("(B, {}, {d})", l + 1), absolute);
    let table = || {
        let rows = tessera_kernels::relpos::table_rows(e.grid(), true);
        format!("relative_position_bias_table [{rows}, {}]", e.num_heads)
    };
    match e.rel_pos_bias {
        tessera_mim::RelPosBias::None => {}
        tessera_mim::RelPosBias::Shared => row("+ relative bias", "on the logits".into(), format!("one {}", table())),
        tessera_mim::RelPosBias::PerBlock => row(
            "+ relative bias",
            "on the logits".into(),
            format!("per block {}", table()),
        ),
    }
    row(
        &format!("{} blocks", e.depth),
        format!("(B, {}, {d})", l + 1),
        format!("qkv (B, {}, {}), MLP {}", l + 1, 3 * d, e.mlp_hidden()),
    );
    row(
        "final norm",
        format!("(B, {}, {d})", l + 1),
        if e.final_norm {
            "LayerNorm eps 1e-6".into()
        } else {
            "none (built for mean pooling)".into()
        },
    );
    row(
        "[CLS] embedding",
        format!("(B, {d})"),
        "or the mean of the patch tokens".into(),
    );
}

/// Swin's shapes stage by stage: resolution, tokens, windows, width, heads.
fn print_swin(e: &SwinConfig, row: &dyn Fn(&str, String, String)) {
    let (c, p, d0) = (e.in_chans, e.patch_size, e.embed_dim);
    let l = e.stage_grid(0)[0] * e.stage_grid(0)[1];
    println!(
        "encoder (Swin {d0} wide, {} stages of {:?} blocks, window {}, stride {})",
        e.depths.len(),
        e.depths,
        e.window,
        e.stride()
    );
    row(
        "patch embedding",
        format!("(B, {l}, {d0})"),
        format!("conv {p}x{p} stride {p}: patch_embed.proj.weight [{d0}, {c}, {p}, {p}], then patch_embed.norm"),
    );
    if e.ape {
        row(
            "+ absolute positions",
            format!("(B, {l}, {d0})"),
            format!("absolute_pos_embed [1, {l}, {d0}], learned (ape)"),
        );
    }
    for i in 0..e.depths.len() {
        let [h, w] = e.stage_grid(i);
        let (d, heads) = (e.stage_dim(i), e.num_heads[i]);
        let (win, shift) = e.stage_window(i);
        let windows = (h / win) * (w / win);
        let shifted = if shift > 0 && e.depths[i] > 1 {
            format!(", odd blocks shifted by {shift}")
        } else {
            ", no shift".to_string()
        };
        row(
            &format!("stage {i}: {} blocks", e.depths[i]),
            format!("(B, {h}, {w}, {d})"),
            format!(
                "{h}x{w} = {} tokens, {windows} window{} of {win}x{win}{shifted}; {heads} heads of {}, MLP {}, \
                 relative_position_bias_table [{}, {heads}]",
                h * w,
                if windows == 1 { "" } else { "s" },
                d / heads,
                e.mlp_hidden(i),
                (2 * win - 1) * (2 * win - 1)
            ),
        );
        if i + 1 < e.depths.len() {
            row(
                "  patch merging",
                format!("(B, {}, {}, {})", h / 2, w / 2, 2 * d),
                format!("2x2 concat {}, LayerNorm, reduction [{}, {}]", 4 * d, 2 * d, 4 * d),
            );
        }
    }
    let [h, w] = e.stage_grid(e.depths.len() - 1);
    let dl = e.num_features();
    row(
        "final norm",
        format!("(B, {h}, {w}, {dl})"),
        format!("LayerNorm eps {:e}", e.norm_eps),
    );
    row(
        "representation",
        format!("(B, {dl})"),
        format!("mean of the {} last-stage tokens (no [CLS])", h * w),
    );
}
