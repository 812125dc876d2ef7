//! `tessera pretrain`: MAE / SimMIM pre-training.
//!
//! Writes into `--out`: `checkpoint.safetensors` (atomically, every
//! `--ckpt-every` steps and at the end), `metrics.jsonl` (one JSON object per
//! step), `config.json`, and `recon/step-NNNNNN.png` reconstructions of fixed
//! test images every `--recon-every` steps. `--resume` continues from the
//! checkpoint in `--out` along the exact trajectory of an uninterrupted run.

use crate::common::{DataArgs, MaskArgs, ModelArgs, PrecisionArg, eval_transform};
use crate::reconstruct::render_rows;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::Instant;
use tessera_mim::data::transform::{Augment, EpochSampler, Transform, load_batch};
use tessera_mim::data::{Dataset, Split};
use tessera_mim::train::{TrainConfig, Trainer};
use tessera_mim::viz::{NormPixView, save_png};
use tessera_mim::{Mask, MimModel, MimRng, TargetConfig};
use tessera_tensor::Tensor;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub mask: MaskArgs,
    /// Training length in epochs over the training split (instead of --steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Training length in optimizer steps.
    #[arg(long, default_value_t = 500)]
    pub steps: u64,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Learning rate per 256 images (the rate is blr · batch / 256). MAE uses
    /// 1.5e-4 for 800-epoch runs; the default suits short runs.
    #[arg(long, default_value_t = 1.5e-3)]
    pub blr: f32,
    /// Absolute peak learning rate (overrides --blr).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f32,
    /// AdamW weight decay (not applied to biases, norms, tokens, positions).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    /// Linear warm-up in steps (default: 5% of the steps).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Linear warm-up in epochs (instead of --warmup-steps).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Clip the global gradient norm.
    #[arg(long)]
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
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
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
}

/// The first `limit` images of a data set.
struct Limited<'a> {
    inner: &'a dyn Dataset,
    len: usize,
}

impl Dataset for Limited<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn native_size(&self) -> Option<[usize; 2]> {
        self.inner.native_size()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn label(&self, i: usize) -> Option<u32> {
        self.inner.label(i)
    }
    fn get(&self, i: usize) -> tessera_mim::Result<tessera_mim::data::RawImage> {
        self.inner.get(i)
    }
    fn normalization(&self) -> tessera_mim::data::Normalization {
        self.inner.normalization()
    }
}

pub fn run(args: Args) -> Result<()> {
    // Everything that can be wrong with the options is checked before the
    // output folder is touched.
    let model_cfg = args.model.build(args.data.native())?;
    let masking = args.mask.build(&model_cfg)?;
    let (size, chans) = (model_cfg.encoder.img_size, model_cfg.encoder.in_chans);
    let full = args.data.open(Split::Train, size, chans)?;
    let train_ds = Limited {
        len: args.limit.map_or(full.len(), |l| l.min(full.len())),
        inner: full.as_ref(),
    };
    let test_ds = args.data.open(Split::Test, size, chans)?;
    if args.batch == 0 || train_ds.len() < args.batch {
        bail!(
            "the batch of {} images is larger than the {} training images of {}",
            args.batch,
            train_ds.len(),
            train_ds.name()
        );
    }
    let sampler = EpochSampler {
        n: train_ds.len(),
        batch: args.batch,
        seed: args.seed,
    };
    let spe = sampler.steps_per_epoch() as f64;
    let total_steps = match args.epochs {
        Some(e) if e > 0.0 => (e * spe).round().max(1.0) as u64,
        Some(e) => bail!("--epochs must be positive, got {e}"),
        None => args.steps,
    };
    let warmup_steps = match (args.warmup_epochs, args.warmup_steps) {
        (Some(e), _) => (e * spe).round() as u64,
        (None, Some(s)) => s,
        (None, None) => total_steps / 20,
    };
    let mut config = TrainConfig::mae(model_cfg.clone(), args.batch, total_steps);
    config.masking = masking;
    config.base_lr = args.lr.map_or(args.blr, |lr| lr * 256.0 / args.batch as f32);
    config.min_lr = args.min_lr;
    config.weight_decay = args.weight_decay;
    config.warmup_steps = warmup_steps;
    config.clip_grad = args.clip_grad;
    config.accum_steps = args.accum;
    config.seed = args.seed;
    config.precision = args.precision.config();
    config.validate()?;

    let ckpt = args.out.join("checkpoint.safetensors");
    let mut trainer = if args.resume {
        if !ckpt.exists() {
            bail!("--resume: no checkpoint at {}", ckpt.display());
        }
        let t = Trainer::resume_checked(&ckpt, &model_cfg)?;
        if t.config.batch_size != args.batch {
            bail!(
                "{}: was trained with batch {}, not {}",
                ckpt.display(),
                t.config.batch_size,
                args.batch
            );
        }
        t
    } else {
        let mut model = MimModel::new(config.model.clone(), &mut MimRng::seed_from_u64(config.seed))?;
        if let TargetConfig::Codebook { size, .. } = config.model.target {
            let n = train_ds.len().min(4096);
            let (imgs, _) = load_batch(
                &train_ds,
                &(0..n).collect::<Vec<_>>(),
                &eval_transform(size_of(&config), chans, &train_ds.normalization()),
                0,
            )?;
            eprintln!("fitting a codebook of {size} entries on the patches of {n} images");
            model.fit_codebook(&imgs, 10, &mut MimRng::seed_from_u64(config.seed))?;
        }
        Trainer::with_model(config, model)?
    };
    let config = trainer.config.clone();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(args.out.join("config.json"), serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("cannot write {}", args.out.join("config.json").display()))?;

    // Fixed test images and masks for the reconstruction pictures.
    let norm = train_ds.normalization().for_channels(chans);
    let eval_t = eval_transform(size, chans, &norm);
    let n_recon = args.recon_count.min(test_ds.len());
    let (recon_imgs, _) = load_batch(test_ds.as_ref(), &(0..n_recon).collect::<Vec<_>>(), &eval_t, 0)?;
    let recon_mask = Mask::sample(
        trainer.masking(),
        n_recon,
        config.model.encoder.grid(),
        &mut MimRng::seed_from_u64(1234),
    );
    let write_recon = |trainer: &Trainer, step: u64| -> Result<PathBuf> {
        let img = render_rows(
            &trainer.model,
            &recon_imgs,
            &recon_mask,
            &norm,
            NormPixView::VisibleStats,
            None,
        )?;
        let path = args.out.join("recon").join(format!("step-{step:06}.png"));
        save_png(&img, &path)?;
        Ok(path)
    };

    let train_t = Transform {
        size,
        channels: chans,
        augment: (!args.no_augment).then(Augment::mae),
        norm: norm.clone(),
    };
    let start = trainer.step;
    if start >= config.total_steps {
        println!(
            "{} is already at step {start} of {}; nothing to do",
            ckpt.display(),
            config.total_steps
        );
        return Ok(());
    }
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out.join("metrics.jsonl"))
        .with_context(|| format!("cannot open {}", args.out.join("metrics.jsonl").display()))?;
    let bar = ProgressBar::new(config.total_steps);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(start);
    println!(
        "pre-training {} on {} ({} images, {} steps of {}, {} per epoch), masking {}, output {}",
        describe(&config),
        train_ds.name(),
        train_ds.len(),
        config.total_steps,
        config.batch_size,
        sampler.steps_per_epoch(),
        trainer.masking().describe(),
        args.out.display()
    );

    let seed = config.seed;
    let mut last = None;
    let mut rate = None::<f64>;
    let t0 = Instant::now();
    // The loader has a pool of its own: the training loop below holds a
    // worker of the main pool while it waits for the next batch, so work sent
    // to that pool would wait forever when it has one thread (`--threads 1`,
    // a one-core machine).
    let loader_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .build()
        .context("cannot start the data loader's threads")?;
    std::thread::scope(|scope| -> Result<()> {
        // Load the next batch while this one trains.
        let (tx, rx) = sync_channel(1);
        let loader_pool = &loader_pool;
        let (ds, sampler, train_t) = (&train_ds, &sampler, &train_t);
        let end = args
            .stop_after
            .map_or(config.total_steps, |s| s.clamp(start, config.total_steps));
        scope.spawn(move || {
            for step in start..end {
                let epoch = step / sampler.steps_per_epoch() as u64;
                let aug_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
                let batch = loader_pool
                    .install(|| load_batch(ds, &sampler.indices(step), train_t, aug_seed))
                    .map(|b| b.0);
                if tx.send((step, batch)).is_err() {
                    break;
                }
            }
        });
        let mut tick = Instant::now();
        for (step, batch) in rx {
            let batch: Tensor = batch?;
            let stats = trainer.train_step(&batch)?;
            let dt = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            let ips = config.batch_size as f64 / dt;
            let r = rate.map_or(ips, |r| 0.9 * r + 0.1 * ips);
            rate = Some(r);
            bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} img/s", stats.loss, stats.lr, r));
            bar.set_position(stats.step);
            let line = serde_json::json!({
                "step": stats.step,
                "epoch": step as f64 / sampler.steps_per_epoch() as f64,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "images_per_s": ips,
                "time_s": t0.elapsed().as_secs_f64(),
            });
            writeln!(metrics, "{line}").context("cannot append to metrics.jsonl")?;
            if stats.step % args.ckpt_every.max(1) == 0
                || stats.step == config.total_steps
                || Some(stats.step) == args.stop_after
            {
                trainer.save(&ckpt)?;
            }
            if args.recon_every > 0 && stats.step % args.recon_every == 0 {
                write_recon(&trainer, stats.step)?;
            }
            last = Some(stats);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let stats = last.context("no step ran")?;
    let recon = write_recon(&trainer, stats.step)?;
    println!(
        "done: step {}, loss {:.4}, {:.0} images/s; checkpoint {}; reconstructions {}",
        stats.step,
        stats.loss,
        rate.unwrap_or(0.0),
        ckpt.display(),
        recon.display()
    );
    Ok(())
}

fn size_of(config: &TrainConfig) -> [usize; 2] {
    config.model.encoder.img_size
}

/// "MAE vit (192/12/3, patch 4, 32x32x3), decoder 128/4/4, target norm-pix".
pub fn describe(config: &TrainConfig) -> String {
    let e = &config.model.encoder;
    let method = match &config.model.method {
        tessera_mim::Method::Mae { decoder } => format!(
            "MAE, decoder {}/{}/{}",
            decoder.embed_dim, decoder.depth, decoder.num_heads
        ),
        tessera_mim::Method::SimMim => "SimMIM".to_string(),
    };
    let target = match config.model.target {
        TargetConfig::Pixels { loss, norm_pix } => {
            format!("{}{:?} on pixels", if norm_pix { "normalised " } else { "" }, loss)
        }
        TargetConfig::Codebook { size, .. } => format!("codebook of {size}"),
    };
    format!(
        "ViT {}/{}/{} (patch {}, {}x{}x{}), {method}, target {target}, {:?} products",
        e.embed_dim, e.depth, e.num_heads, e.patch_size, e.img_size[0], e.img_size[1], e.in_chans, config.precision
    )
}
