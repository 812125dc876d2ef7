//! Positional embeddings: MAE's fixed 2-D sine-cosine table, and resizing a
//! table to another patch grid (a checkpoint used at another image size).
//!
//! Layout: `(1 + L, D)` rows, row 0 for the \[CLS\] token (zeros in the sin-cos
//! table), then the `L = Gh·Gw` patches in row-major grid order.

use crate::config::PosEmbedKind;

/// `(1 if cls) + Gh·Gw` rows of `dim` values, as MAE's
/// `get_2d_sincos_pos_embed(dim, grid, cls_token)` (generalised to
/// non-square grids).
///
/// For patch `(r, c)` the first `dim/2` values encode the column `c` and the
/// last `dim/2` the row `r` (MAE's meshgrid puts w first), each half as
/// `[sin(pos·ω_k) …, cos(pos·ω_k) …]` with `ω_k = 1 / 10000^(k / (dim/4))`,
/// `k < dim/4`.
pub fn sincos_2d(dim: usize, grid: [usize; 2], cls_token: bool) -> Vec<f32> {
    assert!(dim.is_multiple_of(4), "sincos_2d: width {dim} is not divisible by 4");
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity((grid[0] * grid[1] + cls_token as usize) * dim);
    if cls_token {
        out.extend(std::iter::repeat_n(0.0, dim));
    }
    let encode = |out: &mut Vec<f32>, pos: f64| {
        out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
        out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
    };
    for r in 0..grid[0] {
        for c in 0..grid[1] {
            encode(&mut out, c as f64);
            encode(&mut out, r as f64);
        }
    }
    out
}

/// PyTorch's cubic convolution kernel with `A = -0.75`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Resamples one axis of a channels-last grid with bicubic interpolation as
/// `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`
/// (taps beyond the border repeat the edge).
fn resample_axis(src: &[f32], outer: usize, n_in: usize, n_out: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0f32; outer * n_out * inner];
    let scale = n_in as f64 / n_out as f64;
    for i in 0..n_out {
        let x = scale * (i as f64 + 0.5) - 0.5;
        let x0 = x.floor();
        let w = cubic_weights(x - x0);
        for (k, wk) in w.iter().enumerate() {
            let src_i = (x0 as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            for o in 0..outer {
                let s = &src[(o * n_in + src_i) * inner..][..inner];
                let d = &mut out[(o * n_out + i) * inner..][..inner];
                for (dv, sv) in d.iter_mut().zip(s) {
                    *dv += (*wk * *sv as f64) as f32;
                }
            }
        }
    }
    out
}

/// Bicubic resize of a `(H, W, C)` channels-last grid to `(H', W', C)`.
pub fn bicubic_resize(src: &[f32], from: [usize; 2], to: [usize; 2], channels: usize) -> Vec<f32> {
    assert_eq!(src.len(), from[0] * from[1] * channels, "bicubic_resize: source size");
    let rows = resample_axis(src, 1, from[0], to[0], from[1] * channels);
    resample_axis(&rows, to[0], from[1], to[1], channels)
}

/// A positional table `(1 + L_old, D)` for grid `from`, resized for grid `to`:
/// sin-cos tables are regenerated, learned ones keep their \[CLS\] row and have
/// the patch rows resized bicubically (as MAE's `interpolate_pos_embed`).
pub fn resize(table: &[f32], dim: usize, from: [usize; 2], to: [usize; 2], kind: PosEmbedKind) -> Vec<f32> {
    if from == to {
        return table.to_vec();
    }
    match kind {
        PosEmbedKind::SinCos => sincos_2d(dim, to, true),
        // No table to resize.
        PosEmbedKind::None => table.to_vec(),
        PosEmbedKind::Learned => {
            let mut out = table[..dim].to_vec();
            out.extend(bicubic_resize(&table[dim..], from, to, dim));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_matches_maes_formula_on_known_values() {
        // D = 8: quarter = 2, ω = [1, 1/100].
        let t = sincos_2d(8, [2, 2], true);
        assert_eq!(t.len(), 5 * 8);
        assert!(t[..8].iter().all(|&v| v == 0.0), "cls row is zeros");
        // Patch 1 is (row 0, column 1): column half encodes 1, row half encodes 0.
        let p1 = &t[2 * 8..3 * 8];
        let want = [1f64.sin(), 0.01f64.sin(), 1f64.cos(), 0.01f64.cos(), 0.0, 0.0, 1.0, 1.0];
        for (a, b) in p1.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-7, "{p1:?}");
        }
        // Patch 2 is (row 1, column 0).
        let p2 = &t[3 * 8..4 * 8];
        assert_eq!(&p2[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert!((p2[4] as f64 - 1f64.sin()).abs() < 1e-7);
        // MAE ViT-B/16 entry: dim 768, grid 14; patch (3, 5), value index 1
        // = sin(5 · 10000^(-1/192)).
        let b = sincos_2d(768, [14, 14], true);
        let v = b[(1 + 3 * 14 + 5) * 768 + 1] as f64;
        assert!((v - (5.0 * 10000f64.powf(-1.0 / 192.0)).sin()).abs() < 1e-6);
    }

    #[test]
    fn bicubic_keeps_constants_and_linear_ramps_and_identity() {
        let c = vec![2.5f32; 4 * 4 * 3];
        assert!(
            bicubic_resize(&c, [4, 4], [7, 5], 3)
                .iter()
                .all(|v| (v - 2.5).abs() < 1e-5)
        );
        let same: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let r = bicubic_resize(&same, [4, 4], [4, 4], 1);
        for (a, b) in r.iter().zip(&same) {
            assert!((a - b).abs() < 1e-5);
        }
        // A ramp x ↦ x upsampled 2×: output column 8 samples x = 0.5·8.5 − 0.5 = 3.75,
        // t = 0.75, taps 2..=5 with weights (−0.03515625, 0.26171875, 0.87890625,
        // −0.10546875) worked out by hand from PyTorch's A = −0.75 kernel: 3.703125
        // (A = −0.75 does not reproduce linear functions exactly, unlike A = −0.5).
        let ramp: Vec<f32> = (0..8 * 8).map(|i| (i % 8) as f32).collect();
        let up = bicubic_resize(&ramp, [8, 8], [8, 16], 1);
        assert!((up[8] - 3.703125).abs() < 1e-5, "{}", up[8]);
    }

    #[test]
    fn resize_regenerates_or_interpolates() {
        let t = sincos_2d(16, [4, 4], true);
        assert_eq!(
            resize(&t, 16, [4, 4], [6, 6], PosEmbedKind::SinCos),
            sincos_2d(16, [6, 6], true)
        );
        let learned: Vec<f32> = (0..17 * 16).map(|v| v as f32 * 0.01).collect();
        let r = resize(&learned, 16, [4, 4], [2, 2], PosEmbedKind::Learned);
        assert_eq!(r.len(), 5 * 16);
        assert_eq!(&r[..16], &learned[..16]);
    }
}
