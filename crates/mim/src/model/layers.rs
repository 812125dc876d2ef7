//! The building blocks of a Vision Transformer, with PyTorch/timm parameter
//! names and layouts, initialised as MAE's `initialize_weights`: Xavier-uniform
//! linear weights (the patch embedding too, viewed as `(D, C·p·p)`), zero
//! biases, LayerNorm weight 1 and bias 0.

use crate::config::QkvBias;
use crate::error::MimError;
use rand::{Rng, RngExt};
use std::cell::Cell;
use tessera_tensor::init::xavier_uniform;
use tessera_tensor::{Result, Tensor};

/// Something holding named tensors (its part of the `state_dict`).
pub trait Module {
    /// Calls `f(name, tensor)` for every parameter and buffer, with names
    /// prefixed by `prefix` (`"blocks.3"` → `"blocks.3.attn.qkv.weight"`).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));

    /// Every named tensor, in a fixed order.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |name, t| out.push((name, t.clone())));
        out
    }
}

/// `prefix.name`, or `name` without a prefix.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn param(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::param(data, shape).expect("initialiser produces the right number of values")
}

/// `y = x·Wᵀ + b` with `weight (out, in)`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new<R: Rng + ?Sized>(inp: usize, out: usize, bias: bool, rng: &mut R) -> Self {
        Linear {
            weight: param(xavier_uniform(out, inp, rng), &[out, inp]),
            bias: bias.then(|| param(vec![0.0; out], &[out])),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}

/// Layer normalization over the last axis.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f32) -> Self {
        LayerNorm {
            weight: param(vec![1.0; dim], &[dim]),
            bias: param(vec![0.0; dim], &[dim]),
            eps,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

impl Module for LayerNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}

/// Multi-head self-attention with a fused `qkv` projection and an output
/// projection, as timm's `Attention`; optionally BEiT's: `q_bias` and
/// `v_bias` in place of `qkv.bias` (the key's bias fixed at zero), and a
/// relative position bias table of its own.
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    /// `(D)` each, with [`QkvBias::QV`] (then `qkv` has no bias).
    pub q_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    /// `(T, H)`, with [`RelPosBias::PerBlock`](crate::config::RelPosBias::PerBlock); zeros at first (BEiT).
    pub relative_position_bias_table: Option<Tensor>,
}

impl Attention {
    /// timm's attention: `qkv` with a bias of `3·D`.
    pub fn new<R: Rng + ?Sized>(dim: usize, num_heads: usize, rng: &mut R) -> Self {
        Self::with(dim, num_heads, QkvBias::Qkv, None, rng)
    }
    /// With the given `qkv` bias, and a zero relative position table of
    /// `table_rows` rows if asked for.
    pub fn with<R: Rng + ?Sized>(
        dim: usize,
        num_heads: usize,
        qkv_bias: QkvBias,
        table_rows: Option<usize>,
        rng: &mut R,
    ) -> Self {
        let qv = qkv_bias == QkvBias::QV;
        Attention {
            qkv: Linear::new(dim, 3 * dim, qkv_bias == QkvBias::Qkv, rng),
            proj: Linear::new(dim, dim, true, rng),
            num_heads,
            q_bias: qv.then(|| param(vec![0.0; dim], &[dim])),
            v_bias: qv.then(|| param(vec![0.0; dim], &[dim])),
            relative_position_bias_table: table_rows.map(|t| param(vec![0.0; t * num_heads], &[t, num_heads])),
        }
    }
    /// `x (B, N, D)` → `(B, N, D)`, with `bias (G, H, N, N)` added to the logits.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.proj.forward(&self.heads(x, bias)?)
    }
    /// `residual + forward(x)`, the residual added by the projection's product.
    pub fn forward_residual(&self, x: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        self.heads(x, bias)?
            .linear_residual(&self.proj.weight, self.proj.bias.as_ref(), residual)
    }
    /// The probabilities `(B, H, N, N)` that [`Attention::forward`] takes
    /// for `x (B, N, D)` and `bias`: row `i` of head `h` is how token `i`
    /// spreads its attention over the tokens. No gradient.
    pub fn probabilities(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.packed_qkv(x)?.attention_probabilities(self.num_heads, bias)
    }
    /// The packed projections `(B, N, 3D)` of `x (B, N, D)` (timm's layout).
    pub fn packed_qkv(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.q_bias, &self.v_bias) {
            (Some(q), Some(v)) => {
                // BEiT's (q_bias, 0, v_bias): the key's part is a constant.
                let zeros = Tensor::new(vec![0.0; q.numel()], q.shape())?;
                x.linear(&self.qkv.weight, Some(&Tensor::cat(&[q, &zeros, v], 0)?))
            }
            _ => self.qkv.forward(x), // (B, N, 3D)
        }
    }
    /// The heads' outputs before the projection, `(B, N, D)`.
    fn heads(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.packed_qkv(x)?;
        match bias {
            Some(b) => qkv.attention_biased(self.num_heads, b),
            None => qkv.attention(self.num_heads),
        }
    }
}

impl Module for Attention {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        if let Some(q) = &self.q_bias {
            f(join(prefix, "q_bias"), q);
        }
        if let Some(v) = &self.v_bias {
            f(join(prefix, "v_bias"), v);
        }
        self.qkv.visit(&join(prefix, "qkv"), f);
        self.proj.visit(&join(prefix, "proj"), f);
        if let Some(t) = &self.relative_position_bias_table {
            f(join(prefix, "relative_position_bias_table"), t);
        }
    }
}

/// Two linear layers with an exact GELU between them.
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new<R: Rng + ?Sized>(dim: usize, hidden: usize, rng: &mut R) -> Self {
        Mlp {
            fc1: Linear::new(dim, hidden, true, rng),
            fc2: Linear::new(hidden, dim, true, rng),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.hidden(x)?)
    }
    /// `residual + forward(x)`, the residual added by fc2's product.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.hidden(x)?
            .linear_residual(&self.fc2.weight, self.fc2.bias.as_ref(), residual)
    }
    /// `gelu(fc1(x))`, as one op (the GELU taken tile by tile in the product).
    fn hidden(&self, x: &Tensor) -> Result<Tensor> {
        match &self.fc1.bias {
            Some(b) => x.linear_gelu(&self.fc1.weight, b),
            None => Ok(self.fc1.forward(x)?.gelu()),
        }
    }
}

impl Module for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.fc1.visit(&join(prefix, "fc1"), f);
        self.fc2.visit(&join(prefix, "fc2"), f);
    }
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`;
/// with layer scale, `x + gamma_1 ⊙ attn(norm1(x))` and `x + gamma_2 ⊙ mlp(norm2(x))`.
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// `(D)` each, with layer scale.
    pub gamma_1: Option<Tensor>,
    pub gamma_2: Option<Tensor>,
    /// Stochastic depth: the rate at which training drops this block's
    /// residual branches, per image.
    pub drop_path: f32,
}

thread_local! {
    static BATCH_SHARD: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's forward pass marked as rows
/// `offset..offset + b` of a global batch of `global`: per-sample random
/// draws (drop path) are made for the whole global batch and sliced, so a
/// rank draws what one process with the whole batch would. The previous
/// setting is restored afterwards.
pub fn with_batch_shard<R>(offset: usize, global: usize, f: impl FnOnce() -> R) -> R {
    let prev = BATCH_SHARD.with(|s| s.replace(Some((offset, global))));
    struct Restore(Option<(usize, usize)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BATCH_SHARD.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// The rows `(offset, global)` that a per-sample draw over a local batch of
/// `b` should take, or `None` outside [`with_batch_shard`] (or when `b` does
/// not fit the marked shard: a forward over other data, e.g. evaluation).
pub fn batch_shard(b: usize) -> Option<(usize, usize)> {
    BATCH_SHARD
        .with(|s| s.get())
        .filter(|&(offset, global)| offset + b <= global)
}

/// Checks that images `(B, C, H, W)` fit an encoder of `chans` channels at
/// `size`, naming both shapes if not.
pub(crate) fn check_image_shape(imgs: &Tensor, chans: usize, size: [usize; 2]) -> crate::error::Result<()> {
    let want = [chans, size[0], size[1]];
    if imgs.rank() != 4 || imgs.shape()[1..] != want {
        return Err(MimError::Input(format!(
            "images of shape {:?} do not fit this encoder, which takes (B, {}, {}, {})",
            imgs.shape(),
            want[0],
            want[1],
            want[2]
        )));
    }
    Ok(())
}

/// Stochastic depth's per-image factors `(B, 1, 1)`: 0 with probability
/// `rate`, else `1/(1 − rate)`, so the branch is unchanged in expectation.
///
/// Inside [`with_batch_shard`] the draws are made for the
/// whole global batch and this batch's rows kept, so a data-parallel rank
/// drops exactly the images one process with the whole batch would.
pub fn drop_path_scale<R: Rng + ?Sized>(batch: usize, rate: f32, rng: &mut R) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - rate);
    let (offset, global) = batch_shard(batch).unwrap_or((0, batch));
    // Every draw of the global batch is made, kept or not, so the stream
    // advances the same way on every rank.
    let all: Vec<f32> = (0..global)
        .map(|_| if rng.random::<f32>() < rate { 0.0 } else { keep })
        .collect();
    Tensor::from_slice(&all[offset..offset + batch], &[batch, 1, 1])
}

impl Block {
    /// timm's block (MAE's encoder and decoder).
    pub fn new<R: Rng + ?Sized>(dim: usize, num_heads: usize, mlp_hidden: usize, eps: f32, rng: &mut R) -> Self {
        Self::with(Attention::new(dim, num_heads, rng), mlp_hidden, eps, None, rng)
    }
    /// Around a given attention, with layer scale initialised to `layer_scale`.
    pub fn with<R: Rng + ?Sized>(
        attn: Attention,
        mlp_hidden: usize,
        eps: f32,
        layer_scale: Option<f32>,
        rng: &mut R,
    ) -> Self {
        let dim = attn.proj.weight.shape()[0];
        let gamma = || layer_scale.map(|v| param(vec![v; dim], &[dim]));
        Block {
            norm1: LayerNorm::new(dim, eps),
            mlp: Mlp::new(dim, mlp_hidden, rng),
            attn,
            norm2: LayerNorm::new(dim, eps),
            gamma_1: gamma(),
            gamma_2: gamma(),
            drop_path: 0.0,
        }
    }
    /// `x (B, N, D)` → `(B, N, D)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_biased(x, None)
    }
    /// [`Block::forward`] with `bias (G, H, N, N)` added to the attention's logits.
    pub fn forward_biased(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.forward_scaled(x, bias, None)
    }

    /// [`Block::forward_biased`] in training (`train`) or evaluation: in
    /// training, each residual branch is dropped per image at the block's
    /// drop-path rate, drawing from `rng` (nothing is drawn at rate 0).
    pub fn forward_train<R: Rng + ?Sized>(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
        rng: &mut R,
    ) -> Result<Tensor> {
        if !train || self.drop_path == 0.0 {
            return self.forward_scaled(x, bias, None);
        }
        let b = x.shape()[0];
        let scales = (
            drop_path_scale(b, self.drop_path, rng)?,
            drop_path_scale(b, self.drop_path, rng)?,
        );
        self.forward_scaled(x, bias, Some((&scales.0, &scales.1)))
    }

    /// The attention probabilities `(B, H, N, N)` of this block for its
    /// input `x (B, N, D)`: those of `attn(norm1(x))` with `bias`. No gradient.
    pub fn attention_probabilities(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.attn.probabilities(&self.norm1.forward(x)?, bias)
    }

    /// The block with optional branch factors `(B, 1, 1)` for its two
    /// residual branches (stochastic depth drawn by the caller, as Swin does
    /// per image for a batch of windows).
    pub fn forward_scaled(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        drop: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        // x + attn(norm1(x)), then x + mlp(norm2(x)); without layer scale and
        // stochastic depth each residual is added by the product that ends
        // its branch.
        let branch = |y: Tensor, gamma: &Option<Tensor>, scale: Option<&Tensor>| -> Result<Tensor> {
            let y = match gamma {
                Some(g) => y.mul(g)?,
                None => y,
            };
            match scale {
                Some(s) => y.mul(s),
                None => Ok(y),
            }
        };
        let h = self.norm1.forward(x)?;
        let x = match (&self.gamma_1, drop) {
            (None, None) => self.attn.forward_residual(&h, bias, x)?,
            _ => x.add(&branch(self.attn.forward(&h, bias)?, &self.gamma_1, drop.map(|d| d.0))?)?,
        };
        let h = self.norm2.forward(&x)?;
        match (&self.gamma_2, drop) {
            (None, None) => self.mlp.forward_residual(&h, &x),
            _ => x.add(&branch(self.mlp.forward(&h)?, &self.gamma_2, drop.map(|d| d.1))?),
        }
    }
}

impl Module for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        if let Some(g) = &self.gamma_1 {
            f(join(prefix, "gamma_1"), g);
        }
        if let Some(g) = &self.gamma_2 {
            f(join(prefix, "gamma_2"), g);
        }
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.attn.visit(&join(prefix, "attn"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.mlp.visit(&join(prefix, "mlp"), f);
    }
}

/// A list of blocks named `prefix.0`, `prefix.1`, ...
pub fn visit_blocks(blocks: &[Block], prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
    for (i, b) in blocks.iter().enumerate() {
        b.visit(&join(prefix, &i.to_string()), f);
    }
}

/// Patch embedding: a convolution with kernel = stride = `patch`,
/// `weight (D, C, p, p)`, `bias (D)`; images `(B, C, H, W)` → `(B, L, D)`.
pub struct PatchEmbed {
    pub weight: Tensor,
    pub bias: Tensor,
    pub patch: usize,
}

impl PatchEmbed {
    pub fn new<R: Rng + ?Sized>(in_chans: usize, dim: usize, patch: usize, rng: &mut R) -> Self {
        let fan_in = in_chans * patch * patch;
        PatchEmbed {
            weight: param(xavier_uniform(dim, fan_in, rng), &[dim, in_chans, patch, patch]),
            bias: param(vec![0.0; dim], &[dim]),
            patch,
        }
    }
    pub fn forward(&self, imgs: &Tensor) -> Result<Tensor> {
        imgs.patch_embed(&self.weight, &self.bias)
    }
}

impl Module for PatchEmbed {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "proj.weight"), &self.weight);
        f(join(prefix, "proj.bias"), &self.bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shard_is_scoped() {
        assert_eq!(batch_shard(4), None);
        with_batch_shard(2, 8, || {
            assert_eq!(batch_shard(4), Some((2, 8)));
            assert_eq!(batch_shard(7), None);
        });
        assert_eq!(batch_shard(4), None);
    }
}
