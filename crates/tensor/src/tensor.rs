//! The [`Tensor`] type: f32, row-major, contiguous, any rank, cheap to clone;
//! the [`Backward`] record of the operation that made a tensor, and the
//! gradient buffers ([`Grads`]) such a record writes during a backward pass
//! (the pass itself is in `backprop.rs`).

use crate::error::{Result, TensorError, shape_err};
use crate::shape::numel;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How to differentiate one recorded operation.
pub(crate) trait Backward: Send + Sync {
    /// The operation's name, for error messages.
    fn name(&self) -> &'static str;
    /// The tensors this operation read (those requiring gradients get some).
    fn inputs(&self) -> Vec<&Tensor>;
    /// Given the gradient `dout` of the operation's output `out`, add the
    /// gradients of its inputs into `grads`.
    fn backward(&self, out: &Tensor, dout: Vec<f32>, grads: &mut Grads) -> Result<()>;
}

/// A buffer from [`Grads::take_out`] as a kernel's output.
pub(crate) fn grad_out(b: &mut Option<(Vec<f32>, bool)>) -> Option<tessera_kernels::GradOut<'_>> {
    b.as_mut().map(|(v, add)| tessera_kernels::GradOut {
        data: v.as_mut_slice(),
        add: *add,
    })
}

/// Gradients of the nodes in flight during one backward pass.
pub(crate) struct Grads {
    /// Written by the backward pass itself: the output's gradient first.
    pub(crate) map: HashMap<TensorId, Vec<f32>>,
}

impl Grads {
    /// The gradient buffer of `t` to accumulate into (zeros if it has none
    /// yet), or `None` if `t` does not require a gradient. Must be returned
    /// with [`Grads::put`].
    pub(crate) fn take(&mut self, t: &Tensor) -> Option<Vec<f32>> {
        if !t.requires_grad() {
            return None;
        }
        Some(
            self.map
                .remove(&t.id())
                .unwrap_or_else(|| crate::buffers::zeroed(t.numel())),
        )
    }

    /// The gradient buffer of `t` for a kernel that can either overwrite or
    /// accumulate: an existing gradient (accumulate), or a fresh buffer from
    /// the pool whose contents the kernel must overwrite — no zeroing pass.
    /// `None` if `t` does not require a gradient. Return it with [`Grads::put`].
    pub(crate) fn take_out(&mut self, t: &Tensor) -> Option<(Vec<f32>, bool)> {
        if !t.requires_grad() {
            return None;
        }
        Some(match self.map.remove(&t.id()) {
            Some(g) => (g, true),
            None => (crate::buffers::uninit(t.numel()), false),
        })
    }

    /// Returns a buffer from [`Grads::take`] (adding it to any gradient that
    /// arrived for `t` in the meantime, as when an op reads `t` twice).
    pub(crate) fn put(&mut self, t: &Tensor, g: Option<Vec<f32>>) {
        if let Some(g) = g {
            self.add(t, g);
        }
    }

    /// Adds a complete gradient for `t`, moving the buffer in when `t` has none yet.
    pub(crate) fn add(&mut self, t: &Tensor, g: Vec<f32>) {
        if !t.requires_grad() {
            return;
        }
        debug_assert_eq!(g.len(), t.numel(), "gradient size for {:?}", t.shape());
        match self.map.get_mut(&t.id()) {
            Some(existing) => {
                tessera_kernels::par::add_assign(existing, &g);
                crate::buffers::recycle(g);
            }
            None => {
                self.map.insert(t.id(), g);
            }
        }
    }

    /// True if `t` should receive a gradient.
    pub(crate) fn wants(&self, t: &Tensor) -> bool {
        t.requires_grad()
    }
}

/// A unique identity per tensor node (not per storage: a reshaped view is a
/// different node over the same values). Gradients are keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The values behind one or more tensor nodes. Activations are immutable and
/// read without locking; parameters (and other variables) sit behind a
/// read-write lock so an optimizer can update them in place.
pub(crate) enum Storage {
    Const(Vec<f32>),
    Var(RwLock<Vec<f32>>),
}

impl Drop for Storage {
    /// Freed values go back to the buffer pool for the next step.
    fn drop(&mut self) {
        let v = match self {
            Storage::Const(v) => std::mem::take(v),
            Storage::Var(lock) => std::mem::take(lock.get_mut().unwrap_or_else(|e| e.into_inner())),
        };
        crate::buffers::recycle(v);
    }
}

pub(crate) struct Node {
    pub(crate) id: TensorId,
    pub(crate) shape: Vec<usize>,
    pub(crate) storage: Arc<Storage>,
    /// How this tensor was computed, if it was recorded for backward. Taken
    /// (and so freed, with everything it saved) when backward passes through.
    pub(crate) grad_fn: Mutex<Option<Box<dyn Backward>>>,
    pub(crate) requires_grad: bool,
    pub(crate) is_leaf: bool,
}

impl Drop for Node {
    /// Dropping the last handle on a long graph would otherwise recurse once
    /// per node (each node owns its inputs through its `grad_fn`) and could
    /// overflow the stack. Instead, unlink the graph iteratively: take the
    /// `grad_fn` of every input this node alone keeps alive.
    fn drop(&mut self) {
        let Some(f) = self.grad_fn.get_mut().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut stack: Vec<Tensor> = f.inputs().into_iter().cloned().collect();
        drop(f);
        while let Some(t) = stack.pop() {
            if Arc::strong_count(&t.0) == 1 {
                let taken = t.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(f) = taken {
                    stack.extend(f.inputs().into_iter().cloned());
                }
            }
        }
    }
}

/// An n-dimensional array of f32 in row-major order, with reverse-mode
/// automatic differentiation.
///
/// Cloning is cheap (a reference count). A tensor computed from inputs that
/// require gradients, while gradients are enabled (see [`no_grad`]), records
/// the operation for [`Tensor::backward`].
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Node>);

/// Read access to a tensor's values; dereferences to `[f32]`.
pub enum DataRef<'a> {
    Plain(&'a [f32]),
    Locked(RwLockReadGuard<'a, Vec<f32>>),
}

impl Deref for DataRef<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            DataRef::Plain(s) => s,
            DataRef::Locked(g) => g,
        }
    }
}

/// Write access to a variable's values; dereferences to `[f32]`.
pub struct DataMut<'a>(RwLockWriteGuard<'a, Vec<f32>>);

impl Deref for DataMut<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for DataMut<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether operations on this thread record graphs for backward.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` with graph recording off (inference, evaluation, optimizer
/// arithmetic), restoring the previous mode afterwards, even on panic.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Turns graph recording off on this thread until dropped.
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

impl Tensor {
    fn build(data: Vec<f32>, shape: Vec<usize>, var: bool, requires_grad: bool) -> Tensor {
        debug_assert_eq!(data.len(), numel(&shape));
        let storage = if var {
            Storage::Var(RwLock::new(data))
        } else {
            Storage::Const(data)
        };
        Tensor(Arc::new(Node {
            id: TensorId::fresh(),
            shape,
            storage: Arc::new(storage),
            grad_fn: Mutex::new(None),
            requires_grad,
            is_leaf: true,
        }))
    }

    fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
        if len != numel(shape) {
            return Err(shape_err(
                op,
                format!("{len} values do not fill shape {shape:?} ({} elements)", numel(shape)),
            ));
        }
        Ok(())
    }

    /// A constant tensor owning `data`, laid out row-major in `shape`.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Self::check_len("Tensor::new", data.len(), shape)?;
        Ok(Self::build(data, shape.to_vec(), false, false))
    }

    /// A constant tensor copied from a slice.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Self::new(data.to_vec(), shape)
    }

    /// A trainable parameter: a leaf that requires gradients and that
    /// optimizers update in place.
    pub fn param(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Self::check_len("Tensor::param", data.len(), shape)?;
        Ok(Self::build(data, shape.to_vec(), true, true))
    }

    /// A mutable tensor that does not require gradients (a frozen parameter
    /// such as a fixed positional embedding, or a buffer).
    pub fn var(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Self::check_len("Tensor::var", data.len(), shape)?;
        Ok(Self::build(data, shape.to_vec(), true, false))
    }

    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Self::build(crate::buffers::zeroed(numel(shape)), shape.to_vec(), false, false)
    }

    /// All ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Self::full(shape, 1.0)
    }

    /// Every element `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Self::build(vec![value; numel(shape)], shape.to_vec(), false, false)
    }

    /// A rank-0 tensor.
    pub fn scalar(value: f32) -> Tensor {
        Self::build(vec![value], vec![], false, false)
    }

    /// The result of an operation. If gradients are enabled and any input
    /// requires them, `grad_fn()` is called to record how to differentiate it.
    pub(crate) fn from_op<F>(data: Vec<f32>, shape: Vec<usize>, inputs: &[&Tensor], grad_fn: F) -> Tensor
    where
        F: FnOnce() -> Box<dyn Backward>,
    {
        debug_assert_eq!(data.len(), numel(&shape));
        let track = is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        Tensor(Arc::new(Node {
            id: TensorId::fresh(),
            shape,
            storage: Arc::new(Storage::Const(data)),
            grad_fn: Mutex::new(if track { Some(grad_fn()) } else { None }),
            requires_grad: track,
            is_leaf: !track,
        }))
    }

    /// A new node over the same storage with another shape of equal size
    /// (a reshape is free).
    pub(crate) fn view_as<F>(&self, shape: Vec<usize>, grad_fn: F) -> Tensor
    where
        F: FnOnce() -> Box<dyn Backward>,
    {
        debug_assert_eq!(numel(&shape), self.numel());
        let track = is_grad_enabled() && self.requires_grad();
        Tensor(Arc::new(Node {
            id: TensorId::fresh(),
            shape,
            storage: self.0.storage.clone(),
            grad_fn: Mutex::new(if track { Some(grad_fn()) } else { None }),
            requires_grad: track,
            is_leaf: !track,
        }))
    }

    /// This tensor's identity (gradients are stored under it).
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        let a = crate::shape::axis("Tensor::dim", axis, self.rank())?;
        Ok(self.0.shape[a])
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    /// Whether gradients flow to (a leaf) or through (an operation) this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// True for tensors not produced by a recorded operation (inputs, parameters).
    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }

    /// True if the values can be written in place ([`Tensor::param`], [`Tensor::var`]).
    pub fn is_mutable(&self) -> bool {
        matches!(*self.0.storage, Storage::Var(_))
    }

    /// The values, in row-major order.
    pub fn data(&self) -> DataRef<'_> {
        match &*self.0.storage {
            Storage::Const(v) => DataRef::Plain(v),
            Storage::Var(lock) => DataRef::Locked(lock.read().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Write access to a mutable tensor's values (optimizers, initialisation,
    /// loading checkpoints). Views share the same values.
    pub fn data_mut(&self) -> Result<DataMut<'_>> {
        match &*self.0.storage {
            Storage::Const(_) => Err(TensorError::Immutable {
                op: "Tensor::data_mut",
                shape: self.shape().to_vec(),
            }),
            Storage::Var(lock) => Ok(DataMut(lock.write().unwrap_or_else(|e| e.into_inner()))),
        }
    }

    /// Overwrites a mutable tensor's values.
    pub fn set_data(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            return Err(shape_err(
                "Tensor::set_data",
                format!("{} values for a tensor of shape {:?}", values.len(), self.shape()),
            ));
        }
        self.data_mut()?.copy_from_slice(values);
        Ok(())
    }

    /// A copy of the values.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(shape_err(
                "Tensor::item",
                format!("tensor of shape {:?} is not a single value", self.shape()),
            ));
        }
        Ok(self.data()[0])
    }

    /// The same values, cut off from the graph: no gradient flows through.
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(Node {
            id: TensorId::fresh(),
            shape: self.0.shape.clone(),
            storage: self.0.storage.clone(),
            grad_fn: Mutex::new(None),
            requires_grad: false,
            is_leaf: true,
        }))
    }

    /// A new trainable parameter initialised with a copy of these values.
    pub fn to_param(&self) -> Tensor {
        Self::build(self.to_vec(), self.shape().to_vec(), true, true)
    }

    /// True if both tensors share the same values in memory.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.data();
        let shown: Vec<f32> = data.iter().take(8).copied().collect();
        write!(
            f,
            "Tensor{:?}{} {:?}",
            self.shape(),
            if self.requires_grad() { " (grad)" } else { "" },
            shown
        )?;
        if data.len() > 8 {
            write!(f, " … ({} values)", data.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_sizes() {
        assert!(Tensor::new(vec![1.0; 6], &[2, 3]).is_ok());
        let e = Tensor::new(vec![1.0; 5], &[2, 3]).unwrap_err();
        assert!(e.to_string().contains("[2, 3]"), "{e}");
        assert_eq!(Tensor::scalar(2.5).item().unwrap(), 2.5);
        assert!(Tensor::zeros(&[2]).item().is_err());
    }

    #[test]
    fn only_variables_can_be_written() {
        let c = Tensor::zeros(&[2]);
        assert!(c.data_mut().is_err());
        let p = Tensor::param(vec![0.0; 2], &[2]).unwrap();
        p.set_data(&[1.0, 2.0]).unwrap();
        assert_eq!(p.to_vec(), vec![1.0, 2.0]);
        assert!(p.set_data(&[1.0]).is_err());
    }

    #[test]
    fn no_grad_restores_previous_mode() {
        assert!(is_grad_enabled());
        no_grad(|| {
            assert!(!is_grad_enabled());
            no_grad(|| assert!(!is_grad_enabled()));
            assert!(!is_grad_enabled());
        });
        assert!(is_grad_enabled());
    }

    #[test]
    fn ids_are_unique_and_detach_shares_values() {
        let a = Tensor::param(vec![1.0, 2.0], &[2]).unwrap();
        let b = a.detach();
        assert_ne!(a.id(), b.id());
        assert!(a.same_storage(&b));
        assert!(!b.requires_grad());
    }
}
