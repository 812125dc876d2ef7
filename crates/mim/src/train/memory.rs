//! What a model, a training run or a picture will take in memory, estimated
//! from the configuration before anything is allocated, and checked against
//! what the machine has: absurd options (a 100 000-pixel image, a
//! million-wide model) are one-line errors instead of an abort in the
//! allocator minutes later.
//!
//! The estimate of a training step counts what the step holds at its peak
//! (the start of backward): the model's state, its gradients and AdamW's two
//! moments; the activations each block saves for backward, and a quarter
//! more for the gradients in flight and the buffers the engine keeps for
//! reuse; the attention kernels' score workspace (one `N × N` pair per
//! thread, and with a relative position bias its gradient's `dS` for every
//! image and head); the batch itself; and the process (binary, threads).
//! A test sweeps ViT and Swin at small and large images and several batches
//! (`tests/cli.rs`, `memory_estimates_track_the_measured_peak`) and holds
//! the estimate to 0.75–1.5× of the peak resident set `tessera bench`
//! measures.

use crate::config::{EncoderConfig, Method, ModelConfig, RelPosBias};
use crate::error::{MimError, Result};
use crate::model::masking::hidden_count;
use crate::train::pretrain::TrainConfig;

const F32: u128 = 4;

/// The process around a step: binary, thread stacks, allocator.
const PROCESS_BYTES: u128 = 16 << 20;

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

/// A Swin block also keeps its windowed copies: the shifted tokens, their
/// windows and the windows merged back, both ways (4 more of width `d`).
fn swin_block_values_per_token(d: u128, h: u128) -> u128 {
    block_values_per_token(d, h) + 4 * d
}

/// Bytes of the attention's score workspace for `groups` attentions of `n`
/// tokens and `heads` heads: two `n × n` buffers per thread in backward, and
/// with a bias whose gradient is wanted, `dS` of every group and head.
fn attention_bytes(groups: u128, heads: u128, n: u128, bias_grad: bool) -> u128 {
    let threads = rayon::current_num_threads() as u128;
    let per_thread = 2 * n * n * F32 * threads.min(groups * heads);
    per_thread + if bias_grad { groups * heads * n * n * F32 } else { 0 }
}

/// Bytes a training step of `config` needs at its peak (see the module
/// documentation for what is counted).
pub fn training_bytes(config: &TrainConfig) -> u128 {
    let m = &config.model;
    let e = &m.encoder;
    let l = e.num_patches() as u128;
    let batch = config.batch_size as u128;
    let ratio = config.masking.ratio().unwrap_or(0.0);
    let visible = (e.num_patches() - hidden_count(e.num_patches(), ratio)) as u128;
    let (mut activations, mut workspace) = match e {
        EncoderConfig::Vit(v) => {
            let enc_tokens = 1 + match m.method {
                Method::Mae { .. } => visible,
                Method::SimMim => l,
            };
            let (d, h) = (v.embed_dim as u128, v.mlp_hidden() as u128);
            let heads = v.num_heads as u128;
            let bias = v.rel_pos_bias != RelPosBias::None;
            (
                batch * enc_tokens * v.depth as u128 * block_values_per_token(d, h),
                attention_bytes(batch, heads, enc_tokens, bias),
            )
        }
        EncoderConfig::Swin(s) => {
            let w2 = (s.window * s.window) as u128;
            let mut act = 0;
            let mut work = 0;
            for i in 0..s.depths.len() {
                let [gh, gw] = s.stage_grid(i);
                let tokens = (gh * gw) as u128;
                let per = swin_block_values_per_token(s.stage_dim(i) as u128, s.mlp_hidden(i) as u128);
                act += batch * tokens * s.depths[i] as u128 * per;
                // Windows of at most window² tokens (the whole grid when smaller).
                let n = w2.min(tokens);
                let groups = batch * tokens.div_ceil(n);
                work = work.max(attention_bytes(groups, s.num_heads[i] as u128, n, true));
            }
            (act, work)
        }
    };
    if let Method::Mae { decoder } = &m.method {
        let (dd, hd) = (decoder.embed_dim as u128, decoder.mlp_hidden() as u128);
        activations += batch * (1 + l) * decoder.depth as u128 * block_values_per_token(dd, hd);
        workspace = workspace.max(attention_bytes(batch, decoder.num_heads as u128, 1 + l, false));
    }
    let [ih, iw] = e.img_size();
    let images = batch * (e.in_chans() * ih * iw) as u128 * F32;
    // Prediction, target and their gradient for every patch: three images' worth.
    let head = 3 * images;
    4 * model_bytes(m) + activations * F32 * 5 / 4 + workspace + images + head + PROCESS_BYTES
}

/// Bytes a fine-tuning step of `config` needs at its peak: the encoder's
/// on every token, as [`training_bytes`] counts a SimMIM step of the same
/// encoder and batch (its pixel head stands in for the classifier's).
pub fn finetune_bytes(config: &crate::train::recipe::FinetuneConfig) -> u128 {
    let model = ModelConfig {
        encoder: config.model.encoder.clone(),
        method: Method::SimMim,
        target: crate::config::TargetConfig::Pixels {
            loss: crate::config::PixelLoss::L1,
            norm_pix: false,
        },
    };
    training_bytes(&TrainConfig::mae(model, config.batch_size, 1))
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
