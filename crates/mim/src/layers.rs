//! The building blocks of a Vision Transformer, with PyTorch/timm parameter
//! names and layouts, initialised as MAE's `initialize_weights`: Xavier-uniform
//! linear weights (the patch embedding too, viewed as `(D, C·p·p)`), zero
//! biases, LayerNorm weight 1 and bias 0.

use rand::Rng;
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

/// Multi-head self-attention with a fused `qkv` projection (with bias) and an
/// output projection, as timm's `Attention`.
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    pub fn new<R: Rng + ?Sized>(dim: usize, num_heads: usize, rng: &mut R) -> Self {
        Attention {
            qkv: Linear::new(dim, 3 * dim, true, rng),
            proj: Linear::new(dim, dim, true, rng),
            num_heads,
        }
    }
    /// `x (B, N, D)` → `(B, N, D)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.heads(x)?)
    }
    /// `residual + forward(x)`, the residual added by the projection's product.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.heads(x)?
            .linear_residual(&self.proj.weight, self.proj.bias.as_ref(), residual)
    }
    /// The heads' outputs before the projection, `(B, N, D)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // (B, N, 3D)
        qkv.attention(self.num_heads)
    }
}

impl Module for Attention {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.qkv.visit(&join(prefix, "qkv"), f);
        self.proj.visit(&join(prefix, "proj"), f);
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

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new<R: Rng + ?Sized>(dim: usize, num_heads: usize, mlp_hidden: usize, eps: f32, rng: &mut R) -> Self {
        Block {
            norm1: LayerNorm::new(dim, eps),
            attn: Attention::new(dim, num_heads, rng),
            norm2: LayerNorm::new(dim, eps),
            mlp: Mlp::new(dim, mlp_hidden, rng),
        }
    }
    /// `x (B, N, D)` → `(B, N, D)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // x + attn(norm1(x)), then x + mlp(norm2(x)); each residual is added
        // by the product that ends its branch.
        let x = self.attn.forward_residual(&self.norm1.forward(x)?, x)?;
        self.mlp.forward_residual(&self.norm2.forward(&x)?, &x)
    }
}

impl Module for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
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
