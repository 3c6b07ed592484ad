//! Bit-serial convolution, the crate's one safe door to the kernels: [`BitConv`] owns its packed weights
//! (immutable after construction, the table kernel's layout made once beside them), checks every input against
//! its geometry, picks the kernel and runs it. Feature maps are NHWC (one image).
use crate::error::{Error, Result};
use crate::kernels::{lut, quant, BitGemm, Isa};
use crate::layout::{out_size, patch_bit, patch_words, ChannelQuant, Planes};
use crate::profile::{self, Phase};
use crate::scratch::Buf;
use lq_quant::{CodeSet, Levels};

/// A convolution with bit-packed quantized weights (square kernel, no bias). The fields are private so the
/// packed weights and the table-kernel copy made from them cannot diverge.
#[derive(Clone, Debug)]
pub struct BitConv {
    c_out: usize,
    c_in: usize,
    k: usize,
    stride: usize,
    pad: usize,
    kw: usize,
    /// Weight bits `[C_out][K_w][patch_words]`, bit = +1, laid out by [`patch_bit`].
    bits: Vec<u64>,
    /// Weight bases `[C_out][K_w]`.
    basis: Vec<f32>,
    /// The weights in the table kernel's layout with its lane count, where the kernel can run this layer's
    /// output channels (whole 16-channel blocks, K_w ≤ 4, AVX2).
    lut: Option<(usize, Vec<u8>)>,
}

impl PartialEq for BitConv {
    /// Equal geometry, bits and bases (the table-kernel copy is derived from them).
    fn eq(&self, o: &Self) -> bool {
        (self.c_out, self.c_in, self.k, self.stride, self.pad, self.kw) == (o.c_out, o.c_in, o.k, o.stride, o.pad, o.kw)
            && self.bits == o.bits
            && self.basis == o.basis
    }
}

fn invalid(what: &'static str, why: String) -> lq_quant::Error {
    lq_quant::Error::Invalid { what, why }
}

impl BitConv {
    /// Encodes OIHW weights `w` with one basis per output channel (`basis` is `[C_out][K_w]`) and packs them;
    /// zero padding `k/2`. Errors on inconsistent sizes or an unusable basis.
    pub fn pack(
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        w: &[f32],
        basis: &[f32],
    ) -> lq_quant::Result<Self> {
        if c_out == 0 || !basis.len().is_multiple_of(c_out) {
            return Err(invalid("conv basis", format!("{} values for {c_out} output channels", basis.len())));
        }
        let kw = basis.len() / c_out;
        let n = [c_out, c_in, k, k].iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(w.len()) {
            return Err(lq_quant::Error::ShapeMismatch {
                what: "conv weights",
                expected: n.unwrap_or(0),
                got: w.len(),
            });
        }
        Self::check(c_out, c_in, k, stride, k / 2, kw)?;
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
        Self::new(c_out, c_in, k, stride, k / 2, kw, bits, basis.to_vec())
    }

    fn check(c_out: usize, c_in: usize, k: usize, stride: usize, pad: usize, kw: usize) -> lq_quant::Result<()> {
        if c_out == 0 || c_in == 0 || k == 0 || stride == 0 || pad >= k || !(1..=8).contains(&kw) {
            let why = format!("c_out {c_out}, c_in {c_in}, k {k}, stride {stride}, pad {pad}, K_w {kw}");
            return Err(invalid("conv geometry", why));
        }
        Ok(())
    }

    /// A conv from weight bits already in the [`patch_bit`] layout (`[C_out][K_w][patch_words]`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        pad: usize,
        kw: usize,
        bits: Vec<u64>,
        basis: Vec<f32>,
    ) -> lq_quant::Result<Self> {
        Self::check(c_out, c_in, k, stride, pad, kw)?;
        let words = patch_words(c_in, k);
        if Some(bits.len()) != c_out.checked_mul(kw * words) || basis.len() != c_out * kw {
            let why = format!("{} words and {} bases for {c_out}x{kw} rows of {words} words", bits.len(), basis.len());
            return Err(invalid("conv weights", why));
        }
        let lut = lut::lanes(c_out, kw).map(|l| (l, lut::pack_weights(&bits, c_out, kw, words, l)));
        Ok(BitConv { c_out, c_in, k, stride, pad, kw, bits, basis, lut })
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }
    /// Input channels.
    pub fn c_in(&self) -> usize {
        self.c_in
    }
    /// Kernel size.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Stride.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Zero padding.
    pub fn pad(&self) -> usize {
        self.pad
    }
    /// Weight planes K_w.
    pub fn kw(&self) -> usize {
        self.kw
    }
    /// Weight bits `[C_out][K_w][patch_words]`, bit = +1, laid out by [`patch_bit`].
    pub fn bits(&self) -> &[u64] {
        &self.bits
    }
    /// Weight bases `[C_out][K_w]`.
    pub fn basis(&self) -> &[f32] {
        &self.basis
    }

    /// Output size for an input of `h × w` (the input must be at least the kernel size once padded).
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (out_size(h, self.k, self.stride, self.pad), out_size(w, self.k, self.stride, self.pad))
    }

    /// Convolution of packed activations with activation basis `a_basis` (K_a values), NHWC f32 out. Errors
    /// when `x` does not fit this conv (channels, planes vs basis, data length, a map smaller than the kernel).
    pub fn forward(&self, x: &Planes, a_basis: &[f32], isa: Isa) -> Result<Vec<f32>> {
        if !x.is_consistent() || x.c != self.c_in || x.k != a_basis.len() || !(1..=8).contains(&x.k) {
            return Err(Error::Input(format!(
                "planes {}x{}x{} with {} planes ({} words) and a basis of {} for a conv over {} channels",
                x.h,
                x.w,
                x.c,
                x.k,
                x.data.len(),
                a_basis.len(),
                self.c_in
            )));
        }
        self.check_hw(x.h, x.w)?;
        // On a pool worker (a no-op when already on one), so the layer's parallel loops run without wake-ups.
        Ok(rayon::scope(|_| self.run(Input::Planes(x), x.k, a_basis, isa)))
    }

    /// Convolution of the quantized `x` (NHWC f32, `h × w × C`, quantized by `q` as [`Planes::quantize`] does),
    /// NHWC f32 out. Where the table kernel runs, codes go straight into its operand (no bit-planes in between);
    /// the result equals `forward(&Planes::quantize(x, h, w, q)?, ..)`. Errors as [`BitConv::forward`] does.
    pub fn forward_f32(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        q: &ChannelQuant,
        a_basis: &[f32],
        isa: Isa,
    ) -> Result<Vec<f32>> {
        let ka = q.bits().filter(|&k| k == a_basis.len());
        let n = [h, w, self.c_in].iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let (Some(ka), true, true) = (ka, q.channels() == self.c_in, n == Some(x.len())) else {
            return Err(Error::Input(format!(
                "{} values for {h}x{w}x{}, a quantizer over {} channels with {} codes and a basis of {}",
                x.len(),
                self.c_in,
                q.channels(),
                q.codes.len(),
                a_basis.len()
            )));
        };
        self.check_hw(h, w)?;
        Ok(rayon::scope(|_| self.run(Input::F32 { x, h, w, q }, ka, a_basis, isa)))
    }

    fn check_hw(&self, h: usize, w: usize) -> Result<()> {
        if h == 0 || w == 0 || h + 2 * self.pad < self.k || w + 2 * self.pad < self.k {
            return Err(Error::Input(format!("a {h}x{w} map is smaller than the {}x{} kernel", self.k, self.k)));
        }
        Ok(())
    }

    /// The layer on checked input: `ka` planes, `a_basis.len() == ka`, shapes as the conv expects.
    fn run(&self, x: Input, ka: usize, a_basis: &[f32], isa: Isa) -> Vec<f32> {
        let (h, w) = match x {
            Input::Planes(p) => (p.h, p.w),
            Input::F32 { h, w, .. } => (h, w),
        };
        let isa = if isa.is_available() { isa } else { Isa::Portable };
        let (oh, ow) = self.out_hw(h, w);
        let g = BitGemm {
            c_out: self.c_out,
            kw: self.kw,
            ka,
            words: patch_words(self.c_in, self.k),
            w: &self.bits,
            w_basis: &self.basis,
            a_basis,
        };
        let (rows, mut out) = (oh * ow, vec![0.0f32; oh * ow * self.c_out]);
        let lut_here = isa == Isa::Avx2Lut || (isa == Isa::Avx512Lut && self.c_in < 32);
        let plan = lut::plan(self.c_in, self.c_out, self.kw, ka).filter(|_| lut_here);
        match (plan, &self.lut) {
            (Some(plan), Some((lanes, lw))) if plan.lanes == *lanes => {
                let (k, s, pad) = (self.k, self.stride, self.pad);
                let a = profile::time(Phase::Input, || match x {
                    Input::Planes(p) => lut::input(p, k, s, pad, a_basis, plan),
                    Input::F32 { x, h, w, q } => lut::input_f32(x, h, w, q, k, s, pad, a_basis, plan),
                });
                profile::time(Phase::Kernel, || lut::run(&g, plan, lw, &a, &mut out));
            }
            _ => {
                let a = profile::time(Phase::Input, || {
                    let quantized;
                    let p = match x {
                        Input::Planes(p) => p,
                        Input::F32 { x, h, w, q } => {
                            quantized = quant::quantize_checked(isa, x, h, w, q, ka);
                            &quantized
                        }
                    };
                    let mut a = Buf::<u64>::zeroed(im2col_len(p, self.k, self.stride, self.pad));
                    im2col_into(p, self.k, self.stride, self.pad, &mut a);
                    a
                });
                profile::time(Phase::Kernel, || g.run(isa, &a, rows, &mut out));
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
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub fn im2col(x: &Planes, k: usize, stride: usize, pad: usize) -> Vec<u64> {
    let mut out = vec![0u64; im2col_len(x, k, stride, pad)];
    im2col_into(x, k, stride, pad, &mut out);
    out
}

fn im2col_len(x: &Planes, k: usize, stride: usize, pad: usize) -> usize {
    let (oh, ow) = (out_size(x.h, k, stride, pad), out_size(x.w, k, stride, pad));
    (oh * ow).div_ceil(4) * x.k * patch_words(x.c, k) * 4
}

/// [`im2col`] into a zeroed buffer of the right length. Narrow channels (dense taps) go through one bit stream per
/// input row and plane, zero-bordered, so a patch's kernel row (`k` taps, `k·C` bits) is one bit-range copy (a
/// byte copy for 3×3 over 8, 16 or 32 channels); wider ones are word copies.
fn im2col_into(x: &Planes, k: usize, stride: usize, pad: usize, out: &mut [u64]) {
    use rayon::prelude::*;
    let (cw, ka, c) = (x.words(), x.k, x.c);
    let (oh, ow) = (out_size(x.h, k, stride, pad), out_size(x.w, k, stride, pad));
    let words = patch_words(c, k);
    let rows = oh * ow;
    let narrow = crate::layout::narrow(c);
    // Narrow channels: each input row's plane as a zero-bordered little-endian byte stream, pixel `x` at bit
    // `(x + pad)·C`, 16 slack bytes for the reads. A patch's kernel row is `k·C` stream bits, read in pieces of at
    // most 120 bits (any bit offset fits one unaligned 16-byte read; one piece for 3×3 over up to 32 channels) and
    // ORed into place in registers.
    let sb = if narrow { ((x.w + 2 * pad) * c).div_ceil(8) + 16 } else { 0 };
    let mut streams = vec![0u8; if narrow { x.h * ka * sb } else { 0 }];
    streams.par_chunks_mut((ka * sb).max(1)).enumerate().for_each(|(y, s)| {
        for xx in 0..x.w {
            let src = &x.data[(y * x.w + xx) * ka * cw..][..ka * cw];
            let bit = (xx + pad) * c;
            for j in 0..ka {
                // Left to right, so the 8 bytes from this pixel on hold only zeros (and earlier pixels' bits).
                let d: &mut [u8; 8] = (&mut s[j * sb + bit / 8..][..8]).try_into().unwrap();
                *d = (u64::from_le_bytes(*d) | src[j] << (bit % 8)).to_le_bytes();
            }
        }
    });
    // The pieces of one kernel row: (bit in the segment, bits, bit in the patch row) for ky = 0.
    let seg = k * c;
    let pieces: Vec<(usize, usize)> = (0..seg).step_by(120).map(|b| (b, (seg - b).min(120))).collect();
    const GT: usize = 16; // groups of 4 rows per parallel task
    let gl = ka * words * 4;
    out[..rows.div_ceil(4) * gl].par_chunks_mut(GT * gl).enumerate().for_each(|(t, chunk)| {
        let mut patch = vec![0u64; words + 3];
        let fast3 = narrow && k == 3 && matches!(c, 8 | 16 | 32);
        // Per plane, the stream rows of the current output row's three kernel rows.
        let mut rows3: Vec<[Option<&[u8]>; 3]> = vec![[None; 3]; ka];
        let r0 = t * GT * 4;
        let (mut oy, mut ox) = (r0 / ow, r0 % ow);
        for r in r0..(r0 + GT * 4).min(rows) {
            let (grp, lane) = (&mut chunk[(r - r0) / 4 * gl..][..gl], r % 4);
            // Kernel rows inside the map: padded row oy·stride + ky is input row oy·stride + ky − pad.
            let kys = pad.saturating_sub(oy * stride)..k.min((x.h + pad).saturating_sub(oy * stride));
            for j in 0..ka {
                if fast3 {
                    // The common case with constant shifts: 3×3 over whole bytes of channels.
                    if ox == 0 || r == r0 {
                        let row = |ky: usize| {
                            let y = (oy * stride + ky).checked_sub(pad).filter(|&y| y < x.h)?;
                            Some(&streams[(y * ka + j) * sb..][..sb])
                        };
                        rows3[j] = [row(0), row(1), row(2)];
                    }
                    let (rows3, byte) = (rows3[j], ox * stride * c / 8);
                    let p = match c {
                        8 => patch3::<8>(rows3, byte),
                        16 => patch3::<16>(rows3, byte),
                        _ => patch3::<32>(rows3, byte),
                    };
                    (0..words).for_each(|wd| grp[(j * words + wd) * 4 + lane] = p[wd]);
                    continue;
                }
                if narrow {
                    patch.fill(0);
                    for ky in kys.clone() {
                        let s = &streams[((oy * stride + ky - pad) * ka + j) * sb..][..sb];
                        for &(b, n) in &pieces {
                            let at = ox * stride * c + b;
                            let v = u128::from_le_bytes(s[at / 8..][..16].try_into().unwrap()) >> (at % 8);
                            let v = v & ((1u128 << n) - 1);
                            let (q, sh) = ((ky * seg + b) / 64, (ky * seg + b) % 64);
                            patch[q] |= (v << sh) as u64;
                            patch[q + 1] |= ((v << sh) >> 64) as u64;
                            if sh > 0 {
                                patch[q + 2] |= (v >> (128 - sh)) as u64;
                            }
                        }
                    }
                    (0..words).for_each(|wd| grp[(j * words + wd) * 4 + lane] = patch[wd]);
                    continue;
                }
                for ky in kys.clone() {
                    let iy = oy * stride + ky - pad;
                    for kx in 0..k {
                        let Some(ix) = (ox * stride + kx).checked_sub(pad).filter(|&ix| ix < x.w) else {
                            continue;
                        };
                        let src = &x.data[((iy * x.w + ix) * ka + j) * cw..][..cw];
                        let tap = ky * k + kx;
                        src.iter().enumerate().for_each(|(ci, &v)| grp[(j * words + tap * cw + ci) * 4 + lane] = v);
                    }
                }
            }
            ox += 1;
            if ox == ow {
                (oy, ox) = (oy + 1, 0);
            }
        }
    });
}

/// One 3×3 patch row of one plane over `C` channels (a multiple of 8, at most 32): kernel row `ky` is the `3·C`
/// stream bits at byte `byte` of `rows[ky]` (`None` outside the map), concatenated (words past the row's zero).
#[inline(always)]
fn patch3<const C: usize>(rows: [Option<&[u8]>; 3], byte: usize) -> [u64; 6] {
    let seg = 3 * C;
    let mut p = [0u64; 6];
    for (ky, r) in rows.iter().enumerate() {
        let Some(r) = r else { continue };
        let v = u128::from_le_bytes(r[byte..][..16].try_into().unwrap()) & ((1u128 << seg) - 1);
        let (q, sh) = (ky * seg / 64, ky * seg % 64);
        p[q] |= (v << sh) as u64;
        p[q + 1] |= ((v << sh) >> 64) as u64;
        if sh > 0 {
            p[q + 2] |= (v >> (128 - sh)) as u64;
        }
    }
    p
}
