//! # tessera-tensor
//!
//! A small tensor library with reverse-mode automatic differentiation, built on
//! the kernels of `tessera-kernels`.
//!
//! * [`Tensor`]: f32, row-major, contiguous, any rank, cheap to clone.
//! * Graphs are recorded only when an input requires a gradient and recording is
//!   on ([`no_grad`] turns it off). [`Tensor::backward`] returns a [`GradStore`]
//!   with the gradients of the leaves; it frees the graph as it goes.
//! * Operations are coarse and fused where it matters (`linear`, `layer_norm`,
//!   `gelu`, `attention`, `patch_embed`, the losses): one node, one kernel each.
//! * Parameters ([`Tensor::param`]) are updated in place by the optimizers in
//!   [`optim`].
//!
//! ```
//! use tessera_tensor::{Tensor, optim::{AdamW, AdamWConfig, Optimizer, ParamGroup}};
//!
//! let w = Tensor::param(vec![0.5, -0.5], &[1, 2])?;
//! let x = Tensor::new(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])?;
//! let y = Tensor::new(vec![1.0, 2.0], &[2, 1])?;
//! let mut opt = AdamW::new(vec![ParamGroup::new(vec![w.clone()], 0.0)], AdamWConfig::default());
//! let loss = x.linear(&w, None)?.mse_loss(&y, None)?;
//! let grads = loss.backward()?;
//! opt.step(&grads)?;
//! # Ok::<(), tessera_tensor::TensorError>(())
//! ```

#![forbid(unsafe_code)]

mod backprop;
pub mod buffers;
mod error;
pub mod gradcheck;
pub mod init;
mod ops;
pub mod optim;
pub mod precision;
pub mod profile;
pub mod shape;
mod tensor;

pub use backprop::GradStore;
pub use error::{Result, TensorError};
pub use ops::Unary;
pub use precision::{Precision, matmul_precision, with_matmul_precision};
pub use tensor::{DataMut, DataRef, NoGradGuard, Tensor, TensorId, is_grad_enabled, no_grad};
