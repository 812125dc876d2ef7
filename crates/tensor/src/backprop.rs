//! Reverse-mode differentiation: the graph walk and where gradients live.
//!
//! Every recorded operation stores a [`Backward`] value (defined beside
//! [`Tensor`], which holds it) with its inputs and
//! whatever it saved (LayerNorm's `mean`/`rstd`, attention's log-sum-exp).
//! [`Tensor::backward`] orders the graph topologically, then visits it from the
//! output back to the leaves: each node's gradient is handed to its `Backward`,
//! which adds its inputs' gradients. Gradients live outside the nodes, in a
//! map keyed by [`TensorId`]; the leaves' gradients end up in a [`GradStore`].
//!
//! Passing through a node *takes* its `Backward` (and drops it, with what it
//! saved) and drops the node's gradient, so memory falls during the backward
//! and a training loop does not keep graphs alive. Calling backward twice
//! through the same graph is an error, as in PyTorch.

use crate::error::{Result, TensorError};
use crate::tensor::{Grads, Tensor, TensorId};
use std::collections::{HashMap, HashSet};

/// The gradients of the leaves (parameters) after a backward pass.
#[derive(Default, Debug, Clone)]
pub struct GradStore {
    map: HashMap<TensorId, Vec<f32>>,
}

impl Drop for GradStore {
    /// Gradient buffers go back to the pool for the next backward pass.
    fn drop(&mut self) {
        for (_, g) in self.map.drain() {
            crate::buffers::recycle(g);
        }
    }
}

impl GradStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gradient of `t`, if one was computed.
    pub fn get(&self, t: &Tensor) -> Option<&[f32]> {
        self.map.get(&t.id()).map(|v| v.as_slice())
    }

    /// Mutable access to the gradient of `t`.
    pub fn get_mut(&mut self, t: &Tensor) -> Option<&mut [f32]> {
        self.map.get_mut(&t.id()).map(|v| v.as_mut_slice())
    }

    /// The gradient of `t` as a constant tensor of `t`'s shape.
    pub fn get_tensor(&self, t: &Tensor) -> Option<Tensor> {
        self.get(t)
            .map(|g| Tensor::from_slice(g, t.shape()).expect("gradient has its tensor's size"))
    }

    /// Sets the gradient of `t`, checking its size.
    pub fn insert(&mut self, t: &Tensor, grad: Vec<f32>) -> Result<()> {
        if grad.len() != t.numel() {
            return Err(crate::error::shape_err(
                "GradStore::insert",
                format!("{} values for a tensor of shape {:?}", grad.len(), t.shape()),
            ));
        }
        self.map.insert(t.id(), grad);
        Ok(())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Vec<f32>> {
        self.map.remove(&t.id())
    }

    /// Number of tensors with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no gradient is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every gradient.
    pub fn clear(&mut self) {
        for (_, g) in self.map.drain() {
            crate::buffers::recycle(g);
        }
    }

    /// Multiplies every gradient by `s` (averaging accumulated micro-batches).
    pub fn scale(&mut self, s: f32) {
        for g in self.map.values_mut() {
            g.iter_mut().for_each(|v| *v *= s);
        }
    }

    fn accumulate(&mut self, id: TensorId, g: Vec<f32>) {
        match self.map.get_mut(&id) {
            Some(existing) => {
                existing.iter_mut().zip(&g).for_each(|(e, v)| *e += v);
                crate::buffers::recycle(g);
            }
            None => {
                self.map.insert(id, g);
            }
        }
    }
}

impl Tensor {
    /// Back-propagates from this one-element tensor (a loss) and returns the
    /// gradients of every leaf that requires one.
    pub fn backward(&self) -> Result<GradStore> {
        let mut store = GradStore::new();
        self.backward_into(&mut store)?;
        Ok(store)
    }

    /// Like [`Tensor::backward`], adding into an existing store (gradient
    /// accumulation over micro-batches).
    pub fn backward_into(&self, store: &mut GradStore) -> Result<()> {
        self.backward_into_with(store, &mut |_, _| {})
    }

    /// Back-propagates a given output gradient `dout` (of this tensor's size).
    pub fn backward_from(&self, dout: Vec<f32>, store: &mut GradStore) -> Result<()> {
        self.backward_from_with(dout, store, &mut |_, _| {})
    }

    /// Like [`Tensor::backward_into`], calling `on_leaf(leaf, store)` as soon
    /// as a leaf's gradient in `store` is complete for this pass (every
    /// operation that read the leaf has been differentiated), while the rest
    /// of the graph still runs. Data-parallel training starts summing a
    /// bucket of gradients over processes from here.
    pub fn backward_into_with(
        &self,
        store: &mut GradStore,
        on_leaf: &mut dyn FnMut(&Tensor, &GradStore),
    ) -> Result<()> {
        if self.numel() != 1 {
            return Err(TensorError::Backward(format!(
                "backward() starts from a single value, this tensor has shape {:?}; use backward_from",
                self.shape()
            )));
        }
        self.backward_from_with(vec![1.0], store, on_leaf)
    }

    fn backward_from_with(
        &self,
        dout: Vec<f32>,
        store: &mut GradStore,
        on_leaf: &mut dyn FnMut(&Tensor, &GradStore),
    ) -> Result<()> {
        if dout.len() != self.numel() {
            return Err(TensorError::Backward(format!(
                "output gradient has {} values, the tensor has shape {:?}",
                dout.len(),
                self.shape()
            )));
        }
        if !self.requires_grad() {
            return Err(TensorError::Backward(
                "this tensor does not require a gradient (no parameter was involved, or it was computed under no_grad)"
                    .into(),
            ));
        }
        let order = topological_order(self);
        let mut grads = Grads { map: HashMap::new() };
        grads.map.insert(self.id(), dout);
        // Outputs before inputs; each node is dropped right after its visit.
        for node in order.into_iter().rev() {
            let Some(dout) = grads.map.remove(&node.id()) else {
                continue;
            };
            let grad_fn = node.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()).take();
            match grad_fn {
                Some(f) => {
                    let _timer = crate::profile::scope(f.name(), "backward");
                    f.backward(&node, dout, &mut grads)
                }
                .map_err(|e| match e {
                    TensorError::Backward(m) => TensorError::Backward(format!("{}: {m}", f.name())),
                    other => TensorError::Backward(format!("{}: {other}", f.name())),
                })?,
                None if node.is_leaf() => {
                    // In reverse topological order every reader of the leaf
                    // came before it: its gradient is now complete.
                    store.accumulate(node.id(), dout);
                    on_leaf(&node, store);
                }
                None => {
                    return Err(TensorError::Backward(format!(
                        "the graph through a tensor of shape {:?} was already freed by an earlier backward",
                        node.shape()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Nodes reachable from `root` through tensors that require gradients, every
/// input before the operations that read it. Iterative, so deep graphs do not
/// overflow the stack.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let inputs: Vec<Tensor> = {
            let guard = t.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .map(|f| f.inputs().into_iter().cloned().collect())
                .unwrap_or_default()
        };
        stack.push((t, true));
        for inp in inputs {
            if inp.requires_grad() && !seen.contains(&inp.id()) {
                stack.push((inp, false));
            }
        }
    }
    order
}
