//! Options shared by several subcommands, and their translation into library
//! configurations. Every check that can fail on user input happens here or in
//! the library's `validate`, before anything is written.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;
use tessera_mim::StepStats;
use tessera_mim::data::{self, DataSpec, Dataset, Split};
use tessera_mim::eval::accuracy::EvalReport;
use tessera_mim::run::{Observer, RunEnd, RunOptions, RunStart};
use tessera_mim::{
    DecoderConfig, EncoderConfig, InitScheme, MaskingConfig, Method, ModelConfig, PixelLoss, PosEmbedKind, QkvBias,
    RelPosBias, SwinConfig, TargetConfig, VitConfig,
};

/// An image size: `32` (square) or `32x48` (height × width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub [usize; 2]);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
        let bad = || format!("'{s}' is not a size like 224 or 32x48");
        match s.split_once(['x', 'X']) {
            Some((h, w)) => Ok(Size([parse(h).ok_or_else(bad)?, parse(w).ok_or_else(bad)?])),
            None => {
                let n = parse(s).ok_or_else(bad)?;
                Ok(Size([n, n]))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataKind {
    /// Built-in procedural images of 10 classes (no download).
    Synthetic,
    /// Fashion-MNIST, IDX files (Debian: apt-get install dataset-fashion-mnist).
    FashionMnist,
    /// MNIST, IDX files.
    Mnist,
    /// CIFAR-10, binary batches.
    Cifar10,
    /// A folder of PNG/JPEG images; class subfolders give labels.
    Folder,
}

/// Which images to read.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data set.
    #[arg(long, value_enum, default_value = "synthetic")]
    pub data: DataKind,
    /// Folder holding the data set (Fashion-MNIST: /usr/share/datasets/fashion-mnist by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of images in each split of the synthetic data set.
    #[arg(long, default_value_t = 10_000)]
    pub synthetic_len: usize,
    /// Seed of the synthetic data set.
    #[arg(long, default_value_t = 0)]
    pub synthetic_seed: u64,
    /// Share of an image folder without train/ and test/ subfolders held out
    /// as its test split (per class when labelled); 0 tests on the training images.
    #[arg(long, default_value_t = tessera_mim::data::folder::DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
}

impl DataArgs {
    /// The image size and channels of the data set, when it has a fixed one.
    pub fn native(&self) -> Option<([usize; 2], usize)> {
        match self.data {
            DataKind::Synthetic => None,
            DataKind::FashionMnist | DataKind::Mnist => Some(([28, 28], 1)),
            DataKind::Cifar10 => Some(([32, 32], 3)),
            DataKind::Folder => None,
        }
    }

    /// Opens one split. Synthetic images are generated at `size` × `channels`.
    pub fn open(&self, split: Split, size: [usize; 2], channels: usize) -> Result<Box<dyn Dataset>> {
        let need_dir = || -> Result<PathBuf> {
            self.data_dir.clone().with_context(|| {
                format!(
                    "--data {} needs --data-dir",
                    self.data.to_possible_value().unwrap().get_name()
                )
            })
        };
        let spec = match self.data {
            DataKind::Synthetic => {
                if self.synthetic_len == 0 {
                    bail!("--synthetic-len must be at least 1");
                }
                DataSpec::Synthetic {
                    len: self.synthetic_len,
                    size,
                    channels,
                    seed: self.synthetic_seed,
                }
            }
            DataKind::FashionMnist => DataSpec::FashionMnist {
                dir: self.data_dir.clone(),
            },
            DataKind::Mnist => DataSpec::Mnist { dir: need_dir()? },
            DataKind::Cifar10 => DataSpec::Cifar10 { dir: need_dir()? },
            DataKind::Folder => DataSpec::Folder {
                dir: need_dir()?,
                val_fraction: self.val_fraction,
            },
        };
        Ok(data::open(&spec, split)?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Encoder on visible patches, transformer decoder with mask tokens.
    Mae,
    /// Encoder on all patches with a learned mask token, 1x1-convolution head (SimMIM's).
    Simmim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Pixels normalised per patch, MSE (MAE's norm_pix_loss).
    NormPix,
    /// Raw pixels, MSE.
    Pixels,
    /// Raw pixels, L1 (SimMIM).
    L1,
    /// Index in a k-means codebook of patches, cross-entropy.
    Codebook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PosArg {
    /// Fixed 2-D sine-cosine table (MAE).
    Sincos,
    /// Learned table.
    Learned,
    /// No absolute table (with --rel-pos-bias, as BEiT and SimMIM).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelPosArg {
    /// No relative position bias (MAE).
    None,
    /// One table for all blocks (SimMIM's ViT pre-training).
    Shared,
    /// One table per block (BEiT).
    PerBlock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// MAE's: Xavier-uniform linear weights.
    Mae,
    /// BEiT's and SimMIM's: normal std 0.02, proj/fc2 scaled by 1/√(2·layer).
    Beit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QkvBiasArg {
    /// One learned qkv.bias (timm, MAE).
    Qkv,
    /// q_bias and v_bias, the key's bias zero (BEiT, SimMIM).
    Qv,
    /// No qkv bias (SimMIM's and BEiT's `qkv_bias=False`).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EncoderArg {
    /// Vision Transformer (global attention, a class token).
    Vit,
    /// Swin Transformer (shifted windows, patch merging; SimMIM only).
    Swin,
}

/// The model: encoder, method (head) and target.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Encoder family (default: the preset's; vit).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    /// Encoder preset. ViT: vit-mini (192/6/3, the default), vit-tiny
    /// (192/12/3), simmim-vit-base (ViT-B with SimMIM's options: no absolute
    /// positions, shared relative bias, layer scale 0.1, q/v bias, drop path
    /// 0.1, BEiT init), vit-small (384/12/6), vit-base (768/12/12), vit-large
    /// (1024/24/16), vit-huge. Swin: swin-mini (48 wide, blocks 2-2-2, heads
    /// 3-6-12, patch 2, window 4: for 32-pixel images, the default with
    /// --encoder swin), swin-tiny (96, blocks 2-2-6-2, heads 3-6-12-24, patch
    /// 4, window 7), swin-small (96, blocks 2-2-18-2), swin-base (128, blocks
    /// 2-2-18-2, heads 4-8-16-32), simmim-swin-base (SimMIM's: swin-base with
    /// window 6 and no drop path, for --img-size 192).
    #[arg(long)]
    pub preset: Option<String>,
    /// Swin: window side in tokens (overrides the preset).
    #[arg(long)]
    pub window: Option<usize>,
    /// Swin: add a learned absolute position embedding to the patch
    /// embeddings (Swin's `ape`; off in the papers' models).
    #[arg(long)]
    pub ape: bool,
    /// Swin: blocks per stage, e.g. 2,2,6,2 (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<usize>>,
    /// Swin: heads per stage, e.g. 3,6,12,24 (overrides the preset).
    #[arg(long, value_delimiter = ',')]
    pub stage_heads: Option<Vec<usize>>,
    /// Image size, `N` or `HxW` (default: the data set's, 32 for synthetic).
    #[arg(long)]
    pub img_size: Option<Size>,
    /// Patch side in pixels (default: 4 up to 64-pixel images, else 16).
    #[arg(long)]
    pub patch: Option<usize>,
    /// Image channels (default: the data set's, 3 for synthetic).
    #[arg(long)]
    pub chans: Option<usize>,
    /// Encoder width (overrides the preset).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Encoder depth (overrides the preset).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Encoder heads (overrides the preset).
    #[arg(long)]
    pub heads: Option<usize>,
    /// MLP hidden width as a multiple of the width.
    #[arg(long, default_value_t = 4.0)]
    pub mlp_ratio: f32,
    /// Positional embeddings (default: the preset's; sincos for vit-*).
    #[arg(long, value_enum)]
    pub pos_embed: Option<PosArg>,
    /// Relative position bias on every attention's logits (default: the
    /// preset's; none for vit-*).
    #[arg(long, value_enum)]
    pub rel_pos_bias: Option<RelPosArg>,
    /// Layer scale: learned per-channel factors on each residual branch,
    /// starting at this value (default: the preset's; none for vit-*).
    #[arg(long, allow_negative_numbers = true)]
    pub layer_scale: Option<f32>,
    /// Bias of the attention's qkv projection (default: the preset's; qkv
    /// for vit-*).
    #[arg(long, value_enum)]
    pub qkv_bias: Option<QkvBiasArg>,
    /// Stochastic depth: the drop-path rate of the last block, rising
    /// linearly from 0 (default: the preset's; 0 for vit-*).
    #[arg(long, allow_negative_numbers = true)]
    pub drop_path: Option<f32>,
    /// Weight initialisation (default: the preset's; mae for vit-*).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// No final LayerNorm over the tokens (BEiT's and SimMIM's ViT built for
    /// mean pooling).
    #[arg(long)]
    pub no_final_norm: bool,
    /// Pre-training method (prediction head; default: mae with a ViT,
    /// simmim with Swin).
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// MAE decoder width (default: 128 below 128-pixel images, else 512).
    #[arg(long)]
    pub decoder_dim: Option<usize>,
    /// MAE decoder depth (default: 2 below 128-pixel images, else 8).
    #[arg(long)]
    pub decoder_depth: Option<usize>,
    /// MAE decoder heads (default: 4 below 128-pixel images, else 16).
    #[arg(long)]
    pub decoder_heads: Option<usize>,
    /// Prediction target and loss (default: pixels with MAE, as MAE's code
    /// and its visualisation model; l1 with SimMIM, as SimMIM's recipe).
    #[arg(long, value_enum)]
    pub target: Option<TargetArg>,
    /// Entries of the codebook (with --target codebook).
    #[arg(long, default_value_t = 256)]
    pub codebook_size: usize,
}

impl ModelArgs {
    /// Builds and validates the model configuration; `native` is the data
    /// set's size and channels, if fixed.
    pub fn build(&self, native: Option<([usize; 2], usize)>) -> Result<ModelConfig> {
        let size = self.img_size.map(|s| s.0).or(native.map(|n| n.0)).unwrap_or([32, 32]);
        let chans = self.chans.or(native.map(|n| n.1)).unwrap_or(3);
        let kind = self.encoder_kind()?;
        let encoder: EncoderConfig = match kind {
            EncoderArg::Vit => self.vit(size, chans)?.into(),
            EncoderArg::Swin => self.swin(size, chans)?.into(),
        };
        let method_arg = self.method_arg();
        let method = match method_arg {
            MethodArg::Mae => {
                let base = if size[0].max(size[1]) < 128 {
                    DecoderConfig::light()
                } else {
                    DecoderConfig::mae_default()
                };
                Method::Mae {
                    decoder: DecoderConfig {
                        embed_dim: self.decoder_dim.unwrap_or(base.embed_dim),
                        depth: self.decoder_depth.unwrap_or(base.depth),
                        num_heads: self.decoder_heads.unwrap_or(base.num_heads),
                        mlp_ratio: base.mlp_ratio,
                    },
                }
            }
            MethodArg::Simmim => Method::SimMim,
        };
        let target = self.target.unwrap_or(match method_arg {
            MethodArg::Mae => TargetArg::Pixels,
            MethodArg::Simmim => TargetArg::L1,
        });
        let target = match target {
            TargetArg::NormPix => TargetConfig::Pixels {
                loss: PixelLoss::Mse,
                norm_pix: true,
            },
            TargetArg::Pixels => TargetConfig::Pixels {
                loss: PixelLoss::Mse,
                norm_pix: false,
            },
            TargetArg::L1 => TargetConfig::Pixels {
                loss: PixelLoss::L1,
                norm_pix: false,
            },
            TargetArg::Codebook => TargetConfig::Codebook {
                size: self.codebook_size,
                normalize: false,
            },
        };
        let config = ModelConfig {
            encoder,
            method,
            target,
        };
        config.validate()?;
        Ok(config)
    }

    /// The encoder family: `--encoder`, else the preset's (`swin-*` is Swin).
    pub fn encoder_kind(&self) -> Result<EncoderArg> {
        let by_preset = self.preset.as_deref().map(|p| {
            if p.starts_with("swin") {
                EncoderArg::Swin
            } else {
                EncoderArg::Vit
            }
        });
        match (self.encoder, by_preset) {
            (Some(e), Some(p)) if e != p => bail!(
                "--preset {} is not a {} preset",
                self.preset.as_deref().unwrap_or_default(),
                if e == EncoderArg::Swin { "Swin" } else { "ViT" }
            ),
            (Some(e), _) | (None, Some(e)) => Ok(e),
            (None, None) => Ok(EncoderArg::Vit),
        }
    }

    /// `--method`, else MAE with a ViT and SimMIM with Swin.
    pub fn method_arg(&self) -> MethodArg {
        self.method.unwrap_or(match self.encoder_kind() {
            Ok(EncoderArg::Swin) => MethodArg::Simmim,
            _ => MethodArg::Mae,
        })
    }

    fn vit(&self, size: [usize; 2], chans: usize) -> Result<VitConfig> {
        for (given, name) in [
            (self.window.is_some(), "--window"),
            (self.depths.is_some(), "--depths"),
            (self.stage_heads.is_some(), "--stage-heads"),
            (self.ape, "--ape"),
        ] {
            if given {
                bail!("{name} is a Swin option; this encoder is a ViT (--encoder swin for Swin)");
            }
        }
        let small = size[0].max(size[1]) <= 64;
        let patch = self.patch.unwrap_or(if small { 4 } else { 16 });
        if patch == 0 {
            bail!("--patch must be at least 1");
        }
        let mut encoder = VitConfig::preset(self.preset.as_deref().unwrap_or("vit-mini"), size, patch, chans)?;
        self.apply_vit(&mut encoder, true);
        Ok(encoder)
    }

    /// The ViT options typed on the command line, onto `encoder` (with
    /// `defaults`, also the options' defaults: `--mlp-ratio`).
    fn apply_vit(&self, encoder: &mut VitConfig, defaults: bool) {
        if let Some(d) = self.dim {
            encoder.embed_dim = d;
        }
        if let Some(d) = self.depth {
            encoder.depth = d;
        }
        if let Some(h) = self.heads {
            encoder.num_heads = h;
        }
        if defaults || self.mlp_ratio != 4.0 {
            encoder.mlp_ratio = self.mlp_ratio;
        }
        if let Some(p) = self.pos_embed {
            encoder.pos_embed = match p {
                PosArg::Sincos => PosEmbedKind::SinCos,
                PosArg::Learned => PosEmbedKind::Learned,
                PosArg::None => PosEmbedKind::None,
            };
        }
        if let Some(r) = self.rel_pos_bias {
            encoder.rel_pos_bias = match r {
                RelPosArg::None => RelPosBias::None,
                RelPosArg::Shared => RelPosBias::Shared,
                RelPosArg::PerBlock => RelPosBias::PerBlock,
            };
        }
        if self.layer_scale.is_some() {
            encoder.layer_scale = self.layer_scale;
        }
        if let Some(q) = self.qkv_bias {
            encoder.qkv_bias = match q {
                QkvBiasArg::Qkv => QkvBias::Qkv,
                QkvBiasArg::Qv => QkvBias::QV,
                QkvBiasArg::None => QkvBias::None,
            };
        }
        if let Some(d) = self.drop_path {
            encoder.drop_path = d;
        }
        if self.no_final_norm {
            encoder.final_norm = false;
        }
        if let Some(i) = self.init {
            encoder.init = match i {
                InitArg::Mae => InitScheme::Mae,
                InitArg::Beit => InitScheme::Beit,
            };
        }
    }

    /// `have` (a checkpoint's encoder) with only the options typed on the
    /// command line changed: what fine-tuning a checkpoint is asked to run
    /// on. (`--preset` and `--encoder` name a whole encoder; callers compare
    /// against that instead.)
    pub fn overlay(&self, have: &EncoderConfig) -> Result<EncoderConfig> {
        let mut want = have.clone();
        let swin_only = self.window.is_some() || self.depths.is_some() || self.stage_heads.is_some() || self.ape;
        let vit_only = self.depth.is_some()
            || self.heads.is_some()
            || self.pos_embed.is_some()
            || self.rel_pos_bias.is_some()
            || self.layer_scale.is_some()
            || self.qkv_bias.is_some()
            || self.init.is_some()
            || self.no_final_norm;
        match &mut want {
            EncoderConfig::Vit(_) if swin_only => {
                bail!("--window, --depths, --stage-heads and --ape are Swin options; the checkpoint holds a ViT")
            }
            EncoderConfig::Swin(_) if vit_only => bail!("that is a ViT option; the checkpoint holds a Swin"),
            EncoderConfig::Vit(v) => {
                if let Some(s) = self.img_size {
                    v.img_size = s.0;
                }
                if let Some(p) = self.patch {
                    v.patch_size = p;
                }
                if let Some(c) = self.chans {
                    v.in_chans = c;
                }
                self.apply_vit(v, false);
            }
            EncoderConfig::Swin(c) => {
                if let Some(s) = self.img_size {
                    c.img_size = s.0;
                }
                if let Some(ch) = self.chans {
                    c.in_chans = ch;
                }
                self.apply_swin(c, false);
            }
        }
        want.validate()?;
        Ok(want)
    }

    fn swin(&self, size: [usize; 2], chans: usize) -> Result<SwinConfig> {
        for (given, name) in [
            (self.depth.is_some(), "--depth (Swin: --depths)"),
            (self.heads.is_some(), "--heads (Swin: --stage-heads)"),
            (self.pos_embed.is_some(), "--pos-embed"),
            (self.rel_pos_bias.is_some(), "--rel-pos-bias"),
            (self.layer_scale.is_some(), "--layer-scale"),
            (self.qkv_bias.is_some(), "--qkv-bias"),
            (self.init.is_some(), "--init"),
            (self.no_final_norm, "--no-final-norm"),
        ] {
            if given {
                bail!("{name} is a ViT option; this encoder is Swin");
            }
        }
        // Validated once the options typed with the preset apply.
        let mut c = SwinConfig::named(self.preset.as_deref().unwrap_or("swin-mini"), size, chans)?;
        self.apply_swin(&mut c, true);
        c.validate()?;
        Ok(c)
    }

    /// The Swin options typed on the command line, onto `c` (with
    /// `defaults`, also the options' defaults: `--mlp-ratio`, `--ape`).
    fn apply_swin(&self, c: &mut SwinConfig, defaults: bool) {
        if let Some(p) = self.patch {
            c.patch_size = p;
        }
        if let Some(w) = self.window {
            c.window = w;
        }
        if let Some(d) = self.dim {
            c.embed_dim = d;
        }
        if let Some(d) = &self.depths {
            c.depths = d.clone();
        }
        if let Some(h) = &self.stage_heads {
            c.num_heads = h.clone();
        }
        if defaults || self.mlp_ratio != 4.0 {
            c.mlp_ratio = self.mlp_ratio;
        }
        if let Some(d) = self.drop_path {
            c.drop_path = d;
        }
        if defaults || self.ape {
            c.ape = self.ape;
        }
    }
}

/// How an encoder's tokens become one vector (`--pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PoolArg {
    /// Mean of the patch tokens (a ViT classifier adds its own LayerNorm,
    /// MAE's global_pool; Swin: the mean of its last stage).
    Mean,
    /// The CLS token after the final norm (ViT only).
    Cls,
}

impl PoolArg {
    pub fn pool(self) -> tessera_mim::config::Pool {
        match self {
            PoolArg::Mean => tessera_mim::config::Pool::Mean,
            PoolArg::Cls => tessera_mim::config::Pool::Cls,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 products (Tessera's GEMM; matrixmultiply without AVX2): MAE's numerics.
    F32,
    /// bfloat16 inputs, f32 accumulation, on Intel AMX or AVX512-BF16 (mixed precision).
    Bf16,
}

impl PrecisionArg {
    pub fn config(self) -> tessera_tensor::Precision {
        match self {
            PrecisionArg::F32 => tessera_tensor::Precision::F32,
            PrecisionArg::Bf16 => tessera_tensor::Precision::Bf16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaskKind {
    /// MAE: uniformly random patches.
    Random,
    /// BEiT: random rectangles.
    Block,
    /// One square region.
    Square,
    /// All but one patch of every k×k cell.
    Grid,
    /// SimMIM: random cells of a coarser grid.
    Simmim,
}

/// What a checkpoint without Tessera's metadata (released MAE, SimMIM,
/// BEiT or timm weights, `.pth` or safetensors) cannot say about its model.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OfficialArgs {
    /// Encoder heads of such a checkpoint (default: the ViT preset of its width).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Decoder heads of such a checkpoint (default: 16 for MAE's 512-wide decoder).
    #[arg(long)]
    pub decoder_heads: Option<usize>,
    /// Such a checkpoint was trained on raw pixels, not per-patch normalised
    /// ones (MAE's "visualize" weights).
    #[arg(long)]
    pub raw_pixels: bool,
    /// The image size such a checkpoint was trained at, `N` or `HxW`, where
    /// its file cannot tell (a Swin without `attn_mask` buffers: timm's).
    #[arg(long)]
    pub img_size: Option<Size>,
}

impl OfficialArgs {
    pub fn hints(&self) -> tessera_mim::io::official::ModelHints {
        tessera_mim::io::official::ModelHints {
            heads: self.heads,
            decoder_heads: self.decoder_heads,
            norm_pix: Some(!self.raw_pixels),
            img_size: self.img_size.map(|s| s.0),
        }
    }
}

/// The masking strategy. Unset options follow the method: MAE hides 75% of
/// the patches uniformly at random; SimMIM hides 60% of the cells of a
/// coarser grid, 32 pixels wide where the image allows (its published recipe).
#[derive(clap::Args, Clone, Debug)]
pub struct MaskArgs {
    /// Masking strategy (default: random with MAE, simmim with SimMIM).
    #[arg(long, value_enum)]
    pub mask: Option<MaskKind>,
    /// Fraction of patches to hide (random, block, simmim), in [0, 1)
    /// (default: 0.75 with MAE, 0.6 with SimMIM).
    #[arg(long, allow_negative_numbers = true)]
    pub mask_ratio: Option<f32>,
    /// Side of the square in patches (square; default: half the grid).
    #[arg(long)]
    pub mask_side: Option<usize>,
    /// Place the square at random instead of the centre (square).
    #[arg(long)]
    pub mask_random_position: bool,
    /// Cell side in patches (grid).
    #[arg(long, default_value_t = 2)]
    pub mask_grid: usize,
    /// Mask cell side in pixels, a multiple of the patch (simmim; default:
    /// 32 as SimMIM, or on images too small for 4 such cells a side the
    /// largest multiple of the patch that gives at least 4).
    #[arg(long)]
    pub mask_cell_px: Option<usize>,
    /// Smallest rectangle in patches (block).
    #[arg(long, default_value_t = 16)]
    pub mask_min_block: usize,
}

/// SimMIM's mask cell (32 pixels) where it divides the image into at least
/// 4 cells a side, else the largest multiple of the patch that does (the
/// patch itself at worst).
pub fn default_cell_px(patch: usize, size: [usize; 2]) -> usize {
    let fits = |c: usize| size[0].is_multiple_of(c) && size[1].is_multiple_of(c) && size[0].min(size[1]) / c >= 4;
    let mut c = (32 / patch).max(1) * patch;
    while c > patch && !fits(c) {
        c -= patch;
    }
    c
}

impl MaskArgs {
    /// Whether a strategy or ratio was typed (otherwise a checkpoint's own
    /// masking may be used).
    pub fn given(&self) -> bool {
        self.mask.is_some() || self.mask_ratio.is_some()
    }

    /// The masking configuration, validated against the model's grid.
    pub fn build(&self, model: &ModelConfig) -> Result<MaskingConfig> {
        let grid = model.encoder.grid();
        let simmim = matches!(model.method, Method::SimMim);
        let kind = self
            .mask
            .unwrap_or(if simmim { MaskKind::Simmim } else { MaskKind::Random });
        let ratio = self.mask_ratio.unwrap_or(if simmim { 0.6 } else { 0.75 });
        let cfg = match kind {
            MaskKind::Random => MaskingConfig::Random { ratio },
            MaskKind::Block => MaskingConfig::Block {
                ratio,
                min_patches: self.mask_min_block,
            },
            MaskKind::Square => MaskingConfig::Square {
                side: self.mask_side.unwrap_or((grid[0].min(grid[1]) / 2).max(1)),
                centered: !self.mask_random_position,
            },
            MaskKind::Grid => MaskingConfig::Grid {
                k: self.mask_grid,
                random_offset: true,
            },
            MaskKind::Simmim => MaskingConfig::SimMim {
                ratio,
                cell_px: self
                    .mask_cell_px
                    .unwrap_or_else(|| default_cell_px(model.encoder.patch_size(), model.encoder.img_size())),
            },
        };
        cfg.build(model.encoder.patch_size(), grid)?;
        Ok(cfg)
    }
}

/// With `--encoder` on a command that loads a checkpoint: refuses a
/// checkpoint of the other family, naming both.
pub fn check_encoder(want: Option<EncoderArg>, model: &tessera_mim::MimModel, path: &std::path::Path) -> Result<()> {
    let have = match model.config.encoder {
        EncoderConfig::Vit(_) => EncoderArg::Vit,
        EncoderConfig::Swin(_) => EncoderArg::Swin,
    };
    if let Some(w) = want
        && w != have
    {
        bail!(
            "{} holds a {} encoder, not the {} that --encoder asks for",
            path.display(),
            model.config.encoder.kind(),
            if w == EncoderArg::Swin { "swin" } else { "vit" }
        );
    }
    Ok(())
}

/// Where a training run writes, when it checkpoints and when it stops
/// (`pretrain` and `finetune`).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Output folder (default: runs/pretrain or runs/finetune).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Start over in an OUT that holds a run (its checkpoint, metrics and
    /// pictures are deleted); without it such a folder is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
    /// Also write one when this many minutes have passed since the last
    /// (0: steps only).
    #[arg(long, default_value_t = 5.0)]
    pub ckpt_minutes: f64,
    /// Stop (with a checkpoint) after this step, as if interrupted; `--resume` continues.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Refuse runs estimated to need more than this many GiB (default: the
    /// memory the system reports available).
    #[arg(long)]
    pub max_memory: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Do not refresh OUT/report.html at each checkpoint.
    #[arg(long)]
    pub no_report: bool,
}

impl RunArgs {
    /// The output folder: `--out`, else `default`.
    pub fn out(&self, default: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(default))
    }

    /// The library's run options, stopping on the first Ctrl-C or SIGTERM.
    pub fn options(&self, default_out: &str) -> Result<RunOptions> {
        if !(self.ckpt_minutes >= 0.0 && self.ckpt_minutes.is_finite()) {
            bail!("--ckpt-minutes must be zero or positive, got {}", self.ckpt_minutes);
        }
        if let Some(g) = self.max_memory
            && !(g.is_finite() && g > 0.0)
        {
            bail!("--max-memory must be a positive number of GiB, got {g}");
        }
        Ok(RunOptions {
            out: self.out(default_out),
            resume: self.resume,
            overwrite: self.overwrite,
            ckpt_every: self.ckpt_every,
            ckpt_interval: (self.ckpt_minutes > 0.0).then(|| Duration::from_secs_f64(self.ckpt_minutes * 60.0)),
            stop_after: self.stop_after,
            stop: Some(stop_on_signal()),
            max_memory: self.max_memory.map(|g| (g * (1u64 << 30) as f64) as u64),
            report: !self.no_report,
        })
    }
}

/// The signal that stopped the run (0: none yet).
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

/// The exit code of a run that a signal stopped, as a shell reports a
/// process the signal killed (128 + its number: 130 for SIGINT, 143 for
/// SIGTERM, 129 for SIGHUP); `None` if no signal came.
pub fn signal_exit_code() -> Option<u8> {
    let sig = STOPPED_BY.load(Ordering::SeqCst);
    (sig > 0).then(|| (128 + sig).min(255) as u8)
}

/// A flag that the first SIGINT (Ctrl-C), SIGTERM or SIGHUP sets: the run
/// then finishes its step, writes a checkpoint and stops, and the process
/// exits with [`signal_exit_code`]. A second signal stops at once, but not
/// in the middle of a file being written: that write is finished first.
fn stop_on_signal() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Under an MPI launcher every rank gets the signal; rank 0 says so.
    let speak = crate::ranks::launcher_rank().unwrap_or(0) == 0;
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: Ctrl-C will stop without a checkpoint ({e})");
            return stop;
        }
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let name = match sig {
                SIGINT => "Ctrl-C",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            let _ = STOPPED_BY.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            if flag.swap(true, Ordering::SeqCst) {
                let code = 128 + STOPPED_BY.load(Ordering::SeqCst);
                let writing = tessera_mim::io::safetensors::writes_in_flight() > 0;
                if speak {
                    eprintln!(
                        "\n{name}: stopping now{}",
                        if writing {
                            ", once the file being written is whole"
                        } else {
                            ""
                        }
                    );
                }
                // A checkpoint half renamed would lose every step: let the
                // write under way finish (a minute at most), then go.
                let t = std::time::Instant::now();
                while tessera_mim::io::safetensors::writes_in_flight() > 0 && t.elapsed().as_secs() < 60 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::process::exit(code);
            }
            if speak {
                let again = if sig == SIGINT { "Ctrl-C again" } else { "send it again" };
                eprintln!("\n{name}: stopping after this step, with a checkpoint ({again} to stop at once)");
            }
        }
    });
    stop
}

/// `text` (a class name from a checkpoint's metadata, say) safe to print:
/// control characters (escape sequences that would drive the terminal)
/// written as escapes (`\u{1b}`), everything else as it is.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// True (having said so) if a resumed run is already at its length.
pub fn already_done(options: &RunOptions, step: u64, total_steps: u64, speak: bool) -> bool {
    if step < total_steps {
        return false;
    }
    if speak {
        println!(
            "{} is already at step {step} of {total_steps}; nothing to do",
            options.checkpoint().display()
        );
    }
    true
}

/// What a finished or interrupted run says.
pub fn report_end(end: &RunEnd, total_steps: u64, done: impl FnOnce(&StepStats) -> String) -> Result<()> {
    match &end.last {
        None => bail!("no step ran"),
        Some(s) if end.interrupted => println!(
            "interrupted at step {} of {total_steps}: checkpoint {}; run the same command with --resume to continue",
            s.step,
            end.checkpoint.display()
        ),
        Some(s) => println!("{}", done(s)),
    }
    Ok(())
}

/// A training run's progress bar (position, loss, rate, throughput), the
/// run's opening line, and fine-tuning's validation lines above the bar.
pub struct Progress {
    pub bar: indicatif::ProgressBar,
    opening: Box<dyn FnMut(&RunStart) -> String>,
}

impl Progress {
    /// A bar of `total_steps` (hidden with `quiet`) that prints `opening`
    /// when the run starts.
    pub fn new(total_steps: u64, quiet: bool, opening: impl FnMut(&RunStart) -> String + 'static) -> Progress {
        Progress {
            bar: step_bar(total_steps, quiet),
            opening: Box::new(opening),
        }
    }
}

impl Observer for Progress {
    fn started(&mut self, run: &RunStart) {
        self.bar.set_position(run.start_step);
        println!("{}", (self.opening)(run));
    }
    fn step(&mut self, stats: &StepStats, images_per_s: f64) {
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} img/s",
            stats.loss, stats.lr, images_per_s
        ));
        self.bar.set_position(stats.step);
    }
    fn evaluated(&mut self, epoch: u64, r: &EvalReport) {
        self.bar.println(format!(
            "epoch {epoch}: val top-1 {:.2}%, top-5 {:.2}%",
            100.0 * r.top1,
            100.0 * r.top5
        ));
    }
    fn knn(&mut self, step: u64, top1: f32) {
        self.bar
            .println(format!("step {step}: k-NN top-1 {:.1}%", 100.0 * top1));
    }
}

/// The progress bar of a training run: elapsed time, steps, a message
/// (loss, rate, throughput) and the time left; hidden with `quiet`.
pub fn step_bar(total_steps: u64, quiet: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total_steps);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A count with a metric suffix: 85.8M, 4.4G.
pub fn si(v: f64) -> String {
    let (d, s) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{:.1}{s}", v / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SimMIM's 32-pixel cell where 4 fit a side; else the largest multiple
    /// of the patch that leaves 4 cells, down to the patch itself.
    #[test]
    fn simmim_cell_default() {
        assert_eq!(default_cell_px(16, [224, 224]), 32); // SimMIM ViT-B: 7×7 cells
        assert_eq!(default_cell_px(4, [192, 192]), 32); // SimMIM Swin: 6×6 cells
        assert_eq!(default_cell_px(4, [32, 32]), 8); // the demo: 4×4 cells of 2×2 patches
        assert_eq!(default_cell_px(4, [28, 28]), 4); // 28 = 7 × 4: one patch a cell
        assert_eq!(default_cell_px(7, [28, 28]), 7);
        assert_eq!(default_cell_px(16, [64, 96]), 16);
        assert_eq!(default_cell_px(48, [96, 96]), 48); // a patch wider than 32 px
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    /// The default model of `--method METHOD` (32×32×3, patch 4).
    fn model(method: &str) -> ModelConfig {
        use clap::Parser;
        let cli = Cli::try_parse_from(["tessera", "--method", method]).unwrap();
        cli.model.build(None).unwrap()
    }

    /// Unset masking options follow the method (MAE: random 0.75; SimMIM:
    /// cells at 0.6); set ones win.
    #[test]
    fn masking_defaults_follow_the_method() {
        let unset = MaskArgs {
            mask: None,
            mask_ratio: None,
            mask_side: None,
            mask_random_position: false,
            mask_grid: 2,
            mask_cell_px: None,
            mask_min_block: 16,
        };
        let mae = unset.build(&model("mae")).unwrap();
        assert!(
            matches!(mae, MaskingConfig::Random { ratio } if ratio == 0.75),
            "{mae:?}"
        );
        let simmim = unset.build(&model("simmim")).unwrap();
        assert!(
            matches!(simmim, MaskingConfig::SimMim { ratio, cell_px: 8 } if ratio == 0.6),
            "{simmim:?}"
        );
        let typed = MaskArgs {
            mask: Some(MaskKind::Random),
            mask_ratio: Some(0.5),
            ..unset.clone()
        };
        let cfg = typed.build(&model("simmim")).unwrap();
        assert!(
            matches!(cfg, MaskingConfig::Random { ratio } if ratio == 0.5),
            "{cfg:?}"
        );
        assert!(typed.given() && !unset.given());
    }
}

/// A data set's split, as an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

impl SplitArg {
    pub fn split(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// The images a picture command draws: files, or a run of a data set's split.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Image files (PNG/JPEG); without them, images of --data.
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split of --data to take images from.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Number of images from --data.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Index of the first image from --data.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
}

impl ImageArgs {
    /// The images `(N, C, H, W)` for `encoder`, normalised with `norm` if
    /// given, else the data set's statistics (files: ImageNet's, as for
    /// folders), and the statistics used.
    pub fn load(
        &self,
        encoder: &tessera_mim::EncoderConfig,
        norm: Option<tessera_mim::data::Normalization>,
    ) -> Result<(tessera_tensor::Tensor, tessera_mim::data::Normalization)> {
        use tessera_mim::data::loader::{load_batch, load_images};
        use tessera_mim::data::transform::Transform;
        let (size, chans) = (encoder.img_size(), encoder.in_chans());
        if !self.images.is_empty() {
            let norm = norm
                .unwrap_or_else(tessera_mim::data::Normalization::imagenet)
                .for_channels(chans);
            return Ok((load_images(&self.images, &Transform::eval(encoder, &norm))?, norm));
        }
        let ds = self.data.open(self.split.split(), size, chans)?;
        let norm = norm.unwrap_or_else(|| ds.normalization()).for_channels(chans);
        if self.count == 0 || self.start >= ds.len() {
            bail!(
                "{} has {} images; --start {} --count {} selects none",
                ds.name(),
                ds.len(),
                self.start,
                self.count
            );
        }
        let idx: Vec<usize> = (self.start..(self.start + self.count).min(ds.len())).collect();
        Ok((
            load_batch(ds.as_ref(), &idx, &Transform::eval(encoder, &norm), 0)?.0,
            norm,
        ))
    }
}
