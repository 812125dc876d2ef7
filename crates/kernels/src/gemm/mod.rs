//! General matrix multiply: `C = α · A · B + β · C`.
//!
//! Dims: `M` rows of `C` and `A`, `K` the inner dimension, `N` columns of `C` and `B`.
//!
//! ```text
//! A: (M, K)   B: (K, N)   C: (M, N)
//! C[i][j] = α · Σ_k A[i][k] · B[k][j] + β · C[i][j]
//! ```
//!
//! Matrices are *views*: element `(i, j)` lives at `data[i*rs + j*cs]`, so a
//! transpose is just swapped strides ([`MatRef::t`]), never a copy. The products
//! run through `matrixmultiply::sgemm` (packing + an AVX-512/AVX2 micro-kernel,
//! selected at run time by that crate). Large products are split over rayon
//! threads by rows (or columns) of `C`; every part is a single-threaded sgemm,
//! so there is exactly one level of parallelism.
//!
//! β = 0 means `C` is write-only (its old contents, even NaN, are ignored);
//! β = 1 accumulates, which is how every backward pass adds into gradients.

use crate::par::SendPtr;
use rayon::prelude::*;
use std::cell::Cell;

#[cfg(target_arch = "x86_64")]
pub mod amx;

/// The arithmetic of matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 inputs and accumulation (matrixmultiply). The default.
    F32,
    /// Mixed precision: inputs rounded to bfloat16, products accumulated in
    /// f32, on Intel AMX ([`amx`]). Like PyTorch's CPU autocast to bf16.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// True if this CPU and OS can run the bf16 AMX path.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// The precision of products started from this thread (their rayon tasks
    /// inherit it explicitly). Initialised from `TESSERA_MATMUL=bf16|f32`.
    static PRECISION: Cell<Precision> = Cell::new(initial_precision());
}

fn initial_precision() -> Precision {
    match std::env::var("TESSERA_MATMUL").ok().as_deref().map(str::trim) {
        Some("bf16") if bf16_available() => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// The precision of products started from this thread.
pub fn precision() -> Precision {
    PRECISION.with(|p| p.get())
}

/// Sets the precision of products started from this thread; returns the one
/// in effect (bf16 falls back to f32 where AMX is unavailable).
pub fn set_precision(p: Precision) -> Precision {
    let p = if p == Precision::Bf16 && !bf16_available() {
        Precision::F32
    } else {
        p
    };
    PRECISION.with(|c| c.set(p));
    p
}

/// A read-only strided matrix view: element `(i, j)` is `data[i*rs + j*cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Row stride (distance between `(i, j)` and `(i+1, j)`).
    pub rs: usize,
    /// Column stride (distance between `(i, j)` and `(i, j+1)`).
    pub cs: usize,
}

/// A mutable strided matrix view; see [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// One past the largest offset a `rows × cols` view with these strides touches.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a> MatRef<'a> {
    /// A strided view; panics if it would reach past the end of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        let need = extent(rows, cols, rs, cs);
        assert!(
            need <= data.len(),
            "MatRef: a {rows}x{cols} view with strides ({rs}, {cs}) needs {need} values, slice has {}",
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "MatRef::row_major: slice has {} values, want {rows}x{cols}",
            data.len()
        );
        MatRef::new(data, rows, cols, cols, 1)
    }

    /// A `rows × cols` view of `data` stored row-major as `(rows, cols)`, or, if
    /// `transposed`, as `(cols, rows)` and read through swapped strides: how a
    /// product's operand arrives either way (`x·W` or `x·Wᵀ`).
    pub fn stored(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            MatRef::row_major(data, cols, rows).t()
        } else {
            MatRef::row_major(data, rows, cols)
        }
    }

    /// The transpose, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Element `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

impl<'a> MatMut<'a> {
    /// A strided mutable view; panics if it would reach past the end of `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        let need = extent(rows, cols, rs, cs);
        assert!(
            need <= data.len(),
            "MatMut: a {rows}x{cols} view with strides ({rs}, {cs}) needs {need} values, slice has {}",
            data.len()
        );
        MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "MatMut::row_major: slice has {} values, want {rows}x{cols}",
            data.len()
        );
        MatMut::new(data, rows, cols, cols, 1)
    }

    /// The transpose, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Reborrows as a read-only view.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// True if no two elements share an offset (the only layouts we write to
    /// in parallel): rows laid out one after another, or columns.
    fn is_non_overlapping(&self) -> bool {
        self.rows <= 1
            || self.cols <= 1
            || (self.cs >= 1 && self.rs >= self.cols * self.cs)
            || (self.rs >= 1 && self.cs >= self.rows * self.rs)
    }
}

fn check_dims(op: &str, a: &MatRef, b: &MatRef, c: &MatMut) {
    assert!(
        a.cols == b.rows && a.rows == c.rows && b.cols == c.cols,
        "{op}: A is {}x{}, B is {}x{}, C is {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
}

/// Rows/columns per parallel part are a multiple of this, so every part's tiles
/// line up with the tiles of the undivided product (64 is a multiple of every
/// micro-kernel size in matrixmultiply). Elements then see identical arithmetic
/// whatever the split, and results do not depend on the thread count.
const SPLIT_ALIGN: usize = 64;

/// `C = α·A·B + β·C` (see the module docs), using every rayon thread when the
/// product is large enough to pay for it.
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    check_dims("gemm", &a, &b, &c);
    gemm_impl(alpha, a, b, beta, None, c)
}

/// The threaded product behind [`gemm`] and [`gemm_bias`].
///
/// C is cut into one aligned part per thread along its longer side: rows when
/// `M ≥ N` (each part packs all of B and its own rows of A), columns otherwise
/// (each part packs all of A and its own columns of B). Either way the operand
/// whose packing is repeated is the smaller one.
fn gemm_impl(alpha: f32, a: MatRef, b: MatRef, beta: f32, bias: Option<&[f32]>, c: MatMut) {
    let (m, n) = (a.rows, b.cols);
    let threads = rayon::current_num_threads();
    let work = m * n * a.cols;
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let parts = threads.min(len.div_ceil(SPLIT_ALIGN));
    let (rsc, csc) = (c.rs, c.cs);
    let prec = precision();
    if threads <= 1 || work < (1 << 21) || !c.is_non_overlapping() || parts <= 1 {
        // SAFETY: `MatMut::new` checked that the view fits in `c.data`.
        unsafe { sgemm_raw(prec, alpha, a, b, beta, bias, c.data.as_mut_ptr(), m, n, rsc, csc) };
        return;
    }
    let step = len.div_ceil(parts).div_ceil(SPLIT_ALIGN) * SPLIT_ALIGN;
    let cptr = SendPtr(c.data.as_mut_ptr());
    (0..len.div_ceil(step)).into_par_iter().for_each(|p| {
        let lo = p * step;
        let hi = (lo + step).min(len);
        // SAFETY: C's layout is non-overlapping (checked above) and the parts
        // cover disjoint row (or column) ranges, so no element is written twice;
        // every offset is within the slice checked by `MatMut::new`.
        unsafe {
            if split_rows {
                let a_part = MatRef {
                    data: &a.data[lo * a.rs..],
                    rows: hi - lo,
                    ..a
                };
                sgemm_raw(
                    prec,
                    alpha,
                    a_part,
                    b,
                    beta,
                    bias,
                    cptr.get().add(lo * rsc),
                    hi - lo,
                    n,
                    rsc,
                    csc,
                );
            } else {
                let b_part = MatRef {
                    data: &b.data[lo * b.cs..],
                    cols: hi - lo,
                    ..b
                };
                let bias_part = bias.map(|v| &v[lo..hi]);
                sgemm_raw(
                    prec,
                    alpha,
                    a,
                    b_part,
                    beta,
                    bias_part,
                    cptr.get().add(lo * csc),
                    m,
                    hi - lo,
                    rsc,
                    csc,
                );
            }
        }
    });
}

/// `C = α·A·B + β·C` on the calling thread only. Use inside rayon tasks
/// (attention heads, batches) to keep one level of parallelism.
pub fn gemm_serial(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    check_dims("gemm_serial", &a, &b, &c);
    let (rows, cols, rs, cs) = (c.rows, c.cols, c.rs, c.cs);
    // SAFETY: `MatMut::new` checked that the view fits in `c.data`.
    unsafe {
        sgemm_raw(
            precision(),
            alpha,
            a,
            b,
            beta,
            None,
            c.data.as_mut_ptr(),
            rows,
            cols,
            rs,
            cs,
        )
    }
}

/// `C = α·A·B + β·C + bias` with `bias (N)` added to every row of C: a linear
/// layer. C is pre-filled with the bias rows and the product accumulated onto
/// them (β = 0), so each thread writes its own part of C in one go.
pub fn gemm_bias(alpha: f32, a: MatRef, b: MatRef, bias: &[f32], beta: f32, c: MatMut) {
    check_dims("gemm_bias", &a, &b, &c);
    assert_eq!(
        bias.len(),
        c.cols,
        "gemm_bias: bias has {} values for {} columns",
        bias.len(),
        c.cols
    );
    gemm_impl(alpha, a, b, beta, Some(bias), c)
}

/// Runs the product on views whose bounds were already checked, in precision
/// `prec`: `C = α·A·B + β·C (+ bias on every row)`.
///
/// # Safety
/// `c` must point to a `rows × cols` region with strides `(rsc, csc)` that is
/// valid for writes and not written by anyone else during the call; `bias`,
/// if given, has `cols` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    prec: Precision,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    bias: Option<&[f32]>,
    c: *mut f32,
    rows: usize,
    cols: usize,
    rsc: usize,
    csc: usize,
) {
    debug_assert!(a.rows == rows && b.cols == cols && a.cols == b.rows);
    let k = a.cols;
    if rows == 0 || cols == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if prec == Precision::Bf16 && k > 0 && amx::available() {
        // SAFETY: AMX is available; the caller vouches for C and the bias.
        unsafe { amx::sgemm_bf16(alpha, a, b, beta, bias, c, rsc, csc) };
        return;
    }
    // SAFETY (every dereference below): (i, j) lies in the region the caller vouched for.
    let at = |i: usize, j: usize| unsafe { c.add(i * rsc + j * csc) };
    let mut beta = beta;
    if let Some(bias) = bias.filter(|_| beta == 0.0) {
        // Pre-fill C with the bias and let the product accumulate onto it.
        for i in 0..rows {
            for (j, &v) in bias.iter().enumerate() {
                unsafe { *at(i, j) = v };
            }
        }
        beta = 1.0;
    } else if let Some(bias) = bias {
        // β ≠ 0: scale C first, add the bias, then accumulate the product.
        for i in 0..rows {
            for (j, &v) in bias.iter().enumerate() {
                unsafe { *at(i, j) = beta * *at(i, j) + v };
            }
        }
        beta = 1.0;
    }
    if k == 0 {
        // No products: C = β·C (β = 0 overwrites, so stale NaNs vanish).
        for i in 0..rows {
            for j in 0..cols {
                unsafe { *at(i, j) = if beta == 0.0 { 0.0 } else { beta * *at(i, j) } };
            }
        }
        return;
    }
    // SAFETY: A and B were bounds-checked by their constructors; C by the caller.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c,
            rsc as isize,
            csc as isize,
        )
    }
}

/// A batch of equally shaped products `C_i = α·A_i·B_i + β·C_i`, `i < batch`.
///
/// Each view describes item 0; item `i` starts `i * stride` values further on.
/// A stride of 0 shares one matrix across the batch (a weight, say). The items
/// of `C` must not overlap. Large batches run one item per rayon task (each a
/// serial sgemm); small batches run items in turn, each product threaded.
#[allow(clippy::too_many_arguments)]
pub fn gemm_batched(
    batch: usize,
    alpha: f32,
    a: MatRef,
    a_stride: usize,
    b: MatRef,
    b_stride: usize,
    beta: f32,
    c: MatMut,
    c_stride: usize,
) {
    check_dims("gemm_batched", &a, &b, &c);
    if batch == 0 {
        return;
    }
    let item_c = extent(c.rows, c.cols, c.rs, c.cs);
    assert!(
        batch == 1 || c_stride >= item_c,
        "gemm_batched: C items overlap (stride {c_stride} < {item_c})"
    );
    let last = batch - 1;
    for (name, len, need) in [
        ("A", a.data.len(), last * a_stride + extent(a.rows, a.cols, a.rs, a.cs)),
        ("B", b.data.len(), last * b_stride + extent(b.rows, b.cols, b.rs, b.cs)),
        ("C", c.data.len(), last * c_stride + item_c),
    ] {
        assert!(
            need <= len,
            "gemm_batched: {name} needs {need} values for {batch} items, slice has {len}"
        );
    }
    let item = |i: usize| {
        (
            MatRef {
                data: &a.data[i * a_stride..],
                ..a
            },
            MatRef {
                data: &b.data[i * b_stride..],
                ..b
            },
        )
    };
    let (rows, cols, rs, cs) = (c.rows, c.cols, c.rs, c.cs);
    let threads = rayon::current_num_threads();
    let prec = precision();
    if threads > 1 && batch >= threads && batch * rows * cols * a.cols >= (1 << 18) {
        let cptr = SendPtr(c.data.as_mut_ptr());
        (0..batch).into_par_iter().for_each(|i| {
            let (ai, bi) = item(i);
            // SAFETY: items are `c_stride >= item_c` apart, so disjoint; bounds checked above.
            unsafe {
                sgemm_raw(
                    prec,
                    alpha,
                    ai,
                    bi,
                    beta,
                    None,
                    cptr.get().add(i * c_stride),
                    rows,
                    cols,
                    rs,
                    cs,
                )
            }
        });
    } else {
        for i in 0..batch {
            let (ai, bi) = item(i);
            let ci = MatMut {
                data: &mut c.data[i * c_stride..],
                rows,
                cols,
                rs,
                cs,
            };
            gemm(alpha, ai, bi, beta, ci);
        }
    }
}

/// The plain triple loop: the oracle for the tests above.
pub mod reference {
    use super::{MatMut, MatRef};

    /// `C = α·A·B + β·C`, one dot product per element, accumulated in f32.
    pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
        super::check_dims("reference::gemm", &a, &b, &c);
        for i in 0..c.rows {
            for j in 0..c.cols {
                let mut acc = 0f32;
                for p in 0..a.cols {
                    acc += a.at(i, p) * b.at(p, j);
                }
                let dst = &mut c.data[i * c.rs + j * c.cs];
                *dst = if beta == 0.0 {
                    alpha * acc
                } else {
                    alpha * acc + beta * *dst
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn random(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Straightforward f64 dot products, written independently of both paths.
    fn expected(
        alpha: f32,
        a: &MatRef,
        b: &MatRef,
        beta: f32,
        c0: &[f32],
        c_at: impl Fn(usize, usize) -> usize,
    ) -> Vec<(usize, f64)> {
        let mut out = Vec::new();
        for i in 0..a.rows {
            for j in 0..b.cols {
                let dot: f64 = (0..a.cols).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
                let idx = c_at(i, j);
                out.push((idx, alpha as f64 * dot + beta as f64 * c0[idx] as f64));
            }
        }
        out
    }

    #[test]
    fn all_transpose_combinations_on_odd_sizes() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let sizes = [1usize, 3, 7, 17, 65, 197];
        for (t, &m) in sizes.iter().enumerate() {
            let k = sizes[(t + 2) % sizes.len()];
            let n = sizes[(t + 4) % sizes.len()];
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
                    let a_data = random(m * k, &mut rng);
                    let b_data = random(k * n, &mut rng);
                    // A stored as (M, K) or as (K, M) and transposed by strides.
                    let a = MatRef::stored(&a_data, m, k, ta);
                    let b = MatRef::stored(&b_data, k, n, tb);
                    let c0 = random(m * n, &mut rng);
                    let want = expected(alpha, &a, &b, beta, &c0, |i, j| i * n + j);
                    let mut fast = c0.clone();
                    gemm(alpha, a, b, beta, MatMut::row_major(&mut fast, m, n));
                    let mut slow = c0.clone();
                    reference::gemm(alpha, a, b, beta, MatMut::row_major(&mut slow, m, n));
                    for (idx, w) in want {
                        let tol = 1e-5 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (fast[idx] as f64 - w).abs() <= tol * (1.0 + w.abs()),
                            "fast m{m} k{k} n{n} ta{ta} tb{tb}: {} vs {w}",
                            fast[idx]
                        );
                        assert!(
                            (slow[idx] as f64 - w).abs() <= tol * (1.0 + w.abs()),
                            "reference m{m} k{k} n{n}: {} vs {w}",
                            slow[idx]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_bias_adds_the_bias_to_every_row() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for &(m, k, n) in &[(1, 1, 1), (3, 7, 17), (65, 17, 33), (197, 64, 65), (300, 192, 576)] {
            let a = random(m * k, &mut rng);
            let w = random(n * k, &mut rng);
            let bias = random(n, &mut rng);
            let c0 = random(m * n, &mut rng);
            for beta in [0.0f32, 1.0, 0.5] {
                let mut c = c0.clone();
                gemm_bias(
                    1.0,
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&w, n, k).t(),
                    &bias,
                    beta,
                    MatMut::row_major(&mut c, m, n),
                );
                let mut want = c0.clone();
                reference::gemm(
                    1.0,
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&w, n, k).t(),
                    beta,
                    MatMut::row_major(&mut want, m, n),
                );
                for i in 0..m {
                    for j in 0..n {
                        let w = want[i * n + j] + bias[j];
                        assert!(
                            (c[i * n + j] - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "m{m} k{k} n{n} β{beta}: {} vs {w}",
                            c[i * n + j]
                        );
                    }
                }
            }
        }
    }

    /// The bf16 path (skipped with a message where AMX is unavailable): exact on
    /// inputs that bf16 represents exactly, and within bf16 rounding otherwise
    /// (each input rounded to 8 significant bits: relative error ≤ 2^-8 per
    /// factor, so |error| ≤ 2^-7 · Σ_p |a||b| plus f32 accumulation).
    #[test]
    fn bf16_products_on_amx() {
        if !bf16_available() {
            eprintln!("gemm bf16: skipping: this CPU or OS has no AMX-BF16");
            return;
        }
        let prev = set_precision(Precision::Bf16);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 7, 17),
            (17, 33, 65),
            (65, 197, 31),
            (197, 64, 197),
            (300, 512, 130),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true)] {
                // Exactly representable: multiples of 1/4 in [-2, 2].
                let exact = |len: usize, rng: &mut Xoshiro256PlusPlus| -> Vec<f32> {
                    (0..len).map(|_| rng.random_range(-8i32..=8) as f32 / 4.0).collect()
                };
                let (a, b) = (exact(m * k, &mut rng), exact(k * n, &mut rng));
                let av = MatRef::stored(&a, m, k, ta);
                let bv = MatRef::stored(&b, k, n, tb);
                let bias = exact(n, &mut rng);
                let mut c = vec![0f32; m * n];
                gemm_bias(1.0, av, bv, &bias, 0.0, MatMut::row_major(&mut c, m, n));
                let mut want = vec![0f32; m * n];
                reference::gemm(1.0, av, bv, 0.0, MatMut::row_major(&mut want, m, n));
                for i in 0..m * n {
                    assert_eq!(c[i], want[i] + bias[i % n], "exact m{m} k{k} n{n} ta{ta} tb{tb} at {i}");
                }
                // General values: within bf16 rounding.
                let (a, b) = (random(m * k, &mut rng), random(k * n, &mut rng));
                let av = MatRef::stored(&a, m, k, ta);
                let bv = MatRef::stored(&b, k, n, tb);
                let c0 = random(m * n, &mut rng);
                let mut c = c0.clone();
                gemm(0.5, av, bv, 1.0, MatMut::row_major(&mut c, m, n));
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|p| av.at(i, p) as f64 * bv.at(p, j) as f64).sum::<f64>() * 0.5
                            + c0[i * n + j] as f64;
                        let scale: f64 = (0..k).map(|p| (av.at(i, p) * bv.at(p, j)).abs() as f64).sum::<f64>() * 0.5;
                        let err = (c[i * n + j] as f64 - exact).abs();
                        assert!(
                            err <= 2f64.powi(-7) * scale + 1e-5,
                            "m{m} k{k} n{n}: error {err} > bound {}",
                            2f64.powi(-7) * scale
                        );
                    }
                }
            }
        }
        set_precision(prev);
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [1.0f32, 0.0, 0.0, 1.0];
        let mut c = [f32::NAN; 4];
        gemm(
            1.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 2),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
        assert_eq!(c, a);
        let mut c = [f32::NAN; 4];
        reference::gemm(
            1.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 2),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
        assert_eq!(c, a);
    }

    #[test]
    fn empty_inner_dimension_scales_c() {
        let mut c = vec![2.0f32; 6];
        gemm(
            1.0,
            MatRef::new(&[], 2, 0, 0, 1),
            MatRef::new(&[], 0, 3, 3, 1),
            0.5,
            MatMut::row_major(&mut c, 2, 3),
        );
        assert_eq!(c, vec![1.0; 6]);
    }

    #[test]
    fn strided_output_writes_only_its_view() {
        // C is columns 2..5 of a 4x8 buffer: the other columns must stay intact.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let a = random(4 * 5, &mut rng);
        let b = random(5 * 3, &mut rng);
        let mut buf = [9.0f32; 4 * 8];
        gemm(
            1.0,
            MatRef::row_major(&a, 4, 5),
            MatRef::row_major(&b, 5, 3),
            0.0,
            MatMut::new(&mut buf[2..], 4, 3, 8, 1),
        );
        for i in 0..4 {
            for j in 0..8 {
                let v = buf[i * 8 + j];
                if (2..5).contains(&j) {
                    let w: f32 = (0..5).map(|p| a[i * 5 + p] * b[p * 3 + j - 2]).sum();
                    assert_relative_eq!(v, w, epsilon = 1e-5);
                } else {
                    assert_eq!(v, 9.0);
                }
            }
        }
    }

    #[test]
    fn threaded_result_equals_single_thread_bit_for_bit() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        for &(m, k, n) in &[(197, 192, 576), (50, 768, 3072), (1576, 64, 197), (129, 300, 131)] {
            let a = random(m * k, &mut rng);
            let b = random(k * n, &mut rng);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![0f32; m * n];
                pool.install(|| {
                    gemm(
                        1.0,
                        MatRef::row_major(&a, m, k),
                        MatRef::row_major(&b, n, k).t(),
                        0.0,
                        MatMut::row_major(&mut c, m, n),
                    )
                });
                c
            };
            let one = run(1);
            for t in [2, 3] {
                assert!(
                    one.iter().zip(run(t)).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "m{m} k{k} n{n} differs with {t} threads"
                );
            }
        }
    }

    #[test]
    fn batched_matches_per_item_products() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        for &(batch, m, k, n, share_b) in &[
            (1, 3, 7, 17, false),
            (6, 17, 65, 7, false),
            (12, 65, 64, 65, true),
            (3, 197, 64, 197, false),
        ] {
            let a = random(batch * m * k, &mut rng);
            let b = random(if share_b { k * n } else { batch * k * n }, &mut rng);
            let c0 = random(batch * m * n, &mut rng);
            let b_stride = if share_b { 0 } else { k * n };
            let mut c = c0.clone();
            gemm_batched(
                batch,
                1.0,
                MatRef::new(&a, m, k, k, 1),
                m * k,
                // B_i stored (N, K): transposed view.
                MatRef::new(&b, k, n, 1, k),
                b_stride,
                1.0,
                MatMut::new(&mut c, m, n, n, 1),
                m * n,
            );
            for i in 0..batch {
                let mut want = c0[i * m * n..(i + 1) * m * n].to_vec();
                reference::gemm(
                    1.0,
                    MatRef::row_major(&a[i * m * k..(i + 1) * m * k], m, k),
                    MatRef::row_major(&b[i * b_stride..i * b_stride + k * n], n, k).t(),
                    1.0,
                    MatMut::row_major(&mut want, m, n),
                );
                for (x, y) in c[i * m * n..(i + 1) * m * n].iter().zip(&want) {
                    assert_relative_eq!(*x, *y, epsilon = 1e-4, max_relative = 1e-4);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn view_past_the_end_panics_with_shapes() {
        let data = [0f32; 5];
        let _ = MatRef::new(&data, 2, 3, 3, 1);
    }
}
