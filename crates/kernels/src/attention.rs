//! Fused multi-head scaled-dot-product self-attention, from packed `qkv`.
//!
//! Dims: `B` batch, `N` tokens, `D` width, `H` heads, `Dh = D/H` head width.
//!
//! ```text
//! qkv (B, N, 3·D)   timm's packing: columns [0, D) are q, [D, 2D) k, [2D, 3D) v;
//!                   head h owns columns h·Dh .. (h+1)·Dh of each
//! out (B, N, D)     head h's output in columns h·Dh .. (h+1)·Dh
//! lse (B, H, N)     log Σ_j e^{S_ij} per query row, saved for the backward
//! p   (B, H, N, N)  the probabilities themselves, from [`probabilities`] only
//!
//! per (b, h):  S = Q Kᵀ / √Dh + A   (N, N)   P = softmax_rows(S)   O = P V
//! ```
//! `A` is an optional additive bias on the logits ([`AttnBias`], `(G, H, N, N)`,
//! image `b` taking group `b mod G`): a relative position bias (BEiT, SimMIM's
//! ViT, Swin), Swin's shifted-window mask, or both summed. Without one, `A = 0`.
//! The backward recomputes `P = e^{S − lse}` instead of storing it (the scores
//! of all heads would be `B·H·N²` values), then
//! ```text
//! dV += Pᵀ dO     dP = dO Vᵀ     dS = P ⊙ (dP − rowsum(P ⊙ dP))
//! dQ += dS K / √Dh               dK += dSᵀ Q / √Dh
//! dA[g] = Σ_{b ≡ g mod G} dS_b    (summed over images in a fixed order)
//! ```
//! [`probabilities`] writes `P` for inspection (attention maps) through the
//! same logits (`head_logits`) and the same row softmax as the forward.
//!
//! One rayon task per (b, h); each task holds only its own head's `N × N`
//! scores, and the products are strided views into `qkv`/`out` (no copies of
//! Q, K, V). Tasks write disjoint columns, so the result is independent of
//! the thread count. Short sequences (`N ≤` [`short::MAX_N`], on AVX-512)
//! take [`mod@short`]'s unpacked products, in f32 in either precision, the
//! one copy being a head's `Kᵀ` or `Vᵀ`; longer ones the GEMM driver's, in
//! `prec`. While a short head computes, the next head's rows are prefetched.

use crate::GradOut;
use crate::cpu::Isa;
use crate::gemm::{MatRef, Precision, product_raw};
use crate::math;
use crate::par::SendPtr;
use crate::softmax::softmax_row_in_place;
use rayon::prelude::*;

pub mod short;

/// Attention geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub b: usize,
    pub n: usize,
    pub d: usize,
    pub h: usize,
}

impl AttnDims {
    /// Checks that the heads divide the width.
    pub fn new(b: usize, n: usize, d: usize, h: usize) -> Self {
        assert!(
            h > 0 && d.is_multiple_of(h),
            "AttnDims: {h} heads do not divide width {d}"
        );
        AttnDims { b, n, d, h }
    }
    /// Head width `Dh = D/H`.
    pub fn dh(&self) -> usize {
        self.d / self.h
    }
    /// The softmax scale `Dh^-½`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.dh() as f32).sqrt()
    }
    /// Multiply-adds of one forward: `2·B·H·N²·Dh` (two products).
    pub fn forward_macs(&self) -> usize {
        2 * self.b * self.h * self.n * self.n * self.dh()
    }
}

/// An additive bias on the attention logits: `data` holds `(G, H, N, N)`
/// values and image `b` uses group `b mod G`. `G = 1` gives every image the
/// same bias (a relative position bias); `G = B` one per image (a relative
/// bias gathered for each image's own visible tokens); Swin uses `G` = windows
/// per image, its batch being images × windows.
#[derive(Clone, Copy, Debug)]
pub struct AttnBias<'a> {
    pub data: &'a [f32],
    pub groups: usize,
}

impl<'a> AttnBias<'a> {
    /// Panics unless the bias fits `dims` (`G` divides `B`, `G·H·N²` values).
    fn check(&self, dims: &AttnDims, what: &str) {
        let AttnDims { b, n, h, .. } = *dims;
        assert!(
            self.groups > 0 && b.is_multiple_of(self.groups),
            "{what}: {} bias groups do not divide the batch of {b}",
            self.groups
        );
        assert_eq!(
            self.data.len(),
            self.groups * h * n * n,
            "{what}: bias has {} values, want (G {}, H {h}, N {n}, N {n})",
            self.data.len(),
            self.groups
        );
    }
    /// The `(N, N)` bias of head `h` for image `b`.
    fn head(&self, dims: &AttnDims, b: usize, h: usize) -> &'a [f32] {
        let nn = dims.n * dims.n;
        let g = b % self.groups;
        &self.data[(g * dims.h + h) * nn..][..nn]
    }
}

crate::multiversion! {
    /// `s += a`, element by element.
    fn add_in_place(s: &mut [f32], a: &[f32]) {
        for (x, &v) in s.iter_mut().zip(a) {
            *x += v;
        }
    }
}

crate::multiversion! {
    /// Row-wise softmax of the `(N, N)` scores in place; log-sum-exps into `lse`.
    fn softmax_rows(scores: &mut [f32], lse: &mut [f32]) {
        let n = lse.len();
        for (row, l) in scores.chunks_exact_mut(n).zip(lse.iter_mut()) {
            *l = softmax_row_in_place(row);
        }
    }
}

crate::multiversion! {
    /// `P = exp(S − lse)` row by row, in place (rows with lse = −∞ are zeros).
    fn probs_from_lse(scores: &mut [f32], lse: &[f32]) {
        let n = lse.len();
        for (row, &l) in scores.chunks_exact_mut(n).zip(lse) {
            if l == f32::NEG_INFINITY {
                row.fill(0.0);
            } else {
                for s in row.iter_mut() {
                    *s = math::exp(*s - l);
                }
            }
        }
    }
}

crate::multiversion! {
    /// `dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale`, written over `dp`.
    fn softmax_grad_rows(p: &[f32], dp: &mut [f32], n: usize, scale: f32) {
        for (prow, dprow) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
            let s = math::dot(prow, dprow);
            for (g, &pv) in dprow.iter_mut().zip(prow) {
                *g = pv * (*g - s) * scale;
            }
        }
    }
}

/// How a head's products run: on instruction set `isa` (the entry's), in
/// `prec`, and for short sequences ([`short::applies`]) without packing.
#[derive(Clone, Copy)]
struct HeadProducts {
    isa: Isa,
    prec: Precision,
    short: bool,
}

impl HeadProducts {
    fn new(isa: Isa, prec: Precision, dims: &AttnDims) -> Self {
        HeadProducts {
            isa,
            prec,
            short: short::applies(isa, dims.n),
        }
    }

    /// `C = α·A·B + β·C` on the calling thread, C at `c` with rows `rsc`
    /// apart and contiguous columns. On the short path a `B` whose columns
    /// are not contiguous (`Kᵀ`, `Vᵀ`) is first transposed into `scratch`.
    ///
    /// # Safety
    /// `c` covers `A.rows × B.cols` with that row stride, is valid for reads
    /// and writes, and is touched by no other task during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(&self, alpha: f32, a: MatRef, b: MatRef, beta: f32, c: *mut f32, rsc: usize, scratch: &mut Vec<f32>) {
        if self.short {
            let b = if b.cs() == 1 { b } else { short::dense_into(scratch, b) };
            // SAFETY: the caller's promise about C.
            unsafe { short::product(self.isa, alpha, a, b, beta, c, rsc) }
        } else {
            let p = crate::gemm::driver::Product {
                prec: self.prec,
                ..crate::gemm::plain(alpha, a, b, beta)
            };
            // SAFETY: `isa` is the entry's (never above the CPU's); C is the
            // caller's promise.
            unsafe { product_raw(self.isa, &p, c, rsc, 1, 1) }
        }
    }
}

/// The (N, Dh) view of head `h` of slot `slot` (0 q, 1 k, 2 v) of image `b`.
fn head<'a>(qkv: &'a [f32], dims: &AttnDims, b: usize, h: usize, slot: usize) -> MatRef<'a> {
    let (n, d) = (dims.n, dims.d);
    let off = b * n * 3 * d + slot * d + h * dims.dh();
    MatRef::new(&qkv[off..], n, dims.dh(), 3 * d, 1)
}

/// Asks for the q, k and v rows of task `task` (image `task / H`, head
/// `task % H`), and its rows of `dout (B, N, D)` if given, to be brought
/// into the cache, so that the next head's operands arrive while this one
/// computes. A head's rows are `Dh` values every `3D` (or `D`): too far
/// apart for the hardware prefetcher, and on the short path the first pass
/// over them (`Kᵀ`) otherwise waits on each line.
fn prefetch_task(qkv: &[f32], dout: Option<&[f32]>, dims: &AttnDims, task: usize) {
    #[cfg(target_arch = "x86_64")]
    if task < dims.b * dims.h {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (bi, hi) = (task / dims.h, task % dims.h);
        let rows = |m: MatRef| {
            for i in 0..m.rows() {
                for line in m.data()[i * m.rs()..][..m.cols()].iter().step_by(16) {
                    // SAFETY: a prefetch only hints; the address is inside the view's data.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>((line as *const f32).cast()) };
                }
            }
        };
        for slot in 0..3 {
            rows(head(qkv, dims, bi, hi, slot));
        }
        if let Some(g) = dout {
            rows(MatRef::new(
                &g[bi * dims.n * dims.d + hi * dims.dh()..],
                dims.n,
                dims.dh(),
                dims.d,
                1,
            ));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (qkv, dout, dims, task);
}

/// The logits `S = scale·Q Kᵀ + A` of head `hi` of image `bi` into
/// `scores (N, N)`, the products as `hp` says (`scratch` for the short
/// path's `Kᵀ`): where the forward, the backward and [`probabilities`] all
/// start.
#[allow(clippy::too_many_arguments)]
fn head_logits(
    hp: HeadProducts,
    scores: &mut [f32], // (N, N)
    scratch: &mut Vec<f32>,
    qkv: &[f32], // (B, N, 3·D)
    bias: Option<&AttnBias>,
    dims: &AttnDims,
    bi: usize,
    hi: usize,
) {
    let n = dims.n;
    assert_eq!(scores.len(), n * n, "attention: a head's scores are (N {n}, N {n})");
    let q = head(qkv, dims, bi, hi, 0);
    let k = head(qkv, dims, bi, hi, 1);
    // SAFETY: `scores` is an exclusive borrow of exactly N×N values, rows N apart.
    unsafe { hp.run(dims.scale(), q, k.t(), 0.0, scores.as_mut_ptr(), n, scratch) };
    if let Some(a) = bias {
        add_in_place::run(hp.isa, scores, a.head(dims, bi, hi));
    }
}

/// The gradients [`backward`] writes (see [`GradOut`]): `dqkv (B, N, 3D)`,
/// and `dbias (G, H, N, N)` when the bias's gradient is wanted.
pub struct AttnGrads<'a> {
    pub dqkv: GradOut<'a>,
    pub dbias: Option<GradOut<'a>>,
}

/// `out (B, N, D)` and `lse (B, H, N)` from `qkv (B, N, 3D)`, the logits
/// `S = scale·Q·Kᵀ` plus `bias` if given. Its products run in `prec` (bf16
/// where the CPU can, else f32), short sequences' in f32 (see the module).
pub fn forward(prec: Precision, out: &mut [f32], lse: &mut [f32], qkv: &[f32], bias: Option<AttnBias>, dims: AttnDims) {
    let isa = crate::cpu::isa();
    let AttnDims { b, n, d, h } = dims;
    if let Some(a) = &bias {
        a.check(&dims, "attention::forward");
    }
    assert_eq!(
        qkv.len(),
        b * n * 3 * d,
        "attention::forward: qkv has {} values, want (B {b}, N {n}, 3·D {})",
        qkv.len(),
        3 * d
    );
    assert_eq!(
        out.len(),
        b * n * d,
        "attention::forward: out has {} values, want (B {b}, N {n}, D {d})",
        out.len()
    );
    assert_eq!(
        lse.len(),
        b * h * n,
        "attention::forward: lse has {} values, want (B {b}, H {h}, N {n})",
        lse.len()
    );
    if out.is_empty() {
        return;
    }
    let dh = dims.dh();
    let hp = HeadProducts::new(isa, prec, &dims);
    let out_ptr = SendPtr(out.as_mut_ptr());
    lse.par_chunks_mut(n).enumerate().for_each_init(
        || (vec![0f32; n * n], Vec::new()),
        |(scores, scratch), (task, lse_row)| {
            let (bi, hi) = (task / h, task % h);
            if hp.short {
                prefetch_task(qkv, None, &dims, task + 1);
            }
            let v = head(qkv, &dims, bi, hi, 2);
            head_logits(hp, scores, scratch, qkv, bias.as_ref(), &dims, bi, hi);
            softmax_rows::run(isa, scores, lse_row);
            let p = MatRef::row_major(scores, n, n);
            let o = out_ptr.get();
            // SAFETY: the (N, Dh) block at rows of image `bi`, columns of head `hi`
            // is written by this task only; it lies inside `out` (checked above).
            unsafe { hp.run(1.0, p, v, 0.0, o.add(bi * n * d + hi * dh), d, scratch) };
        },
    );
}

/// The gradients of [`forward`] ([`AttnGrads`]) from `dout (B, N, D)`, the
/// saved `lse (B, H, N)`, `qkv` and `bias`; the probabilities are recomputed.
pub fn backward(
    prec: Precision,
    grads: AttnGrads,
    dout: &[f32],
    lse: &[f32],
    qkv: &[f32],
    bias: Option<AttnBias>,
    dims: AttnDims,
) {
    let isa = crate::cpu::isa();
    let AttnGrads { dqkv, dbias } = grads;
    if let Some(a) = &bias {
        a.check(&dims, "attention::backward");
    }
    if let Some(db) = &dbias {
        let a = bias.expect("attention::backward: a bias gradient needs the bias");
        assert_eq!(
            db.data.len(),
            a.data.len(),
            "attention::backward: dbias is not the bias's shape"
        );
    }
    let beta = dqkv.beta();
    let dqkv = dqkv.data;
    let AttnDims { b, n, d, h } = dims;
    assert_eq!(
        qkv.len(),
        b * n * 3 * d,
        "attention::backward: qkv has {} values, want {}",
        qkv.len(),
        b * n * 3 * d
    );
    assert_eq!(
        dqkv.len(),
        qkv.len(),
        "attention::backward: dqkv has {} values, want {}",
        dqkv.len(),
        qkv.len()
    );
    assert_eq!(
        dout.len(),
        b * n * d,
        "attention::backward: dout has {} values, want {}",
        dout.len(),
        b * n * d
    );
    assert_eq!(
        lse.len(),
        b * h * n,
        "attention::backward: lse has {} values, want {}",
        lse.len(),
        b * h * n
    );
    if dout.is_empty() {
        if let Some(db) = dbias.filter(|db| !db.add) {
            db.data.fill(0.0);
        }
        return;
    }
    let dh = dims.dh();
    let scale = dims.scale();
    let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
    // Each task's dS, kept when the bias's gradient is wanted, then summed
    // over images in a fixed order (tasks sharing a bias group never write
    // the same memory, and the sum is the same for any thread count).
    let nn = n * n;
    let keep_ds = dbias.is_some();
    let mut ds_all = if keep_ds { vec![0f32; b * h * nn] } else { Vec::new() };
    let ds_ptr = SendPtr(ds_all.as_mut_ptr());
    let hp = HeadProducts::new(isa, prec, &dims);
    (0..b * h).into_par_iter().for_each_init(
        || (vec![0f32; n * n], vec![0f32; n * n], Vec::new()),
        |(p, dp, scratch), task| {
            let (bi, hi) = (task / h, task % h);
            if hp.short {
                prefetch_task(qkv, Some(dout), &dims, task + 1);
            }
            let q = head(qkv, &dims, bi, hi, 0);
            let k = head(qkv, &dims, bi, hi, 1);
            let v = head(qkv, &dims, bi, hi, 2);
            let d_o = MatRef::new(&dout[bi * n * d + hi * dh..], n, dh, d, 1);
            let lse_rows = &lse[task * n..(task + 1) * n];
            // P = exp(scale·Q Kᵀ + A − lse), recomputed.
            head_logits(hp, p, scratch, qkv, bias.as_ref(), &dims, bi, hi);
            probs_from_lse::run(isa, p, lse_rows);
            // dP = dO Vᵀ.
            // SAFETY: `dp` is this task's own N×N buffer.
            unsafe { hp.run(1.0, d_o, v.t(), 0.0, dp.as_mut_ptr(), n, scratch) };
            let base = dqkv_ptr.get();
            let slot = |s: usize| bi * n * 3 * d + s * d + hi * dh;
            let pm = MatRef::row_major(p, n, n);
            // SAFETY (this product and the two below): the (N, Dh) blocks of head
            // `hi` of image `bi` in the q, k and v slots of `dqkv` are written by
            // this task only, and lie inside `dqkv` (lengths checked above).
            unsafe { hp.run(1.0, pm.t(), d_o, beta, base.add(slot(2)), 3 * d, scratch) };
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)): the gradient of the logits,
            // and so of the bias; the products below take the softmax scale.
            softmax_grad_rows::run(isa, p, dp, n, 1.0);
            if keep_ds {
                // SAFETY: block `task` of `ds_all` (B·H blocks of N²) is this task's alone.
                unsafe { std::slice::from_raw_parts_mut(ds_ptr.get().add(task * nn), nn) }.copy_from_slice(dp);
            }
            let ds = MatRef::row_major(dp, n, n);
            // SAFETY: this task's own (N, Dh) block of the q slot (see above).
            unsafe { hp.run(scale, ds, k, beta, base.add(slot(0)), 3 * d, scratch) };
            // SAFETY: this task's own (N, Dh) block of the k slot (see above).
            unsafe { hp.run(scale, ds.t(), q, beta, base.add(slot(1)), 3 * d, scratch) };
        },
    );
    if let (Some(db), Some(a)) = (dbias, bias) {
        let groups = a.groups;
        let add = db.add;
        db.data.par_chunks_mut(nn).enumerate().for_each(|(gh, block)| {
            let (g, hi) = (gh / h, gh % h);
            if !add {
                block.fill(0.0);
            }
            for bi in (g..b).step_by(groups) {
                add_in_place::run(isa, block, &ds_all[(bi * h + hi) * nn..][..nn]);
            }
        });
    }
}

/// The probabilities `p (B, H, N, N)` of [`forward`]: per (b, h),
/// `P = softmax_rows(scale·Q Kᵀ + A)` from `qkv (B, N, 3D)` and `bias`, the
/// products in `prec`. The same logits and row softmax as the forward, so
/// `P` is the matrix the forward multiplies `V` by (rows of a fully masked
/// query are zeros). For inspection (attention maps); nothing is saved.
pub fn probabilities(prec: Precision, p: &mut [f32], qkv: &[f32], bias: Option<AttnBias>, dims: AttnDims) {
    let isa = crate::cpu::isa();
    let AttnDims { b, n, d, h } = dims;
    if let Some(a) = &bias {
        a.check(&dims, "attention::probabilities");
    }
    assert_eq!(
        qkv.len(),
        b * n * 3 * d,
        "attention::probabilities: qkv has {} values, want (B {b}, N {n}, 3·D {})",
        qkv.len(),
        3 * d
    );
    assert_eq!(
        p.len(),
        b * h * n * n,
        "attention::probabilities: p has {} values, want (B {b}, H {h}, N {n}, N {n})",
        p.len()
    );
    if p.is_empty() {
        return;
    }
    let hp = HeadProducts::new(isa, prec, &dims);
    p.par_chunks_mut(n * n).enumerate().for_each_init(
        || (vec![0f32; n], Vec::new()), // this task's lse (N), not kept
        |(lse, scratch), (task, block)| {
            let (bi, hi) = (task / h, task % h);
            head_logits(hp, block, scratch, qkv, bias.as_ref(), &dims, bi, hi);
            softmax_rows::run(isa, block, lse);
        },
    );
}

/// Index-by-index loops in f64, storing the full probabilities.
pub mod reference {
    use super::{AttnBias, AttnDims};

    fn at(qkv: &[f32], dims: &AttnDims, b: usize, t: usize, slot: usize, h: usize, j: usize) -> f64 {
        qkv[(b * dims.n + t) * 3 * dims.d + slot * dims.d + h * dims.dh() + j] as f64
    }

    /// The bias of image `b`, head `h`, logit `(i, j)` (0 without a bias).
    fn bias_at(bias: Option<AttnBias>, dims: &AttnDims, b: usize, h: usize, i: usize, j: usize) -> f64 {
        bias.map_or(0.0, |a| {
            a.data[(((b % a.groups) * dims.h + h) * dims.n + i) * dims.n + j] as f64
        })
    }

    /// Probabilities `(B, H, N, N)`: `softmax_j(q_i·k_j/√Dh + A_ij)` per
    /// image, head and query `i`, index by index.
    pub fn probs(qkv: &[f32], bias: Option<AttnBias>, dims: &AttnDims) -> Vec<f64> {
        let (n, dh, scale) = (dims.n, dims.dh(), 1.0 / (dims.dh() as f64).sqrt());
        let mut p = vec![0f64; dims.b * dims.h * n * n];
        for b in 0..dims.b {
            for h in 0..dims.h {
                for i in 0..n {
                    let row = &mut p[((b * dims.h + h) * n + i) * n..][..n];
                    for (j, s) in row.iter_mut().enumerate() {
                        *s = scale
                            * (0..dh)
                                .map(|c| at(qkv, dims, b, i, 0, h, c) * at(qkv, dims, b, j, 1, h, c))
                                .sum::<f64>()
                            + bias_at(bias, dims, b, h, i, j);
                    }
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = row.iter().map(|s| (s - m).exp()).sum();
                    row.iter_mut().for_each(|s| *s = (*s - m).exp() / z);
                }
            }
        }
        p
    }

    /// `out = attention(qkv)`, with logits `S + A` given a bias.
    pub fn forward(out: &mut [f32], qkv: &[f32], bias: Option<AttnBias>, dims: AttnDims) {
        let (n, dh) = (dims.n, dims.dh());
        let p = probs(qkv, bias, &dims);
        for b in 0..dims.b {
            for h in 0..dims.h {
                for i in 0..n {
                    for c in 0..dh {
                        let v: f64 = (0..n)
                            .map(|j| p[((b * dims.h + h) * n + i) * n + j] * at(qkv, &dims, b, j, 2, h, c))
                            .sum();
                        out[(b * n + i) * dims.d + h * dh + c] = v as f32;
                    }
                }
            }
        }
    }

    /// `dqkv += ∂out/∂qkv · dout` and `dbias += ∂out/∂A · dout` of
    /// [`forward`].
    pub fn backward(
        dqkv: &mut [f32],
        mut dbias: Option<&mut [f32]>,
        dout: &[f32],
        qkv: &[f32],
        bias: Option<AttnBias>,
        dims: AttnDims,
    ) {
        let (n, d, dh) = (dims.n, dims.d, dims.dh());
        let scale = 1.0 / (dh as f64).sqrt();
        let p = probs(qkv, bias, &dims);
        let go = |b: usize, i: usize, h: usize, c: usize| dout[(b * n + i) * d + h * dh + c] as f64;
        for b in 0..dims.b {
            for h in 0..dims.h {
                let pr = |i: usize, j: usize| p[((b * dims.h + h) * n + i) * n + j];
                // dP_ij = Σ_c dO_ic V_jc; dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik).
                let dp: Vec<f64> = (0..n * n)
                    .map(|ij| {
                        (0..dh)
                            .map(|c| go(b, ij / n, h, c) * at(qkv, &dims, b, ij % n, 2, h, c))
                            .sum()
                    })
                    .collect();
                let mut ds = vec![0f64; n * n];
                for i in 0..n {
                    let s: f64 = (0..n).map(|k| pr(i, k) * dp[i * n + k]).sum();
                    for j in 0..n {
                        ds[i * n + j] = pr(i, j) * (dp[i * n + j] - s);
                    }
                }
                if let (Some(db), Some(a)) = (dbias.as_deref_mut(), bias) {
                    let block = &mut db[((b % a.groups) * dims.h + h) * n * n..][..n * n];
                    for (g, &v) in block.iter_mut().zip(&ds) {
                        *g += v as f32;
                    }
                }
                for t in 0..n {
                    for c in 0..dh {
                        let dq: f64 = (0..n)
                            .map(|j| ds[t * n + j] * at(qkv, &dims, b, j, 1, h, c))
                            .sum::<f64>()
                            * scale;
                        let dk: f64 = (0..n)
                            .map(|i| ds[i * n + t] * at(qkv, &dims, b, i, 0, h, c))
                            .sum::<f64>()
                            * scale;
                        let dv: f64 = (0..n).map(|i| pr(i, t) * go(b, i, h, c)).sum();
                        let base = (b * n + t) * 3 * d + h * dh + c;
                        dqkv[base] += dq as f32;
                        dqkv[base + d] += dk as f32;
                        dqkv[base + 2 * d] += dv as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, for_each_isa, random_vec};

    fn cases() -> Vec<AttnDims> {
        vec![
            AttnDims::new(1, 1, 4, 1),
            AttnDims::new(2, 3, 6, 2),
            AttnDims::new(1, 7, 12, 3),
            AttnDims::new(3, 17, 16, 4),
            AttnDims::new(2, 33, 96, 2),
            AttnDims::new(2, 65, 64, 2),
            AttnDims::new(1, 128, 64, 1),
            AttnDims::new(1, 197, 128, 2),
        ]
    }

    /// Every path against the f64 reference: 1e-5 relative forward, 1e-4 backward.
    #[test]
    fn forward_and_backward_match_reference() {
        for_each_isa("attention", |_| {
            for (s, dims) in cases().into_iter().enumerate() {
                let qkv: Vec<f32> = random_vec(dims.b * dims.n * 3 * dims.d, s as u64)
                    .iter()
                    .map(|v| 2.0 * v)
                    .collect();
                let mut out = vec![f32::NAN; dims.b * dims.n * dims.d];
                let mut lse = vec![0.0; dims.b * dims.h * dims.n];
                forward(Precision::F32, &mut out, &mut lse, &qkv, None, dims);
                let mut want = vec![0.0; out.len()];
                reference::forward(&mut want, &qkv, None, dims);
                assert_close(&out, &want, 1e-5, &format!("attention forward {dims:?}"));

                let dout = random_vec(out.len(), 100 + s as u64);
                let g0 = random_vec(qkv.len(), 200 + s as u64);
                let mut fast = g0.clone();
                let grads = AttnGrads {
                    dqkv: GradOut::add(&mut fast),
                    dbias: None,
                };
                backward(Precision::F32, grads, &dout, &lse, &qkv, None, dims);
                let mut slow = g0;
                reference::backward(&mut slow, None, &dout, &qkv, None, dims);
                assert_close(&fast, &slow, 1e-4, &format!("attention backward {dims:?}"));
                let mut over = vec![f32::NAN; qkv.len()];
                let grads = AttnGrads {
                    dqkv: GradOut::overwrite(&mut over),
                    dbias: None,
                };
                backward(Precision::F32, grads, &dout, &lse, &qkv, None, dims);
                let mut zero = vec![0.0; qkv.len()];
                reference::backward(&mut zero, None, &dout, &qkv, None, dims);
                assert_close(&over, &zero, 1e-4, &format!("attention backward overwrite {dims:?}"));
            }
        });
    }

    /// With a bias shared by all images (G = 1) and one per image (G = B),
    /// every path against the f64 reference, the bias's gradient included.
    #[test]
    fn biased_forward_and_backward_match_reference() {
        for_each_isa("attention biased", |_| {
            for (s, dims) in cases().into_iter().enumerate() {
                for groups in [1, dims.b] {
                    let seed = 10 * s as u64 + groups as u64;
                    let qkv: Vec<f32> = random_vec(dims.b * dims.n * 3 * dims.d, seed)
                        .iter()
                        .map(|v| 2.0 * v)
                        .collect();
                    let data: Vec<f32> = random_vec(groups * dims.h * dims.n * dims.n, 300 + seed)
                        .iter()
                        .map(|v| 3.0 * v)
                        .collect();
                    let bias = Some(AttnBias { data: &data, groups });
                    let mut out = vec![f32::NAN; dims.b * dims.n * dims.d];
                    let mut lse = vec![0.0; dims.b * dims.h * dims.n];
                    forward(Precision::F32, &mut out, &mut lse, &qkv, bias, dims);
                    let mut want = vec![0.0; out.len()];
                    reference::forward(&mut want, &qkv, bias, dims);
                    assert_close(&out, &want, 1e-5, &format!("biased forward {dims:?} G {groups}"));

                    let dout = random_vec(out.len(), 100 + seed);
                    let mut dqkv = vec![f32::NAN; qkv.len()];
                    let mut dbias = vec![f32::NAN; data.len()];
                    let grads = AttnGrads {
                        dqkv: GradOut::overwrite(&mut dqkv),
                        dbias: Some(GradOut::overwrite(&mut dbias)),
                    };
                    backward(Precision::F32, grads, &dout, &lse, &qkv, bias, dims);
                    let (mut want_q, mut want_b) = (vec![0.0; qkv.len()], vec![0.0; data.len()]);
                    reference::backward(&mut want_q, Some(&mut want_b), &dout, &qkv, bias, dims);
                    assert_close(&dqkv, &want_q, 1e-4, &format!("biased dqkv {dims:?} G {groups}"));
                    assert_close(&dbias, &want_b, 1e-4, &format!("dbias {dims:?} G {groups}"));
                    // The bias's gradient accumulated onto what it held.
                    let mut acc = vec![0.5; data.len()];
                    let mut dq = vec![0.0; qkv.len()];
                    let grads = AttnGrads {
                        dqkv: GradOut::add(&mut dq),
                        dbias: Some(GradOut::add(&mut acc)),
                    };
                    backward(Precision::F32, grads, &dout, &lse, &qkv, bias, dims);
                    let plus: Vec<f32> = want_b.iter().map(|v| v + 0.5).collect();
                    assert_close(&acc, &plus, 1e-4, &format!("dbias accumulated {dims:?} G {groups}"));
                }
            }
        });
    }

    /// The probabilities against the index-by-index softmax of
    /// `q·k/√Dh + A` on every path, odd sizes included, without a bias and
    /// with one shared (G = 1) or per image (G = B); each row sums to 1.
    #[test]
    fn probabilities_match_a_direct_softmax() {
        for_each_isa("attention probabilities", |_| {
            for (s, dims) in cases().into_iter().enumerate() {
                let qkv: Vec<f32> = random_vec(dims.b * dims.n * 3 * dims.d, 50 + s as u64)
                    .iter()
                    .map(|v| 2.0 * v)
                    .collect();
                for groups in [0, 1, dims.b] {
                    let data: Vec<f32> = random_vec(groups * dims.h * dims.n * dims.n, 70 + s as u64)
                        .iter()
                        .map(|v| 3.0 * v)
                        .collect();
                    let bias = (groups > 0).then_some(AttnBias { data: &data, groups });
                    let mut p = vec![f32::NAN; dims.b * dims.h * dims.n * dims.n];
                    probabilities(Precision::F32, &mut p, &qkv, bias, dims);
                    let want: Vec<f32> = reference::probs(&qkv, bias, &dims).iter().map(|&v| v as f32).collect();
                    assert_close(&p, &want, 1e-5, &format!("probabilities {dims:?} G {groups}"));
                    for row in p.chunks_exact(dims.n) {
                        let sum: f32 = row.iter().sum();
                        assert!((sum - 1.0).abs() < 1e-5, "{dims:?} G {groups}: a row sums to {sum}");
                    }
                }
            }
        });
    }

    /// A zero bias changes nothing, bit for bit; a bias of −∞ on every key
    /// but one makes each query copy that key's value.
    #[test]
    fn bias_zero_is_no_bias_and_minus_infinity_masks() {
        let dims = AttnDims::new(2, 5, 8, 2);
        let qkv = random_vec(dims.b * dims.n * 3 * dims.d, 7);
        let run = |bias: Option<AttnBias>| {
            let mut out = vec![0.0; dims.b * dims.n * dims.d];
            let mut lse = vec![0.0; dims.b * dims.h * dims.n];
            forward(Precision::F32, &mut out, &mut lse, &qkv, bias, dims);
            out
        };
        let zeros = vec![0.0; dims.h * dims.n * dims.n];
        assert_eq!(
            run(None),
            run(Some(AttnBias {
                data: &zeros,
                groups: 1
            }))
        );
        // Only key 3 is allowed: every output row is v of token 3.
        let mut only3 = vec![f32::NEG_INFINITY; dims.h * dims.n * dims.n];
        only3.iter_mut().skip(3).step_by(dims.n).for_each(|v| *v = 0.0);
        let out = run(Some(AttnBias {
            data: &only3,
            groups: 1,
        }));
        for b in 0..dims.b {
            for i in 0..dims.n {
                for c in 0..dims.d {
                    let v = qkv[(b * dims.n + 3) * 3 * dims.d + 2 * dims.d + c];
                    assert!((out[(b * dims.n + i) * dims.d + c] - v).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn one_token_attends_to_itself() {
        // With N = 1 the softmax is 1, so out = v.
        let dims = AttnDims::new(1, 1, 4, 2);
        let qkv = [0.3, -0.1, 0.7, 2.0, 1.0, 1.0, 1.0, 1.0, 5.0, 6.0, 7.0, 8.0];
        let mut out = [0.0; 4];
        let mut lse = [0.0; 2];
        forward(Precision::F32, &mut out, &mut lse, &qkv, None, dims);
        assert_eq!(out, [5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn independent_of_thread_count() {
        let dims = AttnDims::new(4, 50, 192, 3);
        let qkv = random_vec(dims.b * dims.n * 3 * dims.d, 1);
        let dout = random_vec(dims.b * dims.n * dims.d, 2);
        let data = random_vec(2 * dims.h * dims.n * dims.n, 3);
        let run = |t: usize, bias: Option<AttnBias>| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| {
                let mut out = vec![0.0; dout.len()];
                let mut lse = vec![0.0; dims.b * dims.h * dims.n];
                forward(Precision::F32, &mut out, &mut lse, &qkv, bias, dims);
                let mut d = vec![0.0; qkv.len()];
                let mut db = vec![0.0; data.len()];
                let grads = AttnGrads {
                    dqkv: GradOut::add(&mut d),
                    dbias: bias.is_some().then(|| GradOut::overwrite(&mut db[..])),
                };
                backward(Precision::F32, grads, &dout, &lse, &qkv, bias, dims);
                (out, d, db)
            })
        };
        assert_eq!(run(1, None), run(3, None));
        let bias = Some(AttnBias { data: &data, groups: 2 });
        assert_eq!(run(1, bias), run(3, bias));
    }
}
