//! What a model, a training run or a picture will take in memory, estimated
//! from the configuration before anything is allocated, and checked against
//! what the machine has: absurd options (a 100 000-pixel image, a
//! million-wide model) are one-line errors instead of an abort in the
//! allocator minutes later.
//!
//! The estimates count the big buffers only (so they err low): the model's
//! state; for training, its gradients and AdamW's two moments, and the
//! activations each block saves for backward.

use crate::config::{EncoderConfig, Method, ModelConfig};
use crate::error::{MimError, Result};
use crate::model::masking::hidden_count;
use crate::train::pretrain::TrainConfig;

const F32: u128 = 4;

/// Bytes of the model's state.
pub fn model_bytes(model: &ModelConfig) -> u128 {
    model.state_len() * F32
}

/// Values one pre-norm block saves per token for backward (LayerNorm inputs,
/// qkv, attention output, projections, the MLP's hidden pre-activation and
/// activation, residuals) at width `d`, MLP width `h`.
fn block_values_per_token(d: u128, h: u128) -> u128 {
    10 * d + 2 * h
}

/// Bytes a training step of `config` needs at least: state, gradients and
/// AdamW moments, plus the activations of every block for the whole batch.
pub fn training_bytes(config: &TrainConfig) -> u128 {
    let m = &config.model;
    let e = &m.encoder;
    let l = e.num_patches() as u128;
    let batch = config.batch_size as u128;
    let ratio = config.masking.ratio().unwrap_or(0.0);
    let visible = (e.num_patches() - hidden_count(e.num_patches(), ratio)) as u128;
    let mut activations = match e {
        EncoderConfig::Vit(v) => {
            let enc_tokens = 1 + match m.method {
                Method::Mae { .. } => visible,
                Method::SimMim => l,
            };
            let (d, h) = (v.embed_dim as u128, v.mlp_hidden() as u128);
            batch * enc_tokens * v.depth as u128 * block_values_per_token(d, h)
        }
        EncoderConfig::Swin(s) => (0..s.depths.len())
            .map(|i| {
                let [gh, gw] = s.stage_grid(i);
                let per = block_values_per_token(s.stage_dim(i) as u128, s.mlp_hidden(i) as u128);
                batch * (gh * gw) as u128 * s.depths[i] as u128 * per
            })
            .sum(),
    };
    if let Method::Mae { decoder } = &m.method {
        let (dd, hd) = (decoder.embed_dim as u128, decoder.mlp_hidden() as u128);
        activations += batch * (1 + l) * decoder.depth as u128 * block_values_per_token(dd, hd);
    }
    4 * model_bytes(m) + activations * F32
}

/// Bytes this process may take: `limit` if given, else the memory the
/// system reports available (`MemAvailable` in `/proc/meminfo`); `None`
/// where neither is known (then nothing is refused).
pub fn available_bytes(limit: Option<u64>) -> Option<u128> {
    if let Some(l) = limit {
        return Some(l as u128);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `what` if it needs more than `limit` (or the available memory),
/// naming the need, the limit and the options to change.
pub fn check(what: &str, needed: u128, limit: Option<u64>, change: &str) -> Result<()> {
    let Some(have) = available_bytes(limit) else {
        return Ok(());
    };
    if needed <= have {
        return Ok(());
    }
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    Err(MimError::Input(format!(
        "{what} needs at least {:.1} GiB of memory, more than the {:.1} GiB {}; {change}",
        gib(needed),
        gib(have),
        if limit.is_some() {
            "allowed (`RunOptions::max_memory`)"
        } else {
            "available"
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DecoderConfig, PixelLoss, TargetConfig, VitConfig};

    fn mae(img: usize, dim: usize) -> TrainConfig {
        let mut e = VitConfig::preset("vit-tiny", [img, img], 16, 3).unwrap();
        e.embed_dim = dim;
        e.num_heads = 1;
        let model = ModelConfig {
            encoder: e.into(),
            method: Method::Mae {
                decoder: DecoderConfig::mae_default(),
            },
            target: TargetConfig::Pixels {
                loss: PixelLoss::Mse,
                norm_pix: true,
            },
        };
        TrainConfig::mae(model, 8, 10)
    }

    #[test]
    fn estimates_grow_with_the_options_and_refuse_absurd_ones() {
        let small = training_bytes(&mae(224, 192));
        let activations = |c: &TrainConfig| training_bytes(c) - 4 * model_bytes(&c.model);
        assert!(activations(&mae(224, 192)) > 0);
        assert!(
            activations(&mae(448, 192)) > 3 * activations(&mae(224, 192)),
            "four times the patches, about four times the activations"
        );
        assert!(check("run", small, Some(1 << 40), "x").is_ok());
        let e = check(
            "run",
            training_bytes(&mae(224, 1 << 20)),
            Some(1 << 40),
            "reduce `VitConfig::embed_dim`",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("GiB") && e.contains("`RunOptions::max_memory`") && e.contains("reduce `VitConfig::embed_dim`"),
            "{e}"
        );
    }
}
