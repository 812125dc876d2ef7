//! `tessera probe`: how linearly separable and how well clustered are the
//! frozen encoder's features? Features are extracted once per split (never
//! masked; mean-pooled and \[CLS\] from the same pass by default), then scored
//! with a linear probe (logistic regression on standardised features, trained
//! to convergence) and k-NN (cosine similarity, temperature-weighted votes).
//! `--baselines` adds the same two scores on raw pixels and on a randomly
//! initialised encoder of the same shape, in the same run.

use crate::common::{DataArgs, DataKind, EncoderArg, OfficialArgs, PoolArg, check_encoder};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tessera_mim::data::transform::Transform;
use tessera_mim::data::{Dataset, Split};
use tessera_mim::eval::probe::{
    Features, ProbeConfig, encoder_features, encoder_features_mean_and_cls, knn, linear_probe, pixel_features,
};
use tessera_mim::io::checkpoint::load_model_hinted;
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::{MimModel, MimRng};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint written by `tessera pretrain`, or a released state dict
    /// (`.pth` or safetensors: a pre-training model, an encoder alone, or a
    /// classifier, whose encoder is probed).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub official: OfficialArgs,
    /// The encoder family the checkpoint must hold (default: whichever it
    /// holds; Swin is probed on its mean-pooled last stage).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderArg>,
    #[command(flatten)]
    pub data: DataArgs,
    /// How tokens become one feature vector (default: both, a row each;
    /// Swin, which has no \[CLS\] token: mean).
    #[arg(long, value_enum)]
    pub pool: Option<PoolArg>,
    /// Use at most this many training images (default: all of them; of the
    /// synthetic set, the first 2000).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use at most this many test images (default: all of them; of the
    /// synthetic set, the first 1000).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// L2 penalty of the linear probe per training image (scikit-learn's
    /// `C` is 1 / (l2 × images)).
    #[arg(long, default_value_t = ProbeConfig::default().l2)]
    pub l2: f32,
    /// Most L-BFGS iterations of the linear probe (it stops earlier once
    /// converged).
    #[arg(long, default_value_t = ProbeConfig::default().max_iter)]
    pub max_iter: usize,
    /// Neighbours of k-NN.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Temperature of k-NN's weighted votes.
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f32,
    /// Also score raw pixels and a randomly initialised encoder.
    #[arg(long)]
    pub baselines: bool,
    /// Images per feature-extraction batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write each row's features to `DIR/<row>.safetensors` (train, test,
    /// train_labels, test_labels; f32), e.g. to check the probe against
    /// another implementation (benches/probe/sklearn_probe.py).
    #[arg(long, value_name = "DIR")]
    pub save_features: Option<PathBuf>,
}

fn bar(label: &str, json: bool) -> ProgressBar {
    let b = ProgressBar::new(0);
    if json {
        b.set_draw_target(ProgressDrawTarget::hidden());
    }
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(label.to_string());
    b
}

/// Images of the synthetic set's splits that the probe uses unless told
/// otherwise (train, test): 200 and 100 of each class, so that the default
/// probe with `--baselines` takes well under a minute on two cores.
pub const SYNTHETIC_PROBE_LIMITS: (usize, usize) = (2000, 1000);

pub fn run(mut args: Args) -> Result<()> {
    if args.data.data == DataKind::Synthetic {
        args.train_limit = args.train_limit.or(Some(SYNTHETIC_PROBE_LIMITS.0));
        args.test_limit = args.test_limit.or(Some(SYNTHETIC_PROBE_LIMITS.1));
    }
    let model = load_model_hinted(&args.checkpoint, None, &args.official.hints(), false)?;
    check_encoder(args.encoder, &model, &args.checkpoint)?;
    if model.encoder.swin().is_some() {
        match args.pool {
            None => args.pool = Some(PoolArg::Mean),
            Some(PoolArg::Mean) => {}
            Some(PoolArg::Cls) => bail!(
                "{} holds a Swin encoder, which has no [CLS] token: use --pool mean",
                args.checkpoint.display()
            ),
        }
    }
    let e = &model.config.encoder;
    let (size, chans) = (e.img_size(), e.in_chans());
    let train_ds = args.data.open(Split::Train, size, chans)?;
    let test_ds = args.data.open(Split::Test, size, chans)?;
    let classes = train_ds.class_names().len();
    if classes < 2 {
        bail!("{} is not labelled (a probe needs classes)", train_ds.name());
    }
    let t = Transform::eval(e, &train_ds.normalization());
    if !(args.l2 >= 0.0 && args.l2.is_finite()) {
        bail!("--l2 {} must be a finite number ≥ 0", args.l2);
    }
    let probe_cfg = ProbeConfig {
        l2: args.l2,
        max_iter: args.max_iter,
        ..Default::default()
    };
    // Features of one split, per pooling, with a progress bar: (name, features).
    let split_features = |label: String, m: &MimModel, ds: &dyn Dataset, limit| -> Result<Vec<(&str, Features)>> {
        let b = bar(&label, args.json);
        let mut progress = |d: usize, n: usize| {
            b.set_length(n as u64);
            b.set_position(d as u64)
        };
        let f = match args.pool {
            None => {
                let (mean, cls) = encoder_features_mean_and_cls(m, ds, &t, args.batch, limit, &mut progress)?;
                vec![("mean", mean), ("cls", cls)]
            }
            Some(pool) => {
                let name = if pool == PoolArg::Mean { "mean" } else { "cls" };
                vec![(
                    name,
                    encoder_features(m, ds, &t, pool.pool(), args.batch, limit, &mut progress)?,
                )]
            }
        };
        b.finish_and_clear();
        Ok(f)
    };
    // (pooling, train, test) of one encoder.
    let extract = |label: &str, m: &MimModel| -> Result<Vec<(String, Features, Features)>> {
        let tr = split_features(format!("{label}: train"), m, train_ds.as_ref(), args.train_limit)?;
        let te = split_features(format!("{label}: test"), m, test_ds.as_ref(), args.test_limit)?;
        Ok(tr
            .into_iter()
            .zip(te)
            .map(|((p, tr), (_, te))| (p.to_string(), tr, te))
            .collect())
    };
    let score = |name: &str, tr: &Features, te: &Features| -> Result<(f32, f32)> {
        if let Some(dir) = &args.save_features {
            save_features(dir, name, tr, te)?;
        }
        Ok((
            linear_probe(tr, te, classes, probe_cfg)?,
            knn(tr, te, classes, args.k, args.temperature)?,
        ))
    };

    let mut results: Vec<(String, usize, f32, f32)> = Vec::new();
    let (mut n_train, mut n_test) = (0, 0);
    for (pool, tr, te) in extract("pretrained", &model)? {
        let name = format!("pretrained encoder ({pool})");
        let (lin, nn) = score(&name, &tr, &te)?;
        (n_train, n_test) = (tr.len(), te.len());
        results.push((name, tr.dim, lin, nn));
    }
    if args.baselines {
        let random = MimModel::new(model.config.clone(), &mut MimRng::seed_from_u64(12345))?;
        for (pool, tr, te) in extract("random init", &random)? {
            let name = format!("random-init encoder ({pool})");
            let (lin, nn) = score(&name, &tr, &te)?;
            results.push((name, tr.dim, lin, nn));
        }
        let tr = pixel_features(train_ds.as_ref(), &t, args.train_limit, &mut |_, _| {})?;
        let te = pixel_features(test_ds.as_ref(), &t, args.test_limit, &mut |_, _| {})?;
        let (lin, nn) = score("raw pixels", &tr, &te)?;
        results.push(("raw pixels".into(), tr.dim, lin, nn));
    }
    let rows: Vec<_> = results
        .iter()
        .map(|(name, dim, lin, nn)| serde_json::json!({"features": name, "dim": dim, "linear_probe": lin, "knn": nn}))
        .collect();
    let summary = serde_json::json!({
        "data": train_ds.name(),
        "test_data": test_ds.name(),
        "train": n_train,
        "test": n_test,
        "k": args.k,
        "results": rows,
    });
    // Beside a run's checkpoint, for its report.
    let dir = args.checkpoint.parent().filter(|d| {
        [tessera_mim::run::folder::CONFIG, tessera_mim::run::folder::METRICS]
            .iter()
            .any(|f| d.join(f).exists())
    });
    let saved = match dir {
        Some(d) => {
            let path = d.join(tessera_mim::run::folder::PROBE);
            tessera_mim::io::safetensors::write_atomically(&path, summary.to_string().as_bytes())?;
            Some(path)
        }
        None => None,
    };
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "trained on {} ({n_train} images), tested on {} ({n_test} images), {classes} classes",
            train_ds.name(),
            test_ds.name()
        );
        println!(
            "{:<30} {:>6} {:>14} {:>12}",
            "features",
            "dim",
            "linear probe",
            format!("k-NN (k={})", args.k)
        );
        for (name, dim, lin, nn) in &results {
            println!("{name:<30} {dim:>6} {:>13.2}% {:>11.2}%", 100.0 * lin, 100.0 * nn);
        }
        if let Some(p) = saved {
            println!("results written to {} (for the run's report)", p.display());
        }
    }
    Ok(())
}

/// Writes one row's features to `dir/<name as a file name>.safetensors`.
fn save_features(dir: &Path, name: &str, tr: &Features, te: &Features) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut file = TensorFile::default();
    for (split, f) in [("train", tr), ("test", te)] {
        file.insert_raw(split, vec![f.len(), f.dim], f.data.clone());
        let labels = f.labels.iter().map(|&l| l as f32).collect();
        file.insert_raw(format!("{split}_labels"), vec![f.len()], labels);
    }
    file.save(&dir.join(format!("{}.safetensors", stem.trim_matches('-'))))?;
    Ok(())
}
