//! Bit-serial convolution, the crate's one safe door to the kernels: [`BitConv`] owns its packed weights
//! (immutable after construction, the table and AVX-512 kernels' layouts made once beside them), checks every
//! input against its geometry, picks the kernel and runs it. Feature maps are NHWC (one image).
use crate::error::{Error, Result};
use crate::kernels::{avx512, lut, quant, BitGemm, Isa};
use crate::layout::{out_size, patch_bit, patch_words, ChannelQuant, Planes};
use crate::profile::{self, Phase};
use crate::scratch::{self, Buf};
use lq_quant::{CodeSet, Levels};

/// A convolution with bit-packed quantized weights (square kernel, no bias). The fields are private so the
/// packed weights and the kernel-layout copies made from them cannot diverge.
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
    /// The weights in the AVX-512 kernel's layout, where it can run this layer (AVX-512 present, whole bytes of
    /// input channels, K_w ≤ 4).
    p512: Option<avx512::Weights>,
}

impl PartialEq for BitConv {
    /// Equal geometry, bits and bases (the kernel-layout copies are derived from them).
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
        let p512 = avx512::takes(c_in, kw, 1).then(|| avx512::pack_weights(&bits, &basis, c_out, kw, c_in, k));
        Ok(BitConv { c_out, c_in, k, stride, pad, kw, bits, basis, lut, p512 })
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
    /// NHWC f32 out. Where the table or AVX-512 kernel runs, codes go straight into its operand (no bit-planes);
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
        let ka = self.check_f32(x, h, w, q, a_basis)?;
        Ok(rayon::scope(|_| self.run(Input::F32 { x, h, w, q }, ka, a_basis, isa)))
    }

    /// The layer with its tail (the runtime's one call for a quantized conv step): the output plus `bias`, added
    /// into the residual `add` where given (which comes back as the value: residual + (conv + bias), what the
    /// separate steps give), and, where `next` is given and the AVX-512 kernel runs both layers, quantized by
    /// `next`'s activation quantizer (`nq`, basis `n_basis`) straight into `next`'s operand in the kernel's
    /// epilogue: no f32 map between the two convs where `add` is not given, no separate add or input-map pass where
    /// it is (the value is then empty, or the residual sum). Where the operand is not made, the value is the f32 map
    /// and `next` runs from it. Bit for bit the result of the layers run apart. Errors as `forward_f32` does, or if
    /// an operand source was made for another conv or `add` has another length.
    pub(crate) fn forward_tail(
        &self,
        src: Source,
        bias: Option<&[f32]>,
        add: Option<Vec<f32>>,
        next: Option<(&BitConv, &ChannelQuant, &[f32])>,
        isa: Isa,
    ) -> Result<Tail> {
        let runs = |c: &BitConv, ka| isa == Isa::Avx512 && c.p512.is_some() && avx512::takes(c.c_in, c.kw, ka);
        let (h, w) = match src {
            Source::F32 { h, w, .. } | Source::Operand { h, w, .. } => (h, w),
        };
        let (oh, ow) = self.out_hw(h, w);
        let len = |y: &[f32]| y.len() == oh * ow * self.c_out;
        if bias.is_some_and(|b| b.len() != self.c_out) || add.as_deref().is_some_and(|a| !len(a)) {
            return Err(Error::Input(format!(
                "a bias or residual that does not fit a {oh}x{ow}x{} output",
                self.c_out
            )));
        }
        // Residual + (conv + bias): the order of the separate steps.
        let finish = |mut y: Vec<f32>, add: Option<Vec<f32>>| {
            if let Some(b) = bias {
                y.chunks_exact_mut(b.len()).for_each(|px| px.iter_mut().zip(b).for_each(|(y, b)| *y += b));
            }
            match add {
                Some(mut a) => {
                    a.iter_mut().zip(&y).for_each(|(a, y)| *a += y);
                    scratch::recycle(y);
                    a
                }
                None => y,
            }
        };
        let r;
        let r = match src {
            Source::F32 { x, h, w, q, a_basis } => {
                let ka = self.check_f32(x, h, w, q, a_basis)?;
                if !runs(self, ka) {
                    let y = rayon::scope(|_| self.run(Input::F32 { x, h, w, q }, ka, a_basis, isa));
                    return Ok(Tail { value: finish(y, add), operand: None });
                }
                r = profile::time(Phase::Input, || self.operand(Input::F32 { x, h, w, q }, ka, a_basis, isa));
                &r
            }
            Source::Operand { r, h, w } => {
                let ka = r.a_basis().len();
                if !runs(self, ka) || !r.fits(h, w, self.c_in, ka, self.k, self.stride, self.pad) {
                    return Err(Error::Input(format!("an operand made for another conv than this {h}x{w} one")));
                }
                r
            }
        };
        let wp = self.p512.as_ref().expect("runs() checked the AVX-512 weights");
        let next = next.filter(|&(n, nq, nb)| {
            let fits = n.c_in == self.c_out && nq.channels() == n.c_in && n.check_hw(oh, ow).is_ok();
            fits && nq.bits() == Some(nb.len()) && runs(n, nb.len()) && avx512::fuses(self.c_out, bias, nq, nb)
        });
        Ok(rayon::scope(|_| {
            profile::time(Phase::Kernel, || {
                let mut add = add;
                let next = next.map(|(n, nq, nb)| (nq, nb, (n.k, n.stride, n.pad)));
                if add.is_some() || next.is_some() {
                    if let Some(operand) = avx512::run_tail(r, wp, bias, add.as_deref_mut(), next) {
                        return Tail { value: add.unwrap_or_default(), operand };
                    }
                }
                // Every value is written by the kernel.
                let mut y = scratch::reused(oh * ow * self.c_out);
                avx512::run(r, wp, &mut y);
                Tail { value: finish(y, add), operand: None }
            })
        }))
    }

    /// Checks [`BitConv::forward_f32`]'s input; its planes K_a.
    fn check_f32(&self, x: &[f32], h: usize, w: usize, q: &ChannelQuant, a_basis: &[f32]) -> Result<usize> {
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
        Ok(ka)
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
        let (rows, mut out) = (oh * ow, scratch::filled(oh * ow * self.c_out, 0.0f32));
        let (k, s, pad) = (self.k, self.stride, self.pad);
        if let Some(wp) = self.p512.as_ref().filter(|_| isa == Isa::Avx512 && avx512::takes(self.c_in, self.kw, ka)) {
            let r = profile::time(Phase::Input, || self.operand(x, ka, a_basis, isa));
            profile::time(Phase::Kernel, || avx512::run(&r, wp, &mut out));
            return out;
        }
        let lut_here = matches!(isa, Isa::Avx2Lut | Isa::Avx512);
        let plan = lut::plan(self.c_in, self.c_out, self.kw, ka).filter(|_| lut_here);
        match (plan, &self.lut) {
            (Some(plan), Some((lanes, lw))) if plan.lanes == *lanes => {
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

impl BitConv {
    /// The AVX-512 kernel's operand of checked input `x` (`ka` planes, basis `a_basis`).
    fn operand(&self, x: Input, ka: usize, a_basis: &[f32], isa: Isa) -> avx512::Rows {
        let (k, s, pad) = (self.k, self.stride, self.pad);
        match x {
            Input::Planes(p) => avx512::Rows::from_planes(p, a_basis, k, s, pad),
            Input::F32 { x, h, w, q } => avx512::Rows::from_f32(x, h, w, q, a_basis, k, s, pad).unwrap_or_else(|| {
                avx512::Rows::from_planes(&quant::quantize_checked(isa, x, h, w, q, ka), a_basis, k, s, pad)
            }),
        }
    }
}

/// A quantized conv step's input ([`BitConv::forward_tail`]): the f32 map with its quantizer and basis, or the
/// operand another conv's tail made from an `h × w` map.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    F32 { x: &'a [f32], h: usize, w: usize, q: &'a ChannelQuant, a_basis: &'a [f32] },
    Operand { r: &'a avx512::Rows, h: usize, w: usize },
}

/// What [`BitConv::forward_tail`] made: the f32 value (empty where only the operand was asked for) and the next
/// conv's operand where made.
pub(crate) struct Tail {
    pub value: Vec<f32>,
    pub operand: Option<avx512::Rows>,
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

/// [`im2col`] into a zeroed buffer of the right length.
fn im2col_into(x: &Planes, k: usize, stride: usize, pad: usize, out: &mut [u64]) {
    let cw = x.words();
    let (oh, ow) = (out_size(x.h, k, stride, pad), out_size(x.w, k, stride, pad));
    let words = patch_words(x.c, k);
    // Channels narrower than a word are placed densely, shifted to their tap's bit offset (see `patch_bit`).
    let narrow = crate::layout::narrow(x.c);
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

#[cfg(test)]
mod tests {
    use super::*;
    use lq_quant::{CodeSet, Levels};

    /// A small LCG in [-0.5, 0.5).
    fn rng(mut s: u64) -> impl FnMut() -> f32 {
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    /// A conv's output, alone or added to a residual, quantized for the next conv in the kernel's epilogue
    /// (`forward_tail`) equals the layers run apart, through the f32 map, bit for bit: channels 8 to 64,
    /// strides 1 and 2 on either side, 1×1 and 3×3 kernels, W1–W4 and A1–A4, with and without bias, negative BN
    /// scales, rows wider than one tile call. An operand made for another conv is refused.
    #[test]
    fn fused_epilogue_equals_the_layers_apart() {
        if !avx512::is_available() {
            eprintln!("SKIP: no AVX-512 here, the fused epilogue does not run");
            return;
        }
        // (c_in, c_mid, c_out, h, w, (k, stride) of each conv, (K_w, K_a) of each, bias)
        let cases = [
            (16, 16, 16, 9, 11, (3, 1), (3, 1), (2, 2), (2, 2), false),
            (8, 24, 8, 8, 7, (3, 2), (3, 1), (1, 3), (3, 1), true),
            (16, 64, 32, 6, 6, (1, 1), (3, 2), (4, 4), (1, 4), true),
            (32, 8, 16, 5, 9, (3, 1), (1, 2), (3, 1), (2, 3), false),
            // Rows wider than one tile call (70 pixels: calls of 32, 32 and 6), P = 16 and 8 on the two sides.
            (8, 16, 8, 3, 70, (3, 1), (3, 1), (1, 1), (1, 2), true),
        ];
        let mut r = rng(7);
        for (n, &(ci, cm, co, h, w, (k1, s1), (k2, s2), (kw1, ka1), (kw2, ka2), has_bias)) in cases.iter().enumerate() {
            let mut v = |len: usize| (0..len).map(|_| r()).collect::<Vec<f32>>();
            // Bases of `len / bits` quantizers, each `(0.5 + |x|)·2^i` for its plane i.
            let basis = |len: usize, bits: usize, v: &mut dyn FnMut(usize) -> Vec<f32>| {
                v(len).iter().enumerate().map(|(i, x)| (1 << (i % bits)) as f32 * (0.5 + x.abs())).collect::<Vec<_>>()
            };
            let a = BitConv::pack(cm, ci, k1, s1, &v(cm * ci * k1 * k1), &basis(cm * kw1, kw1, &mut v)).unwrap();
            let b = BitConv::pack(co, cm, k2, s2, &v(co * cm * k2 * k2), &basis(co * kw2, kw2, &mut v)).unwrap();
            let (ab1, ab2) = (basis(ka1, ka1, &mut v), basis(ka2, ka2, &mut v));
            let act = |ab: &[f32], c: usize, spread: f32, v: &mut dyn FnMut(usize) -> Vec<f32>| {
                let lv = Levels::from_basis(ab, CodeSet::Binary).unwrap();
                let top = ab.iter().sum::<f32>();
                // BN scales of either sign, so the thresholds land inside the values' range.
                let scale: Vec<f32> = v(c).iter().map(|x| top * 2.0 * x / spread).collect();
                ChannelQuant::fold(&lv, &scale, &v(c).iter().map(|x| top * x).collect::<Vec<f32>>())
            };
            let q1 = act(&ab1, ci, 0.5, &mut v);
            let x = v(h * w * ci);
            let mut y = a.forward_f32(&x, h, w, &q1, &ab1, Isa::Avx512).unwrap();
            let spread = y.iter().fold(0.0f32, |m, y| m.max(y.abs()));
            // A bias on the scale of the values, so it moves codes.
            let bias = has_bias.then(|| v(cm).iter().map(|b| b * spread).collect::<Vec<f32>>());
            if let Some(bias) = &bias {
                y.chunks_exact_mut(cm).for_each(|px| px.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
            }
            let q2 = act(&ab2, cm, spread, &mut v);
            let (oh, ow) = a.out_hw(h, w);
            let apart = b.forward_f32(&y, oh, ow, &q2, &ab2, Isa::Avx512).unwrap();
            let levels = apart.iter().map(|v| v.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
            assert!(levels > 4 * co, "case {n}: the codes hardly vary ({levels} distinct outputs)");
            let src = Source::F32 { x: &x, h, w, q: &q1, a_basis: &ab1 };
            let next = Some((&b, &q2, &ab2[..]));
            let from = |op: &avx512::Rows, conv: &BitConv, (h, w)| {
                conv.forward_tail(Source::Operand { r: op, h, w }, None, None, None, Isa::Avx512).map(|t| t.value)
            };
            let same =
                |p: &[f32], q: &[f32]| p.len() == q.len() && p.iter().zip(q).all(|(p, q)| p.to_bits() == q.to_bits());
            let tail = a.forward_tail(src, bias.as_deref(), None, next, Isa::Avx512).unwrap();
            assert!(tail.value.is_empty(), "case {n}: an f32 map besides the operand");
            let op = tail.operand.unwrap_or_else(|| panic!("case {n}: the fused epilogue does not run"));
            assert!(same(&apart, &from(&op, &b, (oh, ow)).unwrap()), "case {n}: fused and apart differ");
            assert!(from(&op, &a, (oh, ow)).is_err() || (ci, k1, s1) == (cm, k2, s2), "case {n}");
            assert!(from(&op, &b, (oh + 1, ow)).is_err(), "case {n}: an operand for another map size");
            // A residual added in the tail: the sum is the value, residual + (conv + bias) as the add step makes it,
            // and the next conv's operand is made from it.
            let res: Vec<f32> = v(y.len()).iter().map(|r| r * spread).collect();
            let sum: Vec<f32> = res.iter().zip(&y).map(|(r, y)| r + y).collect();
            let apart = b.forward_f32(&sum, oh, ow, &q2, &ab2, Isa::Avx512).unwrap();
            for next in [next, None] {
                let tail = a.forward_tail(src, bias.as_deref(), Some(res.clone()), next, Isa::Avx512).unwrap();
                assert!(same(&tail.value, &sum), "case {n}: the residual sum differs");
                assert_eq!(tail.operand.is_some(), next.is_some(), "case {n}");
                if let Some(op) = &tail.operand {
                    assert!(same(&apart, &from(op, &b, (oh, ow)).unwrap()), "case {n}: fused and apart differ (add)");
                }
            }
            let short = Some(res[1..].to_vec());
            assert!(
                a.forward_tail(src, bias.as_deref(), short, next, Isa::Avx512).is_err(),
                "case {n}: short residual"
            );
        }
    }
}
