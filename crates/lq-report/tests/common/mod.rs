//! Shared test data: deterministic Gaussian values and a quantizer fitted to them by QEM (a "trained" layer).
#![allow(dead_code)]

use lq_quant::{quantize, QemState};

/// `n` values from N(mean, sd²), deterministic (xorshift + Box–Muller).
pub fn gaussian(n: usize, mean: f32, sd: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            mean + sd * ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// ReLU of a Gaussian: half the values are exactly 0, like activations after BN→ReLU.
pub fn relu_gaussian(n: usize, seed: u64) -> Vec<f32> {
    gaussian(n, 0.0, 1.0, seed).into_iter().map(|x| x.max(0.0)).collect()
}

/// Runs `steps` QEM steps of `state` on `x` (rows = channels), as training does.
pub fn fit(state: &mut QemState, x: &[f32], steps: usize) {
    let mut y = vec![0.0; x.len()];
    for _ in 0..steps {
        let lv = state.levels().unwrap();
        let m = quantize(&lv, x, &mut y, None, true).unwrap().unwrap();
        state.update(&m, lq_quant::DEFAULT_RIDGE).unwrap();
    }
}

/// A trained 3-bit weight layer: 16 output channels of a 3×3×16 conv with He-like weights, and its quantizer.
pub fn weight_layer() -> (Vec<f32>, QemState) {
    let (c_out, per) = (16, 3 * 3 * 16);
    let sd = (2.0f32 / (9 * c_out) as f32).sqrt();
    let w: Vec<f32> = (0..c_out).flat_map(|c| gaussian(per, 0.0, sd * (1.0 + c as f32 / 16.0), 7 + c as u64)).collect();
    let mut st = QemState::weight(3, c_out, 9 * c_out).unwrap();
    fit(&mut st, &w, 30);
    (w, st)
}

/// A trained 3-bit activation quantizer and the values it was trained on.
pub fn act_layer(n: usize) -> (Vec<f32>, QemState) {
    let x = relu_gaussian(n, 11);
    let mut st = QemState::activation(3).unwrap();
    fit(&mut st, &x, 30);
    (x, st)
}
