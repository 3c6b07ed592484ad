//! Baselines in the same shape as the LQ quantizer: HWGQ (Cai et al. 2017, spec §7) and a uniform k-bit
//! quantizer for ablations. Both are [`Levels`] with a fixed or data-derived basis, so the fused pass, the
//! training layers and the bit-op engine handle them unchanged.

use crate::error::Result;
use crate::lq::{check_bits, check_finite, CodeSet, Levels};

/// HWGQ activation step (2 bits): levels `0.538·{0,1,2,3}`.
pub const HWGQ_STEP: f32 = 0.538;

/// HWGQ 2-bit activation quantizer: levels `{0, 0.538, 1.076, 1.614}`, thresholds `{0, 0.807, 1.345}` (the first
/// threshold is 0, "half-wave", not a midpoint). Its backward clip is the top level 1.614 = [`Levels::max_level`].
/// As a basis with `{0,1}` codes it is `v = [0.538, 1.076]`.
pub fn hwgq_activation() -> Levels {
    let s = HWGQ_STEP;
    Levels::with_thresholds(
        CodeSet::Binary,
        vec![0.0, s, 2.0 * s, 3.0 * s],
        vec![0, 1, 2, 3],
        vec![0.0, 1.5 * s, 2.5 * s],
    )
    .expect("constant HWGQ levels are valid")
}

/// HWGQ binary weights: `sign(w)·mean|w|` over the whole layer, as a 1-bit signed basis `[mean|w|]`.
pub fn hwgq_weight_basis(w: &[f32]) -> Result<Vec<f32>> {
    check_finite("weights", w)?;
    let mean = w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len().max(1) as f64;
    Ok(vec![mean as f32])
}

/// Uniform k-bit activation quantizer (DoReFa-style): `min(x, 1)` rounded to the grid `{0, 1, …, 2^k−1}/(2^k−1)`,
/// i.e. the binary basis `[1, 2, 4, …]/(2^k−1)`; the STE clip is the top level 1.
pub fn uniform_activation_basis(k: u32) -> Result<Vec<f32>> {
    check_bits(k)?;
    let step = 1.0 / ((1u64 << k) - 1) as f64;
    Ok((0..k).map(|j| (step * (1u64 << j) as f64) as f32).collect())
}

/// Uniform symmetric k-bit weight quantizer for one layer: levels `α·{±1, ±3, …, ±(2^k−1)}` with the top level
/// at `max|w|`, i.e. the signed basis `α·[1, 2, 4, …]`, `α = max|w|/(2^k−1)`. One basis for the whole layer.
pub fn uniform_weight_basis(k: u32, w: &[f32]) -> Result<Vec<f32>> {
    check_bits(k)?;
    check_finite("weights", w)?;
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let alpha = max as f64 / ((1u64 << k) - 1) as f64;
    Ok((0..k).map(|j| (alpha * (1u64 << j) as f64) as f32).collect())
}
