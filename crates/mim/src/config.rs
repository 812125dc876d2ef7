//! Model configuration: the encoder (a Vision Transformer or a Swin
//! Transformer), the method (MAE's decoder or SimMIM's 1×1-convolution head)
//! and the prediction target. Every field has
//! a name a user can set, presets give the usual sizes, and [`ModelConfig::validate`]
//! rejects what cannot be built with a message that names the option.

use crate::error::{Result, config_err};
use serde::{Deserialize, Serialize};

/// How positions are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosEmbedKind {
    /// Fixed 2-D sine-cosine table (MAE's `get_2d_sincos_pos_embed`); not trained.
    SinCos,
    /// Learned, initialised from a truncated normal (std 0.02).
    Learned,
    /// No absolute table (positions come from a relative position bias, as
    /// in BEiT's and SimMIM's ViT).
    None,
}

/// Where the relative position bias lives: a learned `((2Gh−1)(2Gw−1) + 3, H)`
/// table (BEiT's, the three extra rows for \[CLS\]) gathered into an additive
/// bias on every attention's logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelPosBias {
    /// None (MAE, and the ViT of Dosovitskiy et al.).
    #[default]
    None,
    /// One table for all blocks (`rel_pos_bias.relative_position_bias_table`;
    /// SimMIM's ViT-B pre-training).
    Shared,
    /// One table per block (`blocks.{i}.attn.relative_position_bias_table`;
    /// BEiT, SimMIM's fine-tuning).
    PerBlock,
}

/// The bias of the attention's `qkv` projection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QkvBias {
    /// One learned `qkv.bias` of `3·D` (timm, MAE).
    #[default]
    Qkv,
    /// Learned `q_bias` and `v_bias`, the key's fixed at zero (BEiT, SimMIM:
    /// a key bias adds the same amount to every logit of a query row, which
    /// the softmax ignores).
    #[serde(rename = "qv")]
    QV,
    /// No bias in the qkv projection at all (SimMIM's and BEiT's ViT with
    /// `qkv_bias=False`).
    None,
}

/// How a fresh encoder's weights are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// MAE's `initialize_weights`: Xavier-uniform linear and patch weights,
    /// \[CLS\] and mask tokens normal with std 0.02.
    #[default]
    Mae,
    /// BEiT's and SimMIM's: linear weights normal with std 0.02 (timm's
    /// `trunc_normal_` at ±2, which truncates nothing), each block's `proj`
    /// and `fc2` weights divided by `√(2·layer)` (layer from 1), the patch
    /// convolution as PyTorch's default (uniform in ±1/√fan_in, bias too),
    /// \[CLS\] std 0.02, SimMIM's mask token truncated at ±0.02.
    Beit,
}

/// How an encoder's tokens become one vector per image (for features,
/// probes and classifiers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The \[CLS\] token's output, after the final norm (ViT only; the
    /// classifier of Dosovitskiy et al.).
    Cls,
    /// The mean of the patch tokens' outputs. A ViT classifier then applies
    /// its own LayerNorm `fc_norm` and the encoder has no final norm (MAE's
    /// `global_pool`); Swin's is the mean of the last stage after its final
    /// norm.
    Mean,
}

/// A Vision Transformer encoder (Dosovitskiy et al.): patch embedding by a
/// convolution with kernel = stride = patch, a \[CLS\] token, positional
/// embeddings, `depth` pre-norm blocks, final LayerNorm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Image height and width in pixels.
    pub img_size: [usize; 2],
    pub patch_size: usize,
    /// Image channels (1 for grey, 3 for colour).
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of each MLP as a multiple of `embed_dim`.
    pub mlp_ratio: f32,
    pub pos_embed: PosEmbedKind,
    /// Dropout after adding positional embeddings (training only).
    pub pos_drop: f32,
    /// LayerNorm epsilon (MAE: 1e-6).
    pub norm_eps: f32,
    /// Relative position bias (none by default).
    #[serde(default)]
    pub rel_pos_bias: RelPosBias,
    /// Layer scale: learned per-channel `gamma_1`, `gamma_2` on each residual
    /// branch, initialised to this value (CaiT, BEiT; SimMIM's ViT uses 0.1).
    #[serde(default)]
    pub layer_scale: Option<f32>,
    /// The bias of the `qkv` projection.
    #[serde(default)]
    pub qkv_bias: QkvBias,
    /// Stochastic depth: in training, each block's residual branches are
    /// dropped per image with a rate rising linearly from 0 in the first
    /// block to this in the last (timm, BEiT), the kept ones scaled by
    /// `1/(1 − rate)`.
    #[serde(default)]
    pub drop_path: f32,
    /// How fresh weights are drawn.
    #[serde(default)]
    pub init: InitScheme,
    /// A final LayerNorm over the tokens (`norm`). BEiT's and SimMIM's ViT
    /// built for mean pooling (`use_mean_pooling`) has none: its norm comes
    /// after pooling, in the classifier (`fc_norm`).
    #[serde(default = "yes")]
    pub final_norm: bool,
    /// A LayerNorm after mean pooling (`fc_norm`): the patch tokens'
    /// mean passes through it wherever the encoder is pooled by its mean
    /// (features, probes, the classifier). MAE's `global_pool` classifier,
    /// BEiT's and SimMIM's `use_mean_pooling`; these have no final norm.
    #[serde(default)]
    pub fc_norm: bool,
}

fn yes() -> bool {
    true
}

/// The named encoder sizes: (width, depth, heads).
pub const PRESETS: [(&str, usize, usize, usize); 6] = [
    // ViT-Tiny's width at half its depth: the built-in demo's encoder, chosen
    // by measurement to learn the synthetic set in minutes on two cores
    // (docs/mim.md, "What a first run shows").
    ("vit-mini", 192, 6, 3),
    ("vit-tiny", 192, 12, 3),
    ("vit-small", 384, 12, 6),
    ("vit-base", 768, 12, 12),
    ("vit-large", 1024, 24, 16),
    ("vit-huge", 1280, 32, 16),
];

impl VitConfig {
    /// A preset (`vit-mini`, `vit-tiny`, `vit-small`, `vit-base`,
    /// `vit-large`, `vit-huge`, and `simmim-vit-base`: ViT-B with SimMIM's
    /// options, see [`VitConfig::simmim_vit_base`]) at any image size, patch
    /// size and channel count.
    pub fn preset(name: &str, img_size: [usize; 2], patch_size: usize, in_chans: usize) -> Result<VitConfig> {
        if name == "simmim-vit-base" {
            return Ok(Self::preset("vit-base", img_size, patch_size, in_chans)?.with_simmim_options());
        }
        let (_, embed_dim, depth, num_heads) = PRESETS.iter().find(|p| p.0 == name).copied().ok_or_else(|| {
            let mut names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            names.push("simmim-vit-base");
            config_err(format!("unknown encoder preset '{name}' (known: {})", names.join(", ")))
        })?;
        let c = VitConfig {
            img_size,
            patch_size,
            in_chans,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            pos_embed: PosEmbedKind::SinCos,
            pos_drop: 0.0,
            norm_eps: 1e-6,
            rel_pos_bias: RelPosBias::None,
            layer_scale: None,
            qkv_bias: QkvBias::Qkv,
            drop_path: 0.0,
            init: InitScheme::Mae,
            final_norm: true,
            fc_norm: false,
        };
        c.validate()?;
        Ok(c)
    }

    /// SimMIM's ViT-B pre-training configuration
    /// (`simmim_pretrain__vit_base__img224__800ep.yaml`): ViT-B/16 at 224
    /// without absolute positions, one relative position bias shared by all
    /// blocks, layer scale 0.1, `q_bias`/`v_bias`, drop path 0.1, BEiT's
    /// initialisation. With `Method::SimMim`, L1 on raw pixels and
    /// `simmim` masking of 32-pixel cells at 0.6.
    /// The preset `simmim-vit-base` at 224×224×3, patch 16.
    pub fn simmim_vit_base() -> VitConfig {
        VitConfig::preset("simmim-vit-base", [224, 224], 16, 3).expect("a valid preset")
    }

    /// SimMIM's ViT options on an encoder (see [`VitConfig::simmim_vit_base`]).
    fn with_simmim_options(mut self) -> VitConfig {
        self.pos_embed = PosEmbedKind::None;
        self.rel_pos_bias = RelPosBias::Shared;
        self.layer_scale = Some(0.1);
        self.qkv_bias = QkvBias::QV;
        self.drop_path = 0.1;
        self.init = InitScheme::Beit;
        self
    }

    /// The drop-path rate of block `i` (linear from 0 to `drop_path`).
    pub fn drop_path_at(&self, i: usize) -> f32 {
        if self.depth <= 1 {
            0.0
        } else {
            self.drop_path * i as f32 / (self.depth - 1) as f32
        }
    }

    /// Patches per column and per row of the grid.
    pub fn grid(&self) -> [usize; 2] {
        [self.img_size[0] / self.patch_size, self.img_size[1] / self.patch_size]
    }

    /// Number of patches `L`.
    pub fn num_patches(&self) -> usize {
        let [h, w] = self.grid();
        h * w
    }

    /// Values per patch, `p·p·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Hidden width of the MLPs.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f32 * self.mlp_ratio).round() as usize
    }

    /// Checks that the configuration can be built.
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.img_size;
        let p = self.patch_size;
        if p == 0 || h == 0 || w == 0 {
            return Err(config_err(format!("image {h}x{w} and patch {p} must be positive")));
        }
        if h % p != 0 || w % p != 0 {
            return Err(config_err(format!(
                "patch size {p} does not divide the image size {h}x{w}"
            )));
        }
        if self.in_chans == 0 {
            return Err(config_err("in_chans must be at least 1"));
        }
        check_width("encoder", self.embed_dim, self.num_heads)?;
        if self.pos_embed == PosEmbedKind::SinCos && !self.embed_dim.is_multiple_of(4) {
            return Err(config_err(format!(
                "sin-cos positional embeddings need embed_dim divisible by 4, got {}",
                self.embed_dim
            )));
        }
        if self.depth == 0 {
            return Err(config_err("encoder depth must be at least 1"));
        }
        if !is_positive(self.mlp_ratio) {
            return Err(config_err(format!(
                "mlp_ratio must be positive, got {}",
                self.mlp_ratio
            )));
        }
        if !(0.0..1.0).contains(&self.pos_drop) {
            return Err(config_err(format!("pos_drop {} is outside [0, 1)", self.pos_drop)));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(config_err(format!("drop_path {} is outside [0, 1)", self.drop_path)));
        }
        if let Some(v) = self.layer_scale
            && !v.is_finite()
        {
            return Err(config_err(format!("layer_scale {v} is not a finite number")));
        }
        Ok(())
    }
}

/// True for finite values above zero (NaN and infinities are not).
pub(crate) fn is_positive(x: f32) -> bool {
    x.is_finite() && x > 0.0
}

fn check_width(what: &str, dim: usize, heads: usize) -> Result<()> {
    if dim == 0 || heads == 0 {
        return Err(config_err(format!(
            "{what} width {dim} and heads {heads} must be positive"
        )));
    }
    if !dim.is_multiple_of(heads) {
        return Err(config_err(format!(
            "{what}: {heads} heads do not divide the width {dim}"
        )));
    }
    Ok(())
}

/// A Swin Transformer encoder's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    pub img_size: [usize; 2],
    pub patch_size: usize,
    pub in_chans: usize,
    /// Width of the first stage (doubled by each patch merging).
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Heads per stage.
    pub num_heads: Vec<usize>,
    pub window: usize,
    pub mlp_ratio: f32,
    /// Stochastic depth of the last block, rising linearly over all blocks.
    pub drop_path: f32,
    /// LayerNorm epsilon (Swin: PyTorch's default 1e-5).
    pub norm_eps: f32,
    /// Swin's `ape` option: a learned absolute position embedding
    /// `absolute_pos_embed (1, L, C)` added to the patch embeddings (after
    /// the mask token in SimMIM). Off in every preset, as in the papers.
    #[serde(default)]
    pub ape: bool,
}

impl SwinConfig {
    /// `swin-tiny` (96, [2, 2, 6, 2], [3, 6, 12, 24]), `swin-small` (96,
    /// [2, 2, 18, 2]), `swin-base` (128, [2, 2, 18, 2], [4, 8, 16, 32]) — window
    /// 7, patch 4, at 224 — and `swin-mini`, a small one for 32×32 images
    /// that trains on two cores: 48 wide, [2, 2, 2] blocks, [3, 6, 12] heads,
    /// patch 2, window 4. `simmim-swin-base` is SimMIM's Swin-B pre-training
    /// (`simmim_pretrain__swin_base__img192_window6__100ep.yaml`): swin-base
    /// with window 6 and no drop path, at 192×192.
    pub fn preset(name: &str, img_size: [usize; 2], in_chans: usize) -> Result<SwinConfig> {
        let c = Self::named(name, img_size, in_chans)?;
        c.validate()?;
        Ok(c)
    }

    /// [`SwinConfig::preset`] before validation (for options that change it).
    pub fn named(name: &str, img_size: [usize; 2], in_chans: usize) -> Result<SwinConfig> {
        let (embed_dim, depths, num_heads, patch_size, window) = match name {
            "swin-tiny" => (96, vec![2, 2, 6, 2], vec![3, 6, 12, 24], 4, 7),
            "swin-small" => (96, vec![2, 2, 18, 2], vec![3, 6, 12, 24], 4, 7),
            "swin-base" => (128, vec![2, 2, 18, 2], vec![4, 8, 16, 32], 4, 7),
            "swin-mini" => (48, vec![2, 2, 2], vec![3, 6, 12], 2, 4),
            "simmim-swin-base" => {
                return Ok(SwinConfig {
                    window: 6,
                    drop_path: 0.0,
                    ..Self::named("swin-base", img_size, in_chans)?
                });
            }
            _ => {
                return Err(config_err(format!(
                    "unknown Swin preset '{name}' (known: swin-mini, swin-tiny, swin-small, swin-base, \
                     simmim-swin-base)"
                )));
            }
        };
        Ok(SwinConfig {
            img_size,
            patch_size,
            in_chans,
            embed_dim,
            depths,
            num_heads,
            window,
            mlp_ratio: 4.0,
            drop_path: 0.1,
            norm_eps: 1e-5,
            ape: false,
        })
    }

    /// The token grid of stage `i`.
    pub fn stage_grid(&self, i: usize) -> [usize; 2] {
        let g = [self.img_size[0] / self.patch_size, self.img_size[1] / self.patch_size];
        [g[0] >> i, g[1] >> i]
    }

    /// The width of stage `i`.
    pub fn stage_dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// The width of the last stage (the representation).
    pub fn num_features(&self) -> usize {
        self.stage_dim(self.depths.len() - 1)
    }

    /// The total downsampling: patch · 2^(stages − 1) (SimMIM's `encoder_stride`).
    pub fn stride(&self) -> usize {
        self.patch_size << (self.depths.len() - 1)
    }

    /// Checks that the configuration can be built, naming the problem.
    pub fn validate(&self) -> Result<()> {
        let stages = self.depths.len();
        if stages == 0 || self.num_heads.len() != stages {
            return Err(config_err(format!(
                "Swin needs one head count per stage: {} stages, {} head counts",
                stages,
                self.num_heads.len()
            )));
        }
        let s = self.stride();
        if self.patch_size == 0 || !self.img_size[0].is_multiple_of(s) || !self.img_size[1].is_multiple_of(s) {
            return Err(config_err(format!(
                "a {}x{} image does not halve evenly through {stages} stages of patch {} (needs multiples of {s})",
                self.img_size[0], self.img_size[1], self.patch_size
            )));
        }
        for i in 0..stages {
            let (d, h) = (self.stage_dim(i), self.num_heads[i]);
            if h == 0 || !d.is_multiple_of(h) {
                return Err(config_err(format!("stage {i}: {h} heads do not divide the width {d}")));
            }
            let g = self.stage_grid(i);
            let w = self.window.min(g[0].min(g[1]));
            if w == 0 || !g[0].is_multiple_of(w) || !g[1].is_multiple_of(w) {
                return Err(config_err(format!(
                    "stage {i}: window {} does not tile its {}x{} grid",
                    self.window, g[0], g[1]
                )));
            }
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(config_err(format!("drop_path {} is outside [0, 1)", self.drop_path)));
        }
        Ok(())
    }
}

impl SwinConfig {
    /// The window and shift the blocks of stage `i` use: a window no smaller
    /// than the stage's grid becomes the whole grid, unshifted (as the
    /// official code does).
    pub fn stage_window(&self, i: usize) -> (usize, usize) {
        let g = self.stage_grid(i);
        let side = g[0].min(g[1]);
        if side <= self.window {
            (side, 0)
        } else {
            (self.window, self.window / 2)
        }
    }

    /// Hidden width of the MLPs of stage `i`.
    pub fn mlp_hidden(&self, i: usize) -> usize {
        (self.stage_dim(i) as f32 * self.mlp_ratio).round() as usize
    }
}

/// The encoder of a model: a Vision Transformer or a Swin Transformer.
///
/// Serialised as the inner configuration alone, so the configuration JSON of
/// checkpoints written before Swin existed (a bare [`VitConfig`]) still
/// reads; a Swin configuration is told apart by its `depths` list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EncoderConfig {
    Vit(VitConfig),
    Swin(SwinConfig),
}

impl<'de> Deserialize<'de> for EncoderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("depths").is_some() {
            serde_json::from_value(v)
                .map(EncoderConfig::Swin)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(v)
                .map(EncoderConfig::Vit)
                .map_err(D::Error::custom)
        }
    }
}

impl From<VitConfig> for EncoderConfig {
    fn from(c: VitConfig) -> Self {
        EncoderConfig::Vit(c)
    }
}

impl From<SwinConfig> for EncoderConfig {
    fn from(c: SwinConfig) -> Self {
        EncoderConfig::Swin(c)
    }
}

impl EncoderConfig {
    /// `"vit"` or `"swin"` (the command's `--encoder`).
    pub fn kind(&self) -> &'static str {
        match self {
            EncoderConfig::Vit(_) => "vit",
            EncoderConfig::Swin(_) => "swin",
        }
    }

    /// The Vision Transformer's configuration, if this is one.
    pub fn vit(&self) -> Option<&VitConfig> {
        match self {
            EncoderConfig::Vit(c) => Some(c),
            EncoderConfig::Swin(_) => None,
        }
    }

    /// The Vision Transformer's configuration, mutably, if this is one.
    pub fn vit_mut(&mut self) -> Option<&mut VitConfig> {
        match self {
            EncoderConfig::Vit(c) => Some(c),
            EncoderConfig::Swin(_) => None,
        }
    }

    /// The Swin Transformer's configuration, if this is one.
    pub fn swin(&self) -> Option<&SwinConfig> {
        match self {
            EncoderConfig::Swin(c) => Some(c),
            EncoderConfig::Vit(_) => None,
        }
    }

    /// One line for logs: `ViT 192/6/3 (patch 4, 32x32x3)` or
    /// `Swin 48 [2, 2, 2] heads [3, 6, 12] window 4 (patch 2, 32x32x3)`.
    pub fn describe(&self) -> String {
        let [h, w] = self.img_size();
        let geometry = format!("(patch {}, {h}x{w}x{})", self.patch_size(), self.in_chans());
        match self {
            EncoderConfig::Vit(c) => format!("ViT {}/{}/{} {geometry}", c.embed_dim, c.depth, c.num_heads),
            EncoderConfig::Swin(c) => format!(
                "Swin {} {:?} heads {:?} window {} {geometry}",
                c.embed_dim, c.depths, c.num_heads, c.window
            ),
        }
    }

    /// Image height and width in pixels.
    pub fn img_size(&self) -> [usize; 2] {
        match self {
            EncoderConfig::Vit(c) => c.img_size,
            EncoderConfig::Swin(c) => c.img_size,
        }
    }

    /// Runs the encoder at another image size (checked by `validate`).
    pub fn set_img_size(&mut self, size: [usize; 2]) {
        match self {
            EncoderConfig::Vit(c) => c.img_size = size,
            EncoderConfig::Swin(c) => c.img_size = size,
        }
    }

    /// The side of a patch: the unit the mask and the targets are drawn on.
    pub fn patch_size(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.patch_size,
            EncoderConfig::Swin(c) => c.patch_size,
        }
    }

    /// Image channels.
    pub fn in_chans(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.in_chans,
            EncoderConfig::Swin(c) => c.in_chans,
        }
    }

    /// The patch grid (rows, columns) the mask lives on.
    pub fn grid(&self) -> [usize; 2] {
        let (s, p) = (self.img_size(), self.patch_size());
        [s[0] / p, s[1] / p]
    }

    /// Number of patches `L`.
    pub fn num_patches(&self) -> usize {
        let [h, w] = self.grid();
        h * w
    }

    /// Values per patch, `p·p·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size() * self.patch_size() * self.in_chans()
    }

    /// The width of the patch embeddings (where SimMIM's mask token goes).
    pub fn embed_dim(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.embed_dim,
            EncoderConfig::Swin(c) => c.embed_dim,
        }
    }

    /// The width of the encoder's output tokens and of the image
    /// representation.
    pub fn out_dim(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.embed_dim,
            EncoderConfig::Swin(c) => c.num_features(),
        }
    }

    /// Patches per side of one output token: 1 for the ViT, `2^(stages−1)`
    /// for Swin. SimMIM's head predicts `r²` patches from each token.
    pub fn token_patches(&self) -> usize {
        match self {
            EncoderConfig::Vit(_) => 1,
            EncoderConfig::Swin(c) => c.stride() / c.patch_size,
        }
    }

    /// LayerNorm epsilon.
    pub fn norm_eps(&self) -> f32 {
        match self {
            EncoderConfig::Vit(c) => c.norm_eps,
            EncoderConfig::Swin(c) => c.norm_eps,
        }
    }

    /// Checks that the configuration can be built.
    pub fn validate(&self) -> Result<()> {
        match self {
            EncoderConfig::Vit(c) => c.validate(),
            EncoderConfig::Swin(c) => c.validate(),
        }
    }

    /// Values in the encoder's state.
    pub(crate) fn state_len(&self) -> u128 {
        let (c, p) = (self.in_chans() as u128, self.patch_size() as u128);
        match self {
            EncoderConfig::Vit(e) => {
                let (d, l) = (e.embed_dim as u128, e.num_patches() as u128);
                let pos = match e.pos_embed {
                    PosEmbedKind::None => 0,
                    _ => (1 + l) * d,
                };
                let heads = e.num_heads as u128;
                let [gh, gw] = e.grid();
                let rows = ((2 * gh - 1) * (2 * gw - 1) + 3) as u128;
                let tables = match e.rel_pos_bias {
                    RelPosBias::None => 0,
                    RelPosBias::Shared => rows * heads,
                    RelPosBias::PerBlock => e.depth as u128 * rows * heads,
                };
                // q_bias and v_bias replace qkv.bias (3D → 2D), or no bias
                // at all (3D → 0); gamma_1, gamma_2.
                let qkv = match e.qkv_bias {
                    QkvBias::Qkv => 0,
                    QkvBias::QV => e.depth as u128 * d,
                    QkvBias::None => e.depth as u128 * 3 * d,
                };
                let scale = if e.layer_scale.is_some() {
                    e.depth as u128 * 2 * d
                } else {
                    0
                };
                let norm = (e.final_norm as u128 + e.fc_norm as u128) * 2 * d;
                d * c * p * p + d // patch_embed.proj
                    + d // cls_token
                    + pos
                    + tables
                    + blocks_len(e.depth, e.embed_dim, e.mlp_hidden())
                    - qkv
                    + scale
                    + norm
            }
            EncoderConfig::Swin(e) => {
                let d0 = e.embed_dim as u128;
                let mut n = d0 * c * p * p + d0 + 2 * d0; // patch_embed.proj, patch_embed.norm
                if e.ape {
                    let [h, w] = e.stage_grid(0);
                    n += (h * w) as u128 * d0; // absolute_pos_embed
                }
                for (i, (&depth, &heads)) in e.depths.iter().zip(&e.num_heads).enumerate() {
                    let d = e.stage_dim(i) as u128;
                    let w = e.stage_window(i).0 as u128;
                    n += blocks_len(depth, e.stage_dim(i), e.mlp_hidden(i));
                    n += depth as u128 * (2 * w - 1) * (2 * w - 1) * heads as u128;
                    if i + 1 < e.depths.len() {
                        n += 2 * 4 * d + 4 * d * 2 * d; // downsample.norm, downsample.reduction
                    }
                }
                n + 2 * e.num_features() as u128 // norm
            }
        }
    }
}

/// MAE's decoder: a narrower transformer over all tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f32,
}

impl DecoderConfig {
    /// MAE's default decoder: 512 wide, 8 deep, 16 heads.
    pub fn mae_default() -> Self {
        DecoderConfig {
            embed_dim: 512,
            depth: 8,
            num_heads: 16,
            mlp_ratio: 4.0,
        }
    }

    /// A small decoder for small images: 128 wide, 4 deep, 4 heads (the
    /// `tiny32` benchmark workload's).
    pub fn small() -> Self {
        DecoderConfig {
            embed_dim: 128,
            depth: 4,
            num_heads: 4,
            mlp_ratio: 4.0,
        }
    }

    /// The built-in demo's decoder: [`DecoderConfig::small`] at depth 2, the
    /// default below 128-pixel images.
    pub fn light() -> Self {
        DecoderConfig {
            depth: 2,
            ..Self::small()
        }
    }

    /// Hidden width of the MLPs.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f32 * self.mlp_ratio).round() as usize
    }
}

/// The prediction head, which also decides what the encoder sees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Method {
    /// MAE: the encoder sees visible patches only; a transformer decoder with a
    /// learned mask token reconstructs every patch.
    Mae { decoder: DecoderConfig },
    /// SimMIM: the encoder sees every patch, hidden ones replaced by a learned
    /// mask token; a 1×1 convolution (`decoder.0`) predicts each patch.
    SimMim,
}

/// Per-element error of pixel regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelLoss {
    Mse,
    L1,
}

/// What the head predicts for each hidden patch, and the loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TargetConfig {
    /// The patch's pixels (MAE patchify order), optionally normalised per patch
    /// by its mean and unbiased variance (MAE's `norm_pix_loss`).
    Pixels { loss: PixelLoss, norm_pix: bool },
    /// The index of the patch's nearest entry in a k-means codebook of
    /// patches (a visual vocabulary), predicted with cross-entropy.
    Codebook {
        size: usize,
        /// Cluster per-patch normalised pixels (shape/texture) instead of raw ones.
        normalize: bool,
    },
}

/// Everything needed to build a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub encoder: EncoderConfig,
    pub method: Method,
    pub target: TargetConfig,
}

/// Values in the state of `depth` pre-norm blocks of width `d` and MLP width `h`:
/// two LayerNorms, qkv and proj, fc1 and fc2, each with biases.
fn blocks_len(depth: usize, d: usize, h: usize) -> u128 {
    let (d, h) = (d as u128, h as u128);
    depth as u128 * (2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + h * d + h + d * h + d)
}

impl ModelConfig {
    /// How many values the model's state holds (every tensor of
    /// `MimModel::state`, trainable or not), from the configuration alone,
    /// without building anything: what a checkpoint of this model must carry,
    /// and a size to check before memory is taken. In u128: absurd
    /// configurations do not overflow.
    pub fn state_len(&self) -> u128 {
        let e = &self.encoder;
        let (d, l) = (e.out_dim() as u128, e.num_patches() as u128);
        let out = self.head_channels() as u128;
        let encoder = e.state_len();
        let head = match &self.method {
            Method::Mae { decoder } => {
                let dd = decoder.embed_dim as u128;
                d * dd + dd // decoder_embed
                    + dd // mask_token
                    + (1 + l) * dd // decoder_pos_embed
                    + blocks_len(decoder.depth, decoder.embed_dim, decoder.mlp_hidden())
                    + 2 * dd // decoder_norm
                    + dd * out + out // decoder_pred
            }
            // encoder.mask_token (patch-embedding wide), decoder.0
            Method::SimMim => e.embed_dim() as u128 + d * out + out,
        };
        encoder + head
    }

    /// Checks every part and how they fit together.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if let (Method::Mae { .. }, EncoderConfig::Swin(_)) = (&self.method, &self.encoder) {
            return Err(config_err(
                "MAE with a Swin encoder is not defined: MAE's encoder sees only the visible patches, \
                 but Swin's shifted windows and patch merging need every token of the grid; \
                 pre-train Swin with SimMIM (`Method::SimMim`)",
            ));
        }
        if let Method::Mae { decoder } = &self.method {
            check_width("decoder", decoder.embed_dim, decoder.num_heads)?;
            if decoder.embed_dim % 4 != 0 {
                return Err(config_err(format!(
                    "decoder width must be divisible by 4 for its sin-cos positions, got {}",
                    decoder.embed_dim
                )));
            }
            if !is_positive(decoder.mlp_ratio) {
                return Err(config_err(format!(
                    "decoder mlp_ratio must be positive, got {}",
                    decoder.mlp_ratio
                )));
            }
        }
        if let TargetConfig::Codebook { size, .. } = self.target
            && size < 2
        {
            return Err(config_err(format!("codebook size must be at least 2, got {size}")));
        }
        Ok(())
    }

    /// Values the head predicts per patch: `p·p·C` pixels or codebook logits.
    pub fn output_dim(&self) -> usize {
        match self.target {
            TargetConfig::Pixels { .. } => self.encoder.patch_dim(),
            TargetConfig::Codebook { size, .. } => size,
        }
    }

    /// Output channels of the head per encoder output token: `out` for the
    /// ViT; `r²·out` for Swin, whose last-stage tokens each cover `r × r`
    /// patches (SimMIM's `encoder_stride² · 3` for pixels).
    pub fn head_channels(&self) -> usize {
        let r = self.encoder.token_patches();
        r * r * self.output_dim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_validation_messages() {
        let c = VitConfig::preset("vit-base", [224, 224], 16, 3).unwrap();
        assert_eq!((c.embed_dim, c.depth, c.num_heads, c.num_patches()), (768, 12, 12, 196));
        let e = VitConfig::preset("vit-base", [224, 224], 15, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("patch size 15 does not divide"), "{e}");
        let e = VitConfig::preset("vit-giant", [32, 32], 4, 3).unwrap_err().to_string();
        assert!(e.contains("vit-giant") && e.contains("vit-tiny"), "{e}");
        let mut c = VitConfig::preset("vit-tiny", [32, 48], 4, 1).unwrap();
        assert_eq!(c.grid(), [8, 12]);
        c.num_heads = 5;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("5 heads do not divide the width 192")
        );
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = ModelConfig {
            encoder: VitConfig::preset("vit-tiny", [32, 32], 4, 3).unwrap().into(),
            method: Method::Mae {
                decoder: DecoderConfig::small(),
            },
            target: TargetConfig::Pixels {
                loss: PixelLoss::Mse,
                norm_pix: true,
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ModelConfig>(&s).unwrap(), c);
    }
}
