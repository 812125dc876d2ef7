//! Mixed-precision GEMM on Intel AMX: the driver's bf16 micro-kernel on tiles.
//!
//! AMX adds eight tile registers of 16 rows × 64 bytes and one instruction,
//! `tdpbf16ps`, that multiplies a 16 × 32 bf16 tile by a 32 × 16 bf16 tile
//! into a 16 × 16 f32 tile: 16 384 FLOPs per instruction, measured at about
//! 3 TFLOP/s per core here, 13× the f32 AVX-512 FMA peak.
//!
//! `Amx` is a micro-kernel of Tessera's driver (`driver.rs`), like the f32
//! ones: the driver packs B once for all threads, splits C in two dimensions,
//! and applies the epilogues (α, β, bias, residual, the tile GELU). Only the
//! panels' layout and the tile's arithmetic are AMX's:
//!
//! ```text
//! A micro-panel, 32 rows × kc (kc padded to chunks of 32), bf16:
//!     chunk q = two 16 × 32 tiles: a[q][i][kk] = A[i][32q + kk]      (rows 0–15, then 16–31)
//! B micro-panel, kc × 32 columns, bf16 pairs of consecutive k ("VNNI" order):
//!     chunk q = two 16 × 16 tiles of pairs: b[q][t][r][cc] = (B[32q+2r][16t+cc], B[32q+2r+1][16t+cc])
//! tile of C, 32 × 32 = 2 × 2 accumulator tiles tmm0..3:
//!     tmm0..3 = 0; for each chunk: load 2 A and 2 B tiles, 4 × tdpbf16ps
//!     store the four 16 × 16 f32 tiles, then C = α·acc (+ β·C) (+ bias)
//! ```
//! Panels are zero-padded to whole tiles, so the tile loop never sees an
//! edge; the epilogue only touches C's real rows and columns. The order of
//! accumulation depends only on k, so results do not depend on the split of
//! M or N, nor on the thread count.
//!
//! Using AMX needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! asked once per process; [`available`] is false if the CPU or the kernel
//! says no, or if the environment sets `TESSERA_AMX=off` (to measure the
//! AVX512-BF16 kernel on the same CPU), and bf16 products then take the
//! AVX512-BF16 kernel where the CPU has it, else f32.

use super::kernel::{APanel, Epilogue, MicroKernel, TileDst};
use super::pack;
use super::view::MatRef;
use crate::cpu::Isa;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows and columns of the tile of C (2 × 2 tiles of 16).
const BM: usize = 32;
const BN: usize = 32;
/// Values of k per tile.
const TK: usize = 32;
/// bf16 values in one 32-row (or 32-column) panel chunk: two 16 × 32 tiles.
const CHUNK: usize = 2 * 16 * TK;

/// True if the CPU has AMX-TILE and AMX-BF16 and the OS lets this process use them.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        let cpu = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        let off = std::env::var("TESSERA_AMX").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "no"));
        cpu && !off && request_tile_permission()
    })
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux allocates the
/// 8 KiB of tile state only for processes that ask.
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    if !cfg!(target_os = "linux") {
        return false;
    }
    let ret: i64;
    // SAFETY: a plain system call with two integer arguments; it only changes
    // which register state the kernel saves for this process.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

/// The tile configuration (palette 1): every tile 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

thread_local! {
    /// Whether this thread has loaded [`CONFIG`] (the tile configuration is
    /// per thread, and kept by the OS across context switches; Tessera never
    /// releases it, so it is loaded once per thread).
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads [`CONFIG`] on this thread if it is not loaded yet.
///
/// # Safety
/// AMX is [`available`].
#[inline(always)]
unsafe fn configure() {
    CONFIGURED.with(|done| {
        if !done.get() {
            // SAFETY: AMX is available (caller); the configuration is this thread's.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack)) };
            done.set(true);
        }
    })
}

/// 16 f32 rounded to bf16 as [`to_bf16`](super::bf16::to_bf16) rounds them (nearest even, NaN →
/// 0x7fc0), each in the low half of its 32-bit lane:
/// `(bits + 0x7fff + (bits >> 16 & 1)) >> 16`.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round16(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let up = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_mask_mov_epi32(_mm512_srli_epi32::<16>(up), nan, _mm512_set1_epi32(0x7fc0))
}

/// The first `n ≤ 16` lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// `dst[i] = to_bf16(src[i])`, 16 values at a time.
#[target_feature(enable = "avx512f")]
fn convert(dst: &mut [u16], src: &[f32]) {
    assert!(dst.len() >= src.len());
    for (i, part) in src.chunks(16).enumerate() {
        let m = lanes(part.len());
        // SAFETY: AVX-512F (this function's feature); the masked lanes of the
        // load and the store lie inside `part` and `dst[16i..][..part.len()]`.
        unsafe {
            let v = round16(_mm512_maskz_loadu_ps(m, part.as_ptr()));
            _mm512_mask_cvtepi32_storeu_epi16(dst.as_mut_ptr().add(16 * i) as *mut _, m, v);
        }
    }
}

/// `dst[j] = to_bf16(lo[j]) | to_bf16(hi[j]) << 16` (the VNNI pair of two
/// consecutive k), 16 values at a time; `hi` may be shorter (zeros past it).
#[target_feature(enable = "avx512f")]
fn pairs(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    assert!(dst.len() >= lo.len() && hi.len() <= lo.len());
    for (i, part) in lo.chunks(16).enumerate() {
        let m = lanes(part.len());
        let mh = lanes(hi.len().saturating_sub(16 * i).min(16));
        // SAFETY: AVX-512F; every unmasked lane is inside `part`, `hi` or `dst`.
        unsafe {
            let l = round16(_mm512_maskz_loadu_ps(m, part.as_ptr()));
            let h = round16(_mm512_maskz_loadu_ps(mh, hi.as_ptr().wrapping_add(16 * i)));
            let v = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
            _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(16 * i) as *mut _, m, v);
        }
    }
}

/// Packs rows `r0..r0+rows` (≤ 32) × k `pc..pc+kc` of A into one panel:
/// `dst[q][i][kk] = A[r0 + i][pc + 32q + kk]` (rows 0–15 form tile 0 of the
/// chunk, rows 16–31 tile 1), zero-padded.
#[target_feature(enable = "avx512f")]
fn pack_a_panel(dst: &mut [u16], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize) {
    let chunks = kc.div_ceil(TK);
    let dst = &mut dst[..chunks * CHUNK];
    // Zeros where the panel passes A's edge: the rows past `rows`, and the
    // last chunk's k past `kc` (only those: the rest is written below).
    if !kc.is_multiple_of(TK) {
        dst[(chunks - 1) * CHUNK..].fill(0);
    }
    if rows < BM {
        for chunk in dst.chunks_exact_mut(CHUNK) {
            chunk[rows * TK..].fill(0);
        }
    }
    if a.cs() == 1 {
        // Rows of A are contiguous in k: each row of a chunk is a run.
        for (q, out) in dst.chunks_exact_mut(CHUNK).enumerate() {
            let kn = TK.min(kc - q * TK);
            for i in 0..rows {
                let start = (r0 + i) * a.rs() + pc + q * TK;
                convert(&mut out[i * TK..], &a.data()[start..start + kn]);
            }
        }
    } else {
        // A is a transposed view (a dW product): the f32 packer's transposing
        // path (it packs B's columns as rows) gives each chunk as rows × 32,
        // then one conversion.
        let mut block = pack::Scratch::take(BM * TK);
        let block = block.as_mut_slice();
        for (q, out) in dst.chunks_exact_mut(CHUNK).enumerate() {
            let kn = TK.min(kc - q * TK);
            pack::pack_b(block, a, pc + q * TK, kn, r0, rows, TK);
            convert(out, &block[..rows * TK]);
        }
    }
}

/// Packs k `pc..pc+kc` × columns `c0..c0+cols` (≤ 32) of B into one panel in
/// VNNI order, seen as 32-bit pairs: `dst[q][t][pr][cc] = (B[pc+32q+2pr][c], B[pc+32q+2pr+1][c])`
/// with `c = c0 + 16t + cc`, zero-padded.
#[target_feature(enable = "avx512f")]
fn pack_b_panel(dst: &mut [u32], b: &MatRef, c0: usize, cols: usize, pc: usize, kc: usize) {
    if b.cs() != 1 {
        // B is a transposed view (a weight (N, K) read as (K, N)): the f32
        // packer transposes it into rows of 32 columns, which are then paired.
        let mut rows = pack::Scratch::take(kc * BN);
        let rows = rows.as_mut_slice();
        pack::pack_b(rows, b, c0, cols, pc, kc, BN);
        let packed = MatRef::row_major(rows, kc, BN);
        return pack_b_panel(dst, &packed, 0, BN, 0, kc);
    }
    let chunks = kc.div_ceil(TK);
    let dst = &mut dst[..chunks * CHUNK / 2];
    // Zeros past B's edge: the last chunk's pairs past `kc`, the columns past `cols`.
    if !kc.is_multiple_of(TK) {
        dst[(chunks - 1) * CHUNK / 2..].fill(0);
    }
    if cols < BN {
        // (row r of 16 pairs belongs to tile t = r / 16 % 2: columns 16t..16t+16)
        for (r, row) in dst.chunks_exact_mut(16).enumerate() {
            let t = r / 16 % 2;
            row[cols.saturating_sub(16 * t).min(16)..].fill(0);
        }
    }
    const PAIRS: usize = TK / 2; // pair-rows per tile
    // Rows of B are contiguous over the columns: pair rows (k, k+1) lane by
    // lane, 16 columns (one tile row) at a time.
    for kp in 0..kc.div_ceil(2) {
        let (k, q, pr) = (2 * kp, (2 * kp) / TK, kp % PAIRS);
        let row = |k: usize| &b.data()[(pc + k) * b.rs() + c0..][..cols];
        let (r0, r1) = (row(k), if k + 1 < kc { row(k + 1) } else { &[][..] });
        for t in 0..2 {
            let (lo, hi) = (16 * t, (16 * t + 16).min(cols));
            if lo >= hi {
                break;
            }
            let out = &mut dst[((q * 2 + t) * PAIRS + pr) * 16..][..hi - lo];
            pairs(out, &r0[lo..hi], &r1[lo.min(r1.len())..hi.min(r1.len())]);
        }
    }
}

/// FLOPs of one round of [`tile_peak_loop`]: four `tdpbf16ps` of 16 × 16 × 32
/// multiply-adds.
pub(crate) const TILE_LOOP_FLOPS: f64 = 4.0 * 2.0 * 16.0 * 16.0 * 32.0;

/// `iters` rounds of four independent `tdpbf16ps` on tiles that stay in the
/// registers (no loads, no stores): the AMX compute ceiling of one core.
///
/// # Safety
/// AMX is [`available`].
pub(crate) unsafe fn tile_peak_loop(iters: u64) {
    if iters == 0 {
        return;
    }
    // SAFETY: AMX is available (caller); only tile registers are touched.
    unsafe {
        configure();
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            options(nostack, nomem)
        );
    }
}

/// The driver's AMX micro-kernel: a 32 × 32 tile of C from a 32-row A
/// micro-panel and a 32-column B micro-panel, both bf16 in tile order (see
/// the module docs). The packed buffers are the driver's f32 buffers seen as
/// u16 (A) and u32 (B pairs).
pub(crate) struct Amx;

/// `len` values of an f32 buffer seen as `2·len` u16.
fn as_u16(buf: &mut [f32]) -> &mut [u16] {
    // SAFETY: the same bytes, u16 has a smaller alignment than f32, and
    // every bit pattern is a valid u16 (and, written back, a valid f32).
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u16, 2 * buf.len()) }
}

/// `len` values of an f32 buffer seen as `len` u32.
fn as_u32(buf: &mut [f32]) -> &mut [u32] {
    // SAFETY: the same bytes, size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u32, buf.len()) }
}

impl MicroKernel for Amx {
    const ISA: Isa = Isa::Avx512;
    const MR: usize = BM;
    const NR: usize = BN;
    const KU: usize = 2;
    const KG: usize = TK;
    const IN_PLACE_A: bool = false;

    fn pack_a(dst: &mut [f32], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize) {
        let len = Self::steps(kc) * BM; // f32 slots of one micro-panel
        for (q, panel) in dst.chunks_mut(len).take(rows.div_ceil(BM)).enumerate() {
            let r = r0 + q * BM;
            // SAFETY: AVX-512 is present wherever AMX is (the driver only
            // runs this kernel where `available()`).
            unsafe { pack_a_panel(as_u16(panel), a, r, BM.min(r0 + rows - r), pc, kc) };
        }
    }

    fn pack_b(dst: &mut [f32], b: &MatRef, c0: usize, cols: usize, pc: usize, kc: usize) {
        let len = Self::steps(kc) * BN;
        // SAFETY: as in `pack_a`.
        unsafe { pack_b_panel(as_u32(&mut dst[..len]), b, c0, cols, pc, kc) };
    }

    #[inline]
    unsafe fn full(kc: usize, a: APanel, b: &[f32], dst: TileDst, ep: &Epilogue) {
        debug_assert!(b.len() >= Self::steps(kc) * BN && dst.rows <= BM && dst.cols <= BN && dst.csc == 1);
        debug_assert!(ep.bias.is_none_or(|v| v.len() >= dst.cols));
        let APanel::Packed(a, _) = a else {
            unreachable!("AMX panels are always packed")
        };
        let (a, b, chunks) = (a as *const u16, b.as_ptr() as *const u16, kc.div_ceil(TK));
        let whole = dst.rows == BM && dst.cols == BN;
        // SAFETY (all of the arms): the driver runs this kernel only where AMX
        // is available; the panels hold ⌈kc / 32⌉ chunks; the caller vouches
        // for C (`dst`) and the bias; `local` and `bias` are whole tiles here.
        unsafe {
            configure();
            match (ep.alpha, ep.beta, ep.bias) {
                // The accumulators start from C (β = 1: a later k block, a
                // residual, a gradient) or from the bias rows (a linear
                // layer's first k block), and go straight back to C.
                (1.0, 0.0 | 1.0, _) if !(ep.beta == 1.0 && ep.bias.is_some()) => {
                    let mut row = [0f32; BN];
                    let init = match ep.bias {
                        Some(v) => {
                            row[..dst.cols].copy_from_slice(&v[..dst.cols]);
                            Init::Rows(row.as_ptr())
                        }
                        None if ep.beta == 1.0 => Init::Tile,
                        None => Init::Zero,
                    };
                    if whole {
                        // Ask for C's 64 lines now (for writing): they arrive
                        // while the tile computes, so the stores do not stall.
                        for i in 0..BM {
                            _mm_prefetch::<_MM_HINT_ET0>(dst.at(i, 0) as *const i8);
                            _mm_prefetch::<_MM_HINT_ET0>(dst.at(i, 16) as *const i8);
                        }
                        tiles(init, a, b, chunks, dst.c, dst.rsc);
                    } else {
                        // An edge tile: through a whole tile, C's corner copied in and out.
                        let mut local = Acc([0f32; BM * BN]);
                        let buf = TileDst {
                            c: local.0.as_mut_ptr(),
                            rsc: BN,
                            ..dst
                        };
                        if let Init::Tile = init {
                            copy(dst, buf);
                        }
                        tiles(init, a, b, chunks, buf.c, BN);
                        copy(buf, dst);
                    }
                }
                // Anything else: the sums alone, then the general epilogue.
                _ => {
                    let mut acc = std::mem::MaybeUninit::<Acc>::uninit();
                    tiles(Init::Zero, a, b, chunks, acc.as_mut_ptr() as *mut f32, BN);
                    store(&acc.assume_init_ref().0, dst, ep); // (`tiles` wrote all of it)
                }
            }
        }
    }
}

/// A tile of C as the four accumulator tiles store it (64-byte aligned).
#[repr(C, align(64))]
struct Acc([f32; BM * BN]);

/// What the accumulator tiles start from.
#[derive(Clone, Copy)]
enum Init {
    /// Zeros.
    Zero,
    /// The tile of C they will be stored to (β = 1).
    Tile,
    /// One row of 32 values (the bias), repeated down the tile.
    Rows(*const f32),
}

/// `C = init + Σ_chunks A_panel · B_panel` for one 32 × 32 tile of C at `c`,
/// rows `rsc` values apart.
///
/// The three steps are separate `asm!` blocks: the compiler never uses the
/// tile registers, so they keep their contents from one block to the next.
///
/// # Safety
/// AMX must be available and configured with [`CONFIG`] on this thread;
/// `a` and `b` hold `chunks` ≥ 1 chunks each; `c` is valid for reads and
/// writes of 32 rows × 32 values, `rsc` apart; a row of `Init::Rows` holds 32 values.
#[inline(always)]
unsafe fn tiles(init: Init, a: *const u16, b: *const u16, chunks: usize, c: *mut f32, rsc: usize) {
    let cs = 4 * rsc; // bytes per row of C
    // SAFETY: the loads read `chunks` consecutive 2 KiB chunks of each panel,
    // and C's (or the bias row's) 32 × 32 values; the stores write C's.
    unsafe {
        match init {
            Init::Zero => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            ),
            Init::Tile | Init::Rows(_) => {
                // C's tile (rows `rsc` apart), or one row repeated down the
                // tile (a stride of 0 bytes).
                let (top, bottom, stride) = match init {
                    Init::Rows(row) => (row, row, 0),
                    _ => (c as *const f32, c.add(16 * rsc) as *const f32, cs),
                };
                asm!(
                    "tileloadd tmm0, [{t} + {s}]",
                    "tileloadd tmm1, [{t} + {s} + 64]",
                    "tileloadd tmm2, [{b} + {s}]",
                    "tileloadd tmm3, [{b} + {s} + 64]",
                    t = in(reg) top,
                    b = in(reg) bottom,
                    s = in(reg) stride,
                    options(nostack, readonly)
                )
            }
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a} + {s}]",
            "tileloadd tmm5, [{a} + {s} + 1024]",
            "tileloadd tmm6, [{b} + {s}]",
            "tileloadd tmm7, [{b} + {s} + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) chunks => _,
            s = in(reg) 64usize, // bytes per row of a panel's tile
            options(nostack, readonly)
        );
        asm!(
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            "tilestored [{c2} + {cs}], tmm2",
            "tilestored [{c2} + {cs} + 64], tmm3",
            c = in(reg) c,
            c2 = in(reg) c.add(16 * rsc),
            cs = in(reg) cs,
            options(nostack)
        );
    }
}

/// Copies the `rows × cols` region `src` into `dst` (same size, columns contiguous).
///
/// # Safety
/// Both regions are valid (`src` for reads, `dst` for writes).
unsafe fn copy(src: TileDst, dst: TileDst) {
    for i in 0..src.rows {
        // SAFETY: row i of both regions.
        unsafe { std::ptr::copy_nonoverlapping(src.at(i, 0), dst.at(i, 0), src.cols) };
    }
}

/// The epilogue of a finished tile, as [`Epilogue`] defines it (`t = α·acc;
/// t += β·C if β ≠ 0; t += bias`, each rounded), into the `dst.rows ×
/// dst.cols` corner of C, the columns past C's edge masked.
///
/// # Safety
/// AVX-512F; `dst` is valid for reads and writes of that region, columns
/// contiguous; the bias, if any, has at least `dst.cols` values.
#[target_feature(enable = "avx512f")]
unsafe fn store(acc: &[f32; BM * BN], dst: TileDst, ep: &Epilogue) {
    let TileDst { c, rsc, rows, cols, .. } = dst;
    let lanes = |v: usize| cols.saturating_sub(16 * v).min(16);
    let mask = [0, 1].map(|v| ((1u32 << lanes(v)) - 1) as __mmask16);
    // SAFETY: masked lanes are neither read nor written; the rest lie inside
    // the region the caller vouched for.
    unsafe {
        let alpha = _mm512_set1_ps(ep.alpha);
        let beta = _mm512_set1_ps(ep.beta);
        let bias = ep.bias.map(|v| {
            let at = |h: usize| v.as_ptr().wrapping_add(16 * h);
            [
                _mm512_maskz_loadu_ps(mask[0], at(0)),
                _mm512_maskz_loadu_ps(mask[1], at(1)),
            ]
        });
        for i in 0..rows {
            for (v, &m) in mask.iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let p = c.add(i * rsc + 16 * v);
                let mut t = _mm512_mul_ps(alpha, _mm512_load_ps(acc.as_ptr().add(i * BN + 16 * v)));
                if ep.beta != 0.0 {
                    t = _mm512_add_ps(t, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(m, p)));
                }
                if let Some(b) = &bias {
                    t = _mm512_add_ps(t, b[v]);
                }
                _mm512_mask_storeu_ps(p, m, t);
            }
        }
    }
}
