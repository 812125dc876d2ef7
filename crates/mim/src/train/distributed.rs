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
//!   ([`crate::data::loader::load_batch`]), so a rank loads exactly its rows;
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
//! [`Mask::rows`]: crate::model::masking::Mask::rows
//! [`drop_path_scale`]: crate::model::layers::drop_path_scale
//! [`with_batch_shard`]: crate::model::layers::with_batch_shard

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Barrier, Mutex};
use tessera_tensor::{GradStore, Tensor, TensorId};

/// The collective operations data-parallel training needs. Every rank must
/// call each operation in the same order with the same buffer lengths.
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place: every rank ends with the sum.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Starts the element-wise sum of `buf` over ranks and returns at once
    /// where the communicator can work in the background (`MpiWorld` has
    /// a thread for it); [`PendingSum::wait`] gives the sum. Sums are matched
    /// across ranks by the order in which they are started. By default the
    /// sum is done before returning.
    fn start_sum(&self, mut buf: Vec<f32>) -> PendingSum {
        self.all_reduce_sum(&mut buf);
        PendingSum::Done(buf)
    }
    /// Every rank's `value`, indexed by rank.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
    /// Ends every rank of the job with exit status `code` (MPI_Abort). Called
    /// after a rank has printed its error, so that no other rank waits
    /// forever in a collective the failed rank will never join.
    fn abort(&self, code: i32) -> !;
    /// A short description (`"MPI, 3 ranks"`).
    fn describe(&self) -> String;
}

/// A sum started by [`Communicator::start_sum`].
pub enum PendingSum {
    /// Already summed.
    Done(Vec<f32>),
    /// Being summed by a communication thread, which sends the result.
    Running(std::sync::mpsc::Receiver<Vec<f32>>),
}

impl PendingSum {
    /// The sum over ranks (waits for it if needed).
    pub fn wait(self) -> Vec<f32> {
        match self {
            PendingSum::Done(v) => v,
            PendingSum::Running(rx) => rx
                .recv()
                .expect("the MPI thread answers every sum it accepted (it aborts the job otherwise)"),
        }
    }
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

/// The most values in one gradient bucket: 4 Mi floats (16 MiB), the
/// order of PyTorch DDP's 25 MB buckets.
pub const BUCKET_FLOATS: usize = 4 << 20;

/// Which parameters share a bucket when gradients are summed over ranks.
/// Buckets are filled from the last parameter to the first — roughly the
/// order in which backward completes their gradients (the head before the
/// embedding) — each up to `bucket_floats` values (a larger parameter has a
/// bucket of its own).
#[derive(Clone, Debug)]
pub struct BucketPlan {
    /// Parameter indices of each bucket, in the order buckets are summed.
    buckets: Vec<Vec<usize>>,
    /// Parameter index by tensor.
    index: HashMap<TensorId, usize>,
    /// Each parameter's size.
    sizes: Vec<usize>,
}

impl BucketPlan {
    pub fn new(params: &[(String, Tensor)], bucket_floats: usize) -> BucketPlan {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut filled = usize::MAX;
        for (i, (_, t)) in params.iter().enumerate().rev() {
            if filled.saturating_add(t.numel()) > bucket_floats {
                buckets.push(Vec::new());
                filled = 0;
            }
            buckets.last_mut().expect("a bucket was opened").push(i);
            filled += t.numel();
        }
        BucketPlan {
            buckets,
            index: params.iter().enumerate().map(|(i, (_, t))| (t.id(), i)).collect(),
            sizes: params.iter().map(|(_, t)| t.numel()).collect(),
        }
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if there is no parameter.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// One step's gradient sum over ranks, bucket by bucket. Handed to backward
/// ([`GradientSum::leaf_ready`] from [`Tensor::backward_into_with`]), it
/// starts each bucket as soon as all its gradients are complete, so the sum
/// runs while backward goes on; [`GradientSum::finish`] starts what is left
/// and collects the sums. Buckets are started strictly in plan order, so
/// every rank starts the same sums in the same order even where their
/// backward passes complete gradients differently.
pub struct GradientSum<'a> {
    plan: &'a BucketPlan,
    params: &'a [(String, Tensor)],
    comm: &'a dyn Communicator,
    ready: Vec<bool>,
    next: usize,
    pending: Vec<PendingSum>,
}

impl<'a> GradientSum<'a> {
    pub fn new(plan: &'a BucketPlan, params: &'a [(String, Tensor)], comm: &'a dyn Communicator) -> Self {
        GradientSum {
            plan,
            params,
            comm,
            ready: vec![false; params.len()],
            next: 0,
            pending: Vec::new(),
        }
    }

    /// `leaf`'s gradient in `grads` is complete: start every bucket, in
    /// order, whose gradients all are.
    pub fn leaf_ready(&mut self, leaf: &Tensor, grads: &GradStore) {
        if let Some(&i) = self.plan.index.get(&leaf.id()) {
            self.ready[i] = true;
            while self.next < self.plan.buckets.len() && self.plan.buckets[self.next].iter().all(|&p| self.ready[p]) {
                self.start_next(grads);
            }
        }
    }

    fn start_next(&mut self, grads: &GradStore) {
        let members = &self.plan.buckets[self.next];
        let mut buf = Vec::with_capacity(members.iter().map(|&p| self.plan.sizes[p]).sum());
        for &p in members {
            match grads.get(&self.params[p].1) {
                Some(g) => buf.extend_from_slice(g),
                // No gradient here (another rank may have one): zeros.
                None => buf.resize(buf.len() + self.plan.sizes[p], 0.0),
            }
        }
        self.pending.push(self.comm.start_sum(buf));
        self.next += 1;
    }

    /// Starts the buckets not started yet, then one last small sum: for
    /// every parameter the number of ranks that had a gradient, and `loss`
    /// (this rank's part of the batch's loss). Waits for every sum, puts the
    /// summed gradients in `grads` — a parameter no rank reached stays
    /// without one, as on one process, so AdamW skips it alike — and
    /// returns the batch's loss.
    pub fn finish(mut self, grads: &mut GradStore, loss: f32) -> crate::error::Result<f32> {
        while self.next < self.plan.buckets.len() {
            self.start_next(grads);
        }
        let mut counts: Vec<f32> = self
            .params
            .iter()
            .map(|(_, t)| f32::from(u8::from(grads.get(t).is_some())))
            .collect();
        counts.push(loss);
        let counts = self.comm.start_sum(counts).wait();
        for (members, pending) in self.plan.buckets.iter().zip(self.pending) {
            let sum = pending.wait();
            let mut at = 0;
            for &p in members {
                let n = self.plan.sizes[p];
                if counts[p] > 0.0 {
                    grads.insert(&self.params[p].1, sum[at..at + n].to_vec())?;
                }
                at += n;
            }
        }
        Ok(counts[self.params.len()])
    }
}

/// FNV-1a, 64 bits: a fingerprint of a configuration for [`check_agreement`].
pub fn fingerprint(bytes: &[u8]) -> u64 {
    fingerprint_iter(bytes.iter().copied())
}

/// [`fingerprint`] of bytes as they come (a parameter's f32 values as
/// little-endian bytes, without copying them into a buffer first).
pub fn fingerprint_iter(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks that every rank holds the same `fingerprint` (of its
/// configuration, data set and starting state); on a mismatch every rank
/// gets the same [`crate::error::MimError::Ranks`] error naming the ranks that
/// differ from rank 0.
pub fn check_agreement(comm: &dyn Communicator, what: &str, fingerprint: u64) -> crate::error::Result<()> {
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
    Err(crate::error::MimError::Ranks(format!(
        "{who} another {what} than rank 0 (every rank must start from the same command, data and checkpoint)"
    )))
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
    use super::{Communicator, PendingSum};
    use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};

    /// What the MPI thread is asked to do, in the order every rank asks.
    enum Job {
        Sum(Vec<f32>, SyncSender<Vec<f32>>),
        Gather(u64, SyncSender<Vec<u64>>),
        Abort(i32),
    }

    /// `MPI_COMM_WORLD` (Open MPI or MPICH through rsmpi), driven by a thread
    /// of its own: that thread initialises MPI and makes every MPI call
    /// (funnelled threading), taking jobs in order from a channel. A sum
    /// started during backward ([`Communicator::start_sum`]) then runs
    /// while the training thread goes on differentiating. MPI is finalised
    /// when this is dropped.
    pub struct MpiWorld {
        jobs: Option<std::sync::mpsc::Sender<Job>>,
        thread: Option<std::thread::JoinHandle<()>>,
        rank: usize,
        size: usize,
    }

    impl MpiWorld {
        /// Starts the MPI thread and MPI in it. `None` if MPI was
        /// initialised already (or could not be).
        pub fn init() -> Option<MpiWorld> {
            let (ready_tx, ready_rx) = sync_channel::<Option<(usize, usize)>>(1);
            let (jobs_tx, jobs_rx) = channel::<Job>();
            let thread = std::thread::Builder::new()
                .name("tessera-mpi".into())
                .spawn(move || serve(jobs_rx, ready_tx))
                .ok()?;
            let (rank, size) = ready_rx.recv().ok().flatten()?;
            Some(MpiWorld {
                jobs: Some(jobs_tx),
                thread: Some(thread),
                rank,
                size,
            })
        }

        /// True if this process was started by an MPI launcher (`mpirun`,
        /// `mpiexec`, `srun`), judged by the launchers' environment variables.
        pub fn launched() -> bool {
            ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"]
                .iter()
                .any(|v| std::env::var_os(v).is_some())
        }

        fn send(&self, job: Job) {
            self.jobs
                .as_ref()
                .expect("jobs are sent while the world lives")
                .send(job)
                .expect("the MPI thread lives as long as the world");
        }
    }

    /// The MPI thread: initialise, report rank and size, then serve jobs
    /// until the world is dropped (the channel closes), and finalise.
    fn serve(jobs: Receiver<Job>, ready: SyncSender<Option<(usize, usize)>>) {
        use mpi::collective::SystemOperation;
        use mpi::topology::Communicator as _;
        use mpi::traits::CommunicatorCollectives;
        let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
            let _ = ready.send(None);
            return;
        };
        let world = universe.world();
        let _ = ready.send(Some((world.rank() as usize, world.size() as usize)));
        for job in jobs {
            match job {
                Job::Sum(send, reply) => {
                    let mut sum = vec![0f32; send.len()];
                    world.all_reduce_into(&send[..], &mut sum[..], SystemOperation::sum());
                    let _ = reply.send(sum);
                }
                Job::Gather(value, reply) => {
                    let mut all = vec![0u64; world.size() as usize];
                    world.all_gather_into(&value, &mut all[..]);
                    let _ = reply.send(all);
                }
                Job::Abort(code) => world.abort(code),
            }
        }
        drop(universe); // MPI_Finalize
    }

    impl Drop for MpiWorld {
        fn drop(&mut self) {
            drop(self.jobs.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    impl Communicator for MpiWorld {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            let sum = self.start_sum(buf.to_vec()).wait();
            buf.copy_from_slice(&sum);
        }
        fn start_sum(&self, buf: Vec<f32>) -> PendingSum {
            let (tx, rx) = sync_channel(1);
            self.send(Job::Sum(buf, tx));
            PendingSum::Running(rx)
        }
        fn all_gather_u64(&self, value: u64) -> Vec<u64> {
            let (tx, rx) = sync_channel(1);
            self.send(Job::Gather(value, tx));
            rx.recv().expect("the MPI thread answers")
        }
        fn abort(&self, code: i32) -> ! {
            // The MPI thread aborts the job once it is free; should it be
            // stuck in a sum that never completes, end this rank anyway
            // (the launcher then ends the others).
            self.send(Job::Abort(code));
            std::thread::sleep(std::time::Duration::from_secs(20));
            std::process::exit(code)
        }
        fn describe(&self) -> String {
            format!("MPI, {} ranks", self.size)
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

    /// Buckets hold whole parameters, last first, up to the limit (a larger
    /// one alone); summed early (as backward reports leaves, in any order)
    /// or late, over 2 ranks, with a parameter only one rank has a gradient
    /// for and one no rank has: the sums, the counts and the loss are right.
    #[test]
    fn gradient_buckets_sum_early_or_late() {
        let sizes = [3usize, 5, 9, 2, 4];
        let params: Vec<(String, Tensor)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("p{i}"), Tensor::param(vec![0.0; n], &[n]).unwrap()))
            .collect();
        let plan = BucketPlan::new(&params, 8);
        assert_eq!(plan.buckets, vec![vec![4, 3], vec![2], vec![1, 0]]);
        for early in [false, true] {
            let out = ThreadGroup::run(2, |c| {
                let mut grads = GradStore::new();
                for (i, (_, t)) in params.iter().enumerate() {
                    // p1: rank 1 only; p3: nobody.
                    if i == 3 || (i == 1 && c.rank() == 0) {
                        continue;
                    }
                    let g = (0..t.numel()).map(|j| (10 * c.rank() + i + j) as f32).collect();
                    grads.insert(t, g).unwrap();
                }
                let mut sum = GradientSum::new(&plan, &params, &c);
                if early {
                    for i in [4, 2, 0, 1] {
                        sum.leaf_ready(&params[i].1, &grads);
                    }
                    assert_eq!(sum.next, 0, "bucket 0 waits for p3, the others for bucket 0");
                }
                let loss = sum.finish(&mut grads, 0.25 + c.rank() as f32).unwrap();
                (
                    loss,
                    params
                        .iter()
                        .map(|(_, t)| grads.get(t).map(|g| g.to_vec()))
                        .collect::<Vec<_>>(),
                )
            });
            for (loss, g) in out {
                assert_eq!(loss, 1.5);
                for (i, gi) in g.iter().enumerate() {
                    match i {
                        3 => assert!(gi.is_none(), "no rank had p3"),
                        1 => assert_eq!(
                            gi.as_ref().unwrap(),
                            &(0..5).map(|j| (11 + j) as f32).collect::<Vec<_>>()
                        ),
                        _ => {
                            let want: Vec<f32> = (0..sizes[i]).map(|j| (10 + 2 * (i + j)) as f32).collect();
                            assert_eq!(gi.as_ref().unwrap(), &want, "p{i}");
                        }
                    }
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
}
