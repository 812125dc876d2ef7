//! Checkpoints without Tessera's metadata: MAE's released `state_dict`s
//! (converted to safetensors, see the README), the pre-training model or the
//! encoder alone.
//!
//! The model's configuration is read off the tensors' shapes:
//!
//! ```text
//! patch_embed.proj.weight  (D, C, p, p)   width D, channels C, patch p
//! pos_embed                (1, 1+L, D)    L patches: a √L × √L grid, image √L·p
//! blocks.{i}.…             i < depth
//! blocks.0.mlp.fc1.weight  (r·D, D)       MLP ratio r
//! decoder_embed.weight     (Dd, D)        decoder width (absent: encoder only)
//! decoder_blocks.{i}.…     decoder depth; decoder_blocks.0.mlp.fc1 its MLP ratio
//! ```
//! What shapes cannot say comes from [`ModelHints`]: the number of heads
//! (default: the ViT preset of that width — 3, 6, 12, 16, 16 for 192, 384, 768,
//! 1024, 1280 — and MAE's 16 for a 512-wide decoder) and whether the target
//! was normalised per patch (`norm_pix_loss`, default true as in MAE's
//! pre-training recipe).
//!
//! SimMIM's released ViT `state_dict`s (names under `encoder.`) are read the
//! same way ([`infer_simmim_config`]):
//!
//! ```text
//! encoder.patch_embed.proj.weight                      (D, C, p, p)
//! encoder.pos_embed                                    (1, 1+L, D)  learned, if any
//! encoder.rel_pos_bias.relative_position_bias_table    ((2G−1)²+3, H)  shared bias: G and H
//! encoder.blocks.{i}.attn.relative_position_bias_table  the same, per block
//! encoder.blocks.{i}.gamma_1 / gamma_2                  layer scale
//! encoder.blocks.{i}.attn.q_bias / v_bias               q/v bias (no qkv.bias)
//! (neither q_bias nor qkv.bias)                          no qkv bias (qkv_bias=False)
//! encoder.mask_token (1, 1, D), decoder.0.weight (p²C, D, 1, 1), decoder.0.bias
//! ```
//! Their `relative_position_index` buffers (integers) are skipped: Tessera
//! computes the same index. The loss is SimMIM's L1 on raw pixels.
//!
//! Swin ([`infer_swin_config`]): SimMIM's Swin `state_dict`s carry the
//! official Swin names under `encoder.`; timm's `swin_*` ones carry them bare:
//!
//! ```text
//! SimMIM / official Swin                         timm ≥ 0.9
//! encoder.patch_embed.proj / .norm               patch_embed.proj / .norm
//! encoder.layers.{i}.blocks.{j}.…                layers.{i}.blocks.{j}.…
//! encoder.layers.{i}.downsample.…  (i < S−1)     layers.{i+1}.downsample.…  (timm merges at
//!                                                the start of the next stage; older timm
//!                                                as the official code)
//! encoder.norm                                   norm
//! encoder.mask_token, decoder.0.weight / .bias   head.fc.* (older: head.*): the classifier
//! ```
//! `relative_position_index` and `attn_mask` buffers are skipped (Tessera
//! builds both). Stages are counted from `layers.{i}`, depths from
//! `blocks.{j}`, heads from each stage's `((2w−1)², H)` bias table, the window
//! from stage 0's table. The image size comes from stage 0's shifted-window
//! `attn_mask` `(nW, w², w²)` when the file has one; otherwise it must be
//! given (`ModelHints::img_size`, `--img-size`: timm's and SimMIM's files are
//! `32·w`, 224 for window 7, 192 for SimMIM's window 6), never guessed.
//! LayerNorm eps is Swin's 1e-5; drop path 0.1.
//!
//! **Norms and heads** ([`vit_config`]): a ViT has its final `norm` if the
//! file holds one, and `fc_norm` (the norm after mean pooling: MAE's
//! `global_pool`, BEiT's and SimMIM's `use_mean_pooling`) likewise. A
//! classifier's `head (K, D)` makes the file a classifier
//! ([`crate::io::checkpoint::load_classifier`]): released layouts —
//! MAE's fine-tuned ViT, timm's `vit_*` and `swin_*`, BEiT's and SimMIM's
//! fine-tuned ViT (bare names, BEiT's options) and Swin — keep their bare
//! names there ([`classifier_names`] renames timm's Swin); for a
//! pre-training model ([`mim_names`]) the head is set aside and a bare
//! BEiT-style ViT moves under `encoder.`, so every classifier's encoder
//! also serves `probe` and `finetune`.

use crate::config::{
    DecoderConfig, InitScheme, Method, ModelConfig, PRESETS, PixelLoss, PosEmbedKind, QkvBias, RelPosBias, SwinConfig,
    TargetConfig, VitConfig,
};
use crate::error::{Result, ckpt_err};
use crate::io::safetensors::{TensorFile, is_recomputed_buffer};
use std::collections::BTreeSet;
use std::path::Path;

/// What a state dict cannot say about its model (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ModelHints {
    /// Encoder heads (default: the preset of the encoder's width).
    pub heads: Option<usize>,
    /// Decoder heads (default: 16 for MAE's 512-wide decoder).
    pub decoder_heads: Option<usize>,
    /// Per-patch normalised pixel target (default: true).
    pub norm_pix: Option<bool>,
    /// The image size the weights were trained at, where the file cannot
    /// tell (a Swin state dict without its `attn_mask` buffers: timm's
    /// files, or stages of one block). Never guessed.
    pub img_size: Option<[usize; 2]>,
}

/// The shape of `name`, or an error naming it.
fn shape<'a>(file: &'a TensorFile, name: &str, path: &Path) -> Result<&'a [usize]> {
    file.tensors
        .get(name)
        .map(|t| t.shape.as_slice())
        .ok_or_else(|| ckpt_err(path, format!("has no tensor '{name}' (not an MAE state dict?)")))
}

/// How many `{prefix}.{i}.` blocks the file holds (0, 1, … without a gap).
fn count_blocks(file: &TensorFile, prefix: &str) -> usize {
    (0..)
        .take_while(|i| file.tensors.contains_key(&format!("{prefix}.{i}.norm1.weight")))
        .count()
}

/// The MLP ratio of block 0 of `prefix`, from its fc1's `(hidden, width)`.
fn mlp_ratio(file: &TensorFile, prefix: &str, width: usize, path: &Path) -> Result<f32> {
    let fc1 = shape(file, &format!("{prefix}.0.mlp.fc1.weight"), path)?;
    Ok(fc1[0] as f32 / width as f32)
}

/// Width `D`, channels `C` and patch `p` of the `(D, C, p, p)` patch
/// embedding `name`.
fn patch_geometry(file: &TensorFile, name: &str, path: &Path) -> Result<(usize, usize, usize)> {
    let pe = shape(file, name, path)?;
    let [d, c, p, p2] = *pe else {
        return Err(ckpt_err(path, format!("'{name}' has shape {pe:?}, want (D, C, p, p)")));
    };
    if p != p2 {
        return Err(ckpt_err(
            path,
            format!("'{name}' has a {p}x{p2} kernel; only square patches are supported"),
        ));
    }
    Ok((d, c, p))
}

/// True if the ViT under `prefix` has any of BEiT's options (a relative
/// position table, q/v biases, layer scale, or no absolute positions): a
/// BEiT or SimMIM ViT, whatever its names' prefix.
fn is_beit_vit(file: &TensorFile, prefix: &str) -> bool {
    let has = |name: &str| file.tensors.contains_key(&format!("{prefix}{name}"));
    has("rel_pos_bias.relative_position_bias_table")
        || has("blocks.0.attn.relative_position_bias_table")
        || has("blocks.0.attn.q_bias")
        || has("blocks.0.gamma_1")
        || !has("pos_embed")
}

/// The ViT encoder whose tensors the file holds under `prefix` (`""` for
/// MAE's and timm's names, `encoder.` for SimMIM's): geometry, depth, MLP
/// ratio, options and norms read off the tensors (see the module docs);
/// heads from `hints`, else the relative table's columns, else the ViT
/// preset of that width. An MAE-style ViT keeps MAE's fixed sin-cos
/// positions and initialisation; one with BEiT's options, or under
/// `encoder.`, BEiT's (learned positions where it has any).
pub fn vit_config(file: &TensorFile, prefix: &str, path: &Path, hints: &ModelHints) -> Result<VitConfig> {
    let name = |n: &str| format!("{prefix}{n}");
    let has = |n: &str| file.tensors.contains_key(&name(n));
    let (d, c, p) = patch_geometry(file, &name("patch_embed.proj.weight"), path)?;
    let beit = !prefix.is_empty() || is_beit_vit(file, prefix);
    let table = [
        ("rel_pos_bias.relative_position_bias_table", RelPosBias::Shared),
        ("blocks.0.attn.relative_position_bias_table", RelPosBias::PerBlock),
    ]
    .into_iter()
    .find_map(|(n, kind)| file.tensors.get(&name(n)).map(|t| (kind, t.shape.clone())));
    // The grid: from the absolute table if there is one, else from the
    // relative table's (2G − 1)² + 3 rows.
    let grid = if let Some(pos) = file.tensors.get(&name("pos_embed")) {
        let l = match pos.shape[..] {
            [1, n, w] if w == d && n >= 2 => n - 1,
            _ => {
                return Err(ckpt_err(
                    path,
                    format!(
                        "'{}' has shape {:?}, want (1, 1 + L, {d})",
                        name("pos_embed"),
                        pos.shape
                    ),
                ));
            }
        };
        let g = (l as f64).sqrt().round() as usize;
        if g * g != l {
            return Err(ckpt_err(
                path,
                format!("'{}' has {l} patch positions, not a square grid", name("pos_embed")),
            ));
        }
        g
    } else if let Some((_, t)) = &table {
        let side = ((t[0].saturating_sub(3)) as f64).sqrt().round() as usize;
        side.div_ceil(2)
    } else {
        return Err(ckpt_err(
            path,
            format!(
                "has neither '{}' nor a relative position table: cannot tell its image size",
                name("pos_embed")
            ),
        ));
    };
    let blocks = name("blocks");
    let depth = count_blocks(file, &blocks);
    if depth == 0 {
        return Err(ckpt_err(path, format!("has no '{blocks}.0.*' tensors")));
    }
    // The relative table's columns are the heads.
    let table_heads = table.as_ref().filter(|(_, t)| t.len() == 2).map(|(_, t)| t[1]);
    let heads = match hints.heads.or(table_heads) {
        Some(h) => h,
        None => PRESETS.iter().find(|pr| pr.1 == d).map(|pr| pr.3).ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "has a {d}-wide encoder, which is no ViT preset: give its number of heads (`ModelHints::heads`)"
                ),
            )
        })?,
    };
    let mut encoder = VitConfig::preset("vit-base", [grid * p, grid * p], p, c)?;
    encoder.embed_dim = d;
    encoder.depth = depth;
    encoder.num_heads = heads;
    encoder.mlp_ratio = mlp_ratio(file, &blocks, d, path)?;
    if beit {
        encoder.pos_embed = if has("pos_embed") {
            PosEmbedKind::Learned
        } else {
            PosEmbedKind::None
        };
        encoder.init = InitScheme::Beit;
    }
    encoder.rel_pos_bias = table.map_or(RelPosBias::None, |(kind, _)| kind);
    // The starting value does not matter once the trained scales load.
    encoder.layer_scale = has("blocks.0.gamma_1").then_some(0.1);
    // BEiT's q/v biases, timm's qkv bias, or none (`qkv_bias=False`).
    encoder.qkv_bias = if has("blocks.0.attn.q_bias") {
        QkvBias::QV
    } else if has("blocks.0.attn.qkv.bias") {
        QkvBias::Qkv
    } else {
        QkvBias::None
    };
    encoder.final_norm = has("norm.weight");
    encoder.fc_norm = has("fc_norm.weight");
    Ok(encoder)
}

/// True if the file holds MAE's decoder or SimMIM's head (a pre-training
/// checkpoint).
pub fn has_decoder(file: &TensorFile) -> bool {
    file.tensors.contains_key("decoder_embed.weight") || file.tensors.contains_key("decoder.0.weight")
}

/// True for a SimMIM state dict (its encoder's tensors under `encoder.`).
pub fn is_simmim(file: &TensorFile) -> bool {
    file.tensors.contains_key("encoder.patch_embed.proj.weight")
}

/// True for a Swin state dict: SimMIM's (`encoder.layers.…`) or timm's
/// (`layers.…`).
pub fn is_swin(file: &TensorFile) -> bool {
    [
        "encoder.layers.0.blocks.0.norm1.weight",
        "layers.0.blocks.0.norm1.weight",
    ]
    .iter()
    .any(|n| file.tensors.contains_key(*n))
}

/// A timm Swin `state_dict` (bare names) in the official Swin names under
/// `prefix`: patch merging moved back to the end of the stage before it when
/// timm put it at the start of the next, the classifier `head.fc.*` (timm ≥
/// 0.9) named `head.*` and kept with `keep_head`, dropped otherwise.
fn timm_swin_renamed(mut file: TensorFile, prefix: &str, keep_head: bool) -> TensorFile {
    // timm ≥ 0.9: no stage-0 merging, one at the start of stage 1.
    let shifted = !file.tensors.keys().any(|n| n.starts_with("layers.0.downsample."))
        && file.tensors.keys().any(|n| n.starts_with("layers.1.downsample."));
    let old = std::mem::take(&mut file.tensors);
    for (name, t) in old {
        if let Some(rest) = name.strip_prefix("head.") {
            if keep_head {
                let rest = rest.strip_prefix("fc.").unwrap_or(rest);
                file.tensors.insert(format!("head.{rest}"), t);
            }
            continue;
        }
        let name = match name.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
            Some((i, rest)) if shifted && rest.starts_with("downsample.") => {
                let i: usize = i.parse().unwrap_or(0);
                format!("layers.{}.{rest}", i.saturating_sub(1))
            }
            _ => name,
        };
        file.tensors.insert(format!("{prefix}{name}"), t);
    }
    file
}

/// A released state dict in the names of Tessera's pre-training model
/// ([`crate::model::mim::MimModel`]): timm's Swin (see the module docs) and a
/// bare BEiT-style ViT (SimMIM's or BEiT's fine-tuned one) under
/// `encoder.`, as SimMIM's pre-training names them; a classifier's `head.*`
/// dropped (its encoder is what a pre-training model uses). Any other file
/// is returned as it is.
pub fn mim_names(mut file: TensorFile) -> TensorFile {
    if file.tensors.contains_key("layers.0.blocks.0.norm1.weight") {
        return timm_swin_renamed(file, "encoder.", false);
    }
    file.tensors.retain(|n, _| !n.starts_with("head."));
    if file.tensors.contains_key("patch_embed.proj.weight") && is_beit_vit(&file, "") {
        let old = std::mem::take(&mut file.tensors);
        file.tensors = old.into_iter().map(|(n, t)| (format!("encoder.{n}"), t)).collect();
    }
    file
}

/// A released classifier's state dict in the names of Tessera's
/// [`crate::model::classifier::Classifier`]: timm's Swin renamed (see
/// the module docs, its `head.fc` as `head`); every other layout
/// (MAE's, timm's ViT, BEiT's and SimMIM's fine-tuned ViT and Swin) already
/// has them.
pub fn classifier_names(file: TensorFile) -> TensorFile {
    if file.tensors.contains_key("layers.0.blocks.0.norm1.weight") {
        timm_swin_renamed(file, "", true)
    } else {
        file
    }
}

/// The Swin encoder whose tensors the file holds under `prefix` (`""` or
/// `encoder.`) in the official names; see the module docs.
pub fn swin_config(file: &TensorFile, prefix: &str, path: &Path, hints: &ModelHints) -> Result<SwinConfig> {
    let name = |n: &str| format!("{prefix}{n}");
    let (d, c, p) = patch_geometry(file, &name("patch_embed.proj.weight"), path)?;
    let stages = (0..)
        .take_while(|i| {
            file.tensors
                .contains_key(&name(&format!("layers.{i}.blocks.0.norm1.weight")))
        })
        .count();
    let mut depths = Vec::new();
    let mut heads = Vec::new();
    let mut windows = Vec::new();
    for i in 0..stages {
        depths.push(count_blocks(file, &name(&format!("layers.{i}.blocks"))));
        let table = shape(
            file,
            &name(&format!("layers.{i}.blocks.0.attn.relative_position_bias_table")),
            path,
        )?;
        let [rows, h] = *table else {
            return Err(ckpt_err(
                path,
                format!("stage {i}'s relative table has shape {table:?}, want (T, H)"),
            ));
        };
        heads.push(h);
        windows.push(((rows as f64).sqrt().round() as usize).div_ceil(2));
    }
    let window = *windows
        .first()
        .ok_or_else(|| ckpt_err(path, format!("has no '{}' tensors", name("layers.0.blocks.0.*"))))?;
    // The image size: from the shifted block's mask (one per window of
    // stage 0), else as the caller says; a default (timm's files are 32 ×
    // window pixels, but a Swin trained at 32 pixels is not) would silently
    // rescale the data.
    let [sh, sw] = match file.tensors.get(&name("layers.0.blocks.1.attn_mask")) {
        Some(m) if !m.shape.is_empty() => {
            let per_side = (m.shape[0] as f64).sqrt().round() as usize;
            [per_side * window * p; 2]
        }
        _ => hints.img_size.ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "holds a Swin whose image size it cannot tell (no 'attn_mask' buffers); give it \
                     (`ModelHints::img_size`, --img-size): timm's and SimMIM's files are {} pixels \
                     (32 × window {window})",
                    32 * window
                ),
            )
        })?,
    };
    let fc1 = shape(file, &name("layers.0.blocks.0.mlp.fc1.weight"), path)?;
    let swin = SwinConfig {
        img_size: [sh, sw],
        patch_size: p,
        in_chans: c,
        embed_dim: d,
        depths,
        num_heads: heads,
        window,
        mlp_ratio: fc1[0] as f32 / d as f32,
        drop_path: 0.1,
        norm_eps: 1e-5,
        ape: file.tensors.contains_key(&name("absolute_pos_embed")),
    };
    swin.validate()?;
    Ok(swin)
}

/// The configuration of a Swin state dict in SimMIM's names (a timm file
/// goes through [`mim_names`] first); see the module docs.
pub fn infer_swin_config(file: &TensorFile, path: &Path, hints: &ModelHints) -> Result<ModelConfig> {
    let swin = swin_config(file, "encoder.", path, hints)?;
    let config = ModelConfig {
        encoder: swin.into(),
        method: Method::SimMim,
        target: TargetConfig::Pixels {
            loss: PixelLoss::L1,
            norm_pix: false,
        },
    };
    config.validate()?;
    if let Some(head) = file.tensors.get("decoder.0.weight") {
        let want = [config.head_channels(), config.encoder.out_dim(), 1, 1];
        if head.shape != want {
            return Err(ckpt_err(
                path,
                format!("'decoder.0.weight' has shape {:?}, want {want:?}", head.shape),
            ));
        }
    }
    Ok(config)
}

/// The configuration of a SimMIM-ViT state dict (see the module docs).
pub fn infer_simmim_config(file: &TensorFile, path: &Path, hints: &ModelHints) -> Result<ModelConfig> {
    let encoder = vit_config(file, "encoder.", path, hints)?;
    let (d, p, c) = (encoder.embed_dim, encoder.patch_size, encoder.in_chans);
    let config = ModelConfig {
        encoder: encoder.into(),
        method: Method::SimMim,
        target: TargetConfig::Pixels {
            loss: PixelLoss::L1,
            norm_pix: false,
        },
    };
    config.validate()?;
    if let Some(head) = file.tensors.get("decoder.0.weight")
        && head.shape != [p * p * c, d, 1, 1]
    {
        return Err(ckpt_err(
            path,
            format!(
                "'decoder.0.weight' has shape {:?}, want ({}, {d}, 1, 1)",
                head.shape,
                p * p * c
            ),
        ));
    }
    Ok(config)
}

/// The model configuration a state dict without metadata describes. With
/// `need_decoder` false (features only: the decoder is loaded but never run)
/// an unknown decoder head count is no error.
pub fn infer_config(file: &TensorFile, path: &Path, hints: &ModelHints, need_decoder: bool) -> Result<ModelConfig> {
    if is_swin(file) {
        return infer_swin_config(file, path, hints);
    }
    if is_simmim(file) {
        return infer_simmim_config(file, path, hints);
    }
    let encoder = vit_config(file, "", path, hints)?;
    let decoder = if has_decoder(file) {
        let de = shape(file, "decoder_embed.weight", path)?;
        let dd = de[0];
        let ddepth = count_blocks(file, "decoder_blocks");
        let dheads = match hints.decoder_heads {
            Some(h) => h,
            None if dd == 512 => 16,
            None if !need_decoder => 1,
            None => {
                return Err(ckpt_err(
                    path,
                    format!(
                        "has a {dd}-wide decoder (MAE's is 512): give its number of heads (`ModelHints::decoder_heads`)"
                    ),
                ));
            }
        };
        DecoderConfig {
            embed_dim: dd,
            depth: ddepth,
            num_heads: dheads,
            mlp_ratio: if ddepth > 0 {
                mlp_ratio(file, "decoder_blocks", dd, path)?
            } else {
                4.0
            },
        }
    } else {
        // An encoder alone: a default decoder stands in (never loaded, never used
        // by feature extraction).
        DecoderConfig::mae_default()
    };
    let config = ModelConfig {
        encoder: encoder.into(),
        method: Method::Mae { decoder },
        target: TargetConfig::Pixels {
            loss: PixelLoss::Mse,
            norm_pix: hints.norm_pix.unwrap_or(true),
        },
    };
    config.validate()?;
    Ok(config)
}

/// Checks that `file` holds exactly the tensors the model needs: every name of
/// `wanted` and nothing else (the decoder's names are not wanted from an
/// encoder-only file). One error lists what is missing and what is extra.
pub fn check_names(file: &TensorFile, path: &Path, model: &[String], wanted: impl Fn(&str) -> bool) -> Result<()> {
    let have: BTreeSet<&str> = file.tensors.keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = model.iter().map(String::as_str).collect();
    let missing: Vec<&str> = model
        .iter()
        .map(String::as_str)
        .filter(|n| wanted(n) && !have.contains(n))
        .collect();
    let extra: Vec<&str> = have
        .iter()
        .copied()
        .filter(|n| !known.contains(n) && !is_recomputed_buffer(n))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    let list = |v: &[&str]| {
        let shown: Vec<&str> = v.iter().take(8).copied().collect();
        let more = if v.len() > 8 {
            format!(" and {} more", v.len() - 8)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {} tensor(s): {}", missing.len(), list(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected {} tensor(s): {}", extra.len(), list(&extra)));
    }
    Err(ckpt_err(
        path,
        format!("does not match the model it describes: {}", parts.join("; ")),
    ))
}

/// True for the names of the encoder's tensors (what an encoder-only file holds).
pub fn is_encoder_tensor(name: &str) -> bool {
    !(name.starts_with("decoder_") || name.starts_with("decoder.") || name.ends_with("mask_token"))
}
