//! Shared helpers of the tessera-mim tests.
#![allow(dead_code)]

use rand::{RngExt, SeedableRng};
use tessera_mim::{
    DecoderConfig, Mask, MaskingConfig, Method, MimModel, MimRng, ModelConfig, PixelLoss, TargetConfig, VitConfig,
};
use tessera_tensor::{GradStore, Tensor};

/// A tiny encoder: 16×16 images, patch 4 (a 4×4 grid), width 32, 2 blocks.
pub fn tiny_vit(chans: usize) -> VitConfig {
    let mut c = VitConfig::preset("vit-tiny", [16, 16], 4, chans).unwrap();
    c.embed_dim = 32;
    c.depth = 2;
    c.num_heads = 2;
    c
}

pub fn tiny_mae(target: TargetConfig) -> ModelConfig {
    ModelConfig {
        encoder: tiny_vit(3).into(),
        method: Method::Mae {
            decoder: DecoderConfig {
                embed_dim: 32,
                depth: 1,
                num_heads: 2,
                mlp_ratio: 4.0,
            },
        },
        target,
    }
}

pub fn tiny_simmim(target: TargetConfig) -> ModelConfig {
    ModelConfig {
        encoder: tiny_vit(3).into(),
        method: Method::SimMim,
        target,
    }
}

pub fn norm_pix() -> TargetConfig {
    TargetConfig::Pixels {
        loss: PixelLoss::Mse,
        norm_pix: true,
    }
}

/// Smooth random images `(B, C, H, W)`: sums of a few random plane waves, so
/// hidden patches are predictable from visible ones.
pub fn images(b: usize, c: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = MimRng::seed_from_u64(seed);
    let mut data = vec![0f32; b * c * h * w];
    for img in data.chunks_mut(c * h * w) {
        let waves: Vec<(f32, f32, f32)> = (0..3)
            .map(|_| {
                (
                    rng.random_range(-0.6f32..0.6),
                    rng.random_range(-0.6f32..0.6),
                    rng.random_range(0.0f32..6.3),
                )
            })
            .collect();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v: f32 = waves
                        .iter()
                        .map(|(fy, fx, ph)| (fy * y as f32 + fx * x as f32 + ph + ch as f32).sin())
                        .sum();
                    img[(ch * h + y) * w + x] = v / 3.0;
                }
            }
        }
    }
    Tensor::new(data, &[b, c, h, w]).unwrap()
}

/// MAE's random masking (75%) of `batch` images on the tiny models' 4×4 grid.
pub fn mae_mask(batch: usize, rng: &mut MimRng) -> Mask {
    Mask::sample(
        MaskingConfig::mae_default().build(4, [4, 4]).unwrap().as_ref(),
        batch,
        [4, 4],
        rng,
    )
}

/// The gradients of one training forward's loss.
pub fn loss_gradients(model: &MimModel, imgs: &Tensor, mask: &Mask, rng: &mut MimRng) -> GradStore {
    model.forward(imgs, mask, true, rng).unwrap().loss.backward().unwrap()
}
