//! Properties of every masking strategy, on random grids and seeds.

use proptest::prelude::*;
use rand::SeedableRng;
use tessera_mim::model::masking::{ceil_count, has_hidden_neighbour, hidden_count};
use tessera_mim::{Mask, MaskingConfig, MimRng};

fn sample(cfg: &MaskingConfig, patch: usize, grid: [usize; 2], batch: usize, seed: u64) -> Mask {
    let s = cfg.build(patch, grid).unwrap();
    Mask::sample(s.as_ref(), batch, grid, &mut MimRng::seed_from_u64(seed))
}

fn check_indices(m: &Mask) {
    let l = m.num_patches;
    for b in 0..m.batch {
        let shuffle = &m.ids_shuffle[b * l..(b + 1) * l];
        let restore = &m.ids_restore[b * l..(b + 1) * l];
        for i in 0..l {
            assert_eq!(restore[shuffle[i]], i, "ids_restore inverts ids_shuffle");
            assert_eq!(shuffle[restore[i]], i);
        }
        let keep = m.len_keep.unwrap();
        for (pos, &i) in shuffle.iter().enumerate() {
            assert_eq!(m.hidden[b * l + i], pos >= keep, "visible patches come first");
        }
    }
    let ids_keep = m.ids_keep().unwrap();
    assert_eq!(ids_keep.len(), m.batch * m.len_keep.unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_masking_hides_exactly_the_mae_count(
        gh in 2usize..15,
        gw in 2usize..15,
        pct in 0usize..95,
        seed in any::<u64>(),
    ) {
        let ratio = pct as f32 / 100.0;
        let m = sample(&MaskingConfig::Random { ratio }, 4, [gh, gw], 4, seed);
        let l = gh * gw;
        let want = l - l * (100 - pct) / 100; // MAE's L − ⌊L·(1 − ratio)⌋, exactly
        prop_assert_eq!(want, hidden_count(l, ratio));
        for b in 0..4 {
            prop_assert_eq!(m.hidden_in(b), want);
        }
        check_indices(&m);
    }

    #[test]
    fn block_masking_hits_the_count_with_no_isolated_patch(
        gh in 3usize..15,
        gw in 3usize..15,
        ratio in 0.1f32..0.9,
        seed in any::<u64>(),
    ) {
        let m = sample(&MaskingConfig::Block { ratio, min_patches: 16 }, 16, [gh, gw], 3, seed);
        let l = gh * gw;
        for b in 0..3 {
            prop_assert_eq!(m.hidden_in(b), hidden_count(l, ratio));
            let row = &m.hidden[b * l..(b + 1) * l];
            if m.hidden_in(b) >= 2 {
                for i in 0..l {
                    prop_assert!(
                        !row[i] || has_hidden_neighbour([gh, gw], row, i),
                        "isolated hidden patch {} in\n{}",
                        i,
                        m.ascii(b, [gh, gw])
                    );
                }
            }
        }
        check_indices(&m);
    }

    #[test]
    fn square_masks_are_one_square(
        g in 3usize..15,
        side_frac in 0.1f64..0.9,
        centered in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let side = ((g as f64 * side_frac) as usize).clamp(1, g - 1);
        let m = sample(&MaskingConfig::Square { side, centered }, 8, [g, g], 3, seed);
        for b in 0..3 {
            let row = &m.hidden[b * g * g..(b + 1) * g * g];
            let cells: Vec<(usize, usize)> = (0..g * g).filter(|&i| row[i]).map(|i| (i / g, i % g)).collect();
            prop_assert_eq!(cells.len(), side * side);
            let (r0, c0) = (cells.iter().map(|c| c.0).min().unwrap(), cells.iter().map(|c| c.1).min().unwrap());
            let (r1, c1) = (cells.iter().map(|c| c.0).max().unwrap(), cells.iter().map(|c| c.1).max().unwrap());
            prop_assert_eq!((r1 - r0 + 1, c1 - c0 + 1), (side, side), "bounding box is the square");
            if centered {
                prop_assert_eq!((r0, c0), ((g - side) / 2, (g - side) / 2));
            }
        }
        check_indices(&m);
    }

    #[test]
    fn grid_masking_keeps_one_patch_per_cell(k in 2usize..5, cells in 1usize..5, seed in any::<u64>()) {
        let g = k * cells;
        let m = sample(&MaskingConfig::Grid { k, random_offset: true }, 4, [g, g], 2, seed);
        for b in 0..2 {
            prop_assert_eq!(m.hidden_in(b), g * g - cells * cells);
            for cr in 0..cells {
                for cc in 0..cells {
                    let visible = (0..k * k)
                        .filter(|&o| !m.hidden[b * g * g + (cr * k + o / k) * g + cc * k + o % k])
                        .count();
                    prop_assert_eq!(visible, 1);
                }
            }
        }
        check_indices(&m);
    }

    #[test]
    fn simmim_masks_whole_cells(cell in 1usize..4, cells in 2usize..6, pct in 10usize..90, seed in any::<u64>()) {
        let ratio = pct as f32 / 100.0;
        let g = cell * cells;
        let m = sample(&MaskingConfig::SimMim { ratio, cell_px: cell * 4 }, 4, [g, g], 2, seed);
        let want_cells = (cells * cells * pct).div_ceil(100); // ⌈cells·ratio⌉, exactly
        for b in 0..2 {
            prop_assert_eq!(m.hidden_in(b), want_cells * cell * cell);
            for r in 0..g {
                for c in 0..g {
                    let corner = (r / cell * cell) * g + c / cell * cell;
                    prop_assert_eq!(m.hidden[b * g * g + r * g + c], m.hidden[b * g * g + corner]);
                }
            }
        }
        check_indices(&m);
    }
}

/// Mask counts are exact rationals of the ratio as written: every patch
/// count up to 400 against every ratio in hundredths and a sweep of
/// thousandths, for MAE's `L − ⌊L·(1 − r)⌋` and SimMIM's `⌈n·r⌉`. The f32
/// product these replaced got 25 cells at 0.6 wrong (16, not 15).
#[test]
fn mask_counts_are_exact_for_decimal_ratios() {
    assert_eq!(ceil_count(25, 0.6), 15);
    assert_eq!(ceil_count(100, 0.6), 60);
    assert_eq!(hidden_count(25, 0.6), 15);
    assert_eq!(hidden_count(10, 0.9), 9);
    for (den, step) in [(100usize, 1usize), (1000, 7)] {
        for num in (0..den).step_by(step) {
            let ratio = num as f32 / den as f32;
            for n in 1..=400usize {
                assert_eq!(
                    hidden_count(n, ratio),
                    n - n * (den - num) / den,
                    "hidden_count({n}, {num}/{den})"
                );
                assert_eq!(
                    ceil_count(n, ratio),
                    (n * num).div_ceil(den),
                    "ceil_count({n}, {num}/{den})"
                );
            }
        }
    }
}

#[test]
fn masks_differ_between_samples_and_are_reproducible() {
    for cfg in [
        MaskingConfig::Random { ratio: 0.75 },
        MaskingConfig::Block {
            ratio: 0.4,
            min_patches: 16,
        },
        MaskingConfig::Square {
            side: 5,
            centered: false,
        },
        MaskingConfig::Grid {
            k: 2,
            random_offset: true,
        },
        MaskingConfig::SimMim {
            ratio: 0.6,
            cell_px: 32,
        },
    ] {
        let m = sample(&cfg, 16, [14, 14], 8, 1);
        let l = 196;
        let distinct: std::collections::HashSet<&[bool]> = m.hidden.chunks(l).collect();
        assert!(distinct.len() > 1, "{cfg:?} gave 8 identical masks");
        assert_eq!(
            sample(&cfg, 16, [14, 14], 8, 1),
            m,
            "{cfg:?} is not reproducible from its seed"
        );
        assert_ne!(sample(&cfg, 16, [14, 14], 8, 2).hidden, m.hidden);
    }
}

#[test]
fn invalid_configurations_name_the_problem() {
    let e = MaskingConfig::Random { ratio: 1.0 }
        .build(4, [8, 8])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ratio 1") && e.contains("[0, 1)"), "{e}");
    assert!(MaskingConfig::Random { ratio: -0.1 }.build(4, [8, 8]).is_err());
    let e = MaskingConfig::SimMim { ratio: 0.5, cell_px: 6 }
        .build(4, [8, 8])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a multiple of the patch size 4"), "{e}");
    assert!(
        MaskingConfig::Square {
            side: 8,
            centered: true
        }
        .build(4, [8, 8])
        .is_err()
    );
    assert!(
        MaskingConfig::Grid {
            k: 1,
            random_offset: false
        }
        .build(4, [8, 8])
        .is_err()
    );
}

#[test]
fn unequal_visible_counts_are_a_clear_error_for_mae() {
    let m = Mask::from_hidden(vec![true, false, false, true, true, false], 2, 3).unwrap();
    assert_eq!(m.len_keep, None);
    let e = m.ids_keep().unwrap_err().to_string();
    assert!(e.contains("different numbers of visible patches"), "{e}");
}
