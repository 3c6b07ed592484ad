//! The fused fast path: one pass over a weight matrix or activation tensor that quantizes, writes the codes if
//! asked and accumulates the QEM statistics, split over threads (rayon) by rows and chunks.
//!
//! For K ≤ 4 the per-element work is branch-free: each of the 2^K − 1 thresholds is one compare and one blend
//! (levels and thresholds are sorted, so the last threshold passed wins), and the statistics are accumulated per
//! block as masked sums. The same generic kernel is compiled twice, once with AVX2 enabled, and chosen at run time.
//! Larger K falls back to [`Levels::quantize`]. Work is split into fixed chunks merged in order, so the result
//! does not depend on the number of threads.

use crate::error::Result;
use crate::lq::{check_finite, check_len, invalid, Levels, Moments};
use rayon::prelude::*;

/// Elements per parallel work item (per row, the remainder forms a shorter item).
const CHUNK: usize = 1 << 16;
/// Elements per inner block (statistics are flushed from registers once per block).
const BLOCK: usize = 64;

/// Quantizes `x`, viewed as `levels.len()` equal rows (one basis per row: weights use one row per output channel,
/// activations one row for the whole tensor), into `y`. Writes the code of every element into `codes` if given,
/// and returns per-row QEM statistics if `fit`. Fails on non-finite input or mismatched lengths.
pub fn quantize(levels: &[Levels], x: &[f32], y: &mut [f32], codes: Option<&mut [u8]>, fit: bool) -> Result<Option<Vec<Moments>>> {
    let rows = levels.len();
    if rows == 0 || x.len() % rows != 0 {
        return Err(invalid("rows", format!("{} elements do not split into {rows} rows", x.len())));
    }
    check_len("output", x.len(), y.len())?;
    if let Some(c) = codes.as_deref() {
        check_len("codes", x.len(), c.len())?;
    }
    let n = x.len() / rows;
    let k = levels[0].bits();
    if levels.iter().any(|l| l.bits() != k) {
        return Err(invalid("levels", "all rows must have the same bit width".into()));
    }
    // Work items: (row, chunk of that row), in order.
    let per_row = n.div_ceil(CHUNK).max(1);
    let mut codes_chunks: Vec<Option<&mut [u8]>> = match codes {
        Some(c) => row_chunks_mut(c, n).map(Some).collect(),
        None => (0..rows * per_row).map(|_| None).collect(),
    };
    let items: Vec<_> = row_chunks(x, n).zip(row_chunks_mut(y, n)).zip(codes_chunks.iter_mut()).enumerate().collect();
    let stats: Vec<(usize, Option<Moments>, bool)> = items
        .into_par_iter()
        .map(|(item, ((xc, yc), cc))| {
            let lv = &levels[item / per_row];
            let mut m = fit.then(|| Moments::new(k));
            let ok = pass(lv, xc, yc, cc.as_deref_mut(), m.as_mut());
            (item / per_row, m, ok)
        })
        .collect();
    if stats.iter().any(|s| !s.2) {
        check_finite("input", x)?;
    }
    if !fit {
        return Ok(None);
    }
    let mut out = vec![Moments::new(k); rows];
    for (row, m, _) in &stats {
        out[*row].merge(m.as_ref().expect("fit requested"));
    }
    Ok(Some(out))
}

fn row_chunks(x: &[f32], n: usize) -> impl Iterator<Item = &[f32]> {
    x.chunks(n.max(1)).flat_map(|row| row.chunks(CHUNK))
}

fn row_chunks_mut<T>(x: &mut [T], n: usize) -> impl Iterator<Item = &mut [T]> {
    x.chunks_mut(n.max(1)).flat_map(|row| row.chunks_mut(CHUNK))
}

/// One chunk, single-threaded; returns false if an element was not finite (the outputs are then meaningless).
fn pass(lv: &Levels, x: &[f32], y: &mut [f32], codes: Option<&mut [u8]>, m: Option<&mut Moments>) -> bool {
    macro_rules! go {
        ($t:literal) => {{
            let k = Kernel::<$t>::new(lv);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was just detected on this CPU.
                return unsafe { k.run_avx2(x, y, codes, m) };
            }
            k.run(x, y, codes, m)
        }};
    }
    match lv.thresholds().len() {
        1 => go!(1),
        3 => go!(3),
        7 => go!(7),
        15 => go!(15),
        _ => lv.quantize(x, y, codes, m).is_ok(),
    }
}

/// Sorted levels, their codes and the thresholds in fixed-size arrays, so that the per-element loop unrolls.
struct Kernel<const T: usize> {
    thr: [f32; T],
    lv: Vec<f32>,
    code: Vec<u8>,
}

impl<const T: usize> Kernel<T> {
    fn new(l: &Levels) -> Self {
        Kernel { thr: l.thresholds().try_into().expect("T thresholds"), lv: l.levels().to_vec(), code: l.codes().to_vec() }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, x: &[f32], y: &mut [f32], codes: Option<&mut [u8]>, m: Option<&mut Moments>) -> bool {
        self.run(x, y, codes, m)
    }

    #[inline(always)]
    fn run(&self, x: &[f32], y: &mut [f32], mut codes: Option<&mut [u8]>, mut m: Option<&mut Moments>) -> bool {
        let mut finite = true;
        let mut idx = [0u8; BLOCK];
        for (b, (xb, yb)) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)).enumerate() {
            finite &= self.block(xb, yb, &mut idx);
            if let Some(c) = codes.as_deref_mut() {
                let cb = &mut c[b * BLOCK..b * BLOCK + xb.len()];
                cb.iter_mut().zip(&idx).for_each(|(c, &i)| *c = self.code[i as usize]);
            }
            if let Some(m) = m.as_deref_mut() {
                self.stats(xb, &idx[..xb.len()], m);
            }
        }
        finite
    }

    /// Quantizes one block and leaves the sorted-level index of each element in `idx`.
    #[inline(always)]
    fn block(&self, xb: &[f32], yb: &mut [f32], idx: &mut [u8; BLOCK]) -> bool {
        let mut finite = true;
        for ((&v, out), id) in xb.iter().zip(yb.iter_mut()).zip(idx.iter_mut()) {
            let (mut q, mut l) = (self.lv[0], 0u8);
            for t in 0..T {
                let gt = v > self.thr[t];
                q = if gt { self.lv[t + 1] } else { q };
                l += gt as u8;
            }
            *out = q;
            *id = l;
            finite &= v.is_finite();
        }
        finite
    }

    /// Adds one block to the statistics: count, Σx per sorted level and Σx², with 8 independent lanes so that
    /// the f64 sums vectorise (a single accumulator would serialise on the add latency).
    #[inline(always)]
    fn stats(&self, xb: &[f32], idx: &[u8], m: &mut Moments) {
        let mut sq = [0.0f64; 8];
        for ch in xb.chunks(8) {
            for (a, &v) in sq.iter_mut().zip(ch) {
                *a += v as f64 * v as f64;
            }
        }
        m.sum_sq += sq.iter().sum::<f64>();
        for l in 0..=T {
            let (mut n, mut s) = ([0u32; 8], [0.0f64; 8]);
            for (xc, ic) in xb.chunks(8).zip(idx.chunks(8)) {
                for j in 0..xc.len() {
                    let hit = ic[j] as usize == l;
                    n[j] += hit as u32;
                    s[j] += if hit { xc[j] as f64 } else { 0.0 };
                }
            }
            let c = self.code[l] as usize;
            m.count[c] += n.iter().sum::<u32>() as u64;
            m.sum[c] += s.iter().sum::<f64>();
        }
    }
}
