//! Attention maps: where a trained encoder looks, as numbers on a grid.
//!
//! Every map comes from the probabilities the forward itself multiplies the
//! values by (`Tensor::attention_probabilities`, the fused kernel's own
//! logits and softmax), from a pass in evaluation mode over every patch.
//!
//! A Vision Transformer (`P_l (H, N, N)` of block `l`, `N = 1 + L`, \[CLS\]
//! first):
//! ```text
//! head h of the last block:  P_depth[h, 0, 1..=L]            (the [CLS] query's row)
//! rollout (Abnar & Zuidema 2020):
//!     Â_l = rownorm((mean_h P_l + I) / 2)      R = Â_depth · … · Â_1      map = R[0, 1..=L]
//! ```
//! each on the `(H/p, W/p)` patch grid, row-major.
//!
//! A Swin Transformer has no \[CLS\]. What it draws is the attention each
//! token *receives* in the last block of the last stage: in every window of
//! `N = w²` tokens, `r[h, j] = (1/N) Σ_i P[h, i, j]`, the mean over the
//! window's queries `i` (masked pairs of a shifted window count as 0) of
//! the probability that query `i` puts on token `j`; placed back on the last
//! stage's grid (the cyclic shift undone), one map per head, and their mean
//! over heads as the combined map.

use crate::error::{MimError, Result};
use crate::model::encoder::Encoder;
use crate::model::swin::SwinTransformer;
use crate::model::vit::VisionTransformer;
use tessera_tensor::Tensor;

/// What the maps of an [`AttentionMaps`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// ViT: per head the last block's \[CLS\] row; combined, attention rollout.
    VitCls,
    /// Swin: per head the attention a token receives in the last block;
    /// combined, the mean over heads.
    SwinReceived,
}

/// The maps of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageMaps {
    /// One map per head, `grid[0]·grid[1]` values each, row-major.
    pub heads: Vec<Vec<f32>>,
    /// Rollout (ViT) or the heads' mean (Swin), `grid[0]·grid[1]` values.
    pub combined: Vec<f32>,
}

/// Attention maps of a batch of images (see the module's documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMaps {
    pub kind: MapKind,
    /// The grid the maps lie on: the patch grid (ViT) or the last stage's (Swin).
    pub grid: [usize; 2],
    /// One entry per image, in batch order.
    pub images: Vec<ImageMaps>,
}

impl AttentionMaps {
    /// Heads per image.
    pub fn heads(&self) -> usize {
        self.images.first().map_or(0, |m| m.heads.len())
    }
}

/// The maps of whichever encoder this is.
pub fn encoder_attention(encoder: &Encoder, imgs: &Tensor) -> Result<AttentionMaps> {
    match encoder {
        Encoder::Vit(v) => vit_attention(v, imgs),
        Encoder::Swin(s) => swin_attention(s, imgs),
    }
}

/// A ViT's maps for `imgs (B, C, H, W)`: per head the last block's \[CLS\]
/// attention over the patches, and rollout across all blocks.
pub fn vit_attention(vit: &VisionTransformer, imgs: &Tensor) -> Result<AttentionMaps> {
    vit.check_images(imgs)?;
    let probs = vit.attention_probabilities(imgs)?; // depth × (B, H, N, N)
    let Some(last) = probs.last() else {
        return Err(MimError::Input("an encoder without blocks has no attention".into()));
    };
    let [b, h, n, _] = *last.shape() else {
        unreachable!("probabilities are (B, H, N, N)")
    };
    let data: Vec<Vec<f32>> = probs.iter().map(|p| p.to_vec()).collect();
    let per_image = h * n * n;
    let images = (0..b)
        .map(|i| {
            let blocks: Vec<&[f32]> = data.iter().map(|p| &p[i * per_image..(i + 1) * per_image]).collect();
            let last = blocks[blocks.len() - 1];
            let heads = (0..h).map(|hi| last[hi * n * n + 1..hi * n * n + n].to_vec()).collect();
            let r = rollout(&blocks, h, n);
            ImageMaps {
                heads,
                combined: r[1..n].to_vec(),
            }
        })
        .collect();
    Ok(AttentionMaps {
        kind: MapKind::VitCls,
        grid: vit.config.grid(),
        images,
    })
}

/// Attention rollout of one image: `blocks[l]` is block `l`'s `P (H, N, N)`;
/// returns `R = Â_last · … · Â_first` `(N, N)` with
/// `Â = rownorm((mean_h P + I) / 2)`. Every row of `R` sums to 1.
pub fn rollout(blocks: &[&[f32]], h: usize, n: usize) -> Vec<f32> {
    let mut r: Vec<f32> = (0..n * n).map(|ij| if ij / n == ij % n { 1.0 } else { 0.0 }).collect();
    let mut a = vec![0f32; n * n];
    let mut next = vec![0f32; n * n];
    for p in blocks {
        assert_eq!(p.len(), h * n * n, "rollout: a block's P is (H {h}, N {n}, N {n})");
        // Â = (mean_h P + I) / 2, rows renormalised.
        for (ij, v) in a.iter_mut().enumerate() {
            let mean = (0..h).map(|hi| p[hi * n * n + ij]).sum::<f32>() / h as f32;
            *v = 0.5 * (mean + if ij / n == ij % n { 1.0 } else { 0.0 });
        }
        for row in a.chunks_exact_mut(n) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        // R ← Â · R.
        for (i, out) in next.chunks_exact_mut(n).enumerate() {
            out.fill(0.0);
            for (k, &aik) in a[i * n..(i + 1) * n].iter().enumerate() {
                for (o, &rkj) in out.iter_mut().zip(&r[k * n..(k + 1) * n]) {
                    *o += aik * rkj;
                }
            }
        }
        std::mem::swap(&mut r, &mut next);
    }
    r
}

/// A Swin encoder's maps for `imgs (B, C, H, W)`: per head the attention
/// each token receives in the last block, on the last stage's grid, and
/// the mean over heads.
pub fn swin_attention(swin: &SwinTransformer, imgs: &Tensor) -> Result<AttentionMaps> {
    crate::model::layers::check_image_shape(imgs, swin.config.in_chans, swin.config.img_size)?;
    let block = swin
        .layers
        .last()
        .and_then(|s| s.blocks.last())
        .ok_or_else(|| MimError::Input("a Swin encoder without blocks has no attention".into()))?;
    let p = swin.last_block_probabilities(imgs)?; // (B·nW, H, N, N)
    let [bw, h, n, _] = *p.shape() else {
        unreachable!("probabilities are (B·nW, H, N, N)")
    };
    let p = p.to_vec();
    // received (B·nW, N, H): the mean over queries of each key's column.
    let mut received = vec![0f32; bw * n * h];
    for w in 0..bw {
        for hi in 0..h {
            let block_p = &p[(w * h + hi) * n * n..][..n * n];
            for row in block_p.chunks_exact(n) {
                for (j, &v) in row.iter().enumerate() {
                    received[(w * n + j) * h + hi] += v / n as f32;
                }
            }
        }
    }
    let grid = block.grid;
    // (B, gh, gw, H): the windows put back and the shift rolled back.
    let on_grid = Tensor::new(received, &[bw, n, h])?.window_reverse(block.window, block.shift, grid)?;
    let cells = grid[0] * grid[1];
    let v = on_grid.to_vec();
    let b = v.len() / (cells * h).max(1);
    let images = (0..b)
        .map(|i| {
            let img = &v[i * cells * h..(i + 1) * cells * h];
            let heads: Vec<Vec<f32>> = (0..h).map(|hi| (0..cells).map(|c| img[c * h + hi]).collect()).collect();
            let combined = (0..cells)
                .map(|c| img[c * h..(c + 1) * h].iter().sum::<f32>() / h as f32)
                .collect();
            ImageMaps { heads, combined }
        })
        .collect();
    Ok(AttentionMaps {
        kind: MapKind::SwinReceived,
        grid,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SwinConfig, VitConfig};
    use crate::rng::MimRng;
    use rand::SeedableRng;

    fn images(b: usize, size: usize, seed: u64) -> Tensor {
        let v = tessera_tensor::init::normal(b * 3 * size * size, 0.0, 1.0, &mut MimRng::seed_from_u64(seed));
        Tensor::new(v, &[b, 3, size, size]).unwrap()
    }

    /// A 2-block ViT of width 16 and 2 heads on 12×12 images, patches of 4
    /// (a 3×3 grid), with weights drawn at a scale that makes attention
    /// far from uniform.
    fn small_vit() -> VisionTransformer {
        let mut c = VitConfig::preset("vit-mini", [12, 12], 4, 3).unwrap();
        (c.embed_dim, c.depth, c.num_heads) = (16, 2, 2);
        let vit = VisionTransformer::new(c, &mut MimRng::seed_from_u64(1)).unwrap();
        for b in &vit.blocks {
            let w = &b.attn.qkv.weight;
            w.set_data(&tessera_tensor::init::normal(
                w.numel(),
                0.0,
                0.5,
                &mut MimRng::seed_from_u64(2),
            ))
            .unwrap();
        }
        vit
    }

    /// The last block's [CLS] maps from the block's q and k by hand: norm1
    /// of the block's input, the qkv linear, heads split, softmax of
    /// `q_0·k_j/√Dh` over all tokens j, keys 1..=L kept.
    #[test]
    fn vit_cls_maps_are_the_last_blocks_softmax() {
        let vit = small_vit();
        let imgs = images(2, 12, 3);
        let maps = vit_attention(&vit, &imgs).unwrap();
        assert_eq!(
            (maps.kind, maps.grid, maps.images.len(), maps.heads()),
            (MapKind::VitCls, [3, 3], 2, 2)
        );
        let (d, h, n) = (16, 2, 10);
        let dh = d / h;
        let mut x = vit.prepend_cls(&vit.embed_patches(&imgs).unwrap()).unwrap();
        x = vit.blocks[0].forward(&x).unwrap();
        let last = &vit.blocks[1];
        let qkv = last
            .attn
            .qkv
            .forward(&last.norm1.forward(&x).unwrap())
            .unwrap()
            .to_vec();
        for b in 0..2 {
            for hi in 0..h {
                let at = |t: usize, slot: usize, c: usize| qkv[(b * n + t) * 3 * d + slot * d + hi * dh + c] as f64;
                let s: Vec<f64> = (0..n)
                    .map(|j| (0..dh).map(|c| at(0, 0, c) * at(j, 1, c)).sum::<f64>() / (dh as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                let got = &maps.images[b].heads[hi];
                assert_eq!(got.len(), 9);
                for j in 1..n {
                    let want = (s[j] - m).exp() / z;
                    assert!(
                        (got[j - 1] as f64 - want).abs() < 1e-5,
                        "image {b} head {hi} key {j}: {} vs {want}",
                        got[j - 1]
                    );
                }
            }
        }
    }

    /// Rollout by its definition on the 2-block model, entry by entry in
    /// f64: `R[0, j] = Σ_k Â_2[0, k] Â_1[k, j]`; every row of R sums to 1.
    #[test]
    fn rollout_is_the_product_of_the_averaged_blocks() {
        let vit = small_vit();
        let imgs = images(1, 12, 4);
        let maps = vit_attention(&vit, &imgs).unwrap();
        let probs: Vec<Vec<f32>> = vit
            .attention_probabilities(&imgs)
            .unwrap()
            .iter()
            .map(|p| p.to_vec())
            .collect();
        let (h, n) = (2, 10);
        let a_hat = |p: &[f32], i: usize, j: usize| -> f64 {
            let a = |i: usize, j: usize| {
                let mean = (0..h).map(|hi| p[(hi * n + i) * n + j] as f64).sum::<f64>() / h as f64;
                0.5 * (mean + if i == j { 1.0 } else { 0.0 })
            };
            a(i, j) / (0..n).map(|k| a(i, k)).sum::<f64>()
        };
        for j in 1..n {
            let want: f64 = (0..n).map(|k| a_hat(&probs[1], 0, k) * a_hat(&probs[0], k, j)).sum();
            let got = maps.images[0].combined[j - 1] as f64;
            assert!((got - want).abs() < 1e-5, "rollout key {j}: {got} vs {want}");
        }
        let blocks: Vec<&[f32]> = probs.iter().map(|p| p.as_slice()).collect();
        for row in rollout(&blocks, h, n).chunks_exact(n) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // No blocks at all: the identity.
        assert_eq!(rollout(&[], 1, 2), vec![1.0, 0.0, 0.0, 1.0]);
    }

    /// Swin (two stages, the last an 8×8 grid of four shifted 4×4 windows):
    /// maps on the last stage's grid, finite, and, since every query's row
    /// sums to 1, each head's received attention sums to 1 in every window.
    #[test]
    fn swin_maps_lie_on_the_last_stage_grid() {
        let mut c = SwinConfig::preset("swin-mini", [32, 32], 3).unwrap();
        (c.depths, c.num_heads) = (vec![2, 2], vec![3, 6]);
        let swin = SwinTransformer::new(c, &mut MimRng::seed_from_u64(5)).unwrap();
        let last = swin.layers[1].blocks.last().unwrap();
        assert_eq!((last.grid, last.window, last.shift), ([8, 8], 4, 2));
        let maps = swin_attention(&swin, &images(2, 32, 6)).unwrap();
        assert_eq!(
            (maps.kind, maps.grid, maps.images.len(), maps.heads()),
            (MapKind::SwinReceived, [8, 8], 2, 6)
        );
        for m in &maps.images {
            assert_eq!(m.combined.len(), 64);
            for head in &m.heads {
                assert_eq!(head.len(), 64);
                assert!(head.iter().all(|v| v.is_finite() && *v >= 0.0));
                // 4 windows, each summing to 1.
                assert!((head.iter().sum::<f32>() - 4.0).abs() < 1e-4);
            }
            assert!((m.combined.iter().sum::<f32>() - 4.0).abs() < 1e-4);
        }
        let wrong = images(1, 16, 7);
        assert!(swin_attention(&swin, &wrong).is_err());
    }
}
