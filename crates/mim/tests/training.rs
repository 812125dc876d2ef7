//! Training: schedule, determinism, checkpoints, resumption, bad states.

mod common;

use common::*;
use std::path::PathBuf;
use tessera_mim::io::checkpoint::load_model;
use tessera_mim::train::pretrain::{TrainConfig, Trainer};
use tessera_mim::train::recipe::decays;
use tessera_mim::{MaskingConfig, MimError, Pool, TargetConfig};
use tessera_tensor::Tensor;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(total: u64) -> TrainConfig {
    let mut c = TrainConfig::mae(tiny_mae(norm_pix()), 4, total);
    c.base_lr = 0.5; // peak lr = 0.5 · 4 / 256 ≈ 7.8e-3 for a tiny model
    c.warmup_steps = 2;
    c.clip_grad = Some(5.0);
    c
}

fn batches(n: usize) -> Vec<Tensor> {
    (0..n).map(|i| images(4, 3, 16, 16, 100 + i as u64)).collect()
}

#[test]
fn learning_rate_schedule_is_maes() {
    let c = config(10);
    let peak = 0.5 * 4.0 / 256.0;
    assert_eq!(c.lr_at(0), 0.0);
    assert!((c.lr_at(1) - peak / 2.0).abs() < 1e-9);
    assert!((c.lr_at(2) - peak).abs() < 1e-9);
    // Halfway through the cosine: half the peak.
    assert!((c.lr_at(6) - peak / 2.0).abs() < 1e-7);
    assert!(c.lr_at(10).abs() < 1e-9);
}

#[test]
fn weight_decay_skips_biases_norms_tokens_and_positions() {
    let t = Trainer::new(config(4)).unwrap();
    for (name, p) in t.model().parameters() {
        let want = !(name.ends_with(".bias")
            || name.contains("norm")
            || name.ends_with("token")
            || name.ends_with("pos_embed"));
        assert_eq!(decays(&name, &p), want, "{name}");
    }
}

#[test]
fn same_seed_same_losses_whatever_the_thread_count() {
    let data = batches(3);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut t = Trainer::new(config(3)).unwrap();
            data.iter()
                .map(|b| t.train_step(b).unwrap().loss.to_bits())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn loss_falls_when_training_on_a_few_batches() {
    let data = batches(2);
    let mut c = config(60);
    c.masking = MaskingConfig::Random { ratio: 0.5 };
    let mut t = Trainer::new(c).unwrap();
    let mut losses = vec![];
    for s in 0..60 {
        losses.push(t.train_step(&data[s % 2]).unwrap().loss);
    }
    let head: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = losses[55..].iter().sum::<f32>() / 5.0;
    assert!(tail < 0.7 * head, "loss {head} → {tail}");
}

#[test]
fn resume_continues_the_exact_trajectory() {
    let dir = tmp("resume");
    let data = batches(6);
    let mut straight = Trainer::new(config(6)).unwrap();
    let full: Vec<u32> = data
        .iter()
        .map(|b| straight.train_step(b).unwrap().loss.to_bits())
        .collect();

    let mut first = Trainer::new(config(6)).unwrap();
    for b in &data[..3] {
        first.train_step(b).unwrap();
    }
    let path = dir.join("ckpt.safetensors");
    first.save(&path).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&path).unwrap();
    assert_eq!(resumed.step(), 3);
    let rest: Vec<u32> = data[3..]
        .iter()
        .map(|b| resumed.train_step(b).unwrap().loss.to_bits())
        .collect();
    assert_eq!(&full[3..], &rest[..]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn gradient_accumulation_matches_the_full_batch() {
    let data = batches(1);
    let mut c = config(2);
    c.clip_grad = None;
    let mut whole = Trainer::new(c.clone()).unwrap();
    c.accum_steps = 2;
    let mut split = Trainer::new(c).unwrap();
    // Masks are drawn image by image in the same order, so both runs see the
    // same masks, and with equal hidden counts per image the mean of the two
    // half-batch losses is the full-batch loss.
    for _ in 0..2 {
        let a = whole.train_step(&data[0]).unwrap();
        let b = split.train_step(&data[0]).unwrap();
        assert!((a.loss - b.loss).abs() < 1e-5 * a.loss, "{} vs {}", a.loss, b.loss);
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
            "{} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
}

#[test]
fn save_then_load_gives_identical_outputs_and_other_sizes_load() {
    let dir = tmp("load");
    let mut t = Trainer::new(config(2)).unwrap();
    t.train_step(&batches(1)[0]).unwrap();
    let path = dir.join("m.safetensors");
    t.save(&path).unwrap();
    let imgs = images(2, 3, 16, 16, 9);
    let loaded = load_model(&path, None).unwrap();
    for pool in [Pool::Cls, Pool::Mean] {
        assert_eq!(
            t.model().features(&imgs, pool).unwrap().to_vec(),
            loaded.features(&imgs, pool).unwrap().to_vec()
        );
    }
    let mask = t.sample_mask(2);
    let mut r = <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0);
    let p1 = t.model().predict(&imgs, &mask, false, &mut r).unwrap().to_vec();
    let p2 = loaded.predict(&imgs, &mask, false, &mut r).unwrap().to_vec();
    assert_eq!(p1, p2);
    // At 24×24 (a 6×6 grid) the positional tables are regenerated.
    let bigger = load_model(&path, Some([24, 24])).unwrap();
    assert_eq!(
        bigger.encoder.vit().unwrap().pos_embed.as_ref().unwrap().shape(),
        &[1, 37, 32]
    );
    assert_eq!(
        bigger.features(&images(1, 3, 24, 24, 1), Pool::Mean).unwrap().shape(),
        &[1, 32]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn checkpoint_of_another_configuration_is_refused_by_name() {
    let dir = tmp("other");
    let path = dir.join("m.safetensors");
    Trainer::new(config(2)).unwrap().save(&path).unwrap();
    let mut other = tiny_mae(norm_pix());
    other.encoder.vit_mut().unwrap().depth = 3;
    let e = Trainer::resume_checked(&path, &other).err().unwrap().to_string();
    assert!(
        e.contains("m.safetensors") && e.contains("another model configuration"),
        "{e}"
    );
    // Loading weights into a differently shaped model names the tensor.
    let file = tessera_mim::io::safetensors::TensorFile::load(&path).unwrap();
    let mut wide = tessera_mim::MimModel::new(
        {
            let mut c = tiny_mae(norm_pix());
            c.encoder.vit_mut().unwrap().embed_dim = 64;
            c.encoder.vit_mut().unwrap().num_heads = 2;
            c
        },
        &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0),
    )
    .unwrap();
    let e = wide.load_state(&file, &path, None).unwrap_err().to_string();
    assert!(e.contains("has shape") && e.contains("another configuration"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_non_finite_loss_stops_before_the_update_and_names_the_step() {
    let mut t = Trainer::new(config(4)).unwrap();
    t.train_step(&batches(1)[0]).unwrap();
    let before: Vec<f32> = t.model().encoder.vit().unwrap().norm.as_ref().unwrap().weight.to_vec();
    let mut bad = images(4, 3, 16, 16, 1).to_vec();
    bad[5] = f32::NAN;
    let bad = Tensor::new(bad, &[4, 3, 16, 16]).unwrap();
    match t.train_step(&bad) {
        Err(e @ MimError::NonFinite { step, what, .. }) => {
            assert_eq!((step, what), (2, "loss"));
            assert!(e.to_string().starts_with("loss is not finite"), "{e}");
        }
        other => panic!("expected a non-finite error, got {:?}", other.map(|s| s.loss)),
    }
    assert_eq!(t.step(), 1);
    assert_eq!(
        t.model().encoder.vit().unwrap().norm.as_ref().unwrap().weight.to_vec(),
        before
    );
}

#[test]
fn wrong_batch_and_image_shapes_are_errors() {
    let mut t = Trainer::new(config(4)).unwrap();
    let e = t.train_step(&images(3, 3, 16, 16, 1)).unwrap_err().to_string();
    assert!(e.contains("takes 4 images"), "{e}");
    let e = t.train_step(&images(4, 1, 16, 16, 1)).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
}

#[test]
fn codebook_models_save_and_resume_their_vocabulary() {
    let dir = tmp("codebook");
    let mut c = config(3);
    c.model = tiny_simmim(TargetConfig::Codebook {
        size: 8,
        normalize: true,
    });
    c.masking = MaskingConfig::SimMim { ratio: 0.5, cell_px: 8 };
    let mut model = tessera_mim::MimModel::new(
        c.model.clone(),
        &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0),
    )
    .unwrap();
    model
        .fit_codebook(
            &images(8, 3, 16, 16, 3),
            5,
            &mut <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0),
        )
        .unwrap();
    let mut t = Trainer::with_model(c, model).unwrap();
    let data = batches(2);
    t.train_step(&data[0]).unwrap();
    let path = dir.join("c.safetensors");
    t.save(&path).unwrap();
    let next = t.train_step(&data[1]).unwrap().loss;
    let mut r = Trainer::resume(&path).unwrap();
    assert_eq!(r.model().codebook, t.model().codebook);
    assert_eq!(r.train_step(&data[1]).unwrap().loss.to_bits(), next.to_bits());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bf16_mixed_precision_trains_and_stays_close_to_f32() {
    if !tessera_kernels::gemm::bf16_available() {
        eprintln!("bf16 training: skipping: this CPU has neither AMX-BF16 (with OS support) nor AVX512-BF16");
        let mut c = config(2);
        c.precision = tessera_tensor::Precision::Bf16;
        let e = Trainer::new(c).err().unwrap().to_string();
        assert!(e.contains("AMX"), "{e}");
        return;
    }
    let data = batches(4);
    let mut c = config(40);
    let mut f32_run = Trainer::new(c.clone()).unwrap();
    c.precision = tessera_tensor::Precision::Bf16;
    let mut bf16_run = Trainer::new(c).unwrap();
    let (mut a, mut b) = (vec![], vec![]);
    for s in 0..40 {
        a.push(f32_run.train_step(&data[s % 4]).unwrap().loss);
        b.push(bf16_run.train_step(&data[s % 4]).unwrap().loss);
    }
    // Same masks and data: the first losses agree to bf16 rounding, and both
    // runs learn.
    assert!((a[0] - b[0]).abs() < 0.02 * a[0], "{} vs {}", a[0], b[0]);
    let tail = |v: &[f32]| v[35..].iter().sum::<f32>() / 5.0;
    assert!(
        tail(&b) < 0.8 * b[0] && (tail(&a) - tail(&b)).abs() < 0.1 * tail(&a),
        "f32 {a:?}\nbf16 {b:?}"
    );
    // The thread's precision is restored after each step.
    assert_eq!(tessera_tensor::matmul_precision(), tessera_tensor::Precision::F32);
}

/// An MAE `state_dict` without Tessera's metadata (what converting MAE's
/// released `.pth` gives): the configuration comes from the shapes and the
/// hints, and the loaded model computes exactly what the saved one did.
#[test]
fn official_state_dicts_load_by_shape_with_clear_errors() {
    use tessera_mim::io::checkpoint::load_model_hinted;
    use tessera_mim::io::official::ModelHints;
    use tessera_mim::io::safetensors::TensorFile;
    let dir = tmp("official");
    let mut t = Trainer::new(config(2)).unwrap();
    t.train_step(&batches(1)[0]).unwrap();
    let mut file = TensorFile::default();
    t.model().store_state(&mut file);
    let full = dir.join("mae.safetensors");
    file.save(&full).unwrap();
    let hints = ModelHints {
        heads: Some(2),
        decoder_heads: Some(2),
        norm_pix: Some(true),
        img_size: None,
    };
    let loaded = load_model_hinted(&full, None, &hints, true).unwrap();
    assert_eq!(loaded.config, t.model().config);
    let imgs = images(2, 3, 16, 16, 9);
    let mask = t.sample_mask(2);
    let mut r = <tessera_mim::MimRng as rand::SeedableRng>::seed_from_u64(0);
    assert_eq!(
        t.model().predict(&imgs, &mask, false, &mut r).unwrap().to_vec(),
        loaded.predict(&imgs, &mask, false, &mut r).unwrap().to_vec()
    );
    // A 32-wide encoder is no preset: without hints the error asks for the heads.
    let e = load_model(&full, None).err().unwrap().to_string();
    assert!(e.contains("`ModelHints::heads`") && e.contains("32-wide"), "{e}");

    // The encoder alone: fine for features, refused where the decoder is needed.
    let mut enc = file.clone();
    enc.tensors
        .retain(|name, _| tessera_mim::io::official::is_encoder_tensor(name));
    let enc_path = dir.join("encoder.safetensors");
    enc.save(&enc_path).unwrap();
    let e_model = load_model_hinted(&enc_path, None, &hints, false).unwrap();
    assert_eq!(
        e_model.features(&imgs, Pool::Mean).unwrap().to_vec(),
        t.model().features(&imgs, Pool::Mean).unwrap().to_vec()
    );
    let e = load_model_hinted(&enc_path, None, &hints, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoder alone"), "{e}");

    // Missing and unexpected tensors are listed by name in one error.
    let mut bad = file.clone();
    bad.tensors.remove("blocks.1.attn.proj.bias");
    let extra = bad.tensors["norm.bias"].clone();
    bad.tensors.insert("blocks.0.attn.extra".into(), extra);
    let bad_path = dir.join("bad.safetensors");
    bad.save(&bad_path).unwrap();
    let e = load_model_hinted(&bad_path, None, &hints, true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing 1 tensor(s): blocks.1.attn.proj.bias")
            && e.contains("unexpected 1 tensor(s): blocks.0.attn.extra"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// What an observer saw of a run.
#[derive(Default)]
struct Seen {
    started: Vec<u64>,
    steps: Vec<u64>,
    checkpoints: Vec<u64>,
    pictures: Vec<u64>,
    evaluated: Vec<u64>,
    knn: Vec<(u64, f32)>,
}

impl tessera_mim::run::Observer for Seen {
    fn started(&mut self, run: &tessera_mim::run::RunStart) {
        self.started.push(run.start_step);
    }
    fn step(&mut self, s: &tessera_mim::StepStats, _: f64) {
        self.steps.push(s.step);
    }
    fn checkpoint(&mut self, _: &std::path::Path, step: u64) {
        self.checkpoints.push(step);
    }
    fn picture(&mut self, p: &std::path::Path, step: u64) {
        assert!(p.exists());
        self.pictures.push(step);
    }
    fn evaluated(&mut self, epoch: u64, _: &tessera_mim::eval::accuracy::EvalReport) {
        self.evaluated.push(epoch);
    }
    fn knn(&mut self, step: u64, top1: f32) {
        self.knn.push((step, top1));
    }
}

/// The online k-NN: every `every` steps, on the fixed subsets, into the
/// metrics and to the observer, the same numbers; refused on unlabelled
/// data or with k = 0, before anything is written.
#[test]
fn the_online_knn_measures_every_n_steps() {
    use tessera_mim::data::Split;
    use tessera_mim::data::synthetic::SyntheticDataset;
    use tessera_mim::run::RunOptions;
    use tessera_mim::run::pretrain::{OnlineKnn, PretrainRun};
    let train = SyntheticDataset::new(48, [16, 16], 3, 0, Split::Train).unwrap();
    let test = SyntheticDataset::new(24, [16, 16], 3, 0, Split::Test).unwrap();
    let dir = tmp("online-knn");
    let mut run = PretrainRun::new(config(4), &train, &test, RunOptions::new(&dir)).unwrap();
    run.knn = OnlineKnn {
        every: 2,
        train: 30,
        test: 20,
        ..OnlineKnn::default()
    };
    let mut seen = Seen::default();
    run.run(&mut seen).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("knn_top1").is_some())
        .collect();
    let written: Vec<(u64, f32)> = lines
        .iter()
        .map(|v| (v["step"].as_u64().unwrap(), v["knn_top1"].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(written, seen.knn);
    assert_eq!(seen.knn.iter().map(|k| k.0).collect::<Vec<_>>(), [2, 4]);
    for v in &lines {
        assert_eq!((v["knn_train"].as_u64(), v["knn_test"].as_u64()), (Some(30), Some(20)));
        assert!(v["knn_s"].as_f64().unwrap() >= 0.0);
        let top1 = v["knn_top1"].as_f64().unwrap();
        // 20 test images: a multiple of 1/20.
        assert!((top1 * 20.0 - (top1 * 20.0).round()).abs() < 1e-4, "{top1}");
    }
    // k = 0 is refused by name, and the folder keeps nothing of the run.
    let bad = tmp("online-knn-bad");
    let mut run = PretrainRun::new(config(4), &train, &test, RunOptions::new(&bad)).unwrap();
    run.knn = OnlineKnn {
        every: 2,
        k: 0,
        ..OnlineKnn::default()
    };
    let e = run.run(&mut ()).err().unwrap().to_string();
    assert!(e.contains("k-NN"), "{e}");
    assert!(!bad.join("metrics.jsonl").exists());
}

/// Pre-training as a library call: the observer sees every step, checkpoint
/// and picture; a run stopped halfway and resumed writes the same metrics as
/// one that was not.
#[test]
fn pretrainer_runs_observes_and_resumes_exactly() {
    use std::path::Path;
    use tessera_mim::data::Split;
    use tessera_mim::data::synthetic::SyntheticDataset;
    use tessera_mim::run::RunOptions;
    use tessera_mim::run::pretrain::{Pictures, PretrainRun};
    let train = SyntheticDataset::new(48, [16, 16], 3, 0, Split::Train).unwrap();
    let test = SyntheticDataset::new(8, [16, 16], 3, 0, Split::Test).unwrap();
    let options = |dir: &Path| RunOptions {
        ckpt_every: 2,
        ..RunOptions::new(dir)
    };
    let pretrain = |c: TrainConfig, o: RunOptions| {
        PretrainRun::new(c, &train, &test, o).map(|mut run| {
            run.pictures = Pictures { every: 2, count: 2 };
            run
        })
    };
    let straight = tmp("pretrainer-straight");
    let mut seen = Seen::default();
    let end = pretrain(config(4), options(&straight)).unwrap().run(&mut seen).unwrap();
    assert_eq!(end.last.unwrap().step, 4);
    assert_eq!(seen.started, vec![0]);
    assert_eq!(seen.steps, vec![1, 2, 3, 4]);
    assert_eq!(seen.checkpoints, vec![2, 4]);
    assert_eq!(seen.pictures, vec![2, 4, 4]);
    for f in [
        "checkpoint.safetensors",
        "metrics.jsonl",
        "config.json",
        "recon/step-000002.png",
    ] {
        assert!(straight.join(f).exists(), "missing {f}");
    }

    let split = tmp("pretrainer-split");
    let mut first = options(&split);
    first.stop_after = Some(2);
    pretrain(config(4), first).unwrap().run(&mut ()).unwrap();
    let mut again = options(&split);
    again.resume = true;
    let mut seen = Seen::default();
    pretrain(config(4), again).unwrap().run(&mut seen).unwrap();
    assert_eq!(seen.started, vec![2]);
    let losses = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["step"], v["loss"])
            })
            .collect()
    };
    assert_eq!(losses(&split), losses(&straight));
    // A batch larger than the data set is refused before anything is written.
    let empty = tmp("pretrainer-refused");
    let mut big = config(4);
    big.batch_size = 64;
    let e = pretrain(big, options(&empty.join("out"))).err().unwrap().to_string();
    assert!(e.contains("larger than the 48 training images"), "{e}");
    assert!(!empty.join("out").exists());
    for d in [straight, split, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Pre-training and fine-tuning run the same loop: for the same options
/// they checkpoint at the same steps (every `ckpt_every`, at the end, and
/// where `stop_after` stops them), and fine-tuning validates at the end of
/// every epoch and of the run.
#[test]
fn both_loops_checkpoint_at_the_same_steps() {
    use tessera_mim::data::synthetic::SyntheticDataset;
    use tessera_mim::data::{Dataset, Normalization, Split};
    use tessera_mim::model::classifier::ClassifierConfig;
    use tessera_mim::run::RunOptions;
    use tessera_mim::run::finetune::FinetuneRun;
    use tessera_mim::run::pretrain::PretrainRun;
    use tessera_mim::train::finetune::Finetuner;
    use tessera_mim::train::recipe::FinetuneConfig;
    // 48 images in batches of 8: 6 steps an epoch; 7 steps in all.
    let train = SyntheticDataset::new(48, [16, 16], 3, 0, Split::Train).unwrap();
    let test = SyntheticDataset::new(8, [16, 16], 3, 0, Split::Test).unwrap();
    let mut pre = config(7);
    pre.batch_size = 8;
    let classifier = ClassifierConfig::new(pre.model.encoder.clone(), train.class_names(), Pool::Mean, 0.0).unwrap();
    let recipe = FinetuneConfig::mae(classifier, Normalization::uniform(0.5, 0.25, 3), 8, 7);
    let dir = tmp("same-steps");
    for stop_after in [None, Some(5)] {
        let options = |name: &str| RunOptions {
            ckpt_every: 4,
            stop_after,
            ..RunOptions::new(dir.join(name))
        };
        let mut a = Seen::default();
        let p = options("pre");
        PretrainRun::new(pre.clone(), &train, &test, p)
            .unwrap()
            .run(&mut a)
            .unwrap();
        let mut b = Seen::default();
        let tuner = Finetuner::from_scratch(recipe.clone()).unwrap();
        let mut run = FinetuneRun::new(tuner, &train, &test, options("ft")).unwrap();
        run.val_limit = Some(8);
        let end = run.run(&mut b).unwrap();
        let want = if stop_after.is_some() { vec![4, 5] } else { vec![4, 7] };
        assert_eq!(a.checkpoints, want);
        assert_eq!(b.checkpoints, want, "fine-tuning checkpoints as pre-training does");
        // Validation after epoch 1 (step 6) and at the end (step 7), which
        // a run stopped at step 5 reaches neither.
        let (evaluated, images) = if stop_after.is_some() {
            (vec![], None)
        } else {
            (vec![1, 2], Some(8))
        };
        assert_eq!(b.evaluated, evaluated);
        assert_eq!(end.validation.map(|r| r.images), images);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A checkpoint whose weights hold NaN or infinity is refused, naming the
/// tensor, instead of running to a garbage picture and "loss NaN".
#[test]
fn non_finite_weights_are_refused_by_name() {
    use tessera_mim::io::safetensors::TensorFile;
    let dir = tmp("nan");
    let t = Trainer::new(config(2)).unwrap();
    let path = dir.join("m.safetensors");
    t.save(&path).unwrap();
    let mut file = TensorFile::load(&path).unwrap();
    file.tensors.get_mut("blocks.1.mlp.fc2.weight").unwrap().data[7] = f32::NAN;
    file.save(&path).unwrap();
    let e = load_model(&path, None).err().unwrap().to_string();
    assert!(e.contains("blocks.1.mlp.fc2.weight") && e.contains("non-finite"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Metadata that describes a model far larger than the file's tensors (a
/// small file claiming a 65536-wide model) is refused before anything is
/// built, instead of allocating gigabytes and aborting.
#[test]
fn metadata_claiming_a_huge_model_is_refused_before_building() {
    use tessera_mim::io::safetensors::TensorFile;
    let dir = tmp("huge-meta");
    let t = Trainer::new(config(2)).unwrap();
    let path = dir.join("m.safetensors");
    t.save(&path).unwrap();
    let mut file = TensorFile::load(&path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&file.metadata["tessera.config"]).unwrap();
    cfg["model"]["encoder"]["embed_dim"] = 65536.into();
    cfg["model"]["encoder"]["num_heads"] = 16.into();
    file.metadata.insert("tessera.config".into(), cfg.to_string());
    file.save(&path).unwrap();
    for e in [
        load_model(&path, None).err().unwrap().to_string(),
        Trainer::resume(&path).err().unwrap().to_string(),
    ] {
        assert!(e.contains("describes a model of") && e.contains("holds"), "{e}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Pictures show one image per class where labels exist, else images spread
/// over the set: never just the first few of a class-sorted set.
#[test]
fn pictures_take_one_image_per_class() {
    use tessera_mim::data::synthetic::SyntheticDataset;
    use tessera_mim::data::{Dataset, Split};
    use tessera_mim::run::pretrain::picture_indices;
    let ds = SyntheticDataset::new(200, [16, 16], 3, 0, Split::Test).unwrap();
    let idx = picture_indices(&ds, 6);
    assert_eq!(idx.len(), 6);
    let labels: std::collections::BTreeSet<u32> = idx.iter().map(|&i| ds.label(i).unwrap()).collect();
    assert_eq!(labels.len(), 6, "six different classes: {idx:?}");
    // More pictures than classes: a second round.
    let idx = picture_indices(&ds, 13);
    assert_eq!(idx.len(), 13);
    assert_eq!(idx.iter().collect::<std::collections::BTreeSet<_>>().len(), 13);
}
