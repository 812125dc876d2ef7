//! # tessera-kernels
//!
//! The numeric kernels under Tessera's tensor engine: pure functions over `&[f32]`
//! slices and explicit dimensions. They know nothing about tensors, graphs or models.
//!
//! Every module follows the same layout, so one can be read like the others:
//!
//! * a dims legend at the top (`B` batch, `L` patches, `N` tokens, `D` width,
//!   `H` heads, `Dh` head width, ...) and a shape comment on every buffer;
//! * a `reference` submodule: the plain scalar version, written for clarity.
//!   It is the test oracle and the fallback, and is always compiled;
//! * public entry points that check lengths and dispatch to the fast path
//!   (rayon over independent rows, heads or batches; SIMD where it pays).
//!
//! Each kernel direction has one public entry. Argument order follows llm.c:
//! `forward(out, saved.., inp, params.., dims)` and
//! `backward(dinp, dparams.., dout, saved.., inp, params.., dims)`, with
//! three additions: the precision of the products, `prec`, comes first in
//! the kernels that have products; scratch buffers come right after the
//! outputs (`patch::embed_forward(prec, out, cols, img, ..)`); and a backward
//! that writes several gradients takes them as one struct in the `dinp`
//! place (`layernorm::LnGrads`, `linear::LinearGrads`,
//! `attention::AttnGrads`, `patch::EmbedGrads`). Sizes travel in a dims
//! struct where a kernel has more than two (`LnDims`, `LinearDims`,
//! `AttnDims`, `PatchDims`, `loss::Regression`, ...). Two families keep the
//! order of their field: [`gemm`] BLAS's (`α, A, B, β, C`), and
//! [`adamw`] an optimizer's (`param, grad, state.., step`).
//!
//! Every gradient buffer is a [`GradOut`]: a backward either overwrites it (a
//! fresh buffer, no zeroing needed) or accumulates into it (`+=`, a tensor
//! that already received a gradient from another consumer), as its `add`
//! says.
//!
//! The instruction set is chosen once per call, at the entry, from
//! [`cpu::isa`] (forced for a closure with [`cpu::with_isa`], as the tests
//! and benchmarks do), and handed down to everything the call runs.
//!
//! `unsafe` lives only here, in this crate: SIMD intrinsics behind runtime
//! detection ([`cpu`]), and the GEMM driver's raw tile pointers; every block
//! says why it is sound. The crates above forbid it.
//!
//! Results never depend on the number of threads: reductions are split into
//! fixed-size chunks whose partial sums are combined in a fixed order.

pub mod adamw;
pub mod attention;
pub mod cpu;
pub mod gelu;
pub mod gemm;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod math;
pub mod par;
pub mod patch;
pub mod peak;
pub mod relpos;
pub mod softmax;
pub mod window;

#[cfg(test)]
mod testutil;

pub use gemm::{MatMut, MatRef};

/// A gradient buffer handed to a backward kernel: either overwritten (its old
/// contents are ignored, so a fresh buffer needs no zeroing) or accumulated
/// into (a tensor that already received a gradient from another consumer).
pub struct GradOut<'a> {
    pub data: &'a mut [f32],
    /// `true`: `data += gradient`; `false`: `data = gradient`.
    pub add: bool,
}

impl<'a> GradOut<'a> {
    /// `data += gradient`.
    pub fn add(data: &'a mut [f32]) -> Self {
        GradOut { data, add: true }
    }
    /// `data = gradient`.
    pub fn overwrite(data: &'a mut [f32]) -> Self {
        GradOut { data, add: false }
    }
    /// β of a GEMM writing this gradient.
    pub fn beta(&self) -> f32 {
        if self.add { 1.0 } else { 0.0 }
    }
}
