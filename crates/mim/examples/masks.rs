//! What the five masking strategies hide on a 14 × 14 grid (ViT-B/16 at
//! 224 px), one image each, side by side (`#` hidden):
//! `cargo run --release -p tessera-mim --example masks`.

use rand::SeedableRng;
use tessera_mim::model::masking::{Mask, MaskingConfig};
use tessera_mim::rng::MimRng;

fn main() -> tessera_mim::Result<()> {
    let grid = [14, 14];
    let strategies = [
        ("random 0.75", MaskingConfig::Random { ratio: 0.75 }),
        (
            "block 0.4",
            MaskingConfig::Block {
                ratio: 0.4,
                min_patches: 16,
            },
        ),
        (
            "square 6, centred",
            MaskingConfig::Square {
                side: 6,
                centered: true,
            },
        ),
        (
            "grid k=2",
            MaskingConfig::Grid {
                k: 2,
                random_offset: false,
            },
        ),
        (
            "simmim 0.6, 32 px",
            MaskingConfig::SimMim {
                ratio: 0.6,
                cell_px: 32,
            },
        ),
    ];
    let mut columns = Vec::new();
    for (name, cfg) in &strategies {
        let strategy = cfg.build(16, grid)?;
        let mask = Mask::sample(strategy.as_ref(), 1, grid, &mut MimRng::seed_from_u64(3));
        let rows: Vec<String> = mask.ascii(0, grid).lines().map(String::from).collect();
        columns.push((name, rows));
    }
    let width = 18;
    let header: Vec<String> = columns.iter().map(|(n, _)| format!("{n:<width$}")).collect();
    println!("{}", header.join("").trim_end());
    for r in 0..grid[0] {
        let line: Vec<String> = columns.iter().map(|(_, rows)| format!("{:<width$}", rows[r])).collect();
        println!("{}", line.join("").trim_end());
    }
    Ok(())
}
