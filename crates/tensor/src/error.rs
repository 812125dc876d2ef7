//! Errors of tensor operations.

use thiserror::Error;

/// What can go wrong in a tensor operation. Every message names the operation
/// and, for shape problems, the shapes involved.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    /// Shapes that do not fit the operation.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// An argument with a bad value (an index out of range, a probability outside [0, 1)...).
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    /// A backward pass that cannot run.
    #[error("backward: {0}")]
    Backward(String),
    /// An in-place write to a tensor whose storage is immutable.
    #[error("{op}: tensor {shape:?} is immutable; only parameters and `Tensor::var` tensors can be written in place")]
    Immutable { op: &'static str, shape: Vec<usize> },
}

/// Result of a tensor operation.
pub type Result<T> = std::result::Result<T, TensorError>;

/// A [`TensorError::Shape`] with a formatted message.
pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> TensorError {
    TensorError::Shape { op, msg: msg.into() }
}

/// A [`TensorError::Invalid`] with a formatted message.
pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> TensorError {
    TensorError::Invalid { op, msg: msg.into() }
}
