//! The arithmetic of the engine's matrix products: f32 (the default), or bf16
//! mixed precision — inputs rounded to bfloat16, products accumulated in f32,
//! like PyTorch's CPU autocast.
//!
//! The precision is chosen for a stretch of work on one thread with
//! [`with_matmul_precision`] (as [`crate::no_grad`] chooses recording), read by
//! every op that runs a product when it runs its forward, kept in the op's
//! backward, and passed down to the kernels as a parameter: the kernels hold
//! no state of their own. The initial value comes from `TESSERA_MATMUL=bf16`.

use std::cell::Cell;
pub use tessera_kernels::gemm::Precision;

thread_local! {
    static MATMUL: Cell<Precision> = Cell::new(initial());
}

fn initial() -> Precision {
    match std::env::var("TESSERA_MATMUL").ok().as_deref().map(str::trim) {
        Some("bf16") => Precision::Bf16.available(),
        _ => Precision::F32,
    }
}

/// The precision of products that ops started on this thread use now.
pub fn matmul_precision() -> Precision {
    MATMUL.with(|c| c.get())
}

/// Runs `f` with this thread's products in `p` (bf16 falls back to f32 where
/// the CPU has no bf16 products), then restores the previous precision, also
/// if `f` panics.
pub fn with_matmul_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            MATMUL.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(MATMUL.with(|c| c.replace(p.available())));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        let outer = matmul_precision();
        with_matmul_precision(Precision::F32, || {
            assert_eq!(matmul_precision(), Precision::F32);
            with_matmul_precision(Precision::Bf16, || {
                assert_eq!(matmul_precision(), Precision::Bf16.available());
            });
            assert_eq!(matmul_precision(), Precision::F32);
        });
        assert_eq!(matmul_precision(), outer);
    }
}
