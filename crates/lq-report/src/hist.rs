//! Fixed-bin histograms and value ranges, both streaming: memory is set by the bin count, never by the number of
//! values, and two partial results merge into exactly the one-shot result.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Most bins a histogram may have.
pub const MAX_BINS: usize = 1 << 16;

/// Equal-width histogram over `[lo, hi]`: `counts[i]` holds the values in `[lo + i·w, lo + (i+1)·w)` (the last bin
/// also holds `hi`). Values outside the range are counted in `below` / `above`, non-finite values in
/// `non_finite`, so nothing is lost: `total()` is the number of values added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Values per bin.
    pub counts: Vec<u64>,
    /// Finite values `< lo`.
    pub below: u64,
    /// Finite values `> hi`.
    pub above: u64,
    /// NaN or infinite values.
    pub non_finite: u64,
}

impl Histogram {
    /// An empty histogram of `bins` equal bins over `[lo, hi]`; `lo < hi`, both finite, `1 <= bins <= MAX_BINS`.
    pub fn new(lo: f64, hi: f64, bins: usize) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid("histogram range", format!("need finite lo < hi, got [{lo}, {hi}]")));
        }
        if !(1..=MAX_BINS).contains(&bins) {
            return Err(Error::invalid("histogram bins", format!("need 1..={MAX_BINS}, got {bins}")));
        }
        Ok(Histogram { lo, hi, counts: vec![0; bins], below: 0, above: 0, non_finite: 0 })
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len() as f64
    }

    /// Left edge of bin `i` (`i = bins` gives `hi`).
    pub fn edge(&self, i: usize) -> f64 {
        if i >= self.counts.len() {
            self.hi
        } else {
            self.lo + i as f64 * self.bin_width()
        }
    }

    /// Counts one value.
    #[inline]
    pub fn add(&mut self, x: f32) {
        let x = x as f64;
        if !x.is_finite() {
            self.non_finite += 1;
        } else if x < self.lo {
            self.below += 1;
        } else if x > self.hi {
            self.above += 1;
        } else {
            let bins = self.counts.len();
            let i = ((x - self.lo) / (self.hi - self.lo) * bins as f64) as usize;
            self.counts[i.min(bins - 1)] += 1;
        }
    }

    /// Counts every value of a chunk.
    pub fn extend(&mut self, xs: &[f32]) {
        xs.iter().for_each(|&x| self.add(x));
    }

    /// Adds another histogram with the same range and bins.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if (self.lo, self.hi, self.counts.len()) != (other.lo, other.hi, other.counts.len()) {
            return Err(Error::invalid(
                "histogram merge",
                format!(
                    "[{}, {}] in {} bins vs [{}, {}] in {} bins",
                    self.lo,
                    self.hi,
                    self.counts.len(),
                    other.lo,
                    other.hi,
                    other.counts.len()
                ),
            ));
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.below += other.below;
        self.above += other.above;
        self.non_finite += other.non_finite;
        Ok(())
    }

    /// Every value added (in range, outside it and non-finite).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.below + self.above + self.non_finite
    }
}

/// Streaming minimum and maximum of the finite values seen: the first pass of a two-pass histogram.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    /// Smallest finite value (`+∞` before any).
    pub min: f64,
    /// Largest finite value (`−∞` before any).
    pub max: f64,
}

impl Default for Range {
    fn default() -> Self {
        Range { min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Range {
    /// Range of one chunk.
    pub fn of(xs: &[f32]) -> Self {
        let mut r = Range::default();
        r.extend(xs);
        r
    }
    /// Widens the range to cover the finite values of `xs`.
    pub fn extend(&mut self, xs: &[f32]) {
        for &x in xs.iter().filter(|x| x.is_finite()) {
            self.min = self.min.min(x as f64);
            self.max = self.max.max(x as f64);
        }
    }
    /// Union with another range.
    pub fn merge(&mut self, other: &Range) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
    /// Includes one extra point (e.g. the quantizer's levels, so the markers stay inside the plot).
    pub fn include(&mut self, x: f64) {
        if x.is_finite() {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }
    /// An empty histogram over this range; a range of one point (or none) is widened so that it has a width.
    pub fn histogram(&self, bins: usize) -> Result<Histogram> {
        let (lo, hi) = if self.min > self.max { (0.0, 1.0) } else { (self.min, self.max) };
        let pad = if hi > lo { 0.0 } else { lo.abs().max(1e-6) * 0.5 };
        Histogram::new(lo - pad, hi + pad, bins)
    }
}
