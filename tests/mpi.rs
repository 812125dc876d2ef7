//! `mpirun -np N tessera pretrain …` end to end (built with `--features mpi`,
//! Open MPI installed: `.ci/run` installs it and runs these):
//! N = 1, 2 and 3 ranks match one process over 50 steps; a run stopped on
//! 2 ranks resumes on 3; a rank that cannot read its data, or that dies, ends
//! the job without a hang; ranks started with different options are refused.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mpi-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `mpirun` with what a test machine needs: ranks may outnumber cores, and
/// CI containers run as root.
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// A tiny MAE on 16×16 synthetic images, batch 7 (uneven slices) unless
/// `extra` sets one, drop path on, one thread.
fn args(out: &Path, steps: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--threads",
        "1",
        "pretrain",
        "--img-size",
        "16",
        "--patch",
        "4",
        "--dim",
        "32",
        "--depth",
        "2",
        "--heads",
        "2",
        "--decoder-dim",
        "32",
        "--decoder-depth",
        "1",
        "--decoder-heads",
        "2",
        "--synthetic-len",
        "200",
        "--drop-path",
        "0.1",
        "--steps",
        steps,
        "--ckpt-every",
        "5",
        "--recon-every",
        "0",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    if !extra.contains(&"--batch") {
        a.extend(["--batch", "7"].map(String::from));
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("mpirun runs (is Open MPI installed?)");
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ranks(n: usize, out: &Path, steps: &str, extra: &[&str]) -> Output {
    let mut c = mpirun();
    c.args(["-np", &n.to_string(), BIN]).args(args(out, steps, extra));
    run(c)
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn assert_same(what: &str, one: &[f64], many: &[f64]) {
    assert_eq!(one.len(), many.len(), "{what}: steps");
    for (s, (a, b)) in one.iter().zip(many).enumerate() {
        let rel = (a - b).abs() / a.abs();
        assert!(rel <= 1e-5, "{what}: step {} loss {b} against {a} ({rel:e})", s + 1);
    }
}

#[test]
fn ranks_match_one_process_and_resume_with_another_count() {
    let one = tmp("one");
    let mut c = Command::new(BIN);
    c.args(args(&one, "50", &[]));
    run(c);
    let reference = losses(&one);
    assert_eq!(reference.len(), 50);
    assert!(reference[49] < reference[0], "{reference:?}");
    for n in [1, 2, 3] {
        let dir = tmp(&format!("np{n}"));
        let out = ranks(n, &dir, "50", &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Rank 0 alone prints (one "done" line) and writes.
        assert_eq!(stdout.matches("done: step 50").count(), 1, "{stdout}");
        assert_same(&format!("{n} ranks"), &reference, &losses(&dir));
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        if n > 1 {
            assert_eq!(first["ranks"], n, "{first}");
            assert!(first["reduce_s"].as_f64().unwrap() >= 0.0, "{first}");
        } else {
            assert!(first.get("ranks").is_none(), "{first}");
        }
    }
    // Gradient sums after backward instead of during it: the same losses.
    let after = tmp("np2-after");
    ranks(2, &after, "50", &["--no-overlap"]);
    assert_same("2 ranks, sums after backward", &reference, &losses(&after));
    // Stopped after 20 steps on 2 ranks, resumed on 3.
    let split = tmp("split");
    ranks(2, &split, "50", &["--stop-after", "20"]);
    assert_eq!(losses(&split).len(), 20);
    ranks(3, &split, "50", &["--resume"]);
    assert_same("2 ranks, then 3 after a resume", &reference, &losses(&split));
}

/// Stderr lines that say `error`.
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error"))
        .map(str::to_string)
        .collect()
}

#[test]
fn ranks_started_with_other_options_are_refused_by_rank_0() {
    let dir = tmp("mismatch");
    let mut c = mpirun();
    c.args(["-np", "1", BIN])
        .args(args(&dir, "10", &[]))
        .arg(":")
        .args(["-np", "1", BIN])
        .args(args(&dir, "10", &["--seed", "3"]));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    assert!(
        errors[0].contains("rank 1 has another configuration or data set than rank 0"),
        "{errors:?}"
    );
    assert!(!dir.join("checkpoint.safetensors").exists());
}

/// Waits for `child` at most `limit`; kills it and fails on a hang.
fn wait_within(child: &mut std::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: the job hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rank_that_cannot_read_its_data_ends_the_job_with_one_line() {
    // A folder of 8 images, one of them truncated after its header: opening
    // the folder reads headers only, so the rank whose slice holds it fails
    // at its first batch (batch 8 takes every image).
    let dir = tmp("bad-data");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..8u8 {
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, i * 30]));
        img.save(data.join(format!("{i}.png"))).unwrap();
    }
    let bad = data.join("5.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out_dir = dir.join("run");
    let data_dir = data.display().to_string();
    let a = args(
        &out_dir,
        "10",
        &[
            "--data",
            "folder",
            "--data-dir",
            &data_dir,
            "--val-fraction",
            "0",
            "--batch",
            "8",
        ],
    );
    let mut c = mpirun();
    c.args(["-np", "2", BIN])
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let status = wait_within(&mut child, Duration::from_secs(60), "a rank's bad data");
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    assert!(
        errors[0].starts_with("error: rank ") && errors[0].contains(" of 2: ") && errors[0].contains("5.png"),
        "{errors:?}"
    );
}

/// Process ids whose command line mentions `needle` (the ranks of a run,
/// found by its output folder).
fn pids_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_rank_that_dies_ends_the_job_and_the_checkpoint_resumes() {
    let dir = tmp("dies");
    let out_dir = dir.join("run-that-dies");
    let mut c = mpirun();
    c.args(["-np", "2", BIN])
        .args(args(&out_dir, "100000", &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Wait for a checkpoint, then kill one rank (not mpirun) outright.
    let t0 = Instant::now();
    while !out_dir.join("checkpoint.safetensors").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mine: Vec<u32> = pids_with(&out_dir.display().to_string())
        .into_iter()
        .filter(|&p| p != child.id())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "tessera")
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(mine.len(), 2, "two ranks running: {mine:?}");
    Command::new("kill")
        .args(["-9", &mine[1].to_string()])
        .status()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(60), "a dead rank");
    assert!(!status.success());
    // The survivor is gone too, and the last checkpoint continues on one process.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pids_with(&out_dir.display().to_string()).is_empty(),
        "a rank outlived the job"
    );
    let step_of = |dir: &Path| -> u64 {
        let f = tessera_checkpoint_step(&dir.join("checkpoint.safetensors"));
        assert!(f >= 5, "checkpoint at step {f}");
        f
    };
    let at = step_of(&out_dir);
    let mut more = Command::new(BIN);
    more.args(args(
        &out_dir,
        "100000",
        &["--resume", "--stop-after", &(at + 3).to_string()],
    ));
    run(more);
    assert_eq!(step_of(&out_dir), at + 3);
}

/// The step a checkpoint was written at (its `tessera.step` metadata).
fn tessera_checkpoint_step(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"]["tessera.step"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
