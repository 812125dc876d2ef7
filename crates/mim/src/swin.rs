//! The Swin Transformer's layers (Liu et al. 2021), from the window kernels
//! of `tessera_kernels::window`: a block of windowed self-attention, with or
//! without the cyclic shift, and patch merging between stages. Names follow
//! the official code (`norm1`, `attn.qkv`, `attn.relative_position_bias_table`,
//! `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`; `downsample.norm`,
//! `downsample.reduction`). The encoder that stacks them is issue 12's next
//! step.
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
use crate::error::Result;
use crate::layers::{Attention, Block, LayerNorm, Linear, Module, drop_path_scale, join};
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
        let n = self.window * self.window;
        let windows = x.window_partition(self.window, self.shift)?; // (B·nW, N, C)
        let nw = windows.shape()[0] / b.max(1);
        let table = self
            .block
            .attn
            .relative_position_bias_table
            .as_ref()
            .expect("a Swin block has a relative table");
        let mut bias = table.relpos_bias(&self.index, 1, n)?; // (1, H, N, N)
        if let Some(m) = &self.mask {
            bias = bias.add(m)?; // (nW, H, N, N): window k of every image uses group k
        }
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
    use crate::masking::MimRng;
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
