//! Scalar oracles for tests: the obvious, never-optimised versions of encoding and the basis fit.

use crate::lq::CodeSet;

/// Nearest level by brute force over all 2^K codes: returns (level value, code). Ties go to the smaller
/// level, then to the smaller code, which is what the strict threshold rule does for distinct levels.
pub fn nearest(basis: &[f32], code_set: CodeSet, x: f32) -> (f32, u8) {
    let mut best: Option<(f64, f64, u8)> = None;
    for c in 0..1usize << basis.len() {
        let q: f64 = basis.iter().enumerate().map(|(j, &v)| code_set.coeff(c, j) * v as f64).sum();
        let d = (x as f64 - q).abs();
        let better = match best {
            None => true,
            Some((bd, bq, _)) => d < bd || (d == bd && q < bq),
        };
        if better {
            best = Some((d, q, c as u8));
        }
    }
    let (_, q, c) = best.expect("at least two codes");
    (q as f32, c)
}

/// Sum of squared errors `‖Bᵀv − x‖²` of `x` under basis `v` with the given per-element codes, in f64.
pub fn sse(basis: &[f64], code_set: CodeSet, x: &[f32], codes: &[u8]) -> f64 {
    x.iter()
        .zip(codes)
        .map(|(&xi, &c)| {
            let q: f64 = basis.iter().enumerate().map(|(j, &v)| code_set.coeff(c as usize, j) * v).sum();
            (xi as f64 - q).powi(2)
        })
        .sum()
}
