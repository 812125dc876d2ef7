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
    /// A file could not be read or written. The cause is in the message
    /// and deliberately not a `source`: a report that prints the chain of
    /// causes (anyhow's `{:#}`) would say it twice.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    /// A checkpoint that cannot be used (corrupt, truncated, another model).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// The loss or the gradients' norm became NaN or infinite; training stops
    /// before updating anything. `what` names which ("loss", "gradient norm").
    #[error("{what} is not finite ({value}) at step {step}; stopping before the update")]
    NonFinite { step: u64, what: &'static str, value: f32 },
    /// The ranks of a data-parallel run disagree (configuration, data,
    /// state). Every rank gets this same error at the same point, so every
    /// rank can stop cleanly; rank 0 alone needs to report it.
    #[error("{0}")]
    Ranks(String),
    /// A training run stopped on `cause`; `kept` says what of the run is on
    /// disk (its intact checkpoint, or that nothing was kept).
    #[error("{cause}; {kept}")]
    RunFailed { cause: Box<MimError>, kept: String },
}

impl MimError {
    /// The error itself, or what a [`MimError::RunFailed`] stopped on.
    pub fn root(&self) -> &MimError {
        match self {
            MimError::RunFailed { cause, .. } => cause.root(),
            e => e,
        }
    }
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
        cause: source,
    }
}

/// A checkpoint at `path` that cannot be used, and why.
pub(crate) fn ckpt_err(path: &Path, msg: impl Into<String>) -> MimError {
    MimError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}
