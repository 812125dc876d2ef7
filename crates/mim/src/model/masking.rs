//! Masking strategies at patch level: which patches of each image the model
//! must predict.
//!
//! Every strategy fills a boolean mask over the patch grid (`true` = hidden),
//! image by image, from a seeded generator. A batch of them becomes a [`Mask`]:
//! the boolean `(B, L)` (SimMIM replaces hidden patches by a mask token; every
//! loss is averaged over hidden patches) and keep/restore indices (MAE's
//! encoder sees the visible patches only).
//!
//! | strategy | hides | after |
//! | --- | --- | --- |
//! | `random` | exactly `L − ⌊L·(1−r)⌋` patches chosen by sorting uniform noise | MAE |
//! | `block` | rectangles of ≥ 16 patches (fewer on small grids), aspect 0.3–3.3, until the same count | BEiT |
//! | `square` | one `s × s` square, centred or at a random place | square masking (one hidden region) |
//! | `grid` | all but one patch of every `k × k` cell | a regular lattice of visible patches |
//! | `simmim` | `⌈cells·r⌉` random cells of a coarser grid (cell = a multiple of the patch) | SimMIM |

use crate::error::{MimError, Result, config_err};
use crate::rng::MimRng;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tessera_tensor::Tensor;

/// A strategy that chooses the hidden patches of one image.
pub trait MaskingStrategy: Send + Sync {
    /// A short description, e.g. `random(0.75)`.
    fn describe(&self) -> String;
    /// Fills `hidden` (`Gh·Gw` values, row-major over the grid) for one image.
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]);
}

/// Denominator of [`ratio_parts`]: ratios are exact to six decimals.
const RATIO_DENOM: u64 = 1_000_000;

/// A mask ratio as the decimal it was written as: `ratio ≈ p / 10⁶`, `p`
/// rounded to the nearest integer. An f32 ratio is not that decimal (0.6 is
/// stored as 0.6000000238…), and multiplying by it before a floor or a
/// ceiling can cross an integer: 25 cells at 0.6 gave 16 hidden, not 15.
/// Counts below use this rational in integer arithmetic instead.
fn ratio_parts(ratio: f32) -> u64 {
    ((ratio as f64) * RATIO_DENOM as f64)
        .round()
        .clamp(0.0, RATIO_DENOM as f64) as u64
}

/// Number of hidden patches for a ratio, as MAE: `L − ⌊L·(1 − ratio)⌋`,
/// computed exactly on the ratio's decimal value (to six decimals).
pub fn hidden_count(l: usize, ratio: f32) -> usize {
    let keep = (l as u64 * (RATIO_DENOM - ratio_parts(ratio))) / RATIO_DENOM;
    l - keep as usize
}

/// `⌈n·ratio⌉`, exactly on the ratio's decimal value: SimMIM's count of
/// hidden cells.
pub fn ceil_count(n: usize, ratio: f32) -> usize {
    (n as u64 * ratio_parts(ratio)).div_ceil(RATIO_DENOM) as usize
}

/// `count` distinct indices below `n`, chosen by MAE's rule: the positions of
/// the `count` largest of `n` uniform noise values (argsort, ascending = keep).
fn random_subset(n: usize, count: usize, rng: &mut MimRng) -> Vec<usize> {
    let noise: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| noise[a].total_cmp(&noise[b]));
    order.split_off(n - count)
}

/// MAE's random masking.
pub struct RandomMasking {
    pub ratio: f32,
}

impl MaskingStrategy for RandomMasking {
    fn describe(&self) -> String {
        format!("random({})", self.ratio)
    }
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]) {
        let l = grid[0] * grid[1];
        hidden.fill(false);
        for i in random_subset(l, hidden_count(l, self.ratio), rng) {
            hidden[i] = true;
        }
    }
}

/// BEiT's block-wise masking: random rectangles (area at least `min_patches`,
/// aspect ratio in [0.3, 1/0.3]) are added until the target count is reached;
/// when no rectangle fits any more, the hidden region grows by patches next to
/// it, so the count is exact and no hidden patch is isolated (a single-patch
/// rectangle is only accepted next to the hidden region).
pub struct BlockMasking {
    pub ratio: f32,
    pub min_patches: usize,
}

impl BlockMasking {
    /// One of BEiT's attempts at adding a rectangle; returns the patches added.
    fn add_block(
        &self,
        grid: [usize; 2],
        hidden: &mut [bool],
        max_new: usize,
        min_area: f64,
        rng: &mut MimRng,
    ) -> usize {
        let [gh, gw] = grid;
        let log_aspect = (0.3f64.ln(), (1.0f64 / 0.3).ln());
        for _ in 0..10 {
            let area = rng.random_range(min_area.min(max_new as f64)..=min_area.max(max_new as f64));
            let aspect = rng.random_range(log_aspect.0..log_aspect.1).exp();
            let h = (area * aspect).sqrt().round() as usize;
            let w = (area / aspect).sqrt().round() as usize;
            if h == 0 || w == 0 || h > gh || w > gw {
                continue;
            }
            let top = rng.random_range(0..=gh - h);
            let left = rng.random_range(0..=gw - w);
            let already = (top..top + h)
                .flat_map(|r| (left..left + w).map(move |c| (r, c)))
                .filter(|&(r, c)| hidden[r * gw + c])
                .count();
            let new = h * w - already;
            // A lone 1×1 block would leave an isolated hidden patch unless it
            // touches the hidden region.
            let lone = h * w == 1 && !has_hidden_neighbour(grid, hidden, top * gw + left);
            if new > 0 && new <= max_new && !lone {
                for r in top..top + h {
                    for c in left..left + w {
                        hidden[r * gw + c] = true;
                    }
                }
                return new;
            }
        }
        0
    }
}

impl MaskingStrategy for BlockMasking {
    fn describe(&self) -> String {
        format!("block({}, min {})", self.ratio, self.min_patches)
    }
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]) {
        let l = grid[0] * grid[1];
        let target = hidden_count(l, self.ratio);
        hidden.fill(false);
        // Small grids cannot hold 16-patch blocks: scale the minimum down.
        let min_area = self.min_patches.min((l / 4).max(1)) as f64;
        let mut count = 0;
        while count < target {
            let added = self.add_block(grid, hidden, target - count, min_area, rng);
            if added == 0 {
                break;
            }
            count += added;
        }
        // Grow the hidden region by neighbours until the count is exact.
        while count < target {
            let frontier: Vec<usize> = (0..l)
                .filter(|&i| !hidden[i] && (count == 0 || has_hidden_neighbour(grid, hidden, i)))
                .collect();
            let pick = frontier[rng.random_range(0..frontier.len())];
            hidden[pick] = true;
            count += 1;
        }
    }
}

/// True if patch `i` has a hidden 4-neighbour.
pub fn has_hidden_neighbour(grid: [usize; 2], hidden: &[bool], i: usize) -> bool {
    let [gh, gw] = grid;
    let (r, c) = (i / gw, i % gw);
    (r > 0 && hidden[i - gw])
        || (r + 1 < gh && hidden[i + gw])
        || (c > 0 && hidden[i - 1])
        || (c + 1 < gw && hidden[i + 1])
}

/// Square masking: one `side × side` square of patches,
/// centred or placed uniformly at random.
pub struct SquareMasking {
    pub side: usize,
    pub centered: bool,
}

impl MaskingStrategy for SquareMasking {
    fn describe(&self) -> String {
        format!(
            "square({}, {})",
            self.side,
            if self.centered { "centred" } else { "random" }
        )
    }
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]) {
        let [gh, gw] = grid;
        let s = self.side.min(gh).min(gw);
        let (top, left) = if self.centered {
            ((gh - s) / 2, (gw - s) / 2)
        } else {
            (rng.random_range(0..=gh - s), rng.random_range(0..=gw - s))
        };
        hidden.fill(false);
        for r in top..top + s {
            for c in left..left + s {
                hidden[r * gw + c] = true;
            }
        }
    }
}

/// Keeps one patch of every `k × k` cell (at the same offset in every cell,
/// random per image if `random_offset`), hides the rest.
pub struct GridMasking {
    pub k: usize,
    pub random_offset: bool,
}

impl MaskingStrategy for GridMasking {
    fn describe(&self) -> String {
        format!("grid({})", self.k)
    }
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]) {
        let [gh, gw] = grid;
        let (or, oc) = if self.random_offset {
            (rng.random_range(0..self.k), rng.random_range(0..self.k))
        } else {
            (0, 0)
        };
        for r in 0..gh {
            for c in 0..gw {
                hidden[r * gw + c] = !(r % self.k == or && c % self.k == oc);
            }
        }
    }
}

/// SimMIM's masking: `⌈cells·ratio⌉` random cells of a coarser grid whose cell
/// is `cell × cell` patches, each cell hiding all its patches.
pub struct SimMimMasking {
    pub ratio: f32,
    /// Cell side in patches (SimMIM's `mask_patch_size / model_patch_size`).
    pub cell: usize,
}

impl MaskingStrategy for SimMimMasking {
    fn describe(&self) -> String {
        format!("simmim({}, cell {})", self.ratio, self.cell)
    }
    fn sample(&self, grid: [usize; 2], rng: &mut MimRng, hidden: &mut [bool]) {
        let [ch, cw] = [grid[0] / self.cell, grid[1] / self.cell];
        let cells = ch * cw;
        let count = ceil_count(cells, self.ratio);
        hidden.fill(false);
        for cell in random_subset(cells, count.min(cells), rng) {
            let (cr, cc) = (cell / cw, cell % cw);
            for r in cr * self.cell..(cr + 1) * self.cell {
                for c in cc * self.cell..(cc + 1) * self.cell {
                    hidden[r * grid[1] + c] = true;
                }
            }
        }
    }
}

/// A masking strategy as configured by a user (and saved in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MaskingConfig {
    Random { ratio: f32 },
    Block { ratio: f32, min_patches: usize },
    Square { side: usize, centered: bool },
    Grid { k: usize, random_offset: bool },
    SimMim { ratio: f32, cell_px: usize },
}

fn check_ratio(ratio: f32) -> Result<()> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(config_err(format!("mask ratio {ratio} is outside [0, 1)")));
    }
    Ok(())
}

impl MaskingConfig {
    /// The fraction of patches hidden, for the strategies that have one.
    pub fn ratio(&self) -> Option<f32> {
        match *self {
            MaskingConfig::Random { ratio }
            | MaskingConfig::Block { ratio, .. }
            | MaskingConfig::SimMim { ratio, .. } => Some(ratio),
            MaskingConfig::Square { .. } | MaskingConfig::Grid { .. } => None,
        }
    }

    /// Builds the strategy for a model with this patch size and grid, checking
    /// that it fits.
    pub fn build(&self, patch_size: usize, grid: [usize; 2]) -> Result<Box<dyn MaskingStrategy>> {
        Ok(match *self {
            MaskingConfig::Random { ratio } => {
                check_ratio(ratio)?;
                Box::new(RandomMasking { ratio })
            }
            MaskingConfig::Block { ratio, min_patches } => {
                check_ratio(ratio)?;
                Box::new(BlockMasking {
                    ratio,
                    min_patches: min_patches.max(1),
                })
            }
            MaskingConfig::Square { side, centered } => {
                if side == 0 || side >= grid[0].min(grid[1]) {
                    return Err(config_err(format!(
                        "square side {side} must be between 1 and {} for a {}x{} patch grid",
                        grid[0].min(grid[1]).saturating_sub(1),
                        grid[0],
                        grid[1]
                    )));
                }
                Box::new(SquareMasking { side, centered })
            }
            MaskingConfig::Grid { k, random_offset } => {
                if k < 2 || k > grid[0].min(grid[1]) {
                    return Err(config_err(format!(
                        "grid cell {k} must be between 2 and the grid side {}",
                        grid[0].min(grid[1])
                    )));
                }
                Box::new(GridMasking { k, random_offset })
            }
            MaskingConfig::SimMim { ratio, cell_px } => {
                check_ratio(ratio)?;
                if cell_px == 0 || cell_px % patch_size != 0 {
                    return Err(config_err(format!(
                        "SimMIM mask cell of {cell_px} px is not a multiple of the patch size {patch_size}"
                    )));
                }
                let cell = cell_px / patch_size;
                if !grid[0].is_multiple_of(cell) || !grid[1].is_multiple_of(cell) {
                    return Err(config_err(format!(
                        "SimMIM mask cell of {cell} patches does not divide the {}x{} patch grid",
                        grid[0], grid[1]
                    )));
                }
                Box::new(SimMimMasking { ratio, cell })
            }
        })
    }

    /// MAE's default: random masking of 75% of the patches.
    pub fn mae_default() -> Self {
        MaskingConfig::Random { ratio: 0.75 }
    }
}

/// Hidden patches of a batch, with the indices MAE gathers by.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub batch: usize,
    pub num_patches: usize,
    /// `(B, L)`, `true` = hidden (MAE's `mask == 1`).
    pub hidden: Vec<bool>,
    /// `(B, L)`: each image's visible patches in increasing order, then its
    /// hidden ones (MAE's `ids_shuffle`).
    pub ids_shuffle: Vec<usize>,
    /// `(B, L)`: the inverse permutation (MAE's `ids_restore`).
    pub ids_restore: Vec<usize>,
    /// Visible patches per image, if every image has the same number.
    pub len_keep: Option<usize>,
}

impl Mask {
    /// Builds the indices from a boolean mask.
    pub fn from_hidden(hidden: Vec<bool>, batch: usize, num_patches: usize) -> Result<Mask> {
        if hidden.len() != batch * num_patches {
            return Err(MimError::Input(format!(
                "mask has {} values, want batch {batch} × {num_patches} patches",
                hidden.len()
            )));
        }
        let l = num_patches;
        let mut ids_shuffle = Vec::with_capacity(batch * l);
        let mut ids_restore = vec![0; batch * l];
        let mut keep_counts = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = &hidden[b * l..(b + 1) * l];
            let start = ids_shuffle.len();
            ids_shuffle.extend((0..l).filter(|&i| !row[i]));
            keep_counts.push(ids_shuffle.len() - start);
            ids_shuffle.extend((0..l).filter(|&i| row[i]));
            for (pos, &i) in ids_shuffle[start..].iter().enumerate() {
                ids_restore[b * l + i] = pos;
            }
        }
        let len_keep = keep_counts
            .first()
            .copied()
            .filter(|&k| keep_counts.iter().all(|&c| c == k));
        Ok(Mask {
            batch,
            num_patches,
            hidden,
            ids_shuffle,
            ids_restore,
            len_keep,
        })
    }

    /// Samples a mask for `batch` images from a strategy.
    pub fn sample(strategy: &dyn MaskingStrategy, batch: usize, grid: [usize; 2], rng: &mut MimRng) -> Mask {
        let l = grid[0] * grid[1];
        let mut hidden = vec![false; batch * l];
        for row in hidden.chunks_mut(l.max(1)) {
            strategy.sample(grid, rng, row);
        }
        Mask::from_hidden(hidden, batch, l).expect("sizes agree by construction")
    }

    /// Rows `rows` of this mask (a data-parallel rank's images).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Mask> {
        if rows.start > rows.end || rows.end > self.batch {
            return Err(MimError::Input(format!(
                "rows {}..{} of a mask of {} images",
                rows.start, rows.end, self.batch
            )));
        }
        let l = self.num_patches;
        Mask::from_hidden(self.hidden[rows.start * l..rows.end * l].to_vec(), rows.len(), l)
    }

    /// Number of hidden patches over the whole batch.
    pub fn hidden_total(&self) -> usize {
        self.hidden.iter().filter(|&&h| h).count()
    }

    /// No patch hidden (feature extraction).
    pub fn none(batch: usize, num_patches: usize) -> Mask {
        Mask::from_hidden(vec![false; batch * num_patches], batch, num_patches).expect("sizes agree")
    }

    /// `(B, K)` indices of the visible patches (MAE's `ids_keep`). Needs the
    /// same number of visible patches in every image.
    pub fn ids_keep(&self) -> Result<Vec<usize>> {
        let k = self.len_keep.ok_or_else(|| {
            MimError::Input(
                "images of this batch have different numbers of visible patches; MAE's encoder needs the same \
                 number in every image (use SimMIM, or a strategy with a fixed count)"
                    .into(),
            )
        })?;
        Ok(self
            .ids_shuffle
            .chunks(self.num_patches.max(1))
            .flat_map(|row| row[..k].iter().copied())
            .collect())
    }

    /// The mask as `(B, L)` floats, 1 = hidden: the loss weights.
    pub fn weights(&self) -> Tensor {
        let w = self.hidden.iter().map(|&h| if h { 1.0 } else { 0.0 }).collect();
        Tensor::new(w, &[self.batch, self.num_patches]).expect("sizes agree")
    }

    /// Hidden patches of image `b`.
    pub fn hidden_in(&self, b: usize) -> usize {
        self.hidden[b * self.num_patches..(b + 1) * self.num_patches]
            .iter()
            .filter(|&&h| h)
            .count()
    }

    /// A picture of image `b`'s mask, one character per patch (`#` hidden).
    pub fn ascii(&self, b: usize, grid: [usize; 2]) -> String {
        let row = &self.hidden[b * self.num_patches..(b + 1) * self.num_patches];
        row.chunks(grid[1])
            .map(|r| r.iter().map(|&h| if h { '#' } else { '.' }).collect::<String>() + "\n")
            .collect()
    }
}
