//! Bit-serial convolution: activation codes packed along channels per pixel, im2col in the bit domain as word
//! copies, the binary GEMM of [`crate::kernels`] with the LQ epilogue. Feature maps are NHWC (one image).
use crate::kernels::{lut, BitGemm, Isa};
use crate::scratch::Buf;
use lq_quant::{CodeSet, Levels};

/// Activation codes of one feature map as bit-planes: `[pixel][plane][word]`, channel `c` at bit `c % 64` of
/// word `c / 64`. Padding pixels and channels beyond `c` are zero bits, i.e. the level of code 0, which is 0
/// for activation (`{0,1}`) codes.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Planes (bits K_a).
    pub k: usize,
    /// The bits.
    pub data: Vec<u64>,
}

impl Planes {
    /// Words per plane per pixel.
    pub fn words(&self) -> usize {
        self.c.div_ceil(64)
    }

    /// Quantizes an NHWC f32 map with per-channel thresholds and packs the codes: channel `ch` gets the code of
    /// sorted level `#{l : sign·x > sign·τ[ch][l]}` (see [`ChannelQuant`]).
    pub fn quantize(x: &[f32], h: usize, w: usize, q: &ChannelQuant) -> Planes {
        Self::quantize_with(Isa::best(), x, h, w, q)
    }

    /// [`Planes::quantize`] with a chosen implementation (AVX2 handles K_a ≤ 3 and channel counts that are
    /// multiples of 8; anything else runs the portable loop).
    pub fn quantize_with(isa: Isa, x: &[f32], h: usize, w: usize, q: &ChannelQuant) -> Planes {
        use rayon::prelude::*;
        let (c, k) = (q.sign.len(), q.codes.len().trailing_zeros() as usize);
        let (cw, t) = (c.div_ceil(64), q.codes.len() - 1);
        let mut data = vec![0u64; h * w * k * cw];
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::Avx2Lut) && Quant8::takes(q) {
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
}

/// The AVX2 quantizer of 8 channels at a time, shared by the bit-plane packer and the table kernel's input:
/// threshold compares counted into the sorted level index, the code looked up with a lane permute, each plane's 8
/// bits taken with `movemask`.
pub(crate) struct Quant8<'a> {
    sign: &'a [f32],
    /// Signed thresholds `sign·τ`, transposed to `[t][C]` so 8 channels load at once.
    stt: Vec<f32>,
    codes: [i32; 8],
    t: usize,
    k: usize,
}

impl<'a> Quant8<'a> {
    /// Whether the AVX2 path takes `q`: AVX2 present, channels in whole groups of 8, K_a ≤ 3.
    pub fn takes(q: &ChannelQuant) -> bool {
        crate::kernels::avx2::is_available() && q.sign.len() % 8 == 0 && q.codes.len() <= 8
    }

    pub fn new(q: &'a ChannelQuant) -> Self {
        let (c, t) = (q.sign.len(), q.codes.len() - 1);
        let stt = (0..t * c).map(|i| q.sign[i % c] * q.tau[(i % c) * t + i / c]).collect();
        let mut codes = [0i32; 8];
        codes.iter_mut().zip(&q.codes).for_each(|(d, &s)| *d = s as i32);
        Quant8 { sign: &q.sign, stt, codes, t, k: q.codes.len().trailing_zeros() as usize }
    }

    /// Packs whole pixels `xs` into bit-planes `out` (`K_a·⌈C/64⌉` words per pixel, zeroed).
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub unsafe fn pack(&self, xs: &[f32], out: &mut [u64]) {
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
    /// goes to column `pad + x`.
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer; `run >= C/4`, the rows are long enough.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub unsafe fn offsets_row(&self, xs: &[f32], row: &mut [u8], cnt: &mut [u32], run: usize, pad: usize) {
        let (c, ka) = (self.sign.len(), self.k);
        let (rl, cl) = (row.len() / ka, cnt.len() / ka);
        for (xx, px) in xs.chunks_exact(c).enumerate() {
            let at = (pad + xx) * run;
            if c / 4 < run {
                // Groups past the channels (a partial last word) are zero.
                (0..ka).for_each(|j| row[j * rl + at + c / 4..][..run - c / 4].fill(0));
            }
            let mut pc = [0u32; 3];
            for c8 in (0..c).step_by(8) {
                // SAFETY: c8 + 8 <= C (C % 8 == 0).
                let m = unsafe { self.masks(px, c8) };
                for j in 0..ka {
                    pc[j] += m[j].count_ones();
                    let o = &mut row[j * rl + at + c8 / 4..][..2];
                    o[0] = ((m[j] & 15) << 4) as u8;
                    o[1] = (m[j] & 0xF0) as u8;
                }
            }
            (0..ka).for_each(|j| cnt[j * cl + pad + xx] = pc[j]);
        }
    }

    /// The bits of planes 0..K_a of channels `c8..c8 + 8` of one pixel `px` (bit `i` = channel `c8 + i`).
    ///
    /// # Safety
    /// [`Quant8::takes`] held for this quantizer; `c8 + 8 <= C` and `px.len() == C`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn masks(&self, px: &[f32], c8: usize) -> [u32; 3] {
        use std::arch::x86_64::*;
        let c = self.sign.len();
        let one = _mm256_set1_epi32(1);
        // SAFETY (loads): c8 + 8 <= C for `px`, `sign` and each row of `stt`; `codes` is 8 i32.
        unsafe {
            let sv = _mm256_mul_ps(_mm256_loadu_ps(px.as_ptr().add(c8)), _mm256_loadu_ps(self.sign.as_ptr().add(c8)));
            let mut idx = _mm256_setzero_si256();
            for l in 0..self.t {
                let m = _mm256_cmp_ps::<_CMP_GT_OQ>(sv, _mm256_loadu_ps(self.stt.as_ptr().add(l * c + c8)));
                idx = _mm256_sub_epi32(idx, _mm256_castps_si256(m));
            }
            let code = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(self.codes.as_ptr() as *const __m256i), idx);
            let mut out = [0u32; 3];
            for (j, o) in out.iter_mut().enumerate().take(self.k) {
                let bit = _mm256_and_si256(_mm256_srlv_epi32(code, _mm256_set1_epi32(j as i32)), one);
                *o = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bit, one))) as u32;
            }
            out
        }
    }
}

/// Per-channel activation quantization with BN folded in: `Q(relu(scale·x + shift))` becomes a count of
/// thresholds passed on the raw input, `τ = (t − shift)/scale` compared in the direction of `sign(scale)`
/// (a zero scale gives ±∞ thresholds, a constant code). `codes` maps sorted level index to code.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelQuant {
    /// `±1` per channel.
    pub sign: Vec<f32>,
    /// Folded thresholds `[C][2^K − 1]`.
    pub tau: Vec<f32>,
    /// Code of each sorted level (2^K).
    pub codes: Vec<u8>,
}

impl ChannelQuant {
    /// Folds per-channel BN (`y = scale·x + shift`) and ReLU into the thresholds of `levels`.
    pub fn fold(levels: &Levels, scale: &[f32], shift: &[f32]) -> ChannelQuant {
        let th = levels.thresholds();
        let mut tau = Vec::with_capacity(scale.len() * th.len());
        let mut sign = Vec::with_capacity(scale.len());
        for (&a, &b) in scale.iter().zip(shift) {
            sign.push(if a < 0.0 { -1.0 } else { 1.0 });
            for &t in th {
                // relu(y) > t  ⇔  y > t for the non-negative thresholds of activation levels.
                let t = t.max(0.0);
                // ±f32::MAX rather than ±inf (a zero BN scale, or a tiny one overflowing): the same decisions for
                // every finite input, and model files hold only finite values.
                let tau_t = if a == 0.0 {
                    if b > t {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    }
                } else {
                    ((t as f64 - b as f64) / a as f64) as f32
                };
                tau.push(tau_t.clamp(-f32::MAX, f32::MAX));
            }
        }
        ChannelQuant { sign, tau, codes: levels.codes().to_vec() }
    }
}

/// Where bit `(tap, ci)` of a patch row lives, as (word, bit). When `C_in` divides 64 or is a multiple of it the
/// row is dense, `tap·C_in + ci` (a 3×3 conv over 16 channels takes 3 words, not 9); otherwise each tap starts a
/// new word.
#[inline]
pub fn patch_bit(c_in: usize, tap: usize, ci: usize) -> (usize, usize) {
    if c_in % 64 == 0 || narrow(c_in) {
        let d = tap * c_in + ci;
        (d / 64, d % 64)
    } else {
        (tap * c_in.div_ceil(64) + ci / 64, ci % 64)
    }
}

/// Whether `c` channels are narrower than a word and divide it: their taps are packed densely (see
/// [`patch_bit`]), several per word.
pub(crate) fn narrow(c: usize) -> bool {
    c < 64 && 64 % c == 0
}

/// Words per plane of a patch row of a `k×k` conv over `c_in` channels (see [`patch_bit`]).
pub fn patch_words(c_in: usize, k: usize) -> usize {
    if c_in % 64 == 0 || narrow(c_in) {
        (k * k * c_in).div_ceil(64)
    } else {
        k * k * c_in.div_ceil(64)
    }
}

/// A convolution with bit-packed quantized weights (square kernel, no bias).
#[derive(Clone, Debug, PartialEq)]
pub struct BitConv {
    /// Output channels.
    pub c_out: usize,
    /// Input channels.
    pub c_in: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub pad: usize,
    /// Weight planes K_w.
    pub kw: usize,
    /// Weight bits `[C_out][K_w][patch_words]`, bit = +1, laid out by [`patch_bit`].
    pub bits: Vec<u64>,
    /// Weight bases `[C_out][K_w]`.
    pub basis: Vec<f32>,
    /// The weights in the LUT kernel's layout, made on first use.
    lut: LutWeights,
}

/// Lazily built LUT-kernel weights; derived data, so ignored by `==` and `Debug`.
#[derive(Clone, Default)]
struct LutWeights(std::sync::OnceLock<Vec<u8>>);

impl PartialEq for LutWeights {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for LutWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LutWeights")
    }
}

impl BitConv {
    /// Encodes OIHW weights with one basis per output channel (`basis` is `[C_out][K_w]`) and packs them.
    pub fn pack(
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        w: &[f32],
        basis: &[f32],
    ) -> lq_quant::Result<Self> {
        let kw = basis.len() / c_out.max(1);
        let words = patch_words(c_in, k);
        let mut bits = vec![0u64; c_out * kw * words];
        for o in 0..c_out {
            let lv = Levels::from_basis(&basis[o * kw..(o + 1) * kw], CodeSet::Signed)?;
            for ci in 0..c_in {
                for ky in 0..k {
                    for kx in 0..k {
                        let v = w[((o * c_in + ci) * k + ky) * k + kx];
                        let code = lv.codes()[lv.index(v)];
                        for i in 0..kw {
                            if (code >> i) & 1 == 1 {
                                let (wd, b) = patch_bit(c_in, ky * k + kx, ci);
                                bits[(o * kw + i) * words + wd] |= 1 << b;
                            }
                        }
                    }
                }
            }
        }
        Ok(BitConv::new(c_out, c_in, k, stride, kw, bits, basis.to_vec()))
    }

    /// A conv from weight bits already in the [`patch_bit`] layout (`[C_out][K_w][patch_words]`), same padding.
    pub fn new(c_out: usize, c_in: usize, k: usize, stride: usize, kw: usize, bits: Vec<u64>, basis: Vec<f32>) -> Self {
        BitConv { c_out, c_in, k, stride, pad: k / 2, kw, bits, basis, lut: LutWeights::default() }
    }

    /// Output size for an input of `h × w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.k) / self.stride + 1, (w + 2 * self.pad - self.k) / self.stride + 1)
    }

    /// Convolution of packed activations with activation basis `a_basis`, NHWC f32 out.
    pub fn forward(&self, x: &Planes, a_basis: &[f32], isa: Isa) -> Vec<f32> {
        // On a pool worker (a no-op when already on one), so the layer's parallel loops run without wake-ups.
        rayon::scope(|_| self.run(Input::Planes(x), a_basis, isa))
    }

    /// Convolution of the quantized `x` (NHWC f32, `h × w × C`, quantized by `q` as [`Planes::quantize`] does),
    /// NHWC f32 out. Where the table kernel runs, codes go straight into its operand (no bit-planes in between);
    /// the result equals `forward(&Planes::quantize(x, h, w, q), ..)`.
    pub fn forward_f32(&self, x: &[f32], h: usize, w: usize, q: &ChannelQuant, a_basis: &[f32], isa: Isa) -> Vec<f32> {
        rayon::scope(|_| self.run(Input::F32 { x, h, w, q }, a_basis, isa))
    }

    fn run(&self, x: Input, a_basis: &[f32], isa: Isa) -> Vec<f32> {
        let (c, ka, h, w) = match x {
            Input::Planes(p) => (p.c, p.k, p.h, p.w),
            Input::F32 { h, w, q, .. } => (q.sign.len(), q.codes.len().trailing_zeros() as usize, h, w),
        };
        let (oh, ow) = self.out_hw(h, w);
        let g = BitGemm {
            c_out: self.c_out,
            kw: self.kw,
            ka,
            words: patch_words(c, self.k),
            w: &self.bits,
            w_basis: &self.basis,
            a_basis,
        };
        let (rows, mut out) = (oh * ow, vec![0.0f32; oh * ow * self.c_out]);
        match lut::plan(c, self.c_out, self.kw, ka) {
            Some(plan) if isa == Isa::Avx2Lut => {
                let lw =
                    self.lut.0.get_or_init(|| lut::pack_weights(&self.bits, self.c_out, self.kw, g.words, plan.lanes));
                let (k, s, pad) = (self.k, self.stride, self.pad);
                let a = match x {
                    Input::Planes(p) => lut::input(p, k, s, pad, a_basis, plan),
                    Input::F32 { x, h, w, q } => lut::input_f32(x, h, w, q, k, s, pad, a_basis, plan),
                };
                lut::run(&g, plan, lw, &a, &mut out);
            }
            _ => {
                let quantized;
                let p = match x {
                    Input::Planes(p) => p,
                    Input::F32 { x, h, w, q } => {
                        quantized = Planes::quantize_with(isa, x, h, w, q);
                        &quantized
                    }
                };
                let mut a = Buf::<u64>::zeroed(im2col_len(p, self.k, self.stride, self.pad));
                im2col_into(p, self.k, self.stride, self.pad, &mut a);
                g.run(isa, &a, rows, &mut out);
            }
        }
        out
    }
}

/// A conv's input: packed codes, or f32 values with the quantizer that makes them codes.
#[derive(Clone, Copy)]
enum Input<'a> {
    Planes(&'a Planes),
    F32 { x: &'a [f32], h: usize, w: usize, q: &'a ChannelQuant },
}

/// Bit-domain im2col: for each output pixel the k×k input pixels' plane bits (zero outside) in the [`patch_bit`]
/// layout, as word copies (or shifted words for narrow channels), arranged for the kernels as
/// `[group of 4 pixels][plane][word][lane]`.
pub fn im2col(x: &Planes, k: usize, stride: usize, pad: usize) -> Vec<u64> {
    let mut out = vec![0u64; im2col_len(x, k, stride, pad)];
    im2col_into(x, k, stride, pad, &mut out);
    out
}

fn im2col_len(x: &Planes, k: usize, stride: usize, pad: usize) -> usize {
    let (oh, ow) = ((x.h + 2 * pad - k) / stride + 1, (x.w + 2 * pad - k) / stride + 1);
    (oh * ow).div_ceil(4) * x.k * patch_words(x.c, k) * 4
}

/// [`im2col`] into a zeroed buffer of the right length.
fn im2col_into(x: &Planes, k: usize, stride: usize, pad: usize, out: &mut [u64]) {
    let cw = x.words();
    let (oh, ow) = ((x.h + 2 * pad - k) / stride + 1, (x.w + 2 * pad - k) / stride + 1);
    let words = patch_words(x.c, k);
    // Channels narrower than a word are placed densely, shifted to their tap's bit offset (see `patch_bit`).
    let narrow = narrow(x.c);
    let rows = oh * ow;
    use rayon::prelude::*;
    out.par_chunks_mut(x.k * words * 4).enumerate().for_each(|(g, grp)| {
        for lane in 0..4.min(rows - g * 4) {
            let (oy, ox) = ((g * 4 + lane) / ow, (g * 4 + lane) % ow);
            for ky in 0..k {
                let iy = (oy * stride + ky) as isize - pad as isize;
                if iy < 0 || iy >= x.h as isize {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * stride + kx) as isize - pad as isize;
                    if ix < 0 || ix >= x.w as isize {
                        continue;
                    }
                    let src = &x.data[(iy as usize * x.w + ix as usize) * x.k * cw..][..x.k * cw];
                    let tap = ky * k + kx;
                    for j in 0..x.k {
                        if narrow {
                            let (wd, b) = patch_bit(x.c, tap, 0);
                            grp[(j * words + wd) * 4 + lane] |= src[j] << b;
                        } else {
                            for c in 0..cw {
                                grp[(j * words + tap * cw + c) * 4 + lane] = src[j * cw + c];
                            }
                        }
                    }
                }
            }
        }
    });
}
