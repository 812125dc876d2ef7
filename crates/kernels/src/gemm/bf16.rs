//! bfloat16: the top 16 bits of an f32 (sign, 8 exponent bits, 7 mantissa
//! bits). Mixed-precision products round their inputs to it and accumulate
//! in f32 ([`super::Precision::Bf16`]).

/// f32 → bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 512.0)), 1.0 + 1.0 / 128.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let x = 0.123_456_7f32;
        assert!((from_bf16(to_bf16(x)) - x).abs() <= x * 2f32.powi(-8));
    }
}
