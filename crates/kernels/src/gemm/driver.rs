//! The GEMM driver: the BLIS loop nest around a micro-kernel, and how the
//! threads share it.
//!
//! ```text
//! split C into units: (row panel of MR rows) × (column block of ≤ NC columns)
//! each thread takes one contiguous run of units (±1 unit of the others)
//! if the runs share column blocks:
//!   pack all of B once, in NR-column panels (KC-deep slices, in parallel)   // shared, read-only
//! each thread, for each column block in its run:
//!   for each k block pc of KC values                  // the same blocks for every thread
//!     (runs of whole column blocks: pack this k block of the block's B now, in L2)
//!     for each row panel rp of its run
//!       pack A[rp rows, pc block] into an MR × KC micro-panel   // L1-resident
//!       for each NR panel jp of the column block               // B block KC × NC in L2
//!         micro-kernel: C[rp, jp] (+)= α · A_panel · B_panel (epilogue on the first block)
//! ```
//!
//! Why this split scales: B is packed once (for all threads, or by the one
//! thread that owns its column block), A once per column block, and C is cut
//! in two dimensions, so 16
//! threads get equal work both on `400 × 768 · 768 × 2304` (34 row panels × 5
//! column blocks = 170 units) and on `1088 × 768 · 768 × 192` (91 × 1).
//!
//! KC and NC come from the CPU's caches ([`Blocking`]).
//!
//! Determinism: an element's value depends only on its k blocks (fixed KC)
//! and the kernel's k-ordered multiply-adds, never on the tile it falls in or
//! on which thread computed it, so results are bit-identical for any thread
//! count.

use super::blocking::Blocking;
use super::kernel::{APanel, Epilogue, MicroKernel, TileDst};
use super::pack::Scratch;
use super::view::MatRef;
use crate::par::SendPtr;
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Units of work (row panel × column block) each task should get at least.
const UNITS_PER_TASK: usize = 8;
/// Below this many FLOPs per thread the fork/join costs more than it saves.
const MIN_FLOPS_PER_TASK: usize = 1 << 21;
/// Largest tile of any kernel (for the stack buffers).
const MAX_MR: usize = 32;
const MAX_NR: usize = 32;

/// One product: `C = α·A·B + β·C (+ bias on every row)`.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub alpha: f32,
    pub a: MatRef<'a>,
    pub b: MatRef<'a>,
    pub beta: f32,
    /// `N` values, or none.
    pub bias: Option<&'a [f32]>,
    /// Also write `gelu(C)` here (rows this far apart, columns contiguous),
    /// tile by tile as C's tiles get their last k block: the fc1 layer of an
    /// MLP, without a second pass over C.
    pub gelu_to: Option<(SendPtr, usize)>,
    /// Added to C with the first k block (C's old contents are ignored:
    /// `β` must be 0): a residual connection `x + h·Wᵀ + b` without a pass of
    /// its own. Same shape as C.
    pub residual: Option<MatRef<'a>>,
    /// The arithmetic (bf16 falls back to f32 where the CPU has none).
    pub prec: super::Precision,
}

/// Runs `p` with kernel `K` on at most `threads` threads (1: on the caller only).
///
/// # Safety
/// The CPU supports `K`'s instruction set; `c` points to a `rows × cols`
/// region (rows = A's rows, cols = B's columns) with strides `(rsc, csc)` that
/// is valid for reads and writes, whose elements do not overlap if
/// `threads > 1`, and that no one else touches during the call. `p.a` and
/// `p.b` have matching inner dimensions ≥ 1; the bias, if any, has `cols` values.
pub(crate) unsafe fn run<K: MicroKernel>(p: &Product, c: *mut f32, rsc: usize, csc: usize, threads: usize) {
    // SAFETY: the caller's promises are `run_maybe_profiled`'s.
    unsafe { run_maybe_profiled::<K>(p, c, rsc, csc, threads, None) }
}

/// What each part of a split costs, measured on one core (see
/// [`split_profile`](super::split_profile)).
#[derive(Clone, Debug, Default)]
pub struct SplitTimes {
    /// Packing B (shared; P threads would share it P ways).
    pub pack: Duration,
    /// Each thread's part of C, in task order.
    pub parts: Vec<Duration>,
}

/// Runs `p` split as it would be for `threads` threads, but every part on
/// the calling thread, one after another, timing the packing and each part:
/// the per-thread work P threads would do, seen on a machine with fewer cores.
///
/// # Safety
/// As [`run`].
pub(crate) unsafe fn run_profiled<K: MicroKernel>(
    p: &Product,
    c: *mut f32,
    rsc: usize,
    csc: usize,
    threads: usize,
) -> SplitTimes {
    let mut times = SplitTimes::default();
    // SAFETY: as `run`; the parts run one after another on this thread.
    unsafe { run_maybe_profiled::<K>(p, c, rsc, csc, threads, Some(&mut times)) };
    times
}

/// [`run`], or with `profile`, [`run_profiled`].
///
/// # Safety
/// As [`run`].
unsafe fn run_maybe_profiled<K: MicroKernel>(
    p: &Product,
    c: *mut f32,
    rsc: usize,
    csc: usize,
    threads: usize,
    mut profile: Option<&mut SplitTimes>,
) {
    let (m, k, n) = (p.a.rows(), p.a.cols(), p.b.cols());
    debug_assert!(k >= 1 && p.b.rows() == k && K::MR <= MAX_MR && K::NR <= MAX_NR);
    if m == 0 || n == 0 {
        return;
    }
    let flops = 2 * m * n * k;
    let threads = threads.min(flops / MIN_FLOPS_PER_TASK).max(1);
    let parallel = threads > 1 && profile.is_none();
    let start = profile.is_some().then(Instant::now);
    let Blocking { kc: kc_max, nc, .. } = Blocking::detected();
    // NC is sized for f32's 4 bytes a value: a bf16 kernel's B block (2
    // bytes a value) fills the same half of L2 with twice the columns, and
    // A is packed once per column block, so half as often.
    let nc = nc * K::KU;

    // Units: (column block, row panel), column-block major.
    // Column blocks of at most NC columns, and narrower when there are
    // few row panels, so each task gets ≥ UNITS_PER_TASK units and the tasks
    // differ by at most 1/UNITS_PER_TASK (a narrower block only means A's
    // rows are read once more).
    debug_assert!(kc_max.is_multiple_of(K::KG));
    let panels = n.div_ceil(K::NR);
    let row_panels = m.div_ceil(K::MR);
    let col_blocks = (panels * K::NR)
        .div_ceil(nc)
        .max((UNITS_PER_TASK * threads).div_ceil(row_panels))
        .min(panels);
    let block_panels = panels.div_ceil(col_blocks);
    let col_blocks = panels.div_ceil(block_panels);
    let units = col_blocks * row_panels;
    let tasks = threads.min(units);
    // Where every task's run of units is made of whole column blocks (one
    // task; or as many column blocks as a multiple of the tasks), no two
    // tasks read the same B panels: each packs the k blocks of its own
    // column blocks just before it uses them, while they are in its L2,
    // instead of all of B first going through memory (a 768 × 3072 weight
    // is 9 MiB: written packed, then read back, on top of being read).
    // Otherwise B is packed once for all tasks, in parallel, before they start.
    let private = (0..=tasks).all(|t| (t * units / tasks).is_multiple_of(row_panels));

    // Pack B: panel jp holds columns jp·NR .. +NR for every k, as (steps, NR)
    // (KU values of k per packed step: 1 for f32, a pair for bf16; each k
    // block padded to a multiple of KG values).
    let panel_len = K::steps(k) * K::NR;
    let mut packed = Scratch::take(if private { 0 } else { panels * panel_len });
    let bufs = packed.as_mut_slice();
    let pack_panel = |jp: usize, panel: &mut [f32]| {
        let cols = K::NR.min(n - jp * K::NR);
        let slice = |(kb, dst): (usize, &mut [f32])| {
            let pc = kb * kc_max;
            K::pack_b(dst, &p.b, jp * K::NR, cols, pc, kc_max.min(k - pc));
        };
        if parallel {
            panel.par_chunks_mut(kc_max / K::KU * K::NR).enumerate().for_each(slice);
        } else {
            panel.chunks_mut(kc_max / K::KU * K::NR).enumerate().for_each(slice);
        }
    };
    match (private, parallel) {
        (true, _) => {} // each task packs its own, in `block`
        (false, true) => bufs
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(jp, panel)| pack_panel(jp, panel)),
        (false, false) => bufs
            .chunks_mut(panel_len)
            .enumerate()
            .for_each(|(jp, panel)| pack_panel(jp, panel)),
    }
    let packed_b = PackedB {
        shared: (!private).then_some(&*bufs),
        kc: kc_max,
    };
    if let (Some(times), Some(start)) = (profile.as_deref_mut(), start) {
        times.pack = start.elapsed();
    }

    let cptr = SendPtr(c);
    let task = |t: usize| {
        let (u0, u1) = (t * units / tasks, (t + 1) * units / tasks);
        let mut cb = u0 / row_panels;
        while cb * row_panels < u1 {
            let lo = u0.max(cb * row_panels) - cb * row_panels;
            let hi = u1.min((cb + 1) * row_panels) - cb * row_panels;
            let jps = cb * block_panels..((cb + 1) * block_panels).min(panels);
            // SAFETY: tasks own disjoint runs of units, hence disjoint tiles of C;
            // the caller vouches for C, the CPU and the operands.
            unsafe { block::<K>(p, packed_b, lo..hi, jps, cptr.get(), rsc, csc) };
            cb += 1;
        }
    };
    if let Some(times) = profile {
        for t in 0..tasks {
            let start = Instant::now();
            task(t);
            times.parts.push(start.elapsed());
        }
    } else if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Where a task finds B packed, and the depth of its k blocks.
#[derive(Clone, Copy)]
struct PackedB<'a> {
    /// All of B, packed before the tasks started (NR-column panels of
    /// KC-deep slices, shared by every task); or `None`: the task packs each
    /// k block of its column block itself.
    shared: Option<&'a [f32]>,
    kc: usize,
}

/// Row panels `rps` × NR panels `jps` of C, every k block.
///
/// # Safety
/// As [`run`]; no one else writes these tiles of C during the call.
unsafe fn block<K: MicroKernel>(
    p: &Product,
    packed: PackedB,
    rps: std::ops::Range<usize>,
    jps: std::ops::Range<usize>,
    c: *mut f32,
    rsc: usize,
    csc: usize,
) {
    let (m, k, n) = (p.a.rows(), p.a.cols(), p.b.cols());
    let (mr, nr) = (K::MR, K::NR);
    let PackedB { shared, kc: kc_max } = packed;
    let panel_len = K::steps(k) * nr;
    // This column block's B panels for one k block, when the task packs them.
    let mut own_b = Scratch::take(match shared {
        None => jps.len() * nr * K::steps(kc_max.min(k)),
        Some(_) => 0,
    });
    let own_b = own_b.as_mut_slice();
    // A row-major A is read in place (no packing pass), unless its rows are a
    // multiple of 4 KiB apart: then all MR rows fall into the same L1 sets and
    // evict each other (400 × 3072 · 3072 × 768 on 2 threads: 165 in place,
    // 175 GFLOP/s packed; 2 KiB apart is still better in place, 207 against
    // 190). Anything else is packed `Blocking::a_panels` micro-panels at a time. (A
    // transposed A could be read in place too, but its power-of-two strides
    // map every k to the same few sets: measured 75 against 88–95 packed.)
    let mc_panels = Blocking::detected().a_panels;
    let in_place = K::IN_PLACE_A && p.a.cs() == 1 && !p.a.rs().is_multiple_of(1024);
    let group_panels = if in_place { 1 } else { mc_panels.min(rps.len()) };
    let mut apack_buf = Scratch::take(group_panels * mr * K::steps(kc_max.min(k)));
    let apack = apack_buf.as_mut_slice();
    let mut tile = [0f32; MAX_MR * MAX_NR];
    for pc in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - pc);
        let steps = K::steps(kc); // packed rows of this k block
        if shared.is_none() {
            for (q, jp) in jps.clone().enumerate() {
                let cols = nr.min(n - jp * nr);
                K::pack_b(&mut own_b[q * steps * nr..], &p.b, jp * nr, cols, pc, kc);
            }
        }
        // With a residual, its tile is copied into C just before the first
        // k block, which then accumulates onto it (β = 1).
        let first = Epilogue {
            alpha: p.alpha,
            beta: if p.residual.is_some() { 1.0 } else { p.beta },
            bias: p.bias,
        };
        let later = Epilogue {
            alpha: p.alpha,
            beta: 1.0,
            bias: None,
        };
        for g0 in rps.clone().step_by(mc_panels) {
            let group = g0..(g0 + mc_panels).min(rps.end);
            let r0 = g0 * mr;
            let group_rows = (group.len() * mr).min(m - r0);
            if !in_place {
                K::pack_a(apack, &p.a, r0, group_rows, pc, kc);
            }
            for (q, rp) in group.enumerate() {
                let rows = mr.min(m - rp * mr);
                let a = if in_place && rows == mr {
                    let offset = rp * mr * p.a.rs() + pc;
                    debug_assert!(offset + (mr - 1) * p.a.rs() + kc <= p.a.data().len());
                    APanel::Rows(p.a.data()[offset..].as_ptr(), p.a.rs())
                } else if in_place {
                    // The ragged last panel: packed with zero rows.
                    K::pack_a(apack, &p.a, rp * mr, rows, pc, kc);
                    APanel::Packed(apack.as_ptr(), mr)
                } else {
                    APanel::Packed(apack[q * steps * mr..].as_ptr(), mr)
                };
                for jp in jps.clone() {
                    let cols = nr.min(n - jp * nr);
                    let b = match shared {
                        Some(all) => &all[jp * panel_len + pc / K::KU * nr..][..steps * nr],
                        None => &own_b[(jp - jps.start) * steps * nr..][..steps * nr],
                    };
                    let ep = if pc == 0 { first } else { later };
                    let ep = Epilogue {
                        bias: ep.bias.map(|v| &v[jp * nr..]),
                        ..ep
                    };
                    // SAFETY: the tile at (rp, jp) lies inside C (rows and cols
                    // clipped to the edge) and belongs to this call, as does the
                    // same block of `gelu_to` (the caller vouches for its shape);
                    // the A panel covers MR rows × kc and the B panel kc·NR
                    // values; the residual view has C's shape, so its tile at
                    // (rp, jp) is inside it; the caller vouches for the CPU. (The edge path
                    // below, C with strided columns, never has `gelu_to`:
                    // `product_raw` applies it after.)
                    unsafe {
                        let ct = c.add(rp * mr * rsc + jp * nr * csc);
                        let dst = TileDst {
                            c: ct,
                            rsc,
                            csc,
                            rows,
                            cols,
                        };
                        if let (Some(r), 0) = (p.residual, pc) {
                            copy_tile(&r, rp * mr, jp * nr, dst);
                        }
                        if csc == 1 {
                            K::full(kc, a, b, dst, &ep);
                            if let (Some((out, ors)), true) = (p.gelu_to, pc + kc == k) {
                                // The tile is final and still in L1: its GELU now.
                                let (r0, c0) = (rp * mr, jp * nr);
                                for i in 0..rows {
                                    let src = std::slice::from_raw_parts(ct.add(i * rsc), cols);
                                    let act = std::slice::from_raw_parts_mut(out.get().add((r0 + i) * ors + c0), cols);
                                    crate::gelu::gelu_into(K::ISA, act, src);
                                }
                            }
                        } else {
                            // C's columns are strided: the tile goes through a
                            // contiguous copy, and so meets the same arithmetic.
                            let local = TileDst {
                                c: tile.as_mut_ptr(),
                                rsc: nr,
                                csc: 1,
                                rows,
                                cols,
                            };
                            if ep.beta != 0.0 {
                                copy_between(dst, local);
                            }
                            K::full(kc, a, b, local, &ep);
                            copy_between(local, dst);
                        }
                    }
                }
            }
        }
    }
}

/// Copies the `rows × cols` region `src` into `dst` (of the same size).
///
/// # Safety
/// Both regions are valid (`src` for reads, `dst` for writes) and do not overlap.
unsafe fn copy_between(src: TileDst, dst: TileDst) {
    debug_assert!(src.rows == dst.rows && src.cols == dst.cols);
    for i in 0..src.rows {
        for j in 0..src.cols {
            // SAFETY: (i, j) lies in both regions.
            unsafe { *dst.at(i, j) = *src.at(i, j) };
        }
    }
}

/// Copies the block of `r` at `(r0, c0)` of `dst`'s size into `dst`.
///
/// # Safety
/// `dst.c + i·dst.rsc + j·dst.csc` is valid for writes for `i < dst.rows`,
/// `j < dst.cols`, and written by no one else during the call.
pub(crate) unsafe fn copy_tile(r: &MatRef, r0: usize, c0: usize, dst: TileDst) {
    for i in 0..dst.rows {
        for j in 0..dst.cols {
            // SAFETY: (i, j) lies in the region the caller vouched for.
            unsafe { *dst.at(i, j) = r.at(r0 + i, c0 + j) };
        }
    }
}
