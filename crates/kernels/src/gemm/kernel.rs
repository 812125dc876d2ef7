//! Register-blocked micro-kernels: one `MR × NR` tile of C from packed panels.
//!
//! ```text
//! a: packed A micro-panel, (kc, MR)   a[p·MR + i] = A[i][p]
//! b: packed B micro-panel, (kc, NR)   b[p·NR + j] = B[p][j]
//! acc[i][j] = Σ_{p < kc} a[p·MR + i] · b[p·NR + j]        (k in increasing order)
//! ```
//! The tile lives in registers for the whole `kc` loop: per step of `p`, the
//! kernel loads one row of `b` (NR values, `NR/lanes` vectors), broadcasts
//! each of the MR values of `a` and issues `MR · NR/lanes` fused multiply-adds.
//! AVX-512: 12 × 32 (24 accumulators + 2 `b` vectors of the 32 zmm registers);
//! AVX2: 6 × 16 (12 accumulators + 2 `b` vectors of the 16 ymm registers).
//!
//! Epilogue ([`Epilogue`]), applied when the tile is stored, in this order and
//! with separately rounded multiplies and adds (never fused), masked at C's
//! right edge and cut at its bottom edge:
//! ```text
//! t = α·acc;   if β ≠ 0: t = t + β·C;   if bias: t = t + bias[j];   C = t
//! ```
//! A C whose columns are strided goes through a contiguous copy of the tile
//! (the driver's `block`), so every element meets the same arithmetic.

/// How a finished tile is combined with C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub alpha: f32,
    /// 0 means C is write-only (its old contents, even NaN, are ignored).
    pub beta: f32,
    /// NR values (zero-padded past the last real column), added to every row.
    pub bias: Option<&'a [f32]>,
}

use super::pack;
use super::view::MatRef;

/// Where a kernel reads its `MR × kc` block of A.
#[derive(Clone, Copy, Debug)]
pub(crate) enum APanel {
    /// Packed `(kc, MR)`, or a transposed A read in place: `a[p·ld + i]`
    /// (`ld = MR` for a packed panel).
    Packed(*const f32, usize),
    /// Straight from a row-major A: row `i` at `a + i·lda`, contiguous in k
    /// (no packing pass: A's rows are read as they are).
    Rows(*const f32, usize),
}

/// Where a tile goes in C: its valid `rows × cols` corner at `c`, rows `rsc`
/// apart and columns `csc` apart (contiguous, `csc = 1`, for
/// [`MicroKernel::full`]).
#[derive(Clone, Copy)]
pub(crate) struct TileDst {
    pub c: *mut f32,
    pub rsc: usize,
    pub csc: usize,
    pub rows: usize,
    pub cols: usize,
}

impl TileDst {
    /// The address of element `(i, j)` of the tile (only dereferenced by
    /// callers inside `rows × cols`).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> *mut f32 {
        self.c.wrapping_add(i * self.rsc + j * self.csc)
    }
}

/// A micro-kernel: its tile shape and two entry points.
///
/// # Safety (both methods)
/// The CPU must support the kernel's instruction set (the driver only picks a
/// kernel at or below `cpu::detected()`); `a` reaches `MR` rows × `kc`
/// values of k and `b` holds `kc·NR` values.
pub(crate) trait MicroKernel {
    /// The instruction set the kernel runs (what the tile GELU and the
    /// packing of its product use too).
    const ISA: crate::cpu::Isa;
    const MR: usize;
    const NR: usize;
    /// Values of k per packed step: 1 (f32), or 2 (a pair of bf16 in one u32).
    const KU: usize = 1;
    /// Every k block is packed zero-padded to a multiple of this many values
    /// of k (a multiple of `KU`): `KU`, or 32 for AMX, whose tiles take k in
    /// chunks of 32.
    const KG: usize = Self::KU;
    /// Whether the kernel can read a row-major f32 A in place ([`APanel::Rows`]).
    const IN_PLACE_A: bool = true;

    /// Packed rows (steps) of a k block of `kc` values: `⌈kc / KG⌉ · KG / KU`.
    fn steps(kc: usize) -> usize {
        kc.div_ceil(Self::KG) * (Self::KG / Self::KU)
    }

    /// Packs `rows` rows of A from `r0`, k = `pc .. pc+kc`, into
    /// `⌈rows / MR⌉` micro-panels of `steps(kc) · MR` values each.
    fn pack_a(dst: &mut [f32], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize) {
        pack::pack_a(dst, a, r0, rows, pc, kc, Self::MR)
    }

    /// Packs `cols ≤ NR` columns of B from `c0`, k = `pc .. pc+kc`, into
    /// `steps(kc) · NR` values.
    fn pack_b(dst: &mut [f32], b: &MatRef, c0: usize, cols: usize, pc: usize, kc: usize) {
        pack::pack_b(dst, b, c0, cols, pc, kc, Self::NR)
    }

    /// Computes the tile and writes its first `rows ≤ MR` rows and `cols ≤ NR`
    /// columns into `dst`, whose columns are contiguous (edge columns through
    /// masked loads and stores).
    ///
    /// # Safety
    /// As the trait, and `dst.c + i·dst.rsc + j` is valid for reads and writes
    /// for every `i < dst.rows`, `j < dst.cols`, and written by no one else
    /// during the call; the epilogue's bias, if any, has at least `dst.cols`
    /// values.
    unsafe fn full(kc: usize, a: APanel, b: &[f32], dst: TileDst, ep: &Epilogue);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512, Avx512Bf16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{APanel, Epilogue, MicroKernel, TileDst};
    use crate::cpu::Isa;
    use std::arch::x86_64::*;

    /// The AVX-512 12 × 32 kernel.
    pub(crate) struct Avx512;

    const MR16: usize = 12;

    /// How far ahead in the B panel the kernel asks for lines (with
    /// `PF`): 8 steps of k, 1 KiB.
    const B_AHEAD: usize = 8 * 32;

    /// Asks for the line `B_AHEAD` values past `b`, and the next one (a
    /// prefetch never faults, so past the panel's end is harmless).
    #[inline(always)]
    unsafe fn prefetch_b(b: *const f32) {
        // SAFETY: a prefetch only hints the cache; no address is dereferenced.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(B_AHEAD) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(B_AHEAD + 16) as *const i8);
        }
    }

    /// `acc[i][v]` = row `i`, columns `16v .. 16v+16` of the tile, for the
    /// first `V` (1 or 2) vectors of columns: `V = 1` is the narrow kernel for
    /// a last panel of at most 16 columns (attention's N = 17, 65, 197), which
    /// skips the half of the multiply-adds that would only meet zero padding.
    /// With `PF`, each step of k also prefetches the B panel 8 steps ahead
    /// (the panel streams from L2; see [`Blocking::prefetch_b`](super::super::Blocking)).
    #[inline(always)]
    unsafe fn accumulate16<const V: usize, const PF: bool>(kc: usize, a: APanel, b: *const f32) -> [[__m512; V]; MR16] {
        // SAFETY (whole body): the caller guarantees AVX-512F and that `a`
        // covers 12 rows × kc and `b` kc·32 values; every load stays inside them.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; MR16];
            let mut b = b;
            match a {
                APanel::Packed(mut a, ld) => {
                    for _ in 0..kc {
                        if PF {
                            prefetch_b(b);
                        }
                        let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let ai = _mm512_set1_ps(*a.add(i));
                            for v in 0..V {
                                row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                            }
                        }
                        a = a.add(ld);
                        b = b.add(32);
                    }
                }
                APanel::Rows(a, lda) => {
                    for p in 0..kc {
                        if PF {
                            prefetch_b(b);
                        }
                        let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let ai = _mm512_set1_ps(*a.add(i * lda + p));
                            for v in 0..V {
                                row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                            }
                        }
                        b = b.add(32);
                    }
                }
            }
            acc
        }
    }

    impl MicroKernel for Avx512 {
        const ISA: Isa = Isa::Avx512;
        const MR: usize = MR16;
        const NR: usize = 32;

        #[inline]
        unsafe fn full(kc: usize, a: APanel, b: &[f32], dst: TileDst, ep: &Epilogue) {
            debug_assert!(b.len() >= kc * Self::NR && dst.rows <= Self::MR && dst.cols <= Self::NR && dst.csc == 1);
            debug_assert!(ep.bias.is_none_or(|v| v.len() >= dst.cols));
            // SAFETY: the caller vouches for the CPU, the panels and C.
            unsafe {
                if dst.cols <= 16 {
                    full16::<1>(kc, a, b.as_ptr(), dst, ep)
                } else {
                    full16::<2>(kc, a, b.as_ptr(), dst, ep)
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn full16<const V: usize>(kc: usize, a: APanel, b: *const f32, dst: TileDst, ep: &Epilogue) {
        let TileDst { c, rsc, rows, cols, .. } = dst;
        // SAFETY: see `MicroKernel::full`.
        unsafe {
            let acc = if super::super::Blocking::detected().prefetch_b {
                accumulate16::<V, true>(kc, a, b)
            } else {
                accumulate16::<V, false>(kc, a, b)
            };
            store16(&acc, c, rsc, rows, cols, ep)
        }
    }

    /// The AVX-512 epilogue: writes the first `rows` rows and `cols` columns
    /// of a tile (`V` vectors of 16 columns) into C, masking the columns past
    /// C's edge: `t = α·acc; t += β·C (β ≠ 0); t += bias`.
    ///
    /// # Safety
    /// AVX-512F; C as in `MicroKernel::full` (masked lanes are neither read
    /// nor written, so only `rows × cols` must be valid); the bias, if any,
    /// has at least `cols` values.
    #[inline(always)]
    unsafe fn store16<const V: usize>(
        acc: &[[__m512; V]; MR16],
        c: *mut f32,
        rsc: usize,
        rows: usize,
        cols: usize,
        ep: &Epilogue,
    ) {
        // SAFETY: as the function's contract.
        unsafe {
            let alpha = _mm512_set1_ps(ep.alpha);
            let beta = _mm512_set1_ps(ep.beta);
            // Lanes of the two column vectors that lie inside C.
            let lanes = |v: usize| cols.saturating_sub(16 * v).min(16);
            let mask = [0, 1].map(|v| ((1u32 << lanes(v)) - 1) as __mmask16);
            let bias = ep.bias.map(|v| mask_load2(v.as_ptr(), mask));
            for (i, row) in acc.iter().enumerate().take(rows) {
                for (v, &x) in row.iter().enumerate() {
                    let dst = c.add(i * rsc + 16 * v);
                    let mut t = _mm512_mul_ps(alpha, x);
                    if ep.beta != 0.0 {
                        t = _mm512_add_ps(t, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(mask[v], dst)));
                    }
                    if let Some(bias) = &bias {
                        t = _mm512_add_ps(t, bias[v]);
                    }
                    _mm512_mask_storeu_ps(dst, mask[v], t);
                }
            }
        }
    }

    /// The two 16-lane vectors at `p` and `p + 16`, lanes outside `mask` zero.
    #[inline(always)]
    unsafe fn mask_load2(p: *const f32, mask: [__mmask16; 2]) -> [__m512; 2] {
        // SAFETY: the caller guarantees AVX-512F and that the unmasked lanes are in bounds.
        unsafe {
            [
                _mm512_maskz_loadu_ps(mask[0], p),
                _mm512_maskz_loadu_ps(mask[1], p.add(16)),
            ]
        }
    }

    /// The AVX2 + FMA 6 × 16 kernel.
    pub(crate) struct Avx2;

    const MR8: usize = 6;

    #[inline(always)]
    unsafe fn accumulate8(kc: usize, a: APanel, b: *const f32) -> [[__m256; 2]; MR8] {
        // SAFETY (whole body): the caller guarantees AVX2 + FMA and that `a`
        // covers 6 rows × kc and `b` kc·16 values; every load stays inside them.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR8];
            let mut b = b;
            match a {
                APanel::Packed(mut a, ld) => {
                    for _ in 0..kc {
                        let b0 = _mm256_loadu_ps(b);
                        let b1 = _mm256_loadu_ps(b.add(8));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let ai = _mm256_broadcast_ss(&*a.add(i));
                            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                        }
                        a = a.add(ld);
                        b = b.add(16);
                    }
                }
                APanel::Rows(a, lda) => {
                    for p in 0..kc {
                        let b0 = _mm256_loadu_ps(b);
                        let b1 = _mm256_loadu_ps(b.add(8));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let ai = _mm256_broadcast_ss(&*a.add(i * lda + p));
                            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                        }
                        b = b.add(16);
                    }
                }
            }
            acc
        }
    }

    impl MicroKernel for Avx2 {
        const ISA: Isa = Isa::Avx2;
        const MR: usize = MR8;
        const NR: usize = 16;

        #[inline]
        unsafe fn full(kc: usize, a: APanel, b: &[f32], dst: TileDst, ep: &Epilogue) {
            debug_assert!(b.len() >= kc * Self::NR && dst.rows <= Self::MR && dst.cols <= Self::NR && dst.csc == 1);
            debug_assert!(ep.bias.is_none_or(|v| v.len() >= dst.cols));
            // SAFETY: the caller vouches for the CPU, the panels and C.
            unsafe { full8(kc, a, b.as_ptr(), dst, ep) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn full8(kc: usize, a: APanel, b: *const f32, dst: TileDst, ep: &Epilogue) {
        let TileDst { c, rsc, rows, cols, .. } = dst;
        // SAFETY: see `MicroKernel::full`; masked lanes are neither read nor written.
        unsafe {
            let acc = accumulate8(kc, a, b);
            let alpha = _mm256_set1_ps(ep.alpha);
            let beta = _mm256_set1_ps(ep.beta);
            // Lane j of vector v is inside C if 8v + j < cols (all ones if so).
            let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = [0, 1].map(|v| _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8 * v), index));
            let bias = ep.bias.map(|v| {
                [
                    _mm256_maskload_ps(v.as_ptr(), mask[0]),
                    _mm256_maskload_ps(v.as_ptr().add(8), mask[1]),
                ]
            });
            for (i, row) in acc.iter().enumerate().take(rows) {
                for (v, &x) in row.iter().enumerate() {
                    let dst = c.add(i * rsc + 8 * v);
                    let mut t = _mm256_mul_ps(alpha, x);
                    if ep.beta != 0.0 {
                        t = _mm256_add_ps(t, _mm256_mul_ps(beta, _mm256_maskload_ps(dst, mask[v])));
                    }
                    if let Some(bias) = &bias {
                        t = _mm256_add_ps(t, bias[v]);
                    }
                    _mm256_maskstore_ps(dst, mask[v], t);
                }
            }
        }
    }

    /// The AVX512-BF16 12 × 32 kernel: `vdpbf16ps` multiplies pairs of
    /// bfloat16 values and adds both products to an f32 lane, so one
    /// instruction does the work of two f32 FMAs. A and B are rounded to bf16
    /// (nearest even) when packed, in pairs of consecutive k:
    /// `a[s·MR + i] = (A[i][2s], A[i][2s+1])`, `b[s·NR + j] = (B[2s][j], B[2s+1][j])`,
    /// each pair one u32 stored in the f32 buffers by its bits.
    pub(crate) struct Avx512Bf16;

    impl MicroKernel for Avx512Bf16 {
        const ISA: Isa = Isa::Avx512;
        const MR: usize = MR16;
        const NR: usize = 32;
        const KU: usize = 2;
        const IN_PLACE_A: bool = false;

        fn pack_a(dst: &mut [f32], a: &super::MatRef, r0: usize, rows: usize, pc: usize, kc: usize) {
            let panels = rows.div_ceil(MR16);
            let mut buf = super::super::pack::Scratch::take(panels * kc * MR16);
            let tmp = buf.as_mut_slice();
            super::pack::pack_a(tmp, a, r0, rows, pc, kc, MR16);
            let steps = kc.div_ceil(2);
            for (q, panel) in tmp.chunks_exact(kc * MR16).enumerate() {
                super::pack::bf16_pairs(Self::ISA, &mut dst[q * steps * MR16..][..steps * MR16], panel, MR16);
            }
        }

        fn pack_b(dst: &mut [f32], b: &super::MatRef, c0: usize, cols: usize, pc: usize, kc: usize) {
            let mut tmp = [0f32; super::super::blocking::MAX_KC * 32];
            super::pack::pack_b(&mut tmp, b, c0, cols, pc, kc, 32);
            super::pack::bf16_pairs(Self::ISA, &mut dst[..kc.div_ceil(2) * 32], &tmp[..kc * 32], 32);
        }

        #[inline]
        unsafe fn full(kc: usize, a: APanel, b: &[f32], dst: TileDst, ep: &Epilogue) {
            debug_assert!(
                b.len() >= kc.div_ceil(2) * Self::NR && dst.rows <= Self::MR && dst.cols <= Self::NR && dst.csc == 1
            );
            debug_assert!(ep.bias.is_none_or(|v| v.len() >= dst.cols));
            let APanel::Packed(a, ld) = a else {
                unreachable!("bf16 panels are always packed")
            };
            // SAFETY: the caller vouches for the CPU (AVX512-BF16), the panels and C.
            unsafe { full_bf16(kc.div_ceil(2), a, ld, b.as_ptr(), dst, ep) }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn full_bf16(steps: usize, a: *const f32, ld: usize, b: *const f32, dst: TileDst, ep: &Epilogue) {
        let TileDst { c, rsc, rows, cols, .. } = dst;
        // SAFETY: see `MicroKernel::full`: `a` holds steps·ld (≥ 12 per step)
        // and `b` steps·32 values; masked lanes are neither read nor written.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR16];
            let (mut a, mut b) = (a as *const u32, b as *const u32);
            for _ in 0..steps {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const _));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                }
                a = a.add(ld);
                b = b.add(32);
            }
            store16(&acc, c, rsc, rows, cols, ep)
        }
    }
}
