//! Tessera's checkpoints, and loading models from them.
//!
//! A checkpoint is a safetensors file ([`TensorFile`]) holding the model's tensors under MAE's `state_dict` names (so
//! `safetensors.torch.load_file` + `model.load_state_dict` works in PyTorch),
//! the codebook of a discrete target (`codebook`), the AdamW moments
//! (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`), and as JSON
//! metadata the full training configuration, the step, each parameter's
//! optimizer step and the random generator's state.
//!
//! Everything about checkpoints lives here: a model's tensors in and out
//! ([`MimModel::load_state`], [`MimModel::store_state`]), a training run's
//! save and resume ([`Trainer::save`], [`Trainer::resume`]),
//! and loading a model for use ([`load_model`], [`load_model_hinted`]; MAE's
//! own `state_dict`s through [`crate::io::official`]).
//!
//! Files are written atomically ([`crate::io::safetensors::write_atomically`]):
//! a crash leaves either the old checkpoint or the new one, never half of one.

use crate::config::Pool;
use crate::config::{ModelConfig, TargetConfig};
use crate::data::Normalization;
use crate::error::{Result, ckpt_err};
use crate::io::official::{self, ModelHints};
use crate::io::safetensors::TensorFile;
use crate::model::classifier::{Classifier, ClassifierConfig};
use crate::model::layers::Module;
use crate::model::mim::MimModel;
use crate::model::target::Codebook;
use crate::rng::MimRng;
use crate::train::finetune::Finetuner;
use crate::train::pretrain::{TrainConfig, Trainer};
use crate::train::recipe::FinetuneConfig;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use tessera_tensor::Tensor;
use tessera_tensor::optim::{AdamState, AdamW, Optimizer};

// ------------------------------------------------------------- models

impl MimModel {
    /// Copies tensors from a checkpoint file into this model. Every tensor of
    /// the model must be present with the same shape, except positional
    /// tables, which are resized from `file_grid` (the patch grid they were
    /// trained on; a square grid is assumed if `None`).
    pub fn load_state(
        &mut self,
        file: &TensorFile,
        path: &std::path::Path,
        file_grid: Option<[usize; 2]>,
    ) -> Result<()> {
        self.load_state_where(file, path, file_grid, |_| true)
    }

    /// [`MimModel::load_state`] for the tensors whose names `wanted` accepts
    /// (an encoder-only checkpoint leaves the decoder as it is).
    pub fn load_state_where(
        &mut self,
        file: &TensorFile,
        path: &std::path::Path,
        file_grid: Option<[usize; 2]>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<()> {
        use crate::config::PosEmbedKind;
        use crate::model::pos_embed::resize;
        let grid = self.config.encoder.grid();
        // Only a ViT has absolute positional tables to resize.
        let enc_kind = self.config.encoder.vit().map_or(PosEmbedKind::None, |v| v.pos_embed);
        for (name, t) in self.state() {
            if !wanted(&name) {
                continue;
            }
            let stored = file.get(&name, path)?;
            if let Some(i) = stored.data.iter().position(|v| !v.is_finite()) {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor '{name}' holds a non-finite value ({}) at index {i}",
                        stored.data[i]
                    ),
                ));
            }
            // The encoder's table is `encoder.pos_embed` in SimMIM's names.
            let is_pos = name == "pos_embed" || name == "encoder.pos_embed" || name == "decoder_pos_embed";
            let data = if stored.shape == t.shape() {
                stored.data.clone()
            } else if is_pos && stored.shape.len() == 3 && stored.shape[2] == t.shape()[2] {
                let old_l = stored.shape[1] - 1;
                let old = file_grid.unwrap_or_else(|| {
                    let s = (old_l as f64).sqrt().round() as usize;
                    [s, s]
                });
                if old[0] * old[1] != old_l {
                    return Err(ckpt_err(
                        path,
                        format!(
                            "'{name}' has {old_l} patch positions, which is not a {}x{} grid",
                            old[0], old[1]
                        ),
                    ));
                }
                let kind = if name != "decoder_pos_embed" {
                    enc_kind
                } else {
                    PosEmbedKind::SinCos
                };
                resize(&stored.data, t.shape()[2], old, grid, kind)
            } else {
                return Err(ckpt_err(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?} in the file but {:?} in this model \
                         (a checkpoint of another configuration?)",
                        stored.shape,
                        t.shape()
                    ),
                ));
            };
            t.set_data(&data)?;
        }
        if let TargetConfig::Codebook { size, normalize } = self.config.target {
            let c = file.get("codebook", path)?;
            self.codebook = Some(Codebook::from_centroids(
                c.data.clone(),
                size,
                self.config.encoder.patch_dim(),
                normalize,
            )?);
        }
        Ok(())
    }

    /// Adds this model's tensors (and codebook) to a file.
    pub fn store_state(&self, file: &mut TensorFile) {
        for (name, t) in self.state() {
            file.insert(name, &t);
        }
        if let Some(book) = &self.codebook {
            file.insert_raw("codebook", vec![book.size, book.dim], book.centroids.clone());
        }
    }
}

// ------------------------------------------------------------- training runs

impl Trainer {
    /// Writes a checkpoint atomically: the model under MAE's names, the
    /// optimizer's moments, the step, the random state and the
    /// configuration.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = TensorFile::default();
        self.model.store_state(&mut file);
        let state = TrainingState {
            config_key: "tessera.config",
            config: json(&self.config),
            step: self.step,
            rng: &self.rng,
        };
        state.store(&mut file, &self.params, &self.optimizer);
        file.save(path)
    }

    /// Continues a run from a checkpoint: same weights, optimizer moments,
    /// step and random state, so the loss trajectory is that of an
    /// uninterrupted run.
    pub fn resume(path: &Path) -> Result<Trainer> {
        Self::resume_expecting(path, None)
    }

    /// Like [`Trainer::resume`], refusing a checkpoint whose model differs from `expected`.
    pub fn resume_checked(path: &Path, expected: &ModelConfig) -> Result<Trainer> {
        Self::resume_expecting(path, Some(expected))
    }

    fn resume_expecting(path: &Path, expected: Option<&ModelConfig>) -> Result<Trainer> {
        let file = TensorFile::load(path)?;
        let config = read_train_config(&file, path)?;
        if expected.is_some_and(|e| *e != config.model) {
            return Err(ckpt_err(
                path,
                "was written for another model configuration than the one requested",
            ));
        }
        let mut t = Trainer::new(config)?;
        t.model.load_state(&file, path, None)?;
        (t.step, t.rng) = restore_training(&file, path, &t.params, &mut t.optimizer)?;
        t.optimizer.set_lr(t.config.lr_at(t.step));
        Ok(t)
    }
}

// ------------------------------------------------------------- fine-tuning runs

impl Finetuner {
    /// Writes a checkpoint atomically: the classifier under MAE's names, the
    /// optimizer's moments, the step, the random state and the recipe.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut file = TensorFile::default();
        for (name, t) in self.model.named_tensors() {
            file.insert(name, &t);
        }
        let state = TrainingState {
            config_key: "tessera.finetune",
            config: json(&self.config),
            step: self.step,
            rng: &self.rng,
        };
        state.store(&mut file, &self.params, &self.optimizer);
        file.save(path)
    }

    /// Continues a fine-tuning run from its checkpoint, on the exact
    /// trajectory of an uninterrupted one.
    pub fn resume(path: &Path) -> Result<Finetuner> {
        let file = TensorFile::load(path)?;
        let config = read_finetune_config(&file, path)?;
        let mut model = Classifier::new(config.model.clone(), &mut MimRng::seed_from_u64(0))?;
        load_tensors(&mut model, &file, path)?;
        let mut t = Finetuner::new(config, model)?;
        (t.step, t.rng) = restore_training(&file, path, &t.params, &mut t.optimizer)?;
        t.optimizer.set_lr(t.config.lr_at(t.step));
        Ok(t)
    }
}

/// What a training checkpoint holds beside the model's tensors: the run's
/// configuration (as JSON under `config_key`), the step and the random
/// generator, with the optimizer's moments as tensors.
struct TrainingState<'a> {
    config_key: &'static str,
    config: String,
    step: u64,
    rng: &'a MimRng,
}

impl TrainingState<'_> {
    fn store(&self, file: &mut TensorFile, params: &[(String, Tensor)], optimizer: &AdamW) {
        let steps = store_optimizer(file, params, optimizer);
        let meta = &mut file.metadata;
        meta.insert("format".into(), "pt".into());
        meta.insert("tessera.version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert(self.config_key.into(), self.config.clone());
        meta.insert("tessera.step".into(), self.step.to_string());
        meta.insert("tessera.rng".into(), json(self.rng));
        meta.insert("tessera.optimizer_steps".into(), json(&steps));
    }
}

/// Restores what [`TrainingState::store`] wrote: the optimizer's moments
/// into `optimizer`, and the step and generator returned.
fn restore_training(
    file: &TensorFile,
    path: &Path,
    params: &[(String, Tensor)],
    optimizer: &mut AdamW,
) -> Result<(u64, MimRng)> {
    let step = parse_meta(file, "tessera.step", path)?;
    let rng = parse_meta(file, "tessera.rng", path)?;
    restore_optimizer(file, path, params, optimizer)?;
    Ok((step, rng))
}

/// Copies every tensor of `model` from `file`, refusing missing ones, other
/// shapes and non-finite values by name.
pub(crate) fn load_tensors(model: &mut Classifier, file: &TensorFile, path: &Path) -> Result<()> {
    let ckpt = |msg: String| ckpt_err(path, msg);
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

/// Adds AdamW's moments of every parameter to `file`
/// (`optimizer.exp_avg.NAME`, `optimizer.exp_avg_sq.NAME`) and returns each
/// one's step count (for the `tessera.optimizer_steps` metadata).
fn store_optimizer(file: &mut TensorFile, params: &[(String, Tensor)], optimizer: &AdamW) -> BTreeMap<String, u64> {
    let mut steps = BTreeMap::new();
    for (name, t) in params {
        if let Some(st) = optimizer.state(t) {
            file.insert_raw(format!("optimizer.exp_avg.{name}"), t.shape().to_vec(), st.m.clone());
            file.insert_raw(format!("optimizer.exp_avg_sq.{name}"), t.shape().to_vec(), st.v.clone());
            steps.insert(name.clone(), st.step);
        }
    }
    steps
}

/// Restores what [`store_optimizer`] wrote.
fn restore_optimizer(file: &TensorFile, path: &Path, params: &[(String, Tensor)], optimizer: &mut AdamW) -> Result<()> {
    let steps: BTreeMap<String, u64> = parse_meta(file, "tessera.optimizer_steps", path)?;
    for (name, t) in params {
        let Some(&step) = steps.get(name) else { continue };
        let m = file.get(&format!("optimizer.exp_avg.{name}"), path)?.data.clone();
        let v = file.get(&format!("optimizer.exp_avg_sq.{name}"), path)?.data.clone();
        optimizer
            .set_state(t, AdamState { step, m, v })
            .map_err(|e| ckpt_err(path, format!("optimizer state of '{name}': {e}")))?;
    }
    Ok(())
}

/// Refuses metadata that describes another model than the tensors hold,
/// before any memory is taken for it: the model's state would not fit in the
/// file (a 500 KB file claiming a 65536-wide model).
fn check_declared_size(wanted: u128, file: &TensorFile, path: &Path) -> Result<()> {
    let held: u128 = file
        .tensors
        .iter()
        .filter(|(name, _)| !name.starts_with("optimizer."))
        .map(|(_, t)| t.data.len() as u128)
        .sum();
    // Positional tables of another grid are resized on load, so allow the
    // stored state to differ by them; anything far larger is not this file.
    if wanted > 2 * held + (1 << 20) {
        return Err(ckpt_err(
            path,
            format!(
                "its metadata describes a model of {wanted} values, but the file holds {held}: \
                 corrupt metadata or another file"
            ),
        ));
    }
    Ok(())
}

/// The pre-training configuration in a checkpoint's metadata, its model
/// checked before anything is derived from it (a crafted `patch_size: 0`
/// would divide by zero computing the grid; a crafted width would ask for
/// terabytes) and its size against the tensors the file holds.
fn read_train_config(file: &TensorFile, path: &Path) -> Result<TrainConfig> {
    let config: TrainConfig = parse_meta(file, "tessera.config", path)?;
    config
        .model
        .validate()
        .map_err(|e| ckpt_err(path, format!("metadata 'tessera.config' is not a valid model: {e}")))?;
    check_declared_size(config.model.state_len(), file, path)?;
    Ok(config)
}

/// The fine-tuning recipe in a checkpoint's metadata, checked as
/// [`read_train_config`] checks a pre-training one.
fn read_finetune_config(file: &TensorFile, path: &Path) -> Result<FinetuneConfig> {
    let mut config: FinetuneConfig = parse_meta(file, "tessera.finetune", path)?;
    // Written before `fc_norm` moved into the ViT's configuration: a
    // mean-pooled ViT classifier then always had one.
    if let (crate::config::EncoderConfig::Vit(v), Pool::Mean) = (&mut config.model.encoder, config.model.pool)
        && !v.final_norm
        && !v.fc_norm
    {
        v.fc_norm = true;
    }
    config
        .validate()
        .map_err(|e| ckpt_err(path, format!("metadata 'tessera.finetune' is not a valid recipe: {e}")))?;
    check_declared_size(config.model.state_len(), file, path)?;
    Ok(config)
}

/// The training configuration a pre-training checkpoint was written with
/// (`None` for a file without Tessera's pre-training metadata, such as MAE's
/// released weights or a fine-tuned classifier).
pub fn train_config(path: &Path) -> Result<Option<TrainConfig>> {
    let file = TensorFile::load(path)?;
    if !file.metadata.contains_key("tessera.config") {
        return Ok(None);
    }
    read_train_config(&file, path).map(Some)
}

/// Reads a JSON metadata entry of a checkpoint.
pub fn parse_meta<T: serde::de::DeserializeOwned>(file: &TensorFile, key: &str, path: &Path) -> Result<T> {
    serde_json::from_str(file.meta(key, path)?)
        .map_err(|e| ckpt_err(path, format!("metadata '{key}' is malformed: {e}")))
}

/// A metadata value as JSON.
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("configuration and state serialise to JSON")
}

// ------------------------------------------------------------- loading for use

/// Loads a model (for evaluation or reconstruction) from a checkpoint,
/// optionally at another image size (positional tables are resized): a
/// Tessera checkpoint, or an official MAE pre-training `state_dict` in
/// safetensors (see [`load_model_hinted`]).
pub fn load_model(path: &Path, img_size: Option<[usize; 2]>) -> Result<MimModel> {
    load_model_hinted(path, img_size, &ModelHints::default(), true)
}

/// [`load_model`], also for checkpoints without Tessera's metadata (MAE's
/// released weights): their configuration is read off the tensors' shapes,
/// with `hints` for what shapes cannot say ([`crate::io::official`]). With
/// `need_decoder` false an encoder-only file is accepted (for features); its
/// decoder stays randomly initialised.
pub fn load_model_hinted(
    path: &Path,
    img_size: Option<[usize; 2]>,
    hints: &ModelHints,
    need_decoder: bool,
) -> Result<MimModel> {
    load_model_from(TensorFile::load(path)?, path, img_size, hints, need_decoder)
}

/// [`load_model_hinted`] of a file already read from `path` (a caller that
/// looked at it first, e.g. with [`is_classifier`], does not read it twice).
pub fn load_model_from(
    file: TensorFile,
    path: &Path,
    img_size: Option<[usize; 2]>,
    hints: &ModelHints,
    need_decoder: bool,
) -> Result<MimModel> {
    if file.metadata.contains_key("tessera.finetune") {
        return Err(ckpt_err(
            path,
            "is a fine-tuned classifier, not a pre-training checkpoint: evaluate or predict with it, \
             or give the pre-training checkpoint it was fine-tuned from",
        ));
    }
    let official = !file.metadata.contains_key("tessera.config");
    // A size asked for is the trained size where the file cannot tell it.
    let hints = &ModelHints {
        img_size: hints.img_size.or(img_size),
        ..hints.clone()
    };
    let file = if official { official::mim_names(file) } else { file };
    let model_config = if official {
        // `tessera convert` writes what the shapes cannot say.
        let config = if file.metadata.contains_key(MODEL_KEY) {
            read_model_config(&file, path)?
        } else {
            official::infer_config(&file, path, hints, need_decoder)?
        };
        if need_decoder && !official::has_decoder(&file) {
            return Err(ckpt_err(
                path,
                "holds an encoder alone (no decoder tensors); this needs the pre-training weights",
            ));
        }
        config
    } else {
        read_train_config(&file, path)?.model
    };
    let trained_grid = model_config.encoder.grid();
    let mut model_config = model_config;
    if let Some(size) = img_size {
        model_config.encoder.set_img_size(size);
    }
    let mut model = MimModel::new(model_config, &mut MimRng::seed_from_u64(0))?;
    if official {
        let encoder_only = !official::has_decoder(&file);
        let wanted = |name: &str| !encoder_only || official::is_encoder_tensor(name);
        let names: Vec<String> = model.state().into_iter().map(|(n, _)| n).collect();
        official::check_names(&file, path, &names, wanted)?;
        model.load_state_where(&file, path, Some(trained_grid), wanted)?;
    } else {
        model.load_state(&file, path, Some(trained_grid))?;
    }
    Ok(model)
}

/// Metadata key of the model configuration `tessera convert` writes into a
/// released pre-training (or encoder) state dict: [`ModelConfig`] as JSON.
pub const MODEL_KEY: &str = "tessera.model";
/// Metadata key of the classifier configuration `tessera convert` writes
/// into a released classifier: [`ClassifierConfig`] as JSON.
pub const CLASSIFIER_KEY: &str = "tessera.classifier";

/// The model configuration under [`MODEL_KEY`], checked as
/// [`read_train_config`] checks a training run's.
fn read_model_config(file: &TensorFile, path: &Path) -> Result<ModelConfig> {
    let config: ModelConfig = parse_meta(file, MODEL_KEY, path)?;
    config
        .validate()
        .map_err(|e| ckpt_err(path, format!("metadata '{MODEL_KEY}' is not a valid model: {e}")))?;
    check_declared_size(config.encoder.state_len(), file, path)?;
    Ok(config)
}

/// True if a checkpoint holds a classifier: Tessera's fine-tuned ones, and
/// released state dicts with a head (`head.weight`, timm's Swin `head.fc.weight`).
pub fn is_classifier(file: &TensorFile) -> bool {
    file.metadata.contains_key("tessera.finetune")
        || file.metadata.contains_key(CLASSIFIER_KEY)
        || (!file.metadata.contains_key("tessera.config")
            && (file.tensors.contains_key("head.weight") || file.tensors.contains_key("head.fc.weight")))
}

/// The classifier a released state dict describes (names as
/// [`official::classifier_names`] gives them): its encoder read off the
/// shapes ([`official::vit_config`], [`official::swin_config`]), its class
/// count from the head `(K, D)`, classes named `0…K−1`, \[CLS\] pooling
/// unless the ViT has `fc_norm` (mean pooling; Swin always).
pub fn infer_classifier_config(file: &TensorFile, path: &Path, hints: &ModelHints) -> Result<ClassifierConfig> {
    if file.metadata.contains_key(CLASSIFIER_KEY) {
        let config: ClassifierConfig = parse_meta(file, CLASSIFIER_KEY, path)?;
        config.validate().map_err(|e| {
            ckpt_err(
                path,
                format!("metadata '{CLASSIFIER_KEY}' is not a valid classifier: {e}"),
            )
        })?;
        check_declared_size(config.state_len(), file, path)?;
        return Ok(config);
    }
    let head = file.get("head.weight", path).map_err(|_| {
        ckpt_err(
            path,
            "has no classifier head ('head.weight'): not a fine-tuned checkpoint",
        )
    })?;
    let k = head.shape.first().copied().unwrap_or(0);
    let (enc, pool): (crate::config::EncoderConfig, Pool) = if official::is_swin(file) {
        (official::swin_config(file, "", path, hints)?.into(), Pool::Mean)
    } else {
        let vit = official::vit_config(file, "", path, hints)?;
        let pool = if vit.fc_norm { Pool::Mean } else { Pool::Cls };
        (vit.into(), pool)
    };
    let names = (0..k).map(|i| i.to_string()).collect();
    let config = ClassifierConfig::new(enc, names, pool, 0.0)?;
    if head.shape != [k, config.encoder.out_dim()] {
        return Err(ckpt_err(
            path,
            format!(
                "'head.weight' has shape {:?}, want (K, {})",
                head.shape,
                config.encoder.out_dim()
            ),
        ));
    }
    Ok(config)
}

/// Loads a classifier for evaluation: a Tessera fine-tuning checkpoint, or
/// a released fine-tuned state dict — MAE's (`fc_norm`, `head`), timm's
/// `vit_*` and `swin_*`, BEiT's and SimMIM's ViT and Swin — its
/// configuration read off the shapes ([`infer_classifier_config`]; heads
/// and a Swin's image size from `hints` where the file cannot tell) or
/// taken from what `tessera convert` wrote, and every tensor checked by
/// name. Also returns the statistics its inputs are normalised with: the
/// recipe's, or ImageNet's for a released file.
pub fn load_classifier(path: &Path, hints: &ModelHints) -> Result<(Classifier, Normalization)> {
    load_classifier_from(TensorFile::load(path)?, path, hints)
}

/// [`load_classifier`] of a file already read from `path`.
pub fn load_classifier_from(file: TensorFile, path: &Path, hints: &ModelHints) -> Result<(Classifier, Normalization)> {
    let (config, norm, file) = if file.metadata.contains_key("tessera.finetune") {
        let recipe = read_finetune_config(&file, path)?;
        (recipe.model, recipe.normalization, file)
    } else if file.metadata.contains_key("tessera.config") {
        return Err(ckpt_err(path, "is a pre-training checkpoint; fine-tune it first"));
    } else {
        let file = official::classifier_names(file);
        let config = infer_classifier_config(&file, path, hints)?;
        (config, Normalization::imagenet(), file)
    };
    let mut model = Classifier::new(config, &mut MimRng::seed_from_u64(0))?;
    if !file.metadata.contains_key("tessera.finetune") {
        // A released file holds the classifier and nothing else.
        let names: Vec<String> = model.named_tensors().into_iter().map(|(n, _)| n).collect();
        official::check_names(&file, path, &names, |_| true)?;
    }
    load_tensors(&mut model, &file, path)?;
    Ok((model, norm))
}
