//! Mixed-precision GEMM on Intel AMX: `C = α·A·B + β·C (+ bias)` with A and B
//! rounded to bfloat16 and every product accumulated in f32.
//!
//! AMX adds eight tile registers of 16 rows × 64 bytes and one instruction,
//! `tdpbf16ps`, that multiplies a 16 × 32 bf16 tile by a 32 × 16 bf16 tile
//! into a 16 × 16 f32 tile: 16 384 FLOPs per instruction, measured at about
//! 3 TFLOP/s per core here, 13× the f32 AVX-512 FMA peak.
//!
//! ```text
//! for each block of KC = 256 values of k
//!   pack B[k-block, :] as bf16 in 32-column panels, "VNNI" order:
//!       tile t of chunk q: 16 rows of (k = 2r, 2r+1) pairs × 16 columns
//!   for each block of MC = 128 rows of C
//!     pack A[rows, k-block] as bf16 in 32-row panels: two 16 × 32 tiles per chunk
//!     for each 32 × 32 block of C
//!       tmm0..3 = 0; for each chunk of 32 k: load 2 A and 2 B tiles, 4 × tdpbf16ps
//!       store the four 16 × 16 f32 tiles, then C = α·acc + β·C + bias
//! ```
//! Panels are zero-padded to whole tiles, so the tile loop never sees an
//! edge; the write-back only touches C's real rows and columns. The order of
//! accumulation depends only on k, so results do not depend on the blocking
//! of M or N, nor on the thread count.
//!
//! Using AMX needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! asked once per process; [`available`] is false if the CPU or the kernel
//! says no, and callers then use the f32 path.

use super::bf16::to_bf16;
use super::driver::Product;
use super::kernel::TileDst;
use super::view::MatRef;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows and columns of a register block of C (2 × 2 tiles of 16).
const BM: usize = 32;
const BN: usize = 32;
/// Values of k per tile.
const TK: usize = 32;
/// Depth of a packed block (a multiple of TK).
const KC: usize = 256;
/// Rows of A packed at once.
const MC: usize = 128;
/// bf16 values in one 32-row (or 32-column) panel chunk: two 16 × 32 tiles.
const CHUNK: usize = 2 * 16 * TK;

/// True if the CPU has AMX-TILE and AMX-BF16 and the OS lets this process use them.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        let cpu = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        cpu && request_tile_permission()
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
    /// This thread's packed A (bf16) and B (bf16 pairs) buffers, reused across calls.
    static PACKS: RefCell<(Vec<u16>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Converts a contiguous run of f32 to bf16 (vectorised: the rounding is
/// integer arithmetic on the bits, compiled with AVX-512 by the caller).
#[inline(always)]
fn convert(dst: &mut [u16], src: &[f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = to_bf16(x);
    }
}

/// Packs rows `r0..r0+rows` (≤ 32) × k `pc..pc+kc` of A into one panel:
/// `dst[q][i][kk] = A[r0 + i][pc + 32q + kk]` (rows 0–15 form tile 0 of the
/// chunk, rows 16–31 tile 1), zero-padded.
#[target_feature(enable = "avx512f")]
fn pack_a_panel(dst: &mut [u16], a: &MatRef, r0: usize, rows: usize, pc: usize, kc: usize) {
    let chunks = kc.div_ceil(TK);
    let dst = &mut dst[..chunks * CHUNK];
    if rows < BM || !kc.is_multiple_of(TK) {
        dst.fill(0);
    }
    if a.cs() == 1 {
        // Rows of A are contiguous in k: convert 32 values at a time.
        for i in 0..rows {
            let row = &a.data()[(r0 + i) * a.rs() + pc..(r0 + i) * a.rs() + pc + kc];
            for (q, part) in row.chunks(TK).enumerate() {
                convert(&mut dst[q * CHUNK + i * TK..q * CHUNK + i * TK + part.len()], part);
            }
        }
    } else {
        // A is a transposed view: convert one k (a run over the rows) at a
        // time into a 32 × 32 block, then transpose the block into place.
        let mut block = [[0u16; BM]; TK];
        for q in 0..chunks {
            let kn = TK.min(kc - q * TK);
            for (kk, line) in block.iter_mut().enumerate().take(kn) {
                let base = r0 * a.rs() + (pc + q * TK + kk) * a.cs();
                if a.rs() == 1 {
                    convert(&mut line[..rows], &a.data()[base..base + rows]);
                } else {
                    for (i, v) in line[..rows].iter_mut().enumerate() {
                        *v = to_bf16(a.data()[base + i * a.rs()]);
                    }
                }
            }
            let out = &mut dst[q * CHUNK..(q + 1) * CHUNK];
            for i in 0..rows {
                for kk in 0..kn {
                    out[i * TK + kk] = block[kk][i];
                }
            }
        }
    }
}

/// Two f32 values of consecutive k as one bf16 pair (`lo` in the low half):
/// the VNNI layout `tdpbf16ps` reads.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// Packs k `pc..pc+kc` × columns `c0..c0+cols` (≤ 32) of B into one panel in
/// VNNI order, seen as 32-bit pairs: `dst[q][t][pr][cc] = (B[pc+32q+2pr][c], B[pc+32q+2pr+1][c])`
/// with `c = c0 + 16t + cc`, zero-padded.
#[target_feature(enable = "avx512f")]
fn pack_b_panel(dst: &mut [u32], b: &MatRef, c0: usize, cols: usize, pc: usize, kc: usize) {
    let chunks = kc.div_ceil(TK);
    let dst = &mut dst[..chunks * CHUNK / 2];
    if cols < BN || !kc.is_multiple_of(TK) {
        dst.fill(0);
    }
    const PAIRS: usize = TK / 2; // pair-rows per tile
    if b.cs() == 1 {
        // Rows of B are contiguous over the columns: combine two rows (k, k+1)
        // lane by lane into pairs, 16 columns (one tile row) at a time.
        for kp in 0..kc / 2 {
            let (k, q, pr) = (2 * kp, (2 * kp) / TK, kp % PAIRS);
            let r0 = &b.data()[(pc + k) * b.rs() + c0..(pc + k) * b.rs() + c0 + cols];
            let r1 = &b.data()[(pc + k + 1) * b.rs() + c0..(pc + k + 1) * b.rs() + c0 + cols];
            for t in 0..2 {
                let (lo, hi) = (16 * t, (16 * t + 16).min(cols));
                if lo >= hi {
                    break;
                }
                let out = &mut dst[((q * 2 + t) * PAIRS + pr) * 16..][..hi - lo];
                for (o, (&x0, &x1)) in out.iter_mut().zip(r0[lo..hi].iter().zip(&r1[lo..hi])) {
                    *o = pair(x0, x1);
                }
            }
        }
        if kc % 2 == 1 {
            let k = kc - 1;
            let (q, pr) = (k / TK, (k % TK) / 2);
            for j in 0..cols {
                dst[((q * 2 + j / 16) * PAIRS + pr) * 16 + j % 16] =
                    pair(b.data()[(pc + k) * b.rs() + (c0 + j) * b.cs()], 0.0);
            }
        }
    } else {
        // B is a transposed view (a weight (N, K) read as (K, N)): each column
        // is contiguous over k, so its (k, k+1) pairs are adjacent; convert a
        // column's 32 values of a chunk into 16 pairs and scatter them.
        let mut col = [0u16; TK];
        for j in 0..cols {
            let (t, cc) = (j / 16, j % 16);
            for q in 0..chunks {
                let kn = TK.min(kc - q * TK);
                let base = (c0 + j) * b.cs() + (pc + q * TK) * b.rs();
                if b.rs() == 1 {
                    convert(&mut col[..kn], &b.data()[base..base + kn]);
                } else {
                    for (k, v) in col[..kn].iter_mut().enumerate() {
                        *v = to_bf16(b.data()[base + k * b.rs()]);
                    }
                }
                col[kn..].fill(0);
                let out = &mut dst[(q * 2 + t) * PAIRS * 16..];
                for pr in 0..PAIRS {
                    out[pr * 16 + cc] = col[2 * pr] as u32 | (col[2 * pr + 1] as u32) << 16;
                }
            }
        }
    }
}

/// One 32 × 32 block: `acc = Σ_chunks A_panel · B_panel` into `out` (32 × 32
/// f32, row-major).
///
/// # Safety
/// AMX must be available and configured with [`CONFIG`] on this thread;
/// `a` and `b` hold `chunks` chunks each.
#[inline(always)]
unsafe fn block(a: *const u16, b: *const u16, chunks: usize, out: &mut [f32; BM * BN]) {
    let stride = 64usize; // bytes per tile row
    let c = out.as_mut_ptr();
    // SAFETY: the tile loads read `chunks` consecutive 2 KiB chunks of each
    // panel; the stores write the four 16 × 16 quarters of `out` (row stride
    // 128 bytes). The tile registers are used by this block only.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
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
            "tilestored [{c} + {cs}], tmm0",
            "tilestored [{c} + {cs} + 64], tmm1",
            "tilestored [{c} + {cs} + 2048], tmm2",
            "tilestored [{c} + {cs} + 2112], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) chunks => _,
            s = in(reg) stride,
            c = in(reg) c,
            cs = in(reg) 128usize,
            options(nostack)
        );
    }
}

/// `dst = α·acc + β·dst + bias` (first k-block) or `dst += α·acc`, for the
/// `dst.rows × dst.cols` corner of the block.
///
/// # Safety
/// `dst` is valid for reads and writes of that region with its strides.
#[target_feature(enable = "avx512f")]
unsafe fn write_back(acc: &[f32; BM * BN], dst: TileDst, alpha: f32, beta: f32, bias: Option<&[f32]>) {
    let (rows, cols) = (dst.rows, dst.cols);
    // SAFETY: every access is inside the `rows × cols` region.
    unsafe {
        if dst.csc == 1 && cols == BN {
            let av = _mm512_set1_ps(alpha);
            let bv = _mm512_set1_ps(beta);
            let bias_v = bias.map(|b| [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16))]);
            for i in 0..rows {
                for h in 0..2 {
                    let p = dst.at(i, 16 * h);
                    let x = _mm512_loadu_ps(acc.as_ptr().add(i * BN + 16 * h));
                    let mut y = if beta == 0.0 {
                        _mm512_mul_ps(av, x)
                    } else {
                        _mm512_fmadd_ps(av, x, _mm512_mul_ps(bv, _mm512_loadu_ps(p)))
                    };
                    if let Some(b) = bias_v {
                        y = _mm512_add_ps(y, b[h]);
                    }
                    _mm512_storeu_ps(p, y);
                }
            }
        } else {
            for i in 0..rows {
                for j in 0..cols {
                    let p = dst.at(i, j);
                    let old = if beta == 0.0 { 0.0 } else { beta * *p };
                    *p = alpha * acc[i * BN + j] + old + bias.map_or(0.0, |b| b[j]);
                }
            }
        }
    }
}

/// `C = α·A·B + β·C (+ bias on every row)` with bf16 inputs on this thread.
///
/// # Safety
/// [`available`] must have returned true; `c` must be valid for writes of the
/// `a.rows() × b.cols()` region with strides `(rsc, csc)`, written by no one
/// else; `bias`, if given, has `b.cols()` values.
pub(crate) unsafe fn sgemm_bf16(p: &Product, c: *mut f32, rsc: usize, csc: usize) {
    // (`p.gelu_to` is applied by the caller after this path.)
    let Product {
        alpha,
        a,
        b,
        beta,
        bias,
        ..
    } = *p;
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let n_panels = n.div_ceil(BN);
    PACKS.with(|packs| {
        let (ap, bp) = &mut *packs.borrow_mut();
        // SAFETY: AMX is available (caller); the configuration is this thread's.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack)) };
        let mut acc = [0f32; BM * BN];
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let chunks = kc.div_ceil(TK);
            let panel = chunks * CHUNK;
            bp.resize(n_panels * panel / 2, 0);
            for jp in 0..n_panels {
                let c0 = jp * BN;
                // SAFETY: AVX-512 is present wherever AMX is.
                unsafe {
                    pack_b_panel(
                        &mut bp[jp * panel / 2..(jp + 1) * panel / 2],
                        &b,
                        c0,
                        BN.min(n - c0),
                        pc,
                        kc,
                    )
                };
            }
            let (beta_k, bias_k) = if pc == 0 { (beta, bias) } else { (1.0, None) };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let m_panels = mc.div_ceil(BM);
                ap.resize(m_panels * panel, 0);
                for ip in 0..m_panels {
                    let r0 = ic + ip * BM;
                    // SAFETY: AVX-512 is present wherever AMX is.
                    unsafe { pack_a_panel(&mut ap[ip * panel..(ip + 1) * panel], &a, r0, BM.min(m - r0), pc, kc) };
                }
                for jp in 0..n_panels {
                    let c0 = jp * BN;
                    let cols = BN.min(n - c0);
                    for ip in 0..m_panels {
                        let r0 = ic + ip * BM;
                        let rows = BM.min(m - r0);
                        // SAFETY: panels hold `chunks` chunks; the tile state was
                        // configured above; (r0, c0) and the block lie inside C.
                        unsafe {
                            block(
                                ap[ip * panel..].as_ptr(),
                                bp[jp * panel / 2..].as_ptr() as *const u16,
                                chunks,
                                &mut acc,
                            );
                            let dst = TileDst {
                                c: c.add(r0 * rsc + c0 * csc),
                                rsc,
                                csc,
                                rows,
                                cols,
                            };
                            write_back(&acc, dst, alpha, beta_k, bias_k.map(|v| &v[c0..c0 + cols]));
                        }
                    }
                }
            }
        }
        // SAFETY: releases this thread's tile state.
        unsafe { asm!("tilerelease", options(nostack)) };
    });
}
