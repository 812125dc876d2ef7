//! Packing: copying operand blocks into the order the micro-kernel reads.
//!
//! ```text
//! A micro-panel (rows r0 .. r0+MR, k = pc .. pc+kc):   dst[p·MR + i] = A[r0 + i][pc + p]
//! B panel       (cols c0 .. c0+NR, every k < K):       dst[p·NR + j] = B[p][c0 + j]
//! ```
//! Rows (columns) past the matrix's edge are filled with zeros, so the kernel
//! always runs on whole tiles; the zeros only reach C elements that are never
//! stored. Each function has a fast loop for the contiguous case of its
//! operand (the row-major and the transposed layout) and a strided fallback.

use super::Blocking;
use super::view::MatRef;
use std::cell::RefCell;

/// Packs `rows` rows of A from `r0`, `kc` values of k from `pc`, into
/// `⌈rows / mr⌉` consecutive micro-panels of `(kc, mr)` each.
pub(crate) fn pack_a(dst: &mut [f32], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize, mr: usize) {
    pack_a_with(Blocking::detected().prefetch_packs, dst, a, r0, rows, pc, kc, mr)
}

/// [`pack_a`], asking for a transposed A's runs ahead if `prefetch` (the
/// tests run both ways on every CPU).
#[allow(clippy::too_many_arguments)]
fn pack_a_with(prefetch: bool, dst: &mut [f32], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize, mr: usize) {
    let panels = rows.div_ceil(mr);
    let dst = &mut dst[..panels * kc * mr];
    if !rows.is_multiple_of(mr) {
        dst[(panels - 1) * kc * mr..].fill(0.0);
    }
    let (data, rs, cs) = (a.data(), a.rs(), a.cs());
    if rs == 1 {
        // A is stored transposed: the rows at one k are contiguous. Read them
        // as one run per k (several cache lines) and deal it out to the panels.
        // The runs are `cs` apart, each a few lines long: too short for the
        // hardware prefetcher, so on Intel CPUs the run `AHEAD` steps on is
        // asked for while this one is copied (`Blocking::prefetch_packs`).
        for p in 0..kc {
            if prefetch && p + AHEAD < kc {
                prefetch_run(&data[(pc + p + AHEAD) * cs + r0..][..rows]);
            }
            let src = &data[(pc + p) * cs + r0..][..rows];
            for (q, part) in src.chunks(mr).enumerate() {
                copy_short(&mut dst[(q * kc + p) * mr..][..part.len()], part);
            }
        }
        return;
    }
    for (q, panel) in dst.chunks_exact_mut(kc * mr).enumerate() {
        let (q0, qrows) = (r0 + q * mr, mr.min(rows - q * mr));
        if cs == 1 && qrows == mr && mr >= 8 && transpose::available() {
            // Rows of A are contiguous in k: 8 × 8 register transposes, over
            // rows 0..8, 8..16, …, and a last block ending at row mr (it may
            // overlap the one before: those rows are written twice, the same).
            let k8 = kc / 8 * 8;
            let starts = (0..mr - 8).step_by(8).chain(std::iter::once(mr - 8));
            for i0 in starts {
                for p0 in (0..k8).step_by(8) {
                    let src = &data[(q0 + i0) * rs + pc + p0..];
                    assert!(src.len() > 7 * rs + 7, "pack_a: block past the end");
                    let out = &mut panel[p0 * mr + i0..];
                    assert!(out.len() >= 7 * mr + 8, "pack_a: block past the end");
                    // SAFETY: AVX is available; the 8 rows of 8 values read
                    // (`src[i·rs + q]`) and the 8 × 8 written (`out[q·mr + i]`)
                    // lie inside the slices (asserted above).
                    unsafe { transpose::block8(src.as_ptr(), rs, out.as_mut_ptr(), mr) };
                }
            }
            for i in 0..mr {
                let row = &data[(q0 + i) * rs + pc..][..kc];
                for p in k8..kc {
                    panel[p * mr + i] = row[p];
                }
            }
        } else if cs == 1 {
            // Rows of A are contiguous in k: read each row once, scatter by mr.
            for i in 0..qrows {
                let row = &data[(q0 + i) * rs + pc..][..kc];
                for (d, &x) in panel[i..].iter_mut().step_by(mr).zip(row) {
                    *d = x;
                }
            }
        } else {
            for (p, line) in panel.chunks_exact_mut(mr).enumerate() {
                for (i, d) in line[..qrows].iter_mut().enumerate() {
                    *d = data[(q0 + i) * rs + (pc + p) * cs];
                }
            }
        }
    }
}

/// How many steps of k ahead `pack_a` asks for a transposed A's runs.
const AHEAD: usize = 8;

/// Asks for the cache lines of `run` (a hint: nothing is read).
#[inline(always)]
fn prefetch_run(run: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in run.iter().step_by(16).chain(run.last()) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch only hints the cache; the address is inside `run`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((line as *const f32).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = run;
}

/// `dst.copy_from_slice(src)` for a micro-panel's short runs, with the common
/// lengths in functions of their own so they compile to a few vector moves: as
/// one `copy_from_slice` (or as match arms, which the optimiser merges back into
/// one) they became a call to `memmove` per run, 11–22% of a dW product.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(never)]
    fn fixed<const L: usize>(dst: &mut [f32; L], src: &[f32; L]) {
        *dst = *src;
    }
    fn arrays<'a, const L: usize>(dst: &'a mut [f32], src: &'a [f32]) -> (&'a mut [f32; L], &'a [f32; L]) {
        (
            dst.try_into().expect("copy_short: length"),
            src.try_into().expect("copy_short: length"),
        )
    }
    match dst.len() {
        32 => {
            let (d, s) = arrays::<32>(dst, src);
            fixed(d, s)
        }
        16 => {
            let (d, s) = arrays::<16>(dst, src);
            fixed(d, s)
        }
        12 => {
            let (d, s) = arrays::<12>(dst, src);
            fixed(d, s)
        }
        8 => {
            let (d, s) = arrays::<8>(dst, src);
            fixed(d, s)
        }
        6 => {
            let (d, s) = arrays::<6>(dst, src);
            fixed(d, s)
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Packs `cols ≤ nr` columns of B from `c0`, k = `pc .. pc+kc`, into `dst (kc, nr)`.
pub(crate) fn pack_b(dst: &mut [f32], b: &MatRef, c0: usize, cols: usize, pc: usize, kc: usize, nr: usize) {
    let dst = &mut dst[..kc * nr];
    if cols < nr {
        dst.fill(0.0);
    }
    let (data, rs, cs) = (b.data(), b.rs(), b.cs());
    if cs == 1 {
        // B row-major: the nr columns at one k are contiguous. (Asking for
        // them ahead, as `pack_a` does, measured no different: one constant
        // stride, which the hardware prefetcher likely follows already.)
        for (p, line) in dst.chunks_exact_mut(nr).enumerate() {
            let base = (pc + p) * rs + c0;
            copy_short(&mut line[..cols], &data[base..base + cols]);
        }
    } else if rs == 1 {
        // B stored transposed (a weight (N, K) read as Wᵀ): each column is
        // contiguous in k. Whole 8 × 8 blocks go through a register
        // transpose; the ragged edges element by element.
        let (j8, p8) = (cols / 8 * 8, kc / 8 * 8);
        let fast = transpose::available();
        for j0 in (0..cols).step_by(8) {
            for p0 in (0..kc).step_by(8) {
                if fast && j0 < j8 && p0 < p8 {
                    let src = &data[(c0 + j0) * cs + pc + p0..];
                    assert!(src.len() > 7 * cs + 7, "pack_b: block past the end");
                    let out = &mut dst[p0 * nr + j0..];
                    assert!(out.len() >= 7 * nr + 8, "pack_b: block past the end");
                    // SAFETY: AVX is available; the 8 columns of 8 values read
                    // (`src[j·cs + q]`) and the 8 rows of 8 written
                    // (`out[q·nr + j]`) lie inside the slices (asserted above).
                    unsafe { transpose::block8(src.as_ptr(), cs, out.as_mut_ptr(), nr) };
                } else {
                    for j in j0..(j0 + 8).min(cols) {
                        let col = &data[(c0 + j) * cs + pc..];
                        for p in p0..(p0 + 8).min(kc) {
                            dst[p * nr + j] = col[p];
                        }
                    }
                }
            }
        }
    } else {
        for (p, line) in dst.chunks_exact_mut(nr).enumerate() {
            for (j, d) in line[..cols].iter_mut().enumerate() {
                *d = data[(pc + p) * rs + (c0 + j) * cs];
            }
        }
    }
}

/// Rounds a packed f32 panel `(kc, width)` to bfloat16 (nearest even) and
/// pairs consecutive k: `dst[s·width + j] = bf16(src[2s][j]) | bf16(src[2s+1][j]) << 16`
/// (a zero high half past an odd `kc`), each u32 stored in `dst` by its bits.
#[cfg(target_arch = "x86_64")]
pub(crate) fn bf16_pairs(isa: crate::cpu::Isa, dst: &mut [f32], src: &[f32], width: usize) {
    bf16_pairs_body::run(isa, dst, src, width)
}

#[cfg(target_arch = "x86_64")]
crate::multiversion! {
    /// [`bf16_pairs`], compiled per instruction set (the rounding is integer
    /// arithmetic on the bits, which vectorises).
    fn bf16_pairs_body(dst: &mut [f32], src: &[f32], width: usize) {
        use crate::gemm::bf16::to_bf16;
        let rows = src.len() / width;
        for (s, out) in dst.chunks_exact_mut(width).enumerate() {
            let lo = &src[2 * s * width..][..width];
            if 2 * s + 1 < rows {
                let hi = &src[(2 * s + 1) * width..][..width];
                for ((o, &x), &y) in out.iter_mut().zip(lo).zip(hi) {
                    *o = f32::from_bits(to_bf16(x) as u32 | (to_bf16(y) as u32) << 16);
                }
            } else {
                for (o, &x) in out.iter_mut().zip(lo) {
                    *o = f32::from_bits(to_bf16(x) as u32);
                }
            }
        }
    }
}

/// An 8 × 8 transpose in AVX registers.
mod transpose {
    /// True if this CPU has AVX (every CPU that runs the driver's kernels does).
    pub(super) fn available() -> bool {
        crate::cpu::detected() >= crate::cpu::Isa::Avx2
    }

    /// `dst[q·nr + j] = src[j·cs + q]` for `j, q < 8`.
    ///
    /// # Safety
    /// AVX is available; those 64 reads and 64 writes are in bounds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn block8(src: *const f32, cs: usize, dst: *mut f32, nr: usize) {
        use std::arch::x86_64::*;
        // SAFETY: the caller vouches for AVX and for every address below.
        unsafe {
            // r[j] = column j, k = 0..8.
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * cs)));
            // Interleave pairs of columns, then pairs of pairs, then the 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            // u_q: k = q (low half) and q + 4 (high half) of 4 columns.
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let rows = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (q, row) in rows.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(q * nr), row);
            }
        }
    }

    /// Never called: `available` is false off x86-64.
    ///
    /// # Safety
    /// None needed: it only panics (it exists so that callers compile).
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn block8(_: *const f32, _: usize, _: *mut f32, _: usize) {
        unreachable!("no AVX on this architecture")
    }
}

/// Reusable packing buffers, from a free list of this thread's: no lock, and
/// no allocation once the list holds enough buffers. A buffer goes back to the
/// list of the thread that drops it (the one that took it: packing buffers
/// never cross threads). A rayon task that runs inside another product's wait
/// simply takes a second buffer.
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

impl Scratch {
    /// A buffer of at least `len` values (contents unspecified), 64-byte aligned:
    /// the smallest free one that is large enough, else the largest, grown.
    pub(crate) fn take(len: usize) -> Scratch {
        let need = len + 16;
        let mut buf = FREE.with_borrow_mut(|free| {
            let fits = (0..free.len())
                .filter(|&i| free[i].len() >= need)
                .min_by_key(|&i| free[i].len());
            let pick = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
            pick.map(|i| free.swap_remove(i)).unwrap_or_default()
        });
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        Scratch { buf, len }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        let off = self.buf.as_ptr().align_offset(64).min(15);
        &mut self.buf[off..off + self.len]
    }
}

impl Drop for Scratch {
    /// Returns the buffer to the free list.
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // `try_with`: a thread being torn down has no list any more.
        let _ = FREE.try_with(|free| free.borrow_mut().push(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both packers against direct indexing, for the sizes around their
    /// 8 × 8 transpose blocks and panel widths, and for row groups of several
    /// panels with a ragged last one.
    #[test]
    fn packers_match_indexing_on_odd_sizes() {
        let (rows, cols) = (53usize, 41usize);
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32 * 0.5 - 7.0).collect();
        for transposed in [false, true] {
            let v = MatRef::stored(&data, rows, cols, transposed);
            for &(c0, width, nr) in &[
                (0, 1, 8),
                (3, 7, 8),
                (0, 8, 8),
                (9, 9, 16),
                (5, 16, 16),
                (1, 32, 32),
                (2, 17, 32),
            ] {
                for &(pc, kc) in &[(0, 1), (2, 7), (0, 8), (5, 9), (1, 17), (0, 53)] {
                    if c0 + width > cols || pc + kc > rows {
                        continue;
                    }
                    let mut dst = vec![f32::NAN; kc * nr];
                    pack_b(&mut dst, &v, c0, width, pc, kc, nr);
                    for p in 0..kc {
                        for j in 0..nr {
                            let want = if j < width { v.at(pc + p, c0 + j) } else { 0.0 };
                            assert_eq!(
                                dst[p * nr + j],
                                want,
                                "pack_b t{transposed} c0 {c0} w{width} pc{pc} kc{kc} ({p}, {j})"
                            );
                        }
                    }
                }
            }
            let at = v.t(); // 41 × 53 as A
            let cases = [(0usize, 41usize, 12usize), (5, 30, 6), (3, 12, 12), (0, 1, 16)];
            // k blocks shorter and longer than the prefetch distance, one ending at K.
            let blocks = [(4usize, 37usize), (16, 37), (50, 3)];
            for ((&(r0, count, mr), (pc, kc)), prefetch) in cases
                .iter()
                .flat_map(|c| blocks.map(|b| (c, b)))
                .flat_map(|cb| [(cb, false), (cb, true)])
            {
                let panels = count.div_ceil(mr);
                let mut dst = vec![f32::NAN; panels * kc * mr];
                pack_a_with(prefetch, &mut dst, &at, r0, count, pc, kc, mr);
                for q in 0..panels {
                    for p in 0..kc {
                        for i in 0..mr {
                            let r = q * mr + i;
                            let want = if r < count { at.at(r0 + r, pc + p) } else { 0.0 };
                            assert_eq!(
                                dst[(q * kc + p) * mr + i],
                                want,
                                "pack_a t{transposed} r0 {r0} n{count} ({q}, {p}, {i})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packs_every_layout_with_zero_padding() {
        // A 5 × 7 matrix with A[i][k] = 10i + k, stored three ways.
        let (m, k) = (5usize, 7usize);
        let row_major: Vec<f32> = (0..m * k).map(|x| (10 * (x / k) + x % k) as f32).collect();
        let col_major: Vec<f32> = (0..m * k).map(|x| (10 * (x % m) + x / m) as f32).collect();
        let mut padded = vec![-1f32; m * 9];
        for i in 0..m {
            for p in 0..k {
                padded[i * 9 + p] = (10 * i + p) as f32;
            }
        }
        let views = [
            MatRef::row_major(&row_major, m, k),
            MatRef::row_major(&col_major, k, m).t(),
            MatRef::new(&padded, m, k, 9, 1),
        ];
        let strided: Vec<f32> = (0..2 * m * k)
            .map(|x| if x % 2 == 0 { row_major[x / 2] } else { -1.0 })
            .collect();
        let views = [views[0], views[1], views[2], MatRef::new(&strided, m, k, 2 * k, 2)];
        for v in views {
            // A micro-panels of 4 rows, rows 3..5, k 2..6: rows 5..7 padded with zeros.
            let mut dst = vec![f32::NAN; 4 * 4];
            pack_a(&mut dst, &v, 3, 2, 2, 4, 4);
            for p in 0..4 {
                for i in 0..4 {
                    let want = if i < 2 { (10 * (3 + i) + 2 + p) as f32 } else { 0.0 };
                    assert_eq!(dst[p * 4 + i], want, "pack_a p{p} i{i}");
                }
            }
            // The same matrix as B (K = 5 rows, N = 7 columns): columns 4..7 in a panel of 4.
            let mut dst = vec![f32::NAN; 5 * 4];
            pack_b(&mut dst, &v, 4, 3, 0, 5, 4);
            for p in 0..5 {
                for j in 0..4 {
                    let want = if j < 3 { (10 * p + 4 + j) as f32 } else { 0.0 };
                    assert_eq!(dst[p * 4 + j], want, "pack_b p{p} j{j}");
                }
            }
        }
    }
}
