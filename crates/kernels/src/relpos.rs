//! Relative position bias: a learned table of one value per (relative offset,
//! head), gathered into an additive bias on the attention logits
//! ([`crate::attention::AttnBias`]). BEiT, SimMIM's ViT and Swin use it in
//! place of (or besides) absolute positional embeddings.
//!
//! Dims: `T` table rows (relative offsets), `H` heads, `G` groups (images or
//! windows with their own token sets), `N` tokens.
//!
//! ```text
//! table (T, H)          table[t, h]: head h's bias for offset t
//! index (G, N, N)       which row query i and key j of group g use
//! out   (G, H, N, N)    out[g, h, i, j] = table[index[g, i, j], h]
//!
//! backward: dtable[t, h] += Σ_{g, i, j : index[g, i, j] = t} dout[g, h, i, j]
//! ```
//! The index of a `Gh × Gw` grid ([`grid_index`]) numbers the offset
//! `(Δr, Δc) = (r_i − r_j, c_i − c_j)` as `(Δr + Gh − 1)·(2Gw − 1) + Δc + Gw − 1`,
//! so `T = (2Gh − 1)(2Gw − 1)`; with a \[CLS\] token first (BEiT), three more
//! rows hold \[CLS\]→token, token→\[CLS\] and \[CLS\]→\[CLS\].
//!
//! The gather runs one rayon task per `(g, h)` block; the backward one task
//! per head (column `h` of `dtable` is that task's alone), each summing its
//! `(g, i, j)` in order, so the result never depends on the thread count.

use crate::GradOut;
use crate::par::SendPtr;
use rayon::prelude::*;

/// Gather geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelPosDims {
    /// Table rows.
    pub t: usize,
    pub h: usize,
    pub g: usize,
    pub n: usize,
}

impl RelPosDims {
    fn check(&self, table: usize, index: &[u32], out: usize, what: &str) {
        let RelPosDims { t, h, g, n } = *self;
        assert_eq!(table, t * h, "{what}: table has {table} values, want (T {t}, H {h})");
        assert_eq!(
            index.len(),
            g * n * n,
            "{what}: index has {} entries, want (G {g}, N {n}, N {n})",
            index.len()
        );
        assert_eq!(
            out,
            g * h * n * n,
            "{what}: bias has {out} values, want (G {g}, H {h}, N {n}, N {n})"
        );
        if let Some(&bad) = index.iter().find(|&&i| i as usize >= t) {
            panic!("{what}: index {bad} is outside the table's {t} rows");
        }
    }
}

/// Table rows of a `Gh × Gw` grid's offsets, plus 3 with a \[CLS\] token.
pub fn table_rows(grid: [usize; 2], cls: bool) -> usize {
    (2 * grid[0] - 1) * (2 * grid[1] - 1) + if cls { 3 } else { 0 }
}

/// The `(N, N)` index of a `Gh × Gw` grid of tokens in row-major order,
/// `N = Gh·Gw`, preceded by a \[CLS\] token when `cls` (`N = 1 + Gh·Gw`;
/// rows `T−3` for \[CLS\] as query, `T−2` for \[CLS\] as key, `T−1` for both,
/// as BEiT's `relative_position_index`).
pub fn grid_index(grid: [usize; 2], cls: bool) -> Vec<u32> {
    let [gh, gw] = grid;
    let l = gh * gw;
    let off = usize::from(cls);
    let n = l + off;
    let t = table_rows(grid, cls);
    let mut index = vec![0u32; n * n];
    for i in 0..l {
        for j in 0..l {
            let (ri, ci, rj, cj) = (i / gw, i % gw, j / gw, j % gw);
            let row = (ri + gh - 1 - rj) * (2 * gw - 1) + (ci + gw - 1 - cj);
            index[(i + off) * n + j + off] = row as u32;
        }
    }
    if cls {
        for k in 0..n {
            index[k] = (t - 3) as u32; // [CLS] attends to token k
            index[k * n] = (t - 2) as u32; // token k attends to [CLS]
        }
        index[0] = (t - 1) as u32;
    }
    index
}

/// `out (G, H, N, N) = table[index]` (see the module documentation).
pub fn gather(out: &mut [f32], table: &[f32], index: &[u32], dims: RelPosDims) {
    dims.check(table.len(), index, out.len(), "relpos::gather");
    let (h, nn) = (dims.h, dims.n * dims.n);
    if nn == 0 {
        return;
    }
    out.par_chunks_mut(nn).enumerate().for_each(|(gh, block)| {
        let (g, hi) = (gh / h, gh % h);
        for (o, &t) in block.iter_mut().zip(&index[g * nn..][..nn]) {
            *o = table[t as usize * h + hi];
        }
    });
}

/// `dtable (T, H)` (overwritten or accumulated) from `dout (G, H, N, N)`.
pub fn backward(dtable: GradOut, dout: &[f32], index: &[u32], dims: RelPosDims) {
    let add = dtable.add;
    let dtable = dtable.data;
    dims.check(dtable.len(), index, dout.len(), "relpos::backward");
    let RelPosDims { h, g, n, .. } = dims;
    let nn = n * n;
    if !add {
        dtable.fill(0.0);
    }
    let ptr = SendPtr(dtable.as_mut_ptr());
    (0..h).into_par_iter().for_each(|hi| {
        for gi in 0..g {
            let grad = &dout[(gi * h + hi) * nn..][..nn];
            for (&t, &v) in index[gi * nn..][..nn].iter().zip(grad) {
                // SAFETY: element (t, hi) lies in `dtable` (indices checked
                // above), and column `hi` is written by this task only.
                unsafe { *ptr.get().add(t as usize * h + hi) += v };
            }
        }
    });
}

/// The plain loops, in f64.
pub mod reference {
    use super::RelPosDims;

    /// `out = table[index]`.
    pub fn gather(out: &mut [f32], table: &[f32], index: &[u32], dims: RelPosDims) {
        let RelPosDims { h, g, n, .. } = dims;
        for gi in 0..g {
            for hi in 0..h {
                for i in 0..n {
                    for j in 0..n {
                        let t = index[(gi * n + i) * n + j] as usize;
                        out[((gi * h + hi) * n + i) * n + j] = table[t * h + hi];
                    }
                }
            }
        }
    }

    /// `dtable += scatter(dout)`.
    pub fn backward(dtable: &mut [f32], dout: &[f32], index: &[u32], dims: RelPosDims) {
        let RelPosDims { t, h, g, n } = dims;
        let mut acc = vec![0f64; t * h];
        for gi in 0..g {
            for hi in 0..h {
                for i in 0..n {
                    for j in 0..n {
                        let row = index[(gi * n + i) * n + j] as usize;
                        acc[row * h + hi] += dout[((gi * h + hi) * n + i) * n + j] as f64;
                    }
                }
            }
        }
        for (d, a) in dtable.iter_mut().zip(acc) {
            *d += a as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random_vec};

    /// A random index of `(G, N, N)` into `t` rows.
    fn random_index(len: usize, t: usize, seed: u64) -> Vec<u32> {
        random_vec(len, seed)
            .iter()
            .map(|v| (((v + 1.0) * 0.5 * t as f32) as usize).min(t - 1) as u32)
            .collect()
    }

    #[test]
    fn gather_and_backward_match_reference() {
        for (s, (t, h, g, n)) in [
            (1, 1, 1, 1),
            (7, 3, 2, 5),
            (52, 4, 3, 17),
            (228, 12, 1, 50),
            (9, 2, 5, 3),
        ]
        .into_iter()
        .enumerate()
        {
            let dims = RelPosDims { t, h, g, n };
            let table = random_vec(t * h, s as u64);
            let index = random_index(g * n * n, t, 10 + s as u64);
            let mut out = vec![f32::NAN; g * h * n * n];
            gather(&mut out, &table, &index, dims);
            let mut want = vec![0.0; out.len()];
            reference::gather(&mut want, &table, &index, dims);
            assert_eq!(out, want, "gather {dims:?}");

            let dout = random_vec(out.len(), 20 + s as u64);
            let g0 = random_vec(t * h, 30 + s as u64);
            let (mut fast, mut slow) = (g0.clone(), g0);
            backward(GradOut::add(&mut fast), &dout, &index, dims);
            reference::backward(&mut slow, &dout, &index, dims);
            assert_close(&fast, &slow, 1e-5, &format!("backward add {dims:?}"));
            let mut over = vec![f32::NAN; t * h];
            backward(GradOut::overwrite(&mut over), &dout, &index, dims);
            let mut zero = vec![0.0; t * h];
            reference::backward(&mut zero, &dout, &index, dims);
            assert_close(&over, &zero, 1e-5, &format!("backward overwrite {dims:?}"));
        }
    }

    /// BEiT's index of a 2×2 grid with \[CLS\], written out by hand: offsets
    /// (Δr, Δc) ∈ {−1, 0, 1}² number (Δr + 1)·3 + Δc + 1, and rows 9, 10, 11
    /// are \[CLS\]→token, token→\[CLS\], \[CLS\]→\[CLS\].
    #[test]
    fn grid_index_is_beits() {
        assert_eq!(table_rows([2, 2], true), 12);
        #[rustfmt::skip]
        let want: Vec<u32> = vec![
            11,  9,  9,  9,  9,
            10,  4,  3,  1,  0,
            10,  5,  4,  2,  1,
            10,  7,  6,  4,  3,
            10,  8,  7,  5,  4,
        ];
        assert_eq!(grid_index([2, 2], true), want);
        // Without [CLS] (Swin's): the inner 4×4 block.
        let inner: Vec<u32> = (1..5).flat_map(|i| want[i * 5 + 1..i * 5 + 5].to_vec()).collect();
        assert_eq!(grid_index([2, 2], false), inner);
        // A non-square grid: every offset pair maps to a distinct row, and
        // equal offsets to equal rows.
        let (gh, gw) = (3, 5);
        let idx = grid_index([gh, gw], false);
        let l = gh * gw;
        for i in 0..l {
            for j in 0..l {
                let dr = (i / gw) as isize - (j / gw) as isize;
                let dc = (i % gw) as isize - (j % gw) as isize;
                let row = (dr + gh as isize - 1) * (2 * gw as isize - 1) + dc + gw as isize - 1;
                assert_eq!(idx[i * l + j] as isize, row);
            }
        }
        assert_eq!(*idx.iter().max().unwrap() as usize, table_rows([gh, gw], false) - 1);
    }

    #[test]
    fn independent_of_thread_count() {
        let dims = RelPosDims {
            t: 100,
            h: 6,
            g: 4,
            n: 33,
        };
        let index = random_index(dims.g * dims.n * dims.n, dims.t, 1);
        let dout = random_vec(dims.g * dims.h * dims.n * dims.n, 2);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut d = vec![0.0; dims.t * dims.h];
                backward(GradOut::overwrite(&mut d), &dout, &index, dims);
                d
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    #[should_panic(expected = "outside the table")]
    fn an_index_past_the_table_is_refused() {
        let dims = RelPosDims { t: 3, h: 1, g: 1, n: 1 };
        gather(&mut [0.0], &[1.0, 2.0, 3.0], &[3], dims);
    }
}
