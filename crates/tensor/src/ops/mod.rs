//! Operations on tensors. Each file keeps an operation's forward and its
//! backward side by side: the public method computes the output with the
//! kernels of `tessera-kernels` and records a small struct implementing
//! `Backward`, whose `backward` is written right below it.

mod elementwise;
mod layout;
mod linear;
mod loss;
mod nn;
mod reduce;

pub use elementwise::Unary;
