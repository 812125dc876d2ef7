//! Swin Transformer layouts: window partition and reverse with the cyclic
//! shift folded in, patch merging's 2×2 gather, and the shifted windows'
//! attention mask.
//!
//! Dims: `B` batch, `H × W` token grid, `C` channels, `w` window side, `s`
//! shift, `nW = (H/w)(W/w)` windows per image, `N = w²` tokens per window.
//!
//! ```text
//! x        (B, H, W, C)         channels-last token grid
//! windows  (B·nW, N, C)         window (b, bh, bw) in row-major order, its
//!                               tokens row-major: token (i, j) of the window is
//!                               x[b, (bh·w + i + s) mod H, (bw·w + j + s) mod W]
//!                               (Swin's torch.roll(x, (−s, −s)) then partition)
//! merged   (B, H/2, W/2, 4C)    Swin's PatchMerging concat: for output (r, c)
//!                               the inputs (2r, 2c), (2r+1, 2c), (2r, 2c+1),
//!                               (2r+1, 2c+1), C channels each
//! ```
//! Every layout here moves whole rows of `C` values by a permutation of the
//! `B·H·W` token positions: [`partition_index`] and [`merge_index`] build it
//! (`out row r` ← `in row index[r]`), [`gather_rows`] applies it and
//! [`scatter_rows`] its inverse (the backward of a gather, and the reverse of
//! a partition). Rows are copied in parallel; a permutation writes each
//! output row once, so the result never depends on the thread count.

use rayon::prelude::*;

/// Window geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowDims {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Window side.
    pub window: usize,
    /// Cyclic shift (0 for regular windows, `window / 2` for shifted ones).
    pub shift: usize,
}

impl WindowDims {
    /// Panics unless the window divides the grid and the shift is below it.
    pub fn new(b: usize, h: usize, w: usize, c: usize, window: usize, shift: usize) -> Self {
        assert!(
            window > 0 && h.is_multiple_of(window) && w.is_multiple_of(window),
            "WindowDims: window {window} does not divide the {h}x{w} grid"
        );
        assert!(
            shift < window,
            "WindowDims: shift {shift} is not below the window {window}"
        );
        WindowDims {
            b,
            h,
            w,
            c,
            window,
            shift,
        }
    }
    /// Windows per image.
    pub fn windows(&self) -> usize {
        (self.h / self.window) * (self.w / self.window)
    }
}

/// The source row (in `x`'s `B·H·W` rows) of every row of `windows`.
pub fn partition_index(d: WindowDims) -> Vec<usize> {
    let (ws, nw_col) = (d.window, d.w / d.window);
    let mut index = Vec::with_capacity(d.b * d.h * d.w);
    for b in 0..d.b {
        for win in 0..d.windows() {
            let (bh, bw) = (win / nw_col, win % nw_col);
            for i in 0..ws {
                for j in 0..ws {
                    let r = (bh * ws + i + d.shift) % d.h;
                    let c = (bw * ws + j + d.shift) % d.w;
                    index.push((b * d.h + r) * d.w + c);
                }
            }
        }
    }
    index
}

/// The source row of every row of patch merging's output (as `4` rows of
/// `C` per merged token, in Swin's order), for a `(B, H, W, C)` grid.
pub fn merge_index(b: usize, h: usize, w: usize) -> Vec<usize> {
    assert!(
        h.is_multiple_of(2) && w.is_multiple_of(2),
        "merge_index: the {h}x{w} grid is not even"
    );
    let mut index = Vec::with_capacity(b * h * w);
    for bi in 0..b {
        for r in 0..h / 2 {
            for c in 0..w / 2 {
                for (dr, dc) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    index.push((bi * h + 2 * r + dr) * w + 2 * c + dc);
                }
            }
        }
    }
    index
}

fn check(out: usize, x: usize, index: &[usize], c: usize, what: &str) {
    assert_eq!(
        out,
        index.len() * c,
        "{what}: output has {out} values, want {} rows of {c}",
        index.len()
    );
    assert_eq!(
        x,
        index.len() * c,
        "{what}: input has {x} values, want {} rows of {c}",
        index.len()
    );
    if let Some(&bad) = index.iter().find(|&&i| i >= index.len()) {
        panic!("{what}: row {bad} is outside the {} rows", index.len());
    }
}

/// `out[r] = x[index[r]]`, rows of `c` values.
pub fn gather_rows(out: &mut [f32], x: &[f32], index: &[usize], c: usize) {
    check(out.len(), x.len(), index, c, "window::gather_rows");
    if c == 0 {
        return;
    }
    out.par_chunks_mut(c)
        .zip(index.par_iter())
        .for_each(|(row, &i)| row.copy_from_slice(&x[i * c..(i + 1) * c]));
}

/// `out[index[r]] = y[r]`: the inverse of [`gather_rows`] for a permutation
/// `index` (every row of `out` is written once).
pub fn scatter_rows(out: &mut [f32], y: &[f32], index: &[usize], c: usize) {
    check(out.len(), y.len(), index, c, "window::scatter_rows");
    if c == 0 {
        return;
    }
    // The inverse permutation, so each output row is written by one task.
    let mut inverse = vec![usize::MAX; index.len()];
    for (r, &i) in index.iter().enumerate() {
        assert!(inverse[i] == usize::MAX, "window::scatter_rows: row {i} is named twice");
        inverse[i] = r;
    }
    out.par_chunks_mut(c)
        .zip(inverse.par_iter())
        .for_each(|(row, &r)| row.copy_from_slice(&y[r * c..(r + 1) * c]));
}

/// Swin's attention mask of shifted windows, `(nW, N, N)`: 0 where query and
/// key come from the same region of the rolled grid, −100 where the roll
/// brought them together from opposite edges (Swin's value: after the
/// softmax such pairs weigh `e^−100`, nothing). All zeros when `shift` is 0.
///
/// The regions: along each axis, `[0, H − w)`, `[H − w, H − s)` and
/// `[H − s, H)` of the rolled grid.
pub fn shifted_window_mask(h: usize, w: usize, window: usize, shift: usize) -> Vec<f32> {
    let d = WindowDims::new(1, h, w, 1, window, 0);
    let n = window * window;
    let mut mask = vec![0f32; d.windows() * n * n];
    if shift == 0 {
        return mask;
    }
    let band = |p: usize, len: usize| {
        if p < len - window {
            0
        } else if p < len - shift {
            1
        } else {
            2
        }
    };
    let nw_col = w / window;
    for win in 0..d.windows() {
        let (bh, bw) = (win / nw_col, win % nw_col);
        let region = |t: usize| {
            let (r, c) = (bh * window + t / window, bw * window + t % window);
            3 * band(r, h) + band(c, w)
        };
        for i in 0..n {
            for j in 0..n {
                if region(i) != region(j) {
                    mask[(win * n + i) * n + j] = -100.0;
                }
            }
        }
    }
    mask
}

/// Plain loops from the definitions, for the tests.
pub mod reference {
    use super::WindowDims;

    /// `windows (B·nW, N, C)` from `x (B, H, W, C)`, rolled by `−shift`.
    pub fn partition(x: &[f32], d: WindowDims) -> Vec<f32> {
        let (ws, c) = (d.window, d.c);
        let mut out = Vec::new();
        for b in 0..d.b {
            for bh in 0..d.h / ws {
                for bw in 0..d.w / ws {
                    for i in 0..ws {
                        for j in 0..ws {
                            // torch.roll(x, −s): rolled[r][c] = x[(r + s) mod H][(c + s) mod W].
                            let r = (bh * ws + i + d.shift) % d.h;
                            let col = (bw * ws + j + d.shift) % d.w;
                            let at = ((b * d.h + r) * d.w + col) * c;
                            out.extend_from_slice(&x[at..at + c]);
                        }
                    }
                }
            }
        }
        out
    }

    /// Swin's `PatchMerging` concat: `x (B, H, W, C)` → `(B, H/2, W/2, 4C)`.
    pub fn merge(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
        let at = |bi: usize, r: usize, col: usize| &x[((bi * h + r) * w + col) * c..][..c];
        let mut out = Vec::new();
        for bi in 0..b {
            for r in 0..h / 2 {
                for col in 0..w / 2 {
                    out.extend_from_slice(at(bi, 2 * r, 2 * col)); // x0 = x[0::2, 0::2]
                    out.extend_from_slice(at(bi, 2 * r + 1, 2 * col)); // x1 = x[1::2, 0::2]
                    out.extend_from_slice(at(bi, 2 * r, 2 * col + 1)); // x2 = x[0::2, 1::2]
                    out.extend_from_slice(at(bi, 2 * r + 1, 2 * col + 1)); // x3 = x[1::2, 1::2]
                }
            }
        }
        out
    }

    /// Swin's mask, built as its code does: label the rolled grid's nine
    /// regions, partition the labels into windows, compare labels.
    pub fn shifted_window_mask(h: usize, w: usize, window: usize, shift: usize) -> Vec<f32> {
        let mut labels = vec![0f32; h * w];
        let bounds = |len: usize| [(0, len - window), (len - window, len - shift), (len - shift, len)];
        let mut cnt = 0.0;
        for (r0, r1) in bounds(h) {
            for (c0, c1) in bounds(w) {
                for r in r0..r1 {
                    for c in c0..c1 {
                        labels[r * w + c] = cnt;
                    }
                }
                cnt += 1.0;
            }
        }
        // Partition the (unrolled) label grid into windows.
        let win = partition(&labels, WindowDims::new(1, h, w, 1, window, 0));
        let n = window * window;
        let mut mask = Vec::new();
        for wl in win.chunks(n) {
            for i in 0..n {
                for j in 0..n {
                    mask.push(if wl[i] == wl[j] { 0.0 } else { -100.0 });
                }
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random_vec;

    #[test]
    fn partition_and_merge_match_the_definitions() {
        for (b, h, w, c, window, shift) in [
            (1, 4, 4, 1, 2, 0),
            (2, 6, 9, 3, 3, 1),
            (1, 14, 14, 5, 7, 3),
            (3, 8, 4, 2, 4, 2),
        ] {
            let d = WindowDims::new(b, h, w, c, window, shift);
            let x = random_vec(b * h * w * c, (h * w) as u64);
            let idx = partition_index(d);
            let mut win = vec![f32::NAN; x.len()];
            gather_rows(&mut win, &x, &idx, c);
            assert_eq!(win, reference::partition(&x, d), "{d:?}");
            // The reverse (a scatter) brings x back exactly.
            let mut back = vec![f32::NAN; x.len()];
            scatter_rows(&mut back, &win, &idx, c);
            assert_eq!(back, x, "{d:?}");
            if h % 2 == 0 && w % 2 == 0 {
                let m = merge_index(b, h, w);
                let mut merged = vec![f32::NAN; x.len()];
                gather_rows(&mut merged, &x, &m, c);
                assert_eq!(merged, reference::merge(&x, b, h, w, c), "merge {d:?}");
            }
        }
    }

    /// Swin-T's first stage at 224 (56×56 tokens, window 7, shift 3) and
    /// small grids: the region construction matches Swin's labelling.
    #[test]
    fn shifted_window_mask_matches_swins_labels() {
        for (h, w, window, shift) in [(4, 4, 2, 1), (8, 8, 4, 2), (6, 9, 3, 1), (56, 56, 7, 3)] {
            let m = shifted_window_mask(h, w, window, shift);
            assert_eq!(
                m,
                reference::shifted_window_mask(h, w, window, shift),
                "{h}x{w} w{window} s{shift}"
            );
        }
        assert!(shifted_window_mask(8, 8, 4, 0).iter().all(|&v| v == 0.0));
        // Interior windows are never masked; the last window of a row is.
        let m = shifted_window_mask(8, 8, 4, 2);
        let n = 16;
        assert!(m[..n * n].iter().all(|&v| v == 0.0));
        assert!(m[n * n..2 * n * n].iter().any(|&v| v == -100.0));
    }

    #[test]
    fn independent_of_thread_count() {
        let d = WindowDims::new(4, 28, 28, 16, 7, 3);
        let x = random_vec(d.b * d.h * d.w * d.c, 3);
        let idx = partition_index(d);
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| {
                let mut out = vec![0.0; x.len()];
                gather_rows(&mut out, &x, &idx, d.c);
                out
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    #[should_panic(expected = "does not divide")]
    fn a_window_that_does_not_divide_the_grid_is_refused() {
        WindowDims::new(1, 10, 10, 1, 4, 0);
    }
}
