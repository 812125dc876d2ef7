//! Floating-point operations of a model, for `tessera info` and for reporting
//! GFLOP/s in benchmarks.
//!
//! Only matrix products are counted, at 2 FLOPs per multiply-add (element-wise
//! work is a few percent of a ViT). For `N` tokens of width `D` and an MLP
//! hidden width `Hm`, one block costs
//! ```text
//! qkv 6·N·D²  +  attention scores and values 4·N²·D  +  proj 2·N·D²  +  MLP 4·N·D·Hm
//! ```
//! In Swin each token attends to the `w²` tokens of its window instead of all
//! `N`, so attention costs `4·N·w²·D`; patch merging adds `2·(N/4)·4D·2D`.
//! A training step is counted as three forwards (the backward computes two
//! products per forward product), the usual convention.

use crate::config::{EncoderConfig, Method, ModelConfig};

/// FLOPs of one transformer block over `n` tokens of width `d`, MLP width `hidden`.
pub fn block(n: usize, d: usize, hidden: usize) -> f64 {
    windowed_block(n, n, d, hidden)
}

/// FLOPs of one block over `n` tokens that each attend to `span` of them
/// (`n` for global attention, `w²` in Swin's windows).
pub fn windowed_block(n: usize, span: usize, d: usize, hidden: usize) -> f64 {
    let (n, s, d, h) = (n as f64, span as f64, d as f64, hidden as f64);
    8.0 * n * d * d + 4.0 * n * s * d + 4.0 * n * d * h
}

/// FLOPs of the encoder's blocks (and Swin's patch merging) for one image;
/// a ViT sees `patches` patch tokens and \[CLS\], Swin always all of them.
pub fn encoder_blocks(e: &EncoderConfig, patches: usize) -> f64 {
    match e {
        EncoderConfig::Vit(v) => v.depth as f64 * block(patches + 1, v.embed_dim, v.mlp_hidden()),
        EncoderConfig::Swin(s) => (0..s.depths.len())
            .map(|i| {
                let [h, w] = s.stage_grid(i);
                let (n, d, win) = (h * w, s.stage_dim(i), s.stage_window(i).0);
                let blocks = s.depths[i] as f64 * windowed_block(n, win * win, d, s.mlp_hidden(i));
                let merge = if i + 1 < s.depths.len() {
                    2.0 * (n / 4) as f64 * (4 * d) as f64 * (2 * d) as f64
                } else {
                    0.0
                };
                blocks + merge
            })
            .sum(),
    }
}

/// A breakdown of one image's forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardFlops {
    pub patch_embed: f64,
    pub encoder_blocks: f64,
    pub head: f64,
}

impl ForwardFlops {
    pub fn total(&self) -> f64 {
        self.patch_embed + self.encoder_blocks + self.head
    }
}

/// FLOPs of one image's forward pass when the encoder sees `len_keep` of the
/// patches (MAE) — SimMIM and feature extraction see all of them.
pub fn forward(config: &ModelConfig, len_keep: usize) -> ForwardFlops {
    let e = &config.encoder;
    let (l, d, p) = (e.num_patches(), e.out_dim(), e.patch_dim());
    let out = config.output_dim() as f64;
    let patch_embed = 2.0 * (l * p * e.embed_dim()) as f64;
    let (enc_patches, head) = match &config.method {
        Method::Mae { decoder } => {
            let dd = decoder.embed_dim;
            let embed = 2.0 * ((len_keep + 1) * d * dd) as f64;
            let blocks = decoder.depth as f64 * block(l + 1, dd, decoder.mlp_hidden());
            let pred = 2.0 * (l + 1) as f64 * dd as f64 * out;
            (len_keep, embed + blocks + pred)
        }
        // One 1×1 convolution: L / r² output tokens, r²·out channels each.
        Method::SimMim => (l, 2.0 * l as f64 * d as f64 * out),
    };
    ForwardFlops {
        patch_embed,
        encoder_blocks: encoder_blocks(e, enc_patches),
        head,
    }
}

/// FLOPs of one training step on `batch` images (3 × forward).
pub fn train_step(config: &ModelConfig, len_keep: usize, batch: usize) -> f64 {
    3.0 * batch as f64 * forward(config, len_keep).total()
}

/// FLOPs of extracting features of one image (encoder over every patch).
pub fn features(config: &ModelConfig) -> f64 {
    let e = &config.encoder;
    2.0 * (e.num_patches() * e.patch_dim() * e.embed_dim()) as f64 + encoder_blocks(e, e.num_patches())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DecoderConfig, PixelLoss, TargetConfig, VitConfig};

    #[test]
    fn vit_base_mae_step_matches_a_hand_count() {
        let cfg = ModelConfig {
            encoder: VitConfig::preset("vit-base", [224, 224], 16, 3).unwrap().into(),
            method: Method::Mae {
                decoder: DecoderConfig::mae_default(),
            },
            target: TargetConfig::Pixels {
                loss: PixelLoss::Mse,
                norm_pix: true,
            },
        };
        let f = forward(&cfg, 49);
        // Encoder: 12 blocks over 50 tokens of 768, MLP 3072.
        let enc = 12.0 * (8.0 * 50.0 * 768.0 * 768.0 + 4.0 * 2500.0 * 768.0 + 4.0 * 50.0 * 768.0 * 3072.0);
        assert!((f.encoder_blocks - enc).abs() < 1.0);
        assert!((f.patch_embed - 2.0 * 196.0 * 768.0 * 768.0).abs() < 1.0);
        // ViT-B MAE forward per image: encoder ≈ 8.6 GFLOPs on 50 tokens, decoder
        // ≈ 10.7 on 197 tokens of 512, patch embedding 0.23: ≈ 19.5 (a training
        // step of 8 images ≈ 470 GFLOPs; PyTorch's 2.8 s per step ≈ 170 GFLOP/s).
        assert!((f.total() / 1e9 - 19.5).abs() < 0.3, "{}", f.total() / 1e9);
        // Plain ViT-B/16 features: ~35 GFLOPs (the usual 17.6 GMACs).
        assert!((features(&cfg) / 1e9 - 35.1).abs() < 0.5, "{}", features(&cfg) / 1e9);
    }

    /// Swin-T at 224: 4.5 GMACs (the paper's Table 1), 9.0 GFLOPs.
    #[test]
    fn swin_tiny_features_match_the_paper() {
        let cfg = ModelConfig {
            encoder: crate::config::SwinConfig::preset("swin-tiny", [224, 224], 3)
                .unwrap()
                .into(),
            method: Method::SimMim,
            target: TargetConfig::Pixels {
                loss: PixelLoss::L1,
                norm_pix: false,
            },
        };
        let g = features(&cfg) / 1e9;
        assert!((g - 9.0).abs() < 0.15, "{g}");
    }
}
