//! Pictures: images back from normalised tensors, reconstructions from
//! predictions, the four-panel rows of MAE's demo, and the patched image (a picture cut
//! into its patch grid), and attention maps over their images.

use crate::config::TargetConfig;
use crate::data::Normalization;
use crate::error::{MimError, Result, io_err};
use crate::eval::attention::AttentionMaps;
use crate::model::masking::Mask;
use crate::model::mim::MimModel;
use crate::model::target::{Codebook, patch_stats};
use crate::rng::MimRng;
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use std::path::Path;
use tessera_kernels::patch::{PatchDims, patchify, unpatchify};
use tessera_tensor::{Tensor, no_grad};

/// A `(C, H, W)` image in normalised input space → 8-bit RGB (grey repeated).
pub fn to_rgb(chw: &[f32], c: usize, h: usize, w: usize, norm: &Normalization) -> RgbImage {
    let norm = norm.for_channels(c);
    let px = |ch: usize, y: usize, x: usize| -> u8 {
        let v = chw[(ch * h + y) * w + x] * norm.std[ch] + norm.mean[ch];
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        if c >= 3 {
            Rgb([px(0, y, x), px(1, y, x), px(2, y, x)])
        } else {
            Rgb([px(0, y, x); 3])
        }
    })
}

/// Writes a PNG (creating its folder), naming the path in errors.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    // Whole or absent: encode into memory, then write a temporary file and
    // rename it over the target.
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| MimError::Input(format!("{}: cannot encode PNG: {e}", path.display())))?;
    crate::io::safetensors::write_atomically(path, bytes.get_ref())
}

/// Panels side by side, rows stacked, separated by `gap` pixels of white.
pub fn grid(rows: &[Vec<RgbImage>], gap: u32) -> RgbImage {
    let width = rows
        .iter()
        .map(|r| r.iter().map(|p| p.width() + gap).sum::<u32>() + gap)
        .max()
        .unwrap_or(0);
    let height = rows
        .iter()
        .map(|r| r.iter().map(|p| p.height()).max().unwrap_or(0) + gap)
        .sum::<u32>()
        + gap;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = gap;
    for row in rows {
        let mut x = gap;
        for panel in row {
            image::imageops::replace(&mut out, panel, x as i64, y as i64);
            x += panel.width() + gap;
        }
        y += row.iter().map(|p| p.height()).max().unwrap_or(0) + gap;
    }
    out
}

/// Scales an image up by an integer factor (nearest neighbour), so small
/// images (28×28) are visible in a grid.
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    if factor <= 1 {
        return img.clone();
    }
    image::imageops::resize(
        img,
        img.width() * factor,
        img.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

/// The "patched image": the picture cut into its `patch × patch`
/// grid, patches drawn apart with `gap` white pixels between them.
pub fn patched(img: &RgbImage, patch: u32, gap: u32) -> RgbImage {
    let (gw, gh) = (img.width() / patch, img.height() / patch);
    let mut out = RgbImage::from_pixel(gw * (patch + gap) + gap, gh * (patch + gap) + gap, Rgb([255, 255, 255]));
    for r in 0..gh {
        for c in 0..gw {
            let tile = image::imageops::crop_imm(img, c * patch, r * patch, patch, patch).to_image();
            image::imageops::replace(
                &mut out,
                &tile,
                (gap + c * (patch + gap)) as i64,
                (gap + r * (patch + gap)) as i64,
            );
        }
    }
    out
}

/// The image with its hidden patches painted grey.
pub fn masked(img: &RgbImage, hidden: &[bool], grid_w: usize, patch: u32) -> RgbImage {
    let mut out = img.clone();
    for (i, _) in hidden.iter().enumerate().filter(|(_, h)| **h) {
        let (r, c) = ((i / grid_w) as u32, (i % grid_w) as u32);
        for y in r * patch..(r + 1) * patch {
            for x in c * patch..(c + 1) * patch {
                out.put_pixel(x, y, Rgb([128, 128, 128]));
            }
        }
    }
    out
}

/// How normalised predictions (norm-pix, normalised codebooks) become pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPixView {
    /// De-normalise each patch with the mean and standard deviation of the
    /// nearest *visible* patches of the same image (the ring of grid
    /// neighbours at the smallest distance that holds any): only what the
    /// model saw — a hidden patch's own statistics are part of what it must
    /// guess — and local, so background stays background.
    VisibleStats,
    /// Show every patch normalised (zero mean, unit variance), as the model
    /// predicts it, mapped to the display range; visible patches likewise.
    Normalized,
}

/// One image's reconstruction from its predictions `pred (L, out)`:
/// returns `(reconstruction, reconstruction with visible patches pasted)`,
/// both `(C, H, W)` in normalised input space. `img` is the input `(C, H, W)`.
pub fn reconstruct(
    img: &[f32],
    pred: &[f32],
    hidden: &[bool],
    dims: PatchDims,
    target: &TargetConfig,
    codebook: Option<&Codebook>,
    view: NormPixView,
) -> Result<(Vec<f32>, Vec<f32>)> {
    debug_assert_eq!(dims.b, 1);
    let (l, p) = (dims.l(), dims.patch_len());
    let mut patches = vec![0f32; l * p]; // the input, patchified
    patchify(&mut patches, img, dims);
    // Predictions as patches, and whether they are per-patch normalised.
    let (mut guess, normalised) = match target {
        TargetConfig::Pixels { norm_pix, .. } => (pred.to_vec(), *norm_pix),
        TargetConfig::Codebook { size, normalize } => {
            let book = codebook
                .ok_or_else(|| MimError::Input("the model has no codebook to decode its predictions".into()))?;
            let mut out = Vec::with_capacity(l * p);
            for row in pred.chunks(*size) {
                let k = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (j, v)| if *v > row[best] { j } else { best });
                out.extend_from_slice(&book.centroids[k * p..(k + 1) * p]);
            }
            (out, *normalize)
        }
    };
    let mut shown = patches.clone();
    if normalised {
        match view {
            NormPixView::VisibleStats => {
                let stats: Vec<(f32, f32)> = (0..l).map(|i| patch_stats(&patches[i * p..(i + 1) * p])).collect();
                let (gh, gw) = (dims.hp() as isize, dims.wp() as isize);
                for i in 0..l {
                    let (r, c) = ((i / dims.wp()) as isize, (i % dims.wp()) as isize);
                    // Grow a square ring around the patch until it holds visible patches.
                    let mut found = (0f32, 0f32, 0usize);
                    for radius in 1..gh.max(gw) {
                        for rr in (r - radius).max(0)..=(r + radius).min(gh - 1) {
                            for cc in (c - radius).max(0)..=(c + radius).min(gw - 1) {
                                let j = (rr * gw + cc) as usize;
                                if (rr - r).abs().max((cc - c).abs()) == radius && !hidden[j] {
                                    found = (found.0 + stats[j].0, found.1 + (stats[j].1 + 1e-6).sqrt(), found.2 + 1);
                                }
                            }
                        }
                        if found.2 > 0 {
                            break;
                        }
                    }
                    let n = found.2.max(1) as f32;
                    let (mean, std) = (found.0 / n, found.1 / n);
                    guess[i * p..(i + 1) * p].iter_mut().for_each(|v| *v = *v * std + mean);
                }
            }
            NormPixView::Normalized => {
                // Normalise the input patches the same way, and show both at a
                // quarter of their scale so ±2σ fits the display range.
                for row in shown.chunks_mut(p) {
                    let (m, var) = patch_stats(row);
                    let s = 1.0 / (var + 1e-6).sqrt();
                    row.iter_mut().for_each(|v| *v = (*v - m) * s * 0.25);
                }
                guess.iter_mut().for_each(|v| *v *= 0.25);
            }
        }
    }
    let mut pasted = guess.clone();
    for i in (0..l).filter(|&i| !hidden[i]) {
        pasted[i * p..(i + 1) * p].copy_from_slice(&shown[i * p..(i + 1) * p]);
    }
    let to_img = |x: &[f32]| {
        let mut out = vec![0f32; img.len()];
        unpatchify(&mut out, x, dims);
        out
    };
    Ok((to_img(&guess), to_img(&pasted)))
}

/// Renders the four-panel rows for `imgs (N, C, H, W)` under `mask`:
/// original | masked | reconstruction | reconstruction with the visible
/// patches pasted back, each panel upscaled by `scale` (default: to at least
/// 96 pixels).
pub fn render_rows(
    model: &MimModel,
    imgs: &Tensor,
    mask: &Mask,
    norm: &Normalization,
    view: NormPixView,
    scale: Option<u32>,
) -> Result<RgbImage> {
    let e = &model.config.encoder;
    let (n, c, [h, w]) = (imgs.shape()[0], e.in_chans(), e.img_size());
    let pred = no_grad(|| model.predict(imgs, mask, false, &mut MimRng::seed_from_u64(0)))?;
    let (pred, data) = (pred.data(), imgs.data());
    let out = pred.len() / n.max(1);
    let l = e.num_patches();
    let dims = PatchDims::new(1, c, h, w, e.patch_size());
    let factor = scale.unwrap_or_else(|| 96u32.div_ceil(h.min(w) as u32).max(1));
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let img = &data[i * c * h * w..(i + 1) * c * h * w];
        let hidden = &mask.hidden[i * l..(i + 1) * l];
        let (rec, pasted) = reconstruct(
            img,
            &pred[i * out..(i + 1) * out],
            hidden,
            dims,
            &model.config.target,
            model.codebook.as_ref(),
            view,
        )?;
        let original = to_rgb(img, c, h, w, norm);
        let row = [
            original.clone(),
            masked(&original, hidden, e.grid()[1], e.patch_size() as u32),
            to_rgb(&rec, c, h, w, norm),
            to_rgb(&pasted, c, h, w, norm),
        ];
        rows.push(row.iter().map(|p| upscale(p, factor)).collect());
    }
    Ok(grid(&rows, 4))
}

/// A colour for `t ∈ [0, 1]`: blue, cyan, green, yellow, red (the middle
/// of the "jet" scale, without its dark ends).
fn heat(t: f32) -> [f32; 3] {
    let u = 0.125 + 0.75 * t;
    let ramp = |c: f32| (1.5 - (4.0 * u - c).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// `map` (row-major on `grid`) over `img`: scaled to `[0, 1]` by its own
/// minimum and maximum (a constant map is all 0), coloured by a heat scale
/// and blended half and half with the image; each grid cell covers its
/// block of pixels (nearest-neighbour upsampling).
pub fn heat_overlay(img: &RgbImage, map: &[f32], grid: [usize; 2]) -> RgbImage {
    assert_eq!(map.len(), grid[0] * grid[1], "heat_overlay: a map of {grid:?} cells");
    let (lo, hi) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let span = hi - lo;
    let (w, h) = (img.width() as usize, img.height() as usize);
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let cell = (y as usize * grid[0] / h) * grid[1] + x as usize * grid[1] / w;
        let t = if span > 0.0 { (map[cell] - lo) / span } else { 0.0 };
        let c = heat(t);
        let p = img.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|k| {
            (0.5 * p[k] as f32 + 0.5 * 255.0 * c[k]).round() as u8
        }))
    })
}

/// Attention maps as rows, one per image of `imgs (N, C, H, W)`: the image,
/// then one panel per head, then the combined map (rollout for a ViT, the
/// heads' mean for Swin), each map a [`heat_overlay`] on the image; every
/// panel upscaled by `scale` (default: to at least 96 pixels), 4-pixel gaps.
pub fn attention_rows(
    maps: &AttentionMaps,
    imgs: &Tensor,
    norm: &Normalization,
    scale: Option<u32>,
) -> Result<RgbImage> {
    let [n, c, h, w] = *imgs.shape() else {
        return Err(MimError::Input(format!(
            "images must be (N, C, H, W), got {:?}",
            imgs.shape()
        )));
    };
    if maps.images.len() != n {
        return Err(MimError::Input(format!(
            "{} images but attention maps of {}",
            n,
            maps.images.len()
        )));
    }
    let factor = scale.unwrap_or_else(|| 96u32.div_ceil(h.min(w) as u32).max(1));
    let data = imgs.data();
    let rows: Vec<Vec<RgbImage>> = maps
        .images
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let img = to_rgb(&data[i * c * h * w..(i + 1) * c * h * w], c, h, w, norm);
            let mut row = vec![upscale(&img, factor)];
            for map in m.heads.iter().chain(std::iter::once(&m.combined)) {
                row.push(upscale(&heat_overlay(&img, map, maps.grid), factor));
            }
            row
        })
        .collect();
    Ok(grid(&rows, 4))
}

/// A confusion matrix `(K, K)` of counts as a picture: one 24-pixel cell per
/// (true class row, predicted class column), shaded by the row's share (white
/// 0 to dark blue 1), correct cells in green, a grey grid between cells.
pub fn confusion_matrix(counts: &[Vec<usize>]) -> RgbImage {
    let k = counts.len();
    let cell = 24u32;
    let side = k as u32 * (cell + 1) + 1;
    let mut img = RgbImage::from_pixel(side.max(1), side.max(1), Rgb([160, 160, 160]));
    for (r, row) in counts.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (c, &n) in row.iter().enumerate() {
            let share = if total > 0 { n as f32 / total as f32 } else { 0.0 };
            let shade = |full: f32| (255.0 - share * (255.0 - full)).round() as u8;
            let colour = if r == c {
                Rgb([shade(20.0), shade(120.0), shade(40.0)])
            } else {
                Rgb([shade(20.0), shade(40.0), shade(140.0)])
            };
            let (x0, y0) = (1 + c as u32 * (cell + 1), 1 + r as u32 * (cell + 1));
            for y in y0..y0 + cell {
                for x in x0..x0 + cell {
                    img.put_pixel(x, y, colour);
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each grid cell covers its pixels; the map's maximum is red, its
    /// minimum blue, both half blended with the image.
    #[test]
    fn heat_overlay_places_cells_and_scales_by_min_max() {
        let img = RgbImage::from_pixel(4, 6, Rgb([100, 100, 100]));
        // A 3×2 grid: cell (2, 1), bottom right, is the maximum.
        let out = heat_overlay(&img, &[0.1, 0.1, 0.1, 0.1, 0.1, 0.7], [3, 2]);
        assert_eq!(out.get_pixel(3, 5).0, [178, 50, 50]);
        assert_eq!(out.get_pixel(2, 4).0, [178, 50, 50]);
        assert_eq!(out.get_pixel(1, 5).0, [50, 50, 178]);
        assert_eq!(out.get_pixel(3, 3).0, [50, 50, 178]);
        // A constant map is all minimum.
        let flat = heat_overlay(&img, &[2.0; 6], [3, 2]);
        assert!(flat.pixels().all(|p| p.0 == [50, 50, 178]));
    }
    use crate::config::PixelLoss;

    fn norm() -> Normalization {
        Normalization {
            mean: vec![0.5],
            std: vec![0.5],
        }
    }

    #[test]
    fn to_rgb_undoes_normalisation() {
        let img = to_rgb(&[-1.0, 0.0, 1.0, 3.0], 1, 2, 2, &norm());
        assert_eq!(img.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(img.get_pixel(1, 0), &Rgb([128, 128, 128]));
        assert_eq!(img.get_pixel(0, 1), &Rgb([255, 255, 255]));
        assert_eq!(img.get_pixel(1, 1), &Rgb([255, 255, 255]));
    }

    #[test]
    fn grid_and_patched_sizes() {
        let a = RgbImage::new(8, 8);
        let g = grid(
            &[vec![a.clone(), a.clone(), a.clone(), a.clone()], vec![a.clone(); 4]],
            2,
        );
        assert_eq!((g.width(), g.height()), (4 * 10 + 2, 2 * 10 + 2));
        let p = patched(&a, 4, 1);
        assert_eq!((p.width(), p.height()), (2 * 5 + 1, 2 * 5 + 1));
    }

    #[test]
    fn pixel_predictions_paste_visible_patches_back() {
        let dims = PatchDims::new(1, 1, 4, 4, 2);
        let img: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let pred = vec![0.5f32; 4 * 4];
        let hidden = [true, false, false, true];
        let target = TargetConfig::Pixels {
            loss: PixelLoss::Mse,
            norm_pix: false,
        };
        let (rec, pasted) = reconstruct(&img, &pred, &hidden, dims, &target, None, NormPixView::VisibleStats).unwrap();
        assert!(rec.iter().all(|&v| v == 0.5));
        // Patch 1 (top right) is visible: pixels (0, 2), (0, 3), (1, 2), (1, 3).
        assert_eq!([pasted[2], pasted[3], pasted[6], pasted[7]], [2.0, 3.0, 6.0, 7.0]);
        assert_eq!(pasted[0], 0.5);
    }

    #[test]
    fn norm_pix_uses_visible_statistics() {
        let dims = PatchDims::new(1, 1, 2, 4, 2);
        // Left patch hidden; right patch visible with values 10, 12, 14, 16.
        let img = [0.0, 0.0, 10.0, 12.0, 0.0, 0.0, 14.0, 16.0];
        let target = TargetConfig::Pixels {
            loss: PixelLoss::Mse,
            norm_pix: true,
        };
        let (rec, _) = reconstruct(
            &img,
            &[0.0; 8],
            &[true, false],
            dims,
            &target,
            None,
            NormPixView::VisibleStats,
        )
        .unwrap();
        // A zero prediction is the nearest visible patch's mean, 13.
        assert!((rec[0] - 13.0).abs() < 1e-5);
    }
}
