//! Training recipes: the precision of products, the learning-rate schedule,
//! which parameters decay, AdamW and clipping (shared by pre-training and
//! fine-tuning), and the fine-tuning recipe: mixup and CutMix, label
//! smoothing, the hyper-parameters, and the optimizer's parameter groups.
//!
//! The fine-tuning recipe is MAE's `main_finetune.py`
//! ([`FinetuneConfig::mae`]): AdamW (β = 0.9, 0.999), layer-wise
//! learning-rate decay 0.75, weight decay 0.05 except norms, biases, tokens
//! and tables, linear warm-up then cosine to 1e-6, stochastic depth 0.1,
//! label smoothing 0.1, mixup 0.8 and cutmix 1.0 (switchable), random resized
//! crops (scale 0.08–1) and flips. RandAugment and random erasing are not
//! implemented.
//!
//! **Layer-wise decay.** Layer `i` of a classifier of `n` blocks (numbered
//! as [`crate::model::classifier`] says: 0 the embedding, n + 1 the head)
//! learns at `lr · decay^(n + 1 − i)`. The head learns at the full rate, the
//! embedding at `0.75^(n+1)` of it (3% for ViT-B): the lower layers hold the
//! most general features, which pre-training made good, and a large update
//! would destroy them before the randomly initialised head has learnt to use
//! them.

use crate::config::is_positive;
use crate::data::Normalization;
use crate::data::loader::EpochSampler;
use crate::data::transform::{Augment, Transform};
use crate::error::{MimError, Result, config_err};
use crate::model::classifier::ClassifierConfig;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_tensor::optim::{AdamW, AdamWConfig, ParamGroup, clip_grad_norm, grad_norm};
use tessera_tensor::{GradStore, Precision, Tensor};

/// Serde for the arithmetic of matrix products in a saved configuration:
/// the engine's own [`Precision`] as `"f32"` or `"bf16"` (f32 where a
/// configuration predates the field). With bf16, products take bfloat16
/// inputs and accumulate in f32 (Intel AMX, or AVX512-BF16); weights,
/// activations, gradients and AdamW stay f32.
pub(crate) mod precision_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use tessera_tensor::Precision;

    pub fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        match String::deserialize(d)?.as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(D::Error::unknown_variant(other, &["f32", "bf16"])),
        }
    }

    /// A configuration without the field: MAE's f32.
    pub fn f32() -> Precision {
        Precision::F32
    }
}

/// A length in optimizer steps, or in epochs over the training set (an
/// epoch is `⌊images / batch⌋` steps, as [`EpochSampler`] draws them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    Steps(u64),
    Epochs(f64),
}

/// The peak learning rate as a recipe states it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LearningRate {
    /// Per 256 images (MAE's `blr`): the peak is `blr · batch / 256`.
    Per256(f32),
    /// The peak itself.
    Peak(f32),
}

/// How a run is scheduled, as a user states it: its length, its warm-up
/// (default: 5% of the run, MAE's 5 of 100 epochs) and its learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub length: Length,
    pub warmup: Option<Length>,
    pub lr: LearningRate,
}

/// A [`Schedule`] in steps, for one data set and batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steps {
    pub total: u64,
    pub warmup: u64,
    /// The rate per 256 images (what the configurations store).
    pub base_lr: f32,
}

impl Schedule {
    /// The schedule in steps for `images` training images in batches of
    /// `batch`: epochs times steps per epoch, rounded (at least one step);
    /// an absolute rate turned into a rate per 256 images.
    pub fn steps(&self, images: usize, batch: usize) -> Steps {
        let spe = EpochSampler {
            n: images,
            batch,
            seed: 0,
        }
        .steps_per_epoch() as f64;
        let total = match self.length {
            Length::Steps(s) => s,
            Length::Epochs(e) => (e * spe).round().max(1.0) as u64,
        };
        let warmup = match self.warmup {
            Some(Length::Steps(s)) => s,
            Some(Length::Epochs(e)) => (e * spe).round() as u64,
            None => total / 20,
        };
        let base_lr = match self.lr {
            LearningRate::Per256(blr) => blr,
            LearningRate::Peak(lr) => lr * 256.0 / batch as f32,
        };
        Steps { total, warmup, base_lr }
    }
}

/// MAE's schedule (`lr_sched.adjust_learning_rate`, per step): the rate of
/// update `step` (0-based) rises linearly from 0 to `peak` over `warmup`
/// steps, then follows a half-cycle cosine to `min` at `total`.
pub fn warmup_cosine(step: u64, warmup: u64, total: u64, peak: f32, min: f32) -> f32 {
    let (peak, min) = (peak as f64, min as f64);
    let (s, w, t) = (step as f64, warmup as f64, total as f64);
    let lr = if s < w {
        peak * s / w
    } else {
        let progress = if t > w { ((s - w) / (t - w)).min(1.0) } else { 1.0 };
        min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    };
    lr as f32
}

/// MAE's rule: no weight decay on 1-D tensors (biases, norms, layer scales)
/// and on tokens and positional embeddings; nor, as BEiT and SimMIM, on
/// relative position bias tables.
pub fn decays(name: &str, t: &Tensor) -> bool {
    let skip = [
        "cls_token",
        "mask_token",
        "pos_embed",
        "decoder_pos_embed",
        "absolute_pos_embed",
    ];
    // The last part of the name (SimMIM's carry an `encoder.` prefix).
    let leaf = name.rsplit('.').next().unwrap_or(name);
    t.rank() > 1 && !name.ends_with(".bias") && leaf != "relative_position_bias_table" && !skip.contains(&leaf)
}

/// AdamW over `groups` at rate `lr` with `betas` and ε = 1e-8 (PyTorch's).
pub(crate) fn adamw(groups: Vec<ParamGroup>, lr: f32, betas: [f32; 2]) -> AdamW {
    AdamW::new(
        groups,
        AdamWConfig {
            lr,
            beta1: betas[0],
            beta2: betas[1],
            eps: 1e-8,
        },
    )
}

/// The global gradient norm of `params` (clipped to `clip` if given), or
/// an error naming update `step` if it is not finite (before any update).
pub(crate) fn clip_checked(
    grads: &mut GradStore,
    params: &[(String, Tensor)],
    clip: Option<f32>,
    step: u64,
) -> Result<f32> {
    let params: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let norm = match clip {
        Some(max) => clip_grad_norm(grads, &params, max),
        None => grad_norm(grads, &params),
    };
    if !norm.is_finite() {
        return Err(MimError::NonFinite {
            step,
            what: "gradient norm",
            value: norm,
        });
    }
    Ok(norm)
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
    /// Arithmetic of the matrix products.
    #[serde(default = "precision_serde::f32", with = "precision_serde")]
    pub precision: Precision,
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
            precision: Precision::F32,
        }
    }

    /// Checks every option, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let positive = |what: &str, v: f32| {
            if is_positive(v) {
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
        if !(self.min_lr >= 0.0 && self.min_lr <= self.peak_lr()) {
            return Err(config_err(format!(
                "the minimum learning rate {} must be in [0, the peak {}] (base {} · batch {} / 256)",
                self.min_lr,
                self.peak_lr(),
                self.base_lr,
                self.batch_size
            )));
        }
        let (n, c) = (&self.normalization, self.model.encoder.in_chans());
        if n.mean.len() != c || n.std.len() != c {
            return Err(config_err(format!(
                "normalisation has {} means and {} deviations for {c} channels",
                n.mean.len(),
                n.std.len()
            )));
        }
        if !n.mean.iter().all(|m| m.is_finite()) || !n.std.iter().all(|s| is_positive(*s)) {
            return Err(config_err(format!(
                "normalisation means must be finite and deviations positive, got {:?} and {:?}",
                n.mean, n.std
            )));
        }
        Ok(())
    }

    /// [`FinetuneConfig::mae`] on `images` training images, scheduled by
    /// `schedule`.
    pub fn scheduled(
        model: ClassifierConfig,
        normalization: Normalization,
        batch_size: usize,
        schedule: &Schedule,
        images: usize,
    ) -> FinetuneConfig {
        let s = schedule.steps(images, batch_size);
        FinetuneConfig {
            warmup_steps: s.warmup,
            base_lr: s.base_lr,
            ..FinetuneConfig::mae(model, normalization, batch_size, s.total)
        }
    }

    /// The peak learning rate.
    pub fn peak_lr(&self) -> f32 {
        self.base_lr * self.batch_size as f32 / 256.0
    }

    /// The base learning rate of update `step` (0-based): warm-up, then cosine.
    pub fn lr_at(&self, step: u64) -> f32 {
        warmup_cosine(step, self.warmup_steps, self.total_steps, self.peak_lr(), self.min_lr)
    }

    /// The training transform: crops and flips (if `augment`), normalised.
    pub fn train_transform(&self) -> Transform {
        self.eval_transform().augmented(self.augment.then(|| Augment {
            scale: self.crop_scale,
            ..Augment::mae()
        }))
    }

    /// The evaluation transform: resize and centre crop, normalised.
    pub fn eval_transform(&self) -> Transform {
        Transform::eval(&self.model.encoder, &self.normalization)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pool;
    use crate::model::classifier::{Classifier, vit_classifier};
    use crate::rng::MimRng;
    use rand::SeedableRng;

    /// MAE's `param_groups_lrd` on a 3-block ViT with decay 0.5: layer 0
    /// (embeddings) at 0.5⁴, block i at 0.5^(3 − i), head and fc_norm at 1;
    /// no weight decay on biases, norms, tokens, positions.
    #[test]
    fn layer_decay_follows_a_hand_computed_table() {
        let cfg = vit_classifier(3, Pool::Mean);
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

    /// Swin's absolute positions (`ape`) are not weight-decayed, under
    /// SimMIM's `encoder.` prefix or bare, like MAE's `pos_embed`.
    #[test]
    fn absolute_position_tables_do_not_decay() {
        let table = Tensor::new(vec![0.0; 256 * 48], &[1, 256, 48]).unwrap();
        for name in ["encoder.absolute_pos_embed", "absolute_pos_embed", "pos_embed"] {
            assert!(!decays(name, &table), "{name}");
        }
        assert!(decays("encoder.layers.0.blocks.0.attn.qkv.weight", &table));
    }
}
