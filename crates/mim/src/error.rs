//! Errors of the MIM library. Each names what it is about: the file, the key,
//! the option, the shapes.

use std::path::{Path, PathBuf};
use tessera_tensor::TensorError;
use thiserror::Error;

/// Anything that can go wrong while building, training, saving or loading a model.
#[derive(Debug, Error)]
pub enum MimError {
    /// An invalid configuration value (the message names the option).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor operation failed (a bug, or inputs of the wrong shape).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// Input data that does not fit the model.
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint that cannot be used (corrupt, truncated, another model).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// The loss or the gradients' norm became NaN or infinite; training stops
    /// before updating anything. `what` names which ("loss", "gradient norm").
    #[error(
        "{what} is not finite ({value}) at step {step}; stopping before the update (the last checkpoint is intact)"
    )]
    NonFinite { step: u64, what: &'static str, value: f32 },
    /// The ranks of a data-parallel run disagree (configuration, data,
    /// state). Every rank gets this same error at the same point, so every
    /// rank can stop cleanly; rank 0 alone needs to report it.
    #[error("{0}")]
    Ranks(String),
}

/// Result of a MIM operation.
pub type Result<T> = std::result::Result<T, MimError>;

pub(crate) fn config_err(msg: impl Into<String>) -> MimError {
    MimError::Config(msg.into())
}

/// An I/O error about `path` (for `map_err(|e| io_err(path, e))`).
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> MimError {
    MimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint at `path` that cannot be used, and why.
pub(crate) fn ckpt_err(path: &Path, msg: impl Into<String>) -> MimError {
    MimError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}
