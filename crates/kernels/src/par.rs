//! Small helpers for deterministic parallel loops.
//!
//! Rayon splits work across threads; these helpers make sure the *result* does
//! not depend on how it was split. Reductions are cut into chunks of a fixed
//! size (not "one chunk per thread"), each chunk is reduced sequentially, and the
//! partial results are combined in chunk order.

use rayon::prelude::*;

/// Rows per chunk in row-parallel kernels and in the partial sums of
/// parameter gradients. Fixed, so results are the same for any thread count.
pub const ROW_CHUNK: usize = 64;

/// A raw pointer that may cross threads. Used only where parallel tasks write
/// provably disjoint elements of one buffer whose layout interleaves them
/// (for example, one attention head's columns inside `(B, N, D)` rows), so that
/// `chunks_mut` cannot express the split.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint
// elements; each use site states why its elements are disjoint.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. Call this inside the closure (rather than reading `.0`),
    /// so the closure captures the whole `SendPtr`, which may cross threads.
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// How long a worker kept awake by [`keep_awake`] waits for work before it
/// goes back to rayon's own sleep (OpenMP's "block time").
pub const BLOCK_TIME: std::time::Duration = std::time::Duration::from_millis(2);

/// Keeps the other workers of the current rayon pool awake until the guard
/// is dropped: each one spins on [`rayon::yield_now`], running any job the
/// moment it is queued, instead of sleeping between the hundreds of short
/// products and passes of a training step and being woken (a futex and a
/// context switch, tens of microseconds in a VM) for each. A worker that
/// finds nothing to do for [`BLOCK_TIME`] stops spinning and sleeps as usual,
/// so a long serial stretch does not burn a core.
///
/// Results do not change: the same jobs run, only sooner. Called outside a
/// rayon pool, it keeps every worker of the global pool awake; with one
/// thread it does nothing. (A worker that was just falling asleep may only
/// start spinning at the next job it is woken for.)
pub fn keep_awake() -> KeepAwake {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    if rayon::current_num_threads() > 1 {
        let caller = rayon::current_thread_index();
        let flag = stop.clone();
        rayon::spawn_broadcast(move |ctx| {
            // The caller's own copy (run whenever it next looks for work)
            // must not spin: the caller is the one that ends the wait.
            if Some(ctx.index()) == caller {
                return;
            }
            SPINNING.fetch_add(1, Ordering::AcqRel);
            STARTED.fetch_add(1, Ordering::AcqRel);
            let mut idle_since = Instant::now();
            while !flag.load(Ordering::Acquire) {
                match rayon::yield_now() {
                    Some(rayon::Yield::Executed) => idle_since = Instant::now(),
                    _ if idle_since.elapsed() > BLOCK_TIME => break,
                    _ => std::hint::spin_loop(),
                }
            }
            SPINNING.fetch_sub(1, Ordering::AcqRel);
        });
    }
    KeepAwake { stop }
}

/// Workers spinning for [`keep_awake`] now, in every pool of the process.
static SPINNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Spinners started since the process began (for the tests: a spinner on a
/// machine this busy may start and time out between two looks at `SPINNING`).
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many workers are spinning for [`keep_awake`] now (all pools).
pub fn spinning() -> usize {
    SPINNING.load(std::sync::atomic::Ordering::Acquire)
}

/// Ends [`keep_awake`]'s spinning when dropped.
#[must_use = "the workers stop spinning when the guard is dropped"]
pub struct KeepAwake {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Whether `flops` of work is worth spreading over rayon threads.
/// Below about 100 thousand operations the fork/join costs more than it saves.
pub fn worth_parallel(work: usize) -> bool {
    work >= 1 << 17 && rayon::current_num_threads() > 1
}

/// Values per rayon task in the element-wise passes below: 16 Ki (64 KiB).
pub const ELEM_CHUNK: usize = 1 << 14;

/// Below this many values an element-wise pass stays on one thread: a sum of
/// two 209 K-value tensors (tiny32's activations, in cache) took 30 µs on one
/// thread and 39 µs split over two; at 532 K values, 76 against 60 µs.
const ELEM_PARALLEL: usize = 1 << 19;

fn elementwise_parallel(len: usize) -> bool {
    len >= ELEM_PARALLEL && rayon::current_num_threads() > 1
}

/// `out[i] = f(a[i], b[i])`, split over the threads when large enough (each
/// element is computed alone, so the split cannot change a bit).
pub fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(
        out.len() == a.len() && a.len() == b.len(),
        "zip_map: lengths {}, {} and {}",
        out.len(),
        a.len(),
        b.len()
    );
    let run = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    if elementwise_parallel(out.len()) {
        out.par_chunks_mut(ELEM_CHUNK)
            .zip(a.par_chunks(ELEM_CHUNK).zip(b.par_chunks(ELEM_CHUNK)))
            .for_each(run);
    } else {
        run((out, (a, b)));
    }
}

/// `acc[i] += g[i]` (a second gradient into the same tensor), split over the
/// threads when large enough.
pub fn add_assign(acc: &mut [f32], g: &[f32]) {
    assert_eq!(acc.len(), g.len(), "add_assign: lengths {} and {}", acc.len(), g.len());
    let run = |(acc, g): (&mut [f32], &[f32])| {
        for (x, &y) in acc.iter_mut().zip(g) {
            *x += y;
        }
    };
    if elementwise_parallel(acc.len()) {
        acc.par_chunks_mut(ELEM_CHUNK)
            .zip(g.par_chunks(ELEM_CHUNK))
            .for_each(run);
    } else {
        run((acc, g));
    }
}

/// `out.copy_from_slice(src)`, split over the threads when large enough.
pub fn copy(out: &mut [f32], src: &[f32]) {
    assert_eq!(out.len(), src.len(), "copy: lengths {} and {}", out.len(), src.len());
    if elementwise_parallel(out.len()) {
        out.par_chunks_mut(ELEM_CHUNK)
            .zip(src.par_chunks(ELEM_CHUNK))
            .for_each(|(o, s)| o.copy_from_slice(s));
    } else {
        out.copy_from_slice(src);
    }
}

/// Sums `len` values produced by `f(i)` in f64, deterministically: fixed chunks
/// of `chunk` indices are summed in parallel, then the chunk sums in order.
pub fn sum_f64(len: usize, chunk: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
    let chunk = chunk.max(1);
    let n_chunks = len.div_ceil(chunk);
    let partial: Vec<f64> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let lo = c * chunk;
            let hi = (lo + chunk).min(len);
            (lo..hi).map(&f).sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// Values per partial sum in [`sum_squares`] and [`sum_squares_many`].
const SQ_CHUNK: usize = 1 << 14;

/// One chunk's `Σ x²`: 16-lane f32 sums (vectorised), then the tail, then the
/// lanes added in f64.
fn chunk_sum_squares(c: &[f32]) -> f64 {
    let mut acc = [0f32; 16];
    let blocks = c.chunks_exact(16);
    let tail = blocks.remainder();
    for b in blocks {
        for l in 0..16 {
            acc[l] += b[l] * b[l];
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += v * v;
    }
    acc.iter().map(|&a| a as f64).sum::<f64>()
}

/// `Σ x²` in f64, deterministically: sums over fixed chunks of 16 Ki values
/// (exact enough: each chunk's sum is then added in f64), the chunks in
/// parallel, then combined in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x.par_chunks(SQ_CHUNK).map(chunk_sum_squares).collect();
    partial.iter().sum()
}

/// `Σ_t Σ x²` over many slices (every gradient of a model), as one parallel
/// loop over all their chunks instead of one per slice (a ViT has ~150
/// parameters, most of them a few hundred values). Bit-identical to adding
/// [`sum_squares`] of each slice in order.
pub fn sum_squares_many(xs: &[&[f32]]) -> f64 {
    let chunks: Vec<(usize, &[f32])> = xs
        .iter()
        .enumerate()
        .flat_map(|(t, x)| x.chunks(SQ_CHUNK).map(move |c| (t, c)))
        .collect();
    let partial: Vec<f64> = chunks.par_iter().map(|&(_, c)| chunk_sum_squares(c)).collect();
    // Per slice in chunk order, then the slices in order: sum_squares' association.
    let mut total = 0f64;
    let mut i = 0;
    for t in 0..xs.len() {
        let mut slice_sum = 0f64;
        while i < chunks.len() && chunks[i].0 == t {
            slice_sum += partial[i];
            i += 1;
        }
        total += slice_sum;
    }
    total
}

/// Column sums written into `out`: `out[j] = Σ_r inp[r*cols + j]`.
pub fn col_sum_into(out: &mut [f32], inp: &[f32], rows: usize, cols: usize) {
    out.fill(0.0);
    col_sum_add(out, inp, rows, cols)
}

/// Column sums accumulated into `out`: `out[j] += Σ_r inp[r*cols + j]`.
///
/// Rows are cut into fixed chunks of [`ROW_CHUNK`]; each chunk's column sums are
/// computed in parallel and the partial sums are added to `out` in chunk order.
/// This is the bias gradient of a linear layer and the weight/bias gradients of
/// LayerNorm, which candle computes on one thread.
pub fn col_sum_add(out: &mut [f32], inp: &[f32], rows: usize, cols: usize) {
    assert_eq!(
        out.len(),
        cols,
        "col_sum_add: out has {} values, want {cols}",
        out.len()
    );
    assert_eq!(
        inp.len(),
        rows * cols,
        "col_sum_add: inp has {} values, want {rows}x{cols}",
        inp.len()
    );
    if rows == 0 || cols == 0 {
        return;
    }
    let n_chunks = rows.div_ceil(ROW_CHUNK);
    let mut partial = vec![0f32; n_chunks * cols]; // (n_chunks, cols)
    partial
        .par_chunks_mut(cols)
        .zip(inp.par_chunks(ROW_CHUNK * cols))
        .for_each(|(acc, block)| {
            for row in block.chunks_exact(cols) {
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
        });
    for acc in partial.chunks_exact(cols) {
        for (o, &a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col_sum_matches_direct_sum() {
        for &(rows, cols) in &[(1, 1), (3, 7), (65, 17), (197, 3), (130, 65)] {
            let inp: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let mut out = vec![1.0f32; cols];
            col_sum_add(&mut out, &inp, rows, cols);
            for j in 0..cols {
                let want: f64 = 1.0 + (0..rows).map(|r| inp[r * cols + j] as f64).sum::<f64>();
                assert!(
                    (out[j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "col {j}: {} vs {want}",
                    out[j]
                );
            }
        }
    }

    #[test]
    fn sum_squares_matches_f64_and_threads() {
        let x: Vec<f32> = (0..100_003).map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0).collect();
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = sum_squares(&x);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| sum_squares(&x)).to_bits(), got.to_bits());
    }

    #[test]
    fn element_wise_passes_match_serial_loops_on_odd_lengths() {
        for len in [0usize, 1, 17, ELEM_CHUNK - 1, 3 * ELEM_CHUNK + 5, ELEM_PARALLEL + 3] {
            let a: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 0.5 - 20.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            let mut out = vec![f32::NAN; len];
            zip_map(&mut out, &a, &b, |x, y| x * y - 1.0);
            assert!(
                out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == x * y - 1.0),
                "zip_map {len}"
            );
            let mut acc = a.clone();
            add_assign(&mut acc, &b);
            assert!(
                acc.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == x + y),
                "add_assign {len}"
            );
            let mut c = vec![0f32; len];
            copy(&mut c, &a);
            assert_eq!(c, a, "copy {len}");
        }
    }

    #[test]
    fn sum_squares_many_equals_the_sum_of_each_bit_for_bit() {
        let xs: Vec<Vec<f32>> = [0usize, 1, 192, SQ_CHUNK + 3, 3 * SQ_CHUNK, 5]
            .iter()
            .enumerate()
            .map(|(s, &n)| (0..n).map(|i| ((i * 31 + s * 7) % 97) as f32 / 13.0 - 3.0).collect())
            .collect();
        let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let mut want = 0f64;
        for x in &refs {
            want += sum_squares(x);
        }
        assert_eq!(sum_squares_many(&refs).to_bits(), want.to_bits());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| sum_squares_many(&refs)).to_bits(), want.to_bits());
    }

    #[test]
    fn sum_f64_is_thread_count_independent() {
        let f = |i: usize| ((i as f64) * 0.37).sin();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let a = one.install(|| sum_f64(100_003, 1000, f));
        let b = sum_f64(100_003, 1000, f);
        assert_eq!(a.to_bits(), b.to_bits());
    }

    /// The other worker starts spinning and the jobs it runs give the same
    /// bits; no spinner is left once the guard is dropped, nor, with the guard
    /// alive, after [`BLOCK_TIME`] without work.
    #[test]
    fn keep_awake_spins_until_dropped_or_idle() {
        use std::sync::atomic::Ordering;
        let until = |what: &str, done: &dyn Fn() -> bool, poke: bool| {
            let start = std::time::Instant::now();
            while !done() {
                assert!(start.elapsed().as_secs() < 10, "{what}: spinning() is {}", spinning());
                if poke {
                    // A job for the pool: it wakes a sleeping worker, which then
                    // also finds the broadcast (rayon's wake-up for broadcasts
                    // alone can miss a worker that is just falling asleep).
                    rayon::join(|| {}, || {});
                } else {
                    // No jobs: a spinner that ran one would keep spinning.
                    std::thread::yield_now();
                }
            }
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let x: Vec<f32> = (0..200_003).map(|i| ((i % 97) as f32 - 48.0) * 1e-2).collect();
        let plain = pool.install(|| sum_squares(&x));
        pool.install(|| {
            let before = STARTED.load(Ordering::Acquire);
            let awake = keep_awake();
            until("a spinner starts", &|| STARTED.load(Ordering::Acquire) > before, true);
            for _ in 0..50 {
                assert_eq!(sum_squares(&x).to_bits(), plain.to_bits());
            }
            drop(awake);
            until("spinners end with the guard", &|| spinning() == 0, false);
            let before = STARTED.load(Ordering::Acquire);
            let _idle = keep_awake();
            until(
                "a spinner starts again",
                &|| STARTED.load(Ordering::Acquire) > before,
                true,
            );
            std::thread::sleep(BLOCK_TIME * 10);
            until("an idle spinner ends by itself", &|| spinning() == 0, false);
        });
    }
}
