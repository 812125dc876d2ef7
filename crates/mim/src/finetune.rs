//! Supervised fine-tuning and classification: how MIM pre-training is judged
//! (MAE's headline numbers are fine-tuned top-1).
//!
//! A [`Classifier`] is an encoder (ViT or Swin) with a linear head, named as
//! MAE's `models_vit.VisionTransformer` and Swin's classifier so their
//! fine-tuned checkpoints load:
//!
//! ```text
//! ViT, pool cls:   encoder (final norm)        → token 0            → head (K, D)
//! ViT, pool mean:  encoder (no final norm)     → mean of patch tokens → fc_norm → head
//! Swin:            encoder (final norm)        → mean of the last stage          → head
//! ```
//! The head starts from a truncated normal of std 2e-5 and zero bias (MAE's
//! `trunc_normal_(model.head.weight, std=2e-5)`).
//!
//! The recipe is MAE's `main_finetune.py` ([`FinetuneConfig::mae`]): AdamW
//! (β = 0.9, 0.999), layer-wise learning-rate decay 0.75, weight decay 0.05
//! except norms, biases, tokens and tables, linear warm-up then cosine to
//! 1e-6, stochastic depth 0.1, label smoothing 0.1, mixup 0.8 and cutmix 1.0
//! (switchable), random resized crops (scale 0.08–1) and flips. RandAugment
//! and random erasing are not implemented.
//!
//! **Layer-wise decay.** With `n` blocks the layers are numbered 0 (patch
//! embedding, \[CLS\], positions), 1…n (the blocks, in order) and n + 1 (the
//! final norms and the head); layer `i` learns at `lr · decay^(n + 1 − i)`.
//! The head learns at the full rate, the embedding at `0.75^(n+1)` of it
//! (3% for ViT-B): the lower layers hold the most general features, which
//! pre-training made good, and a large update would destroy them before the
//! randomly initialised head has learnt to use them. Swin's blocks are
//! numbered across stages; each patch merging shares the number of the block
//! before it (SimMIM's rule).

use crate::checkpoint::{TensorFile, json, parse_meta, restore_optimizer, store_optimizer};
use crate::config::EncoderConfig;
use crate::data::transform::{EpochSampler, Transform, load_batch};
use crate::data::{Dataset, Normalization};
use crate::encoder::Encoder;
use crate::error::{MimError, Result, config_err};
use crate::layers::{LayerNorm, Linear, Module, join};
use crate::masking::MimRng;
use crate::pretrain::{RunOptions, check_run_start, io_err, truncate_metrics};
use crate::train::{MatmulPrecision, clip_checked, decays};
use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
use tessera_tensor::{GradStore, Tensor};

/// How the classifier turns tokens into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierPool {
    /// The \[CLS\] token after the final norm (the seed's ViT; ViT only).
    Cls,
    /// The mean of the patch tokens, then its own LayerNorm `fc_norm` (MAE's
    /// `global_pool`; the encoder has no final norm). Swin: the mean of the
    /// last stage after its final norm, no `fc_norm`.
    Mean,
}

/// A classifier's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub encoder: EncoderConfig,
    pub num_classes: usize,
    pub pool: ClassifierPool,
    /// The data set's class names (for `predict`), `num_classes` of them.
    pub class_names: Vec<String>,
}

impl ClassifierConfig {
    /// A classifier on `encoder` (whose drop path is set to `drop_path`);
    /// with mean pooling a ViT loses its final norm to `fc_norm`, as MAE's.
    pub fn new(
        mut encoder: EncoderConfig,
        class_names: Vec<String>,
        pool: ClassifierPool,
        drop_path: f32,
    ) -> Result<ClassifierConfig> {
        match &mut encoder {
            EncoderConfig::Vit(v) => {
                v.drop_path = drop_path;
                v.final_norm = pool == ClassifierPool::Cls;
            }
            EncoderConfig::Swin(s) => s.drop_path = drop_path,
        }
        let c = ClassifierConfig {
            encoder,
            num_classes: class_names.len(),
            pool,
            class_names,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the parts and how they fit.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if self.num_classes < 2 {
            return Err(config_err(format!(
                "a classifier needs at least 2 classes, got {}",
                self.num_classes
            )));
        }
        if self.class_names.len() != self.num_classes {
            return Err(config_err(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            )));
        }
        if self.pool == ClassifierPool::Cls && self.encoder.swin().is_some() {
            return Err(config_err("Swin has no [CLS] token: pool its tokens by their mean"));
        }
        Ok(())
    }

    /// Number of layers for layer-wise decay: the blocks plus one (the
    /// embedding is layer 0, the head layer `num_layers`).
    pub fn num_layers(&self) -> usize {
        match &self.encoder {
            EncoderConfig::Vit(v) => v.depth + 1,
            EncoderConfig::Swin(s) => s.depths.iter().sum::<usize>() + 1,
        }
    }

    /// The layer of a parameter (see the module docs).
    pub fn layer_id(&self, name: &str) -> usize {
        let top = self.num_layers();
        let embedding = ["cls_token", "pos_embed", "mask_token"].contains(&name) || name.starts_with("patch_embed.");
        if embedding {
            return 0;
        }
        let index = |rest: &str| rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
        match &self.encoder {
            EncoderConfig::Vit(_) => match name.strip_prefix("blocks.").and_then(index) {
                Some(i) => i + 1,
                None => top,
            },
            EncoderConfig::Swin(s) => {
                let Some(rest) = name.strip_prefix("layers.") else {
                    return top;
                };
                let Some(stage) = index(rest) else { return top };
                let before: usize = s.depths[..stage.min(s.depths.len())].iter().sum();
                let rest = rest.split_once('.').map_or("", |r| r.1);
                if let Some(block) = rest.strip_prefix("blocks.").and_then(index) {
                    before + block + 1
                } else {
                    // downsample: the number of the stage's last block.
                    before + s.depths.get(stage).copied().unwrap_or(0)
                }
            }
        }
    }
}

/// An encoder with a classification head.
pub struct Classifier {
    pub config: ClassifierConfig,
    pub encoder: Encoder,
    /// MAE's `fc_norm` (ViT with mean pooling).
    pub fc_norm: Option<LayerNorm>,
    pub head: Linear,
}

impl Classifier {
    /// A fresh classifier (the encoder as its family initialises, the head
    /// truncated normal with std 2e-5, zero bias).
    pub fn new<R: Rng + ?Sized>(config: ClassifierConfig, rng: &mut R) -> Result<Classifier> {
        config.validate()?;
        let encoder = Encoder::new(&config.encoder, rng)?;
        let d = config.encoder.out_dim();
        let fc_norm = match (&config.encoder, config.pool) {
            (EncoderConfig::Vit(v), ClassifierPool::Mean) => Some(LayerNorm::new(d, v.norm_eps)),
            _ => None,
        };
        let head = Linear::new(d, config.num_classes, true, rng);
        head.weight.set_data(&tessera_tensor::init::trunc_normal(
            head.weight.numel(),
            0.0,
            2e-5,
            -2.0,
            2.0,
            rng,
        ))?;
        if let Some(b) = &head.bias {
            b.set_data(&vec![0.0; b.numel()])?;
        }
        Ok(Classifier {
            config,
            encoder,
            fc_norm,
            head,
        })
    }

    /// Copies the pre-trained encoder's weights (same family and shape) into
    /// this classifier's; the tensors it has no use for (a ViT's final norm
    /// under mean pooling) are skipped. Returns how many tensors were copied.
    pub fn load_encoder(&self, pretrained: &Encoder) -> Result<usize> {
        let theirs: BTreeMap<String, Tensor> = pretrained.named_tensors().into_iter().collect();
        let mut copied = 0;
        for (name, t) in self.encoder.named_tensors() {
            let Some(src) = theirs.get(&name) else {
                return Err(MimError::Input(format!(
                    "the pre-trained encoder has no tensor '{name}' (another encoder family or option?)"
                )));
            };
            if src.shape() != t.shape() {
                return Err(MimError::Input(format!(
                    "the pre-trained encoder's '{name}' has shape {:?}, this classifier's {:?}",
                    src.shape(),
                    t.shape()
                )));
            }
            t.set_data(&src.to_vec())?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Logits `(B, K)` of images `(B, C, H, W)`; `train` turns on stochastic
    /// depth (drawn from `rng`).
    pub fn forward(&self, imgs: &Tensor, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        self.encoder.check_images(imgs)?;
        let pooled = match &self.encoder {
            Encoder::Vit(vit) => {
                let tokens = vit.forward_all(imgs, train, rng)?; // (B, 1 + L, D)
                match (self.config.pool, &self.fc_norm) {
                    (ClassifierPool::Mean, Some(norm)) => {
                        norm.forward(&crate::vit::pool_tokens(&tokens, crate::Pool::Mean)?)?
                    }
                    _ => crate::vit::pool_tokens(&tokens, crate::Pool::Cls)?,
                }
            }
            Encoder::Swin(swin) => swin.stages(&swin.embed(imgs)?, train, rng)?.mean(&[1, 2], false)?,
        };
        Ok(self.head.forward(&pooled)?)
    }

    /// The tensors an optimizer updates.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }
}

impl Module for Classifier {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.encoder.visit(prefix, f);
        if let Some(n) = &self.fc_norm {
            n.visit(&join(prefix, "fc_norm"), f);
        }
        self.head.visit(&join(prefix, "head"), f);
    }
}

/// Mixup and CutMix (timm's `Mixup`, batch mode): each step mixes every image
/// with the batch's reversed order, by mixup (blend) or CutMix (paste a box)
/// chosen with `switch_prob`, with probability `prob`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixupConfig {
    /// Mixup's Beta(α, α); 0 turns mixup off.
    pub mixup_alpha: f32,
    /// CutMix's Beta(α, α); 0 turns CutMix off.
    pub cutmix_alpha: f32,
    /// Probability of mixing a batch at all.
    pub prob: f32,
    /// With both on: probability of CutMix rather than mixup.
    pub switch_prob: f32,
}

impl MixupConfig {
    /// MAE's fine-tuning recipe: mixup 0.8, CutMix 1.0, always, half and half.
    pub fn mae() -> Self {
        MixupConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
        }
    }

    /// No mixing.
    pub fn off() -> Self {
        MixupConfig {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 0.0,
            switch_prob: 0.0,
        }
    }

    /// Whether any mixing can happen.
    pub fn active(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }
}

/// A standard normal draw (Box–Muller).
fn normal01<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(`shape`, 1) draw (Marsaglia and Tsang 2000; boosted below 1).
fn gamma<R: Rng + ?Sized>(shape: f64, rng: &mut R) -> f64 {
    if shape < 1.0 {
        let u = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal01(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(α, α) draw.
pub fn beta<R: Rng + ?Sized>(alpha: f64, rng: &mut R) -> f64 {
    let (a, b) = (gamma(alpha, rng), gamma(alpha, rng));
    if a + b == 0.0 { 0.5 } else { a / (a + b) }
}

/// One-hot targets `(B, K)` smoothed by `smoothing`: `1 − s + s/K` on the
/// class, `s/K` elsewhere (timm's `one_hot(…, on, off)`).
pub fn smooth_targets(labels: &[u32], k: usize, smoothing: f32) -> Vec<f32> {
    let off = smoothing / k as f32;
    let on = 1.0 - smoothing + off;
    let mut q = vec![off; labels.len() * k];
    for (r, &c) in labels.iter().enumerate() {
        q[r * k + c as usize] = on;
    }
    q
}

/// What [`mix_batch`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixed {
    None,
    Mixup {
        lam: f32,
    },
    /// The box `[top, bottom) × [left, right)` came from the partner image;
    /// `lam` is the fraction of each image left its own.
    CutMix {
        lam: f32,
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
    },
}

/// Mixes `imgs (B, C, H, W)` in place with the batch reversed (image `i`
/// with image `B − 1 − i`) and returns the soft targets `(B, K)`:
/// `lam · smooth(y) + (1 − lam) · smooth(reversed y)`.
pub fn mix_batch<R: Rng + ?Sized>(
    imgs: &mut [f32],
    shape: [usize; 4],
    labels: &[u32],
    k: usize,
    smoothing: f32,
    cfg: &MixupConfig,
    rng: &mut R,
) -> (Vec<f32>, Mixed) {
    let [b, c, h, w] = shape;
    let own = smooth_targets(labels, k, smoothing);
    if !cfg.active() || rng.random::<f32>() >= cfg.prob {
        return (own, Mixed::None);
    }
    let cutmix = match (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0) {
        (true, true) => rng.random::<f32>() < cfg.switch_prob,
        (false, true) => true,
        _ => false,
    };
    let plane = h * w;
    let per = c * plane;
    // The partner of image i is B − 1 − i; pairs are mixed from copies.
    let original = imgs.to_vec();
    let mixed = if cutmix {
        let lam = beta(cfg.cutmix_alpha as f64, rng);
        let ratio = (1.0 - lam).sqrt();
        let (ch, cw) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
        let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
        let (top, bottom) = (cy.saturating_sub(ch / 2), (cy + ch / 2).min(h));
        let (left, right) = (cx.saturating_sub(cw / 2), (cx + cw / 2).min(w));
        for i in 0..b {
            let src = &original[(b - 1 - i) * per..][..per];
            let dst = &mut imgs[i * per..][..per];
            for ch_ in 0..c {
                for y in top..bottom {
                    let row = ch_ * plane + y * w;
                    dst[row + left..row + right].copy_from_slice(&src[row + left..row + right]);
                }
            }
        }
        // timm's correct_lam: the area actually kept.
        let lam = 1.0 - ((bottom - top) * (right - left)) as f32 / plane as f32;
        Mixed::CutMix {
            lam,
            top,
            bottom,
            left,
            right,
        }
    } else {
        let lam = beta(cfg.mixup_alpha as f64, rng) as f32;
        for i in 0..b {
            let src = &original[(b - 1 - i) * per..][..per];
            for (d, s) in imgs[i * per..][..per].iter_mut().zip(src) {
                *d = lam * *d + (1.0 - lam) * s;
            }
        }
        Mixed::Mixup { lam }
    };
    let lam = match mixed {
        Mixed::Mixup { lam } | Mixed::CutMix { lam, .. } => lam,
        Mixed::None => 1.0,
    };
    let q = (0..b * k)
        .map(|i| {
            let (r, j) = (i / k, i % k);
            lam * own[i] + (1.0 - lam) * own[(b - 1 - r) * k + j]
        })
        .collect();
    (q, mixed)
}

/// A fine-tuning recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub model: ClassifierConfig,
    pub batch_size: usize,
    /// Learning rate per 256 images; the peak rate is `base_lr · batch / 256`.
    pub base_lr: f32,
    pub min_lr: f32,
    pub weight_decay: f32,
    /// Layer-wise learning-rate decay (1: none).
    pub layer_decay: f32,
    pub betas: [f32; 2],
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub label_smoothing: f32,
    pub mixup: MixupConfig,
    /// Random resized crops (scale `crop_scale`) and flips of training images.
    pub augment: bool,
    pub crop_scale: (f32, f32),
    pub clip_grad: Option<f32>,
    pub seed: u64,
    #[serde(default)]
    pub precision: MatmulPrecision,
    /// The training set's channel statistics, applied to every input (by
    /// `evaluate` and `predict` too).
    pub normalization: Normalization,
}

impl FinetuneConfig {
    /// MAE's `main_finetune.py` defaults for a model and step budget:
    /// blr 1e-3, layer decay 0.75, weight decay 0.05, label smoothing 0.1,
    /// mixup 0.8 / CutMix 1.0, crops of scale 0.08–1, warm-up 5% of the steps.
    pub fn mae(
        model: ClassifierConfig,
        normalization: Normalization,
        batch_size: usize,
        total_steps: u64,
    ) -> FinetuneConfig {
        let normalization = normalization.for_channels(model.encoder.in_chans());
        FinetuneConfig {
            normalization,
            model,
            batch_size,
            base_lr: 1e-3,
            min_lr: 1e-6,
            weight_decay: 0.05,
            layer_decay: 0.75,
            betas: [0.9, 0.999],
            warmup_steps: total_steps / 20,
            total_steps,
            label_smoothing: 0.1,
            mixup: MixupConfig::mae(),
            augment: true,
            crop_scale: (0.08, 1.0),
            clip_grad: None,
            seed: 0,
            precision: MatmulPrecision::F32,
        }
    }

    /// Checks every option, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let positive = |what: &str, v: f32| {
            if crate::config::is_positive(v) {
                Ok(())
            } else {
                Err(config_err(format!("{what} must be positive, got {v}")))
            }
        };
        positive("base learning rate", self.base_lr)?;
        positive("layer decay", self.layer_decay)?;
        if self.layer_decay > 1.0 {
            return Err(config_err(format!("layer decay {} is above 1", self.layer_decay)));
        }
        if self.batch_size == 0 || self.total_steps == 0 {
            return Err(config_err("batch size and step count must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(config_err(format!(
                "label smoothing {} is outside [0, 1)",
                self.label_smoothing
            )));
        }
        let m = &self.mixup;
        if !(m.mixup_alpha >= 0.0 && m.cutmix_alpha >= 0.0 && m.mixup_alpha.is_finite() && m.cutmix_alpha.is_finite()) {
            return Err(config_err("mixup and cutmix alphas must be finite and ≥ 0"));
        }
        if !(0.0..=1.0).contains(&m.prob) || !(0.0..=1.0).contains(&m.switch_prob) {
            return Err(config_err("mixup probabilities must be in [0, 1]"));
        }
        let (lo, hi) = self.crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(config_err(format!(
                "crop scale ({lo}, {hi}) must satisfy 0 < low ≤ high ≤ 1"
            )));
        }
        Ok(())
    }

    /// The peak learning rate.
    pub fn peak_lr(&self) -> f32 {
        self.base_lr * self.batch_size as f32 / 256.0
    }

    /// The base learning rate of update `step` (0-based): warm-up, then cosine.
    pub fn lr_at(&self, step: u64) -> f32 {
        crate::train::warmup_cosine(step, self.warmup_steps, self.total_steps, self.peak_lr(), self.min_lr)
    }

    /// The training transform: crops and flips (if `augment`), normalised.
    pub fn train_transform(&self) -> Transform {
        Transform {
            augment: self.augment.then(|| crate::data::transform::Augment {
                scale: self.crop_scale,
                ..crate::data::transform::Augment::mae()
            }),
            ..self.eval_transform()
        }
    }

    /// The evaluation transform: resize and centre crop, normalised.
    pub fn eval_transform(&self) -> Transform {
        let e = &self.model.encoder;
        Transform {
            size: e.img_size(),
            channels: e.in_chans(),
            augment: None,
            norm: self.normalization.for_channels(e.in_chans()),
        }
    }
}

/// The optimizer's parameter groups: one per (layer, decays or not), the
/// learning-rate scale `layer_decay^(num_layers − layer)`.
pub fn param_groups(config: &FinetuneConfig, params: &[(String, Tensor)]) -> Vec<ParamGroup> {
    let top = config.model.num_layers() as i32;
    let mut groups: BTreeMap<(usize, bool), Vec<Tensor>> = BTreeMap::new();
    for (name, t) in params {
        let id = config.model.layer_id(name);
        groups.entry((id, decays(name, t))).or_default().push(t.clone());
    }
    groups
        .into_iter()
        .map(|((id, decay), params)| ParamGroup {
            params,
            weight_decay: if decay { config.weight_decay } else { 0.0 },
            lr_scale: config.layer_decay.powi(top - id as i32),
        })
        .collect()
}

/// What one fine-tuning step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneStats {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
}

/// A classifier, its optimizer and its random state.
pub struct Finetuner {
    pub config: FinetuneConfig,
    pub model: Classifier,
    pub optimizer: AdamW,
    pub step: u64,
    /// Draws mixing and stochastic depth; saved in checkpoints.
    pub rng: MimRng,
    pub(crate) params: Vec<(String, Tensor)>,
}

impl Finetuner {
    /// Around a classifier (fresh, or with a pre-trained encoder loaded).
    pub fn new(config: FinetuneConfig, model: Classifier) -> Result<Finetuner> {
        config.validate()?;
        if model.config != config.model {
            return Err(config_err("the classifier's configuration differs from the recipe's"));
        }
        let params = model.parameters();
        let optimizer = AdamW::new(
            param_groups(&config, &params),
            AdamWConfig {
                lr: config.lr_at(0),
                beta1: config.betas[0],
                beta2: config.betas[1],
                eps: 1e-8,
            },
        );
        let rng = MimRng::seed_from_u64(config.seed ^ 0x6669_6e65_7475_6e65);
        Ok(Finetuner {
            config,
            model,
            optimizer,
            step: 0,
            rng,
            params,
        })
    }

    /// A fresh classifier from the recipe's seed (the supervised baseline).
    pub fn from_scratch(config: FinetuneConfig) -> Result<Finetuner> {
        let mut init = MimRng::seed_from_u64(config.seed);
        let model = Classifier::new(config.model.clone(), &mut init)?;
        Self::new(config, model)
    }

    /// One update on `imgs (B, C, H, W)` with their labels: mixing, smoothed
    /// soft targets, cross-entropy, backward, clipping, AdamW.
    pub fn train_step(&mut self, imgs: &Tensor, labels: &[u32]) -> Result<FinetuneStats> {
        let shape: [usize; 4] = imgs
            .shape()
            .try_into()
            .map_err(|_| MimError::Input(format!("images of shape {:?} are not (B, C, H, W)", imgs.shape())))?;
        if shape[0] != self.config.batch_size || labels.len() != shape[0] {
            return Err(MimError::Input(format!(
                "a step takes {} images and labels, got {} images and {} labels",
                self.config.batch_size,
                shape[0],
                labels.len()
            )));
        }
        let k = self.config.model.num_classes;
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= k) {
            return Err(MimError::Input(format!("label {bad} is not below the {k} classes")));
        }
        self.model.encoder.check_images(imgs)?;
        tessera_tensor::with_matmul_precision(self.config.precision.kernel(), || {
            let lr = self.config.lr_at(self.step);
            self.optimizer.set_lr(lr);
            let mut data = imgs.to_vec();
            let (q, _) = mix_batch(
                &mut data,
                shape,
                labels,
                k,
                self.config.label_smoothing,
                &self.config.mixup,
                &mut self.rng,
            );
            let x = Tensor::new(data, &shape)?;
            let logits = self.model.forward(&x, true, &mut self.rng)?;
            let loss = logits.soft_cross_entropy(&q)?;
            let value = loss.item()?;
            if !value.is_finite() {
                return Err(MimError::NonFinite {
                    step: self.step + 1,
                    what: "loss",
                    value,
                });
            }
            let mut grads = GradStore::new();
            loss.backward_into(&mut grads)?;
            let norm = clip_checked(&mut grads, &self.params, self.config.clip_grad, self.step + 1)?;
            self.optimizer.step(&grads)?;
            self.step += 1;
            Ok(FinetuneStats {
                step: self.step,
                loss: value,
                lr,
                grad_norm: norm,
            })
        })
    }
}

/// Top-1, top-5, per-class accuracy and the confusion matrix of a
/// classifier on a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`, counts.
    pub confusion: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

impl EvalReport {
    /// Accuracy of each class (`None` for a class without test images).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[c] as f64 / n as f64)
            })
            .collect()
    }
}

/// Class probabilities `(B, K)` of images, without a graph (evaluation mode).
pub fn probabilities(model: &Classifier, imgs: &Tensor) -> Result<Vec<f32>> {
    let mut rng = MimRng::seed_from_u64(0);
    let logits = tessera_tensor::no_grad(|| model.forward(imgs, false, &mut rng))?;
    Ok(logits.softmax()?.to_vec())
}

/// Evaluates on the first `limit` images of a labelled set (eval transform:
/// resize and centre crop), in batches of `batch`.
pub fn evaluate(
    model: &Classifier,
    ds: &dyn Dataset,
    transform: &Transform,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let k = model.config.num_classes;
    let n = limit.unwrap_or(usize::MAX).min(ds.len());
    if n == 0 {
        return Err(MimError::Input(format!("{} has no images to evaluate", ds.name())));
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut top1, mut top5) = (0usize, 0usize);
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let (imgs, labels) = load_batch(ds, &idx, transform, 0)?;
        let probs = probabilities(model, &imgs)?;
        for (r, label) in labels.iter().enumerate() {
            let Some(y) = *label else {
                return Err(MimError::Input(format!(
                    "image {} of {} has no label (evaluation needs a labelled set)",
                    idx[r],
                    ds.name()
                )));
            };
            let y = y as usize;
            if y >= k {
                return Err(MimError::Input(format!(
                    "image {} of {} is of class {y}, but the classifier knows {k} classes",
                    idx[r],
                    ds.name()
                )));
            }
            let row = &probs[r * k..(r + 1) * k];
            let ranked = top_k(row, 5);
            confusion[y][ranked[0]] += 1;
            top1 += (ranked[0] == y) as usize;
            top5 += ranked.contains(&y) as usize;
        }
        progress(idx[idx.len() - 1] + 1, n);
    }
    Ok(EvalReport {
        images: n,
        top1: top1 as f64 / n as f64,
        top5: top5 as f64 / n as f64,
        confusion,
        class_names: model.config.class_names.clone(),
    })
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

// ------------------------------------------------------------ checkpoints

impl Finetuner {
    /// Writes a checkpoint atomically: the classifier under MAE's names, the
    /// optimizer's moments, the step, the random state and the recipe.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = TensorFile::default();
        for (name, t) in self.model.named_tensors() {
            file.insert(name, &t);
        }
        let steps = store_optimizer(&mut file, &self.params, &self.optimizer);
        let meta = &mut file.metadata;
        meta.insert("format".into(), "pt".into());
        meta.insert("tessera.version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("tessera.finetune".into(), json(&self.config));
        meta.insert("tessera.step".into(), self.step.to_string());
        meta.insert("tessera.rng".into(), json(&self.rng));
        meta.insert("tessera.optimizer_steps".into(), json(&steps));
        file.save(path)
    }

    /// Continues a fine-tuning run from its checkpoint, on the exact
    /// trajectory of an uninterrupted one.
    pub fn resume(path: &Path) -> Result<Finetuner> {
        let file = TensorFile::load(path)?;
        let config: FinetuneConfig = parse_meta(&file, "tessera.finetune", path)?;
        let mut model = Classifier::new(config.model.clone(), &mut MimRng::seed_from_u64(0))?;
        load_tensors(&mut model, &file, path)?;
        let mut t = Finetuner::new(config, model)?;
        t.step = parse_meta(&file, "tessera.step", path)?;
        t.rng = parse_meta(&file, "tessera.rng", path)?;
        restore_optimizer(&file, path, &t.params, &mut t.optimizer)?;
        t.optimizer.set_lr(t.config.lr_at(t.step));
        Ok(t)
    }
}

/// Copies every tensor of `model` from `file`, refusing missing ones, other
/// shapes and non-finite values by name.
fn load_tensors(model: &mut Classifier, file: &TensorFile, path: &Path) -> Result<()> {
    let ckpt = |msg: String| MimError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    for (name, t) in model.named_tensors() {
        let stored = file.get(&name, path)?;
        if stored.shape != t.shape() {
            return Err(ckpt(format!(
                "tensor '{name}' has shape {:?} in the file but {:?} in this classifier",
                stored.shape,
                t.shape()
            )));
        }
        if stored.data.iter().any(|v| !v.is_finite()) {
            return Err(ckpt(format!("tensor '{name}' holds a non-finite value")));
        }
        t.set_data(&stored.data)?;
    }
    Ok(())
}

/// Loads a classifier for evaluation: a Tessera fine-tuning checkpoint, or
/// an official MAE fine-tuned `state_dict` (`head.weight (K, D)`, `fc_norm`
/// with global pooling; the encoder read off the shapes as for pre-training
/// files, heads from `hints`), whose classes are then named `0…K−1`.
pub fn load_classifier(path: &Path, hints: &crate::official::ModelHints) -> Result<Classifier> {
    let file = TensorFile::load(path)?;
    let config = if file.metadata.contains_key("tessera.finetune") {
        parse_meta::<FinetuneConfig>(&file, "tessera.finetune", path)?.model
    } else if file.metadata.contains_key("tessera.config") {
        return Err(MimError::Checkpoint {
            path: path.to_path_buf(),
            msg: "is a pre-training checkpoint; fine-tune it first (tessera finetune --checkpoint …)".into(),
        });
    } else {
        let head = file.get("head.weight", path).map_err(|_| MimError::Checkpoint {
            path: path.to_path_buf(),
            msg: "has no classifier head ('head.weight'): not a fine-tuned checkpoint".into(),
        })?;
        let k = head.shape.first().copied().unwrap_or(0);
        let mut enc = crate::official::infer_config(&file, path, hints, false)?.encoder;
        let pool = if file.tensors.contains_key("fc_norm.weight") {
            ClassifierPool::Mean
        } else {
            ClassifierPool::Cls
        };
        if let EncoderConfig::Vit(v) = &mut enc {
            v.drop_path = 0.0;
        }
        let names = (0..k).map(|i| i.to_string()).collect();
        ClassifierConfig::new(enc, names, pool, 0.0)?
    };
    let mut model = Classifier::new(config, &mut MimRng::seed_from_u64(0))?;
    load_tensors(&mut model, &file, path)?;
    Ok(model)
}

// ------------------------------------------------------------ the run

/// What a fine-tuning run reports as it goes; `()` observes nothing.
pub trait FinetuneObserver {
    /// Before the first step: (start step, total steps, steps per epoch).
    fn started(&mut self, _start: u64, _total: u64, _steps_per_epoch: usize) {}
    fn step(&mut self, _stats: &FinetuneStats, _images_per_s: f64) {}
    /// After each epoch's evaluation.
    fn evaluated(&mut self, _epoch: u64, _report: &EvalReport) {}
    fn checkpoint(&mut self, _path: &Path, _step: u64) {}
}

impl FinetuneObserver for () {}

/// How a fine-tuning run ended.
#[derive(Clone, Debug)]
pub struct FinetuneEnd {
    pub last: Option<FinetuneStats>,
    /// The evaluation after the last epoch (or at the end).
    pub report: Option<EvalReport>,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

/// A fine-tuning run: a [`Finetuner`], labelled training and validation
/// sets, and its output folder (`checkpoint.safetensors`, `metrics.jsonl`
/// with a line per step and one `val_top1` line per epoch, `config.json`).
pub struct FinetuneRun<'a> {
    pub tuner: Finetuner,
    train: &'a dyn Dataset,
    val: &'a dyn Dataset,
    options: RunOptions,
    /// Evaluate on at most this many validation images each epoch.
    pub val_limit: Option<usize>,
}

/// Refuses a data set without labels or with another class count.
pub fn check_labelled(ds: &dyn Dataset, classes: usize) -> Result<()> {
    let names = ds.class_names();
    if names.is_empty() || ds.label(0).is_none() {
        return Err(MimError::Input(format!(
            "{} has no labels: fine-tuning and evaluation need a labelled data set",
            ds.name()
        )));
    }
    if names.len() != classes {
        return Err(MimError::Input(format!(
            "{} has {} classes, but the classifier has {classes}",
            ds.name(),
            names.len()
        )));
    }
    Ok(())
}

impl<'a> FinetuneRun<'a> {
    /// A fresh run of `tuner` (or, with `options.resume`, the run saved in
    /// `options.out`, whose recipe must equal `tuner`'s but for its length).
    pub fn new(tuner: Finetuner, train: &'a dyn Dataset, val: &'a dyn Dataset, options: RunOptions) -> Result<Self> {
        let k = tuner.config.model.num_classes;
        check_labelled(train, k)?;
        check_labelled(val, k)?;
        check_run_start(&options, train, tuner.config.batch_size)?;
        let ckpt = options.checkpoint();
        let tuner = if options.resume && ckpt.exists() {
            let mut old = Finetuner::resume(&ckpt)?;
            let mut want = tuner.config.clone();
            want.total_steps = old.config.total_steps;
            want.warmup_steps = old.config.warmup_steps;
            if want != old.config {
                return Err(MimError::Checkpoint {
                    path: ckpt,
                    msg: "was written by another fine-tuning recipe or model than the one requested".into(),
                });
            }
            if tuner.config.total_steps < old.step {
                return Err(MimError::Input(format!(
                    "{} is at step {}; {} steps would end before it",
                    ckpt.display(),
                    old.step,
                    tuner.config.total_steps
                )));
            }
            old.config.total_steps = tuner.config.total_steps;
            old
        } else {
            tuner
        };
        Ok(FinetuneRun {
            tuner,
            train,
            val,
            options,
            val_limit: None,
        })
    }

    /// Trains to the configured length, evaluating after every epoch.
    pub fn run(&mut self, observer: &mut dyn FinetuneObserver) -> Result<FinetuneEnd> {
        let opts = self.options.clone();
        let config = self.tuner.config.clone();
        let ckpt = opts.checkpoint();
        let (train, val) = (self.train, self.val);
        std::fs::create_dir_all(&opts.out).map_err(|err| io_err(&opts.out, err))?;
        crate::checkpoint::remove_stale_temporaries(&opts.out);
        let metrics_path = opts.out.join("metrics.jsonl");
        if opts.overwrite && !opts.resume && metrics_path.exists() {
            std::fs::remove_file(&metrics_path).map_err(|err| io_err(&metrics_path, err))?;
        }
        let start = self.tuner.step;
        truncate_metrics(&metrics_path, start)?;
        let text = serde_json::to_string_pretty(&config).expect("a recipe serialises to JSON");
        crate::checkpoint::write_atomically(&opts.out.join("config.json"), text.as_bytes())?;
        let (train_t, eval_t) = (config.train_transform(), config.eval_transform());
        let sampler = EpochSampler {
            n: train.len(),
            batch: config.batch_size,
            seed: config.seed,
        };
        let spe = sampler.steps_per_epoch() as u64;
        let mut metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|err| io_err(&metrics_path, err))?;
        observer.started(start, config.total_steps, spe as usize);
        let end = opts
            .stop_after
            .map_or(config.total_steps, |s| s.clamp(start, config.total_steps));
        let (mut last, mut report, mut interrupted) = (None, None, false);
        let (mut rate, t0, mut last_ckpt) = (None::<f64>, Instant::now(), Instant::now());
        let val_limit = self.val_limit;
        let tuner = &mut self.tuner;
        // Each epoch ends with the validation accuracy, a metrics line of its own.
        let evaluate_now =
            |tuner: &Finetuner, epoch: u64, step: u64, metrics: &mut std::fs::File| -> Result<EvalReport> {
                let r = evaluate(
                    &tuner.model,
                    val,
                    &eval_t,
                    config.batch_size.max(64),
                    val_limit,
                    &mut |_, _| {},
                )?;
                let line = serde_json::json!({"step": step, "epoch": epoch, "val_top1": r.top1, "val_top5": r.top5});
                writeln!(metrics, "{line}").map_err(|err| io_err(&metrics_path, err))?;
                Ok(r)
            };
        for step in start..end {
            let epoch = step / spe;
            let aug_seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
            let tick = Instant::now();
            let (imgs, labels) = load_batch(train, &sampler.indices(step), &train_t, aug_seed)?;
            let labels: Vec<u32> = labels
                .into_iter()
                .map(|l| l.ok_or_else(|| MimError::Input(format!("{} has an unlabelled image", train.name()))))
                .collect::<Result<_>>()?;
            let stats = tuner.train_step(&imgs, &labels)?;
            let ips = config.batch_size as f64 / tick.elapsed().as_secs_f64();
            let r = rate.map_or(ips, |r| 0.9 * r + 0.1 * ips);
            rate = Some(r);
            observer.step(&stats, r);
            let line = serde_json::json!({
                "step": stats.step,
                "epoch": step as f64 / spe as f64,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "images_per_s": ips,
                "time_s": t0.elapsed().as_secs_f64(),
            });
            writeln!(metrics, "{line}").map_err(|err| io_err(&metrics_path, err))?;
            if stats.step.is_multiple_of(spe) || stats.step == config.total_steps {
                let epoch = stats.step.div_ceil(spe);
                let r = evaluate_now(tuner, epoch, stats.step, &mut metrics)?;
                observer.evaluated(epoch, &r);
                report = Some(r);
            }
            let stop_now = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            let overdue = opts.ckpt_interval.is_some_and(|d| last_ckpt.elapsed() >= d);
            if stats.step.is_multiple_of(opts.ckpt_every.max(1))
                || stats.step.is_multiple_of(spe)
                || stats.step == end
                || stop_now
                || overdue
            {
                last_ckpt = Instant::now();
                metrics.sync_data().map_err(|err| io_err(&metrics_path, err))?;
                tuner.save(&ckpt)?;
                observer.checkpoint(&ckpt, stats.step);
            }
            last = Some(stats);
            if stop_now && stats.step < end {
                interrupted = true;
                break;
            }
        }
        Ok(FinetuneEnd {
            last,
            report,
            checkpoint: ckpt,
            interrupted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VitConfig;

    fn vit_classifier(depth: usize, pool: ClassifierPool) -> ClassifierConfig {
        let mut e = VitConfig::preset("vit-tiny", [16, 16], 4, 3).unwrap();
        (e.embed_dim, e.depth, e.num_heads) = (16, depth, 2);
        let names = (0..3).map(|i| format!("c{i}")).collect();
        ClassifierConfig::new(e.into(), names, pool, 0.1).unwrap()
    }

    /// MAE's `param_groups_lrd` on a 3-block ViT with decay 0.5: layer 0
    /// (embeddings) at 0.5⁴, block i at 0.5^(3 − i), head and fc_norm at 1;
    /// no weight decay on biases, norms, tokens, positions.
    #[test]
    fn layer_decay_follows_a_hand_computed_table() {
        let cfg = vit_classifier(3, ClassifierPool::Mean);
        let mut recipe = FinetuneConfig::mae(cfg.clone(), Normalization::uniform(0.0, 1.0, 3), 4, 10);
        recipe.layer_decay = 0.5;
        let model = Classifier::new(cfg.clone(), &mut MimRng::seed_from_u64(0)).unwrap();
        let params = model.parameters();
        let table = [
            ("cls_token", 0, 0.0625, false),
            ("patch_embed.proj.weight", 0, 0.0625, true),
            ("patch_embed.proj.bias", 0, 0.0625, false),
            ("blocks.0.attn.qkv.weight", 1, 0.125, true),
            ("blocks.0.norm1.weight", 1, 0.125, false),
            ("blocks.1.mlp.fc1.weight", 2, 0.25, true),
            ("blocks.2.attn.proj.bias", 3, 0.5, false),
            ("blocks.2.mlp.fc2.weight", 3, 0.5, true),
            ("fc_norm.weight", 4, 1.0, false),
            ("head.weight", 4, 1.0, true),
            ("head.bias", 4, 1.0, false),
        ];
        let groups = param_groups(&recipe, &params);
        for (name, id, scale, decayed) in table {
            assert_eq!(cfg.layer_id(name), id, "{name}");
            let t = &params
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name}"))
                .1;
            let g = groups
                .iter()
                .find(|g| g.params.iter().any(|p| p.id() == t.id()))
                .unwrap();
            assert_eq!(g.lr_scale, scale, "{name}");
            assert_eq!(g.weight_decay, if decayed { 0.05 } else { 0.0 }, "{name}");
        }
        // The fixed sin-cos table is no parameter; every parameter is in one group.
        let grouped: usize = groups.iter().map(|g| g.params.len()).sum();
        assert_eq!(grouped, params.len());
        // No final norm under mean pooling (MAE's global_pool deletes it).
        assert!(!params.iter().any(|(n, _)| n.starts_with("norm.")));
    }

    /// Swin: blocks numbered across stages, merging with the stage's last
    /// block, the embedding 0, the final norm and head on top.
    #[test]
    fn swin_layer_ids() {
        let s = crate::config::SwinConfig::preset("swin-tiny", [224, 224], 3).unwrap();
        let names = (0..5).map(|i| i.to_string()).collect();
        let cfg = ClassifierConfig::new(s.into(), names, ClassifierPool::Mean, 0.1).unwrap();
        assert_eq!(cfg.num_layers(), 13);
        for (name, id) in [
            ("patch_embed.norm.weight", 0),
            ("layers.0.blocks.0.attn.qkv.weight", 1),
            ("layers.0.blocks.1.norm1.weight", 2),
            ("layers.0.downsample.reduction.weight", 2),
            ("layers.2.blocks.0.mlp.fc1.weight", 5),
            ("layers.2.blocks.5.mlp.fc1.weight", 10),
            ("layers.2.downsample.norm.weight", 10),
            ("layers.3.blocks.1.attn.relative_position_bias_table", 12),
            ("norm.weight", 13),
            ("head.weight", 13),
        ] {
            assert_eq!(cfg.layer_id(name), id, "{name}");
        }
        let bad = ClassifierConfig::new(
            crate::config::SwinConfig::preset("swin-mini", [32, 32], 3)
                .unwrap()
                .into(),
            vec!["a".into(), "b".into()],
            ClassifierPool::Cls,
            0.0,
        );
        assert!(bad.unwrap_err().to_string().contains("no [CLS]"));
    }

    /// Label-smoothed cross-entropy as soft targets equals the direct
    /// formula `(1 − s)·(−log p_y) + s·mean_k(−log p_k)`.
    #[test]
    fn label_smoothing_matches_the_direct_formula() {
        let (b, k, s) = (3, 5, 0.1f32);
        let logits: Vec<f32> = (0..b * k).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4).collect();
        let labels = [4u32, 0, 2];
        let t = Tensor::new(logits.clone(), &[b, k]).unwrap();
        let got = t
            .soft_cross_entropy(&smooth_targets(&labels, k, s))
            .unwrap()
            .item()
            .unwrap();
        let mut want = 0f64;
        for r in 0..b {
            let row = &logits[r * k..(r + 1) * k];
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            let nll = lse - row[labels[r] as usize] as f64;
            let smooth = row.iter().map(|&v| lse - v as f64).sum::<f64>() / k as f64;
            want += (1.0 - s as f64) * nll + s as f64 * smooth;
        }
        want /= b as f64;
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// Mixup blends image i with image B−1−i by lam and mixes the smoothed
    /// targets by the same lam; CutMix pastes the partner's box and its lam is
    /// the area left (every pixel checked); off, nothing changes.
    #[test]
    fn mixup_and_cutmix_mix_labels_as_pixels() {
        let shape = [4, 2, 6, 5];
        let n = shape.iter().product::<usize>();
        let per = n / 4;
        let imgs: Vec<f32> = (0..n).map(|i| (i / per) as f32 * 10.0 + (i % 7) as f32).collect();
        let labels = [0u32, 1, 2, 1];
        let k = 3;
        let own = smooth_targets(&labels, k, 0.1);
        let check_targets = |q: &[f32], lam: f32| {
            for r in 0..4 {
                for j in 0..k {
                    let want = lam * own[r * k + j] + (1.0 - lam) * own[(3 - r) * k + j];
                    assert!((q[r * k + j] - want).abs() < 1e-6);
                }
                assert!((q[r * k..(r + 1) * k].iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        };
        let mut rng = MimRng::seed_from_u64(3);
        let only = |mixup_alpha, cutmix_alpha| MixupConfig {
            mixup_alpha,
            cutmix_alpha,
            prob: 1.0,
            switch_prob: 0.5,
        };
        for _ in 0..5 {
            let mut x = imgs.clone();
            let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &only(0.8, 0.0), &mut rng);
            let Mixed::Mixup { lam } = m else { panic!("{m:?}") };
            assert!((0.0..=1.0).contains(&lam));
            for i in 0..n {
                let partner = imgs[(3 - i / per) * per + i % per];
                assert!((x[i] - (lam * imgs[i] + (1.0 - lam) * partner)).abs() < 1e-4);
            }
            check_targets(&q, lam);

            let mut x = imgs.clone();
            let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &only(0.0, 1.0), &mut rng);
            let Mixed::CutMix {
                lam,
                top,
                bottom,
                left,
                right,
            } = m
            else {
                panic!("{m:?}")
            };
            let inside = |y: usize, xx: usize| (top..bottom).contains(&y) && (left..right).contains(&xx);
            let mut pasted = 0;
            for i in 0..n {
                let (img, rest) = (i / per, i % per);
                let (y, xx) = ((rest % 30) / 5, rest % 5);
                let want = if inside(y, xx) {
                    imgs[(3 - img) * per + rest]
                } else {
                    imgs[i]
                };
                assert_eq!(x[i], want);
                pasted += inside(y, xx) as usize;
            }
            assert!((lam - (1.0 - pasted as f32 / n as f32)).abs() < 1e-6);
            check_targets(&q, lam);
        }
        let mut x = imgs.clone();
        let (q, m) = mix_batch(&mut x, shape, &labels, k, 0.1, &MixupConfig::off(), &mut rng);
        assert_eq!((m, x, q), (Mixed::None, imgs, own));
    }

    /// Beta(α, α) draws have the right mean (½) and variance (1 / (4(2α+1))).
    #[test]
    fn beta_draws_have_the_right_moments() {
        let mut rng = MimRng::seed_from_u64(9);
        for alpha in [0.8, 1.0, 2.0] {
            let v: Vec<f64> = (0..20000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            assert!((mean - 0.5).abs() < 0.01, "α {alpha}: mean {mean}");
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((var - want).abs() < 0.1 * want, "α {alpha}: var {var} vs {want}");
        }
    }

    /// Stochastic depth: in evaluation the classifier is deterministic (drop
    /// path is the identity); in training the per-image factors are 0 or
    /// 1/(1 − rate), 1 on average.
    #[test]
    fn drop_path_is_identity_in_eval_and_unbiased_in_train() {
        let cfg = vit_classifier(2, ClassifierPool::Cls);
        let model = Classifier::new(cfg, &mut MimRng::seed_from_u64(0)).unwrap();
        let imgs = Tensor::new(
            tessera_tensor::init::normal(2 * 3 * 16 * 16, 0.0, 1.0, &mut MimRng::seed_from_u64(1)),
            &[2, 3, 16, 16],
        )
        .unwrap();
        let a = model
            .forward(&imgs, false, &mut MimRng::seed_from_u64(1))
            .unwrap()
            .to_vec();
        let b = model
            .forward(&imgs, false, &mut MimRng::seed_from_u64(2))
            .unwrap()
            .to_vec();
        assert_eq!(a, b);
        let mut rng = MimRng::seed_from_u64(5);
        let rate = 0.3;
        let s = crate::layers::drop_path_scale(40000, rate, &mut rng).unwrap().to_vec();
        assert!(s.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - rate)).abs() < 1e-6));
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean factor {mean}");
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5, 0.0], 3), vec![1, 3, 2]);
    }
}
