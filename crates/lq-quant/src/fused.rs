//! The fused fast path: one pass over a weight matrix or activation tensor that quantizes, writes the codes if
//! asked and accumulates the QEM statistics, split over threads by rows and chunks.
//!
//! For K ≤ 4 the per-element work is branch-free: each of the 2^K − 1 thresholds is one compare and one blend
//! (levels and thresholds are sorted, so the last threshold passed wins), and the statistics are accumulated in
//! threshold form (count and Σx above each threshold, f64) from the same compare masks. An AVX-512 or AVX2 kernel
//! is chosen at run time, with a portable one as fallback ([`Isa`]). Larger K falls back to [`Levels::quantize`].
//! Work is split into fixed chunks merged in order, so the result does not depend on the number of threads.
//!
//! The chunks run on rayon's pool unless the caller passes its own [`Parallel`]: the trainer runs them on
//! libtorch's OpenMP threads, which otherwise spin on the same cores while rayon's threads work.

use crate::error::Result;
use crate::lq::{check_finite, check_len, invalid, Levels, Moments};
use rayon::prelude::*;
use std::sync::Mutex;

/// Where the fused pass's work items run.
pub trait Parallel: Sync {
    /// Calls `f(i)` for the `i` in `0..n`, on any threads and in any order, and returns when they are done. An
    /// item it skips is run afterwards on the calling thread (so an executor that fails part-way costs time,
    /// never a result).
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Rayon's global pool (the default executor).
pub struct Rayon;

impl Parallel for Rayon {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).into_par_iter().for_each(f);
    }
}

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
    quantize_impl(Isa::detect(), &Rayon, levels, x, y, codes, fit, false)
}

/// [`quantize`] with its work items on `par`.
pub fn quantize_on(
    par: &dyn Parallel,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_impl(Isa::detect(), par, levels, x, y, codes, fit, false)
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
    quantize_impl(isa, &Rayon, levels, x, y, codes, fit, false)
}

/// `quantize(relu(x))` in the same single pass: the quantized values and statistics of `max(x, 0)` without
/// materialising it (the training path of a BN → ReLU → Q unit). Non-finite input is still an error.
pub fn quantize_relu(levels: &[Levels], x: &[f32], y: &mut [f32], fit: bool) -> Result<Option<Vec<Moments>>> {
    quantize_impl(Isa::detect(), &Rayon, levels, x, y, None, fit, true)
}

/// [`quantize_relu`] with its work items on `par`.
pub fn quantize_relu_on(
    par: &dyn Parallel,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_impl(Isa::detect(), par, levels, x, y, None, fit, true)
}

/// [`quantize_relu`] with a chosen kernel.
pub fn quantize_relu_with(
    isa: Isa,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    fit: bool,
) -> Result<Option<Vec<Moments>>> {
    quantize_impl(isa, &Rayon, levels, x, y, None, fit, true)
}

/// A work item before and after it ran.
enum Slot<'a> {
    Todo(&'a [f32], &'a mut [f32], Option<&'a mut [u8]>),
    Done(Option<Moments>, bool),
}

#[allow(clippy::too_many_arguments)]
fn quantize_impl(
    isa: Isa,
    par: &dyn Parallel,
    levels: &[Levels],
    x: &[f32],
    y: &mut [f32],
    codes: Option<&mut [u8]>,
    fit: bool,
    relu: bool,
) -> Result<Option<Vec<Moments>>> {
    let isa = if isa.is_available() { isa } else { Isa::Portable };
    let rows = levels.len();
    if rows == 0 || !x.len().is_multiple_of(rows) {
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
    let slots: Vec<Mutex<Slot>> = row_chunks(x, n)
        .zip(row_chunks_mut(y, n))
        .zip(codes_chunks.iter_mut())
        .map(|((xc, yc), cc)| Mutex::new(Slot::Todo(xc, yc, cc.take())))
        .collect();
    let work = |item: usize| {
        // Each item's lock is taken by the one call that runs it (a poisoned lock still holds a valid slot).
        let mut s = slots[item].lock().unwrap_or_else(|e| e.into_inner());
        if let Slot::Todo(xc, yc, cc) = &mut *s {
            let mut m = fit.then(|| Moments::new(k));
            let ok = pass(isa, &levels[item / per_row], xc, yc, cc.as_deref_mut(), m.as_mut(), relu);
            *s = Slot::Done(m, ok);
        }
    };
    par.run(slots.len(), &work);
    (0..slots.len()).for_each(work);
    let stats: Vec<(usize, Option<Moments>, bool)> = slots
        .into_iter()
        .enumerate()
        .map(|(item, s)| match s.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Slot::Done(m, ok) => (item / per_row, m, ok),
            Slot::Todo(..) => unreachable!("every item ran above"),
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
    // Checked here too (a cached load per chunk): the SIMD arms below rely on it.
    let isa = if isa.is_available() { isa } else { Isa::Portable };
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
            // SAFETY: `isa` passed `is_available()` in `quantize_impl`, which detected AVX2.
            Isa::Avx2 => unsafe {
                avx2::block(lv, xb, yb, codes.is_some().then_some(&mut idx), m.is_some().then_some(&mut acc), relu)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` passed `is_available()` in `quantize_impl`, which detected AVX-512F.
            Isa::Avx512 => unsafe {
                avx512::block(lv, xb, yb, codes.is_some().then_some(&mut idx), m.is_some().then_some(&mut acc), relu)
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
    /// x86-64 AVX-512F intrinsics (16 lanes; compare results in mask registers, so each threshold costs a
    /// compare, a masked move and two masked f64 adds).
    Avx512,
}

impl Isa {
    /// The best kernel this CPU supports (the checks are cached loads).
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.is_available()).unwrap_or(Isa::Portable)
    }
    /// Whether this kernel can run here.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // Every AVX-512 CPU has the others; a VM's CPUID mask might not say so.
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("popcnt")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
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
    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        for l in 0..15 {
            self.above_n[l] += o.above_n[l];
            self.above_sum[l] += o.above_sum[l];
        }
    }

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

/// Calls the SIMD module's kernel `t1`/`t3`/`t7`/`t15` for `lv`'s number of thresholds, with or without statistics.
#[cfg(target_arch = "x86_64")]
macro_rules! by_thresholds {
    ($lv:expr, $xb:expr, $yb:expr, $idx:expr, $acc:expr, $relu:expr) => {
        match ($lv.thresholds().len(), $acc.is_some()) {
            (1, false) => t1::<false>($lv, $xb, $yb, $idx, $acc, $relu),
            (1, true) => t1::<true>($lv, $xb, $yb, $idx, $acc, $relu),
            (3, false) => t3::<false>($lv, $xb, $yb, $idx, $acc, $relu),
            (3, true) => t3::<true>($lv, $xb, $yb, $idx, $acc, $relu),
            (7, false) => t7::<false>($lv, $xb, $yb, $idx, $acc, $relu),
            (7, true) => t7::<true>($lv, $xb, $yb, $idx, $acc, $relu),
            (_, false) => t15::<false>($lv, $xb, $yb, $idx, $acc, $relu),
            (_, true) => t15::<true>($lv, $xb, $yb, $idx, $acc, $relu),
        }
    };
}

/// After a SIMD kernel's whole steps (`xb[..full]`): the scalar tail, its codes, and the statistics of both (`simd`
/// holds the vector part's, reduced) merged into `acc`. Returns whether the tail was finite.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn finish(
    lv: &Levels,
    xb: &[f32],
    yb: &mut [f32],
    full: usize,
    idx: Option<&mut [u8; BLOCK]>,
    acc: Option<&mut Acc>,
    relu: bool,
    simd: Acc,
) -> bool {
    let mut tail_idx = [0u8; BLOCK];
    let mut rest = Acc::default();
    let finite =
        portable_block(lv, &xb[full..], &mut yb[full..], &mut tail_idx, acc.is_some().then_some(&mut rest), relu);
    if let Some(idx) = idx {
        idx[full..xb.len()].copy_from_slice(&tail_idx[..xb.len() - full]);
    }
    if let Some(a) = acc {
        a.merge(&simd);
        a.merge(&rest);
    }
    finite
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 block kernel: 8 elements per step; per threshold an f32 compare and blend for the level, and (when
    //! fitting) an f64 compare of the element values (converted once per step; exact, so the same decisions),
    //! masking them into that threshold's sums; counts from the compare's sign bits (scalar popcount).
    use super::{Acc, BLOCK};
    use crate::lq::Levels;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and POPCNT.
    #[target_feature(enable = "avx2,fma,popcnt")]
    pub(super) unsafe fn block(
        lv: &Levels,
        xb: &[f32],
        yb: &mut [f32],
        idx: Option<&mut [u8; BLOCK]>,
        acc: Option<&mut Acc>,
        relu: bool,
    ) -> bool {
        // The unchecked loads and stores below read `xb` and write `yb` and `idx` up to `xb.len()`.
        assert!(xb.len() <= BLOCK && yb.len() == xb.len(), "block of {} values for {}", xb.len(), yb.len());
        // SAFETY: the caller's contract; each kernel is for the number of thresholds of `lv` (K ≤ 4, see `pass`).
        unsafe { by_thresholds!(lv, xb, yb, idx, acc, relu) }
    }

    /// [`block`] for a fixed number of thresholds, written out with constant indices (see the AVX-512 kernel's
    /// `fixed`: the accumulators stay in registers).
    macro_rules! fixed {
        ($name:ident, $t:literal, $($l:tt)*) => {
            /// # Safety
            #[doc = concat!("As [`block`], with ", $t, " thresholds in `lv`, and `FIT == acc.is_some()`.")]
            #[target_feature(enable = "avx2,fma,popcnt")]
            unsafe fn $name<const FIT: bool>(
                lv: &Levels,
                xb: &[f32],
                yb: &mut [f32],
                mut idx: Option<&mut [u8; BLOCK]>,
                acc: Option<&mut Acc>,
                relu: bool,
            ) -> bool {
                let (thr, levels) = (lv.thresholds(), lv.levels());
                let full = xb.len() / 8 * 8;
                // One f64 accumulator per threshold (both halves added first): with K ≤ 2 they, the totals and the
                // constants then fit the 16 registers (K = 3, 4 spill some).
                let (mut cnt, mut sum) = ([0u64; $t], [_mm256_setzero_pd(); $t]);
                let (mut tot, mut sq) = (_mm256_setzero_pd(), _mm256_setzero_pd());
                let inf = _mm256_set1_ps(f32::INFINITY);
                let sign = _mm256_set1_ps(-0.0);
                // With relu, max(v, 0) after the finiteness check (maxps turns NaN into 0); −∞ stays caught too.
                let floor = _mm256_set1_ps(if relu { 0.0 } else { f32::NEG_INFINITY });
                let thv: [__m256; $t] = std::array::from_fn(|l| _mm256_set1_ps(thr[l]));
                let thd: [__m256d; $t] = std::array::from_fn(|l| _mm256_set1_pd(thr[l] as f64));
                let lev: [__m256; $t] = std::array::from_fn(|l| _mm256_set1_ps(levels[l + 1]));
                let lev0 = _mm256_set1_ps(levels[0]);
                let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
                let mut ids = [0i32; 8];
                for i in (0..full).step_by(8) {
                    // SAFETY: i + 8 <= full <= xb.len() == yb.len().
                    let v = _mm256_loadu_ps(xb.as_ptr().add(i));
                    ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, v), inf));
                    let v = _mm256_max_ps(v, floor);
                    let mut q = lev0;
                    let mut id = _mm256_setzero_si256();
                    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
                    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
                    if FIT {
                        tot = _mm256_add_pd(tot, _mm256_add_pd(lo, hi));
                        sq = _mm256_add_pd(sq, _mm256_fmadd_pd(lo, lo, _mm256_mul_pd(hi, hi)));
                    }
                    $(
                        let m = _mm256_cmp_ps::<_CMP_GT_OQ>(v, thv[$l]);
                        q = _mm256_blendv_ps(q, lev[$l], m);
                        if idx.is_some() {
                            id = _mm256_sub_epi32(id, _mm256_castps_si256(m));
                        }
                        if FIT {
                            cnt[$l] += _mm256_movemask_ps(m).count_ones() as u64;
                            let (ml, mh) = (_mm256_cmp_pd::<_CMP_GT_OQ>(lo, thd[$l]), _mm256_cmp_pd::<_CMP_GT_OQ>(hi, thd[$l]));
                            sum[$l] = _mm256_add_pd(sum[$l], _mm256_add_pd(_mm256_and_pd(lo, ml), _mm256_and_pd(hi, mh)));
                        }
                    )*
                    _mm256_storeu_ps(yb.as_mut_ptr().add(i), q);
                    if let Some(idx) = idx.as_deref_mut() {
                        _mm256_storeu_si256(ids.as_mut_ptr() as *mut __m256i, id);
                        for j in 0..8 {
                            idx[i + j] = ids[j] as u8;
                        }
                    }
                }
                let mut simd = Acc::default();
                if FIT {
                    simd.n = full as u64;
                    (simd.sum, simd.sum_sq) = (hsum(tot), hsum(sq));
                    for l in 0..$t {
                        (simd.above_n[l], simd.above_sum[l]) = (cnt[l], hsum(sum[l]));
                    }
                }
                super::finish(lv, xb, yb, full, idx, acc, relu, simd) && _mm256_movemask_ps(ok) == 0xff
            }
        };
    }
    fixed!(t1, 1, 0);
    fixed!(t3, 3, 0 1 2);
    fixed!(t7, 7, 0 1 2 3 4 5 6);
    fixed!(t15, 15, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);

    /// The sum of the 4 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    unsafe fn hsum(v: __m256d) -> f64 {
        let mut o = [0.0f64; 4];
        // SAFETY: `o` holds 4 f64.
        unsafe { _mm256_storeu_pd(o.as_mut_ptr(), v) };
        (o[0] + o[1]) + (o[2] + o[3])
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512F block kernel: 16 elements per step. A threshold's compare lands in a mask register, which drives
    //! the level move, the count (a scalar popcount) and the two f64 halves' masked adds of the element values
    //! (the AVX2 kernel needs an f64 compare and an AND per half and threshold for the same).
    use super::{Acc, BLOCK};
    use crate::lq::Levels;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and POPCNT ([`super::Isa::Avx512`]'s check; without POPCNT the
    /// mask counts would compile to a software popcount).
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn block(
        lv: &Levels,
        xb: &[f32],
        yb: &mut [f32],
        idx: Option<&mut [u8; BLOCK]>,
        acc: Option<&mut Acc>,
        relu: bool,
    ) -> bool {
        // The unchecked loads and stores below read `xb` and write `yb` and `idx` up to `xb.len()`.
        assert!(xb.len() <= BLOCK && yb.len() == xb.len(), "block of {} values for {}", xb.len(), yb.len());
        // SAFETY: the caller's contract; each kernel is for the number of thresholds of `lv` (K ≤ 4, see `pass`).
        unsafe { by_thresholds!(lv, xb, yb, idx, acc, relu) }
    }

    /// [`block`] for a fixed number of thresholds (the listed indices), with or without statistics. The loop over
    /// thresholds is written out with constant indices so the accumulators can stay in registers (all of them up
    /// to K = 3; K = 4's 30 do not fit 32): indexed by a loop variable they lived on the stack, and every step
    /// waited on store-to-load forwarding (K = 2: 2× slower).
    macro_rules! fixed {
        ($name:ident, $t:literal, $($l:tt)*) => {
            /// # Safety
            #[doc = concat!("As [`block`], with ", $t, " thresholds in `lv`, and `FIT == acc.is_some()`.")]
            #[target_feature(enable = "avx512f,popcnt")]
            unsafe fn $name<const FIT: bool>(
                lv: &Levels,
                xb: &[f32],
                yb: &mut [f32],
                mut idx: Option<&mut [u8; BLOCK]>,
                acc: Option<&mut Acc>,
                relu: bool,
            ) -> bool {
                let (thr, levels) = (lv.thresholds(), lv.levels());
                let full = xb.len() / 16 * 16;
                let (mut cnt, mut slo, mut shi) = ([0u64; $t], [_mm512_setzero_pd(); $t], [_mm512_setzero_pd(); $t]);
                let (mut tot0, mut tot1, mut sq0, mut sq1) =
                    (_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd());
                let inf = _mm512_set1_ps(f32::INFINITY);
                // With relu, max(v, 0) after the finiteness check (maxps turns NaN into 0); −∞ stays caught too.
                let floor = _mm512_set1_ps(if relu { 0.0 } else { f32::NEG_INFINITY });
                let thv: [__m512; $t] = std::array::from_fn(|l| _mm512_set1_ps(thr[l]));
                let lev: [__m512; $t] = std::array::from_fn(|l| _mm512_set1_ps(levels[l + 1]));
                let lev0 = _mm512_set1_ps(levels[0]);
                let mut ok: __mmask16 = 0xffff;
                for i in (0..full).step_by(16) {
                    // SAFETY: i + 16 <= full <= xb.len() == yb.len().
                    let v = _mm512_loadu_ps(xb.as_ptr().add(i));
                    ok &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), inf);
                    let v = _mm512_max_ps(v, floor);
                    let mut q = lev0;
                    let mut id = _mm512_setzero_si512();
                    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
                    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
                    if FIT {
                        tot0 = _mm512_add_pd(tot0, lo);
                        tot1 = _mm512_add_pd(tot1, hi);
                        sq0 = _mm512_fmadd_pd(lo, lo, sq0);
                        sq1 = _mm512_fmadd_pd(hi, hi, sq1);
                    }
                    $(
                        let m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, thv[$l]);
                        q = _mm512_mask_mov_ps(q, m, lev[$l]);
                        if idx.is_some() {
                            id = _mm512_mask_add_epi32(id, m, id, _mm512_set1_epi32(1));
                        }
                        if FIT {
                            cnt[$l] += m.count_ones() as u64;
                            slo[$l] = _mm512_mask_add_pd(slo[$l], m as u8, slo[$l], lo);
                            shi[$l] = _mm512_mask_add_pd(shi[$l], (m >> 8) as u8, shi[$l], hi);
                        }
                    )*
                    _mm512_storeu_ps(yb.as_mut_ptr().add(i), q);
                    if let Some(idx) = idx.as_deref_mut() {
                        // SAFETY: i + 16 <= full <= BLOCK.
                        _mm_storeu_si128(idx.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(id));
                    }
                }
                let mut simd = Acc::default();
                if FIT {
                    simd.n = full as u64;
                    (simd.sum, simd.sum_sq) = (hsum(tot0) + hsum(tot1), hsum(sq0) + hsum(sq1));
                    for l in 0..$t {
                        (simd.above_n[l], simd.above_sum[l]) = (cnt[l], hsum(slo[l]) + hsum(shi[l]));
                    }
                }
                super::finish(lv, xb, yb, full, idx, acc, relu, simd) && ok == 0xffff
            }
        };
    }
    fixed!(t1, 1, 0);
    fixed!(t3, 3, 0 1 2);
    fixed!(t7, 7, 0 1 2 3 4 5 6);
    fixed!(t15, 15, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);

    /// The sum of the 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn hsum(v: __m512d) -> f64 {
        let mut o = [0.0f64; 8];
        // SAFETY: `o` holds 8 f64.
        unsafe { _mm512_storeu_pd(o.as_mut_ptr(), v) };
        ((o[0] + o[1]) + (o[2] + o[3])) + ((o[4] + o[5]) + (o[6] + o[7]))
    }
}
