//! `tessera finetune`, `tessera evaluate`, `tessera predict`: supervised
//! fine-tuning of a pre-trained (or fresh) encoder with MAE's recipe, and
//! what the resulting classifier does on a test split or on image files.

use crate::common::{
    DataArgs, ModelArgs, OfficialArgs, PoolArg, PrecisionArg, Progress, RunArgs, SplitArg, already_done, printable,
    report_end,
};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget};
use rand::SeedableRng;
use std::path::PathBuf;
use tessera_mim::data::loader::load_images;
use tessera_mim::data::transform::Transform;
use tessera_mim::data::{Dataset, First, Split, check_labelled};
use tessera_mim::eval::accuracy::{evaluate, probabilities, top_k};
use tessera_mim::io::checkpoint::{
    is_classifier, load_classifier, load_classifier_from, load_model_from, load_model_hinted,
};
use tessera_mim::model::classifier::{Classifier, ClassifierConfig};
use tessera_mim::run::RunStart;
use tessera_mim::run::finetune::FinetuneRun;
use tessera_mim::train::finetune::Finetuner;
use tessera_mim::train::recipe::{FinetuneConfig, LearningRate, Length, MixupConfig, Schedule};
use tessera_mim::{EncoderConfig, MimRng};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint to start from: a pre-training one (Tessera's, or a released
    /// MAE, SimMIM or timm state dict, `.pth` or safetensors), or a
    /// classifier (Tessera's fine-tuned one, or a released one), which
    /// continues with its head when the data has as many classes.
    #[arg(long, required_unless_present = "from_scratch", conflicts_with = "from_scratch")]
    pub checkpoint: Option<PathBuf>,
    /// Train the encoder from random weights (the supervised baseline),
    /// shaped by the model options.
    #[arg(long)]
    pub from_scratch: bool,
    #[command(flatten)]
    pub data: DataArgs,
    /// Encoder options (with --from-scratch; with --checkpoint they must
    /// agree with it, and --heads gives the heads of an official file).
    #[command(flatten)]
    pub model: ModelArgs,
    /// How tokens become the classified vector (Swin: mean).
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: PoolArg,
    /// Training length in epochs.
    #[arg(long, default_value_t = 10.0)]
    pub epochs: f64,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Learning rate per 256 images (MAE's fine-tuning default).
    #[arg(long, default_value_t = 1e-3)]
    pub blr: f32,
    /// Absolute peak learning rate (overrides --blr).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f32,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    /// Layer-wise learning-rate decay (1: none).
    #[arg(long, default_value_t = 0.75)]
    pub layer_decay: f32,
    /// Linear warm-up in epochs (default: 5% of the run, MAE's 5 of 100).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f32,
    /// Mixup's Beta α (0: off).
    #[arg(long, default_value_t = 0.8)]
    pub mixup: f32,
    /// CutMix's Beta α (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub cutmix: f32,
    /// Probability of mixing a batch.
    #[arg(long, default_value_t = 1.0)]
    pub mixup_prob: f32,
    /// Probability of CutMix rather than mixup when both are on.
    #[arg(long, default_value_t = 0.5)]
    pub mixup_switch_prob: f32,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub clip_grad: Option<f32>,
    /// No random resized crops and flips.
    #[arg(long)]
    pub no_augment: bool,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate each epoch on at most this many test images.
    #[arg(long)]
    pub val_limit: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// The ids of the options typed on the command line (filled by `main`).
    #[arg(skip)]
    pub given: Vec<String>,
}

/// The model options that shape the encoder.
const ENCODER_OPTIONS: [&str; 10] = [
    "encoder",
    "preset",
    "img_size",
    "patch",
    "chans",
    "dim",
    "depth",
    "heads",
    "depths",
    "stage_heads",
];

/// Where fine-tuning starts: the encoder's configuration, the pre-trained
/// encoder when a checkpoint is given, and the classifier's head and
/// pooling when that checkpoint is a classifier (Tessera's fine-tuned one,
/// or a released one: MAE's, timm's, BEiT's, SimMIM's).
struct Start {
    config: EncoderConfig,
    encoder: Option<tessera_mim::Encoder>,
    head: Option<(tessera_mim::model::layers::Linear, tessera_mim::Pool)>,
}

/// The encoder to fine-tune, with the pre-trained one when given.
fn start(args: &Args) -> Result<Start> {
    let native = args.data.native();
    let Some(path) = &args.checkpoint else {
        return Ok(Start {
            config: args.model.build(native)?.encoder,
            encoder: None,
            head: None,
        });
    };
    let hints = tessera_mim::io::official::ModelHints {
        heads: args.model.heads,
        img_size: args.model.img_size.map(|s| s.0),
        ..Default::default()
    };
    let file = tessera_mim::io::safetensors::TensorFile::load(path)?;
    let tessera_classifier = file.metadata.contains_key("tessera.finetune");
    let (have, encoder, head) = if is_classifier(&file) {
        let (c, _) = load_classifier_from(file, path, &hints)?;
        (c.config.encoder.clone(), c.encoder, Some((c.head, c.config.pool)))
    } else {
        let pre = load_model_from(file, path, None, &hints, false)?;
        (pre.config.encoder.clone(), pre.encoder, None)
    };
    let typed = |id: &str| args.given.iter().any(|g| g == id);
    if !ENCODER_OPTIONS.iter().any(|o| typed(o)) {
        return Ok(Start {
            config: have,
            encoder: Some(encoder),
            head,
        });
    }
    // `--preset`/`--encoder` name a whole encoder; any other option changes
    // only what it names, on top of what the file holds.
    let mut want = if typed("preset") || typed("encoder") {
        args.model.build(args.data.native())?.encoder
    } else {
        args.model.overlay(&have)?
    };
    // Fine-tuning options are not part of the comparison, and nor is the
    // image size: another size resizes the positional tables.
    match (&mut want, &have) {
        (EncoderConfig::Vit(w), EncoderConfig::Vit(h)) => {
            (w.drop_path, w.final_norm, w.fc_norm, w.init) = (h.drop_path, h.final_norm, h.fc_norm, h.init);
        }
        (EncoderConfig::Swin(w), EncoderConfig::Swin(h)) => w.drop_path = h.drop_path,
        _ => {}
    }
    let size = want.img_size();
    let mut same_size = want.clone();
    same_size.set_img_size(have.img_size());
    if same_size != have {
        bail!(
            "{} holds a pre-trained {}, not the requested {}",
            path.display(),
            have.describe(),
            want.describe()
        );
    }
    if size == have.img_size() {
        return Ok(Start {
            config: have,
            encoder: Some(encoder),
            head,
        });
    }
    if tessera_classifier {
        bail!(
            "{} is a classifier fine-tuned at {:?} pixels; continuing it at another image size is not supported \
             (start from its pre-training checkpoint)",
            path.display(),
            have.img_size()
        );
    }
    let resized = load_model_hinted(path, Some(size), &hints, false)?;
    Ok(Start {
        config: resized.config.encoder.clone(),
        encoder: Some(resized.encoder),
        head,
    })
}

pub fn run(args: Args) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !(args.epochs > 0.0 && args.epochs.is_finite()) {
        bail!("--epochs must be a positive number, got {}", args.epochs);
    }
    let Start {
        config: enc,
        encoder: pretrained,
        head,
    } = start(&args)?;
    let (size, chans) = (enc.img_size(), enc.in_chans());
    let full = args.data.open(Split::Train, size, chans)?;
    let train_ds = First::new(full.as_ref(), args.limit.unwrap_or(usize::MAX));
    let test_ds = args.data.open(Split::Test, size, chans)?;
    let classes = train_ds.class_names();
    if classes.len() < 2 {
        bail!(
            "{} has no labels: fine-tuning needs a labelled data set",
            train_ds.name()
        );
    }
    // A classifier continues with its own pooling unless told otherwise.
    let pool = match &head {
        Some((_, pool)) if !args.given.iter().any(|g| g == "pool") => *pool,
        _ => args.pool.pool(),
    };
    let model_cfg = ClassifierConfig::new(enc, classes, pool, args.model.drop_path.unwrap_or(0.1))?;
    check_labelled(&train_ds, model_cfg.num_classes)?;
    check_labelled(test_ds.as_ref(), model_cfg.num_classes)?;
    let config = recipe(&args, model_cfg, &train_ds)?;
    // Sized before the classifier is built.
    tessera_mim::train::memory::check(
        "fine-tuning this model",
        tessera_mim::train::memory::finetune_bytes(&config),
        args.run.max_memory.map(|g| (g * (1u64 << 30) as f64) as u64),
        "reduce --batch or --img-size (or raise --max-memory)",
    )?;
    let model = Classifier::new(config.model.clone(), &mut MimRng::seed_from_u64(config.seed))?;
    let source = match (&pretrained, &args.checkpoint) {
        (Some(enc), Some(path)) => {
            let n = model.load_encoder(enc)?;
            let head = match &head {
                None => String::new(),
                Some((h, p)) => {
                    let k = h.weight.shape()[0];
                    if k == model.config.num_classes && *p == model.config.pool {
                        model.head.weight.set_data(&h.weight.to_vec())?;
                        if let (Some(to), Some(from)) = (&model.head.bias, &h.bias) {
                            to.set_data(&from.to_vec())?;
                        }
                        format!(", its head of {k} classes")
                    } else if k != model.config.num_classes {
                        format!(
                            "; a new head: the file's has {k} classes, the data {}",
                            model.config.num_classes
                        )
                    } else {
                        format!("; a new head: the file's reads pool {p:?}")
                    }
                }
            };
            format!("{} ({n} encoder tensors{head})", path.display())
        }
        _ => "random weights (from scratch)".to_string(),
    };
    let options = args.run.options("runs/finetune")?;
    let source = if args.run.resume && options.checkpoint().exists() {
        format!("{} (resumed; started from {source})", options.checkpoint().display())
    } else {
        source
    };
    let mut run = FinetuneRun::new(Finetuner::new(config, model)?, &train_ds, test_ds.as_ref(), options)?;
    run.val_limit = args.val_limit;
    let config = run.tuner().config().clone();
    if already_done(run.options(), run.tuner().step(), config.total_steps, true) {
        return Ok(());
    }
    let out = run.options().out.clone();
    let c = config.clone();
    let mut progress = Progress::new(config.total_steps, args.run.quiet, move |s: &RunStart| {
        format!(
            "fine-tuning {} ({} classes, pool {:?}) from {source} on {} ({} images, {} steps of {}, {} per epoch), \
             layer decay {}, mixup {}/{}, smoothing {}, output {}",
            c.model.encoder.describe(),
            c.model.num_classes,
            c.model.pool,
            s.data_name,
            s.train_images,
            s.total_steps,
            c.batch_size,
            s.steps_per_epoch,
            c.layer_decay,
            c.mixup.mixup_alpha,
            c.mixup.cutmix_alpha,
            c.label_smoothing,
            out.display()
        )
    });
    let end = run.run(&mut progress)?;
    progress.bar.finish_and_clear();
    report_end(&end, config.total_steps, |s| {
        format!(
            "done: step {}, loss {:.4}, val top-1 {:.2}%; checkpoint {}",
            s.step,
            s.loss,
            100.0 * end.validation.as_ref().map_or(f64::NAN, |r| r.top1),
            end.checkpoint.display()
        )
    })
}

/// MAE's fine-tuning recipe for `model` on `train`, with the options given.
fn recipe(args: &Args, model: ClassifierConfig, train: &dyn Dataset) -> Result<FinetuneConfig> {
    let schedule = Schedule {
        length: Length::Epochs(args.epochs),
        warmup: args.warmup_epochs.map(Length::Epochs),
        lr: args.lr.map_or(LearningRate::Per256(args.blr), LearningRate::Peak),
    };
    let mut config = FinetuneConfig::scheduled(model, train.normalization(), args.batch, &schedule, train.len());
    config.min_lr = args.min_lr;
    config.weight_decay = args.weight_decay;
    config.layer_decay = args.layer_decay;
    config.label_smoothing = args.smoothing;
    config.mixup = MixupConfig {
        mixup_alpha: args.mixup,
        cutmix_alpha: args.cutmix,
        prob: args.mixup_prob,
        switch_prob: args.mixup_switch_prob,
    };
    config.augment = !args.no_augment;
    config.clip_grad = args.clip_grad;
    config.seed = args.seed;
    config.precision = args.precision.config();
    config.validate()?;
    Ok(config)
}

// ------------------------------------------------------------ evaluate

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A fine-tuned checkpoint: Tessera's, or a released classifier (MAE's,
    /// timm's vit_*/swin_*, BEiT's or SimMIM's; `.pth` or safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub official: OfficialArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Evaluate at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// The class names of an official classifier, one per line (its file
    /// holds only the head: classes are named 0…K−1 otherwise).
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Where to write the confusion matrix picture (default: confusion.png
    /// beside the checkpoint).
    #[arg(long)]
    pub confusion: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn evaluate_run(args: EvaluateArgs) -> Result<()> {
    let (model, norm) = classifier(&args.checkpoint, &args.official, args.class_names.as_deref())?;
    let e = &model.config.encoder;
    let (size, chans) = (e.img_size(), e.in_chans());
    let split = args.split.split();
    let ds = args.data.open(split, size, chans)?;
    check_labelled(ds.as_ref(), model.config.num_classes)
        .with_context(|| format!("evaluating {}", args.checkpoint.display()))?;
    let t = Transform::eval(e, &norm);
    let bar = ProgressBar::new(0);
    if args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let r = evaluate(&model, ds.as_ref(), &t, args.batch.max(1), args.limit, &mut |d, n| {
        bar.set_length(n as u64);
        bar.set_position(d as u64);
    })?;
    bar.finish_and_clear();
    let picture = args
        .confusion
        .clone()
        .unwrap_or_else(|| beside(&args.checkpoint, "confusion.png"));
    let img = tessera_mim::io::picture::confusion_matrix(&r.confusion);
    tessera_mim::io::picture::save_png(&img, &picture)?;
    if args.json {
        let mut line = serde_json::to_value(&r)?;
        line["confusion_png"] = picture.display().to_string().into();
        println!("{line}");
        return Ok(());
    }
    println!(
        "{} on {} ({} images): top-1 {:.2}%, top-5 {:.2}%",
        args.checkpoint.display(),
        ds.name(),
        r.images,
        100.0 * r.top1,
        100.0 * r.top5
    );
    println!("{:<24} {:>8} {:>9}", "class", "images", "accuracy");
    for (c, acc) in r.per_class().iter().enumerate() {
        let n: usize = r.confusion[c].iter().sum();
        let acc = acc.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        println!("{:<24} {n:>8} {acc:>9}", printable(&r.class_names[c]));
    }
    println!(
        "confusion matrix (rows: true class, columns: predicted) in {}",
        picture.display()
    );
    Ok(())
}

// ------------------------------------------------------------ predict

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A fine-tuned checkpoint: Tessera's, or a released classifier (MAE's,
    /// timm's vit_*/swin_*, BEiT's or SimMIM's; `.pth` or safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub official: OfficialArgs,
    /// Image files (PNG/JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to print per image.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// The class names of an official classifier, one per line (its file
    /// holds only the head: classes are named 0…K−1 otherwise).
    #[arg(long)]
    pub class_names: Option<PathBuf>,
}

/// The classifier of `checkpoint`, its classes named from `names` if given
/// (one per line, as many as the head has outputs).
fn classifier(
    checkpoint: &std::path::Path,
    official: &OfficialArgs,
    names: Option<&std::path::Path>,
) -> Result<(Classifier, tessera_mim::data::Normalization)> {
    let (mut model, norm) = load_classifier(checkpoint, &official.hints())?;
    if let Some(path) = names {
        let list = read_class_names(path)?;
        if list.len() != model.config.num_classes {
            bail!(
                "{} names {} classes, but the classifier in {} has {}",
                path.display(),
                list.len(),
                checkpoint.display(),
                model.config.num_classes
            );
        }
        model.config.class_names = list;
    }
    Ok((model, norm))
}

/// Class names from a file, one per line (blank lines skipped).
pub fn read_class_names(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Images `predict` decodes and classifies at once.
const PREDICT_BATCH: usize = 64;

/// `name` in the folder of `file`.
fn beside(file: &std::path::Path, name: &str) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name),
        _ => PathBuf::from(name),
    }
}

pub fn predict_run(args: PredictArgs) -> Result<()> {
    if args.top == 0 {
        bail!("--top must be at least 1");
    }
    let (model, norm) = classifier(&args.checkpoint, &args.official, args.class_names.as_deref())?;
    let t = Transform::eval(&model.config.encoder, &norm);
    let k = model.config.num_classes;
    // A batch at a time: memory stays that of one batch, whatever the
    // number of files, and each line is printed as soon as it is known.
    for files in args.images.chunks(PREDICT_BATCH) {
        let imgs = load_images(files, &t)?;
        let probs = probabilities(&model, &imgs)?;
        for (i, path) in files.iter().enumerate() {
            let row = &probs[i * k..(i + 1) * k];
            let best: Vec<String> = top_k(row, args.top.min(k))
                .into_iter()
                .map(|c| format!("{} {:.1}%", printable(&model.config.class_names[c]), 100.0 * row[c]))
                .collect();
            println!("{}: {}", path.display(), best.join(", "));
        }
    }
    Ok(())
}
