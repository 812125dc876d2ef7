//! Operations that move values around: reshape, permute, concatenation,
//! slicing, broadcasting, and gathering/scattering token rows (MAE keeps the
//! visible tokens with a gather and puts mask tokens back with another).

use super::elementwise::{expand, sum_to};
use crate::error::{Result, invalid, shape_err};
use crate::shape::{axis, broadcast_shape, infer_shape, numel, strides};
use crate::tensor::Tensor;
use crate::tensor::{Backward, Grads};
use tessera_kernels::window::{self as kwindow, WindowDims};

// ---------------------------------------------------------------- reshape

struct ReshapeBackward {
    x: Tensor,
}

impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        // Same values in the same order: the gradient moves over unchanged.
        g.add(&self.x, dout);
        Ok(())
    }
}

// ---------------------------------------------------------------- permute

/// Copies `x` (shape `shape`) into the axis order `perm`.
fn permute_data(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let in_strides = strides(shape);
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = crate::buffers::uninit(x.len()); // a permutation: every element written
    let zeros = vec![0; out_shape.len()];
    crate::shape::for_each_broadcast(&out_shape, &src_strides, &zeros, |o, i, _| out[o] = x[i]);
    out
}

struct PermuteBackward {
    x: Tensor,
    perm: Vec<usize>,
}

impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let mut inverse = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inverse[p] = i;
        }
        g.add(&self.x, permute_data(&dout, out.shape(), &inverse));
        Ok(())
    }
}

// ---------------------------------------------------------------- concat

struct ConcatBackward {
    xs: Vec<Tensor>,
    axis: usize,
}

impl Backward for ConcatBackward {
    fn name(&self) -> &'static str {
        "cat"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        self.xs.iter().collect()
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let shape = out.shape();
        let outer: usize = shape[..self.axis].iter().product();
        let inner: usize = shape[self.axis + 1..].iter().product();
        let row = shape[self.axis] * inner;
        let mut offset = 0;
        for x in &self.xs {
            let len = x.shape()[self.axis] * inner;
            if g.wants(x) {
                let mut dx = Vec::with_capacity(outer * len);
                for o in 0..outer {
                    dx.extend_from_slice(&dout[o * row + offset..o * row + offset + len]);
                }
                g.add(x, dx);
            }
            offset += len;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- narrow

struct NarrowBackward {
    x: Tensor,
    axis: usize,
    start: usize,
}

impl Backward for NarrowBackward {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dx) = g.take(&self.x) {
            let shape = self.x.shape();
            let outer: usize = shape[..self.axis].iter().product();
            let inner: usize = shape[self.axis + 1..].iter().product();
            let (row, len) = (shape[self.axis] * inner, out.shape()[self.axis] * inner);
            for o in 0..outer {
                let dst = &mut dx[o * row + self.start * inner..][..len];
                for (d, v) in dst.iter_mut().zip(&dout[o * len..(o + 1) * len]) {
                    *d += v;
                }
            }
            g.put(&self.x, Some(dx));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- broadcast_to

struct BroadcastBackward {
    x: Tensor,
}

impl Backward for BroadcastBackward {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        g.add(&self.x, sum_to(&dout, out.shape(), self.x.shape()));
        Ok(())
    }
}

// ---------------------------------------------------------------- gather / scatter rows

/// Checks `idx` for a row gather/scatter over `(B, N, D)`; returns `(B, K)`.
fn check_rows(op: &'static str, b: usize, n: usize, idx: &[usize], k: usize) -> Result<()> {
    if idx.len() != b * k {
        return Err(shape_err(op, format!("{} indices for batch {b} × {k} rows", idx.len())));
    }
    if let Some((pos, &i)) = idx.iter().enumerate().find(|&(_, &i)| i >= n) {
        return Err(invalid(
            op,
            format!("index {i} at position {pos} is out of range for {n} rows"),
        ));
    }
    Ok(())
}

/// `out[b, k, :] = x[b, idx[b, k], :]`.
fn gather(x: &[f32], idx: &[usize], b: usize, n: usize, k: usize, d: usize) -> Vec<f32> {
    let mut out = crate::buffers::uninit(b * k * d); // every row copied
    for bi in 0..b {
        for ki in 0..k {
            let src = (bi * n + idx[bi * k + ki]) * d;
            out[(bi * k + ki) * d..][..d].copy_from_slice(&x[src..src + d]);
        }
    }
    out
}

/// `out[b, idx[b, k], :] += y[b, k, :]`.
fn scatter_add(out: &mut [f32], y: &[f32], idx: &[usize], b: usize, n: usize, k: usize, d: usize) {
    for bi in 0..b {
        for ki in 0..k {
            let dst = (bi * n + idx[bi * k + ki]) * d;
            for (o, v) in out[dst..dst + d].iter_mut().zip(&y[(bi * k + ki) * d..][..d]) {
                *o += v;
            }
        }
    }
}

struct GatherBackward {
    x: Tensor,
    idx: Vec<usize>,
}

impl Backward for GatherBackward {
    fn name(&self) -> &'static str {
        "gather_rows"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        if let Some(mut dx) = g.take(&self.x) {
            let (b, n, d) = (self.x.shape()[0], self.x.shape()[1], self.x.shape()[2]);
            scatter_add(&mut dx, &dout, &self.idx, b, n, out.shape()[1], d);
            g.put(&self.x, Some(dx));
        }
        Ok(())
    }
}

struct ScatterBackward {
    y: Tensor,
    idx: Vec<usize>,
}

impl Backward for ScatterBackward {
    fn name(&self) -> &'static str {
        "scatter_rows"
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.y]
    }
    fn backward(&self, out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let (b, k, d) = (self.y.shape()[0], self.y.shape()[1], self.y.shape()[2]);
        g.add(&self.y, gather(&dout, &self.idx, b, out.shape()[1], k, d));
        Ok(())
    }
}

// ---------------------------------------------------------------- row permutations (Swin)

/// The backward of a row permutation: the inverse permutation of `dout`.
struct RowPermBackward {
    x: Tensor,
    /// `out row r` came from `x row index[r]` (`gather`), or went to `out
    /// row index[r]` (`!gather`: a scatter).
    index: Vec<usize>,
    c: usize,
    gather: bool,
    name: &'static str,
}

impl Backward for RowPermBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.x]
    }
    fn backward(&self, _out: &Tensor, dout: Vec<f32>, g: &mut Grads) -> Result<()> {
        let mut dx = crate::buffers::uninit(dout.len()); // a permutation: every row written
        if self.gather {
            kwindow::scatter_rows(&mut dx, &dout, &self.index, self.c);
        } else {
            kwindow::gather_rows(&mut dx, &dout, &self.index, self.c);
        }
        g.add(&self.x, dx);
        Ok(())
    }
}

impl Tensor {
    /// Moves whole rows of the last axis by a permutation: `gather` gives
    /// `out[r] = self[index[r]]`, else `out[index[r]] = self[r]`.
    fn permute_rows(&self, index: Vec<usize>, shape: Vec<usize>, gather: bool, name: &'static str) -> Result<Tensor> {
        let _timer = crate::profile::scope(name, "forward");
        let c = *self.shape().last().unwrap_or(&1);
        let mut out = crate::buffers::uninit(self.numel());
        if gather {
            kwindow::gather_rows(&mut out, &self.data(), &index, c);
        } else {
            kwindow::scatter_rows(&mut out, &self.data(), &index, c);
        }
        Ok(Tensor::from_op(out, shape, &[self], || {
            Box::new(RowPermBackward {
                x: self.clone(),
                index,
                c,
                gather,
                name,
            })
        }))
    }

    /// Swin's window partition, the cyclic shift folded in:
    /// `self (B, H, W, C)` → `(B·nW, w², C)`, window `(b, bh, bw)` holding
    /// tokens `(bh·w + i + shift, bw·w + j + shift)` mod the grid
    /// (`torch.roll(x, (−shift, −shift))`, then the partition).
    pub fn window_partition(&self, window: usize, shift: usize) -> Result<Tensor> {
        let [b, h, w, c] = *self.shape() else {
            return Err(shape_err(
                "window_partition",
                format!("expects (B, H, W, C), got {:?}", self.shape()),
            ));
        };
        let dims = window_dims("window_partition", b, h, w, c, window, shift)?;
        let shape = vec![b * dims.windows(), window * window, c];
        self.permute_rows(kwindow::partition_index(dims), shape, true, "window_partition")
    }

    /// The inverse of [`Tensor::window_partition`]: `self (B·nW, w², C)` →
    /// `(B, H, W, C)`, the shift rolled back.
    pub fn window_reverse(&self, window: usize, shift: usize, grid: [usize; 2]) -> Result<Tensor> {
        let [bn, n, c] = *self.shape() else {
            return Err(shape_err(
                "window_reverse",
                format!("expects (B·nW, N, C), got {:?}", self.shape()),
            ));
        };
        let [h, w] = grid;
        let per_image = h.checked_div(window).unwrap_or(0) * w.checked_div(window).unwrap_or(0);
        if n != window * window || per_image == 0 || !bn.is_multiple_of(per_image) {
            return Err(shape_err(
                "window_reverse",
                format!(
                    "{:?} is not windows of {window}x{window} over a {h}x{w} grid",
                    self.shape()
                ),
            ));
        }
        let dims = window_dims("window_reverse", bn / per_image, h, w, c, window, shift)?;
        self.permute_rows(
            kwindow::partition_index(dims),
            vec![dims.b, h, w, c],
            false,
            "window_reverse",
        )
    }

    /// Swin's patch merging gather: `self (B, H, W, C)` → `(B, H/2, W/2, 4C)`,
    /// each output the concat of inputs `(2r, 2c)`, `(2r+1, 2c)`, `(2r, 2c+1)`,
    /// `(2r+1, 2c+1)`.
    pub fn patch_merge(&self) -> Result<Tensor> {
        let [b, h, w, c] = *self.shape() else {
            return Err(shape_err(
                "patch_merge",
                format!("expects (B, H, W, C), got {:?}", self.shape()),
            ));
        };
        if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
            return Err(shape_err("patch_merge", format!("the {h}x{w} grid is not even")));
        }
        // Rows of C move; the output groups four of them per merged token.
        let rows = self.permute_rows(kwindow::merge_index(b, h, w), vec![b * h * w, c], true, "patch_merge")?;
        rows.reshape(&[b as isize, (h / 2) as isize, (w / 2) as isize, (4 * c) as isize])
    }
}

fn window_dims(
    what: &'static str,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    window: usize,
    shift: usize,
) -> Result<WindowDims> {
    if window == 0 || !h.is_multiple_of(window) || !w.is_multiple_of(window) || shift >= window {
        return Err(invalid(
            what,
            format!("window {window} with shift {shift} does not tile the {h}x{w} grid"),
        ));
    }
    Ok(WindowDims::new(b, h, w, c, window, shift))
}

impl Tensor {
    /// The same values in another shape; one dimension may be `-1` (inferred).
    /// Free: the result shares this tensor's storage.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let shape = infer_shape("reshape", self.shape(), shape)?;
        Ok(self.view_as(shape, || Box::new(ReshapeBackward { x: self.clone() })))
    }

    /// Like [`Tensor::reshape`] with a shape of `usize`.
    pub fn reshape_to(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(shape_err(
                "reshape",
                format!("cannot reshape {:?} into {shape:?}", self.shape()),
            ));
        }
        Ok(self.view_as(shape.to_vec(), || Box::new(ReshapeBackward { x: self.clone() })))
    }

    /// Inserts a dimension of size 1 at `axis` (which may equal the rank).
    pub fn unsqueeze(&self, axis_: isize) -> Result<Tensor> {
        let a = axis("unsqueeze", axis_, self.rank() + 1)?;
        let mut shape = self.shape().to_vec();
        shape.insert(a, 1);
        self.reshape_to(&shape)
    }

    /// Reorders the axes: output axis `i` is input axis `perm[i]`. Copies.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let _timer = crate::profile::scope("permute", "forward");
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            return Err(shape_err(
                "permute",
                format!("{perm:?} is not a permutation of the {rank} axes of {:?}", self.shape()),
            ));
        }
        let out = permute_data(&self.data(), self.shape(), perm);
        let shape = perm.iter().map(|&p| self.shape()[p]).collect();
        Ok(Tensor::from_op(out, shape, &[self], || {
            Box::new(PermuteBackward {
                x: self.clone(),
                perm: perm.to_vec(),
            })
        }))
    }

    /// Swaps two axes. Copies.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let (a, b) = (axis("transpose", a, self.rank())?, axis("transpose", b, self.rank())?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Concatenates tensors along `axis`; all other dimensions must agree.
    pub fn cat(xs: &[&Tensor], axis_: isize) -> Result<Tensor> {
        let _timer = crate::profile::scope("cat", "forward");
        let first = xs
            .first()
            .ok_or_else(|| shape_err("cat", "no tensors to concatenate"))?;
        let a = axis("cat", axis_, first.rank())?;
        let mut shape = first.shape().to_vec();
        shape[a] = 0;
        for x in xs {
            let ok = x.rank() == first.rank() && (0..x.rank()).all(|i| i == a || x.shape()[i] == first.shape()[i]);
            if !ok {
                let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
                return Err(shape_err("cat", format!("shapes {shapes:?} differ outside axis {a}")));
            }
            shape[a] += x.shape()[a];
        }
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a + 1..].iter().product();
        let mut out = crate::buffers::uninit(numel(&shape)); // every block copied below
        let datas: Vec<_> = xs.iter().map(|x| x.data()).collect();
        let mut at = 0;
        for o in 0..outer {
            for (x, d) in xs.iter().zip(&datas) {
                let len = x.shape()[a] * inner;
                out[at..at + len].copy_from_slice(&d[o * len..(o + 1) * len]);
                at += len;
            }
        }
        drop(datas);
        let owned: Vec<Tensor> = xs.iter().map(|&x| x.clone()).collect();
        Ok(Tensor::from_op(out, shape, xs, || {
            Box::new(ConcatBackward { xs: owned, axis: a })
        }))
    }

    /// Elements `start .. start + len` along `axis`. Copies.
    pub fn narrow(&self, axis_: isize, start: usize, len: usize) -> Result<Tensor> {
        let _timer = crate::profile::scope("narrow", "forward");
        let a = axis("narrow", axis_, self.rank())?;
        let size = self.shape()[a];
        if start + len > size {
            return Err(shape_err(
                "narrow",
                format!("range {start}..{} exceeds axis {a} of {:?}", start + len, self.shape()),
            ));
        }
        let outer: usize = self.shape()[..a].iter().product();
        let inner: usize = self.shape()[a + 1..].iter().product();
        let data = self.data();
        let mut out = crate::buffers::uninit(outer * len * inner); // every block copied below
        for (o, dst) in out.chunks_exact_mut((len * inner).max(1)).enumerate() {
            dst.copy_from_slice(&data[(o * size + start) * inner..(o * size + start + len) * inner]);
        }
        let mut shape = self.shape().to_vec();
        shape[a] = len;
        Ok(Tensor::from_op(out, shape, &[self], || {
            Box::new(NarrowBackward {
                x: self.clone(),
                axis: a,
                start,
            })
        }))
    }

    /// Repeats along dimensions of size 1 (and new leading ones) to `shape`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let _timer = crate::profile::scope("broadcast_to", "forward");
        if broadcast_shape(self.shape(), shape).as_deref() != Some(shape) {
            return Err(shape_err(
                "broadcast_to",
                format!("cannot broadcast {:?} to {shape:?}", self.shape()),
            ));
        }
        let out = expand(&self.data(), self.shape(), shape);
        Ok(Tensor::from_op(out, shape.to_vec(), &[self], || {
            Box::new(BroadcastBackward { x: self.clone() })
        }))
    }

    /// Picks rows along the token axis: `self (B, N, D)`, `idx (B, K)` with
    /// values below `N` → `(B, K, D)`, `out[b, k] = self[b, idx[b, k]]`.
    /// MAE's `torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, D))`.
    pub fn gather_rows(&self, idx: &[usize], k: usize) -> Result<Tensor> {
        let _timer = crate::profile::scope("gather_rows", "forward");
        let [b, n, d] = *self.shape() else {
            return Err(shape_err(
                "gather_rows",
                format!("expects (B, N, D), got {:?}", self.shape()),
            ));
        };
        check_rows("gather_rows", b, n, idx, k)?;
        let out = gather(&self.data(), idx, b, n, k, d);
        Ok(Tensor::from_op(out, vec![b, k, d], &[self], || {
            Box::new(GatherBackward {
                x: self.clone(),
                idx: idx.to_vec(),
            })
        }))
    }

    /// The inverse placement: `self (B, K, D)` → `(B, N, D)` with
    /// `out[b, idx[b, k]] = self[b, k]` and zeros in rows no index names
    /// (indices must be distinct per sample for this to be a permutation).
    pub fn scatter_rows(&self, idx: &[usize], n: usize) -> Result<Tensor> {
        let _timer = crate::profile::scope("scatter_rows", "forward");
        let [b, k, d] = *self.shape() else {
            return Err(shape_err(
                "scatter_rows",
                format!("expects (B, K, D), got {:?}", self.shape()),
            ));
        };
        check_rows("scatter_rows", b, n, idx, k)?;
        let mut out = crate::buffers::zeroed(b * n * d);
        scatter_add(&mut out, &self.data(), idx, b, n, k, d);
        Ok(Tensor::from_op(out, vec![b, n, d], &[self], || {
            Box::new(ScatterBackward {
                y: self.clone(),
                idx: idx.to_vec(),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::new((0..numel(shape)).map(|v| v as f32).collect(), shape).unwrap()
    }

    #[test]
    fn reshape_shares_storage_and_permute_reorders() {
        let x = iota(&[2, 3]);
        let r = x.reshape(&[3, -1]).unwrap();
        assert!(r.same_storage(&x));
        assert_eq!(r.shape(), &[3, 2]);
        let t = x.transpose(0, 1).unwrap();
        assert_eq!(t.to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let y = iota(&[2, 3, 4]).permute(&[2, 0, 1]).unwrap();
        assert_eq!(y.shape(), &[4, 2, 3]);
        assert_eq!(y.to_vec()[1], 4.0); // (0, 0, 1) ← x(0, 1, 0)
        assert!(x.permute(&[0, 0]).is_err());
    }

    #[test]
    fn cat_and_narrow_invert_each_other() {
        let a = iota(&[2, 1, 3]);
        let b = iota(&[2, 2, 3]);
        let c = Tensor::cat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape(), &[2, 3, 3]);
        assert_eq!(c.narrow(1, 0, 1).unwrap().to_vec(), a.to_vec());
        assert_eq!(c.narrow(1, 1, 2).unwrap().to_vec(), b.to_vec());
        assert!(Tensor::cat(&[&a, &iota(&[3, 1, 3])], 1).is_err());
        assert!(c.narrow(1, 2, 2).is_err());
    }

    #[test]
    fn gather_then_scatter_restores_kept_rows() {
        let x = iota(&[2, 4, 2]);
        let idx = [3, 1, 0, 2];
        let g = x.gather_rows(&idx, 2).unwrap();
        assert_eq!(g.to_vec(), vec![6.0, 7.0, 2.0, 3.0, 8.0, 9.0, 12.0, 13.0]);
        let s = g.scatter_rows(&idx, 4).unwrap();
        assert_eq!(
            s.to_vec(),
            vec![
                0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 12.0, 13.0, 0.0, 0.0
            ]
        );
        let e = x.gather_rows(&[0, 4, 0, 0], 2).unwrap_err();
        assert!(e.to_string().contains("index 4"), "{e}");
    }

    #[test]
    fn broadcast_to_repeats() {
        let x = iota(&[1, 2]);
        assert_eq!(
            x.broadcast_to(&[3, 1, 2]).unwrap().to_vec(),
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        );
        assert!(x.broadcast_to(&[3]).is_err());
    }
}
