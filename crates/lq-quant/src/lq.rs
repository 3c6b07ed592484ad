//! The LQ-Nets learned quantizer: levels, encoding, the QEM basis fit and its zero-debiased moving average.
//!
//! A K-bit quantizer has a basis `v ∈ R^K`. Its 2^K levels are `q = vᵀe` for every code `e`, where
//! `e ∈ {−1,+1}^K` for weights ([`CodeSet::Signed`]) and `e ∈ {0,1}^K` for activations ([`CodeSet::Binary`]).
//! Code `c` (an integer, bit j = plane j, LSB first) has `e_j = 1` (or +1) when bit j is set (spec §1.1).
//! Levels are sorted ascending with their codes permuted alongside; thresholds are the midpoints of consecutive
//! levels; `x` goes to level `l` = the number of thresholds `t` with `x > t` (strict, the official tie rule:
//! a value exactly on a threshold takes the lower level).
//!
//! QEM (spec §2.1–2.2): with the codes `B` fixed, the basis minimising `‖Bᵀv − x‖² + δ‖v − v_old‖²` is
//! `v* = (G + δI)⁻¹ (h + δ v_old)` with `G = Σ b bᵀ`, `h = Σ b x`, accumulated in f64. The official code uses
//! δ = 1e-4 for weights and no ridge for activations; we use the ridge for both (**deviation**: without it a bit
//! that is never set in a batch makes G singular, spec §2.2 / official issue #2). The stored basis is the
//! TF-style zero-debiased EMA with decay 0.9: `m ← 0.9m + 0.1v*`, `t ← t+1`, `v = m / (1 − 0.9^t)`, so after
//! the first step `v = v*` exactly. [`Moments`] holds the sufficient statistics (count and Σx per code), from
//! which `G` and `h` follow exactly: `G = Σ_c n_c e_c e_cᵀ`, `h = Σ_c s_c e_c`.
//!
//! Bit-op identity used by the engine (spec §3): `Q(w)·Q(a) = Σ_ij v^w_i v^a_j (2·popc(bw_i ∧ ba_j) − popc(ba_j))`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest supported bit width.
pub const MAX_BITS: u32 = 8;
/// Φ⁻¹(0.75), the official code's `NORM_PPF_0_75`, used by the initial bases (spec §2.4).
pub const NORM_PPF_0_75: f64 = 0.6745;
/// Decay of the basis moving average (official `MOVING_AVERAGES_FACTOR`).
pub const EMA_DECAY: f64 = 0.9;
/// Ridge δ of the basis fit (official `EPS` for weights; we use it for activations too).
pub const DEFAULT_RIDGE: f64 = 1e-4;

/// Which binary code set the quantizer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeSet {
    /// `{−1,+1}^K`: weights.
    Signed,
    /// `{0,1}^K`: activations (after ReLU, so non-negative).
    Binary,
}

impl CodeSet {
    /// Value of code bit `j` of `code` in this code set.
    #[inline]
    pub fn coeff(self, code: usize, j: usize) -> f64 {
        match (self, (code >> j) & 1) {
            (_, 1) => 1.0,
            (CodeSet::Signed, _) => -1.0,
            (CodeSet::Binary, _) => 0.0,
        }
    }
}

/// Checks `1 <= k <= MAX_BITS`.
pub fn check_bits(k: u32) -> Result<()> {
    if (1..=MAX_BITS).contains(&k) {
        Ok(())
    } else {
        Err(Error::BitsOutOfRange(k))
    }
}

/// Sorted levels of one basis, the code of each level and the decision thresholds between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Levels {
    code_set: CodeSet,
    levels: Vec<f32>,
    codes: Vec<u8>,
    thresholds: Vec<f32>,
}

impl Levels {
    /// Levels `vᵀe` of `basis` for every code, sorted, with midpoint thresholds.
    pub fn from_basis(basis: &[f32], code_set: CodeSet) -> Result<Self> {
        check_bits(basis.len() as u32)?;
        check_finite("basis", basis)?;
        let mut pairs: Vec<(f32, u8)> = (0..1usize << basis.len())
            .map(|c| {
                let q: f64 = basis.iter().enumerate().map(|(j, &v)| code_set.coeff(c, j) * v as f64).sum();
                (q as f32, c as u8)
            })
            .collect();
        // Stable sort keeps the lower code first among equal levels, so ties are deterministic.
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let thresholds = pairs.windows(2).map(|w| midpoint(w[0].0, w[1].0)).collect();
        let (levels, codes) = pairs.into_iter().unzip();
        Ok(Levels { code_set, levels, codes, thresholds })
    }

    /// Levels with explicit thresholds (HWGQ's first threshold is 0, not a midpoint). `levels` must be sorted and
    /// `thresholds` sorted with one fewer entry.
    pub fn with_thresholds(code_set: CodeSet, levels: Vec<f32>, codes: Vec<u8>, thresholds: Vec<f32>) -> Result<Self> {
        let n = levels.len();
        if !n.is_power_of_two() || n < 2 {
            return Err(invalid("levels", format!("need 2^K entries, got {n}")));
        }
        check_bits(n.trailing_zeros())?;
        for (what, len) in [("codes", codes.len()), ("thresholds", thresholds.len() + 1)] {
            if len != n {
                return Err(Error::ShapeMismatch { what, expected: n, got: len });
            }
        }
        check_finite("levels", &levels)?;
        if !levels.windows(2).all(|w| w[0] <= w[1]) || !thresholds.windows(2).all(|w| w[0] <= w[1]) {
            return Err(invalid("levels", "levels and thresholds must be sorted ascending".into()));
        }
        Ok(Levels { code_set, levels, codes, thresholds })
    }

    /// Bit width K.
    pub fn bits(&self) -> u32 {
        self.levels.len().trailing_zeros()
    }
    /// Code set of the codes.
    pub fn code_set(&self) -> CodeSet {
        self.code_set
    }
    /// Sorted levels (2^K).
    pub fn levels(&self) -> &[f32] {
        &self.levels
    }
    /// Code of each sorted level (bit j = plane j).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// Decision thresholds (2^K − 1), ascending.
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }
    /// The basis these levels come from: the level of the code with only bit j set, relative to code 0 (halved for
    /// signed codes, where flipping bit j moves the level by 2·v_j). Works for levels built with explicit
    /// thresholds too (HWGQ gives `[0.538, 1.076]`).
    pub fn basis(&self) -> Vec<f32> {
        let at = |code: u8| self.levels[self.codes.iter().position(|&c| c == code).expect("every code has a level")];
        let (base, half) = (at(0), if self.code_set == CodeSet::Signed { 0.5 } else { 1.0 });
        (0..self.bits()).map(|j| (at(1 << j) - base) * half).collect()
    }

    /// Largest level: the activation STE passes gradients only where `x <= max_level`.
    pub fn max_level(&self) -> f32 {
        *self.levels.last().expect("levels are never empty")
    }

    /// Sorted-level index of `x`: the number of thresholds strictly below it (official rule, spec §1.1).
    #[inline]
    pub fn index(&self, x: f32) -> usize {
        if self.thresholds.len() <= 15 {
            self.thresholds.iter().map(|&t| (x > t) as usize).sum()
        } else {
            self.thresholds.partition_point(|&t| x > t)
        }
    }

    /// Reference single-threaded pass: `y[i] = Q(x[i])`, optional per-element codes, optional QEM statistics.
    /// [`crate::quantize`] is the fused multi-threaded version and must agree with this one.
    pub fn quantize(
        &self,
        x: &[f32],
        y: &mut [f32],
        mut codes: Option<&mut [u8]>,
        mut moments: Option<&mut Moments>,
    ) -> Result<()> {
        check_len("output", x.len(), y.len())?;
        if let Some(c) = codes.as_deref() {
            check_len("codes", x.len(), c.len())?;
        }
        check_finite("input", x)?;
        for (i, (&xi, yi)) in x.iter().zip(y.iter_mut()).enumerate() {
            let l = self.index(xi);
            *yi = self.levels[l];
            let code = self.codes[l];
            if let Some(c) = codes.as_deref_mut() {
                c[i] = code;
            }
            if let Some(m) = moments.as_deref_mut() {
                m.add(code as usize, xi);
            }
        }
        Ok(())
    }
}

/// Sufficient statistics of one QEM basis step: per code, how many elements took it and the sum of their values.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    /// Elements per code (indexed by code, not by sorted level).
    pub count: Vec<u64>,
    /// Σx per code, in f64.
    pub sum: Vec<f64>,
    /// Σx² over all elements, in f64 (gives the quantization error without a second pass).
    pub sum_sq: f64,
}

impl Moments {
    /// Empty statistics for K bits.
    pub fn new(k: u32) -> Self {
        Moments { count: vec![0; 1 << k], sum: vec![0.0; 1 << k], sum_sq: 0.0 }
    }
    /// Records one element with code `code` and value `x`.
    #[inline]
    pub fn add(&mut self, code: usize, x: f32) {
        self.count[code] += 1;
        self.sum[code] += x as f64;
        self.sum_sq += x as f64 * x as f64;
    }
    /// Adds another set of statistics (same K).
    pub fn merge(&mut self, other: &Moments) {
        self.count.iter_mut().zip(&other.count).for_each(|(a, b)| *a += b);
        self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
        self.sum_sq += other.sum_sq;
    }
    /// Mean squared quantization error `Σ(x − q_c)² / n` of the recorded elements, where `q_c` is the level of
    /// code `c` under `basis` (the basis that encoded them): `Σx² − 2Σ_c q_c s_c + Σ_c n_c q_c²`.
    pub fn mse(&self, basis: &[f32], code_set: CodeSet) -> f64 {
        let n = self.n();
        if n == 0 {
            return 0.0;
        }
        let level = |c: usize| basis.iter().enumerate().map(|(j, &v)| code_set.coeff(c, j) * v as f64).sum::<f64>();
        let cross: f64 =
            (0..self.count.len()).map(|c| level(c) * (self.count[c] as f64 * level(c) - 2.0 * self.sum[c])).sum();
        ((self.sum_sq + cross) / n as f64).max(0.0)
    }
    /// Number of elements seen.
    pub fn n(&self) -> u64 {
        self.count.iter().sum()
    }
    /// The normal equations `G = Σ b bᵀ` (row-major K×K) and `h = Σ b x`.
    pub fn normal_equations(&self, code_set: CodeSet) -> (Vec<f64>, Vec<f64>) {
        let k = self.count.len().trailing_zeros() as usize;
        let (mut g, mut h) = (vec![0.0; k * k], vec![0.0; k]);
        for (c, (&n, &s)) in self.count.iter().zip(&self.sum).enumerate().filter(|(_, (&n, _))| n > 0) {
            for i in 0..k {
                let ei = code_set.coeff(c, i);
                h[i] += ei * s;
                for j in 0..k {
                    g[i * k + j] += ei * code_set.coeff(c, j) * n as f64;
                }
            }
        }
        (g, h)
    }
    /// The least-squares basis `argmin_v ‖Bᵀv − x‖² + δ‖v − v_old‖²` for the recorded codes.
    pub fn solve(&self, code_set: CodeSet, v_old: &[f32], ridge: f64) -> Result<Vec<f64>> {
        let (mut g, mut h) = self.normal_equations(code_set);
        let k = h.len();
        check_len("basis", k, v_old.len())?;
        if !(ridge >= 0.0 && ridge.is_finite()) {
            return Err(invalid("ridge", format!("must be finite and >= 0, got {ridge}")));
        }
        for i in 0..k {
            g[i * k + i] += ridge;
            h[i] += ridge * v_old[i] as f64;
        }
        solve_spd(&mut g, &mut h)?;
        Ok(h)
    }
}

/// Solves `A x = b` in place (A is K×K row-major, symmetric positive semi-definite plus ridge) by Gaussian
/// elimination with partial pivoting; `b` receives x.
fn solve_spd(a: &mut [f64], b: &mut [f64]) -> Result<()> {
    let k = b.len();
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    for col in 0..k {
        let piv = (col..k).max_by(|&i, &j| a[i * k + col].abs().total_cmp(&a[j * k + col].abs())).unwrap();
        let p = a[piv * k + col];
        if p.abs() <= scale * 1e-12 {
            return Err(Error::Singular { row: col, pivot: p });
        }
        if piv != col {
            for j in 0..k {
                a.swap(piv * k + j, col * k + j);
            }
            b.swap(piv, col);
        }
        for r in col + 1..k {
            let f = a[r * k + col] / p;
            for j in col..k {
                a[r * k + j] -= f * a[col * k + j];
            }
            b[r] -= f * b[col];
        }
    }
    for r in (0..k).rev() {
        let s: f64 = (r + 1..k).map(|j| a[r * k + j] * b[j]).sum();
        b[r] = (b[r] - s) / a[r * k + r];
    }
    Ok(())
}

/// The persistent state of a quantizer: the basis of each channel and its zero-debiased moving average.
/// Plain data, serialisable, stored in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QemState {
    /// Bit width K.
    pub bits: u32,
    /// Code set.
    pub code_set: CodeSet,
    /// Current basis, `channels × K` row-major (what the forward pass uses).
    pub basis: Vec<f32>,
    /// Biased EMA accumulator `m`, same shape as `basis`.
    pub biased: Vec<f64>,
    /// Number of EMA updates so far (`t`); 0 means `basis` is still the initial one.
    pub steps: u64,
}

impl QemState {
    /// Official activation init (spec §2.4): uniform levels `0, a, …, (2^K−1)a` with top level 2·0.6745.
    pub fn activation(k: u32) -> Result<Self> {
        check_bits(k)?;
        let a = 2.0 * NORM_PPF_0_75 / ((1u64 << k) - 1) as f64;
        let basis = (0..k).map(|j| (a * (1u64 << j) as f64) as f32).collect();
        Ok(Self::with_basis(k, CodeSet::Binary, basis))
    }

    /// Official weight init (spec §2.4), one basis per output channel: `v_j = 2^j · 0.6745 · sqrt(2/n) / 2^(K−1)`
    /// with `n = kernel_h · kernel_w · C_out` (the official code's fan-out, not the fan-in).
    pub fn weight(k: u32, channels: usize, n: usize) -> Result<Self> {
        check_bits(k)?;
        if channels == 0 || n == 0 {
            return Err(invalid("weight shape", format!("channels = {channels}, n = {n}")));
        }
        let sigma = (2.0 / n as f64).sqrt();
        let one: Vec<f32> =
            (0..k).map(|j| ((1u64 << j) as f64 * NORM_PPF_0_75 * sigma / (1u64 << (k - 1)) as f64) as f32).collect();
        Ok(Self::with_basis(k, CodeSet::Signed, one.repeat(channels)))
    }

    /// A state with the given basis (`channels × K`) and an empty moving average.
    pub fn with_basis(bits: u32, code_set: CodeSet, basis: Vec<f32>) -> Self {
        let biased = vec![0.0; basis.len()];
        QemState { bits, code_set, basis, biased, steps: 0 }
    }

    /// Number of channels (bases).
    pub fn channels(&self) -> usize {
        self.basis.len() / self.bits as usize
    }
    /// Basis of channel `c`.
    pub fn basis_of(&self, c: usize) -> &[f32] {
        let k = self.bits as usize;
        &self.basis[c * k..(c + 1) * k]
    }
    /// Levels of every channel under the current basis.
    pub fn levels(&self) -> Result<Vec<Levels>> {
        (0..self.channels()).map(|c| Levels::from_basis(self.basis_of(c), self.code_set)).collect()
    }

    /// One QEM basis step from per-channel statistics: least squares with ridge, then the zero-debiased EMA.
    pub fn update(&mut self, moments: &[Moments], ridge: f64) -> Result<()> {
        check_len("moments", self.channels(), moments.len())?;
        let k = self.bits as usize;
        let solved = moments
            .iter()
            .enumerate()
            .map(|(c, m)| m.solve(self.code_set, self.basis_of(c), ridge))
            .collect::<Result<Vec<_>>>()?;
        self.steps += 1;
        let debias = 1.0 - EMA_DECAY.powi(self.steps.min(i32::MAX as u64) as i32);
        for (c, v_star) in solved.iter().enumerate() {
            let (m, v) = (&mut self.biased[c * k..(c + 1) * k], &mut self.basis[c * k..(c + 1) * k]);
            for ((m, v), &s) in m.iter_mut().zip(v.iter_mut()).zip(v_star) {
                *m = EMA_DECAY * *m + (1.0 - EMA_DECAY) * s;
                *v = (*m / debias) as f32;
            }
        }
        Ok(())
    }
}

/// Straight-through gradient mask of the activation quantizer (spec §2.3): 1 where `x <= q_max`, else 0.
pub fn ste_mask(x: &[f32], q_max: f32, mask: &mut [f32]) -> Result<()> {
    check_len("mask", x.len(), mask.len())?;
    mask.iter_mut().zip(x).for_each(|(m, &v)| *m = if v <= q_max { 1.0 } else { 0.0 });
    Ok(())
}

#[inline]
fn midpoint(a: f32, b: f32) -> f32 {
    ((a as f64 + b as f64) / 2.0) as f32
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { what, expected, got })
    }
}

pub(crate) fn check_finite(what: &'static str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { what, index, value: x[index] }),
    }
}

pub(crate) fn invalid(what: &'static str, why: String) -> Error {
    Error::Invalid { what, why }
}
