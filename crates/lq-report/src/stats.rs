//! Per-layer quantizer statistics: how the values of one layer fall on its learned levels, and how well the learned,
//! initial and uniform quantizers fit them (spec §8 and the supplement's Fig. I).
//!
//! Weights are in memory anyway (one `[C_out, …]` tensor), so [`LayerStats::weights`] takes the whole slice.
//! Activations are streamed: [`ActivationCollector`] takes any number of chunks (e.g. one per test batch) into a
//! fixed-bin histogram and per-level tallies, so memory does not grow with the number of values. Its histogram
//! range is fixed up front: from a first [`Range`] pass over the same batches, or [`ActivationCollector::level_range`].

use crate::error::{Error, Result};
use crate::hist::{Histogram, Range};
use lq_quant::{baselines, CodeSet, Levels, QemState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default number of equal-width bins of a "before" histogram.
pub const DEFAULT_BINS: usize = 64;

/// Which tensor a quantizer sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Latent float weights, one basis per output channel (codes ±1).
    Weight,
    /// Activations at the quantizer input (after BN→ReLU), one basis per layer (codes 0/1).
    Activation,
}

/// Mean squared quantization error of four quantizers on the same values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mse {
    /// The learned (trained) levels.
    pub learned: f64,
    /// The official initial quantizer (spec §2.4: `QemState::weight` / `QemState::activation`).
    pub initial: f64,
    /// `lq_quant::baselines`: weights `uniform_weight_basis` (top level at the layer's max |w|), activations
    /// `uniform_activation_basis` (the grid `{0, …, 2^K−1}/(2^K−1)`).
    pub uniform: f64,
    /// A uniform grid spanning the learned levels' own range (same top level, even spacing): isolates what the
    /// learned spacing buys.
    pub uniform_span: f64,
}

/// Everything one layer's pair of Figure-I panels draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Panel {
    /// Weights: the output channel shown (each has its own basis); activations: `None` (the whole layer).
    pub channel: Option<usize>,
    /// Basis `v` of the shown quantizer.
    pub basis: Vec<f32>,
    /// Sorted levels `vᵀe` (the orange diamonds).
    pub levels: Vec<f32>,
    /// Decision thresholds between the levels.
    pub thresholds: Vec<f32>,
    /// Values quantized to each sorted level (the "after" bars).
    pub counts: Vec<u64>,
    /// `counts / n`.
    pub fractions: Vec<f64>,
    /// Equal-width histogram of the float values (the "before" bars).
    pub histogram: Histogram,
    /// Errors of the quantizers on these values.
    pub mse: Mse,
}

/// Statistics of one quantized layer (`stats.json` holds one per layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Layer name (the quantizer's name in the trainer).
    pub name: String,
    /// Weights or activations.
    pub kind: Kind,
    /// Bit width K.
    pub bits: u32,
    /// Number of bases (output channels for weights, 1 for activations).
    pub channels: usize,
    /// Finite values counted.
    pub n: u64,
    /// NaN/infinite values seen and skipped.
    pub non_finite: u64,
    /// Whole layer: values per sorted-level index (for weights summed over channels, each on its own levels).
    pub counts: Vec<u64>,
    /// `counts / n`.
    pub fractions: Vec<f64>,
    /// Whole layer: errors of the four quantizers.
    pub mse: Mse,
    /// What the figure draws.
    pub panel: Panel,
}

/// Counts per sorted level of the learned quantizer and squared errors of it and the three references.
#[derive(Clone, Debug)]
struct Tally {
    /// learned, initial, uniform, uniform_span.
    quantizers: [Levels; 4],
    counts: Vec<u64>,
    sq: [f64; 4],
    n: u64,
    non_finite: u64,
}

impl Tally {
    fn new(quantizers: [Levels; 4]) -> Self {
        let counts = vec![0; quantizers[0].levels().len()];
        Tally { quantizers, counts, sq: [0.0; 4], n: 0, non_finite: 0 }
    }
    fn add(&mut self, xs: &[f32]) {
        for &x in xs {
            if !x.is_finite() {
                self.non_finite += 1;
                continue;
            }
            self.n += 1;
            for (q, (lv, sq)) in self.quantizers.iter().zip(self.sq.iter_mut()).enumerate() {
                let l = lv.index(x);
                let d = x as f64 - lv.levels()[l] as f64;
                *sq += d * d;
                if q == 0 {
                    self.counts[l] += 1;
                }
            }
        }
    }
    fn merge(&mut self, o: &Tally) {
        self.counts.iter_mut().zip(&o.counts).for_each(|(a, b)| *a += b);
        self.sq.iter_mut().zip(&o.sq).for_each(|(a, b)| *a += b);
        self.n += o.n;
        self.non_finite += o.non_finite;
    }
    fn mse(&self) -> Mse {
        let m = |i: usize| if self.n == 0 { 0.0 } else { self.sq[i] / self.n as f64 };
        Mse { learned: m(0), initial: m(1), uniform: m(2), uniform_span: m(3) }
    }
    fn panel(&self, channel: Option<usize>, basis: &[f32], histogram: Histogram) -> Panel {
        let lv = &self.quantizers[0];
        Panel {
            channel,
            basis: basis.to_vec(),
            levels: lv.levels().to_vec(),
            thresholds: lv.thresholds().to_vec(),
            counts: self.counts.clone(),
            fractions: fractions(&self.counts, self.n),
            histogram,
            mse: self.mse(),
        }
    }
}

fn fractions(counts: &[u64], n: u64) -> Vec<f64> {
    counts.iter().map(|&c| if n == 0 { 0.0 } else { c as f64 / n as f64 }).collect()
}

/// A uniform grid with the same top level as `lv` (signed: `α·{±1, ±3, …}`; binary: `α·{0, 1, …}`).
fn span_levels(lv: &Levels) -> std::result::Result<Levels, lq_quant::Error> {
    let k = lv.bits();
    let top = lv.levels().iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let alpha = top as f64 / ((1u64 << k) - 1) as f64;
    let basis: Vec<f32> = (0..k).map(|j| (alpha * (1u64 << j) as f64) as f32).collect();
    Levels::from_basis(&basis, lv.code_set())
}

/// Histogram options shared by weights and activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Equal-width bins of the "before" histogram. A weight channel of `n` values uses `min(bins, max(10, 2√n))`
    /// (a 3×3×16 filter has only 144 values).
    pub bins: usize,
    /// Weights: the output channel the figure shows.
    pub channel: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { bins: DEFAULT_BINS, channel: 0 }
    }
}

impl LayerStats {
    /// Statistics of a weight quantizer. `w` is the latent weight tensor, output channel first (`[C_out, …]`,
    /// row-major), `state` its quantizer (one signed basis per output channel) and `kernel_area` = `k_h·k_w` (1 for
    /// fully connected layers), which sets the official initial basis (`n = k_h·k_w·C_out`, spec §2.4).
    pub fn weights(name: &str, state: &QemState, kernel_area: usize, w: &[f32], opts: &Options) -> Result<Self> {
        let bad = |why: String| Error::invalid(format!("layer {name}"), why);
        let q = |e| Error::quant(name, e);
        if state.code_set != CodeSet::Signed {
            return Err(bad("a weight quantizer needs signed (±1) codes".into()));
        }
        let channels = state.channels();
        if channels == 0 || w.is_empty() || !w.len().is_multiple_of(channels) {
            return Err(bad(format!("{} weights do not split into {channels} output channels", w.len())));
        }
        if opts.channel >= channels {
            return Err(bad(format!("channel {} out of range (layer has {channels})", opts.channel)));
        }
        let k = state.bits;
        let finite: Vec<f32> = w.iter().copied().filter(|x| x.is_finite()).collect();
        let initial = QemState::weight(k, 1, kernel_area * channels).map_err(q)?.levels().map_err(q)?.remove(0);
        let uniform =
            Levels::from_basis(&baselines::uniform_weight_basis(k, &finite).map_err(q)?, CodeSet::Signed).map_err(q)?;
        let per = w.len() / channels;
        let mut total: Option<Tally> = None;
        let mut shown = None;
        for (c, row) in w.chunks(per).enumerate() {
            let learned = Levels::from_basis(state.basis_of(c), CodeSet::Signed).map_err(q)?;
            let span = span_levels(&learned).map_err(q)?;
            let mut t = Tally::new([learned, initial.clone(), uniform.clone(), span]);
            t.add(row);
            if c == opts.channel {
                let mut r = Range::of(row);
                t.quantizers[0].levels().iter().for_each(|&l| r.include(l as f64));
                let bins = opts.bins.min(((2.0 * (row.len() as f64).sqrt()) as usize).max(10));
                let mut h = r.histogram(bins)?;
                h.extend(row);
                shown = Some(t.panel(Some(c), state.basis_of(c), h));
            }
            match total.as_mut() {
                Some(tot) => tot.merge(&t),
                None => total = Some(t),
            }
        }
        let total = total.expect("at least one channel");
        Ok(LayerStats {
            name: name.to_string(),
            kind: Kind::Weight,
            bits: k,
            channels,
            n: total.n,
            non_finite: total.non_finite,
            counts: total.counts.clone(),
            fractions: fractions(&total.counts, total.n),
            mse: total.mse(),
            panel: shown.expect("channel checked above"),
        })
    }
}

/// Streams activation values of one quantizer into a fixed-bin histogram and per-level tallies.
#[derive(Clone, Debug)]
pub struct ActivationCollector {
    name: String,
    basis: Vec<f32>,
    tally: Tally,
    hist: Histogram,
}

impl ActivationCollector {
    /// A collector for the activation quantizer `state` (one binary basis) whose histogram covers `range`.
    pub fn new(name: &str, state: &QemState, range: Range, opts: &Options) -> Result<Self> {
        let q = |e| Error::quant(name, e);
        if state.code_set != CodeSet::Binary || state.channels() != 1 {
            return Err(Error::invalid(
                format!("layer {name}"),
                format!("an activation quantizer needs one basis with 0/1 codes, got {} channels", state.channels()),
            ));
        }
        let k = state.bits;
        let learned = Levels::from_basis(&state.basis, CodeSet::Binary).map_err(q)?;
        let initial = QemState::activation(k).map_err(q)?.levels().map_err(q)?.remove(0);
        let uniform =
            Levels::from_basis(&baselines::uniform_activation_basis(k).map_err(q)?, CodeSet::Binary).map_err(q)?;
        let span = span_levels(&learned).map_err(q)?;
        let mut range = range;
        learned.levels().iter().for_each(|&l| range.include(l as f64));
        let hist = range.histogram(opts.bins)?;
        let tally = Tally::new([learned, initial, uniform, span]);
        Ok(ActivationCollector { name: name.to_string(), basis: state.basis.clone(), tally, hist })
    }

    /// A histogram range from the levels alone, for a single pass: `[min(0, q_min), 2·q_max]`. Values above it
    /// are still counted (in `Histogram::above`) and quantized; only their bin is lost.
    pub fn level_range(state: &QemState) -> Range {
        let mut r = Range::default();
        r.include(0.0);
        for c in 0..1usize << state.bits {
            let q: f64 = (0..state.bits as usize)
                .map(|j| state.code_set.coeff(c, j) * state.basis.get(j).copied().unwrap_or(0.0) as f64)
                .sum();
            r.include(q);
            r.include(2.0 * q);
        }
        r
    }

    /// Adds one chunk of values (any size, e.g. one batch).
    pub fn push(&mut self, xs: &[f32]) {
        self.tally.add(xs);
        self.hist.extend(xs);
    }

    /// Adds another collector of the same layer (same levels and histogram range), e.g. from another thread.
    pub fn merge(&mut self, other: &ActivationCollector) -> Result<()> {
        if self.tally.quantizers[0] != other.tally.quantizers[0] {
            return Err(Error::invalid(format!("layer {}", self.name), "merging collectors with different levels"));
        }
        self.hist.merge(&other.hist)?;
        self.tally.merge(&other.tally);
        Ok(())
    }

    /// The statistics of every value pushed; an error if none was finite.
    pub fn finish(self) -> Result<LayerStats> {
        let t = &self.tally;
        if t.n == 0 {
            return Err(Error::invalid(format!("layer {}", self.name), "no finite activation values were collected"));
        }
        Ok(LayerStats {
            name: self.name,
            kind: Kind::Activation,
            bits: t.quantizers[0].bits(),
            channels: 1,
            n: t.n,
            non_finite: t.non_finite,
            counts: t.counts.clone(),
            fractions: fractions(&t.counts, t.n),
            mse: t.mse(),
            panel: t.panel(None, &self.basis, self.hist),
        })
    }
}

/// The contents of `stats.json`: every number Figure I draws, for every layer collected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    /// Model name for titles, e.g. "ResNet-20".
    pub model: String,
    /// Weight bit width of the network.
    pub w_bits: u32,
    /// Activation bit width of the network.
    pub a_bits: u32,
    /// Where the values came from, e.g. "checkpoint runs/x/last.safetensors, 4 test batches".
    pub source: String,
    /// One entry per quantizer, weights and activations, in network order.
    pub layers: Vec<LayerStats>,
}

impl StatsFile {
    /// Writes `dir/stats.json` (pretty JSON) and returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("stats.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::format(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
    /// Reads a `stats.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
    }
}
