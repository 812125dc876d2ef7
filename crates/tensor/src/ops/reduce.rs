//! Sums and means over axes.

use super::elementwise::{expand, sum_to};
use crate::error::{Result, shape_err};
use crate::shape::axis;
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads};

/// The shape with the reduced axes kept as size 1, and the number of elements
/// each output value sums.
fn keepdim_shape(op: &'static str, shape: &[usize], axes: &[isize]) -> Result<(Vec<usize>, usize)> {
    let mut kept = shape.to_vec();
    let mut count = 1;
    for &a in axes {
        let a = axis(op, a, shape.len())?;
        if kept[a] == 1 && shape[a] != 1 {
            return Err(shape_err(op, format!("axis {a} listed twice in {axes:?}")));
        }
        count *= shape[a];
        kept[a] = 1;
    }
    Ok((kept, count))
}

fn reduce(op: &'static str, x: &Tensor, axes: &[isize], keepdim: bool, mean: bool) -> Result<Tensor> {
    let _timer = crate::profile::scope(op, "forward");
    let (kept, count) = keepdim_shape(op, x.shape(), axes)?;
    let mut out = sum_to(&x.data(), x.shape(), &kept);
    if mean && count > 0 {
        let inv = 1.0 / count as f32;
        out.iter_mut().for_each(|v| *v *= inv);
    }
    let shape: Vec<usize> = if keepdim {
        kept.clone()
    } else {
        let reduced: Vec<usize> = axes.iter().map(|&a| axis(op, a, x.rank())).collect::<Result<_>>()?;
        x.shape()
            .iter()
            .enumerate()
            .filter(|(i, _)| !reduced.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    let scale = if mean && count > 0 { 1.0 / count as f32 } else { 1.0 };
    Ok(Tensor::from_op(out, shape, &[x], || {
        Box::new(ReduceBackward {
            op,
            x: x.clone(),
            kept,
            scale,
        })
    }))
}

struct ReduceBackward {
    op: &'static str,
    x: Tensor,
    /// The output shape with reduced axes kept as 1.
    kept: Vec<usize>,
    /// 1 for a sum, 1/count for a mean.
    scale: f32,
}

impl Backward for ReduceBackward {
    fn name(&self) -> &'static str {
        self.op
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        // Every input element contributed once (times `scale`) to its output.
        let mut dx = expand(&dout, &self.kept, self.x.shape());
        if self.scale != 1.0 {
            dx.iter_mut().for_each(|v| *v *= self.scale);
        }
        g.add(&self.x, dx);
        Ok(())
    }
}

impl Tensor {
    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size 1.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        reduce("sum", self, axes, keepdim, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        reduce("mean", self, axes, keepdim, true)
    }

    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Tensor {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        reduce("sum_all", self, &axes, false, false).expect("all axes are valid")
    }

    /// Mean of every element, as a rank-0 tensor.
    pub fn mean_all(&self) -> Tensor {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        reduce("mean_all", self, &axes, false, true).expect("all axes are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_means() {
        let x = Tensor::new((0..24).map(|v| v as f32).collect(), &[2, 3, 4]).unwrap();
        let s = x.sum(&[1], false).unwrap();
        assert_eq!(s.shape(), &[2, 4]);
        assert_eq!(s.to_vec()[0], 0.0 + 4.0 + 8.0);
        let m = x.mean(&[0, -1], true).unwrap();
        assert_eq!(m.shape(), &[1, 3, 1]);
        assert_eq!(m.to_vec()[0], (0..4).chain(12..16).sum::<i32>() as f32 / 8.0);
        assert_eq!(x.sum_all().item().unwrap(), 276.0);
        assert!(x.sum(&[3], false).is_err());
        assert!(x.sum(&[1, -2], false).is_err());
    }
}
