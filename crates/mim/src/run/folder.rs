//! The run folder: one run at a time, only Tessera's own files written or
//! removed, nothing half-written left behind.
//!
//! ```text
//! out/.tessera.lock            held (an OS file lock) while a run writes; names its holder
//! out/config.json              the run's configuration
//! out/metrics.jsonl            one JSON object per line, whole lines only
//! out/checkpoint.safetensors   written atomically (a temporary, then a rename)
//! out/recon/step-NNNNNN.png    pre-training's pictures (a kind's folders hold step-*.png)
//! ```
//!
//! The lock is the operating system's (`flock` on Unix, through
//! [`File::try_lock`]): it goes with the process, however the process ends,
//! so a lock left by a killed run is free and the next run takes it over.
//! Its file says who holds it, for the message a second run gets.
//!
//! Anything else in the folder is the user's: a fresh run refuses a folder
//! whose `config.json` Tessera did not write, and `overwrite` removes only
//! the files above.

use crate::error::{MimError, Result, io_err};
use crate::io::safetensors::is_atomic_temporary;
use crate::train::pretrain::TrainConfig;
use crate::train::recipe::FinetuneConfig;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lock file's name.
pub const LOCK: &str = ".tessera.lock";
/// The configuration's name.
pub const CONFIG: &str = "config.json";
/// The metrics' name.
pub const METRICS: &str = "metrics.jsonl";
/// The checkpoint's name.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// One line per start or resume of the run: step, data, CPU, threads.
pub const SEGMENTS: &str = "segments.jsonl";
/// The HTML report ([`crate::run::report`]).
pub const REPORT: &str = "report.html";
/// A fine-tuning run's last validation, with its confusion matrix.
pub const VALIDATION: &str = "validation.json";
/// What `tessera probe` writes beside a run's checkpoint.
pub const PROBE: &str = "probe.json";
/// A pre-training run's reconstruction pictures, `step-NNNNNN.png`.
pub const RECON: &str = "recon";
/// A pre-training run's attention-map pictures, `step-NNNNNN.png`.
pub const ATTENTION: &str = "attention";

/// The right to write one run folder, held until dropped (and released by
/// the operating system if the process dies first).
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    // Holding the open file holds the lock.
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run folder `dir` (created if missing), or says
    /// which process holds it.
    pub fn take(dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let path = dir.join(LOCK);
        // A holder that ends removes the file; if that happens between our
        // open and our lock, we hold the lock of a removed file: open again.
        for _ in 0..64 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(MimError::Input(format!(
                        "{} is in use by another run ({}); wait for it to end, or choose another output folder",
                        dir.display(),
                        describe_holder(&holder)
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(io_err(&path, e)),
            }
            if !still_linked(&file, &path) {
                continue;
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let me = format!("pid={} host={} since={now}\n", std::process::id(), host_name());
            // The lock is ours: who holds it is for the next run's message.
            let written = file.set_len(0).and_then(|()| file.write_all(me.as_bytes()));
            written.map_err(|e| io_err(&path, e))?;
            return Ok(RunLock { path, _file: file });
        }
        Err(MimError::Input(format!(
            "{}: cannot take the run folder's lock (its file keeps being replaced)",
            path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked: a run waiting on this file finds it
        // unlinked and opens the next one (see `take`).
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether `path` still names the open `file` (it was not removed or
/// replaced since it was opened).
fn still_linked(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "this machine".into())
}

/// "process 123 on host, for 5 min" from a lock file's `pid= host= since=`.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| v.chars().all(|c| c.is_ascii_graphic()))
    };
    let Some(pid) = field("pid") else {
        return "its holder did not say who it is".into();
    };
    let mut out = format!("process {pid}");
    if let Some(host) = field("host") {
        out += &format!(" on {host}");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(since) = field("since").and_then(|s| s.parse::<u64>().ok()) {
        let s = now.saturating_sub(since);
        out += &match s {
            0..60 => format!(", for {s} s"),
            60..7200 => format!(", for {} min", s / 60),
            _ => format!(", for {} h", s / 3600),
        };
    }
    out
}

/// Whether a kind's folder (`recon/`) file is one a run writes: `step-<digits>.png`.
fn is_step_picture(name: &str) -> bool {
    name.strip_prefix("step-")
        .and_then(|r| r.strip_suffix(".png"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `text` is a `config.json` that a Tessera run wrote.
pub(crate) fn is_run_config(text: &str) -> bool {
    serde_json::from_str::<TrainConfig>(text).is_ok() || serde_json::from_str::<FinetuneConfig>(text).is_ok()
}

/// Refuses to start a run in `dir` if its `config.json` is not a run's (the
/// user's own file, which a run would overwrite).
pub(crate) fn check_config_is_ours(dir: &Path) -> Result<()> {
    let path = dir.join(CONFIG);
    match fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&path, e)),
        Ok(bytes) if is_run_config(&String::from_utf8_lossy(&bytes)) => Ok(()),
        Ok(_) => Err(MimError::Input(format!(
            "{} is not a Tessera run's configuration: this folder is not a run, and a run would overwrite \
             it; choose another output folder",
            path.display()
        ))),
    }
}

/// Removes a run's files from `dir`: its configuration, metrics,
/// checkpoint, segments, report, validation and temporaries, and the `step-*.png` pictures of `folders`
/// (each folder too, once empty). Anything else stays. Returns how many
/// files went.
pub(crate) fn remove_run(dir: &Path, folders: &[&str]) -> Result<usize> {
    let mut removed = 0;
    let mut remove = |path: &Path| -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => {
                removed += 1;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    };
    for name in [CONFIG, METRICS, CHECKPOINT, SEGMENTS, REPORT, VALIDATION] {
        remove(&dir.join(name))?;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if is_atomic_temporary(&e.file_name().to_string_lossy()) {
                remove(&e.path())?;
            }
        }
    }
    for folder in folders {
        let sub = dir.join(folder);
        let Ok(entries) = fs::read_dir(&sub) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (is_step_picture(&name) || is_atomic_temporary(&name)) && e.file_type().is_ok_and(|t| t.is_file()) {
                remove(&e.path())?;
            }
        }
        // Only if nothing of the user's is left in it.
        let _ = fs::remove_dir(&sub);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-folder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A second taker is refused with the holder named; dropping frees the
    /// folder and removes the lock file.
    #[test]
    fn one_lock_per_folder() {
        let d = scratch("lock");
        let held = RunLock::take(&d).unwrap();
        let e = RunLock::take(&d).unwrap_err().to_string();
        assert!(e.contains(&d.display().to_string()), "{e}");
        assert!(e.contains(&format!("process {}", std::process::id())), "{e}");
        drop(held);
        assert!(!d.join(LOCK).exists());
        let again = RunLock::take(&d).unwrap();
        drop(again);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A lock file left by a process that died (no OS lock on it) is taken over.
    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let d = scratch("stale");
        fs::write(d.join(LOCK), "pid=999999 host=elsewhere since=0\n").unwrap();
        let lock = RunLock::take(&d).unwrap();
        let text = fs::read_to_string(d.join(LOCK)).unwrap();
        assert!(text.starts_with(&format!("pid={} ", std::process::id())), "{text}");
        drop(lock);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn holders_are_described_and_garbage_is_not_echoed() {
        assert!(describe_holder("pid=12 host=box since=0").starts_with("process 12 on box, for "));
        assert_eq!(describe_holder(""), "its holder did not say who it is");
        assert_eq!(describe_holder("pid=\x1b[2J"), "its holder did not say who it is");
    }

    /// `overwrite` removes the run's files and pictures, never the user's.
    #[test]
    fn removing_a_run_keeps_the_users_files() {
        let d = scratch("remove");
        for f in [
            CONFIG,
            METRICS,
            CHECKPOINT,
            ".checkpoint.safetensors.tmp-77",
            "notes.txt",
        ] {
            fs::write(d.join(f), "x").unwrap();
        }
        fs::create_dir_all(d.join("recon")).unwrap();
        fs::create_dir_all(d.join("pictures")).unwrap();
        for f in ["step-000100.png", "step-000200.png", "mine.png", "step-x.png"] {
            fs::write(d.join("recon").join(f), "x").unwrap();
        }
        assert_eq!(remove_run(&d, &["recon"]).unwrap(), 6);
        let mut left: Vec<String> = fs::read_dir(d.join("recon"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["mine.png", "step-x.png"]);
        assert!(d.join("notes.txt").exists() && d.join("pictures").exists());
        // An emptied folder goes.
        fs::remove_file(d.join("recon/mine.png")).unwrap();
        fs::remove_file(d.join("recon/step-x.png")).unwrap();
        fs::write(d.join("recon/step-000300.png"), "x").unwrap();
        remove_run(&d, &["recon"]).unwrap();
        assert!(!d.join("recon").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_a_run_config_is_ours() {
        let d = scratch("config");
        check_config_is_ours(&d).unwrap();
        fs::write(d.join(CONFIG), r#"{"name": "my project"}"#).unwrap();
        let e = check_config_is_ours(&d).unwrap_err().to_string();
        assert!(e.contains("is not a Tessera run's configuration"), "{e}");
        let vit = crate::config::VitConfig::preset("vit-tiny", [32, 32], 4, 3).unwrap();
        let model = crate::config::ModelConfig {
            encoder: vit.into(),
            method: crate::config::Method::Mae {
                decoder: crate::config::DecoderConfig::light(),
            },
            target: crate::config::TargetConfig::Pixels {
                loss: crate::config::PixelLoss::Mse,
                norm_pix: true,
            },
        };
        let ours = serde_json::to_string_pretty(&TrainConfig::mae(model, 8, 10)).unwrap();
        fs::write(d.join(CONFIG), ours).unwrap();
        check_config_is_ours(&d).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }
}
