//! Fused neural-network operations: each is one node in the graph with one
//! kernel call forward and one backward (not a chain of element-wise nodes).

use crate::error::{Result, invalid, shape_err};
use crate::precision::{Precision, matmul_precision};
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads, grad_out};
use rand::{Rng, RngExt};
use tessera_kernels::attention::{self as kattn, AttnBias, AttnDims, AttnGrads};
use tessera_kernels::patch::{self as kpatch, EmbedDims, EmbedGrads, PatchDims};
use tessera_kernels::relpos::{self as krelpos, RelPosDims};
use tessera_kernels::{GradOut, gelu as kgelu, layernorm as kln, softmax as ksoftmax};

// ---------------------------------------------------------------- layer_norm

struct LayerNormBackward {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    eps: f32,
}

impl Backward for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x, &self.w, &self.b]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let d = self.w.numel();
        let rows = self.mean.len();
        let mut dx = g.take_out(&self.x);
        // The kernel always produces both parameter gradients; keep those wanted.
        let mut dw = g.take(&self.w).unwrap_or_else(|| vec![0.0; d]);
        let mut db = g.take(&self.b).unwrap_or_else(|| vec![0.0; d]);
        let grads = kln::LnGrads {
            dinp: grad_out(&mut dx),
            dweight: GradOut::add(&mut dw),
            dbias: GradOut::add(&mut db),
        };
        let dims = kln::LnDims { rows, d, eps: self.eps };
        crate::profile::work(0, 12 * (rows * d) as u64); // x and dy read, dx written
        kln::backward(
            grads,
            &dout,
            &self.mean,
            &self.rstd,
            &self.x.data(),
            &self.w.data(),
            dims,
        );
        g.put(&self.x, dx.map(|b| b.0));
        if g.wants(&self.w) {
            g.put(&self.w, Some(dw));
        }
        if g.wants(&self.b) {
            g.put(&self.b, Some(db));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- gelu

struct GeluBackward {
    x: Tensor,
}

impl Backward for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some((mut dx, add)) = g.take_out(&self.x) {
            kgelu::backward(GradOut { data: &mut dx, add }, &dout, &self.x.data());
            g.put(&self.x, Some(dx));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- softmax

struct SoftmaxBackward {
    x: Tensor,
}

impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dx) = g.take(&self.x) {
            let n = *out.shape().last().unwrap_or(&1);
            ksoftmax::backward(GradOut::add(&mut dx), &dout, &out.data(), out.numel() / n.max(1), n);
            g.put(&self.x, Some(dx));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- attention

struct AttentionBackward {
    qkv: Tensor,
    /// The additive bias `(G, H, N, N)`, if any.
    bias: Option<Tensor>,
    lse: Vec<f32>,
    dims: AttnDims,
    prec: Precision,
}

impl Backward for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.qkv];
        v.extend(self.bias.as_ref());
        v
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let bias_data = self.bias.as_ref().map(|b| b.data());
        let bias = bias_data.as_ref().zip(self.bias.as_ref()).map(|(data, t)| AttnBias {
            data,
            groups: t.shape()[0],
        });
        let mut dbias = match &self.bias {
            Some(b) if g.wants(b) => Some(crate::buffers::uninit(b.numel())),
            _ => None,
        };
        let (mut dqkv, add) = match g.take_out(&self.qkv) {
            Some(buf) => buf,
            // The kernel computes dQKV on the way to the bias's gradient.
            None if dbias.is_some() => (crate::buffers::uninit(self.qkv.numel()), false),
            None => return Ok(()),
        };
        let grads = AttnGrads {
            dqkv: GradOut { data: &mut dqkv, add },
            dbias: dbias.as_deref_mut().map(GradOut::overwrite),
        };
        kattn::backward(self.prec, grads, &dout, &self.lse, &self.qkv.data(), bias, self.dims);
        // Q·Kᵀ again, then dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q: five
        // products of 2·N²·dh per head; qkv and dO read, dqkv written.
        let (b, n, d) = (self.dims.b as u64, self.dims.n as u64, self.dims.d as u64);
        crate::profile::work(10 * b * n * n * d, 4 * b * n * 7 * d);
        if g.wants(&self.qkv) {
            g.put(&self.qkv, Some(dqkv));
        } else {
            crate::buffers::recycle(dqkv);
        }
        if let (Some(b), Some(db)) = (&self.bias, dbias) {
            g.add(b, db);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- relpos_bias

struct RelPosBackward {
    table: Tensor,
    index: Vec<u32>,
    dims: RelPosDims,
}

impl Backward for RelPosBackward {
    fn name(&self) -> &'static str {
        "relpos_bias"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.table]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some((mut dt, add)) = g.take_out(&self.table) {
            krelpos::backward(GradOut { data: &mut dt, add }, &dout, &self.index, self.dims);
            g.put(&self.table, Some(dt));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- dropout

struct DropoutBackward {
    x: Tensor,
    /// 0 for dropped elements, 1/(1−p) for kept ones.
    scale: Vec<f32>,
}

impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        g.add(&self.x, dout.iter().zip(&self.scale).map(|(d, s)| d * s).collect());
        Ok(())
    }
}

// ---------------------------------------------------------------- patch_embed

struct PatchEmbedBackward {
    img: Tensor,
    w: Tensor,
    b: Tensor,
    dims: PatchDims,
    prec: Precision,
}

impl Backward for PatchEmbedBackward {
    fn name(&self) -> &'static str {
        "patch_embed"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.img, &self.w, &self.b]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let dim = self.w.shape()[0];
        let mut cols = crate::buffers::uninit(self.img.numel()); // im2col overwrites
        let mut dimg = g.take(&self.img);
        let mut dw = g.take(&self.w);
        let mut db = g.take(&self.b);
        let grads = EmbedGrads {
            dimg: dimg.as_deref_mut().map(GradOut::add),
            dweight: dw.as_deref_mut().map(GradOut::add),
            dbias: db.as_deref_mut().map(GradOut::add),
        };
        let dims = EmbedDims {
            patches: self.dims,
            dim,
        };
        kpatch::embed_backward(
            self.prec,
            grads,
            &mut cols,
            &dout,
            &self.img.data(),
            &self.w.data(),
            dims,
        );
        crate::buffers::recycle(cols);
        g.put(&self.img, dimg);
        g.put(&self.w, dw);
        g.put(&self.b, db);
        Ok(())
    }
}

impl Tensor {
    /// Layer normalization over the last axis with `weight (D)`, `bias (D)`.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        let _timer = crate::profile::scope("layer_norm", "forward");
        let d = *self
            .shape()
            .last()
            .ok_or_else(|| shape_err("layer_norm", "input is a scalar"))?;
        if weight.shape() != [d] || bias.shape() != [d] {
            return Err(shape_err(
                "layer_norm",
                format!(
                    "input {:?} needs weight and bias of [{d}], got {:?} and {:?}",
                    self.shape(),
                    weight.shape(),
                    bias.shape()
                ),
            ));
        }
        let rows = self.numel() / d.max(1);
        let mut out = crate::buffers::uninit(self.numel()); // every row normalised
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        let dims = kln::LnDims { rows, d, eps };
        crate::profile::work(0, 8 * self.numel() as u64); // x read, y written
        kln::forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &self.data(),
            &weight.data(),
            &bias.data(),
            dims,
        );
        Ok(Tensor::from_op(
            out,
            self.shape().to_vec(),
            &[self, weight, bias],
            || {
                Box::new(LayerNormBackward {
                    x: self.clone(),
                    w: weight.clone(),
                    b: bias.clone(),
                    mean,
                    rstd,
                    eps,
                })
            },
        ))
    }

    /// GELU with the exact error function.
    pub fn gelu(&self) -> Tensor {
        let _timer = crate::profile::scope("gelu", "forward");
        let mut out = crate::buffers::uninit(self.numel()); // element-wise, all written
        kgelu::forward(&mut out, &self.data());
        Tensor::from_op(out, self.shape().to_vec(), &[self], || {
            Box::new(GeluBackward { x: self.clone() })
        })
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        let _timer = crate::profile::scope("softmax", "forward");
        let n = *self
            .shape()
            .last()
            .ok_or_else(|| shape_err("softmax", "input is a scalar"))?;
        let mut out = crate::buffers::uninit(self.numel()); // copied, then normalised in place
        ksoftmax::forward(&mut out, &self.data(), self.numel() / n.max(1), n);
        Ok(Tensor::from_op(out, self.shape().to_vec(), &[self], || {
            Box::new(SoftmaxBackward { x: self.clone() })
        }))
    }

    /// Multi-head self-attention from packed `self = qkv (B, N, 3·D)` (timm's
    /// layout) → `(B, N, D)`, scale `Dh^-½`. One fused op: the backward
    /// recomputes the probabilities from saved log-sum-exps.
    pub fn attention(&self, heads: usize) -> Result<Tensor> {
        self.attention_impl(heads, None)
    }

    /// [`Tensor::attention`] with an additive bias on the logits,
    /// `bias (G, H, N, N)`, image `b` taking group `b mod G`: a relative
    /// position bias ([`Tensor::relpos_bias`]), an attention mask (−∞ where a
    /// query must not see a key), or both summed. The bias gets a gradient.
    pub fn attention_biased(&self, heads: usize, bias: &Tensor) -> Result<Tensor> {
        self.attention_impl(heads, Some(bias))
    }

    /// Gathers a relative position bias: `self = table (T, H)` and
    /// `index (G, N, N)` (row `index[g, i, j]` for query `i`, key `j` of group
    /// `g`) → `(G, H, N, N)` with `out[g, h, i, j] = table[index[g, i, j], h]`.
    /// The table gets a gradient (summed over every use of each row).
    pub fn relpos_bias(&self, index: &[u32], groups: usize, n: usize) -> Result<Tensor> {
        let _timer = crate::profile::scope("relpos_bias", "forward");
        let [t, h] = *self.shape() else {
            return Err(shape_err(
                "relpos_bias",
                format!("the table must be (T, H), got {:?}", self.shape()),
            ));
        };
        if index.len() != groups * n * n {
            return Err(shape_err(
                "relpos_bias",
                format!("index has {} entries, want (G {groups}, N {n}, N {n})", index.len()),
            ));
        }
        if let Some(&bad) = index.iter().find(|&&i| i as usize >= t) {
            return Err(invalid(
                "relpos_bias",
                format!("index {bad} is outside the table's {t} rows"),
            ));
        }
        let dims = RelPosDims { t, h, g: groups, n };
        let mut out = crate::buffers::uninit(groups * h * n * n);
        krelpos::gather(&mut out, &self.data(), index, dims);
        Ok(Tensor::from_op(out, vec![groups, h, n, n], &[self], || {
            Box::new(RelPosBackward {
                table: self.clone(),
                index: index.to_vec(),
                dims,
            })
        }))
    }

    /// The probabilities `(B, H, N, N)` of [`Tensor::attention`] (with
    /// `bias`, of [`Tensor::attention_biased`]) for `self = qkv (B, N, 3·D)`:
    /// `P[b, h] = softmax_rows(Q Kᵀ/√Dh + A)`, by the same kernel code as the
    /// forward, products in f32. Row `i` is how query `i` spreads its
    /// attention over the keys. For inspection: no gradient is recorded.
    pub fn attention_probabilities(&self, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let dims = self.attention_dims(heads, bias)?;
        let AttnDims { b, n, h, .. } = dims;
        let mut p = crate::buffers::uninit(b * h * n * n); // every (b, h) block written
        let bias_data = bias.map(|t| t.data());
        let kbias = bias_data.as_ref().zip(bias).map(|(data, t)| AttnBias {
            data,
            groups: t.shape()[0],
        });
        kattn::probabilities(Precision::F32, &mut p, &self.data(), kbias, dims);
        drop(bias_data);
        Tensor::new(p, &[b, h, n, n])
    }

    /// Checks `self = qkv (B, N, 3·D)` and `bias (G, H, N, N)` for an
    /// attention of `heads` heads.
    fn attention_dims(&self, heads: usize, bias: Option<&Tensor>) -> Result<AttnDims> {
        let [b, n, d3] = *self.shape() else {
            return Err(shape_err(
                "attention",
                format!("qkv must be (B, N, 3·D), got {:?}", self.shape()),
            ));
        };
        if d3 % 3 != 0 || heads == 0 || (d3 / 3) % heads != 0 {
            return Err(shape_err(
                "attention",
                format!(
                    "qkv {:?}: last axis must be 3·D with D divisible by {heads} heads",
                    self.shape()
                ),
            ));
        }
        if let Some(t) = bias {
            let ok = matches!(*t.shape(), [g, hh, n1, n2] if g > 0 && b % g == 0 && hh == heads && n1 == n && n2 == n);
            if !ok {
                return Err(shape_err(
                    "attention",
                    format!(
                        "bias {:?} must be (G, {heads}, {n}, {n}) with G dividing the batch of {b}",
                        t.shape()
                    ),
                ));
            }
        }
        Ok(AttnDims::new(b, n, d3 / 3, heads))
    }

    fn attention_impl(&self, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let _timer = crate::profile::scope("attention", "forward");
        let dims = self.attention_dims(heads, bias)?;
        let AttnDims { b, n, .. } = dims;
        // Per head Q·Kᵀ and P·V (2·N²·dh each); qkv read, the output written.
        let d = dims.d as u64;
        crate::profile::work(4 * (b * n * n) as u64 * d, 4 * (b * n) as u64 * 4 * d);
        let mut out = crate::buffers::uninit(b * n * dims.d); // each head writes its columns (β = 0)
        let mut lse = vec![0f32; b * heads * n];
        let prec = matmul_precision();
        let bias_data = bias.map(|t| t.data());
        let kbias = bias_data.as_ref().zip(bias).map(|(data, t)| AttnBias {
            data,
            groups: t.shape()[0],
        });
        kattn::forward(prec, &mut out, &mut lse, &self.data(), kbias, dims);
        drop(bias_data);
        let mut inputs = vec![self];
        inputs.extend(bias);
        Ok(Tensor::from_op(out, vec![b, n, dims.d], &inputs, || {
            Box::new(AttentionBackward {
                qkv: self.clone(),
                bias: bias.cloned(),
                lse,
                dims,
                prec,
            })
        }))
    }

    /// Inverted dropout: in training, zeroes each element with probability `p`
    /// and scales the rest by `1/(1−p)`; otherwise (or with `p = 0`) the identity.
    pub fn dropout<R: Rng + ?Sized>(&self, p: f32, train: bool, rng: &mut R) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(invalid("dropout", format!("probability {p} is outside [0, 1)")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let scale: Vec<f32> = (0..self.numel())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        let out: Vec<f32> = self.data().iter().zip(&scale).map(|(x, s)| x * s).collect();
        Ok(Tensor::from_op(out, self.shape().to_vec(), &[self], || {
            Box::new(DropoutBackward { x: self.clone(), scale })
        }))
    }

    /// Patch embedding of images `self (B, C, H, W)`: a convolution with
    /// `weight (D, C, p, p)` and `bias (D)`, kernel = stride = p → `(B, L, D)`
    /// with patches in row-major grid order.
    pub fn patch_embed(&self, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let _timer = crate::profile::scope("patch_embed", "forward");
        let [b, c, h, w] = *self.shape() else {
            return Err(shape_err(
                "patch_embed",
                format!("images must be (B, C, H, W), got {:?}", self.shape()),
            ));
        };
        let [dim, wc, p, p2] = *weight.shape() else {
            return Err(shape_err(
                "patch_embed",
                format!("weight must be (D, C, p, p), got {:?}", weight.shape()),
            ));
        };
        if wc != c || p != p2 || p == 0 || h % p != 0 || w % p != 0 || bias.shape() != [dim] {
            return Err(shape_err(
                "patch_embed",
                format!(
                    "images {:?}, weight {:?}, bias {:?}: channels must match and the patch divide the image",
                    self.shape(),
                    weight.shape(),
                    bias.shape()
                ),
            ));
        }
        let dims = PatchDims::new(b, c, h, w, p);
        let mut out = vec![0f32; b * dims.l() * dim];
        let mut cols = vec![0f32; self.numel()];
        let prec = matmul_precision();
        let edims = EmbedDims { patches: dims, dim };
        kpatch::embed_forward(
            prec,
            &mut out,
            &mut cols,
            &self.data(),
            &weight.data(),
            Some(&bias.data()),
            edims,
        );
        drop(cols);
        Ok(Tensor::from_op(
            out,
            vec![b, dims.l(), dim],
            &[self, weight, bias],
            || {
                Box::new(PatchEmbedBackward {
                    img: self.clone(),
                    w: weight.clone(),
                    b: bias.clone(),
                    dims,
                    prec,
                })
            },
        ))
    }
}
