//! The fused fast path: one pass over a weight matrix or activation tensor that quantizes, writes the codes if
//! asked and accumulates the QEM statistics, split over threads (rayon) by rows and chunks.
//!
//! For K ≤ 4 the per-element work is branch-free: each of the 2^K − 1 thresholds is one compare and one blend
//! (levels and thresholds are sorted, so the last threshold passed wins), and the statistics are accumulated in
//! threshold form (count and Σx above each threshold, f64) from the same compare masks. An AVX2 kernel is chosen
//! at run time, with a portable one as fallback ([`Isa`]). Larger K falls back to [`Levels::quantize`]. Work is split into fixed chunks merged in order, so the result
//! does not depend on the number of threads.

use crate::error::Result;
use crate::lq::{check_finite, check_len, invalid, Levels, Moments};
use rayon::prelude::*;

/// Elements per parallel work item (per row, the remainder forms a shorter item).
const CHUNK: usize = 1 << 16;
/// Elements per inner block (statistics are flushed from registers once per block).
const BLOCK: usize = 2048;

/// Quantizes `x`, viewed as `levels.len()` equal rows (one basis per row: weights use one row per output channel,
/// activations one row for the whole tensor), into `y`. Writes the code of every element into `codes` if given,
/// and returns per-row QEM statistics if `fit`. Fails on non-finite input or mismatched lengths.
pub fn quantize(
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_with(Isa::detect(), levels, x, y, codes, fit)
}

/// [`quantize`] with a chosen kernel (tests and benchmarks force each path). An unavailable `isa` falls back to
/// the portable kernel.
pub fn quantize_with(
    isa: Isa,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_impl(isa, levels, x, y, codes, fit, false)
}

/// `quantize(relu(x))` in the same single pass: the quantized values and statistics of `max(x, 0)` without
/// materialising it (the training path of a BN → ReLU → Q unit). Non-finite input is still an error.
pub fn quantize_relu(levels: &[Levels], x: &[f32], y: &mut [f32], fit: bool) -> Result<Option<Vec<Moments>>> {
    quantize_relu_with(Isa::detect(), levels, x, y, fit)
}

/// [`quantize_relu`] with a chosen kernel.
pub fn quantize_relu_with(
    isa: Isa,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_impl(isa, levels, x, y, None, fit, true)
}

fn quantize_impl(
    isa: Isa,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    fit: bool,
    relu: bool,
) -> Result<Option<Vec<Moments>>> {
    let isa = if isa.is_available() { isa } else { Isa::Portable };
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
            let ok = pass(isa, lv, xc, yc, cc.as_deref_mut(), m.as_mut(), relu);
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
fn pass(
    isa: Isa,
    lv: &Levels,
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    m: Option<&mut Moments>,
    relu: bool,
) -> bool {
    let t = lv.thresholds().len();
    if t > 15 {
        if relu {
            let r: Vec<f32> = x.iter().map(|&v| if v.is_finite() { v.max(0.0) } else { v }).collect();
            return lv.quantize(&r, y, codes, m).is_ok();
        }
        return lv.quantize(x, y, codes, m).is_ok();
    }
    let mut acc = Acc::default();
    let mut finite = true;
    let mut idx = [0u8; BLOCK];
    let mut codes = codes;
    for (b, (xb, yb)) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)).enumerate() {
        finite &= match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only constructed after AVX2 was detected (see `Isa::detect`).
            Isa::Avx2 => unsafe {
                avx2::block(lv, xb, yb, codes.is_some().then_some(&mut idx), m.is_some().then_some(&mut acc), relu)
            },
            _ => portable_block(lv, xb, yb, &mut idx, m.is_some().then_some(&mut acc), relu),
        };
        if let Some(c) = codes.as_deref_mut() {
            let cb = &mut c[b * BLOCK..b * BLOCK + xb.len()];
            cb.iter_mut().zip(&idx).for_each(|(c, &i)| *c = lv.codes()[i as usize]);
        }
    }
    if let Some(m) = m {
        acc.into_moments(lv, m);
    }
    finite
}

/// Which implementation of the block kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 intrinsics (8 lanes).
    Avx2,
}

impl Isa {
    /// The best kernel this CPU supports (detected once per call; the check is a cached load).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
        Isa::Portable
    }
    /// Whether this kernel can run here.
    pub fn is_available(self) -> bool {
        self == Isa::Portable || Isa::detect() == Isa::Avx2
    }
}

/// Statistics in threshold form: for each threshold `t_l`, the count and Σx of elements strictly above it.
/// Per-level values follow by differences (`above[l−1] − above[l]`), so the kernels need only the compare masks
/// they already compute for the quantization itself.
#[derive(Default)]
struct Acc {
    n: u64,
    sum: f64,
    sum_sq: f64,
    above_n: [u64; 15],
    above_sum: [f64; 15],
}

impl Acc {
    fn into_moments(self, lv: &Levels, m: &mut Moments) {
        let t = lv.thresholds().len();
        for l in 0..=t {
            let (n_ge, s_ge) = if l == 0 { (self.n, self.sum) } else { (self.above_n[l - 1], self.above_sum[l - 1]) };
            let (n_gt, s_gt) = if l == t { (0, 0.0) } else { (self.above_n[l], self.above_sum[l]) };
            let c = lv.codes()[l] as usize;
            m.count[c] += n_ge - n_gt;
            m.sum[c] += s_ge - s_gt;
        }
        m.sum_sq += self.sum_sq;
    }
}

/// Portable block kernel: quantizes `xb` (or `max(xb, 0)` with `relu`) into `yb`, leaves each element's
/// sorted-level index in `idx`.
fn portable_block(
    lv: &Levels,
    xb: &[f32],
    yb: &mut [f32],
    idx: &mut [u8; BLOCK],
    acc: Option<&mut Acc>,
    relu: bool,
) -> bool {
    let (thr, levels) = (lv.thresholds(), lv.levels());
    let r = |v: f32| if relu && v < 0.0 { 0.0 } else { v };
    let mut finite = true;
    for ((&v, out), id) in xb.iter().zip(yb.iter_mut()).zip(idx.iter_mut()) {
        finite &= v.is_finite();
        let v = r(v);
        let l = thr.iter().map(|&t| (v > t) as usize).sum::<usize>();
        *out = levels[l];
        *id = l as u8;
    }
    if let Some(a) = acc {
        for &v in xb {
            let v = r(v);
            let d = v as f64;
            a.n += 1;
            a.sum += d;
            a.sum_sq += d * d;
            for (l, &t) in thr.iter().enumerate() {
                if v > t {
                    a.above_n[l] += 1;
                    a.above_sum[l] += d;
                }
            }
        }
    }
    finite
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 block kernel: 8 elements per step; per threshold one compare, one blend, and (when fitting) a masked
    //! f64 accumulation of the elements above it.
    use super::{Acc, BLOCK};
    use crate::lq::Levels;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block(
        lv: &Levels,
        xb: &[f32],
        yb: &mut [f32],
        mut idx: Option<&mut [u8; BLOCK]>,
        acc: Option<&mut Acc>,
        relu: bool,
    ) -> bool {
        let (thr, levels) = (lv.thresholds(), lv.levels());
        let t = thr.len();
        let full = xb.len() / 8 * 8;
        let fit = acc.is_some();
        let (mut cnt, mut slo, mut shi) =
            ([_mm256_setzero_si256(); 15], [_mm256_setzero_pd(); 15], [_mm256_setzero_pd(); 15]);
        let (mut tot, mut sq) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let inf = _mm256_set1_ps(f32::INFINITY);
        let sign = _mm256_set1_ps(-0.0);
        // With relu, max(v, 0) after the finiteness check (maxps turns NaN into 0); −∞ stays caught by it too.
        let floor = _mm256_set1_ps(if relu { 0.0 } else { f32::NEG_INFINITY });
        let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut ids = [0i32; 8];
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= xb.len() == yb.len().
            let v = _mm256_loadu_ps(xb.as_ptr().add(i));
            ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, v), inf));
            let v = _mm256_max_ps(v, floor);
            let mut q = _mm256_set1_ps(levels[0]);
            let mut id = _mm256_setzero_si256();
            for l in 0..t {
                let m = _mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_set1_ps(thr[l]));
                q = _mm256_blendv_ps(q, _mm256_set1_ps(levels[l + 1]), m);
                let mi = _mm256_castps_si256(m);
                id = _mm256_sub_epi32(id, mi);
                if fit {
                    cnt[l] = _mm256_sub_epi32(cnt[l], mi);
                    let xm = _mm256_and_ps(v, m);
                    slo[l] = _mm256_add_pd(slo[l], _mm256_cvtps_pd(_mm256_castps256_ps128(xm)));
                    shi[l] = _mm256_add_pd(shi[l], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xm)));
                }
            }
            if fit {
                let (lo, hi) =
                    (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
                tot = _mm256_add_pd(tot, _mm256_add_pd(lo, hi));
                sq = _mm256_add_pd(sq, _mm256_add_pd(_mm256_mul_pd(lo, lo), _mm256_mul_pd(hi, hi)));
            }
            _mm256_storeu_ps(yb.as_mut_ptr().add(i), q);
            if let Some(idx) = idx.as_deref_mut() {
                _mm256_storeu_si256(ids.as_mut_ptr() as *mut __m256i, id);
                for j in 0..8 {
                    idx[i + j] = ids[j] as u8;
                }
            }
        }
        let mut finite = _mm256_movemask_ps(ok) == 0xff;
        // Tail (and the statistics of the vector part) in scalar code.
        let mut tail_idx = [0u8; BLOCK];
        let mut rest = Acc::default();
        let fit_tail = acc.is_some().then_some(&mut rest);
        finite &= super::portable_block(lv, &xb[full..], &mut yb[full..], &mut tail_idx, fit_tail, relu);
        if let Some(idx) = idx {
            idx[full..xb.len()].copy_from_slice(&tail_idx[..xb.len() - full]);
        }
        if let Some(a) = acc {
            let hsum = |v: __m256d| {
                let mut o = [0.0f64; 4];
                _mm256_storeu_pd(o.as_mut_ptr(), v);
                (o[0] + o[1]) + (o[2] + o[3])
            };
            let isum = |v: __m256i| {
                let mut o = [0i32; 8];
                _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, v);
                o.iter().map(|&c| c as u64).sum::<u64>()
            };
            a.n += full as u64;
            a.sum += hsum(tot);
            a.sum_sq += hsum(sq);
            for l in 0..t {
                a.above_n[l] += isum(cnt[l]);
                a.above_sum[l] += hsum(slo[l]) + hsum(shi[l]);
            }
            a.n += rest.n;
            a.sum += rest.sum;
            a.sum_sq += rest.sum_sq;
            for l in 0..t {
                a.above_n[l] += rest.above_n[l];
                a.above_sum[l] += rest.above_sum[l];
            }
        }
        finite
    }
}
