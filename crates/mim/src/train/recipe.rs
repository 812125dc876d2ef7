//! The fine-tuning recipe: mixup and CutMix, label smoothing, the
//! hyper-parameters, and the optimizer's parameter groups.

use crate::data::Normalization;
use crate::data::transform::Transform;
use crate::error::{Result, config_err};
use crate::model::classifier::ClassifierConfig;
use crate::train::pretrain::{MatmulPrecision, decays};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_tensor::Tensor;
use tessera_tensor::optim::ParamGroup;

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
        crate::train::pretrain::warmup_cosine(step, self.warmup_steps, self.total_steps, self.peak_lr(), self.min_lr)
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
