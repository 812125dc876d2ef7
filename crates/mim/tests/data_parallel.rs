//! Data-parallel training: N ranks (threads standing in for MPI processes)
//! match one process on the same global batch, step by step, with odd rank
//! counts, gradient accumulation, drop path and SimMIM; a run resumes with
//! another rank count; mismatched ranks are refused.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tessera_mim::data::synthetic::SyntheticDataset;
use tessera_mim::data::{Dataset, Split};
use tessera_mim::run::RunOptions;
use tessera_mim::run::pretrain::{Pictures, PretrainRun};
use tessera_mim::train::distributed::{Communicator, ThreadGroup};
use tessera_mim::train::pretrain::{TrainConfig, Trainer};
use tessera_mim::{EncoderConfig, ModelConfig};
use tessera_tensor::Tensor;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(model: ModelConfig, batch: usize, accum: usize, total: u64) -> TrainConfig {
    let mut c = TrainConfig::mae(model, batch, total);
    c.base_lr = 0.5; // peak lr 0.5 · batch / 256: a tiny model moves visibly
    c.warmup_steps = 2;
    c.accum_steps = accum;
    c.clip_grad = Some(5.0);
    c
}

fn with_drop_path(mut m: ModelConfig, rate: f32) -> ModelConfig {
    if let EncoderConfig::Vit(v) = &mut m.encoder {
        v.drop_path = rate;
    }
    m
}

/// Rows `rows` of `imgs (B, C, H, W)`.
fn take_rows(imgs: &Tensor, rows: &[usize]) -> Tensor {
    let s = imgs.shape().to_vec();
    let per: usize = s[1..].iter().product();
    let d = imgs.data();
    let v: Vec<f32> = rows.iter().flat_map(|&r| d[r * per..(r + 1) * per].to_vec()).collect();
    Tensor::new(v, &[rows.len(), s[1], s[2], s[3]]).unwrap()
}

/// Losses and final weights of `steps` steps, on one process or over `ranks`
/// threads (rank 0's view; every rank's losses must agree).
type Trajectory = (Vec<f32>, Vec<(String, Vec<f32>)>);

fn train(config: &TrainConfig, steps: usize, ranks: Option<usize>) -> Trajectory {
    train_with(config, steps, ranks, true)
}

/// [`train`], choosing whether gradient sums start during backward.
fn train_with(config: &TrainConfig, steps: usize, ranks: Option<usize>, overlap: bool) -> Trajectory {
    let batches: Vec<Tensor> = (0..steps)
        .map(|i| images(config.batch_size, 3, 16, 16, 500 + i as u64))
        .collect();
    let run = |comm: Option<ThreadGroup>| {
        let mut t = Trainer::new(config.clone()).unwrap();
        if let Some(c) = comm {
            t.set_communicator(Rc::new(c)).unwrap();
        }
        t.set_overlap(overlap);
        let rows = t.local_rows();
        let losses: Vec<f32> = batches
            .iter()
            .map(|b| t.train_step(&take_rows(b, &rows)).unwrap().loss)
            .collect();
        let weights: Vec<(String, Vec<f32>)> = t
            .model()
            .parameters()
            .into_iter()
            .map(|(n, p)| (n, p.to_vec()))
            .collect();
        (losses, weights)
    };
    match ranks {
        None => run(None),
        Some(n) => {
            let all = ThreadGroup::run(n, |c| run(Some(c)));
            for (r, (losses, weights)) in all.iter().enumerate() {
                assert_eq!(losses, &all[0].0, "rank {r} saw other losses than rank 0");
                assert_eq!(weights, &all[0].1, "rank {r}'s weights differ from rank 0's");
            }
            all.into_iter().next().unwrap()
        }
    }
}

fn assert_close(name: &str, one: &Trajectory, many: &Trajectory) {
    for (s, (a, b)) in one.0.iter().zip(&many.0).enumerate() {
        let rel = (a - b).abs() / a.abs().max(1e-12);
        assert!(
            rel <= 1e-5,
            "{name}: step {} loss {b} against {a} ({rel:e} relative)",
            s + 1
        );
    }
    for ((pname, a), (_, b)) in one.1.iter().zip(&many.1) {
        // The key's bias adds the same q·b_k to every score of a row, which
        // softmax ignores: its gradient is zero up to rounding, and AdamW
        // turns rounding of either sign into steps of ±lr. Its third of
        // `qkv.bias` is noise on one process as on several; skip it.
        let d = a.len() / 3;
        let noise = |i: usize| pname.ends_with("attn.qkv.bias") && (d..2 * d).contains(&i);
        let worst = a
            .iter()
            .zip(b)
            .enumerate()
            .filter(|&(i, _)| !noise(i))
            .map(|(_, (x, y))| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: {pname} differs by {worst}");
    }
}

#[test]
fn ranks_match_one_process_on_the_global_batch() {
    // Batch 7: slices of 4+3, 3+2+2 (uneven); drop path on, so its draws are
    // sharded too; 6 steps through warm-up.
    let c = config(with_drop_path(tiny_mae(norm_pix()), 0.2), 7, 1, 6);
    let one = train(&c, 6, None);
    assert!(one.0[5] < one.0[0], "the loss falls: {:?}", one.0);
    for n in [1, 2, 3] {
        assert_close(&format!("{n} ranks"), &one, &train(&c, 6, Some(n)));
    }
    // Sums started after backward rather than during it: the same sums.
    assert_close("3 ranks, sums after backward", &one, &train_with(&c, 6, Some(3), false));
}

#[test]
fn ranks_match_with_accumulation_and_simmim() {
    let c = config(tiny_simmim(norm_pix()), 8, 2, 4);
    let one = train(&c, 4, None);
    for n in [2, 3] {
        assert_close(
            &format!("SimMIM, accumulation 2, {n} ranks"),
            &one,
            &train(&c, 4, Some(n)),
        );
    }
}

#[test]
fn a_batch_smaller_than_the_rank_count_is_refused() {
    let c = config(tiny_mae(norm_pix()), 4, 2, 4);
    let e = ThreadGroup::run(3, |comm| {
        let mut t = Trainer::new(c.clone()).unwrap();
        t.set_communicator(Rc::new(comm)).unwrap_err().to_string()
    });
    assert!(e[0].contains("cannot be split over 3 ranks"), "{}", e[0]);
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn options(dir: &Path) -> RunOptions {
    RunOptions {
        ckpt_every: 3,
        ..RunOptions::new(dir)
    }
}

/// A pre-training run with pictures of 2 images, only at the end.
fn pretrain_run<'a>(c: TrainConfig, train: &'a dyn Dataset, test: &'a dyn Dataset, o: RunOptions) -> PretrainRun<'a> {
    let mut run = PretrainRun::new(c, train, test, o).unwrap();
    run.pictures = Pictures { every: 0, count: 2 };
    run
}

/// A pre-training run over `ranks` threads (all ranks write into `dir`'s
/// view: rank 0 writes, the others must not).
fn pretrain_ranks(ranks: usize, dir: &Path, total: u64, stop_after: Option<u64>, resume: bool) {
    let train = SyntheticDataset::new(40, [16, 16], 3, 0, Split::Train).unwrap();
    let test = SyntheticDataset::new(4, [16, 16], 3, 0, Split::Test).unwrap();
    let c = config(tiny_mae(norm_pix()), 5, 1, total);
    ThreadGroup::run(ranks, |comm| {
        let rank = comm.rank();
        let mut o = options(dir);
        o.stop_after = stop_after;
        o.resume = resume;
        let mut run = pretrain_run(c.clone(), &train, &test, o);
        run.set_communicator(Rc::new(comm)).unwrap();
        let end = run.run(&mut ()).unwrap();
        assert_eq!(end.picture.is_some(), rank == 0, "only rank 0 draws pictures");
    });
}

#[test]
fn pretraining_over_ranks_writes_once_and_resumes_with_another_count() {
    let one = tmp("one");
    pretrain_ranks(1, &one, 6, None, false);
    let three = tmp("three");
    pretrain_ranks(3, &three, 6, None, false);
    let (a, b) = (losses(&one), losses(&three));
    assert_eq!(b.len(), 6, "rank 0 alone writes metrics: one line per step");
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "step {}: {y} against {x}", s + 1);
    }
    // Stopped after 3 steps on 2 ranks, resumed on 3: the same trajectory.
    let split = tmp("split");
    pretrain_ranks(2, &split, 6, Some(3), false);
    pretrain_ranks(3, &split, 6, None, true);
    let c = losses(&split);
    assert_eq!(c.len(), 6);
    for (s, (x, y)) in a.iter().zip(&c).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "resumed, step {}: {y} against {x}",
            s + 1
        );
    }
    for d in [one, three, split] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn ranks_with_another_configuration_are_refused_at_start() {
    let train = SyntheticDataset::new(40, [16, 16], 3, 0, Split::Train).unwrap();
    let test = SyntheticDataset::new(4, [16, 16], 3, 0, Split::Test).unwrap();
    let dir = tmp("mismatch");
    let errors = ThreadGroup::run(2, |comm| {
        let mut c = config(tiny_mae(norm_pix()), 4, 1, 4);
        if comm.rank() == 1 {
            c.seed = 7; // another seed: another configuration
        }
        let out = dir.join(format!("rank{}", comm.rank()));
        let mut run = pretrain_run(c, &train, &test, options(&out));
        run.set_communicator(Rc::new(comm)).unwrap();
        run.run(&mut ()).unwrap_err().to_string()
    });
    for e in &errors {
        assert!(e.contains("rank 1 has another configuration"), "{e}");
    }
    assert!(!dir.join("rank0/checkpoint.safetensors").exists(), "nothing trained");
    let _ = std::fs::remove_dir_all(dir);
}
