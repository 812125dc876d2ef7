//! Data-parallel training over several processes (ranks).
//!
//! One model is replicated on every rank; each global batch is cut into
//! contiguous slices, one per rank ([`shard`]); each rank runs forward and
//! backward on its slice, the gradients are summed over ranks
//! ([`Communicator::all_reduce_sum`]), and every rank applies the same
//! AdamW update to its identical copy. What the ranks draw is what one
//! process with the whole batch would draw:
//!
//! - **images**: the epoch permutation is a pure function of `(seed, step)`
//!   and each image's augmentation is seeded from its data-set index
//!   ([`crate::data::transform::load_batch`]), so a rank loads exactly its rows;
//! - **masks**: every rank draws the mask of the *whole* batch from the
//!   shared mask stream and keeps its rows ([`Mask::rows`]), so the stream
//!   advances the same way on every rank;
//! - **drop path**: inside [`with_batch_shard`], [`drop_path_scale`]
//!   draws the whole batch's keep/drop decisions and keeps the rank's rows.
//!
//! Each rank's loss is the mean over *its* hidden patches; weighting it by
//! its share of the batch's hidden patches makes the sum over ranks the
//! loss (and gradient) of the whole batch, whatever the slice sizes.
//!
//! [`Solo`] is the one-process communicator (nothing to exchange);
//! [`ThreadGroup`] runs ranks as threads of one process (tests, and a way to
//! read the algorithm without MPI); `MpiWorld` (cargo feature `mpi`) is
//! `MPI_COMM_WORLD` through rsmpi. docs/distributed.md has the design.
//!
//! [`Mask::rows`]: crate::Mask::rows
//! [`drop_path_scale`]: crate::layers::drop_path_scale

use std::cell::Cell;
use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};

/// The collective operations data-parallel training needs. Every rank must
/// call each operation in the same order with the same buffer lengths.
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place: every rank ends with the sum.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Every rank's `value`, indexed by rank.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
    /// Ends every rank of the job with exit status `code` (MPI_Abort). Called
    /// after a rank has printed its error, so that no other rank waits
    /// forever in a collective the failed rank will never join.
    fn abort(&self, code: i32) -> !;
    /// A short description (`"MPI, 3 ranks"`).
    fn describe(&self) -> String;
}

/// One process: rank 0 of 1, nothing to exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) {}
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        vec![value]
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "one process".into()
    }
}

/// The contiguous rows of a batch of `n` that rank `rank` of `size` takes:
/// the first `n mod size` ranks take one row more than the others.
///
/// `shard(8, r, 3)` is `0..3`, `3..6`, `6..8`.
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    assert!(size > 0 && rank < size, "rank {rank} of {size}");
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Gradient buckets for [`Communicator::all_reduce_sum`]: 4 Mi floats (16 MiB)
/// each, so the copy into and out of a bucket stays in a bounded buffer.
pub const BUCKET_FLOATS: usize = 4 << 20;

/// Sums `slices` (the gradients, in parameter order) over ranks, in place,
/// packing them into buckets of at most [`BUCKET_FLOATS`] values so that one
/// collective call moves many small tensors. A no-op on one rank.
pub fn all_reduce_slices(comm: &dyn Communicator, slices: &mut [&mut [f32]]) {
    if comm.size() == 1 {
        return;
    }
    let mut bucket: Vec<f32> = Vec::with_capacity(BUCKET_FLOATS);
    // The slices packed in the current bucket: (index, start within slice).
    let mut members: Vec<(usize, usize, usize)> = Vec::new();
    let flush = |bucket: &mut Vec<f32>, members: &mut Vec<(usize, usize, usize)>, slices: &mut [&mut [f32]]| {
        if bucket.is_empty() {
            return;
        }
        comm.all_reduce_sum(bucket);
        let mut at = 0;
        for &(i, from, len) in members.iter() {
            slices[i][from..from + len].copy_from_slice(&bucket[at..at + len]);
            at += len;
        }
        bucket.clear();
        members.clear();
    };
    for i in 0..slices.len() {
        let mut from = 0;
        while from < slices[i].len() {
            let room = BUCKET_FLOATS - bucket.len();
            let len = room.min(slices[i].len() - from);
            bucket.extend_from_slice(&slices[i][from..from + len]);
            members.push((i, from, len));
            from += len;
            if bucket.len() == BUCKET_FLOATS {
                flush(&mut bucket, &mut members, slices);
            }
        }
    }
    flush(&mut bucket, &mut members, slices);
}

/// FNV-1a, 64 bits: a fingerprint of a configuration for [`check_agreement`].
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks that every rank holds the same `fingerprint` (of its
/// configuration, data set and starting state); on a mismatch every rank
/// gets the same [`crate::MimError::Ranks`] error naming the ranks that
/// differ from rank 0.
pub fn check_agreement(comm: &dyn Communicator, what: &str, fingerprint: u64) -> crate::Result<()> {
    let all = comm.all_gather_u64(fingerprint);
    let differ: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|&(_, &f)| f != all[0])
        .map(|(r, _)| r.to_string())
        .collect();
    let who = match differ.len() {
        0 => return Ok(()),
        1 => format!("rank {} has", differ[0]),
        _ => format!("ranks {} have", differ.join(", ")),
    };
    Err(crate::MimError::Ranks(format!(
        "{who} another {what} than rank 0 (every rank must start from the same command, data and checkpoint)"
    )))
}

thread_local! {
    static BATCH_SHARD: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's forward pass marked as rows
/// `offset..offset + b` of a global batch of `global`: per-sample random
/// draws (drop path) are made for the whole global batch and sliced, so a
/// rank draws what one process with the whole batch would. The previous
/// setting is restored afterwards.
pub fn with_batch_shard<R>(offset: usize, global: usize, f: impl FnOnce() -> R) -> R {
    let prev = BATCH_SHARD.with(|s| s.replace(Some((offset, global))));
    struct Restore(Option<(usize, usize)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BATCH_SHARD.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// The rows `(offset, global)` that a per-sample draw over a local batch of
/// `b` should take, or `None` outside [`with_batch_shard`] (or when `b` does
/// not fit the marked shard: a forward over other data, e.g. evaluation).
pub fn batch_shard(b: usize) -> Option<(usize, usize)> {
    BATCH_SHARD
        .with(|s| s.get())
        .filter(|&(offset, global)| offset + b <= global)
}

/// Ranks as threads of one process, for tests: [`ThreadGroup::run`] starts
/// `size` threads, each with its own communicator. Sums are taken in rank
/// order, so results are deterministic.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f32>>>,
    words: Mutex<Vec<u64>>,
}

impl ThreadGroup {
    /// Runs `f(communicator)` on `size` threads and returns the results in
    /// rank order. A panic on any rank is re-raised.
    pub fn run<T: Send>(size: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
        assert!(size > 0, "a group needs a rank");
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
            words: Mutex::new(vec![0; size]),
        });
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    let comm = ThreadGroup {
                        rank,
                        shared: shared.clone(),
                    };
                    let f = &f;
                    s.spawn(move || f(comm))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let sh = &self.shared;
        sh.slots.lock().expect("no rank panicked")[self.rank] = buf.to_vec();
        sh.barrier.wait();
        {
            let slots = sh.slots.lock().expect("no rank panicked");
            buf.copy_from_slice(&slots[0]);
            for other in &slots[1..] {
                buf.iter_mut().zip(other).for_each(|(b, o)| *b += o);
            }
        }
        // Nobody writes the slots again before everyone has read them.
        sh.barrier.wait();
    }
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let sh = &self.shared;
        sh.words.lock().expect("no rank panicked")[self.rank] = value;
        sh.barrier.wait();
        let all = sh.words.lock().expect("no rank panicked").clone();
        sh.barrier.wait();
        all
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted the group with status {code}", self.rank)
    }
    fn describe(&self) -> String {
        format!("{} threads as ranks", self.shared.size)
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_world::MpiWorld;

#[cfg(feature = "mpi")]
mod mpi_world {
    use super::Communicator;
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::CommunicatorCollectives;

    /// `MPI_COMM_WORLD` (Open MPI or MPICH through rsmpi). MPI is finalised
    /// when this is dropped.
    pub struct MpiWorld {
        world: SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl MpiWorld {
        /// Initialises MPI with funnelled threading (only the thread that
        /// called this makes MPI calls; rayon's workers and the data loader
        /// never do). `None` if MPI was initialised already.
        pub fn init() -> Option<MpiWorld> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
            Some(MpiWorld {
                world: universe.world(),
                _universe: universe,
            })
        }

        /// True if this process was started by an MPI launcher (`mpirun`,
        /// `mpiexec`, `srun`), judged by the launchers' environment variables.
        pub fn launched() -> bool {
            ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"]
                .iter()
                .any(|v| std::env::var_os(v).is_some())
        }
    }

    impl Communicator for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
        fn all_gather_u64(&self, value: u64) -> Vec<u64> {
            let mut all = vec![0u64; self.size()];
            self.world.all_gather_into(&value, &mut all[..]);
            all
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn describe(&self) -> String {
            format!("MPI, {} ranks", self.size())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        assert_eq!(shard(8, 0, 3), 0..3);
        assert_eq!(shard(8, 1, 3), 3..6);
        assert_eq!(shard(8, 2, 3), 6..8);
        for n in 0..20 {
            for size in 1..6 {
                let mut next = 0;
                for r in 0..size {
                    let s = shard(n, r, size);
                    assert_eq!(s.start, next);
                    assert!(s.len() == n / size || s.len() == n / size + 1);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn thread_group_sums_and_gathers() {
        let out = ThreadGroup::run(3, |c| {
            let mut v = vec![c.rank() as f32; 5];
            c.all_reduce_sum(&mut v);
            (v, c.all_gather_u64(10 + c.rank() as u64))
        });
        for (v, g) in out {
            assert_eq!(v, vec![3.0; 5]);
            assert_eq!(g, vec![10, 11, 12]);
        }
    }

    #[test]
    fn bucketed_reduce_matches_a_flat_one() {
        // Sizes around the bucket boundary, so that a tensor splits across
        // buckets and a bucket holds several tensors.
        let sizes = [3, BUCKET_FLOATS - 2, 5, BUCKET_FLOATS + 7, 1];
        let out = ThreadGroup::run(2, |c| {
            let mut bufs: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (c.rank() * 7 + i + j % 13) as f32).collect())
                .collect();
            let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            all_reduce_slices(&c, &mut slices);
            bufs
        });
        for bufs in &out {
            for (i, b) in bufs.iter().enumerate() {
                for (j, &v) in b.iter().enumerate() {
                    assert_eq!(v, (2 * (i + j % 13) + 7) as f32, "tensor {i} value {j}");
                }
            }
        }
    }

    #[test]
    fn disagreement_names_the_ranks() {
        let out = ThreadGroup::run(3, |c| {
            check_agreement(&c, "configuration", if c.rank() == 2 { 9 } else { 1 }).map_err(|e| e.to_string())
        });
        for r in out {
            let e = r.unwrap_err();
            assert!(e.contains("rank 2 has another configuration"), "{e}");
        }
        assert!(
            ThreadGroup::run(2, |c| check_agreement(&c, "x", 5).is_ok())
                .into_iter()
                .all(|b| b)
        );
    }

    #[test]
    fn batch_shard_is_scoped() {
        assert_eq!(batch_shard(4), None);
        with_batch_shard(2, 8, || {
            assert_eq!(batch_shard(4), Some((2, 8)));
            assert_eq!(batch_shard(7), None);
        });
        assert_eq!(batch_shard(4), None);
    }
}
