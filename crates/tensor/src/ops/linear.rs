//! Linear layers and matrix products.

use crate::error::{Result, shape_err};
use crate::precision::{Precision, matmul_precision};
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads, grad_out};
use tessera_kernels::GradOut;
use tessera_kernels::gemm::{Batch, MatMut, MatRef, gemm, gemm_batched};
use tessera_kernels::linear::{self as klinear, LinearDims, LinearGrads};

struct LinearBackward {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    prec: Precision,
}

impl Backward for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.x, &self.w];
        v.extend(self.b.as_ref());
        v
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        linear_grads(self.prec, &self.x, &self.w, self.b.as_ref(), &dout, g);
        Ok(())
    }
}

/// The gradients of `x · wᵀ + b` from `dout`, into `g` (each overwritten or
/// accumulated as `g` says): the backward every linear op shares.
fn linear_grads(prec: Precision, x: &Tensor, w: &Tensor, b: Option<&Tensor>, dout: &[f32], g: &mut Grads) {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let m = x.numel() / k.max(1);
    let mut dx = g.take_out(x);
    let mut dw = g.take_out(w);
    let mut db = b.and_then(|b| g.take_out(b));
    let grads = LinearGrads {
        dinp: grad_out(&mut dx),
        dweight: grad_out(&mut dw),
        dbias: grad_out(&mut db),
    };
    klinear::backward(prec, grads, dout, &x.data(), &w.data(), LinearDims { m, k, n });
    // dX = dY·W and dW = dYᵀ·X; dY, X, W read, dX and dW written.
    crate::profile::work(4 * (m * k * n) as u64, 4 * (m * n + 2 * m * k + 2 * k * n) as u64);
    g.put(x, dx.map(|b| b.0));
    g.put(w, dw.map(|b| b.0));
    if let Some(b) = b {
        g.put(b, db.map(|b| b.0));
    }
}

/// `gelu(x · wᵀ + b)`: saves the pre-activation for the backward.
struct LinearGeluBackward {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    /// `x · wᵀ + b`, a constant tensor (its buffer returns to the pool with it).
    pre: Tensor,
    prec: Precision,
}

impl Backward for LinearGeluBackward {
    fn name(&self) -> &'static str {
        "linear_gelu"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x, &self.w, &self.b]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        // dpre = dout ⊙ gelu'(pre).
        let mut dpre = crate::buffers::uninit(dout.len()); // overwritten below
        tessera_kernels::gelu::backward(GradOut::overwrite(&mut dpre), &dout, &self.pre.data());
        crate::buffers::recycle(dout);
        linear_grads(self.prec, &self.x, &self.w, Some(&self.b), &dpre, g);
        crate::buffers::recycle(dpre);
        Ok(())
    }
}

/// `r + x · wᵀ + b`: the residual receives `dout` itself.
struct LinearResidualBackward {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    r: Tensor,
    prec: Precision,
}

impl Backward for LinearResidualBackward {
    fn name(&self) -> &'static str {
        "linear_residual"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.x, &self.w];
        v.extend(self.b.as_ref());
        v.push(&self.r);
        v
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        linear_grads(self.prec, &self.x, &self.w, self.b.as_ref(), &dout, g);
        // The residual's gradient is dout unchanged: hand the buffer over.
        if g.wants(&self.r) {
            g.add(&self.r, dout);
        } else {
            crate::buffers::recycle(dout);
        }
        Ok(())
    }
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
    prec: Precision,
}

/// `(batch, M, K, N, b_shared)` of a product `a (…, M, K) · b (…, K, N)`.
fn matmul_dims(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize, usize, bool)> {
    let err = || shape_err("matmul", format!("cannot multiply {a:?} by {b:?}"));
    if a.len() < 2 || b.len() < 2 {
        return Err(err());
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    let shared = b.len() == 2;
    if k != k2 || (!shared && a[..a.len() - 2] != b[..b.len() - 2]) {
        return Err(err());
    }
    let batch = a[..a.len() - 2].iter().product();
    Ok((batch, m, k, n, shared))
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.a, &self.b]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let (batch, m, k, n, shared) = matmul_dims(self.a.shape(), self.b.shape())?;
        let b_stride = if shared { 0 } else { k * n };
        let mut da = g.take(&self.a);
        let mut db = g.take(&self.b);
        if let Some(da) = da.as_deref_mut() {
            // dA_i (M, K) += dC_i (M, N) · B_iᵀ (N, K)
            let b = self.b.data();
            let layout = Batch {
                count: batch,
                a_stride: m * n,
                b_stride,
                c_stride: m * k,
            };
            let (dc, bt) = (MatRef::new(&dout, m, n, n, 1), MatRef::new(&b, k, n, n, 1).t());
            gemm_batched(self.prec, layout, 1.0, dc, bt, 1.0, MatMut::new(da, m, k, k, 1));
        }
        if let Some(db) = db.as_deref_mut() {
            let a = self.a.data();
            if shared {
                // dB (K, N) += Σ_i A_iᵀ dC_i = (batch·M, K)ᵀ · (batch·M, N): one product.
                gemm(
                    self.prec,
                    1.0,
                    MatRef::row_major(&a, batch * m, k).t(),
                    MatRef::row_major(&dout, batch * m, n),
                    1.0,
                    MatMut::row_major(db, k, n),
                );
            } else {
                // dB_i (K, N) += A_iᵀ (K, M) · dC_i (M, N)
                let layout = Batch {
                    count: batch,
                    a_stride: m * k,
                    b_stride: m * n,
                    c_stride: k * n,
                };
                let (at, dc) = (MatRef::new(&a, m, k, k, 1).t(), MatRef::new(&dout, m, n, n, 1));
                gemm_batched(self.prec, layout, 1.0, at, dc, 1.0, MatMut::new(db, k, n, n, 1));
            }
        }
        g.put(&self.a, da);
        g.put(&self.b, db);
        Ok(())
    }
}

/// `(M, K, N)` of `x (…, K) · weight (N, K)ᵀ + bias (N)`, or the error
/// naming the shapes.
fn linear_dims(op: &'static str, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let [n, k] = *weight.shape() else {
        return Err(shape_err(
            op,
            format!("weight must be (out, in), got {:?}", weight.shape()),
        ));
    };
    if x.rank() == 0 || x.shape()[x.rank() - 1] != k {
        return Err(shape_err(
            op,
            format!(
                "input {:?} does not end in the weight's {k} input features (weight {:?})",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    if let Some(b) = bias
        && b.shape() != [n]
    {
        return Err(shape_err(
            op,
            format!("bias {:?} does not match weight {:?}", b.shape(), weight.shape()),
        ));
    }
    Ok((x.numel() / k.max(1), k, n))
}

impl Tensor {
    /// A fully connected layer: `self (…, in) · weightᵀ + bias` with PyTorch's
    /// layouts, `weight (out, in)` and `bias (out)`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let _timer = crate::profile::scope("linear", "forward");
        let (m, k, n) = linear_dims("linear", self, weight, bias)?;
        crate::profile::work(2 * (m * k * n) as u64, 4 * (m * k + k * n + m * n) as u64);
        let prec = matmul_precision();
        let mut out = crate::buffers::uninit(m * n); // overwritten by the bias fill or β = 0
        {
            let bias_data = bias.map(|b| b.data());
            let dims = LinearDims { m, k, n };
            klinear::forward(prec, &mut out, &self.data(), &weight.data(), bias_data.as_deref(), dims);
        }
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(Tensor::from_op(out, shape, &inputs, || {
            Box::new(LinearBackward {
                x: self.clone(),
                w: weight.clone(),
                b: bias.cloned(),
                prec,
            })
        }))
    }

    /// `gelu(self · weightᵀ + bias)`, an MLP's first layer, as one op: the
    /// product's kernel takes each output tile's GELU while the tile is in
    /// cache (`linear::forward_gelu`). Values and gradients equal
    /// `self.linear(weight, Some(bias))?.gelu()`.
    pub fn linear_gelu(&self, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let _timer = crate::profile::scope("linear_gelu", "forward");
        let (m, k, n) = linear_dims("linear_gelu", self, weight, Some(bias))?;
        // Two outputs: the pre-activation and the activation.
        crate::profile::work(2 * (m * k * n) as u64, 4 * (m * k + k * n + 2 * m * n) as u64);
        let prec = matmul_precision();
        let mut pre = crate::buffers::uninit(m * n); // β = 0 overwrites
        let mut act = crate::buffers::uninit(m * n); // written tile by tile
        let dims = LinearDims { m, k, n };
        klinear::forward_gelu(
            prec,
            &mut act,
            &mut pre,
            &self.data(),
            &weight.data(),
            &bias.data(),
            dims,
        );
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        // Kept by the backward if one is recorded; otherwise dropped here,
        // which returns its buffer to the pool.
        let pre = Tensor::new(pre, &shape)?;
        Ok(Tensor::from_op(act, shape, &[self, weight, bias], || {
            Box::new(LinearGeluBackward {
                x: self.clone(),
                w: weight.clone(),
                b: bias.clone(),
                pre,
                prec,
            })
        }))
    }

    /// `residual + self · weightᵀ + bias`: a linear layer and the residual
    /// connection around it (a transformer block's `x + proj(…)`,
    /// `x + fc2(…)`) as one op, whose product adds the residual as it writes
    /// each output tile. `residual` has the output's shape. Equals
    /// `residual.add(&self.linear(weight, bias)?)` up to rounding (the bias is
    /// added after the residual).
    pub fn linear_residual(&self, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        let _timer = crate::profile::scope("linear_residual", "forward");
        let (m, k, n) = linear_dims("linear_residual", self, weight, bias)?;
        // The residual read, the output written.
        crate::profile::work(2 * (m * k * n) as u64, 4 * (m * k + k * n + 2 * m * n) as u64);
        let prec = matmul_precision();
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        if residual.shape() != shape.as_slice() {
            return Err(shape_err(
                "linear_residual",
                format!("residual {:?} is not the output's shape {shape:?}", residual.shape()),
            ));
        }
        let mut out = crate::buffers::uninit(m * n); // every element written
        {
            let bias_data = bias.map(|b| b.data());
            let (x, r, w) = (self.data(), residual.data(), weight.data());
            let dims = LinearDims { m, k, n };
            klinear::forward_residual(prec, &mut out, &x, &r, &w, bias_data.as_deref(), dims);
        }
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        inputs.push(residual);
        Ok(Tensor::from_op(out, shape, &inputs, || {
            Box::new(LinearResidualBackward {
                x: self.clone(),
                w: weight.clone(),
                b: bias.cloned(),
                r: residual.clone(),
                prec,
            })
        }))
    }

    /// Matrix product over the last two axes: `self (…, M, K) · rhs (…, K, N)`
    /// with equal leading (batch) axes, or `rhs (K, N)` shared by the batch.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let _timer = crate::profile::scope("matmul", "forward");
        let (batch, m, k, n, shared) = matmul_dims(self.shape(), rhs.shape())?;
        let b_len = if shared { k * n } else { batch * k * n };
        crate::profile::work(
            2 * (batch * m * k * n) as u64,
            4 * (batch * (m * k + m * n) + b_len) as u64,
        );
        let prec = matmul_precision();
        let mut out = crate::buffers::uninit(batch * m * n); // β = 0 overwrites
        let layout = Batch {
            count: batch,
            a_stride: m * k,
            b_stride: if shared { 0 } else { k * n },
            c_stride: m * n,
        };
        let (a, b) = (self.data(), rhs.data());
        let (av, bv) = (MatRef::new(&a, m, k, k, 1), MatRef::new(&b, k, n, n, 1));
        gemm_batched(prec, layout, 1.0, av, bv, 0.0, MatMut::new(&mut out, m, n, n, 1));
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank >= 2") = n;
        Ok(Tensor::from_op(out, shape, &[self, rhs], || {
            Box::new(MatmulBackward {
                a: self.clone(),
                b: rhs.clone(),
                prec,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_uses_out_in_weights() {
        let x = Tensor::new(vec![1.0, 2.0], &[1, 2]).unwrap();
        let w = Tensor::new(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
        let b = Tensor::new(vec![0.5, 0.5, 0.5], &[3]).unwrap();
        assert_eq!(x.linear(&w, Some(&b)).unwrap().to_vec(), vec![1.5, 2.5, 3.5]);
        let e = x.linear(&w.transpose(0, 1).unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("linear"), "{e}");
    }

    #[test]
    fn matmul_batched_and_shared() {
        let a = Tensor::new((0..12).map(|v| v as f32).collect(), &[2, 2, 3]).unwrap();
        let b = Tensor::new(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[2, 2, 2]);
        assert_eq!(c.to_vec(), vec![2.0, 3.0, 8.0, 9.0, 14.0, 15.0, 20.0, 21.0]);
        assert!(a.matmul(&a).is_err());
    }
}
