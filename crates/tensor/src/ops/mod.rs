//! Operations on tensors. Each file keeps an operation's forward and its
//! backward in the same place: the public method computes the output with the
//! kernels of `tessera-kernels` and records a small struct implementing
//! `Backward`, named after the op (`GeluBackward` belongs to `Tensor::gelu`)
//! and kept in the same file; search for that name to go from one to the
//! other.

mod elementwise;
mod layout;
mod linear;
mod loss;
mod nn;
mod reduce;

pub use elementwise::Unary;
