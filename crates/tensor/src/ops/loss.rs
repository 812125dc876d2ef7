//! Losses, each reducing to a scalar over weighted rows (see
//! `tessera_kernels::loss`): a row is the last axis (a patch's pixels, a token's
//! logits), and the optional weight has one value per row (MAE's mask).

use crate::error::{Result, invalid, shape_err};
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads};
use tessera_kernels::GradOut;
use tessera_kernels::loss::{self as kloss, ClassDims, Distance, Regression};

/// Rows and row length of `pred`, after checking `weight` has one value per row.
fn rows_of(op: &'static str, pred: &Tensor, weight: Option<&Tensor>) -> Result<(usize, usize)> {
    let p = *pred.shape().last().ok_or_else(|| shape_err(op, "input is a scalar"))?;
    let rows = pred.numel() / p.max(1);
    if let Some(w) = weight
        && w.numel() != rows
    {
        return Err(shape_err(
            op,
            format!(
                "weight {:?} needs one value per row of {:?} ({rows} rows)",
                w.shape(),
                pred.shape()
            ),
        ));
    }
    Ok((rows, p))
}

struct RegressionBackward {
    kind: Distance,
    pred: Tensor,
    target: Tensor,
    weight: Option<Tensor>,
}

impl Backward for RegressionBackward {
    fn name(&self) -> &'static str {
        match self.kind {
            Distance::Squared => "mse_loss",
            Distance::Absolute => "l1_loss",
        }
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.pred, &self.target]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let p = *self.pred.shape().last().unwrap_or(&1);
        let rows = self.pred.numel() / p.max(1);
        let mut dp = g.take(&self.pred);
        let mut dt = g.take(&self.target);
        let w = self.weight.as_ref().map(|w| w.data());
        let loss = Regression {
            distance: self.kind,
            rows,
            p,
        };
        let (gp, gt) = (dp.as_deref_mut().map(GradOut::add), dt.as_deref_mut().map(GradOut::add));
        kloss::regression_backward(
            gp,
            gt,
            dout[0],
            &self.pred.data(),
            &self.target.data(),
            w.as_deref(),
            loss,
        );
        g.put(&self.pred, dp);
        g.put(&self.target, dt);
        Ok(())
    }
}

fn regression(
    kind: Distance,
    op: &'static str,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
) -> Result<Tensor> {
    let _timer = crate::profile::scope(op, "forward");
    if pred.shape() != target.shape() {
        return Err(shape_err(
            op,
            format!("prediction {:?} and target {:?} differ", pred.shape(), target.shape()),
        ));
    }
    let (rows, p) = rows_of(op, pred, weight)?;
    let w = weight.map(|w| w.data());
    let dims = Regression {
        distance: kind,
        rows,
        p,
    };
    let loss = kloss::regression_forward(&pred.data(), &target.data(), w.as_deref(), dims);
    drop(w);
    Ok(Tensor::from_op(vec![loss], vec![], &[pred, target], || {
        Box::new(RegressionBackward {
            kind,
            pred: pred.clone(),
            target: target.clone(),
            weight: weight.map(|w| w.detach()),
        })
    }))
}

struct CrossEntropyBackward {
    logits: Tensor,
    targets: Vec<u32>,
    weight: Option<Tensor>,
    lse: Vec<f32>,
}

impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.logits]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dl) = g.take(&self.logits) {
            let k = *self.logits.shape().last().unwrap_or(&1);
            let w = self.weight.as_ref().map(|w| w.data());
            let dims = ClassDims {
                rows: self.lse.len(),
                k,
            };
            let logits = self.logits.data();
            kloss::cross_entropy_backward(
                GradOut::add(&mut dl),
                dout[0],
                &self.lse,
                &logits,
                &self.targets,
                w.as_deref(),
                dims,
            );
            g.put(&self.logits, Some(dl));
        }
        Ok(())
    }
}

struct SoftCrossEntropyBackward {
    logits: Tensor,
    q: Vec<f32>,
    lse: Vec<f32>,
}

impl Backward for SoftCrossEntropyBackward {
    fn name(&self) -> &'static str {
        "soft_cross_entropy"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.logits]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dl) = g.take(&self.logits) {
            let k = *self.logits.shape().last().unwrap_or(&1);
            let dims = ClassDims {
                rows: self.lse.len(),
                k,
            };
            let logits = self.logits.data();
            kloss::soft_cross_entropy_backward(GradOut::add(&mut dl), dout[0], &self.lse, &logits, &self.q, dims);
            g.put(&self.logits, Some(dl));
        }
        Ok(())
    }
}

impl Tensor {
    /// Softmax cross-entropy of `self = logits (…, K)` against soft targets
    /// `q` (one distribution of `K` values per row: label smoothing, mixup),
    /// averaged over rows: `mean_r Σ_k −q_rk · log softmax(logits_r)_k`.
    pub fn soft_cross_entropy(&self, q: &[f32]) -> Result<Tensor> {
        let _timer = crate::profile::scope("soft_cross_entropy", "forward");
        let (rows, k) = rows_of("soft_cross_entropy", self, None)?;
        if q.len() != rows * k {
            return Err(shape_err(
                "soft_cross_entropy",
                format!("{} target values for {rows} rows of {k} logits", q.len()),
            ));
        }
        let mut lse = vec![0f32; rows];
        let loss = kloss::soft_cross_entropy_forward(&mut lse, &self.data(), q, ClassDims { rows, k });
        Ok(Tensor::from_op(vec![loss], vec![], &[self], || {
            Box::new(SoftCrossEntropyBackward {
                logits: self.clone(),
                q: q.to_vec(),
                lse,
            })
        }))
    }

    /// Mean squared error against `target` (same shape), averaged per row over
    /// the last axis, then over rows weighted by `weight` (one value per row;
    /// MAE's mask, 1 = hidden). A zero total weight gives 0.
    pub fn mse_loss(&self, target: &Tensor, weight: Option<&Tensor>) -> Result<Tensor> {
        regression(Distance::Squared, "mse_loss", self, target, weight)
    }

    /// Mean absolute error, averaged like [`Tensor::mse_loss`].
    pub fn l1_loss(&self, target: &Tensor, weight: Option<&Tensor>) -> Result<Tensor> {
        regression(Distance::Absolute, "l1_loss", self, target, weight)
    }

    /// Softmax cross-entropy of `self = logits (…, K)` against one class index
    /// per row, averaged over rows weighted by `weight`.
    pub fn cross_entropy(&self, targets: &[u32], weight: Option<&Tensor>) -> Result<Tensor> {
        let _timer = crate::profile::scope("cross_entropy", "forward");
        let (rows, k) = rows_of("cross_entropy", self, weight)?;
        if targets.len() != rows {
            return Err(shape_err(
                "cross_entropy",
                format!("{} targets for {rows} rows of logits {:?}", targets.len(), self.shape()),
            ));
        }
        if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t as usize >= k) {
            return Err(invalid(
                "cross_entropy",
                format!("target {t} at row {i} is not below the {k} classes"),
            ));
        }
        let mut lse = vec![0f32; rows];
        let w = weight.map(|w| w.data());
        let loss = kloss::cross_entropy_forward(&mut lse, &self.data(), targets, w.as_deref(), ClassDims { rows, k });
        drop(w);
        Ok(Tensor::from_op(vec![loss], vec![], &[self], || {
            Box::new(CrossEntropyBackward {
                logits: self.clone(),
                targets: targets.to_vec(),
                weight: weight.map(|w| w.detach()),
                lse,
            })
        }))
    }
}
