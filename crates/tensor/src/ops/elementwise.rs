//! Element-wise arithmetic: binary operations with NumPy broadcasting, and
//! unary / tensor-scalar operations.

use crate::error::{Result, shape_err};
use crate::shape::{broadcast_shape, broadcast_strides, for_each_broadcast, numel};
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
        }
    }
    #[inline(always)]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
        }
    }
}

/// `a ∘ b` over the broadcast shape.
fn broadcast_apply(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = crate::buffers::uninit(numel(out_shape)); // every element written below
    if sa == sb && a.len() == out.len() && b.len() == out.len() {
        tessera_kernels::par::zip_map(&mut out, a, b, f);
    } else {
        let ta = broadcast_strides(sa, out_shape);
        let tb = broadcast_strides(sb, out_shape);
        for_each_broadcast(out_shape, &ta, &tb, |o, ia, ib| out[o] = f(a[ia], b[ib]));
    }
    out
}

/// A copy of `v` in a pooled buffer.
fn copy_of(v: &[f32]) -> Vec<f32> {
    let mut out = crate::buffers::uninit(v.len());
    tessera_kernels::par::copy(&mut out, v);
    out
}

/// Sums a gradient of the broadcast shape `from` down to the shape `to` it was
/// broadcast from (the adjoint of broadcasting).
pub(crate) fn sum_to(grad: &[f32], from: &[usize], to: &[usize]) -> Vec<f32> {
    if from == to {
        return grad.to_vec();
    }
    let mut out = crate::buffers::zeroed(numel(to));
    let st = broadcast_strides(to, from);
    let zeros = vec![0; from.len()];
    for_each_broadcast(from, &st, &zeros, |o, it, _| out[it] += grad[o]);
    out
}

/// Materialises `data` of shape `from` broadcast to `to`.
pub(crate) fn expand(data: &[f32], from: &[usize], to: &[usize]) -> Vec<f32> {
    if from == to {
        return data.to_vec();
    }
    let mut out = crate::buffers::uninit(numel(to)); // every element written below
    let sf = broadcast_strides(from, to);
    let zeros = vec![0; to.len()];
    for_each_broadcast(to, &sf, &zeros, |o, i, _| out[o] = data[i]);
    out
}

fn binary(kind: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _timer = crate::profile::scope(kind.name(), "forward");
    let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
        shape_err(
            kind.name(),
            format!("shapes {:?} and {:?} do not broadcast", a.shape(), b.shape()),
        )
    })?;
    let out = broadcast_apply(&a.data(), a.shape(), &b.data(), b.shape(), &shape, |x, y| {
        kind.apply(x, y)
    });
    Ok(Tensor::from_op(out, shape, &[a, b], || {
        Box::new(BinaryBackward {
            kind,
            a: a.clone(),
            b: b.clone(),
        })
    }))
}

struct BinaryBackward {
    kind: Binary,
    a: Tensor,
    b: Tensor,
}

impl Backward for BinaryBackward {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.a, &self.b]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let shape = out.shape();
        let (a, b) = (&self.a, &self.b);
        // The residual connection's add: both inputs receive dout unchanged,
        // so hand the buffer itself to one and a copy to the other.
        if self.kind == Binary::Add && a.shape() == shape && b.shape() == shape {
            match (g.wants(a), g.wants(b)) {
                (true, true) => {
                    g.add(b, copy_of(&dout));
                    g.add(a, dout);
                }
                (true, false) => g.add(a, dout),
                (false, true) => g.add(b, dout),
                (false, false) => {}
            }
            return Ok(());
        }
        // ∂out/∂a and ∂out/∂b, element-wise over the broadcast shape.
        let (da, db): (Option<Vec<f32>>, Option<Vec<f32>>) = match self.kind {
            Binary::Add => (g.wants(a).then(|| dout.clone()), g.wants(b).then(|| dout.clone())),
            Binary::Sub => (
                g.wants(a).then(|| dout.clone()),
                g.wants(b).then(|| dout.iter().map(|v| -v).collect()),
            ),
            Binary::Mul => {
                let da = g.wants(a).then(|| {
                    let bb = expand(&b.data(), b.shape(), shape);
                    dout.iter().zip(&bb).map(|(d, y)| d * y).collect()
                });
                let db = g.wants(b).then(|| {
                    let aa = expand(&a.data(), a.shape(), shape);
                    dout.iter().zip(&aa).map(|(d, x)| d * x).collect()
                });
                (da, db)
            }
            Binary::Div => {
                let bb = expand(&b.data(), b.shape(), shape);
                let da = g.wants(a).then(|| dout.iter().zip(&bb).map(|(d, y)| d / y).collect());
                let db = g.wants(b).then(|| {
                    let aa = expand(&a.data(), a.shape(), shape);
                    dout.iter()
                        .zip(&aa)
                        .zip(&bb)
                        .map(|((d, x), y)| -d * x / (y * y))
                        .collect()
                });
                (da, db)
            }
        };
        if let Some(da) = da {
            g.add(a, sum_to(&da, shape, a.shape()));
        }
        if let Some(db) = db {
            g.add(b, sum_to(&db, shape, b.shape()));
        }
        Ok(())
    }
}

/// Element-wise functions of one tensor (some with a scalar argument).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    AddScalar(f32),
    MulScalar(f32),
    /// `x^p`.
    Powf(f32),
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Relu,
    Tanh,
    Sigmoid,
}

impl Unary {
    fn name(self) -> &'static str {
        match self {
            Unary::AddScalar(_) => "add_scalar",
            Unary::MulScalar(_) => "mul_scalar",
            Unary::Powf(_) => "powf",
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Abs => "abs",
            Unary::Relu => "relu",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
        }
    }

    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Unary::AddScalar(c) => x + c,
            Unary::MulScalar(c) => x * c,
            Unary::Powf(p) => x.powf(p),
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            Unary::Abs => x.abs(),
            Unary::Relu => x.max(0.0),
            Unary::Tanh => x.tanh(),
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// `d y / d x` from the input `x` and the output `y`.
    #[inline(always)]
    fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            Unary::AddScalar(_) => 1.0,
            Unary::MulScalar(c) => c,
            Unary::Powf(p) => p * x.powf(p - 1.0),
            Unary::Neg => -1.0,
            Unary::Exp => y,
            Unary::Log => 1.0 / x,
            Unary::Sqrt => 0.5 / y,
            Unary::Abs => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            Unary::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Unary::Tanh => 1.0 - y * y,
            Unary::Sigmoid => y * (1.0 - y),
        }
    }
}

struct UnaryBackward {
    kind: Unary,
    x: Tensor,
}

impl Backward for UnaryBackward {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dx) = g.take(&self.x) {
            let (x, y) = (self.x.data(), out.data());
            for i in 0..dx.len() {
                dx[i] += dout[i] * self.kind.derivative(x[i], y[i]);
            }
            g.put(&self.x, Some(dx));
        }
        Ok(())
    }
}

impl Tensor {
    /// `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(Binary::Add, self, rhs)
    }
    /// `self − rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(Binary::Sub, self, rhs)
    }
    /// `self · rhs` element-wise, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(Binary::Mul, self, rhs)
    }
    /// `self / rhs` element-wise, broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(Binary::Div, self, rhs)
    }

    /// Applies an element-wise function.
    pub fn unary(&self, kind: Unary) -> Tensor {
        let _timer = crate::profile::scope(kind.name(), "forward");
        let mut out = crate::buffers::uninit(self.numel());
        for (o, &x) in out.iter_mut().zip(self.data().iter()) {
            *o = kind.apply(x);
        }
        Tensor::from_op(out, self.shape().to_vec(), &[self], || {
            Box::new(UnaryBackward { kind, x: self.clone() })
        })
    }
    /// `self + c`.
    pub fn add_scalar(&self, c: f32) -> Tensor {
        self.unary(Unary::AddScalar(c))
    }
    /// `self · c`.
    pub fn mul_scalar(&self, c: f32) -> Tensor {
        self.unary(Unary::MulScalar(c))
    }
    /// `self^p`.
    pub fn powf(&self, p: f32) -> Tensor {
        self.unary(Unary::Powf(p))
    }
    /// `−self`.
    pub fn neg(&self) -> Tensor {
        self.unary(Unary::Neg)
    }
    /// `e^self`.
    pub fn exp(&self) -> Tensor {
        self.unary(Unary::Exp)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Tensor {
        self.unary(Unary::Log)
    }
    /// Square root.
    pub fn sqrt(&self) -> Tensor {
        self.unary(Unary::Sqrt)
    }
    /// Absolute value.
    pub fn abs(&self) -> Tensor {
        self.unary(Unary::Abs)
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Tensor {
        self.unary(Unary::Relu)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Tensor {
        self.unary(Unary::Tanh)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Tensor {
        self.unary(Unary::Sigmoid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_add_and_sum_to() {
        let a = Tensor::new((0..6).map(|v| v as f32).collect(), &[2, 3]).unwrap();
        let b = Tensor::new(vec![10.0, 20.0, 30.0], &[3]).unwrap();
        assert_eq!(a.add(&b).unwrap().to_vec(), vec![10.0, 21.0, 32.0, 13.0, 24.0, 35.0]);
        let c = Tensor::new(vec![1.0, 2.0], &[2, 1]).unwrap();
        assert_eq!(a.mul(&c).unwrap().to_vec(), vec![0.0, 1.0, 2.0, 6.0, 8.0, 10.0]);
        assert_eq!(sum_to(&[1.0; 6], &[2, 3], &[3]), vec![2.0; 3]);
        assert_eq!(sum_to(&[1.0; 6], &[2, 3], &[2, 1]), vec![3.0; 2]);
        let e = a.add(&Tensor::zeros(&[2])).unwrap_err();
        assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("add"), "{e}");
    }
}
