//! `tessera pretrain`: MAE / SimMIM pre-training — options in, a progress bar
//! out; the run itself is `tessera_mim::run::pretrain::Pretrainer`.
//!
//! Writes into `--out`: `checkpoint.safetensors` (atomically, every
//! `--ckpt-every` steps and at the end), `metrics.jsonl` (one JSON object per
//! step), `config.json`, and `recon/step-NNNNNN.png` reconstructions of fixed
//! test images every `--recon-every` steps. `--resume` continues from the
//! checkpoint in `--out` along the exact trajectory of an uninterrupted run.

use crate::common::{DataArgs, MaskArgs, ModelArgs, PrecisionArg};
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tessera_mim::data::loader::EpochSampler;
use tessera_mim::data::{Dataset, First, Split};
use tessera_mim::io::checkpoint::parse_meta;
use tessera_mim::io::safetensors::TensorFile;
use tessera_mim::run::RunOptions;
use tessera_mim::run::pretrain::{Observer, Pretrainer, RunStart};
use tessera_mim::train::distributed::Communicator;
use tessera_mim::train::pretrain::TrainConfig;
use tessera_mim::{StepStats, TargetConfig};

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
    /// Output folder.
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Start over in an OUT that holds a run (its checkpoint, metrics and
    /// pictures are deleted); without it such a folder is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
    /// Also write one when this many minutes have passed since the last
    /// (0: steps only).
    #[arg(long, default_value_t = 5.0)]
    pub ckpt_minutes: f64,
    /// Write reconstructions every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub recon_every: u64,
    /// Test images in each reconstruction picture.
    #[arg(long, default_value_t = 6)]
    pub recon_count: usize,
    /// Turn off random resized crops and flips.
    #[arg(long)]
    pub no_augment: bool,
    /// Load at most this many training images (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Stop (with a checkpoint) after this step, as if interrupted; `--resume` continues.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Refuse runs estimated to need more than this many GiB (default: the
    /// memory the system reports available).
    #[arg(long)]
    pub max_memory: Option<f64>,
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
    let spe = EpochSampler {
        n: train_ds.len(),
        batch,
        seed: args.seed,
    }
    .steps_per_epoch() as f64;
    let total_steps = match args.epochs {
        Some(e) => (e * spe).round().max(1.0) as u64,
        None => args.steps,
    };
    let warmup_steps = match (args.warmup_epochs, args.warmup_steps) {
        (Some(e), _) => (e * spe).round() as u64,
        (None, Some(s)) => s,
        (None, None) => total_steps / 20,
    };
    let mut config = TrainConfig::mae(model_cfg, batch, total_steps);
    config.masking = masking;
    config.base_lr = args.lr.map_or(args.blr, |lr| lr * 256.0 / batch as f32);
    config.min_lr = args.min_lr;
    config.weight_decay = args.weight_decay;
    config.warmup_steps = warmup_steps;
    config.clip_grad = args.clip_grad;
    config.accum_steps = args.accum;
    config.seed = args.seed;
    config.precision = args.precision.config();
    if let (TargetConfig::Codebook { size, .. }, false, true) = (&config.model.target, args.resume, root) {
        eprintln!(
            "fitting a codebook of {size} entries on the patches of {} images",
            train_ds.len().min(4096)
        );
    }
    if let Some((old, ckpt)) = resumed {
        config = resumed_config(&args, config, old, &ckpt)?;
    }
    let options = RunOptions {
        out: args.out.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        ckpt_every: args.ckpt_every,
        recon_every: args.recon_every,
        recon_count: args.recon_count,
        augment: !args.no_augment,
        stop_after: args.stop_after,
        ckpt_interval: (args.ckpt_minutes > 0.0).then(|| Duration::from_secs_f64(args.ckpt_minutes * 60.0)),
        stop: Some(stop_on_signal()),
        max_memory: args.max_memory.map(|g| (g * (1u64 << 30) as f64) as u64),
    };
    let mut run = Pretrainer::new(config, &train_ds, test_ds.as_ref(), options)?;
    if comm.size() > 1 {
        if root {
            let floats: usize = run.trainer.model.parameters().iter().map(|(_, t)| t.numel()).sum();
            println!(
                "data-parallel over {}: global batch {}, up to {} images per rank and step, \
                 {:.1} MB of gradients summed per step",
                comm.describe(),
                run.trainer.config.batch_size,
                run.trainer.config.batch_size.div_ceil(comm.size()),
                floats as f64 * 4.0 / 1e6
            );
        }
        run.set_communicator(comm.clone())?;
        run.trainer.set_overlap(!args.no_overlap);
    }
    let config = run.trainer.config.clone();
    if run.trainer.step >= config.total_steps {
        if !root {
            return Ok(());
        }
        println!(
            "{} is already at step {} of {}; nothing to do",
            run.options().checkpoint().display(),
            run.trainer.step,
            config.total_steps
        );
        return Ok(());
    }
    let mut progress = Progress::new(&config, &args, test_ds.name(), !root);
    let end = run.run(&mut progress)?;
    progress.bar.finish_and_clear();
    let stats = end.last.context("no step ran")?;
    if !root {
        return Ok(());
    }
    if end.interrupted {
        println!(
            "interrupted at step {} of {}: checkpoint {}; run the same command with --resume to continue",
            stats.step,
            config.total_steps,
            end.checkpoint.display()
        );
        return Ok(());
    }
    println!(
        "done: step {}, loss {:.4}, {:.0} images/s; checkpoint {}; reconstructions {}",
        stats.step,
        stats.loss,
        end.images_per_s,
        end.checkpoint.display(),
        end.picture.map_or_else(String::new, |p| p.display().to_string())
    );
    Ok(())
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
    let ckpt = args.out.join("checkpoint.safetensors");
    if !args.resume || !ckpt.exists() {
        return Ok(None); // without a checkpoint the run says so
    }
    let old: TrainConfig = parse_meta(&TensorFile::load(&ckpt)?, "tessera.config", &ckpt)?;
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

/// A flag that the first Ctrl-C (SIGINT) or SIGTERM sets: the run then
/// finishes its step, writes a checkpoint and stops. A second one stops at
/// once (exit 130).
pub(crate) fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Under an MPI launcher every rank gets the signal; rank 0 says so.
    let speak = crate::ranks::launcher_rank().unwrap_or(0) == 0;
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            if speak {
                eprintln!("\nstopping now");
            }
            std::process::exit(130);
        }
        if speak {
            eprintln!("\nstopping after this step, with a checkpoint (Ctrl-C again to stop at once)");
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will stop without a checkpoint ({e})");
    }
    stop
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
    if !(a.ckpt_minutes >= 0.0 && a.ckpt_minutes.is_finite()) {
        bail!("--ckpt-minutes must be zero or positive, got {}", a.ckpt_minutes);
    }
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

/// The progress bar and the opening line.
struct Progress {
    bar: ProgressBar,
    description: String,
    out: PathBuf,
    batch: usize,
    /// The data set the reconstruction pictures come from.
    pictures_of: String,
}

impl Progress {
    fn new(config: &TrainConfig, args: &Args, pictures_of: String, silent: bool) -> Progress {
        Progress {
            bar: crate::common::step_bar(config.total_steps, args.quiet || silent),
            description: config.describe(),
            out: args.out.clone(),
            batch: config.batch_size,
            pictures_of,
        }
    }
}

impl Observer for Progress {
    fn started(&mut self, run: &RunStart) {
        self.bar.set_position(run.start_step);
        println!(
            "pre-training {} on {} ({} images, {} steps of {}, {} per epoch), masking {}, pictures of {}, output {}",
            self.description,
            run.data_name,
            run.train_images,
            run.total_steps,
            self.batch,
            run.steps_per_epoch,
            run.masking,
            self.pictures_of,
            self.out.display()
        );
    }
    fn step(&mut self, stats: &StepStats, images_per_s: f64) {
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} img/s",
            stats.loss, stats.lr, images_per_s
        ));
        self.bar.set_position(stats.step);
    }
}
