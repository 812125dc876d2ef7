//! `tessera pretrain`: MAE / SimMIM pre-training — options in, a progress bar
//! out; the run itself is `tessera_mim::run::pretrain::PretrainRun`.
//!
//! Writes into `--out`: `checkpoint.safetensors` (atomically, every
//! `--ckpt-every` steps and at the end), `metrics.jsonl` (one JSON object per
//! step), `config.json`, and `recon/step-NNNNNN.png` reconstructions of fixed
//! test images every `--recon-every` steps. `--resume` continues from the
//! checkpoint in `--out` along the exact trajectory of an uninterrupted run.

use crate::common::{DataArgs, MaskArgs, ModelArgs, PrecisionArg, Progress, RunArgs, already_done, report_end};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::rc::Rc;
use tessera_mim::data::{Dataset, First, Split};
use tessera_mim::io::checkpoint::train_config;
use tessera_mim::run::RunStart;
use tessera_mim::run::pretrain::{OnlineKnn, Pictures, PretrainRun};
use tessera_mim::train::distributed::Communicator;
use tessera_mim::train::pretrain::{TrainConfig, Trainer};
use tessera_mim::train::recipe::{LearningRate, Length, Schedule};
use tessera_mim::{ModelConfig, TargetConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub mask: MaskArgs,
    /// Training length in epochs over the training split (instead of --steps).
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<f64>,
    /// Training length in optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Learning rate per 256 images (the rate is blr · batch / 256). MAE uses
    /// 1.5e-4 for 800-epoch runs; the default, measured on the built-in demo,
    /// suits short runs of small models.
    #[arg(long, allow_negative_numbers = true, default_value_t = 6e-3)]
    pub blr: f32,
    /// Absolute peak learning rate (overrides --blr).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Final learning rate of the cosine schedule.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub min_lr: f32,
    /// AdamW weight decay (not applied to biases, norms, tokens, positions).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.05)]
    pub weight_decay: f32,
    /// Linear warm-up in steps (default: 5% of the steps).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Linear warm-up in epochs (instead of --warmup-steps).
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_epochs: Option<f64>,
    /// Clip the global gradient norm.
    #[arg(long, allow_negative_numbers = true)]
    pub clip_grad: Option<f32>,
    /// Split each batch into this many accumulated micro-batches.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Arithmetic of matrix products: f32, or bf16 mixed precision (Intel AMX or AVX512-BF16).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Seed of initialisation, masks, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
    /// Write reconstructions every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub recon_every: u64,
    /// Test images in each reconstruction picture.
    #[arg(long, default_value_t = 6)]
    pub recon_count: usize,
    /// Measure the representation every this many steps: a k-NN classifier
    /// (cosine, k = 20, temperature 0.07) on the frozen encoder's features of
    /// labelled train and test subsets, written to metrics.jsonl as
    /// knn_top1 (0: off; default: 100 on the built-in synthetic set, off on
    /// other data).
    #[arg(long)]
    pub knn_every: Option<u64>,
    /// Training images in the online k-NN's memory bank.
    #[arg(long, default_value_t = 1000)]
    pub knn_train: usize,
    /// Test images the online k-NN classifies.
    #[arg(long, default_value_t = 500)]
    pub knn_test: usize,
    /// Turn off random resized crops and flips.
    #[arg(long)]
    pub no_augment: bool,
    /// Load at most this many training images (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Under mpirun: sum gradients over ranks only after backward, instead
    /// of starting each bucket's sum while backward still runs (to measure
    /// what the overlap saves).
    #[arg(long)]
    pub no_overlap: bool,
    /// The ids of the options typed on the command line (filled by `main`):
    /// with `--resume`, those that differ from the checkpoint's run are refused.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// `tessera pretrain`, on one process or as one rank of `comm` (under
/// `mpirun`, built with `--features mpi`): every rank runs this same
/// function; rank 0 alone prints and writes.
pub fn run(args: Args, comm: Rc<dyn Communicator>) -> Result<()> {
    let root = comm.rank() == 0;
    // Everything that can be wrong with the options is checked before the
    // output folder is touched, and named by its option.
    check_options(&args)?;
    // Resuming: the checkpoint's run, unless options typed now say otherwise.
    let resumed = resumed_run(&args)?;
    let model_cfg = match &resumed {
        Some((old, _)) if !typed_any(&args, &model_ids()) => old.model.clone(),
        _ => args.model.build(args.data.native())?,
    };
    let masking = args.mask.build(&model_cfg)?;
    let batch = match &resumed {
        Some((old, _)) if !args.given.iter().any(|g| g == "batch") => old.batch_size,
        _ => args.batch,
    };
    let (size, chans) = (model_cfg.encoder.img_size(), model_cfg.encoder.in_chans());
    let full = args.data.open(Split::Train, size, chans)?;
    let train_ds = First::new(full.as_ref(), args.limit.unwrap_or(usize::MAX));
    let test_ds = args.data.open(Split::Test, size, chans)?;
    let mut config = recipe(&args, model_cfg, batch, train_ds.len());
    config.masking = masking;
    if let (TargetConfig::Codebook { size, .. }, false, true) = (&config.model.target, args.run.resume, root) {
        eprintln!(
            "fitting a codebook of {size} entries on the patches of {} images",
            train_ds.len().min(4096)
        );
    }
    if let Some((old, ckpt)) = resumed {
        config = resumed_config(&args, config, old, &ckpt)?;
    }
    let mut run = PretrainRun::new(config, &train_ds, test_ds.as_ref(), args.run.options("runs/pretrain")?)?;
    run.augment = !args.no_augment;
    run.pictures = Pictures {
        every: args.recon_every,
        count: args.recon_count,
    };
    let synthetic = args.data.data == crate::common::DataKind::Synthetic;
    run.knn = OnlineKnn {
        every: args.knn_every.unwrap_or(if synthetic { 100 } else { 0 }),
        train: args.knn_train,
        test: args.knn_test,
        ..OnlineKnn::default()
    };
    if comm.size() > 1 {
        if root {
            announce_ranks(run.trainer(), comm.as_ref());
        }
        run.set_communicator(comm.clone())?;
        run.set_overlap(!args.no_overlap);
    }
    let config = run.trainer().config().clone();
    if already_done(run.options(), run.trainer().step(), config.total_steps, root) {
        return Ok(());
    }
    let (what, batch) = (config.describe(), config.batch_size);
    let (masking, pictures_of) = (run.trainer().masking().describe(), test_ds.name());
    let out = run.options().out.clone();
    let mut progress = Progress::new(config.total_steps, args.run.quiet || !root, move |s: &RunStart| {
        format!(
            "pre-training {what} on {} ({} images, {} steps of {batch}, {} per epoch), masking {masking}, \
             pictures of {pictures_of}, output {}",
            s.data_name,
            s.train_images,
            s.total_steps,
            s.steps_per_epoch,
            out.display()
        )
    });
    let end = run.run(&mut progress)?;
    progress.bar.finish_and_clear();
    if !root {
        return Ok(());
    }
    report_end(&end, config.total_steps, |s| {
        format!(
            "done: step {}, loss {:.4}, {:.0} images/s; checkpoint {}; reconstructions {}",
            s.step,
            s.loss,
            end.images_per_s,
            end.checkpoint.display(),
            end.picture
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string())
        )
    })
}

/// MAE's recipe for `model` in batches of `batch` on `images` training
/// images, with the options given: `--epochs` or `--steps`,
/// `--warmup-epochs` or `--warmup-steps` (default 5%), `--lr` or `--blr`,
/// and the optimizer's options.
fn recipe(args: &Args, model: ModelConfig, batch: usize, images: usize) -> TrainConfig {
    let schedule = Schedule {
        length: args.epochs.map_or(Length::Steps(args.steps), Length::Epochs),
        warmup: match (args.warmup_epochs, args.warmup_steps) {
            (Some(e), _) => Some(Length::Epochs(e)),
            (None, s) => s.map(Length::Steps),
        },
        lr: args.lr.map_or(LearningRate::Per256(args.blr), LearningRate::Peak),
    };
    let mut config = TrainConfig::scheduled(model, batch, &schedule, images);
    config.min_lr = args.min_lr;
    config.weight_decay = args.weight_decay;
    config.clip_grad = args.clip_grad;
    config.accum_steps = args.accum;
    config.seed = args.seed;
    config.precision = args.precision.config();
    config
}

/// What data-parallel training will do, said once (by rank 0).
fn announce_ranks(trainer: &Trainer, comm: &dyn Communicator) {
    let floats: usize = trainer.model().parameters().iter().map(|(_, t)| t.numel()).sum();
    let batch = trainer.config().batch_size;
    println!(
        "data-parallel over {}: global batch {batch}, up to {} images per rank and step, \
         {:.1} MB of gradients summed per step",
        comm.describe(),
        batch.div_ceil(comm.size()),
        floats as f64 * 4.0 / 1e6
    );
}

/// The ids of the model options (`--dim`, `--preset`, …).
fn model_ids() -> Vec<String> {
    let cmd = <ModelArgs as clap::Args>::augment_args(clap::Command::new("model"));
    cmd.get_arguments().map(|a| a.get_id().to_string()).collect()
}

/// True if any of `ids` was typed on the command line.
fn typed_any(args: &Args, ids: &[String]) -> bool {
    ids.iter().any(|id| args.given.contains(id))
}

/// With `--resume` and a checkpoint in `--out`: its configuration and path.
fn resumed_run(args: &Args) -> Result<Option<(TrainConfig, PathBuf)>> {
    let ckpt = args.run.out("runs/pretrain").join("checkpoint.safetensors");
    if !args.run.resume || !ckpt.exists() {
        return Ok(None); // without a checkpoint the run says so
    }
    let old = train_config(&ckpt)?.with_context(|| format!("{} is not a pre-training checkpoint", ckpt.display()))?;
    Ok(Some((old, ckpt)))
}

/// With `--resume`: the checkpoint's own configuration `old`, refusing by name
/// any option typed on the command line that differs from it, and taking the
/// length from `--steps`/`--epochs` if given (a finished run may be extended).
fn resumed_config(args: &Args, config: TrainConfig, old: TrainConfig, ckpt: &std::path::Path) -> Result<TrainConfig> {
    let mask_ids: Vec<String> = <MaskArgs as clap::Args>::augment_args(clap::Command::new("mask"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let typed = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| args.given.contains(n))
            .map(|n| format!("--{}", n.replace('_', "-")))
            .collect()
    };
    let own = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let model_typed = typed(&model_ids());
    if config.model != old.model && !model_typed.is_empty() {
        bail!(
            "--resume: the model options typed ({}) describe another model configuration than the run in {}",
            model_typed.join(", "),
            ckpt.display()
        );
    }
    let checks: [(Vec<String>, bool); 10] = [
        (mask_ids, config.masking == old.masking),
        (own(&["batch"]), config.batch_size == old.batch_size),
        (own(&["lr", "blr"]), config.base_lr == old.base_lr),
        (own(&["min_lr"]), config.min_lr == old.min_lr),
        (own(&["weight_decay"]), config.weight_decay == old.weight_decay),
        (
            own(&["warmup_steps", "warmup_epochs"]),
            config.warmup_steps == old.warmup_steps,
        ),
        (own(&["clip_grad"]), config.clip_grad == old.clip_grad),
        (own(&["accum"]), config.accum_steps == old.accum_steps),
        (own(&["seed"]), config.seed == old.seed),
        (own(&["precision"]), config.precision == old.precision),
    ];
    let conflicts: Vec<String> = checks
        .iter()
        .filter(|(_, same)| !same)
        .flat_map(|(names, _)| typed(names))
        .collect();
    if !conflicts.is_empty() {
        bail!(
            "--resume: {} differ(s) from the run in {}; leave them out to continue it as it was",
            conflicts.join(", "),
            ckpt.display()
        );
    }
    let mut resolved = old;
    if args.given.iter().any(|g| g == "steps" || g == "epochs") {
        resolved.total_steps = config.total_steps;
    }
    Ok(resolved)
}

/// The options whose values can be wrong on their own, by name.
fn check_options(a: &Args) -> Result<()> {
    let positive = |name: &str, v: Option<f64>| match v {
        Some(x) if !(x > 0.0 && x.is_finite()) => bail!("{name} must be a positive number, got {x}"),
        _ => Ok(()),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.epochs.is_none() && a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    positive("--epochs", a.epochs)?;
    positive("--blr", Some(a.blr as f64))?;
    positive("--lr", a.lr.map(f64::from))?;
    positive("--clip-grad", a.clip_grad.map(f64::from))?;
    if !(a.min_lr >= 0.0 && a.min_lr.is_finite()) {
        bail!("--min-lr must be zero or positive, got {}", a.min_lr);
    }
    if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
        bail!("--weight-decay must be zero or positive, got {}", a.weight_decay);
    }
    if let Some(w) = a.warmup_epochs
        && !(w >= 0.0 && w.is_finite())
    {
        bail!("--warmup-epochs must be zero or positive, got {w}");
    }
    Ok(())
}
