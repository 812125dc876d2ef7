//! Reused f32 buffers: a cache of freed buffers by length, handed to the next
//! request of that length, from one training step to the next. (Named
//! `buffers`, not "pool", so that "pool" means only rayon's thread pools and
//! a ViT's feature pooling.)
//!
//! Every step allocates the same buffers in the same order: activations in the
//! forward, gradients in the backward. Fresh memory of that size comes from
//! `mmap`, and every first touch of each 4 KiB page is a page fault in which the
//! kernel zeroes the page; a profile of a ViT-Tiny MAE step showed over a
//! quarter of the time in the kernel. Handing freed buffers back to the next
//! request of the same length removes that cost: this is the CPU counterpart
//! of PyTorch's caching allocator on GPUs.
//!
//! Only buffers of at least [`MIN_LEN`] values are pooled (malloc serves small
//! ones well), up to [`limit`] bytes in total (`TESSERA_POOL_MB`, default 4096);
//! beyond that freed buffers go back to the system. [`clear`] empties the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Smallest pooled buffer: 16 Ki values (64 KiB).
pub const MIN_LEN: usize = 1 << 14;

struct FreeLists {
    /// Free buffers by exact length.
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<FreeLists>> = Mutex::new(None);
static HITS: AtomicUsize = AtomicUsize::new(0);
static MISSES: AtomicUsize = AtomicUsize::new(0);

/// The most bytes the pool keeps.
pub fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("TESSERA_POOL_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(4096)
            << 20
    })
}

fn take(n: usize) -> Option<Vec<f32>> {
    if n < MIN_LEN {
        return None;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = guard.as_mut()?;
    let v = pool.free.get_mut(&n)?.pop()?;
    pool.bytes -= n * 4;
    Some(v)
}

/// A buffer of `n` values whose contents are unspecified (left over from an
/// earlier use, or zeros). For outputs a kernel overwrites entirely.
pub fn uninit(n: usize) -> Vec<f32> {
    match take(n) {
        Some(v) => {
            HITS.fetch_add(1, Ordering::Relaxed);
            v
        }
        None => {
            if n >= MIN_LEN {
                MISSES.fetch_add(1, Ordering::Relaxed);
            }
            vec![0.0; n]
        }
    }
}

/// A buffer of `n` zeros.
pub fn zeroed(n: usize) -> Vec<f32> {
    let mut v = uninit(n);
    v.fill(0.0);
    v
}

/// Gives a buffer back for reuse (or frees it if small or the pool is full).
pub fn recycle(mut v: Vec<f32>) {
    let n = v.len();
    if n < MIN_LEN || v.capacity() != n {
        return;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = guard.get_or_insert_with(|| FreeLists {
        free: HashMap::new(),
        bytes: 0,
    });
    if pool.bytes + n * 4 > limit() {
        return;
    }
    pool.bytes += n * 4;
    pool.free.entry(n).or_default().push(std::mem::take(&mut v));
}

/// Frees every pooled buffer.
pub fn clear() {
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Bytes currently held by the pool.
pub fn pooled_bytes() -> usize {
    POOL.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |p| p.bytes)
}

/// (requests served from the pool, requests that allocated), since start.
pub fn stats() -> (usize, usize) {
    (HITS.load(Ordering::Relaxed), MISSES.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_are_reused_and_zeroed_on_request() {
        let n = MIN_LEN + 17;
        let mut v = uninit(n);
        v.fill(3.0);
        let ptr = v.as_ptr();
        recycle(v);
        let w = zeroed(n);
        assert_eq!(w.as_ptr(), ptr, "same buffer back");
        assert!(w.iter().all(|&x| x == 0.0));
        // Small buffers are not pooled.
        recycle(vec![1.0; 10]);
        assert_eq!(uninit(10), vec![0.0; 10]);
    }
}
