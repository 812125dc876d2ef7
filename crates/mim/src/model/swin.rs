//! The Swin Transformer's layers (Liu et al. 2021), from the window kernels
//! of `tessera_kernels::window`: a block of windowed self-attention, with or
//! without the cyclic shift, and patch merging between stages. Names follow
//! the official code (`norm1`, `attn.qkv`, `attn.relative_position_bias_table`,
//! `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`; `downsample.norm`,
//! `downsample.reduction`), and [`SwinTransformer`] stacks them into the
//! encoder (presets `swin-mini`, `swin-tiny`, `swin-small`, `swin-base`,
//! `simmim-swin-base`), which [`crate::model::encoder::Encoder`] offers to the
//! models beside the ViT (SimMIM only: see [`crate::model::mim`]).
//!
//! ```text
//! x (B, H, W, C)
//!   → roll by (−s, −s), partition into windows       (B·nW, w², C)
//!   → x + attn(norm1(x)) with relative bias + mask   per window
//!   → x + mlp(norm2(x))                              per token
//!   → reverse the partition and the roll              (B, H, W, C)
//! ```
//! LayerNorm, the MLP and the residual adds act on each token alone, so
//! running the whole pre-norm block on the windows is Swin's block exactly;
//! only attention sees the window. Stochastic depth drops a branch for a whole
//! image: the per-image factor is repeated over its windows.

use crate::config::QkvBias;
pub use crate::config::SwinConfig;
use crate::error::Result;
use crate::model::layers::{Attention, Block, LayerNorm, Linear, Module, drop_path_scale, join};
use rand::Rng;
use tessera_kernels::{relpos, window};
use tessera_tensor::Tensor;

/// One Swin block over a `grid` of tokens.
pub struct SwinBlock {
    /// The pre-norm block, run on windows; its attention owns the
    /// `((2w−1)², H)` relative position table.
    pub block: Block,
    pub grid: [usize; 2],
    pub window: usize,
    pub shift: usize,
    /// `(w², w²)` relative index (Swin's, no \[CLS\]).
    index: Vec<u32>,
    /// `(nW, 1, w², w²)` shifted-window mask, if shifted.
    mask: Option<Tensor>,
}

impl SwinBlock {
    /// A block of `heads` over a `grid`, windows of `window` shifted by
    /// `shift`. A window no smaller than the grid becomes the grid, without a
    /// shift (as the official code does).
    #[allow(clippy::too_many_arguments)]
    pub fn new<R: Rng + ?Sized>(
        dim: usize,
        heads: usize,
        grid: [usize; 2],
        window: usize,
        shift: usize,
        mlp_hidden: usize,
        eps: f32,
        rng: &mut R,
    ) -> Result<SwinBlock> {
        let (window, shift) = if grid[0].min(grid[1]) <= window {
            (grid[0].min(grid[1]), 0)
        } else {
            (window, shift)
        };
        window::WindowDims::new(1, grid[0], grid[1], 1, window, shift); // checks the tiling
        let rows = relpos::table_rows([window, window], false);
        let attn = Attention::with(dim, heads, QkvBias::Qkv, Some(rows), rng);
        if let Some(t) = &attn.relative_position_bias_table {
            // Swin: trunc_normal_(std=.02).
            t.set_data(&tessera_tensor::init::trunc_normal(
                t.numel(),
                0.0,
                0.02,
                -2.0,
                2.0,
                rng,
            ))?;
        }
        let block = Block::with(attn, mlp_hidden, eps, None, rng);
        let n = window * window;
        let mask = if shift > 0 {
            let m = window::shifted_window_mask(grid[0], grid[1], window, shift);
            let nw = m.len() / (n * n);
            Some(Tensor::new(m, &[nw, 1, n, n])?)
        } else {
            None
        };
        Ok(SwinBlock {
            block,
            grid,
            window,
            shift,
            index: relpos::grid_index([window, window], false),
            mask,
        })
    }

    /// `x (B, H, W, C)` → `(B, H, W, C)`; in training, each image's branches
    /// are dropped at `drop_path` (drawn from `rng`).
    pub fn forward<R: Rng + ?Sized>(&self, x: &Tensor, drop_path: f32, train: bool, rng: &mut R) -> Result<Tensor> {
        let b = x.shape()[0];
        let windows = x.window_partition(self.window, self.shift)?; // (B·nW, N, C)
        let nw = windows.shape()[0] / b.max(1);
        let bias = self.window_bias()?;
        let out = if train && drop_path > 0.0 {
            // One factor per image, repeated over its windows.
            let per_window = |rng: &mut R| -> Result<Tensor> {
                let s = drop_path_scale(b, drop_path, rng)?.to_vec();
                let v: Vec<f32> = s.iter().flat_map(|&f| std::iter::repeat_n(f, nw)).collect();
                Ok(Tensor::new(v, &[b * nw, 1, 1])?)
            };
            let (s1, s2) = (per_window(rng)?, per_window(rng)?);
            self.block.forward_scaled(&windows, Some(&bias), Some((&s1, &s2)))?
        } else {
            self.block.forward_scaled(&windows, Some(&bias), None)?
        };
        Ok(out.window_reverse(self.window, self.shift, self.grid)?)
    }
}

impl SwinBlock {
    /// The logits' bias of every window: the relative position bias
    /// `(1, H, N, N)`, plus the shifted-window mask `(nW, 1, N, N)` when
    /// shifted (then `(nW, H, N, N)`: window k of every image uses group k).
    fn window_bias(&self) -> Result<Tensor> {
        let n = self.window * self.window;
        let table = self
            .block
            .attn
            .relative_position_bias_table
            .as_ref()
            .expect("a Swin block has a relative table");
        let bias = table.relpos_bias(&self.index, 1, n)?; // (1, H, N, N)
        Ok(match &self.mask {
            Some(m) => bias.add(m)?,
            None => bias,
        })
    }

    /// The attention probabilities of this block for `x (B, H, W, C)`:
    /// `(B·nW, heads, N, N)`, window `k` of image `b` at row `b·nW + k`, its
    /// tokens in window order after the cyclic shift (as
    /// [`Tensor::window_partition`] lays them out). No gradient.
    pub fn attention_probabilities(&self, x: &Tensor) -> Result<Tensor> {
        let windows = x.window_partition(self.window, self.shift)?; // (B·nW, N, C)
        Ok(self
            .block
            .attention_probabilities(&windows, Some(&self.window_bias()?))?)
    }
}

impl Module for SwinBlock {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.block.visit(prefix, f);
    }
}

/// Swin's patch merging: 2×2 neighbours concatenated, LayerNorm, then a
/// linear map `4C → 2C` without bias: `(B, H, W, C)` → `(B, H/2, W/2, 2C)`.
pub struct PatchMerging {
    pub norm: LayerNorm,
    pub reduction: Linear,
}

impl PatchMerging {
    pub fn new<R: Rng + ?Sized>(dim: usize, eps: f32, rng: &mut R) -> Self {
        PatchMerging {
            norm: LayerNorm::new(4 * dim, eps),
            reduction: Linear::new(4 * dim, 2 * dim, false, rng),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.reduction.forward(&self.norm.forward(&x.patch_merge()?)?)?)
    }
}

impl Module for PatchMerging {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.norm.visit(&join(prefix, "norm"), f);
        self.reduction.visit(&join(prefix, "reduction"), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::MimRng;
    use rand::SeedableRng;

    fn rng() -> MimRng {
        MimRng::seed_from_u64(3)
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(
            tessera_tensor::init::normal(n, 0.0, 1.0, &mut MimRng::seed_from_u64(seed)),
            shape,
        )
        .unwrap()
    }

    /// Swin's block from its definition, one window at a time: roll the grid
    /// by (−s, −s), cut window k, run the pre-norm block on its tokens with
    /// the relative bias plus mask k, put the tokens back and roll back.
    fn by_definition(sb: &SwinBlock, x: &Tensor) -> Vec<f32> {
        let [b, h, w, c] = *x.shape() else { unreachable!() };
        let (ws, s) = (sb.window, sb.shift);
        let n = ws * ws;
        let xv = x.to_vec();
        let table = sb.block.attn.relative_position_bias_table.as_ref().unwrap();
        let rel = table
            .relpos_bias(&relpos::grid_index([ws, ws], false), 1, n)
            .unwrap()
            .to_vec();
        let heads = sb.block.attn.num_heads;
        let mut out = vec![f32::NAN; xv.len()];
        for bi in 0..b {
            for (k, (bh, bw)) in (0..h / ws).flat_map(|i| (0..w / ws).map(move |j| (i, j))).enumerate() {
                // Grid position of token t of this window (after the roll).
                let pos = |t: usize| ((bh * ws + t / ws + s) % h, (bw * ws + t % ws + s) % w);
                let mut tokens = Vec::new();
                for t in 0..n {
                    let (r, col) = pos(t);
                    tokens.extend_from_slice(&xv[((bi * h + r) * w + col) * c..][..c]);
                }
                let mut bias = rel.clone();
                if let Some(m) = &sb.mask {
                    let m = m.to_vec();
                    for hd in 0..heads {
                        for (v, mv) in bias[hd * n * n..(hd + 1) * n * n].iter_mut().zip(&m[k * n * n..]) {
                            *v += mv;
                        }
                    }
                }
                let y = sb
                    .block
                    .forward_biased(
                        &Tensor::new(tokens, &[1, n, c]).unwrap(),
                        Some(&Tensor::new(bias, &[1, heads, n, n]).unwrap()),
                    )
                    .unwrap()
                    .to_vec();
                for t in 0..n {
                    let (r, col) = pos(t);
                    out[((bi * h + r) * w + col) * c..][..c].copy_from_slice(&y[t * c..(t + 1) * c]);
                }
            }
        }
        out
    }

    #[test]
    fn blocks_match_the_definition_with_and_without_shift() {
        for (grid, window, shift) in [
            ([4, 4], 2, 0),
            ([4, 4], 2, 1),
            ([6, 6], 3, 1),
            ([8, 4], 4, 2),
            ([3, 3], 7, 3),
        ] {
            let sb = SwinBlock::new(8, 2, grid, window, shift, 16, 1e-5, &mut rng()).unwrap();
            let x = random(&[2, grid[0], grid[1], 8], 1);
            let got = sb.forward(&x, 0.0, false, &mut rng()).unwrap().to_vec();
            let want = by_definition(&sb, &x);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{grid:?} w{window} s{shift}: {g} vs {w}");
            }
        }
        // A window no smaller than the grid is the grid, unshifted.
        let sb = SwinBlock::new(8, 2, [3, 3], 7, 3, 16, 1e-5, &mut rng()).unwrap();
        assert_eq!((sb.window, sb.shift), (3, 0));
    }

    #[test]
    fn names_gradients_and_drop_path_per_image() {
        let sb = SwinBlock::new(8, 2, [4, 4], 2, 1, 16, 1e-5, &mut rng()).unwrap();
        let names: Vec<String> = sb.named_tensors().into_iter().map(|(n, _)| n).collect();
        for want in [
            "norm1.weight",
            "attn.qkv.bias",
            "attn.relative_position_bias_table",
            "mlp.fc2.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let table = sb.block.attn.relative_position_bias_table.clone().unwrap();
        assert_eq!(table.shape(), &[9, 2]);
        let x = random(&[2, 4, 4, 8], 2);
        let g = sb
            .forward(&x, 0.0, true, &mut rng())
            .unwrap()
            .sum_all()
            .backward()
            .unwrap();
        assert!(g.get(&table).unwrap().iter().any(|v| *v != 0.0));
        // Rate 0.5: each image's output is one of the four whole-image
        // outcomes (each branch dropped, or kept ×2), never a mix of windows.
        let y = sb
            .forward(&x, 0.5, true, &mut MimRng::seed_from_u64(11))
            .unwrap()
            .to_vec();
        let per = 4 * 4 * 8;
        for bi in 0..2 {
            let xb = Tensor::new(x.to_vec()[bi * per..(bi + 1) * per].to_vec(), &[1, 4, 4, 8]).unwrap();
            let windows = xb.window_partition(2, 1).unwrap();
            let mut bias = table.relpos_bias(&relpos::grid_index([2, 2], false), 1, 4).unwrap();
            bias = bias.add(sb.mask.as_ref().unwrap()).unwrap();
            let outcome = |a: f32, m: f32| {
                let s = |v: f32| Tensor::new(vec![v; 4], &[4, 1, 1]).unwrap();
                let out = sb
                    .block
                    .forward_scaled(&windows, Some(&bias), Some((&s(a), &s(m))))
                    .unwrap();
                out.window_reverse(2, 1, [4, 4]).unwrap().to_vec()
            };
            let yb = &y[bi * per..(bi + 1) * per];
            let close = |o: &[f32]| o.iter().zip(yb).all(|(p, q)| (p - q).abs() < 1e-5);
            let found = [(0.0, 0.0), (0.0, 2.0), (2.0, 0.0), (2.0, 2.0)]
                .into_iter()
                .any(|(a, m)| close(&outcome(a, m)));
            assert!(found, "image {bi} is no whole-image outcome");
        }

        let pm = PatchMerging::new(8, 1e-5, &mut rng());
        let merged = pm.forward(&x).unwrap();
        assert_eq!(merged.shape(), &[2, 2, 2, 16]);
        let names: Vec<String> = pm.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["norm.weight", "norm.bias", "reduction.weight"]);
    }
}

/// One stage: blocks alternating regular and shifted windows, then patch
/// merging (all stages but the last).
pub struct SwinStage {
    pub blocks: Vec<SwinBlock>,
    /// The drop-path rate of each block.
    pub drop_path: Vec<f32>,
    pub downsample: Option<PatchMerging>,
}

/// The Swin Transformer encoder (Liu et al. 2021), official names:
/// `patch_embed.proj`, `patch_embed.norm`, `layers.{i}.blocks.{j}.…`,
/// `layers.{i}.downsample.…`, `norm`.
pub struct SwinTransformer {
    pub config: SwinConfig,
    pub patch_embed: crate::model::layers::PatchEmbed,
    pub patch_norm: LayerNorm,
    /// `(1, L, C)` with `ape`.
    pub absolute_pos_embed: Option<Tensor>,
    pub layers: Vec<SwinStage>,
    pub norm: LayerNorm,
}

impl SwinTransformer {
    pub fn new<R: Rng + ?Sized>(config: SwinConfig, rng: &mut R) -> Result<SwinTransformer> {
        config.validate()?;
        let c = &config;
        let total: usize = c.depths.iter().sum();
        let rate = |k: usize| {
            if total > 1 {
                c.drop_path * k as f32 / (total - 1) as f32
            } else {
                0.0
            }
        };
        let patch_embed = crate::model::layers::PatchEmbed::new(c.in_chans, c.embed_dim, c.patch_size, rng);
        let patch_norm = LayerNorm::new(c.embed_dim, c.norm_eps);
        let mut k = 0;
        let mut layers = Vec::new();
        for (i, (&depth, &heads)) in c.depths.iter().zip(&c.num_heads).enumerate() {
            let (dim, grid) = (c.stage_dim(i), c.stage_grid(i));
            let hidden = (dim as f32 * c.mlp_ratio).round() as usize;
            let mut blocks = Vec::new();
            let mut drop_path = Vec::new();
            for j in 0..depth {
                let shift = if j % 2 == 1 { c.window / 2 } else { 0 };
                blocks.push(SwinBlock::new(
                    dim, heads, grid, c.window, shift, hidden, c.norm_eps, rng,
                )?);
                drop_path.push(rate(k));
                k += 1;
            }
            let downsample = (i + 1 < c.depths.len()).then(|| PatchMerging::new(dim, c.norm_eps, rng));
            layers.push(SwinStage {
                blocks,
                drop_path,
                downsample,
            });
        }
        let norm = LayerNorm::new(c.num_features(), c.norm_eps);
        let absolute_pos_embed = if c.ape {
            // Swin: trunc_normal_(std=.02).
            let [h, w] = c.stage_grid(0);
            let v = tessera_tensor::init::trunc_normal(h * w * c.embed_dim, 0.0, 0.02, -2.0, 2.0, rng);
            Some(Tensor::param(v, &[1, h * w, c.embed_dim])?)
        } else {
            None
        };
        let swin = SwinTransformer {
            config,
            patch_embed,
            patch_norm,
            absolute_pos_embed,
            layers,
            norm,
        };
        swin.official_init(rng)?;
        Ok(swin)
    }

    /// Swin's `_init_weights`: every linear weight normal with std 0.02
    /// (timm's `trunc_normal_` at ±2, which truncates nothing), biases 0;
    /// the patch convolution as PyTorch's default (uniform in ±1/√fan_in).
    fn official_init<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<()> {
        use tessera_tensor::init::{trunc_normal, uniform};
        let pe = &self.patch_embed;
        let bound = 1.0 / ((pe.weight.numel() / self.config.embed_dim) as f32).sqrt();
        pe.weight.set_data(&uniform(pe.weight.numel(), -bound, bound, rng))?;
        pe.bias.set_data(&uniform(pe.bias.numel(), -bound, bound, rng))?;
        let mut linears: Vec<&Linear> = Vec::new();
        for stage in &self.layers {
            for b in &stage.blocks {
                let (a, m) = (&b.block.attn, &b.block.mlp);
                linears.extend([&a.qkv, &a.proj, &m.fc1, &m.fc2]);
            }
            if let Some(d) = &stage.downsample {
                linears.push(&d.reduction);
            }
        }
        for l in linears {
            l.weight
                .set_data(&trunc_normal(l.weight.numel(), 0.0, 0.02, -2.0, 2.0, rng))?;
            if let Some(b) = &l.bias {
                b.set_data(&vec![0.0; b.numel()])?;
            }
        }
        Ok(())
    }

    /// Patch embeddings, normalised: `(B, L, C)` for images `(B, C, H, W)`
    /// (without the absolute positions: [`SwinTransformer::stages`] adds
    /// them, after SimMIM's mask token, as the official code does).
    pub fn embed(&self, imgs: &Tensor) -> Result<Tensor> {
        Ok(self.patch_norm.forward(&self.patch_embed.forward(imgs)?)?)
    }

    /// The stages and the final norm over embedded tokens `x (B, L, C)` →
    /// `(B, H/s, W/s, C_last)` (channels last, `s` the total stride).
    /// With `ape`, the absolute position embedding is added first.
    pub fn stages<R: Rng + ?Sized>(&self, x: &Tensor, train: bool, rng: &mut R) -> Result<Tensor> {
        self.stages_observed(x, train, rng, &mut |_, _, _| Ok(()))
    }

    /// The attention probabilities of the last block of the last stage,
    /// `(B·nW, heads, N, N)` as [`SwinBlock::attention_probabilities`] gives
    /// them, from a pass in evaluation mode over `imgs (B, C, H, W)`.
    pub fn last_block_probabilities(&self, imgs: &Tensor) -> Result<Tensor> {
        let (last_stage, last_block) = (
            self.layers.len() - 1,
            self.layers.last().map_or(0, |s| s.blocks.len().saturating_sub(1)),
        );
        let mut found = None;
        tessera_tensor::no_grad(|| -> Result<()> {
            let mut rng = <crate::rng::MimRng as rand::SeedableRng>::seed_from_u64(0);
            let x = self.embed(imgs)?;
            self.stages_observed(&x, false, &mut rng, &mut |stage, j, x| {
                if (stage, j) == (last_stage, last_block) {
                    found = Some(self.layers[stage].blocks[j].attention_probabilities(x)?);
                }
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(found.expect("a Swin encoder has a block in its last stage"))
    }

    /// [`SwinTransformer::stages`], calling `observe(stage, block, input)`
    /// before each block with the grid `(B, H, W, C)` that block is given.
    fn stages_observed<R: Rng + ?Sized>(
        &self,
        x: &Tensor,
        train: bool,
        rng: &mut R,
        observe: &mut dyn FnMut(usize, usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let b = x.shape()[0] as isize;
        let [h, w] = self.config.stage_grid(0);
        let x = match &self.absolute_pos_embed {
            Some(pos) => x.add(pos)?, // (B, L, C) + (1, L, C)
            None => x.clone(),
        };
        let mut x = x.reshape(&[b, h as isize, w as isize, -1])?;
        for (i, stage) in self.layers.iter().enumerate() {
            for (j, (block, &rate)) in stage.blocks.iter().zip(&stage.drop_path).enumerate() {
                observe(i, j, &x)?;
                x = block.forward(&x, rate, train, rng)?;
            }
            if let Some(m) = &stage.downsample {
                x = m.forward(&x)?;
            }
        }
        Ok(self.norm.forward(&x)?)
    }

    /// The image representation: the mean of the last stage's tokens, `(B, C_last)`.
    pub fn features(&self, imgs: &Tensor) -> Result<Tensor> {
        let mut rng = <crate::rng::MimRng as rand::SeedableRng>::seed_from_u64(0);
        let x = self.stages(&self.embed(imgs)?, false, &mut rng)?; // (B, h, w, C)
        Ok(x.mean(&[1, 2], false)?)
    }
}

impl Module for SwinTransformer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        self.patch_norm.visit(&join(prefix, "patch_embed.norm"), f);
        if let Some(pos) = &self.absolute_pos_embed {
            f(join(prefix, "absolute_pos_embed"), pos);
        }
        for (i, stage) in self.layers.iter().enumerate() {
            let p = join(prefix, &format!("layers.{i}"));
            for (j, block) in stage.blocks.iter().enumerate() {
                block.visit(&join(&p, &format!("blocks.{j}")), f);
            }
            if let Some(m) = &stage.downsample {
                m.visit(&join(&p, "downsample"), f);
            }
        }
        self.norm.visit(&join(prefix, "norm"), f);
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;
    use crate::rng::MimRng;
    use rand::SeedableRng;

    /// Swin-T without its classifier has 27 519 354 parameters (timm's
    /// `swin_tiny_patch4_window7_224`: 28 288 354, minus the 768 × 1000 + 1000
    /// head); the stages' shapes and names are the official ones.
    #[test]
    fn swin_tiny_parameters_names_and_shapes() {
        let c = SwinConfig::preset("swin-tiny", [224, 224], 3).unwrap();
        assert_eq!((c.stride(), c.num_features(), c.stage_grid(3)), (32, 768, [7, 7]));
        let m = SwinTransformer::new(c, &mut MimRng::seed_from_u64(0)).unwrap();
        let t = m.named_tensors();
        let total: usize = t.iter().map(|(_, x)| x.numel()).sum();
        assert_eq!(total, 27_519_354);
        let shape = |n: &str| t.iter().find(|(k, _)| k == n).map(|(_, x)| x.shape().to_vec());
        assert_eq!(shape("patch_embed.proj.weight"), Some(vec![96, 3, 4, 4]));
        assert_eq!(shape("patch_embed.norm.weight"), Some(vec![96]));
        assert_eq!(
            shape("layers.0.blocks.1.attn.relative_position_bias_table"),
            Some(vec![169, 3])
        );
        assert_eq!(shape("layers.2.downsample.reduction.weight"), Some(vec![768, 1536]));
        assert_eq!(shape("layers.3.blocks.1.mlp.fc1.weight"), Some(vec![3072, 768]));
        assert_eq!(shape("norm.weight"), Some(vec![768]));
        assert_eq!(shape("layers.3.downsample.norm.weight"), None);
        // The last stage (7×7) is one window, unshifted.
        let last = &m.layers[3].blocks[1];
        assert_eq!((last.window, last.shift), (7, 0));
        assert_eq!(m.layers[0].blocks[1].shift, 3);
        // Swin's initialisation: linear weights with std 0.02, biases 0.
        let w = m.layers[2].blocks[0].block.mlp.fc1.weight.to_vec();
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.001, "fc1 std {std}");
        assert!(
            m.layers[0].blocks[0]
                .block
                .attn
                .qkv
                .bias
                .as_ref()
                .unwrap()
                .to_vec()
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn the_small_preset_runs_and_learns() {
        let c = SwinConfig::preset("swin-mini", [32, 32], 3).unwrap();
        assert_eq!((c.stage_grid(0), c.stage_grid(2), c.stride()), ([16, 16], [4, 4], 8));
        let m = SwinTransformer::new(c, &mut MimRng::seed_from_u64(0)).unwrap();
        let imgs = Tensor::new(
            tessera_tensor::init::normal(2 * 3 * 32 * 32, 0.0, 1.0, &mut MimRng::seed_from_u64(1)),
            &[2, 3, 32, 32],
        )
        .unwrap();
        let f = m.features(&imgs).unwrap();
        assert_eq!(f.shape(), &[2, 192]);
        let mut r = MimRng::seed_from_u64(2);
        let loss = m.stages(&m.embed(&imgs).unwrap(), true, &mut r).unwrap().sum_all();
        let g = loss.backward().unwrap();
        for (name, t) in m.named_tensors() {
            assert!(g.get(&t).is_some(), "{name} has no gradient");
        }
    }

    /// Swin's `ape`: a `(1, L, C)` table named `absolute_pos_embed`, std 0.02,
    /// added before the first stage (it changes the features and gets a
    /// gradient). (It is not weight-decayed: `train::recipe`'s tests.)
    #[test]
    fn absolute_positions_are_added_before_the_stages() {
        let mut c = SwinConfig::preset("swin-mini", [32, 32], 3).unwrap();
        c.ape = true;
        let m = SwinTransformer::new(c.clone(), &mut MimRng::seed_from_u64(0)).unwrap();
        let pos = m.absolute_pos_embed.clone().expect("ape on");
        assert_eq!(pos.shape(), &[1, 256, 48]);
        let v = pos.to_vec();
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        let named = m.named_tensors();
        assert_eq!(named.iter().filter(|(n, _)| n == "absolute_pos_embed").count(), 1);
        let imgs = Tensor::new(
            tessera_tensor::init::normal(2 * 3 * 32 * 32, 0.0, 1.0, &mut MimRng::seed_from_u64(1)),
            &[2, 3, 32, 32],
        )
        .unwrap();
        let with = m.features(&imgs).unwrap().to_vec();
        pos.set_data(&vec![0.0; pos.numel()]).unwrap();
        let without = m.features(&imgs).unwrap().to_vec();
        assert!(with.iter().zip(&without).any(|(a, b)| (a - b).abs() > 1e-4));
        let loss = m
            .stages(&m.embed(&imgs).unwrap(), true, &mut MimRng::seed_from_u64(2))
            .unwrap()
            .sum_all();
        let g = loss.backward().unwrap();
        assert!(g.get(&pos).unwrap().iter().any(|&x| x != 0.0));
        // Without `ape` there is no such tensor (the presets' default).
        c.ape = false;
        let plain = SwinTransformer::new(c, &mut MimRng::seed_from_u64(0)).unwrap();
        assert!(plain.absolute_pos_embed.is_none());
    }

    /// SimMIM's Swin-B: window 6 at 192 (stage 3 is 6×6, one window), no
    /// drop path.
    #[test]
    fn simmim_swin_base_preset() {
        let c = SwinConfig::preset("simmim-swin-base", [192, 192], 3).unwrap();
        assert_eq!(
            (c.window, c.drop_path, c.embed_dim, c.stage_grid(3)),
            (6, 0.0, 128, [6, 6])
        );
        assert_eq!(c.stage_window(3), (6, 0));
        assert_eq!(c.stage_window(0), (6, 3));
    }

    #[test]
    fn bad_configurations_are_named() {
        let e = SwinConfig::preset("swin-tiny", [100, 100], 3).unwrap_err().to_string();
        assert!(e.contains("multiples of 32"), "{e}");
        assert!(SwinConfig::preset("swin-huge", [224, 224], 3).is_err());
        let mut c = SwinConfig::preset("swin-mini", [32, 32], 3).unwrap();
        c.num_heads = vec![5, 6, 12];
        assert!(c.validate().unwrap_err().to_string().contains("5 heads"));
    }
}
