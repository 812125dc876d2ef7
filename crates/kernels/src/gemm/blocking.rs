//! The driver's block sizes, from the caches of the CPU it runs on.
//!
//! ```text
//! KC  depth of a k block:  an A micro-panel (12 × KC × 4 B) fills at most half of L1d
//!                          (Zen 4, 32 KiB: 256 → 12 KiB;  Sapphire Rapids, 48 KiB: 512 → 24 KiB)
//! NC  widest column block: its packed B block (KC × NC × 4 B) fills at most half of L2
//!                          (Zen 4, 1 MiB: 512 → 512 KiB; Sapphire Rapids, 2 MiB: 512 → 1 MiB)
//! ```
//!
//! Both are powers of two (KC in 128..=512, NC in 256..=1024), so that a
//! row of packed B stays aligned and the blocks of a product are the same
//! on every thread. A deeper KC halves the passes over C of a deep product
//! (C is read and written once per k block): on the 2-core Sapphire Rapids,
//! `400 × 3072 · 3072 × 768` on two threads ran at 235 GFLOP/s with KC =
//! 256 and 261 with KC = 512 (docs/benchmarks.md, issue 29). Where the
//! caches cannot be read (no sysfs), the sizes are Zen 4's, on which the
//! driver was first tuned.
//!
//! Determinism: an element's value depends on KC (its k blocks), so it is
//! bit-identical for any thread count on one machine, and may differ in the
//! last bits between machines whose L1d differ.

use std::sync::OnceLock;

/// Deepest k block any CPU gets (for buffers on the stack).
pub(crate) const MAX_KC: usize = 512;

/// The block sizes, and the cache sizes they came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of a k block.
    pub kc: usize,
    /// Widest column block.
    pub nc: usize,
    /// L1 data cache of one core, bytes (`None`: not known).
    pub l1d: Option<usize>,
    /// L2 cache of one core, bytes.
    pub l2: Option<usize>,
    /// Whether the f32 AVX-512 kernel prefetches its B panel ahead: on Intel
    /// CPUs, where it was measured (Sapphire Rapids, 2 threads: products
    /// +4–10%, docs/benchmarks.md); the AMD CPUs the driver was tuned on keep
    /// the loop they were measured with.
    pub prefetch_b: bool,
    /// Whether packing a transposed A (the dW products) asks for its rows at
    /// one k 8 steps of k ahead: on Intel CPUs, where it was measured (an
    /// Emerald Rapids class guest, one thread, operands cold: dW products
    /// +3–13%, docs/benchmarks.md); the AMD CPUs keep the packing they were
    /// measured with.
    pub prefetch_packs: bool,
    /// Micro-panels of A the driver packs at once when it packs A (a
    /// transposed A: the dW products). Measured per vendor, not derived: on
    /// the Zen 4 a run of 64 panels (768 rows × KC) let the prefetchers follow
    /// a transposed A in long runs per k (512 × 4160 · 4160 × 128: 82, 83, 86
    /// and 92 GFLOP/s with 8, 16, 32 and 64 panels); on Sapphire Rapids, KC
    /// twice as deep, 8 panels did best (768 × 1088 · 1088 × 192, one
    /// thread: 127, 132, 131, 144 GFLOP/s with 64, 32, 16, 8; 148 and 147
    /// with 4 and 2; docs/benchmarks.md).
    pub a_panels: usize,
}

impl Blocking {
    /// The sizes for caches of `l1d` and `l2` bytes (either unknown: Zen 4's).
    pub fn for_caches(l1d: Option<usize>, l2: Option<usize>) -> Blocking {
        // The A micro-panel of the widest kernel: 12 rows of f32.
        let kc = l1d.map_or(256, |l1| pow2_floor(l1 / 2 / (12 * 4)).clamp(128, MAX_KC));
        let nc = l2.map_or(512, |l2| pow2_floor(l2 / 2 / (kc * 4)).clamp(256, 1024));
        Blocking {
            kc,
            nc,
            l1d,
            l2,
            prefetch_b: false,
            prefetch_packs: false,
            a_panels: 64,
        }
    }

    /// The sizes for this CPU (read once).
    pub fn detected() -> Blocking {
        static DETECTED: OnceLock<Blocking> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let (l1d, l2) = cache_sizes();
            let intel = intel();
            Blocking {
                prefetch_b: intel,
                prefetch_packs: intel,
                a_panels: if intel { 8 } else { 64 },
                ..Blocking::for_caches(l1d, l2)
            }
        })
    }
}

/// True on a CPU whose CPUID vendor is "GenuineIntel".
fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let v = std::arch::x86_64::__cpuid(0);
        // The vendor string is EBX, EDX, ECX: "Genu" "ineI" "ntel".
        [v.ebx, v.edx, v.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The largest power of two ≤ `x` (1 for 0).
fn pow2_floor(x: usize) -> usize {
    if x == 0 { 1 } else { 1 << x.ilog2() }
}

/// L1d and L2 of cpu0, from Linux's sysfs (`cache/index*/{level,type,size}`).
fn cache_sizes() -> (Option<usize>, Option<usize>) {
    let (mut l1d, mut l2) = (None, None);
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).map(|s| s.trim().to_string());
        let (Ok(level), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        let Some(bytes) = parse_size(&size) else { continue };
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") => l1d = Some(bytes),
            ("2", "Unified" | "Data") => l2 = Some(bytes),
            _ => {}
        }
    }
    (l1d, l2)
}

/// `48K`, `2048K`, `1M` or a plain number of bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_caches() {
        let zen4 = Blocking::for_caches(Some(32 << 10), Some(1 << 20));
        assert_eq!((zen4.kc, zen4.nc), (256, 512), "the sizes the driver was tuned with");
        let spr = Blocking::for_caches(Some(48 << 10), Some(2 << 20));
        assert_eq!((spr.kc, spr.nc), (512, 512));
        let unknown = Blocking::for_caches(None, None);
        assert_eq!((unknown.kc, unknown.nc), (256, 512));
        let tiny = Blocking::for_caches(Some(4 << 10), Some(64 << 10));
        assert_eq!((tiny.kc, tiny.nc), (128, 256), "clamped below");
        let huge = Blocking::for_caches(Some(1 << 20), Some(64 << 20));
        assert_eq!((huge.kc, huge.nc), (MAX_KC, 1024), "clamped above");
        let d = Blocking::detected();
        assert!(d.kc.is_power_of_two() && (128..=MAX_KC).contains(&d.kc));
        assert!(d.nc.is_power_of_two() && (256..=1024).contains(&d.nc));
    }

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }
}
