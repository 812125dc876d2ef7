//! `tessera convert IN OUT`: a PyTorch `.pth` (or any checkpoint Tessera
//! reads) as a safetensors file, read without running any of it. Where the
//! file is a model Tessera recognises, its configuration is written beside
//! the tensors (`tessera.model`, and `tessera.classifier` for a classifier),
//! so the copy loads with no options; the tensors keep their names.

use crate::common::OfficialArgs;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use tessera_mim::io::checkpoint::{CLASSIFIER_KEY, MODEL_KEY, infer_classifier_config, is_classifier, json};
use tessera_mim::io::official::{self, ModelHints};
use tessera_mim::io::safetensors::{StoredTensor, TensorFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file to convert: a `.pth` written by torch.save (its state dict,
    /// found at the top or under 'model', 'state_dict' or 'module'), or a
    /// safetensors file.
    pub input: PathBuf,
    /// Where to write the safetensors copy.
    pub output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// What the file cannot say about its model (written into the copy).
    #[command(flatten)]
    pub official: OfficialArgs,
    /// A classifier's class names, one per line (written into the copy, so
    /// `predict` prints them).
    #[arg(long)]
    pub class_names: Option<PathBuf>,
}

/// The file's names and shapes without its values: what recognising a
/// model needs, at no copy of a large file's data.
fn shapes_of(file: &TensorFile) -> TensorFile {
    let mut shadow = TensorFile::default();
    for (name, t) in &file.tensors {
        shadow.tensors.insert(
            name.clone(),
            StoredTensor {
                shape: t.shape.clone(),
                data: Vec::new(),
            },
        );
    }
    shadow
}

/// The metadata entries describing `file`'s model, and a line saying what
/// it is; `Err` says why it is not recognised.
fn describe(
    file: &TensorFile,
    path: &std::path::Path,
    hints: &ModelHints,
    names: Option<Vec<String>>,
) -> tessera_mim::Result<(Vec<(&'static str, String)>, String)> {
    let mut entries = Vec::new();
    let what;
    if is_classifier(file) {
        let view = official::classifier_names(shapes_of(file));
        let mut config = infer_classifier_config(&view, path, hints)?;
        if let Some(names) = names {
            if names.len() != config.num_classes {
                return Err(tessera_mim::MimError::Input(format!(
                    "{} class names for a classifier of {} classes",
                    names.len(),
                    config.num_classes
                )));
            }
            config.class_names = names;
        }
        what = format!(
            "a classifier: {}, {} classes, pool {:?}",
            config.encoder.describe(),
            config.num_classes,
            config.pool
        );
        entries.push((CLASSIFIER_KEY, json(&config)));
    } else {
        what = String::new();
    }
    // The encoder (or pre-training model) as a pre-training model sees it.
    let view = official::mim_names(shapes_of(file));
    match official::infer_config(&view, path, hints, false) {
        Ok(model) => {
            let what = if what.is_empty() {
                let part = if official::has_decoder(&view) {
                    "a pre-training model"
                } else {
                    "an encoder"
                };
                format!("{part}: {}", model.encoder.describe())
            } else {
                what
            };
            entries.push((MODEL_KEY, json(&model)));
            Ok((entries, what))
        }
        Err(_) if !entries.is_empty() => Ok((entries, what)),
        Err(e) => Err(e),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} exists; choose another output or pass --overwrite",
            args.output.display()
        );
    }
    let mut file = TensorFile::load(&args.input)?;
    let values: usize = file.tensors.values().map(|t| t.data.len()).sum();
    let source = args.input.file_name().map_or_else(
        || args.input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let names = match &args.class_names {
        Some(p) => Some(crate::finetune::read_class_names(p)?),
        None => None,
    };
    let tessera_own = file.metadata.keys().any(|k| k.starts_with("tessera."));
    let note = if tessera_own {
        "a Tessera checkpoint (its metadata kept)".to_string()
    } else {
        match describe(&file, &args.input, &args.official.hints(), names) {
            Ok((entries, what)) => {
                for (key, value) in entries {
                    file.metadata.insert(key.into(), value);
                }
                format!("recognised {what}; its configuration written with it")
            }
            Err(e) if args.class_names.is_some() => {
                return Err(e).with_context(|| format!("--class-names for {}", args.input.display()));
            }
            Err(e) => format!("not recognised as a model Tessera builds ({e}); tensors only"),
        }
    };
    file.metadata.insert("converted_from".into(), source);
    file.save(&args.output)?;
    println!(
        "{}: {} tensors, {values} values, written as f32 to {}; {note}",
        args.input.display(),
        file.tensors.len(),
        args.output.display()
    );
    Ok(())
}
