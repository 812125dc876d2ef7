//! Optimizers that update parameters in place from a [`GradStore`]:
//! AdamW (decoupled weight decay) and SGD with momentum, both with parameter
//! groups carrying their own weight decay and learning-rate scale, and
//! gradient clipping by global norm.

use crate::backprop::GradStore;
use crate::error::{Result, shape_err};
use crate::tensor::{Tensor, TensorId};
use std::collections::HashMap;
use tessera_kernels::adamw::{self as kopt, AdamWStep, SgdStep};

/// Parameters sharing hyper-parameters (e.g. "decay" and "no decay").
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    /// Decoupled weight decay (AdamW) or L2 penalty (SGD) of this group.
    pub weight_decay: f32,
    /// This group's learning rate is the optimizer's times this factor.
    pub lr_scale: f32,
}

impl ParamGroup {
    /// A group with learning-rate scale 1.
    pub fn new(params: Vec<Tensor>, weight_decay: f32) -> Self {
        ParamGroup {
            params,
            weight_decay,
            lr_scale: 1.0,
        }
    }
}

/// What every optimizer offers to a training loop.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient in `grads`
    /// (parameters without one are left alone, as in PyTorch).
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The base learning rate.
    fn lr(&self) -> f32;
    /// Sets the base learning rate (schedules call this every step).
    fn set_lr(&mut self, lr: f32);
    /// Every parameter, group by group.
    fn params(&self) -> Vec<Tensor>;
}

fn check_grad(p: &Tensor, g: &[f32]) -> Result<()> {
    if g.len() != p.numel() {
        return Err(shape_err(
            "optimizer",
            format!("gradient of {} values for parameter {:?}", g.len(), p.shape()),
        ));
    }
    Ok(())
}

/// AdamW hyper-parameters (PyTorch defaults; MAE pre-training uses β2 = 0.95).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Per-parameter AdamW state: its step count and first and second moments.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// AdamW with parameter groups.
pub struct AdamW {
    pub config: AdamWConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<TensorId, AdamState>,
}

impl AdamW {
    /// An optimizer over `groups`.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Self {
        AdamW {
            config,
            groups,
            state: HashMap::new(),
        }
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The state of one parameter (none before its first update).
    pub fn state(&self, p: &Tensor) -> Option<&AdamState> {
        self.state.get(&p.id())
    }

    /// Restores the state of one parameter (resuming from a checkpoint).
    pub fn set_state(&mut self, p: &Tensor, state: AdamState) -> Result<()> {
        if state.m.len() != p.numel() || state.v.len() != p.numel() {
            return Err(shape_err(
                "AdamW::set_state",
                format!(
                    "moments of {} and {} values for parameter {:?}",
                    state.m.len(),
                    state.v.len(),
                    p.shape()
                ),
            ));
        }
        self.state.insert(p.id(), state);
        Ok(())
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let _timer = crate::profile::scope("adamw", "step");
        for group in &self.groups {
            for p in &group.params {
                let Some(g) = grads.get(p) else { continue };
                check_grad(p, g)?;
                let n = p.numel();
                // Parameter, gradient and both moments read; three written.
                crate::profile::work(0, 28 * n as u64);
                let st = self.state.entry(p.id()).or_insert_with(|| AdamState {
                    step: 0,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                });
                st.step += 1;
                let s = AdamWStep {
                    lr: self.config.lr * group.lr_scale,
                    beta1: self.config.beta1,
                    beta2: self.config.beta2,
                    eps: self.config.eps,
                    weight_decay: group.weight_decay,
                    step: st.step,
                };
                kopt::adamw(&mut p.data_mut()?, g, &mut st.m, &mut st.v, s);
            }
        }
        Ok(())
    }
    fn lr(&self) -> f32 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }
    fn params(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().cloned()).collect()
    }
}

/// SGD with momentum (PyTorch semantics, dampening 0).
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    groups: Vec<ParamGroup>,
    buffers: HashMap<TensorId, Vec<f32>>,
}

impl Sgd {
    /// An optimizer over `groups`; `momentum = 0` is plain SGD.
    pub fn new(groups: Vec<ParamGroup>, lr: f32, momentum: f32, nesterov: bool) -> Self {
        Sgd {
            lr,
            momentum,
            nesterov,
            groups,
            buffers: HashMap::new(),
        }
    }

    /// The momentum buffer of one parameter.
    pub fn buffer(&self, p: &Tensor) -> Option<&[f32]> {
        self.buffers.get(&p.id()).map(|b| b.as_slice())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for group in &self.groups {
            for p in &group.params {
                let Some(g) = grads.get(p) else { continue };
                check_grad(p, g)?;
                let first = !self.buffers.contains_key(&p.id());
                let buf = self.buffers.entry(p.id()).or_insert_with(|| vec![0.0; p.numel()]);
                let s = SgdStep {
                    lr: self.lr * group.lr_scale,
                    momentum: self.momentum,
                    weight_decay: group.weight_decay,
                    nesterov: self.nesterov,
                    first,
                };
                kopt::sgd(&mut p.data_mut()?, g, buf, s);
            }
        }
        Ok(())
    }
    fn lr(&self) -> f32 {
        self.lr
    }
    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }
    fn params(&self) -> Vec<Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().cloned()).collect()
    }
}

/// The global L2 norm of the gradients of `params` (each tensor's sum of
/// squares in fixed chunks, combined in f64 in the order of `params`).
pub fn grad_norm(grads: &GradStore, params: &[Tensor]) -> f32 {
    let _timer = crate::profile::scope("grad_norm", "step");
    let slices: Vec<&[f32]> = params.iter().filter_map(|p| grads.get(p)).collect();
    tessera_kernels::par::sum_squares_many(&slices).sqrt() as f32
}

/// Scales the gradients of `params` so their global norm is at most
/// `max_norm` (PyTorch's `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Tensor], max_norm: f32) -> f32 {
    let total = grad_norm(grads, params);
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = grads.get_mut(p) {
                g.iter_mut().for_each(|v| *v *= coef);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_minimises_a_quadratic_and_skips_params_without_grads() {
        let x = Tensor::param(vec![3.0, -2.0], &[2]).unwrap();
        let frozen = Tensor::param(vec![1.0], &[1]).unwrap();
        let mut opt = AdamW::new(
            vec![ParamGroup::new(vec![x.clone(), frozen.clone()], 0.0)],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        );
        for _ in 0..300 {
            let loss = x.mul(&x).unwrap().sum_all();
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
        }
        assert!(x.to_vec().iter().all(|v| v.abs() < 0.05), "{:?}", x.to_vec());
        assert_eq!(frozen.to_vec(), vec![1.0]);
        assert_eq!(opt.state(&x).unwrap().step, 300);
        assert!(opt.state(&frozen).is_none());
    }

    #[test]
    fn groups_have_their_own_decay_and_lr() {
        let a = Tensor::param(vec![1.0], &[1]).unwrap();
        let b = Tensor::param(vec![1.0], &[1]).unwrap();
        let mut groups = vec![
            ParamGroup::new(vec![a.clone()], 0.5),
            ParamGroup::new(vec![b.clone()], 0.0),
        ];
        groups[1].lr_scale = 0.0;
        let mut opt = AdamW::new(
            groups,
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        );
        let mut grads = GradStore::new();
        grads.insert(&a, vec![0.0]).unwrap();
        grads.insert(&b, vec![1.0]).unwrap();
        opt.step(&grads).unwrap();
        // a: zero gradient, decay only: 1 · (1 − 0.1·0.5). b: learning rate 0.
        assert!((a.to_vec()[0] - 0.95).abs() < 1e-6);
        assert_eq!(b.to_vec()[0], 1.0);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let a = Tensor::param(vec![0.0; 2], &[2]).unwrap();
        let mut grads = GradStore::new();
        grads.insert(&a, vec![3.0, 4.0]).unwrap();
        let before = clip_grad_norm(&mut grads, std::slice::from_ref(&a), 1.0);
        assert!((before - 5.0).abs() < 1e-6);
        assert!((grad_norm(&grads, std::slice::from_ref(&a)) - 1.0).abs() < 1e-5);
        let again = clip_grad_norm(&mut grads, &[a], 10.0);
        assert!((again - 1.0).abs() < 1e-5);
    }

    #[test]
    fn sgd_with_momentum_converges() {
        let x = Tensor::param(vec![5.0], &[1]).unwrap();
        let mut opt = Sgd::new(vec![ParamGroup::new(vec![x.clone()], 0.0)], 0.05, 0.9, false);
        for _ in 0..200 {
            let grads = x.mul(&x).unwrap().sum_all().backward().unwrap();
            opt.step(&grads).unwrap();
        }
        assert!(x.to_vec()[0].abs() < 1e-2);
    }
}
