//! A per-operation time table from the engine itself.
//!
//! Off by default (one relaxed atomic load per op). Turn it on with
//! [`enable`] (or `TESSERA_PROFILE=1` for the `tessera` binary), run some
//! steps, then [`report`] gives, for every op name and direction (`forward`,
//! `backward`), the call count and the total wall time. Times are inclusive:
//! an op built from other ops (`transpose` → `permute`) counts both.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// (op, direction) → (calls, total time).
type Table = HashMap<(&'static str, &'static str), (u64, Duration)>;
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

/// Times a region until dropped.
pub struct Scope {
    start: Option<(Instant, &'static str, &'static str)>,
}

/// Times `op` in `direction` until the returned guard is dropped.
#[inline]
pub fn scope(op: &'static str, direction: &'static str) -> Scope {
    Scope {
        start: is_enabled().then(|| (Instant::now(), op, direction)),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((t, op, dir)) = self.start.take() {
            let dt = t.elapsed();
            if let Some(table) = TABLE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let e = table.entry((op, dir)).or_default();
                e.0 += 1;
                e.1 += dt;
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
}

/// Everything recorded since [`enable`], slowest first.
pub fn report() -> Vec<Row> {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<Row> = table
        .as_ref()
        .map(|t| {
            t.iter()
                .map(|(&(op, direction), &(calls, total))| Row {
                    op,
                    direction,
                    calls,
                    total,
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|r| std::cmp::Reverse(r.total));
    rows
}

/// The report as an aligned text table with each row's share of the total.
pub fn format_report(rows: &[Row]) -> String {
    let all: f64 = rows.iter().map(|r| r.total.as_secs_f64()).sum();
    let mut s = format!(
        "{:<16} {:<9} {:>8} {:>11} {:>7}\n",
        "op", "direction", "calls", "total ms", "share"
    );
    for r in rows {
        let ms = r.total.as_secs_f64() * 1e3;
        s += &format!(
            "{:<16} {:<9} {:>8} {:>11.2} {:>6.1}%\n",
            r.op,
            r.direction,
            r.calls,
            ms,
            100.0 * r.total.as_secs_f64() / all.max(1e-12)
        );
    }
    s
}
