//! Cutting images into patches, and the patch embedding (a convolution whose
//! kernel equals its stride).
//!
//! Dims: `B` batch, `C` channels, `H × W` image, `p` patch side,
//! `Hp = H/p`, `Wp = W/p`, `L = Hp·Wp` patches (row-major over the grid),
//! `P = p·p·C` values per patch, `D` embedding width.
//!
//! Two orders of the values inside a patch matter, and they differ:
//!
//! * **MAE's patchify** (the reconstruction target): `(row, column, channel)`,
//!   i.e. `x[n, l, (i·p + j)·C + c] = img[n, c, hp·p + i, wp·p + j]`
//!   (`einsum('nchpwq->nhwpqc')` in the official code).
//! * **The convolution's** (the patch embedding): `(channel, row, column)`,
//!   matching a PyTorch conv weight `(D, C, p, p)` flattened to `(D, C·p·p)`.
//!
//! The embedding is `out (B·L, D) = cols (B·L, C·p·p) · weightᵀ + bias`, where
//! `cols` holds each patch in conv order ("im2col" for a stride = kernel conv).

use crate::GradOut;
use crate::gemm::{MatMut, MatRef, Precision, gemm};
use crate::linear::{self, LinearDims, LinearGrads};
use rayon::prelude::*;

/// Image and patch geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchDims {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub p: usize,
}

impl PatchDims {
    /// Checks that the patch side divides both image sides.
    pub fn new(b: usize, c: usize, h: usize, w: usize, p: usize) -> Self {
        assert!(
            p > 0 && h.is_multiple_of(p) && w.is_multiple_of(p),
            "PatchDims: patch {p} does not divide image {h}x{w}"
        );
        PatchDims { b, c, h, w, p }
    }
    /// Patches per column of the grid.
    pub fn hp(&self) -> usize {
        self.h / self.p
    }
    /// Patches per row of the grid.
    pub fn wp(&self) -> usize {
        self.w / self.p
    }
    /// Patches per image.
    pub fn l(&self) -> usize {
        self.hp() * self.wp()
    }
    /// Values per patch, `p·p·C`.
    pub fn patch_len(&self) -> usize {
        self.p * self.p * self.c
    }
    /// Values per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
}

fn check(name: &str, what: &str, len: usize, want: usize) {
    assert_eq!(len, want, "patch::{name}: {what} has {len} values, want {want}");
}

/// MAE's patchify: `img (B, C, H, W)` → `out (B, L, p·p·C)`, patch values in
/// (row, column, channel) order.
pub fn patchify(out: &mut [f32], img: &[f32], d: PatchDims) {
    check("patchify", "out (B, L, P)", out.len(), d.b * d.l() * d.patch_len());
    check("patchify", "img (B, C, H, W)", img.len(), d.b * d.image_len());
    if out.is_empty() {
        return;
    }
    // One task per image row of patches: (hp) → p·Wp·p·C contiguous outputs.
    let row_len = d.wp() * d.patch_len();
    out.par_chunks_mut(row_len).enumerate().for_each(|(t, dst)| {
        let (n, hp) = (t / d.hp(), t % d.hp());
        let image = &img[n * d.image_len()..(n + 1) * d.image_len()];
        for wp in 0..d.wp() {
            let patch = &mut dst[wp * d.patch_len()..(wp + 1) * d.patch_len()];
            for i in 0..d.p {
                for j in 0..d.p {
                    for c in 0..d.c {
                        patch[(i * d.p + j) * d.c + c] = image[(c * d.h + hp * d.p + i) * d.w + wp * d.p + j];
                    }
                }
            }
        }
    });
}

/// Inverse of [`patchify`]: `patches (B, L, p·p·C)` → `img (B, C, H, W)`.
pub fn unpatchify(img: &mut [f32], patches: &[f32], d: PatchDims) {
    check("unpatchify", "img (B, C, H, W)", img.len(), d.b * d.image_len());
    check(
        "unpatchify",
        "patches (B, L, P)",
        patches.len(),
        d.b * d.l() * d.patch_len(),
    );
    if img.is_empty() {
        return;
    }
    // One task per image plane row: (n, c, y) → W outputs.
    img.par_chunks_mut(d.w).enumerate().for_each(|(t, row)| {
        let y = t % d.h;
        let c = (t / d.h) % d.c;
        let n = t / (d.h * d.c);
        let (hp, i) = (y / d.p, y % d.p);
        for (x, v) in row.iter_mut().enumerate() {
            let (wp, j) = (x / d.p, x % d.p);
            let l = hp * d.wp() + wp;
            *v = patches[(n * d.l() + l) * d.patch_len() + (i * d.p + j) * d.c + c];
        }
    });
}

/// Patches in convolution order: `img (B, C, H, W)` → `cols (B·L, C·p·p)`.
pub fn im2col(cols: &mut [f32], img: &[f32], d: PatchDims) {
    check("im2col", "cols (B·L, C·p·p)", cols.len(), d.b * d.l() * d.patch_len());
    check("im2col", "img (B, C, H, W)", img.len(), d.b * d.image_len());
    if cols.is_empty() {
        return;
    }
    cols.par_chunks_mut(d.patch_len()).enumerate().for_each(|(t, patch)| {
        let (n, l) = (t / d.l(), t % d.l());
        let (hp, wp) = (l / d.wp(), l % d.wp());
        for c in 0..d.c {
            for i in 0..d.p {
                let src = ((n * d.c + c) * d.h + hp * d.p + i) * d.w + wp * d.p;
                let dst = (c * d.p + i) * d.p;
                patch[dst..dst + d.p].copy_from_slice(&img[src..src + d.p]);
            }
        }
    });
}

/// Adjoint of [`im2col`]: `dimg (B, C, H, W) += scatter(dcols (B·L, C·p·p))`.
/// Patches do not overlap, so every image value receives exactly one term.
pub fn col2im_add(dimg: &mut [f32], dcols: &[f32], d: PatchDims) {
    check("col2im_add", "dimg (B, C, H, W)", dimg.len(), d.b * d.image_len());
    check(
        "col2im_add",
        "dcols (B·L, C·p·p)",
        dcols.len(),
        d.b * d.l() * d.patch_len(),
    );
    if dimg.is_empty() {
        return;
    }
    dimg.par_chunks_mut(d.w).enumerate().for_each(|(t, row)| {
        let y = t % d.h;
        let c = (t / d.h) % d.c;
        let n = t / (d.h * d.c);
        let (hp, i) = (y / d.p, y % d.p);
        for (x, v) in row.iter_mut().enumerate() {
            let (wp, j) = (x / d.p, x % d.p);
            let l = hp * d.wp() + wp;
            *v += dcols[(n * d.l() + l) * d.patch_len() + (c * d.p + i) * d.p + j];
        }
    });
}

/// The sizes of a patch embedding: the images and their patches, and the
/// embedding width `dim` (`D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedDims {
    pub patches: PatchDims,
    pub dim: usize,
}

/// The gradients [`embed_backward`] writes, each if asked for (see
/// [`GradOut`]): `dimg (B, C, H, W)`, `dweight (D, C, p, p)`, `dbias (D)`.
pub struct EmbedGrads<'a> {
    pub dimg: Option<GradOut<'a>>,
    pub dweight: Option<GradOut<'a>>,
    pub dbias: Option<GradOut<'a>>,
}

/// Patch embedding: `out (B, L, D) = conv(img, weight (D, C, p, p), stride p) + bias (D)`,
/// the product in `prec`.
///
/// Computed as im2col followed by one GEMM with the weight viewed as
/// `(D, C·p·p)`; `cols` is scratch of `B·L·C·p·p` values (the image's size).
pub fn embed_forward(
    prec: Precision,
    out: &mut [f32],
    cols: &mut [f32],
    img: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    dims: EmbedDims,
) {
    let EmbedDims { patches: d, dim } = dims;
    check("embed_forward", "out (B, L, D)", out.len(), d.b * d.l() * dim);
    im2col(cols, img, d);
    let dims = LinearDims {
        m: d.b * d.l(),
        k: d.patch_len(),
        n: dim,
    };
    linear::forward(prec, out, cols, weight, bias, dims);
}

/// Gradients of [`embed_forward`] ([`EmbedGrads`]). `cols` is scratch as in
/// the forward; it is recomputed from `img` rather than kept from the forward.
pub fn embed_backward(
    prec: Precision,
    grads: EmbedGrads,
    cols: &mut [f32],
    dout: &[f32],
    img: &[f32],
    weight: &[f32],
    dims: EmbedDims,
) {
    let EmbedDims { patches: d, dim } = dims;
    let EmbedGrads { dimg, dweight, dbias } = grads;
    let (m, k) = (d.b * d.l(), d.patch_len());
    im2col(cols, img, d);
    let grads = LinearGrads {
        dinp: None,
        dweight,
        dbias,
    };
    linear::backward(prec, grads, dout, cols, weight, LinearDims { m, k, n: dim });
    if let Some(dimg) = dimg {
        let dimg = if dimg.add {
            dimg.data
        } else {
            dimg.data.fill(0.0);
            dimg.data
        };
        // dcols (B·L, C·p·p) = dout (B·L, D) · weight (D, C·p·p), reusing the
        // scratch, then scattered back to pixels.
        gemm(
            prec,
            1.0,
            MatRef::row_major(dout, m, dim),
            MatRef::row_major(weight, dim, k),
            0.0,
            MatMut::row_major(cols, m, k),
        );
        col2im_add(dimg, cols, d);
    }
}

/// Direct index arithmetic, one value at a time.
pub mod reference {
    use super::PatchDims;

    /// MAE's patchify, element by element.
    pub fn patchify(out: &mut [f32], img: &[f32], d: PatchDims) {
        for n in 0..d.b {
            for hp in 0..d.hp() {
                for wp in 0..d.wp() {
                    for i in 0..d.p {
                        for j in 0..d.p {
                            for c in 0..d.c {
                                let l = hp * d.wp() + wp;
                                let o = (n * d.l() + l) * d.patch_len() + (i * d.p + j) * d.c + c;
                                out[o] = img[((n * d.c + c) * d.h + hp * d.p + i) * d.w + wp * d.p + j];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The convolution with kernel = stride = p, written as a convolution.
    pub fn embed_forward(out: &mut [f32], img: &[f32], weight: &[f32], bias: Option<&[f32]>, dims: super::EmbedDims) {
        let super::EmbedDims { patches: d, dim } = dims;
        for n in 0..d.b {
            for hp in 0..d.hp() {
                for wp in 0..d.wp() {
                    for o in 0..dim {
                        let mut acc = bias.map_or(0.0, |b| b[o]);
                        for c in 0..d.c {
                            for i in 0..d.p {
                                for j in 0..d.p {
                                    let x = img[((n * d.c + c) * d.h + hp * d.p + i) * d.w + wp * d.p + j];
                                    acc += x * weight[((o * d.c + c) * d.p + i) * d.p + j];
                                }
                            }
                        }
                        out[(n * d.l() + hp * d.wp() + wp) * dim + o] = acc;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, random_vec};

    fn shapes() -> Vec<PatchDims> {
        vec![
            PatchDims::new(1, 1, 1, 1, 1),
            PatchDims::new(2, 3, 6, 9, 3),
            PatchDims::new(3, 1, 28, 28, 4),
            PatchDims::new(2, 3, 32, 32, 4),
            PatchDims::new(1, 3, 14, 7, 7),
            PatchDims::new(2, 2, 34, 17, 17),
        ]
    }

    #[test]
    fn patchify_matches_reference_and_unpatchify_inverts_it() {
        for (s, d) in shapes().into_iter().enumerate() {
            let img = random_vec(d.b * d.image_len(), s as u64);
            let mut fast = vec![0.0; img.len()];
            let mut slow = vec![0.0; img.len()];
            patchify(&mut fast, &img, d);
            reference::patchify(&mut slow, &img, d);
            assert_eq!(fast, slow, "{d:?}");
            let mut back = vec![0.0; img.len()];
            unpatchify(&mut back, &fast, d);
            assert_eq!(back, img, "{d:?}");
        }
    }

    #[test]
    fn patchify_order_is_row_column_channel() {
        // 1 image, 2 channels, 2x4 pixels, patch 2: two patches.
        let d = PatchDims::new(1, 2, 2, 4, 2);
        // img[c][y][x] = 100c + 10y + x
        let img: Vec<f32> = (0..2)
            .flat_map(|c| (0..2).flat_map(move |y| (0..4).map(move |x| (100 * c + 10 * y + x) as f32)))
            .collect();
        let mut out = vec![0.0; 16];
        patchify(&mut out, &img, d);
        // Second patch (x in 2..4): (i, j, c) order.
        assert_eq!(&out[8..], &[2.0, 102.0, 3.0, 103.0, 12.0, 112.0, 13.0, 113.0]);
    }

    #[test]
    fn embedding_matches_direct_convolution() {
        for (s, d) in shapes().into_iter().enumerate() {
            for dim in [1usize, 7, 65] {
                let img = random_vec(d.b * d.image_len(), s as u64);
                let w = random_vec(dim * d.patch_len(), 100 + s as u64);
                let b = random_vec(dim, 200 + s as u64);
                let mut cols = vec![0.0; img.len()];
                let mut fast = vec![0.0; d.b * d.l() * dim];
                let dims = EmbedDims { patches: d, dim };
                embed_forward(Precision::F32, &mut fast, &mut cols, &img, &w, Some(&b), dims);
                let mut slow = vec![0.0; fast.len()];
                reference::embed_forward(&mut slow, &img, &w, Some(&b), dims);
                assert_close(&fast, &slow, 1e-4, "patch embed");
            }
        }
    }

    #[test]
    fn embedding_backward_is_the_adjoint() {
        // <dout, J·v> computed two ways: the forward applied to a perturbation,
        // and the backward's gradients dotted with the perturbation (linear op).
        for (s, d) in shapes().into_iter().enumerate() {
            let dim = 5;
            let img = random_vec(d.b * d.image_len(), s as u64);
            let w = random_vec(dim * d.patch_len(), 10 + s as u64);
            let dout = random_vec(d.b * d.l() * dim, 20 + s as u64);
            let (vi, vw, vb) = (random_vec(img.len(), 30), random_vec(w.len(), 40), random_vec(dim, 50));
            let mut cols = vec![0.0; img.len()];
            // The image's gradient overwritten (the buffer held NaN), the
            // parameters' accumulated onto zeros.
            let (mut di, mut dw, mut db) = (vec![f32::NAN; img.len()], vec![0.0; w.len()], vec![0.0; dim]);
            let grads = EmbedGrads {
                dimg: Some(GradOut::overwrite(&mut di)),
                dweight: Some(GradOut::add(&mut dw)),
                dbias: Some(GradOut::add(&mut db)),
            };
            let dims = EmbedDims { patches: d, dim };
            embed_backward(Precision::F32, grads, &mut cols, &dout, &img, &w, dims);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
            // out is bilinear in (img, w) plus bias: directional derivative along (vi, vw, vb).
            let mut o1 = vec![0.0; dout.len()];
            let mut o2 = vec![0.0; dout.len()];
            let mut o3 = vec![0.0; dout.len()];
            reference::embed_forward(&mut o1, &vi, &w, None, dims);
            reference::embed_forward(&mut o2, &img, &vw, None, dims);
            reference::embed_forward(&mut o3, &vec![0.0; img.len()], &w, Some(&vb), dims);
            let lhs = dot(&dout, &o1) + dot(&dout, &o2) + dot(&dout, &o3);
            let rhs = dot(&di, &vi) + dot(&dw, &vw) + dot(&db, &vb);
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "{d:?}: {lhs} vs {rhs}");
        }
    }
}
