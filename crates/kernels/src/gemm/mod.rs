//! General matrix multiply: `C = α · A · B + β · C`.
//!
//! Dims: `M` rows of `C` and `A`, `K` the inner dimension, `N` columns of `C` and `B`.
//!
//! ```text
//! A: (M, K)   B: (K, N)   C: (M, N)
//! C[i][j] = α · Σ_k A[i][k] · B[k][j] + β · C[i][j]
//! ```
//!
//! Matrices are *views* ([`view`]): element `(i, j)` lives at `data[i*rs + j*cs]`,
//! so a transpose is just swapped strides ([`MatRef::t`]), never a copy.
//!
//! The module is split by role, in reading order:
//! * [`view`]: `MatRef` / `MatMut`, bounds-checked strided views;
//! * `kernel`: the register-blocked micro-kernels (AVX-512 12 × 32, AVX2 6 × 16);
//! * `pack`: copying blocks of A and B into the kernels' panel order;
//! * `driver`: the BLIS loop nest (KC / NC blocking) and the 2-D thread split;
//! * [`amx`]: the bf16 micro-kernel on Intel AMX tiles, run by the same driver.
//!
//! Which path runs: f32 products on AVX-512 or AVX2+FMA CPUs go through
//! Tessera's own driver; on CPUs without AVX2 (or with `TESSERA_ISA=scalar`)
//! they go through `matrixmultiply`, which is also the oracle the driver is
//! tested against, next to the plain triple loop in [`mod@reference`].
//! bf16 products go through the same driver, on AMX tiles where the CPU and
//! the OS allow them (and `TESSERA_AMX=off` does not say otherwise), else
//! with AVX512-BF16's `vdpbf16ps`, else in f32.
//!
//! β = 0 means `C` is write-only (its old contents, even NaN, are ignored);
//! β = 1 accumulates, which is how backward passes add into gradients.
//! Results do not depend on the number of threads.

use crate::cpu::{self, Isa};
use crate::par::SendPtr;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod bf16;
pub mod blocking;
pub(crate) mod driver;
mod kernel;
mod pack;
pub mod view;

pub use blocking::Blocking;
pub use driver::SplitTimes;
use view::extent;
pub use view::{MatMut, MatRef};

/// True if this CPU has AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
fn avx512_bf16() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| cpu::detected() == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16"))
}

/// The arithmetic of matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 inputs and accumulation. The default.
    F32,
    /// Mixed precision: inputs rounded to bfloat16, products accumulated in
    /// f32, on Intel AMX ([`amx`]) or with AVX512-BF16 (the driver's
    /// `vdpbf16ps` kernel). Like PyTorch's CPU autocast to bf16.
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

/// True if this CPU can run bf16 products: on AMX tiles (Intel Sapphire
/// Rapids and later), or with AVX512-BF16's `vdpbf16ps` (AMD Zen 4, Intel
/// Cooper Lake) through Tessera's driver.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available() || avx512_bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel bf16 products run on here: `"amx"` (tiles), `"avx512_bf16"`
/// (`vdpbf16ps`), or `None` (they run in f32). The same choice as the
/// products make, so a benchmark line can say which one made its number: on
/// an Intel CPU without AMX, `vdpbf16ps` is no faster than two f32 FMAs.
pub fn bf16_kernel() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if amx::available() {
            Some("amx")
        } else if cpu::isa() == Isa::Avx512 && avx512_bf16() {
            Some("avx512_bf16")
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

impl Precision {
    /// `self`, or f32 where this CPU cannot run bf16 products
    /// ([`bf16_available`]): what a product asked for `self` runs in.
    pub fn available(self) -> Precision {
        if self == Precision::Bf16 && !bf16_available() {
            Precision::F32
        } else {
            self
        }
    }
}

fn check_dims(op: &str, a: &MatRef, b: &MatRef, c: &MatMut) {
    assert!(
        a.cols() == b.rows() && a.rows() == c.rows() && b.cols() == c.cols(),
        "{op}: A is {}x{}, B is {}x{}, C is {}x{}",
        a.rows(),
        a.cols(),
        b.rows(),
        b.cols(),
        c.rows(),
        c.cols()
    );
}

/// `C = α·A·B + β·C` (see the module docs) in `prec` (bf16 where the CPU
/// can, else f32), using every rayon thread when the product is large
/// enough to pay for it.
pub fn gemm(prec: Precision, alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    check_dims("gemm", &a, &b, &c);
    let p = driver::Product {
        prec,
        ..plain(alpha, a, b, beta)
    };
    product(cpu::isa(), p, c, rayon::current_num_threads())
}

/// [`gemm`] on the calling thread only. Use inside rayon tasks (attention
/// heads, batches) to keep one level of parallelism.
pub fn gemm_serial(prec: Precision, alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    check_dims("gemm_serial", &a, &b, &c);
    let p = driver::Product {
        prec,
        ..plain(alpha, a, b, beta)
    };
    product(cpu::isa(), p, c, 1)
}

/// `C = α·A·B + β·C + bias` with `bias (N)` added to every row of C: a linear
/// layer. The bias is added in the kernel's epilogue, as the tile is stored,
/// so C is written once.
pub fn gemm_bias(prec: Precision, alpha: f32, a: MatRef, b: MatRef, bias: &[f32], beta: f32, c: MatMut) {
    check_dims("gemm_bias", &a, &b, &c);
    assert_eq!(
        bias.len(),
        c.cols(),
        "gemm_bias: bias has {} values for {} columns",
        bias.len(),
        c.cols()
    );
    let p = driver::Product {
        bias: Some(bias),
        prec,
        ..plain(alpha, a, b, beta)
    };
    product(cpu::isa(), p, c, rayon::current_num_threads())
}

/// `pre = A·B + bias` (a linear layer, β = 0) and `act = gelu(pre)` (exact
/// erf GELU): an MLP's first layer. On the driver's paths the GELU is applied
/// to each tile of `pre` as it gets its last k block, while it is in L1, so
/// `pre` is not read back from memory; elsewhere in a pass afterwards. Both
/// give the bits of [`gemm_bias`] followed by `gelu::forward`.
pub fn gemm_bias_gelu(prec: Precision, a: MatRef, b: MatRef, bias: &[f32], pre: MatMut, act: &mut [f32]) {
    check_dims("gemm_bias_gelu", &a, &b, &pre);
    assert_eq!(
        bias.len(),
        pre.cols(),
        "gemm_bias_gelu: bias has {} values for {} columns",
        bias.len(),
        pre.cols()
    );
    let (rows, cols) = (pre.rows(), pre.cols());
    assert_eq!(
        act.len(),
        rows * cols,
        "gemm_bias_gelu: act has {} values, want {rows}x{cols}",
        act.len()
    );
    let p = driver::Product {
        bias: Some(bias),
        gelu_to: Some((SendPtr(act.as_mut_ptr()), cols)),
        prec,
        ..plain(1.0, a, b, 0.0)
    };
    // `act` is borrowed mutably for the call and holds rows × cols values,
    // contiguous rows `cols` apart: what `product_raw` needs of `gelu_to`.
    product(cpu::isa(), p, pre, rayon::current_num_threads())
}

/// `C = R + A·B + bias`: a linear layer and the residual connection around
/// it in one pass over C (`R`, of C's shape, is copied into each tile of C
/// just before the product accumulates onto it). C's old contents are ignored.
pub fn gemm_bias_residual(prec: Precision, a: MatRef, b: MatRef, bias: Option<&[f32]>, residual: MatRef, c: MatMut) {
    check_dims("gemm_bias_residual", &a, &b, &c);
    assert!(
        residual.rows() == c.rows() && residual.cols() == c.cols(),
        "gemm_bias_residual: residual is {}x{}, C is {}x{}",
        residual.rows(),
        residual.cols(),
        c.rows(),
        c.cols()
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            c.cols(),
            "gemm_bias_residual: bias has {} values for {} columns",
            bias.len(),
            c.cols()
        );
    }
    let p = driver::Product {
        bias,
        residual: Some(residual),
        prec,
        ..plain(1.0, a, b, 0.0)
    };
    product(cpu::isa(), p, c, rayon::current_num_threads())
}

/// Runs `C = α·A·B + β·C` split as the driver would split it for `threads`
/// threads, but with every part on the calling thread, one after another,
/// and returns what the shared packing and each part cost: how to see the
/// per-thread work (imbalance, repeated packing) of 16 threads on 2 cores.
/// `None` where the driver does not run (no AVX2, or `TESSERA_ISA=scalar`).
pub fn split_profile(threads: usize, alpha: f32, a: MatRef, b: MatRef, beta: f32, mut c: MatMut) -> Option<SplitTimes> {
    check_dims("split_profile", &a, &b, &c);
    if a.cols() == 0 || c.rows() == 0 || c.cols() == 0 {
        return None;
    }
    let p = plain(alpha, a, b, beta);
    let (rsc, csc) = (c.rs(), c.cs());
    let ptr = c.as_mut_ptr();
    match cpu::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `cpu::isa()` ≤ detected; C was bounds-checked by `MatMut`
        // and is borrowed for the call; the parts run one after another.
        Isa::Avx512 => Some(unsafe { driver::run_profiled::<kernel::Avx512>(&p, ptr, rsc, csc, threads) }),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => Some(unsafe { driver::run_profiled::<kernel::Avx2>(&p, ptr, rsc, csc, threads) }),
        _ => None,
    }
}

/// The checked entry of every product: picks the path and the thread count.
fn product(isa: Isa, p: driver::Product, mut c: MatMut, threads: usize) {
    let threads = if c.is_non_overlapping() { threads } else { 1 };
    let (rsc, csc) = (c.rs(), c.cs());
    // SAFETY: `MatMut`'s constructor checked that the view fits in its slice,
    // which `c` borrows mutably for the whole call; parallel writes only
    // happen on non-overlapping layouts (checked above); the callers check the
    // bias and the activation output against C's shape.
    unsafe { product_raw(isa.min(cpu::detected()), &p, c.as_mut_ptr(), rsc, csc, threads) }
}

/// The operands of a product with the defaults: no bias, no activation, no
/// residual.
pub(crate) fn plain<'a>(alpha: f32, a: MatRef<'a>, b: MatRef<'a>, beta: f32) -> driver::Product<'a> {
    driver::Product {
        alpha,
        a,
        b,
        beta,
        bias: None,
        gelu_to: None,
        residual: None,
        prec: Precision::F32,
    }
}

/// Runs a product on views whose bounds were already checked:
/// `C = α·A·B + β·C (+ bias on every row)`, then `gelu(C)` into `p.gelu_to`
/// if asked; C is `A.rows × B.cols` at `c` with strides `(rsc, csc)`, in
/// precision `prec` on instruction set `isa`, on at most `threads` threads.
///
/// # Safety
/// `isa` ≤ `cpu::detected()`; `c` points to a region of that shape that is
/// valid for reads and writes and not touched by anyone else during the call,
/// whose elements do not overlap if `threads > 1`; the bias, if given, has
/// `B.cols` values; `p.gelu_to`, if given, is valid for writes of the same
/// shape with its row stride and contiguous rows, and touched by no one else.
pub(crate) unsafe fn product_raw(isa: Isa, p: &driver::Product, c: *mut f32, rsc: usize, csc: usize, threads: usize) {
    let (a, b) = (&p.a, &p.b);
    let prec = p.prec.available();
    debug_assert!(a.cols() == b.rows() && isa <= cpu::detected());
    let (rows, cols, k) = (a.rows(), b.cols(), a.cols());
    if rows == 0 || cols == 0 {
        return;
    }
    // The driver applies GELU to each tile as it finishes (it needs C's
    // columns contiguous); every other path does it in a pass afterwards.
    let driver_path = cfg!(target_arch = "x86_64") && k > 0 && csc == 1 && isa != Isa::Scalar;
    let mut q = *p;
    if !driver_path {
        q.gelu_to = None;
        if let Some(r) = q.residual.take() {
            // C = R first, then the product accumulates onto it.
            let dst = kernel::TileDst {
                c,
                rsc,
                csc,
                rows,
                cols,
            };
            // SAFETY: C is the region the caller vouched for.
            unsafe { driver::copy_tile(&r, 0, 0, dst) };
            q.beta = 1.0;
        }
    }
    // SAFETY: the caller's promises, passed on.
    unsafe { product_unfused(prec, isa, &q, c, rsc, csc, threads) };
    if let (Some((out, ors)), false) = (p.gelu_to, driver_path) {
        for i in 0..rows {
            // SAFETY: row i of C (cols values `csc` apart) and of the output
            // (contiguous) lie in the regions the caller vouched for.
            unsafe {
                let dst = std::slice::from_raw_parts_mut(out.get().add(i * ors), cols);
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = *c.add(i * rsc + j * csc);
                }
                crate::gelu::gelu_in_place(isa, dst);
            }
        }
    }
}

/// [`product_raw`] with the activation left to the driver (if any).
///
/// # Safety
/// As [`product_raw`]; `p.gelu_to` is only honoured on the driver's paths.
unsafe fn product_unfused(
    prec: Precision,
    isa: Isa,
    p: &driver::Product,
    c: *mut f32,
    rsc: usize,
    csc: usize,
    threads: usize,
) {
    let (rows, cols, k) = (p.a.rows(), p.b.cols(), p.a.cols());
    if k == 0 {
        // No products: C = β·C + bias (β = 0 overwrites, so stale NaNs vanish).
        for i in 0..rows {
            for j in 0..cols {
                // SAFETY: (i, j) lies in the region the caller vouched for.
                unsafe {
                    let dst = c.add(i * rsc + j * csc);
                    let old = if p.beta == 0.0 { 0.0 } else { p.beta * *dst };
                    *dst = old + p.bias.map_or(0.0, |v| v[j]);
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if prec == Precision::Bf16 && amx::available() {
            // SAFETY: AMX (and so AVX-512F) is available; the caller vouches for C and the bias.
            return unsafe { driver::run::<amx::Amx>(p, c, rsc, csc, threads) };
        }
        if prec == Precision::Bf16 && isa == Isa::Avx512 && avx512_bf16() {
            // SAFETY: the CPU has AVX-512F and AVX512-BF16; the caller vouches for C and the bias.
            return unsafe { driver::run::<kernel::Avx512Bf16>(p, c, rsc, csc, threads) };
        }
        match isa {
            // SAFETY: the caller vouches for the CPU (isa ≤ detected), C and the bias.
            Isa::Avx512 => return unsafe { driver::run::<kernel::Avx512>(p, c, rsc, csc, threads) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { driver::run::<kernel::Avx2>(p, c, rsc, csc, threads) },
            Isa::Scalar => {}
        }
    }
    let _ = (prec, isa);
    // SAFETY: the caller vouches for C and the bias.
    unsafe {
        split_among_threads(p, c, rsc, csc, threads, |q, c, rsc, csc| {
            reference_sgemm(q, c, rsc, csc)
        })
    }
}

/// How the micro-kernel reads A in [`kernel_gflops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum APanelKind {
    /// A packed `(kc, MR)` micro-panel (what the driver packs).
    Packed,
    /// MR rows of a row-major A read in place (rows `kc` apart).
    InPlace,
}

/// The f32 micro-kernel of `isa` alone, on hot panels: one `MR × NR` tile
/// of C accumulated `reps` times from the same `MR × kc` A panel and
/// `kc × NR` B panel (both in L1/L2), on the calling thread; GFLOP/s. This
/// is the ceiling of the driver on this CPU: packing, cache misses and the
/// split between threads come on top (`crates/kernels/examples/gemm_hot.rs`). `None` for
/// an instruction set without a micro-kernel (scalar) or above the CPU's.
pub fn kernel_gflops(isa: Isa, kc: usize, a_kind: APanelKind, reps: usize) -> Option<f64> {
    if isa > cpu::detected() || kc == 0 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            // SAFETY: `isa` ≤ the detected CPU (checked above).
            Isa::Avx512 => Some(unsafe { hot_rate::<kernel::Avx512>(kc, a_kind, reps) }),
            // SAFETY: as above.
            Isa::Avx2 => Some(unsafe { hot_rate::<kernel::Avx2>(kc, a_kind, reps) }),
            Isa::Scalar => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a_kind, reps);
        None
    }
}

/// The AMX bf16 micro-kernel alone on hot panels, as [`kernel_gflops`]
/// (one 32 × 32 tile, its epilogue included); `None` without AMX.
pub fn amx_kernel_gflops(kc: usize, reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if kc == 0 || !amx::available() {
            return None;
        }
        // SAFETY: AMX (and AVX-512F) is available.
        Some(unsafe { hot_rate::<amx::Amx>(kc, APanelKind::Packed, reps) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kc, reps);
        None
    }
}

/// [`kernel_gflops`] for kernel `K`.
///
/// # Safety
/// The CPU supports `K`'s instruction set.
#[cfg(target_arch = "x86_64")]
unsafe fn hot_rate<K: kernel::MicroKernel>(kc: usize, a_kind: APanelKind, reps: usize) -> f64 {
    use kernel::{APanel, Epilogue, TileDst};
    // 64-byte aligned, as the driver's packed panels are.
    let mut a_buf = pack::Scratch::take(K::MR * kc);
    let mut b_buf = pack::Scratch::take(K::NR * kc);
    let mut c_buf = pack::Scratch::take(K::MR * K::NR);
    let (a, b, c) = (a_buf.as_mut_slice(), b_buf.as_mut_slice(), c_buf.as_mut_slice());
    a.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 7) as f32 * 1e-3);
    b.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 5) as f32 * 1e-3);
    c.fill(0.0);
    let b: &[f32] = b;
    let panel = match a_kind {
        APanelKind::Packed => APanel::Packed(a.as_ptr(), K::MR),
        APanelKind::InPlace => APanel::Rows(a.as_ptr(), kc),
    };
    let ep = Epilogue {
        alpha: 1.0,
        beta: 1.0,
        bias: None,
    };
    let dst = TileDst {
        c: c.as_mut_ptr(),
        rsc: K::NR,
        csc: 1,
        rows: K::MR,
        cols: K::NR,
    };
    let start = std::time::Instant::now();
    for _ in 0..reps {
        // SAFETY: the caller vouches for the CPU; A holds MR rows × kc (packed
        // or rows kc apart), B kc·NR values, and C the whole MR × NR tile.
        unsafe { K::full(kc, panel, std::hint::black_box(b), dst, &ep) };
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(c_buf.as_mut_slice());
    (2 * K::MR * K::NR * kc * reps) as f64 / secs / 1e9
}

/// Rows/columns per parallel part are a multiple of this, so every part's tiles
/// line up with the tiles of the undivided product (64 is a multiple of every
/// micro-kernel size in matrixmultiply). Elements then
/// see identical arithmetic whatever the split.
const SPLIT_ALIGN: usize = 64;

/// Runs `run` (a single-threaded product: matrixmultiply) on parts of
/// C cut along its longer side, one aligned part per thread; each part packs
/// its own copy of the other operand. Tessera's driver does better (shared
/// packing, 2-D split); this serves the paths that have no driver of their own.
///
/// # Safety
/// As [`product_raw`]; `run` must be safe to call on any part of the product.
unsafe fn split_among_threads(
    p: &driver::Product,
    c: *mut f32,
    rsc: usize,
    csc: usize,
    threads: usize,
    run: impl Fn(&driver::Product, *mut f32, usize, usize) + Sync,
) {
    let (m, n, k) = (p.a.rows(), p.b.cols(), p.a.cols());
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let parts = threads.min(len.div_ceil(SPLIT_ALIGN));
    if parts <= 1 || m * n * k < (1 << 21) {
        return run(p, c, rsc, csc);
    }
    let step = len.div_ceil(parts).div_ceil(SPLIT_ALIGN) * SPLIT_ALIGN;
    let cptr = SendPtr(c);
    (0..len.div_ceil(step)).into_par_iter().for_each(|part| {
        let lo = part * step;
        let hi = (lo + step).min(len);
        let q = if split_rows {
            driver::Product {
                a: p.a.rows_range(lo, hi - lo),
                ..*p
            }
        } else {
            driver::Product {
                b: p.b.cols_range(lo, hi - lo),
                bias: p.bias.map(|v| &v[lo..hi]),
                ..*p
            }
        };
        let off = if split_rows { lo * rsc } else { lo * csc };
        // SAFETY: C's elements do not overlap (the caller's promise when
        // threads > 1) and the parts cover disjoint row (or column) ranges.
        run(&q, unsafe { cptr.get().add(off) }, rsc, csc)
    });
}

/// matrixmultiply's sgemm on one thread, with the bias added by pre-filling C.
///
/// # Safety
/// As [`product_raw`], with `k ≥ 1`.
unsafe fn reference_sgemm(p: &driver::Product, c: *mut f32, rsc: usize, csc: usize) {
    let (rows, cols, k) = (p.a.rows(), p.b.cols(), p.a.cols());
    // SAFETY (every dereference below): (i, j) lies in the region the caller vouched for.
    let at = |i: usize, j: usize| unsafe { c.add(i * rsc + j * csc) };
    let mut beta = p.beta;
    if let Some(bias) = p.bias {
        // C = β·C + bias first (β = 0 ignores the old contents), then accumulate.
        for i in 0..rows {
            for (j, &v) in bias.iter().enumerate() {
                // SAFETY: (i, j) is inside C, the region the caller vouched for.
                unsafe { *at(i, j) = if beta == 0.0 { v } else { beta * *at(i, j) + v } };
            }
        }
        beta = 1.0;
    }
    let (a, b) = (&p.a, &p.b);
    // SAFETY: A and B were bounds-checked by their constructors; C by the caller.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            cols,
            p.alpha,
            a.data().as_ptr(),
            a.rs() as isize,
            a.cs() as isize,
            b.data().as_ptr(),
            b.rs() as isize,
            b.cs() as isize,
            beta,
            c,
            rsc as isize,
            csc as isize,
        )
    }
}

/// How a batch of products is laid out: `count` items, item `i` of each
/// operand starting `i · stride` values after item 0 (a stride of 0 shares
/// one matrix across the batch: a weight, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub count: usize,
    pub a_stride: usize,
    pub b_stride: usize,
    pub c_stride: usize,
}

/// A batch of equally shaped products `C_i = α·A_i·B_i + β·C_i`, `i <
/// batch.count`; each view describes item 0 (see [`Batch`]).
///
/// The items of `C` must not overlap. Large batches run one item per rayon
/// task (each a serial product); small batches run items in turn, each
/// product threaded.
pub fn gemm_batched(prec: Precision, batch: Batch, alpha: f32, a: MatRef, b: MatRef, beta: f32, mut c: MatMut) {
    let Batch {
        count: batch,
        a_stride,
        b_stride,
        c_stride,
    } = batch;
    check_dims("gemm_batched", &a, &b, &c);
    if batch == 0 {
        return;
    }
    let item_c = extent(c.rows(), c.cols(), c.rs(), c.cs());
    assert!(
        batch == 1 || c_stride >= item_c,
        "gemm_batched: C items overlap (stride {c_stride} < {item_c})"
    );
    let last = batch - 1;
    // The last item of each operand must fit (shifted views check it too;
    // this names the operand and the batch).
    for (name, len, view_len, stride) in [
        (
            "A",
            a.data().len(),
            extent(a.rows(), a.cols(), a.rs(), a.cs()),
            a_stride,
        ),
        (
            "B",
            b.data().len(),
            extent(b.rows(), b.cols(), b.rs(), b.cs()),
            b_stride,
        ),
    ] {
        let need = last * stride + view_len;
        assert!(
            need <= len,
            "gemm_batched: {name} needs {need} values for {batch} items, slice has {len}"
        );
    }
    let threads = rayon::current_num_threads();
    let (rows, cols) = (c.rows(), c.cols());
    if threads > 1 && batch >= threads && batch * rows * cols * a.cols() >= (1 << 18) {
        let (rsc, csc) = (c.rs(), c.cs());
        let _ = c.shifted(last * c_stride); // panics unless the last item fits
        let cptr = SendPtr(c.as_mut_ptr());
        let isa = cpu::isa();
        (0..batch).into_par_iter().for_each(|i| {
            let (ai, bi) = (a.shifted(i * a_stride), b.shifted(i * b_stride));
            // SAFETY: items are `c_stride >= item_c` apart, so disjoint, and the
            // last one fits in C's slice (checked above); each runs serially.
            unsafe {
                product_raw(
                    isa,
                    &driver::Product {
                        prec,
                        ..plain(alpha, ai, bi, beta)
                    },
                    cptr.get().add(i * c_stride),
                    rsc,
                    csc,
                    1,
                )
            }
        });
    } else {
        for i in 0..batch {
            let (ai, bi) = (a.shifted(i * a_stride), b.shifted(i * b_stride));
            gemm(prec, alpha, ai, bi, beta, c.shifted(i * c_stride));
        }
    }
}

/// The plain triple loop: the oracle for the tests above.
pub mod reference {
    use super::{MatMut, MatRef};

    /// `C = α·A·B + β·C`, one dot product per element, accumulated in f32.
    pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
        super::check_dims("reference::gemm", &a, &b, &c);
        let mut c = c;
        for i in 0..c.rows() {
            for j in 0..c.cols() {
                let mut acc = 0f32;
                for p in 0..a.cols() {
                    acc += a.at(i, p) * b.at(p, j);
                }
                let dst = c.at_mut(i, j);
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
    use super::driver::Product;
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
        for i in 0..a.rows() {
            for j in 0..b.cols() {
                let dot: f64 = (0..a.cols()).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
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
                    gemm(Precision::F32, alpha, a, b, beta, MatMut::row_major(&mut fast, m, n));
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

    /// Every path (Tessera's driver on each instruction set this CPU has,
    /// matrixmultiply for `Scalar`) against f64 dot products, on shapes that
    /// cross every blocking edge: K past one and several KC blocks, N past one
    /// column block (512), M past one packed group of row panels (768 rows on
    /// AMD, 96 on Intel), ragged tiles, A read in place and packed, all four
    /// transposes, β ∈ {0 with NaN in C, 1, ½}, with a bias.
    #[test]
    fn every_path_matches_f64_across_blocking_edges() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(17);
        let shapes = [
            (1, 1, 1),
            (13, 300, 37),
            (25, 513, 70),
            (12, 256, 32),
            (100, 17, 1100),
            (800, 40, 33),
            (30, 1024, 40), // row-major A with 4 KiB rows: packed, not read in place
            (37, 1, 65),
        ];
        for isa in cpu::available() {
            for (t, &(m, k, n)) in shapes.iter().enumerate() {
                let (ta, tb) = (t % 2 == 1, t % 4 >= 2);
                let a_data = random(m * k, &mut rng);
                let b_data = random(k * n, &mut rng);
                let bias = random(n, &mut rng);
                let a = MatRef::stored(&a_data, m, k, ta);
                let b = MatRef::stored(&b_data, k, n, tb);
                for &(alpha, beta, with_bias) in &[
                    (1.0f32, 0.0f32, false),
                    (0.5, 1.0, true),
                    (-2.0, 0.5, false),
                    (1.0, 0.0, true),
                ] {
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        random(m * n, &mut rng)
                    };
                    let zeros = vec![0f32; m * n];
                    let want = expected(alpha, &a, &b, beta, if beta == 0.0 { &zeros } else { &c0 }, |i, j| {
                        i * n + j
                    });
                    let mut got = c0.clone();
                    let bias = with_bias.then_some(&bias[..]);
                    product(
                        isa,
                        Product {
                            bias,
                            ..plain(alpha, a, b, beta)
                        },
                        MatMut::row_major(&mut got, m, n),
                        4,
                    );
                    for (idx, w) in want {
                        let w = w + bias.map_or(0.0, |v| v[idx % n] as f64);
                        let tol = 1e-5 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (got[idx] as f64 - w).abs() <= tol * (1.0 + w.abs()),
                            "{} m{m} k{k} n{n} ta{ta} tb{tb} α{alpha} β{beta} bias {with_bias}: [{idx}] {} vs {w}",
                            isa.name(),
                            got[idx]
                        );
                    }
                }
            }
        }
    }

    /// The driver's split of C among tasks (1 to 16, more tasks than this
    /// machine has cores) never changes a bit of the result, on every path
    /// (bf16 too, where the CPU has it), and a strided (column-major) C is
    /// written through the same arithmetic.
    #[test]
    fn results_do_not_depend_on_the_split() {
        let mut paths: Vec<(Isa, Precision)> = cpu::available().into_iter().map(|i| (i, Precision::F32)).collect();
        if bf16_available() {
            paths.push((cpu::detected(), Precision::Bf16));
        }
        for (isa, prec) in paths {
            split_is_invisible(isa, prec);
        }
    }

    fn split_is_invisible(isa: Isa, prec: Precision) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
        {
            for &(m, k, n) in &[(400, 300, 230), (1088, 64, 96), (50, 600, 1030)] {
                let a = random(m * k, &mut rng);
                let b = random(k * n, &mut rng);
                let bias = random(n, &mut rng);
                let c0 = random(m * n, &mut rng);
                let run = |tasks: usize| {
                    let mut c = c0.clone();
                    let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k).t());
                    product(
                        isa,
                        Product {
                            bias: Some(&bias),
                            prec,
                            ..plain(1.0, av, bv, 1.0)
                        },
                        MatMut::row_major(&mut c, m, n),
                        tasks,
                    );
                    c
                };
                let one = run(1);
                for tasks in [2, 3, 7, 16] {
                    assert!(
                        one.iter().zip(run(tasks)).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{} m{m} k{k} n{n}: {tasks} tasks differ from one",
                        isa.name()
                    );
                }
                // The same product into a column-major C: Cᵀ stored row-major.
                let mut ct = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        ct[j * m + i] = c0[i * n + j];
                    }
                }
                let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k).t());
                product(
                    isa,
                    Product {
                        bias: Some(&bias),
                        prec,
                        ..plain(1.0, av, bv, 1.0)
                    },
                    MatMut::row_major(&mut ct, n, m).t(),
                    3,
                );
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(
                            ct[j * m + i].to_bits(),
                            one[i * n + j].to_bits(),
                            "{} column-major C",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    /// The fused fc1 product gives the bits of the product followed by the
    /// GELU pass, on every path (the driver's in-tile GELU, matrixmultiply's
    /// pass after, bf16 where the CPU has it), ragged shapes included.
    #[test]
    fn gemm_bias_gelu_equals_product_then_gelu() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(29);
        let mut paths: Vec<(Isa, Precision)> = cpu::available().into_iter().map(|i| (i, Precision::F32)).collect();
        if bf16_available() {
            paths.push((cpu::detected(), Precision::Bf16));
        }
        for (isa, prec) in paths {
            for &(m, k, n) in &[(1, 1, 1), (13, 300, 37), (100, 64, 530), (25, 1024, 17)] {
                let x = random(m * k, &mut rng);
                let w = random(n * k, &mut rng);
                let bias = random(n, &mut rng);
                let (xv, wt) = (MatRef::row_major(&x, m, k), MatRef::row_major(&w, n, k).t());
                let mut pre = vec![f32::NAN; m * n];
                let mut act = vec![f32::NAN; m * n];
                let p = Product {
                    bias: Some(&bias),
                    gelu_to: Some((SendPtr(act.as_mut_ptr()), n)),
                    prec,
                    ..plain(1.0, xv, wt, 0.0)
                };
                product(isa, p, MatMut::row_major(&mut pre, m, n), 3);
                let mut want_pre = vec![0f32; m * n];
                let p = Product {
                    bias: Some(&bias),
                    prec,
                    ..plain(1.0, xv, wt, 0.0)
                };
                product(isa, p, MatMut::row_major(&mut want_pre, m, n), 1);
                let mut want_act = vec![0f32; m * n];
                cpu::with_isa(isa, || crate::gelu::forward(&mut want_act, &want_pre));
                let name = format!("{} {prec:?} m{m} k{k} n{n}", isa.name());
                assert!(
                    pre.iter().zip(&want_pre).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "pre {name}"
                );
                assert!(
                    act.iter().zip(&want_act).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "act {name}"
                );
            }
        }
        // The public entry on a column-major `pre` (GELU in a pass after).
        let (m, k, n) = (9, 40, 21);
        let x = random(m * k, &mut rng);
        let w = random(n * k, &mut rng);
        let bias = random(n, &mut rng);
        let (xv, wt) = (MatRef::row_major(&x, m, k), MatRef::row_major(&w, n, k).t());
        let mut pre_t = vec![0f32; m * n];
        let mut act = vec![0f32; m * n];
        gemm_bias_gelu(
            Precision::F32,
            xv,
            wt,
            &bias,
            MatMut::row_major(&mut pre_t, n, m).t(),
            &mut act,
        );
        for i in 0..m {
            for j in 0..n {
                let mut g = [0f32];
                crate::gelu::forward(&mut g, &[pre_t[j * m + i]]);
                assert_eq!(act[i * n + j].to_bits(), g[0].to_bits(), "column-major pre ({i}, {j})");
            }
        }
        // The public entry under a forced level: the tile GELU runs at that
        // level too, giving the bits of `gelu::forward` at the same level.
        for isa in cpu::available() {
            let (mut pre, mut act) = (vec![0f32; m * n], vec![0f32; m * n]);
            cpu::with_isa(isa, || {
                gemm_bias_gelu(
                    Precision::F32,
                    xv,
                    wt,
                    &bias,
                    MatMut::row_major(&mut pre, m, n),
                    &mut act,
                )
            });
            let mut want = vec![0f32; m * n];
            cpu::with_isa(isa, || crate::gelu::forward(&mut want, &pre));
            let same = act.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "tile GELU under with_isa({})", isa.name());
        }
    }

    /// `R + A·B + bias` on every path, against f64, and bit-identical for
    /// any split; NaN in C's old contents is ignored.
    #[test]
    fn gemm_bias_residual_adds_the_residual() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(31);
        for isa in cpu::available() {
            for &(m, k, n) in &[(1, 1, 1), (13, 300, 37), (100, 64, 530)] {
                let x = random(m * k, &mut rng);
                let w = random(n * k, &mut rng);
                let bias = random(n, &mut rng);
                let res = random(m * n, &mut rng);
                let (xv, wt) = (MatRef::row_major(&x, m, k), MatRef::row_major(&w, n, k).t());
                let run = |tasks: usize| {
                    let mut c = vec![f32::NAN; m * n];
                    let p = Product {
                        bias: Some(&bias),
                        residual: Some(MatRef::row_major(&res, m, n)),
                        ..plain(1.0, xv, wt, 0.0)
                    };
                    product(isa, p, MatMut::row_major(&mut c, m, n), tasks);
                    c
                };
                let c = run(1);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                        let want = dot + bias[j] as f64 + res[i * n + j] as f64;
                        let tol = 1e-5 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (c[i * n + j] as f64 - want).abs() <= tol * (1.0 + want.abs()),
                            "{} m{m} k{k} n{n} ({i}, {j}): {} vs {want}",
                            isa.name(),
                            c[i * n + j]
                        );
                    }
                }
                let split = run(5);
                assert!(
                    c.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} split",
                    isa.name()
                );
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
                    Precision::F32,
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

    /// The bf16 paths (AMX, or the driver's AVX512-BF16 kernel; skipped with a
    /// message where neither is available): exact on
    /// inputs that bf16 represents exactly, and within bf16 rounding otherwise
    /// (each input rounded to 8 significant bits: relative error ≤ 2^-8 per
    /// factor, so |error| ≤ 2^-7 · Σ_p |a||b| plus f32 accumulation).
    #[test]
    fn bf16_products() {
        if !bf16_available() {
            eprintln!("gemm bf16: skipping: this CPU has neither AMX-BF16 nor AVX512-BF16");
            return;
        }
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
                gemm_bias(
                    Precision::Bf16,
                    1.0,
                    av,
                    bv,
                    &bias,
                    0.0,
                    MatMut::row_major(&mut c, m, n),
                );
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
                gemm(Precision::Bf16, 0.5, av, bv, 1.0, MatMut::row_major(&mut c, m, n));
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
    }

    /// The kernel a benchmark line names is the one that can run: one exists
    /// exactly where bf16 products are available, and none when the
    /// instruction set is lowered below AVX-512 (those products run in f32).
    #[test]
    fn bf16_kernel_names_what_runs() {
        assert_eq!(bf16_kernel().is_some(), bf16_available());
        // AMX ignores the instruction-set override; the other bf16 kernel does not.
        if bf16_kernel() != Some("amx") {
            assert_eq!(cpu::with_isa(Isa::Avx2, bf16_kernel), None);
        }
    }

    /// Both bf16 kernels of the driver (AMX tiles and AVX512-BF16, each where
    /// the CPU has it) against an f64 product of the bf16-rounded inputs,
    /// across every edge: k past one and several k blocks and not a multiple
    /// of a tile's 32, ragged tiles, all four transposes, and every epilogue
    /// (β = 0 over NaN, β = 1, a bias, α ≠ 1, a residual, the tile GELU).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_kernels_match_f64_on_every_edge() {
        use super::bf16::{from_bf16, to_bf16};
        type Run = unsafe fn(&Product, *mut f32, usize, usize, usize);
        let mut kernels: Vec<(&str, Run)> = Vec::new();
        if amx::available() {
            kernels.push(("amx", driver::run::<amx::Amx>));
        }
        if avx512_bf16() {
            kernels.push(("avx512bf16", driver::run::<kernel::Avx512Bf16>));
        }
        if kernels.is_empty() {
            eprintln!("bf16 kernels: skipping: this CPU has neither AMX-BF16 nor AVX512-BF16");
            return;
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(31);
        let round = |v: &[f32]| v.iter().map(|&x| from_bf16(to_bf16(x))).collect::<Vec<_>>();
        let shapes = [
            (1, 1, 1),
            (33, 40, 31),
            (64, 1100, 64),
            (70, 513, 97),
            (5, 300, 600),
            (96, 64, 32),
        ];
        for (name, run) in kernels {
            for (t, &(m, k, n)) in shapes.iter().enumerate() {
                let (ta, tb) = (t % 2 == 1, t % 4 >= 2);
                let (a_data, b_data) = (random(m * k, &mut rng), random(k * n, &mut rng));
                let (bias, resid) = (random(n, &mut rng), random(m * n, &mut rng));
                let a = MatRef::stored(&a_data, m, k, ta);
                let b = MatRef::stored(&b_data, k, n, tb);
                let (ar, br) = (round(&a_data), round(&b_data));
                let (ar, br) = (MatRef::stored(&ar, m, k, ta), MatRef::stored(&br, k, n, tb));
                // (α, β, bias, residual)
                for &(alpha, beta, with_bias, with_res) in &[
                    (1.0f32, 0.0f32, false, false),
                    (1.0, 0.0, true, false),
                    (1.0, 1.0, false, false),
                    (1.0, 1.0, true, false),
                    (0.5, 0.5, true, false),
                    (1.0, 0.0, true, true),
                    (1.0, 0.0, false, true),
                ] {
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        random(m * n, &mut rng)
                    };
                    let mut got = c0.clone();
                    let mut act = vec![0f32; m * n];
                    let p = Product {
                        bias: with_bias.then_some(&bias[..]),
                        residual: with_res.then(|| MatRef::row_major(&resid, m, n)),
                        gelu_to: (alpha == 1.0 && beta == 0.0).then_some((SendPtr(act.as_mut_ptr()), n)),
                        prec: Precision::Bf16,
                        ..plain(alpha, a, b, beta)
                    };
                    // SAFETY: the kernel's CPU features were detected above; C
                    // and the GELU output are m × n, contiguous, owned here.
                    unsafe { run(&p, got.as_mut_ptr(), n, 1, 3) };
                    let base = if beta == 0.0 { vec![0f32; m * n] } else { c0.clone() };
                    for (idx, w) in expected(alpha, &ar, &br, beta, &base, |i, j| i * n + j) {
                        let (i, j) = (idx / n, idx % n);
                        let w = w
                            + if with_bias { bias[j] as f64 } else { 0.0 }
                            + if with_res { resid[idx] as f64 } else { 0.0 };
                        let scale: f64 = (0..k).map(|q| (ar.at(i, q) * br.at(q, j)).abs() as f64).sum();
                        let tol = 1e-6 * (k as f64).sqrt() * (scale + 1.0) + 1e-5 * (1.0 + w.abs());
                        assert!(
                            (got[idx] as f64 - w).abs() <= tol,
                            "{name} m{m} k{k} n{n} ta{ta} tb{tb} α{alpha} β{beta} bias {with_bias} \
                             residual {with_res}: [{idx}] {} vs {w}",
                            got[idx]
                        );
                    }
                    if p.gelu_to.is_some() {
                        let mut g = vec![0f32; m * n];
                        crate::gelu::forward(&mut g, &got);
                        assert!(
                            g.iter().zip(&act).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{name} m{m} k{k} n{n}: the tile GELU differs from the GELU of C"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [1.0f32, 0.0, 0.0, 1.0];
        let mut c = [f32::NAN; 4];
        gemm(
            Precision::F32,
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
            Precision::F32,
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
            Precision::F32,
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
                        Precision::F32,
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
            let layout = Batch {
                count: batch,
                a_stride: m * k,
                b_stride,
                c_stride: m * n,
            };
            gemm_batched(
                Precision::F32,
                layout,
                1.0,
                MatRef::new(&a, m, k, k, 1),
                // B_i stored (N, K): transposed view.
                MatRef::new(&b, k, n, 1, k),
                1.0,
                MatMut::new(&mut c, m, n, n, 1),
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
