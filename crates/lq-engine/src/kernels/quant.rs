//! Activation quantization: f32 map → codes, as [`Planes`] (here) or as the table kernel's operand
//! ([`super::lut`]). The AVX2 quantizer ([`Quant8`]) does 8 channels at a time; the portable loop does the rest.
use super::Isa;
use crate::error::{Error, Result};
use crate::layout::{ChannelQuant, Planes};

impl Planes {
    /// Quantizes an NHWC f32 map (`x.len() = h·w·C`) with per-channel thresholds and packs the codes: channel
    /// `ch` gets the code of sorted level `#{l : sign·x > sign·τ[ch][l]}` (see [`ChannelQuant`]). Errors when
    /// `x` or the quantizer's fields disagree with the shape.
    pub fn quantize(x: &[f32], h: usize, w: usize, q: &ChannelQuant) -> Result<Planes> {
        Self::quantize_with(Isa::best(), x, h, w, q)
    }

    /// [`Planes::quantize`] with a chosen implementation (AVX2 handles K_a ≤ 3 and channel counts that are
    /// multiples of 8; anything else, or an ISA this CPU lacks, runs the portable loop).
    pub fn quantize_with(isa: Isa, x: &[f32], h: usize, w: usize, q: &ChannelQuant) -> Result<Planes> {
        let k = q.bits().ok_or_else(|| Error::Input("inconsistent activation quantizer".into()))?;
        let c = q.channels();
        let n = [h, w, c].iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if c == 0 || n != Some(x.len()) {
            return Err(Error::Input(format!("{} values for a {h}x{w}x{c} map", x.len())));
        }
        Ok(quantize_checked(isa, x, h, w, q, k))
    }
}

/// [`Planes::quantize_with`] on checked arguments: `q.bits() == Some(k)`, `C ≥ 1`, `x.len() == h·w·C`.
pub(crate) fn quantize_checked(isa: Isa, x: &[f32], h: usize, w: usize, q: &ChannelQuant, k: usize) -> Planes {
    use rayon::prelude::*;
    let c = q.channels();
    let (cw, t) = (c.div_ceil(64), q.codes.len() - 1);
    let mut data = vec![0u64; h * w * k * cw];
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx2Lut | Isa::Avx512) && Quant8::takes(q) {
        let q8 = Quant8::new(q);
        data.par_chunks_mut(k * cw * 64).zip(x.par_chunks(c * 64)).for_each(|(out, xs)| {
            // SAFETY: `Quant8::takes` checked AVX2, C % 8 == 0 and K_a ≤ 3; `xs` holds whole pixels and `out`
            // their `k·cw` words each.
            unsafe { q8.pack(xs, out) }
        });
        return Planes { h, w, c, k, data };
    }
    let _ = isa;
    // Signed thresholds, so the per-element test is one compare: sign·x > sign·τ.
    let st: Vec<f32> = q.tau.iter().enumerate().map(|(i, &tau)| q.sign[i / t.max(1)] * tau).collect();
    data.par_chunks_mut(k * cw * 64).zip(x.par_chunks(c * 64)).for_each(|(out, xs)| {
        for (xs, out) in xs.chunks_exact(c).zip(out.chunks_exact_mut(k * cw)) {
            for (cb, chunk) in xs.chunks(64).enumerate() {
                let mut planes = [0u64; 8];
                for (i, &v) in chunk.iter().enumerate() {
                    let ch = cb * 64 + i;
                    let sv = q.sign[ch] * v;
                    let idx: usize = st[ch * t..(ch + 1) * t].iter().map(|&tau| (sv > tau) as usize).sum();
                    let code = q.codes[idx] as u64;
                    for (j, p) in planes.iter_mut().enumerate().take(k) {
                        *p |= ((code >> j) & 1) << i;
                    }
                }
                for j in 0..k {
                    out[j * cw + cb] = planes[j];
                }
            }
        }
    });
    Planes { h, w, c, k, data }
}

/// A quantizer's signed thresholds `sign·τ` transposed to `[t][C]`, so consecutive channels load at once (the
/// vector quantizers' layout).
pub(crate) fn signed_thresholds(q: &ChannelQuant) -> Vec<f32> {
    let (c, t) = (q.sign.len(), q.codes.len() - 1);
    // Nested loops, not an index split by `/` and `%`: this runs for every quantized conv of every image, and the
    // divisions had cost ~2 % of a batch-1 ResNet-20.
    let mut stt = Vec::with_capacity(t * c);
    for l in 0..t {
        stt.extend(q.sign.iter().zip(q.tau.chunks_exact(t)).map(|(s, tau)| s * tau[l]));
    }
    stt
}

/// The AVX2 quantizer of 8 channels at a time, shared by the bit-plane packer and the table kernel's input:
/// threshold compares counted into the sorted level index, the code looked up with a lane permute, each plane's 8
/// bits taken with `movemask`.
pub(crate) struct Quant8<'a> {
    sign: &'a [f32],
    /// Signed thresholds `sign·τ`, transposed to `[t][C]` so 8 channels load at once.
    stt: Vec<f32>,
    codes: [i32; 8],
    k: usize,
}

impl<'a> Quant8<'a> {
    /// Whether the AVX2 path takes `q`: AVX2 present, channels in whole groups of 8, K_a ≤ 3.
    pub(crate) fn takes(q: &ChannelQuant) -> bool {
        super::avx2::is_available() && q.sign.len().is_multiple_of(8) && q.codes.len() <= 8
    }

    pub(crate) fn new(q: &'a ChannelQuant) -> Self {
        let stt = signed_thresholds(q);
        let mut codes = [0i32; 8];
        codes.iter_mut().zip(&q.codes).for_each(|(d, &s)| *d = s as i32);
        Quant8 { sign: &q.sign, stt, codes, k: q.codes.len().trailing_zeros() as usize }
    }

    /// Packs whole pixels `xs` into bit-planes `out` (`K_a·⌈C/64⌉` words per pixel, zeroed).
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    pub(crate) unsafe fn pack(&self, xs: &[f32], out: &mut [u64]) {
        let (c, k) = (self.sign.len(), self.k);
        let cw = c.div_ceil(64);
        for (px, o) in xs.chunks_exact(c).zip(out.chunks_exact_mut(k * cw)) {
            for c8 in (0..c).step_by(8) {
                // SAFETY: c8 + 8 <= C (C % 8 == 0).
                let m = unsafe { self.masks(px, c8) };
                (0..k).for_each(|j| o[j * cw + c8 / 64] |= (m[j] as u64) << (c8 % 64));
            }
        }
    }

    /// Quantizes one image row (whole pixels `xs`) into a padded row of the table kernel's map: for each plane
    /// `row` holds `[wp][run]` offset bytes (`rl` apart) and `cnt` `[wp]` set-bit counts (`cl` apart); pixel `x`
    /// goes to column `pad + x`. Panics if the rows are too short for the pixels.
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    pub(crate) unsafe fn offsets_row(&self, xs: &[f32], row: &mut [u8], cnt: &mut [u32], run: usize, pad: usize) {
        // SAFETY (each arm): this function's contract; K_a is 1..=3 by `Quant8::takes`.
        unsafe {
            match self.k {
                1 => self.offsets_row_k::<1>(xs, row, cnt, run, pad),
                2 => self.offsets_row_k::<2>(xs, row, cnt, run, pad),
                3 => self.offsets_row_k::<3>(xs, row, cnt, run, pad),
                k => panic!("K_a = {k} is not taken by the AVX2 quantizer"),
            }
        }
    }

    /// [`Quant8::offsets_row`] for `KA` planes (the plane and threshold loops unrolled).
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer, `KA == self.k`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn offsets_row_k<const KA: usize>(
        &self,
        xs: &[f32],
        row: &mut [u8],
        cnt: &mut [u32],
        run: usize,
        pad: usize,
    ) {
        use std::arch::x86_64::*;
        let (c, ka) = (self.sign.len(), KA);
        let (rl, cl, npx) = (row.len() / ka, cnt.len() / ka, xs.len() / c);
        // The one check that makes the unchecked stores below stay inside `row` and `cnt`.
        assert!(c / 4 <= run && (pad + npx) * run <= rl && pad + npx <= cl, "map row too short");
        if c / 4 < run {
            // Groups past the channels (a partial last word) are zero.
            for j in 0..ka {
                row[j * rl..][pad * run..(pad + npx) * run].chunks_exact_mut(run).for_each(|r| r[c / 4..].fill(0));
            }
        }
        (0..ka).for_each(|j| cnt[j * cl + pad..][..npx].fill(0));
        let (rp, cp) = (row.as_mut_ptr(), cnt.as_mut_ptr());
        // Channel groups outside the pixel loop, so a group's sign and thresholds stay in registers (a group at a
        // time per pixel, reloading them, had cost 3x on 16-channel maps).
        for c8 in (0..c).step_by(8) {
            // SAFETY: c8 + 8 <= C (C % 8 == 0) for `sign` and each row of `stt`.
            let (sg, th) = unsafe {
                let th: [__m256; 7] =
                    std::array::from_fn(|l| _mm256_loadu_ps(self.stt.as_ptr().add(l.min((1 << KA) - 2) * c + c8)));
                (_mm256_loadu_ps(self.sign.as_ptr().add(c8)), th)
            };
            // SAFETY: `codes` is 8 i32.
            let codes = unsafe { _mm256_loadu_si256(self.codes.as_ptr().cast()) };
            for (xx, px) in xs.chunks_exact(c).enumerate() {
                let at = (pad + xx) * run;
                // SAFETY: c8 + 8 <= C = px.len().
                let m: [u32; KA] = unsafe { group::<KA>(px.as_ptr().add(c8), sg, &th, codes) };
                for (j, &mj) in m.iter().enumerate() {
                    // Offsets `16·nibble` of channels c8..c8+4 and c8+4..c8+8, as two little-endian bytes.
                    let v = (((mj & 15) << 4) | ((mj & 0xF0) << 8)) as u16;
                    // SAFETY: j·rl + at + c8/4 + 2 <= j·rl + (pad + xx)·run + C/4 <= (j + 1)·rl, and
                    // j·cl + pad + xx < (j + 1)·cl (checked above).
                    unsafe {
                        rp.add(j * rl + at + c8 / 4).cast::<u16>().write_unaligned(v);
                        *cp.add(j * cl + pad + xx) += mj.count_ones();
                    }
                }
            }
        }
    }

    /// The bits of planes 0..K_a of channels `c8..c8 + 8` of one pixel `px` (bit `i` = channel `c8 + i`).
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer; `c8 + 8 <= C` and `px.len() == C`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    pub(crate) unsafe fn masks(&self, px: &[f32], c8: usize) -> [u32; 3] {
        let mut out = [0u32; 3];
        // SAFETY (each arm): this function's contract; K_a is 1..=3 by `Quant8::takes`.
        unsafe {
            match self.k {
                1 => out[..1].copy_from_slice(&self.masks_k::<1>(px, c8)),
                2 => out[..2].copy_from_slice(&self.masks_k::<2>(px, c8)),
                3 => out.copy_from_slice(&self.masks_k::<3>(px, c8)),
                k => panic!("K_a = {k} is not taken by the AVX2 quantizer"),
            }
        }
        out
    }

    /// [`Quant8::masks`] for `KA` planes (`2^KA − 1` thresholds).
    ///
    /// # Safety
    /// As [`Quant8::masks`], and `KA == self.k`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn masks_k<const KA: usize>(&self, px: &[f32], c8: usize) -> [u32; KA] {
        use std::arch::x86_64::*;
        let c = self.sign.len();
        // SAFETY (loads): c8 + 8 <= C for `px`, `sign` and each row of `stt`; `codes` is 8 i32.
        unsafe {
            let th: [__m256; 7] =
                std::array::from_fn(|l| _mm256_loadu_ps(self.stt.as_ptr().add(l.min((1 << KA) - 2) * c + c8)));
            let sg = _mm256_loadu_ps(self.sign.as_ptr().add(c8));
            group::<KA>(px.as_ptr().add(c8), sg, &th, _mm256_loadu_si256(self.codes.as_ptr().cast()))
        }
    }
}

/// The bits of planes 0..K_a of the 8 channels at `x` (bit `i` = channel `i`), given their signs `sg`, signed
/// thresholds `th` (the first `2^KA − 1` used) and the code per sorted level `codes`: the count of thresholds
/// passed indexes the codes, and each plane's 8 bits are one `movemask`.
///
/// # Safety
/// AVX2; `x` points at 8 readable f32; `KA ≤ 3`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn group<const KA: usize>(
    x: *const f32,
    sg: std::arch::x86_64::__m256,
    th: &[std::arch::x86_64::__m256; 7],
    codes: std::arch::x86_64::__m256i,
) -> [u32; KA] {
    use std::arch::x86_64::*;
    // SAFETY: `x` as this function's contract.
    let sv = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x) }, sg);
    let mut idx = _mm256_setzero_si256();
    for t in &th[..(1 << KA) - 1] {
        idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(sv, *t)));
    }
    let code = _mm256_permutevar8x32_epi32(codes, idx);
    // Bit j of each code to the sign bit, then one movemask.
    std::array::from_fn(|j| {
        let bit = _mm256_sllv_epi32(code, _mm256_set1_epi32(31 - j as i32));
        _mm256_movemask_ps(_mm256_castsi256_ps(bit)) as u32
    })
}
