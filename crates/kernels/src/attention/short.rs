//! A head's products for short sequences, without packing.
//!
//! At `N` of a few dozen tokens a head's products are tiny (`17 × 64 × 17`
//! for the tiny32 encoder) and the GEMM driver's 12 × 32 tiles are mostly
//! padding, its packing costs as much as the arithmetic: `perf` put 34% of
//! a tiny32 encoder attention in the micro-kernel and 33% in packing. Here
//! every operand already sits in L1, so the products read it where it is:
//!
//! ```text
//! C (R × W) = α · A (R × K) · B (K × W) + β · C
//! for each k:  C[r, :] += A[r, k] · B[k, :]     (A broadcast, B a row of vectors)
//! ```
//! `A` may have any strides (a transposed `P` or `dS` is read in place), `B`
//! has contiguous rows (`Kᵀ` and `Vᵀ`, `Dh × N`, are transposed into a
//! task's buffer first, [`dense_into`]), and the last vector of each row
//! is masked, so `W` need not be a multiple of 16. Four rows × up to four
//! vectors (16 accumulators) are in registers at once.
//!
//! Used where the CPU has AVX-512 and `N ≤` [`MAX_N`] (see [`applies`]),
//! in both precisions: at these sizes AMX's 32 × 32 tiles are padding too
//! (measured 5–15% slower than f32 at 17–65 tokens), so short heads run in
//! f32 also under bf16, which only rounds less.

use crate::cpu::Isa;
use crate::gemm::MatRef;

/// The longest sequence whose heads take these products. Measured on
/// Sapphire Rapids (forward + backward, against `TESSERA_ATTN_SHORT=off`):
/// 1.7× faster at 17 tokens, 1.15–1.3× at 50–65, level at 96–128, and
/// 16–19% slower at 197, where the driver's packed tiles pay.
pub const MAX_N: usize = 128;

/// Whether attention over `n` tokens takes this path on `isa`: AVX-512,
/// `n ≤` [`MAX_N`], and the environment does not say `TESSERA_ATTN_SHORT=off`
/// (to measure the driver's path on the same CPU).
pub fn applies(isa: Isa, n: usize) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off =
        *OFF.get_or_init(|| std::env::var("TESSERA_ATTN_SHORT").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "no")));
    isa == Isa::Avx512 && n <= MAX_N && !off
}

/// `dst ← m` as a dense row-major matrix (a head's `Kᵀ` or `Vᵀ`, read
/// through swapped strides); returns its view.
pub fn dense_into<'a>(dst: &'a mut Vec<f32>, m: MatRef) -> MatRef<'a> {
    let (rows, cols) = (m.rows(), m.cols());
    dst.clear();
    dst.resize(rows * cols, 0.0);
    if rows > 0 && m.rs() == 1 {
        // A transposed view: its columns are contiguous, read them whole.
        for j in 0..cols {
            let column = &m.data()[j * m.cs()..][..rows];
            let out = &mut dst[j..];
            for (i, &x) in column.iter().enumerate() {
                // SAFETY: i·cols + j < rows·cols = dst.len(), so i·cols < out.len().
                unsafe { *out.get_unchecked_mut(i * cols) = x };
            }
        }
    } else {
        for (i, row) in dst.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
            for (j, x) in row.iter_mut().enumerate() {
                *x = m.at(i, j);
            }
        }
    }
    MatRef::row_major(dst, rows, cols)
}

/// `C = α·A·B + β·C` with C at `c` (rows `rsc` apart, contiguous columns),
/// `B`'s columns contiguous. β = 0 ignores C's old contents.
///
/// # Safety
/// `c` covers `A.rows × B.cols` with that row stride, is valid for reads and
/// writes, and no one else touches it during the call.
pub unsafe fn product(isa: Isa, alpha: f32, a: MatRef, b: MatRef, beta: f32, c: *mut f32, rsc: usize) {
    assert!(
        a.cols() == b.rows() && (b.cs() == 1 || b.cols() <= 1),
        "short::product: A {}x{} · B {}x{} (B's columns must be contiguous)",
        a.rows(),
        a.cols(),
        b.rows(),
        b.cols()
    );
    match crate::cpu::clamp(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` says the CPU has AVX-512F; C is the caller's promise.
        Isa::Avx512 => unsafe { x86::product(alpha, a, b, beta, c, rsc) },
        // SAFETY: the caller's promise about C.
        _ => unsafe { reference(alpha, a, b, beta, c, rsc) },
    }
}

/// The same product, element by element: the scalar reference the vector
/// path is tested against, and the path of CPUs without AVX-512.
///
/// # Safety
/// As [`product`].
pub unsafe fn reference(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: *mut f32, rsc: usize) {
    for i in 0..a.rows() {
        for j in 0..b.cols() {
            let s: f32 = (0..a.cols()).map(|k| a.at(i, k) * b.at(k, j)).sum();
            // SAFETY: (i, j) lies in the region the caller vouched for.
            let cij = unsafe { &mut *c.add(i * rsc + j) };
            *cij = if beta == 0.0 {
                alpha * s
            } else {
                alpha * s + beta * *cij
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::gemm::MatRef;
    use std::arch::x86_64::*;

    /// Rows of C in registers at once.
    const R: usize = 4;
    /// Vectors of 16 columns in registers at once.
    const V: usize = 4;

    /// The whole product: column groups of up to `V` vectors, row blocks
    /// of `R` rows (the last block shorter).
    ///
    /// # Safety
    /// The CPU has AVX-512F; C as in [`super::product`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: *mut f32, rsc: usize) {
        let (rows, k, w) = (a.rows(), a.cols(), b.cols());
        for c0 in (0..w).step_by(16 * V) {
            let width = (w - c0).min(16 * V);
            let vectors = width.div_ceil(16);
            // Lanes of the last vector that are inside C.
            let tail = width - 16 * (vectors - 1);
            let mask: __mmask16 = if tail == 16 { !0 } else { (1u16 << tail) - 1 };
            for r0 in (0..rows).step_by(R) {
                let block = Block {
                    k,
                    a: a.data()[r0 * a.rs()..].as_ptr(),
                    ars: a.rs(),
                    acs: a.cs(),
                    b: b.data()[c0..].as_ptr(),
                    brs: b.rs(),
                    mask,
                    alpha,
                    beta,
                    // SAFETY: row r0, column c0 of C (inside it, by the caller).
                    c: unsafe { c.add(r0 * rsc + c0) },
                    rsc,
                };
                // SAFETY: the block's rows and columns lie inside A, B and C.
                unsafe { block.run((rows - r0).min(R), vectors) };
            }
        }
    }

    /// One block of C: `rows ≤ R` rows × `vectors ≤ V` vectors, the last
    /// vector's lanes chosen by `mask`.
    struct Block {
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        brs: usize,
        mask: __mmask16,
        alpha: f32,
        beta: f32,
        c: *mut f32,
        rsc: usize,
    }

    impl Block {
        /// Picks the kernel compiled for this block's size.
        ///
        /// # Safety
        /// The CPU has AVX-512F; `rows` rows of A and C, `k` rows of B and
        /// the masked columns lie inside their matrices.
        #[target_feature(enable = "avx512f")]
        unsafe fn run(&self, rows: usize, vectors: usize) {
            macro_rules! by_vectors {
                ($r:literal) => {
                    // SAFETY: as this function's.
                    unsafe {
                        match vectors {
                            1 => self.kernel::<$r, 1>(),
                            2 => self.kernel::<$r, 2>(),
                            3 => self.kernel::<$r, 3>(),
                            _ => self.kernel::<$r, 4>(),
                        }
                    }
                };
            }
            match rows {
                1 => by_vectors!(1),
                2 => by_vectors!(2),
                3 => by_vectors!(3),
                _ => by_vectors!(4),
            }
        }

        /// `RB × VB` accumulators: for each k, `VB` loads of B's row k,
        /// `RB` broadcasts of A's column k, `RB·VB` FMAs.
        ///
        /// # Safety
        /// As [`Block::run`], with `RB`, `VB` its sizes.
        #[target_feature(enable = "avx512f")]
        unsafe fn kernel<const RB: usize, const VB: usize>(&self) {
            // SAFETY (every access below): rows < RB of A and C, k rows of B
            // and, in the last vector, only the lanes `mask` selects are
            // inside the matrices (the caller's promise).
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); VB]; RB];
                for p in 0..self.k {
                    let brow = self.b.add(p * self.brs);
                    let mut bv = [_mm512_setzero_ps(); VB];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = if v + 1 == VB {
                            _mm512_maskz_loadu_ps(self.mask, brow.add(16 * v))
                        } else {
                            _mm512_loadu_ps(brow.add(16 * v))
                        };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*self.a.add(r * self.ars + p * self.acs));
                        for (x, &y) in row.iter_mut().zip(&bv) {
                            *x = _mm512_fmadd_ps(av, y, *x);
                        }
                    }
                }
                let alpha = _mm512_set1_ps(self.alpha);
                let beta = _mm512_set1_ps(self.beta);
                for (r, row) in acc.iter().enumerate() {
                    let crow = self.c.add(r * self.rsc);
                    for (v, &x) in row.iter().enumerate() {
                        let m = if v + 1 == VB { self.mask } else { !0 };
                        let dst = crow.add(16 * v);
                        let mut y = _mm512_mul_ps(alpha, x);
                        if self.beta != 0.0 {
                            y = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(m, dst), y);
                        }
                        _mm512_mask_storeu_ps(dst, m, y);
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

    /// The vector path against the element-by-element one on odd sizes,
    /// plain and transposed A, β = 0 (C's NaNs ignored) and β = 1.
    #[test]
    fn product_matches_reference_on_odd_sizes() {
        for_each_isa("short attention products", |isa| {
            let mut seed = 0;
            for rows in [1, 2, 3, 4, 5, 7, 17, 65] {
                for k in [1, 5, 16, 17, 64] {
                    for w in [1, 15, 16, 17, 33, 64, 65, 97] {
                        for transposed in [false, true] {
                            for beta in [0.0, 1.0] {
                                seed += 1;
                                let ad = random_vec(rows * (k + 1), seed);
                                let a = if transposed {
                                    MatRef::new(&ad, rows, k, 1, rows)
                                } else {
                                    MatRef::new(&ad, rows, k, k + 1, 1)
                                };
                                let bd = random_vec(k * (w + 2), seed + 1000);
                                let b = MatRef::new(&bd, k, w, w + 2, 1);
                                let rsc = w + 5;
                                let c0 = if beta == 0.0 {
                                    vec![f32::NAN; rows * rsc]
                                } else {
                                    random_vec(rows * rsc, seed + 2000)
                                };
                                let (mut fast, mut slow) = (c0.clone(), c0);
                                // SAFETY: both C buffers hold rows × rsc values, w < rsc.
                                unsafe {
                                    product(isa, 0.7, a, b, beta, fast.as_mut_ptr(), rsc);
                                    reference(0.7, a, b, beta, slow.as_mut_ptr(), rsc);
                                }
                                let what = format!("{rows}x{k}x{w} t={transposed} β={beta} on {}", isa.name());
                                for i in 0..rows {
                                    let (f, s) = (&fast[i * rsc..][..w], &slow[i * rsc..][..w]);
                                    assert_close(f, s, 1e-5, &what);
                                    // Columns past w are left alone.
                                    let (f, s) = (&fast[i * rsc + w..][..5], &slow[i * rsc + w..][..5]);
                                    assert!(f.iter().zip(s).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}");
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    #[test]
    fn dense_into_copies_a_transposed_view() {
        let d: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let m = MatRef::new(&d, 3, 2, 4, 1); // rows [0,1], [4,5], [8,9]
        let mut buf = vec![9.0; 1];
        let t = dense_into(&mut buf, m.t());
        assert_eq!((t.rows(), t.cols(), t.rs(), t.cs()), (2, 3, 3, 1));
        assert_eq!(buf, [0.0, 4.0, 8.0, 1.0, 5.0, 9.0]);
        // A view with neither stride 1 goes element by element.
        let t = dense_into(&mut buf, MatRef::new(&d, 2, 2, 2, 6));
        assert_eq!((t.rows(), t.cols()), (2, 2));
        assert_eq!(buf, [0.0, 6.0, 2.0, 8.0]);
    }
}
