//! A per-operation time table from the engine itself.
//!
//! Off by default (one relaxed atomic load per op). Turn it on with
//! [`enable`] (or `TESSERA_PROFILE=1` for the `tessera` binary), run some
//! steps, then [`report`] gives, for every op name and direction (`forward`,
//! `backward`), the call count and the total wall time. Times are inclusive:
//! an op built from other ops (`transpose` → `permute`) counts both.
//!
//! The ops that dominate a step also say how much work they did ([`work`]):
//! the FLOPs of their products and the bytes they move at least once. The
//! report then gives each such op's GFLOP/s and GB/s, and with the machine's
//! ceilings ([`Peaks`]) the fraction of the one that bounds it, its roofline:
//! an op whose FLOPs per byte exceed the machine's balance (peak GFLOP/s ÷
//! GB/s) is held to the FMA peak, any other to the bandwidth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// FLOPs and bytes counted so far (scopes take the difference).
static FLOPS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// (op, direction) → (calls, total time, FLOPs, bytes).
type Table = HashMap<(&'static str, &'static str), (u64, Duration, u64, u64)>;
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Starts recording (and clears what was recorded).
pub fn enable() {
    *TABLE.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops recording.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether recording is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Counts `flops` (of products: 2 per multiply-add) and `bytes` (read or
/// written at least once) towards every op whose scope is open. Does
/// nothing while recording is off.
#[inline]
pub fn work(flops: u64, bytes: u64) {
    if is_enabled() {
        FLOPS.fetch_add(flops, Ordering::Relaxed);
        BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Where a scope started: the time, the op, and the work counted so far.
struct Start {
    at: Instant,
    op: &'static str,
    direction: &'static str,
    flops: u64,
    bytes: u64,
}

/// Times a region until dropped.
pub struct Scope {
    start: Option<Start>,
}

/// Times `op` in `direction` until the returned guard is dropped.
#[inline]
pub fn scope(op: &'static str, direction: &'static str) -> Scope {
    Scope {
        start: is_enabled().then(|| Start {
            at: Instant::now(),
            op,
            direction,
            flops: FLOPS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(s) = self.start.take() {
            let dt = s.at.elapsed();
            let flops = FLOPS.load(Ordering::Relaxed) - s.flops;
            let bytes = BYTES.load(Ordering::Relaxed) - s.bytes;
            if let Some(table) = TABLE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let e = table.entry((s.op, s.direction)).or_default();
                e.0 += 1;
                e.1 += dt;
                e.2 += flops;
                e.3 += bytes;
            }
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: &'static str,
    pub direction: &'static str,
    pub calls: u64,
    pub total: Duration,
    /// FLOPs its products did (0: the op does not count them).
    pub flops: u64,
    /// Bytes it moved at least once (0: not counted).
    pub bytes: u64,
}

impl Row {
    /// GFLOP/s over the op's time.
    pub fn gflops(&self) -> f64 {
        self.flops as f64 / self.total.as_secs_f64().max(1e-12) / 1e9
    }

    /// GB/s over the op's time.
    pub fn gbs(&self) -> f64 {
        self.bytes as f64 / self.total.as_secs_f64().max(1e-12) / 1e9
    }

    /// The fraction of its roofline the op ran at, and which ceiling that
    /// is (`"fma"` or `"bw"`); `None` for an op that counts no work.
    pub fn of_peak(&self, peaks: &Peaks) -> Option<(f64, &'static str)> {
        // (`"fma"` is `peaks.compute`: `"amx"` for a bf16 step on AMX tiles.)
        if self.flops == 0 && self.bytes == 0 {
            return None;
        }
        // Compute-bound if its FLOPs per byte exceed the machine's balance.
        let intensity = self.flops as f64 / (self.bytes as f64).max(1.0);
        if intensity > peaks.gflops / peaks.gbs {
            Some((self.gflops() / peaks.gflops, peaks.compute))
        } else {
            Some((self.gbs() / peaks.gbs, "bw"))
        }
    }
}

/// The machine's ceilings on the threads the profiled steps ran on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// Peak of the products' arithmetic, GFLOP/s: the f32 FMA peak, or the
    /// AMX tiles' for a step whose products run in bf16 on them.
    pub gflops: f64,
    /// Which peak `gflops` is, as the report names it: `"fma"` or `"amx"`.
    pub compute: &'static str,
    /// Memory bandwidth (a large copy's read + write), GB/s.
    pub gbs: f64,
}

/// Everything recorded since [`enable`], slowest first.
pub fn report() -> Vec<Row> {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<Row> = table
        .as_ref()
        .map(|t| {
            t.iter()
                .map(|(&(op, direction), &(calls, total, flops, bytes))| Row {
                    op,
                    direction,
                    calls,
                    total,
                    flops,
                    bytes,
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|r| std::cmp::Reverse(r.total));
    rows
}

/// The report as an aligned text table with each row's share of the total,
/// and for the ops that count their work, GFLOP/s, GB/s and (given the
/// machine's `peaks`) the fraction of the ceiling that bounds each.
pub fn format_report(rows: &[Row], peaks: Option<&Peaks>) -> String {
    let all: f64 = rows.iter().map(|r| r.total.as_secs_f64()).sum();
    let mut s = format!(
        "{:<16} {:<9} {:>8} {:>11} {:>7} {:>9} {:>8} {:>12}\n",
        "op", "direction", "calls", "total ms", "share", "GFLOP/s", "GB/s", "of roofline"
    );
    for r in rows {
        let ms = r.total.as_secs_f64() * 1e3;
        let (gf, gb) = if r.flops + r.bytes > 0 {
            (format!("{:.1}", r.gflops()), format!("{:.1}", r.gbs()))
        } else {
            (String::new(), String::new())
        };
        let roof = peaks
            .and_then(|p| r.of_peak(p))
            .map_or(String::new(), |(f, which)| format!("{:.0}% {which}", 100.0 * f));
        s += &format!(
            "{:<16} {:<9} {:>8} {:>11.2} {:>6.1}% {gf:>9} {gb:>8} {roof:>12}\n",
            r.op,
            r.direction,
            r.calls,
            ms,
            100.0 * r.total.as_secs_f64() / all.max(1e-12)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(flops: u64, bytes: u64, ms: u64) -> Row {
        Row {
            op: "x",
            direction: "forward",
            calls: 1,
            total: Duration::from_millis(ms),
            flops,
            bytes,
        }
    }

    /// An op above the machine's balance is held to the FMA peak, one
    /// below it to the bandwidth.
    #[test]
    fn rows_meet_the_ceiling_that_bounds_them() {
        let peaks = Peaks {
            gflops: 400.0,
            compute: "fma",
            gbs: 40.0,
        }; // balance: 10 FLOP per byte
        let product = row(2_000_000_000, 10_000_000, 10); // 200 GFLOP/s, 200 FLOP/B
        let (f, which) = product.of_peak(&peaks).unwrap();
        assert_eq!(which, "fma");
        assert!((f - 0.5).abs() < 1e-9, "{f}");
        let pass = row(0, 200_000_000, 10); // 20 GB/s
        let (f, which) = pass.of_peak(&peaks).unwrap();
        assert_eq!(which, "bw");
        assert!((f - 0.5).abs() < 1e-9, "{f}");
        assert_eq!(row(0, 0, 10).of_peak(&peaks), None);
        let text = format_report(&[product.clone(), pass], Some(&peaks));
        assert!(text.contains("50% fma") && text.contains("50% bw"), "{text}");
        // Against the AMX tiles' peak (balance 100 FLOP per byte), the same
        // product is still compute-bound, at 5% of it.
        let amx = Peaks {
            gflops: 4000.0,
            compute: "amx",
            ..peaks
        };
        let (f, which) = product.of_peak(&amx).unwrap();
        assert_eq!((which, (f * 100.0).round()), ("amx", 5.0));
    }
}
