//! Shape arithmetic: element counts, row-major strides, broadcasting, axes.

use crate::error::{Result, shape_err};

/// Number of elements of a shape (1 for a scalar `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major (C order) strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// NumPy broadcasting: align shapes on the right; each pair of dims must be
/// equal or contain a 1. `None` if they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() { 1 } else { a[i - (rank - a.len())] };
        let db = if i < rank - b.len() { 1 } else { b[i - (rank - b.len())] };
        out[i] = match (da, db) {
            _ if da == db => da,
            (1, d) | (d, 1) => d,
            _ => return None,
        };
    }
    Some(out)
}

/// Strides for reading a tensor of shape `from` as if it had the broadcast
/// shape `to`: 0 along every broadcast dimension.
pub fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<usize> {
    let own = strides(from);
    let pad = to.len() - from.len();
    (0..to.len())
        .map(|i| if i < pad || from[i - pad] == 1 { 0 } else { own[i - pad] })
        .collect()
}

/// Resolves a possibly negative axis (`-1` is the last) against a rank.
pub fn axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(shape_err(op, format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Visits every element of the broadcast shape `out` in row-major order,
/// calling `f(out_index, offset_a, offset_b)` with the offsets of the
/// corresponding elements of two inputs read through `sa` and `sb`
/// (see [`broadcast_strides`]).
pub fn for_each_broadcast(out: &[usize], sa: &[usize], sb: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let n = numel(out);
    if n == 0 {
        return;
    }
    if out.is_empty() {
        f(0, 0, 0);
        return;
    }
    let rank = out.len();
    let last = out[rank - 1];
    let (la, lb) = (sa[rank - 1], sb[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    let (mut oa, mut ob) = (0usize, 0usize);
    let mut o = 0;
    loop {
        for j in 0..last {
            f(o + j, oa + j * la, ob + j * lb);
        }
        o += last;
        // Advance the odometer over the leading dimensions.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < out[d] {
                break;
            }
            oa -= sa[d] * out[d];
            ob -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
}

/// Resolves a target shape that may contain one `-1` (inferred) for `numel` elements.
pub fn infer_shape(op: &'static str, from: &[usize], to: &[isize]) -> Result<Vec<usize>> {
    let n = numel(from);
    let mut inferred = None;
    let mut known = 1usize;
    for (i, &d) in to.iter().enumerate() {
        if d == -1 {
            if inferred.replace(i).is_some() {
                return Err(shape_err(op, format!("{to:?} has more than one -1")));
            }
        } else if d < 0 {
            return Err(shape_err(op, format!("{to:?} has a negative dimension")));
        } else {
            known *= d as usize;
        }
    }
    let mut out: Vec<usize> = to.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = inferred {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(shape_err(
                op,
                format!("cannot reshape {from:?} ({n} elements) into {to:?}"),
            ));
        }
        out[i] = n / known;
    }
    if numel(&out) != n {
        return Err(shape_err(
            op,
            format!("cannot reshape {from:?} ({n} elements) into {to:?}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_rules() {
        assert_eq!(broadcast_shape(&[2, 3], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shape(&[4, 1, 3], &[2, 1]), Some(vec![4, 2, 3]));
        assert_eq!(broadcast_shape(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shape(&[2, 3], &[2]), None);
        assert_eq!(broadcast_strides(&[2, 1], &[4, 2, 3]), vec![0, 1, 0]);
    }

    #[test]
    fn odometer_visits_every_element_with_right_offsets() {
        let out = [2, 3, 2];
        let sa = broadcast_strides(&[3, 1], &out);
        let sb = broadcast_strides(&[2, 1, 2], &out);
        let mut seen = vec![];
        for_each_broadcast(&out, &sa, &sb, |o, a, b| seen.push((o, a, b)));
        assert_eq!(seen.len(), 12);
        // Element (1, 2, 1): a = [2][0] → 2, b = [1][0][1] → 3.
        assert_eq!(seen[6 + 4 + 1], (11, 2, 3));
    }

    #[test]
    fn infer_one_dimension() {
        assert_eq!(infer_shape("t", &[2, 6], &[3, -1]).unwrap(), vec![3, 4]);
        assert!(infer_shape("t", &[2, 6], &[5, -1]).is_err());
        assert!(infer_shape("t", &[2, 6], &[-1, -1]).is_err());
    }
}
