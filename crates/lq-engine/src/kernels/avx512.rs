//! AVX-512 popcount kernel (VPOPCNTDQ) with an implicit im2col, for layers whose input channels fill whole bytes.
//!
//! - Operand ([`Rows`]): every zero-bordered input row's planes as bytes, pixel `x` at byte `(x + pad)·C/8`. The
//!   `k` taps of a patch's kernel row are then `k·C` consecutive bits, read as `⌈k·C/32⌉` unaligned 32-bit words
//!   straight from the row: no im2col buffer. Bits past the kernel row in its last word belong to the next pixel; the
//!   weights hold zeros there, so the AND drops them. `T` comes from per-pixel counts the quantizer writes on the
//!   same pass (`RowQuant`), summed over k×k windows.
//! - Weights ([`pack_weights`]): `[⌈C_out/16⌉][K_w][k][⌈k·C/32⌉][16]` u32, 16 output channels in the 16 lanes.
//! - Kernel: the 32-bit activation word is broadcast, and each (row, plane, word) costs one `vpandd` + `vpopcntd` +
//!   `vpaddd` on 512 binary products into u32 counts (no widening). A tile is `P` output pixels × 16 channels ×
//!   K_w × K_a accumulators; the epilogue converts, scales and writes 16 channels per store into the NHWC row.
//!   32-bit words rather than 64: a kernel row of 32 channels (96 bits) is 3 words, not 2 of 64 with a quarter
//!   unused, and the epilogue's conversions and stores cover 16 channels, not 8 (ResNet-20 on one thread,
//!   minima of alternated runs: W1A2 1.18x at batch 1 and 1.20x at batch 64, W2A2 1.15x and W3A3 1.14x at 64).
//! - Fused ([`run_tail`]): each task's output rows go from an L1-resident buffer into the residual they are added
//!   to, and/or straight through the next conv's quantizer into its operand; where the next conv's only input is
//!   this conv's output, the f32 map between the two convs is never written.
use crate::layout::{patch_bit, patch_words, ChannelQuant, Planes};
use crate::scratch::Buf;
use crate::team;

/// Whether AVX-512 F/DQ/VPOPCNTDQ (with AVX2 and FMA for the epilogue and the quantizer) is present.
pub fn is_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx2::is_available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vpopcntdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the kernel can run a layer: the CPU has it, whole bytes of input channels, at most 4 bits a side.
pub fn takes(c_in: usize, kw: usize, ka: usize) -> bool {
    is_available() && c_in.is_multiple_of(8) && c_in > 0 && (1..=4).contains(&kw) && (1..=4).contains(&ka)
}

/// Output channels per block (the u32 lanes of a 512-bit register).
const LANES: usize = 16;

/// 32-bit words per kernel row (`k·C` bits).
fn row_words(c_in: usize, k: usize) -> usize {
    (k * c_in).div_ceil(32)
}

/// The kernel's weights: the packed bits and the epilogue's per-channel constants, built once per layer.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[⌈C_out/16⌉][K_w][k][⌈k·C/32⌉][16]` words (see the module docs).
    words: Vec<u32>,
    /// `2·v^w_{o,i}` per block of 16 channels as `[i][16]` (lanes past C_out zero): times `v^a_j`, plane pair
    /// `(i, j)`'s coefficient.
    w2: Vec<f32>,
    /// `S_w = Σ_i v^w_{o,i}` per block as `[16]`.
    sw: Vec<f32>,
    c_out: usize,
    kw: usize,
    c_in: usize,
    k: usize,
}

/// The kernel's weights from bits in the [`patch_bit`] layout (`[C_out][K_w][patch_words]`: tap `(ky, kx)`,
/// channel `ci` at bit `kx·C + ci` of kernel row `ky`'s words) and the bases `[C_out][K_w]`. Panics if they
/// disagree with the geometry.
pub fn pack_weights(bits: &[u64], basis: &[f32], c_out: usize, kw: usize, c_in: usize, k: usize) -> Weights {
    let (words, wr) = (patch_words(c_in, k), row_words(c_in, k));
    assert!(bits.len() == c_out * kw * words && basis.len() == c_out * kw, "weights for another layer");
    let blocks = c_out.div_ceil(LANES);
    let mut out = vec![0u32; blocks * kw * k * wr * LANES];
    let (mut w2, mut sw) = (vec![0.0f32; blocks * kw * LANES], vec![0.0f32; blocks * LANES]);
    for o in 0..c_out {
        let (b, l) = (o / LANES, o % LANES);
        sw[o] = basis[o * kw..][..kw].iter().sum();
        for i in 0..kw {
            w2[(b * kw + i) * LANES + l] = 2.0 * basis[o * kw + i];
            let src = &bits[(o * kw + i) * words..][..words];
            for ky in 0..k {
                for kx in 0..k {
                    for ci in 0..c_in {
                        let (wd, bit) = patch_bit(c_in, ky * k + kx, ci);
                        let d = kx * c_in + ci;
                        out[(((b * kw + i) * k + ky) * wr + d / 32) * LANES + l] |=
                            (((src[wd] >> bit) & 1) as u32) << (d % 32);
                    }
                }
            }
        }
    }
    Weights { words: out, w2, sw, c_out, kw, c_in, k }
}

/// The kernel's activation operand (see the module docs): `[h + 2·pad][K_a][sb]` bytes, `sb` leaving room for the
/// last kernel row's whole words.
pub struct Rows {
    data: Buf<u8>,
    /// `Σ_j v^a_j·(set bits of plane j)` per padded pixel, `[h + 2·pad][w + 2·pad]`: `T` is its k×k window sums
    /// (computed per task by the kernel).
    tw: Buf<f32>,
    /// The activation basis (`tw`'s, and the epilogue's).
    a_basis: Vec<f32>,
    /// The input map's height and width, and the conv's zero padding.
    h: usize,
    w: usize,
    pad: usize,
    /// Padded width.
    wp: usize,
    sb: usize,
    c: usize,
    ka: usize,
    k: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Rows {
    /// Panics on a geometry no conv has (a zero size, kernel or stride, a map smaller than the kernel once
    /// padded) or sizes that overflow: every bound the kernel relies on is then a real allocation's.
    fn zeroed(h: usize, w: usize, c: usize, ka: usize, k: usize, stride: usize, pad: usize) -> Rows {
        let geometry = h > 0 && w > 0 && c > 0 && (1..=8).contains(&ka) && k > 0 && stride > 0;
        let sizes = (|| {
            let (hp, wp) = (h.checked_add(pad.checked_mul(2)?)?, w.checked_add(pad.checked_mul(2)?)?);
            let sb = (wp.checked_mul(c)? / 8).checked_add(8 * k.checked_mul(c)?.div_ceil(64))?;
            Some((hp, wp, sb, hp.checked_mul(ka)?.checked_mul(sb)?, hp.checked_mul(wp)?))
        })();
        let Some((hp, wp, sb, nd, nc)) = sizes.filter(|&(hp, wp, ..)| geometry && hp >= k && wp >= k) else {
            panic!("no conv operand for a {h}x{w}x{c} map, {ka} planes, k={k}, stride={stride}, pad={pad}");
        };
        let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
        assert!(oh.checked_mul(ow).is_some());
        let (data, tw) = (Buf::zeroed(nd), Buf::zeroed(nc));
        Rows { data, tw, a_basis: Vec::new(), h, w, pad, wp, sb, c, ka, k, stride, oh, ow }
    }

    /// Whether this is the operand of a `k×k` conv with `stride` and `pad` over an `h×w×c` map quantized to `ka`
    /// planes.
    #[allow(clippy::too_many_arguments)]
    pub fn fits(&self, h: usize, w: usize, c: usize, ka: usize, k: usize, stride: usize, pad: usize) -> bool {
        (self.h, self.w, self.c, self.ka, self.k, self.stride, self.pad) == (h, w, c, ka, k, stride, pad)
    }

    /// The activation basis the operand was made with (its `T` term's).
    pub fn a_basis(&self) -> &[f32] {
        &self.a_basis
    }

    fn with_basis(mut self, a_basis: &[f32]) -> Rows {
        assert_eq!(a_basis.len(), self.ka, "an activation basis per plane");
        self.a_basis = a_basis.to_vec();
        self
    }

    /// `T = Σ_j v^a_j popc(A_j)` of output row `oy`'s pixels (`trow`, `ow` values): the k×k window sums of the
    /// weighted per-pixel counts, as k² shifted adds of padded rows.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn t_row(&self, oy: usize, trow: &mut [f32]) {
        // The common shapes with constant loop bounds, so the loops unroll and their bounds checks leave them (a
        // generic row had cost ~60 cycles, 5 % of ResNet-20 W1A2 at batch 64).
        // SAFETY (each arm): AVX-512F, as this function's contract.
        unsafe {
            match (self.k, self.stride) {
                (3, 1) => self.t_row_ks(oy, trow, 3, 1),
                (3, 2) => self.t_row_ks(oy, trow, 3, 2),
                (1, s) => self.t_row_ks(oy, trow, 1, s),
                (k, s) => self.t_row_ks(oy, trow, k, s),
            }
        }
    }

    /// [`Rows::t_row`] for kernel `k` and stride `s` (the operand's), inlined so constant arguments specialise it.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn t_row_ks(&self, oy: usize, trow: &mut [f32], k: usize, s: usize) {
        use std::arch::x86_64::*;
        let wp = self.wp;
        let n = trow.len();
        // 16 pixels at a time in a register (passes over `trow` in memory had chained each add on the last pass's
        // store).
        for i0 in (0..n).step_by(16) {
            let m = (n - i0).min(16);
            let lanes = ((1u32 << m) - 1) as u16;
            // A sum per kernel row, then their sum: k-long dependency chains instead of one k²-long one.
            let mut acc = _mm512_setzero_ps();
            for ky in 0..k {
                let src = &self.tw[(oy * s + ky) * wp..][..wp];
                let mut row = _mm512_setzero_ps();
                for kx in 0..k {
                    // The m pixels' inputs, (m − 1)·s + 1 values from i0·s + kx.
                    let v = &src[i0 * s + kx..][..(m - 1) * s + 1];
                    let x = if s == 1 {
                        // SAFETY: the masked load reads the m values of `v`.
                        unsafe { _mm512_maskz_loadu_ps(lanes, v.as_ptr()) }
                    } else if s == 2 {
                        // The even ones of `v`'s 2m − 1 values: two masked loads and one permute (a scalar gather
                        // here had cost more than the stride-1 rows' sums together).
                        let n = v.len();
                        let (lo, hi) = (((1u32 << n.min(16)) - 1) as u16, ((1u32 << n.saturating_sub(16)) - 1) as u16);
                        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
                        // SAFETY: the masked loads read values 0..min(n, 16) and 16..n of `v`.
                        unsafe {
                            let a = _mm512_maskz_loadu_ps(lo, v.as_ptr());
                            let b = _mm512_maskz_loadu_ps(hi, v.as_ptr().add(16.min(n)));
                            _mm512_permutex2var_ps(a, even, b)
                        }
                    } else {
                        let mut g = [0.0f32; 16];
                        g.iter_mut().zip(v.iter().step_by(s)).for_each(|(g, &v)| *g = v);
                        // SAFETY: `g` is 16 f32.
                        unsafe { _mm512_loadu_ps(g.as_ptr()) }
                    };
                    row = _mm512_add_ps(row, x);
                }
                acc = _mm512_add_ps(acc, row);
            }
            // SAFETY: m values of `trow` from i0.
            unsafe { _mm512_mask_storeu_ps(trow.as_mut_ptr().add(i0), lanes, acc) };
        }
    }

    /// # Safety
    /// Never called (no AVX-512 off x86-64: `takes` is false).
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn t_row(&self, _: usize, _: &mut [f32]) {
        unreachable!()
    }

    /// The operand from packed codes (`x.c` a multiple of 8) for activation basis `a_basis`.
    pub fn from_planes(x: &Planes, a_basis: &[f32], k: usize, stride: usize, pad: usize) -> Rows {
        use rayon::prelude::*;
        let (c, ka, cw) = (x.c, x.k, x.words());
        assert!(c.is_multiple_of(8) && x.is_consistent(), "{c} channels: the rows hold whole bytes of channels");
        assert_eq!(a_basis.len(), ka, "an activation basis per plane");
        let mut r = Rows::zeroed(x.h, x.w, c, ka, k, stride, pad);
        let (sb, wp) = (r.sb, r.wp);
        let data = r.data[pad * ka * sb..][..x.h * ka * sb].par_chunks_mut(ka * sb);
        let tw = r.tw[pad * wp..][..x.h * wp].par_chunks_mut(wp);
        data.zip(tw).with_min_len(min_rows(x.w * c)).enumerate().for_each(|(y, (row, tw))| {
            for xx in 0..x.w {
                let mut ones = [0u32; 8];
                for j in 0..ka {
                    let src = &x.data[((y * x.w + xx) * ka + j) * cw..][..cw];
                    let dst = &mut row[j * sb + (xx + pad) * c / 8..][..c / 8];
                    for (d, s) in dst.chunks_mut(8).zip(src) {
                        d.copy_from_slice(&s.to_le_bytes()[..d.len()]);
                    }
                    // Counted from the copied bytes, so stray bits past `c` (the fields are public) count nowhere.
                    ones[j] = dst.iter().map(|b| b.count_ones()).sum();
                }
                tw[pad + xx] = weighted(&ones[..ka], a_basis);
            }
        });
        r.with_basis(a_basis)
    }

    /// The operand straight from the f32 conv input (NHWC, `h·w·C`) and its folded quantizer, for `a_basis`
    /// (`None` where `RowQuant` does not take the quantizer: quantize to [`Planes`] and use [`Rows::from_planes`]).
    #[allow(clippy::too_many_arguments)]
    pub fn from_f32(
        x: &[f32],
        h: usize,
        w: usize,
        q: &ChannelQuant,
        a_basis: &[f32],
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Rows> {
        let rq = RowQuant::new(q)?;
        let (c, ka) = (q.channels(), rq.ka);
        if [h, w, c].iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(x.len()) || a_basis.len() != ka {
            return None;
        }
        let mut r = Rows::zeroed(h, w, c, ka, k, stride, pad);
        let (sb, wp) = (r.sb, r.wp);
        let m = team::piece_rows(h, min_rows(w * c));
        let data = r.data[pad * ka * sb..][..h * ka * sb].chunks_mut(m * ka * sb);
        let mut pieces: Vec<_> =
            data.zip(r.tw[pad * wp..][..h * wp].chunks_mut(m * wp)).zip(x.chunks(m * w * c)).collect();
        team::for_each_mut(&mut pieces, |_, ((data, tw), xs)| {
            let rows = data.chunks_exact_mut(ka * sb).zip(tw.chunks_exact_mut(wp)).zip(xs.chunks_exact(w * c));
            rows.for_each(|((row, tw), xs)| rq.fill_row(xs, row, sb, tw, pad, a_basis));
        });
        Some(r.with_basis(a_basis))
    }
}

/// `Σ_j a_j·n_j` in f32, planes in order: the one formula of a pixel's weighted count (both operand builders).
fn weighted(ones: &[u32], a: &[f32]) -> f32 {
    ones.iter().zip(a).fold(0.0, |t, (&n, &a)| t + a * n as f32)
}

/// Input rows of `row` values per parallel piece of an operand build: at least 2^15 values (several µs of work),
/// so a small map is one piece on the calling thread (splitting it had cost more in wake-ups than it saved; 2^13
/// and 2^12 measured level and 4 % slower at 2 threads, batch 1).
fn min_rows(row: usize) -> usize {
    (1usize << 15).div_ceil(row.max(1))
}

/// The activation quantizer of this path, as [`Planes::quantize`] defines it, in one of two forms:
/// - Search, where every channel's signed thresholds ascend and each code is its sorted level index with the bits
///   permuted (what [`ChannelQuant::fold`] gives where the sorted levels follow the codes' binary order with the
///   bits permuted: any positive basis at K_a ≤ 2, and e.g. `s·(1, 2, 4)` in any order at 3): the index by binary search on
///   16 channels at once, bit `K_a − 1 − d` from the d-th compare against the threshold that halves what the
///   earlier bits left (chosen per lane by masked blends). K_a compares and 2^K_a − 1 − K_a blends, where the count
///   takes 2^K_a − 1 compares, as many adds, a permute and a test per plane; each index bit's mask is then a plane's
///   16 bits, stored whole. ResNet-20 W1A2 at batch 64 on one thread: 1.07x for the network.
/// - Count, for anything else: the count of signed thresholds passed (AVX2 compares subtracted) indexes the codes
///   by a lane permute, and each plane's 8 bits are one `movemask`. AVX2 compares on 8 channels rather than
///   AVX-512 ones on 16 here: with compares and tests into mask registers for every threshold and plane, the
///   input map of ResNet-20 W2A2 had read 0.026 against 0.016 ms per image, and a thermometer form (each plane an
///   XOR of the compares' masks) 0.021 against 0.016 for W1A2.
struct RowQuant<'a> {
    sign: &'a [f32],
    /// Signed thresholds `[t][C]`.
    stt: Vec<f32>,
    /// Code per sorted level index.
    codes: [i32; 16],
    ka: usize,
    /// Whether the search form runs: every channel's signed thresholds ascend (`<=`, so a NaN one keeps the count)
    /// and code `i` is `i` with its bits permuted.
    search: bool,
    /// Where `search` holds, the plane of each index bit (`< K_a`).
    plane_of: [usize; 4],
    /// The row of `fill`'s counts that holds plane j's (the plane's own, or its index bit's where `search` holds).
    count_row: [usize; 4],
}

impl<'a> RowQuant<'a> {
    /// `None` unless AVX-512 is present, channels come in whole bytes and K_a ≤ 4.
    fn new(q: &'a ChannelQuant) -> Option<Self> {
        let ka = Self::takes(q)?;
        let stt = super::quant::signed_thresholds(q);
        let mut codes = [0i32; 16];
        codes.iter_mut().zip(&q.codes).for_each(|(d, &s)| *d = s as i32);
        let c = q.channels();
        // `<=` is false for a NaN threshold: those keep the count.
        let ascend =
            stt.chunks_exact(c).zip(stt.chunks_exact(c).skip(1)).all(|(a, b)| a.iter().zip(b).all(|(a, b)| a <= b));
        // Code bit π(b) is index bit b (the bases' order: an ascending basis gives π = id).
        let pi: [usize; 4] = std::array::from_fn(|b| q.codes.get(1 << b).map_or(0, |&c| c.trailing_zeros() as usize));
        let permuted = |i: usize| (0..ka).map(|b| ((i >> b) & 1) << pi[b]).sum::<usize>();
        let distinct = (0..ka).all(|j| pi[..ka].iter().filter(|&&p| p == j).count() == 1);
        let search = ascend && distinct && q.codes.iter().enumerate().all(|(i, &code)| code as usize == permuted(i));
        // Where the search runs, plane j's counts are index bit π⁻¹(j)'s.
        let mut count_row = [0, 1, 2, 3];
        if search {
            (0..ka).for_each(|b| count_row[pi[b]] = b);
        }
        Some(RowQuant { sign: &q.sign, stt, codes, ka, search, plane_of: pi, count_row })
    }

    /// `q`'s planes K_a where [`RowQuant::new`] takes it.
    fn takes(q: &ChannelQuant) -> Option<usize> {
        let (c, ka) = (q.channels(), q.bits()?);
        (is_available() && c > 0 && c.is_multiple_of(8) && ka <= 4).then_some(ka)
    }

    /// One image row's codes into its plane rows (`sb` bytes apart, pixel `x` at byte `(x + pad)·C/8`) and their
    /// set-bit counts weighted by the basis `a` ([`weighted`], into `tw`'s padded row). Panics if the rows are too
    /// short or `a` is not a value per plane.
    fn fill_row(&self, xs: &[f32], row: &mut [u8], sb: usize, tw: &mut [f32], pad: usize, a: &[f32]) {
        let (c, ka) = (self.sign.len(), self.ka);
        let npx = xs.len() / c;
        // Keeps `fill`'s unchecked plane writes inside `row`.
        assert!(row.len() >= ka * sb && (pad + npx) * c / 8 <= sb && tw.len() >= pad + npx && a.len() == ka);
        // SAFETY (each arm): `new` checked AVX-512 (with AVX2); K_a == KA.
        unsafe {
            match ka {
                1 => self.fill::<1>(xs, row, sb, tw, pad, a),
                2 => self.fill::<2>(xs, row, sb, tw, pad, a),
                3 => self.fill::<3>(xs, row, sb, tw, pad, a),
                _ => self.fill::<4>(xs, row, sb, tw, pad, a),
            }
        }
    }

    /// [`RowQuant::fill_row`] for `KA` planes: pixels in chunks, channel groups outside the pixel loop (a group's
    /// sign and thresholds loaded once per chunk, in registers where they fit), the counts kept per plane (per
    /// index bit in the search form: `count_row` maps them) and weighted per chunk in straight loops.
    ///
    /// # Safety
    /// AVX-512F (with AVX2); `KA == self.ka`; `row` as `fill_row` checks (the plane bytes are written unchecked).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,popcnt")]
    unsafe fn fill<const KA: usize>(
        &self,
        xs: &[f32],
        row: &mut [u8],
        sb: usize,
        tw: &mut [f32],
        pad: usize,
        a: &[f32],
    ) {
        let c = self.sign.len();
        let npx = xs.len() / c;
        for p0 in (0..npx).step_by(CHUNK) {
            let n = (npx - p0).min(CHUNK);
            let mut ones = [[0u32; CHUNK]; KA];
            let mut c8 = 0;
            // SAFETY (both): channels c8..c8 + 8·G lie below C; `row` as this function's contract.
            while c - c8 >= 16 {
                match self.search {
                    true => unsafe { self.groups::<KA, 2, true>(xs, c8, p0..p0 + n, row, sb, pad, &mut ones) },
                    false => unsafe { self.groups::<KA, 2, false>(xs, c8, p0..p0 + n, row, sb, pad, &mut ones) },
                }
                c8 += 16;
            }
            if c8 < c {
                match self.search {
                    true => unsafe { self.groups::<KA, 1, true>(xs, c8, p0..p0 + n, row, sb, pad, &mut ones) },
                    false => unsafe { self.groups::<KA, 1, false>(xs, c8, p0..p0 + n, row, sb, pad, &mut ones) },
                }
            }
            // `weighted` per pixel as straight loops over the chunk: the same operations in the same order
            // (from 0.0), vectorised, straight into `tw` (a stack array copied there had cost a `memcpy` call per
            // row, ~2 % of a batch-1 ResNet-20).
            let t = &mut tw[pad + p0..][..n];
            for (j, &a) in a.iter().enumerate().take(KA) {
                for (t, &ones) in t.iter_mut().zip(&ones[self.count_row[j]][..n]) {
                    *t = if j == 0 { 0.0 } else { *t } + a * ones as i32 as f32;
                }
            }
        }
    }

    /// Channels `c8..c8 + 8·G` of pixels `px` (whole pixels of `xs`) into their plane bytes, their set bits added
    /// to `ones[row][pixel − px.start]`, the row being the plane's (count form) or its index bit's (search form).
    ///
    /// # Safety
    /// AVX-512F (with AVX2); `KA == self.ka`; `c8 + 8·G ≤ C`; `row` as `fill_row` checks for these pixels.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,popcnt")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn groups<const KA: usize, const G: usize, const SEARCH: bool>(
        &self,
        xs: &[f32],
        c8: usize,
        px: std::ops::Range<usize>,
        row: &mut [u8],
        sb: usize,
        pad: usize,
        ones: &mut [[u32; CHUNK]; KA],
    ) {
        use std::arch::x86_64::*;
        let (c, nt) = (self.sign.len(), (1 << KA) - 1);
        let xs = &xs[px.start * c..px.end * c];
        if SEARCH {
            // The 8·G channels as the low lanes of one 512-bit vector (the others zero, so their compares are false
            // and their bits are not stored).
            let lanes = (((1u32 << (8 * G)) - 1) & 0xFFFF) as u16;
            // SAFETY: 8·G channels at c8 of `sign` and each row of `stt`.
            let (sg, th) = unsafe {
                let th: [__m512; 15] = std::array::from_fn(|l| {
                    _mm512_maskz_loadu_ps(lanes, self.stt.as_ptr().add(l.min(nt - 1) * c + c8))
                });
                (_mm512_maskz_loadu_ps(lanes, self.sign.as_ptr().add(c8)), th)
            };
            // Each index bit's plane row, and the pixels' first byte in it.
            let off: [usize; KA] = std::array::from_fn(|b| self.plane_of[b] * sb);
            let (at0, step) = (((pad + px.start) * c + c8) / 8, c / 8);
            for (p, x) in xs.chunks_exact(c).take(CHUNK).enumerate() {
                // SAFETY: 8·G channels at c8 of the pixel.
                let sv = unsafe { _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x.as_ptr().add(c8)), sg) };
                let mut bits = [0u16; KA];
                for d in 0..KA {
                    let span = 1 << (KA - d);
                    let mut cand: [__m512; 8] = std::array::from_fn(|p| th[(p * span + span / 2 - 1).min(nt - 1)]);
                    for e in (0..d).rev() {
                        for i in 0..1 << e {
                            cand[i] = _mm512_mask_blend_ps(bits[e], cand[2 * i], cand[2 * i + 1]);
                        }
                    }
                    bits[d] = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(sv, cand[0]);
                }
                let at = at0 + p * step;
                for b in 0..KA {
                    // Index bit b at a constant position (a run-time one had sent the bits through memory), its
                    // count by index bit too ([`RowQuant::fill`] weighs it as its plane's).
                    let v = bits[KA - 1 - b];
                    // SAFETY: as below (plane_of[b] < K_a).
                    unsafe { store::<G>(row.as_mut_ptr().add(off[b] + at), v) };
                    ones[b][p] += v.count_ones();
                }
            }
            return;
        }
        // SAFETY (loads): 8 channels at c8 + 8·h < C of `sign`, `codes` (16 i32) and a row of `stt`.
        let (sg, th, lo, hi) = unsafe {
            let ld = |p: *const f32| -> [__m256; G] { std::array::from_fn(|h| _mm256_loadu_ps(p.add(c8 + 8 * h))) };
            let th: [[__m256; G]; 15] = std::array::from_fn(|l| ld(self.stt.as_ptr().add(l.min(nt - 1) * c)));
            let codes = self.codes.as_ptr().cast::<__m256i>();
            (ld(self.sign.as_ptr()), th, _mm256_loadu_si256(codes), _mm256_loadu_si256(codes.add(1)))
        };
        for (p, x) in xs.chunks_exact(c).enumerate() {
            let mut v = [0u32; KA];
            for h in 0..G {
                // SAFETY: 8 channels at c8 + 8·h < C of the pixel.
                unsafe {
                    let sv = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(c8 + 8 * h)), sg[h]);
                    let mut idx = _mm256_setzero_si256();
                    for t in &th[..nt] {
                        idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(sv, t[h])));
                    }
                    let mut code = _mm256_permutevar8x32_epi32(lo, idx);
                    if KA == 4 {
                        // Levels 8..15 from the upper table, chosen by bit 3 of the index.
                        let upper = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
                        let hi = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(hi, idx));
                        code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code), hi, upper));
                    }
                    for (j, v) in v.iter_mut().enumerate() {
                        // Bit j of each code to the sign bit, then one movemask.
                        let bit = _mm256_sllv_epi32(code, _mm256_set1_epi32(31 - j as i32));
                        *v |= (_mm256_movemask_ps(_mm256_castsi256_ps(bit)) as u32) << (8 * h);
                    }
                }
            }
            let at = ((pad + px.start + p) * c + c8) / 8;
            for (j, &v) in v.iter().enumerate() {
                // SAFETY: bytes at..at + G ≤ (pad + npx)·C/8 ≤ sb, plane j < K_a: inside `row` (checked by
                // `fill_row`).
                unsafe { store::<G>(row.as_mut_ptr().add(j * sb + at), v as u16) };
                ones[j][p] += v.count_ones();
            }
        }
    }

    /// # Safety
    /// Never called (no AVX-512 off x86-64: `new` returns `None`).
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn fill<const KA: usize>(&self, _: &[f32], _: &mut [u8], _: usize, _: &mut [f32], _: usize, _: &[f32]) {
        unreachable!()
    }
}

/// The low `G` bytes of `v` to `dst`, little-endian.
///
/// # Safety
/// `G` bytes writable at `dst`; `G` is 1 or 2.
#[inline(always)]
unsafe fn store<const G: usize>(dst: *mut u8, v: u16) {
    // SAFETY: this function's contract.
    unsafe {
        match G {
            2 => dst.cast::<u16>().write_unaligned(v.to_le()),
            _ => *dst = v as u8,
        }
    }
}

/// The conv's output rows (`oh·ow·C_out`, NHWC) from the operand and the packed weights. Panics if they
/// disagree (callers build both for the layer) or the CPU lacks the kernel.
pub fn run(r: &Rows, wt: &Weights, out: &mut [f32]) {
    let (g, c_out) = (Gemm::new(r, wt), wt.c_out);
    let (rows, per) = (r.oh * r.ow, team::piece_rows(r.oh, task_rows(r.ow)) * r.ow);
    assert!(out.len() >= rows * c_out);
    let mut tasks: Vec<&mut [f32]> = out[..rows * c_out].chunks_mut(per * c_out).collect();
    team::for_each_mut(&mut tasks, |t, o| g.task(t * per, o));
}

/// Whether [`run_tail`] takes a conv of `c_out` channels with `bias` into a next conv whose quantizer is
/// `q` (basis `a_basis`): `RowQuant` takes `q`, over `C_out` channels, a basis value per plane, a bias per channel.
pub fn fuses(c_out: usize, bias: Option<&[f32]>, q: &ChannelQuant, a_basis: &[f32]) -> bool {
    let ka = RowQuant::takes(q);
    ka.is_some_and(|ka| a_basis.len() == ka) && q.channels() == c_out && bias.is_none_or(|b| b.len() == c_out)
}

/// The next conv of a fused tail ([`run_tail`]): its activation quantizer, basis and `(k, stride, pad)`.
pub type Next<'a> = (&'a ChannelQuant, &'a [f32], (usize, usize, usize));

/// The conv's output plus `bias` where given, then added into `sum` where given (the residual, `oh·ow·C_out`
/// NHWC: it becomes residual + (conv + bias), the sum the separate steps give), then, where `next` is given,
/// quantized by that conv's activation quantizer straight into its operand. Each task's rows pass through a small
/// f32 buffer and the quantizer while in cache: no f32 map is written where `sum` is not given, no separate add or
/// input-map pass where it is. Equals [`run`], the bias and residual added and [`Rows::from_f32`] of the result,
/// bit for bit. `None` unless [`fuses`] holds for `next`, the next conv fits the output map and `sum` has its
/// length (or where neither is given); panics as [`run`] does.
pub fn run_tail(
    r: &Rows,
    wt: &Weights,
    bias: Option<&[f32]>,
    sum: Option<&mut [f32]>,
    next: Option<Next>,
) -> Option<Option<Rows>> {
    let (c_out, ow) = (wt.c_out, r.ow);
    let rq = match next {
        Some((q, a_basis, (k, stride, pad))) => {
            let fits = k > 0 && stride > 0 && r.oh + 2 * pad >= k && ow + 2 * pad >= k;
            Some((RowQuant::new(q).filter(|_| fits && fuses(c_out, bias, q, a_basis))?, a_basis, (k, stride, pad)))
        }
        None => None,
    };
    let sum_fits = sum.as_ref().is_none_or(|s| s.len() == r.oh * ow * c_out);
    if !sum_fits || (sum.is_none() && rq.is_none()) || bias.is_some_and(|b| b.len() != c_out) {
        return None;
    }
    let g = Gemm::new(r, wt);
    let per = team::piece_rows(r.oh, task_rows(ow));
    let ntasks = r.oh.div_ceil(per);
    let mut next =
        rq.as_ref().map(|(rq, a, (k, s, pad))| Rows::zeroed(r.oh, ow, c_out, rq.ka, *k, *s, *pad).with_basis(a));
    let (sb, wpn) = next.as_ref().map_or((0, 0), |n| (n.sb, n.wp));
    // Per task: its rows of the sum, and of the next operand's planes and weighted counts (each where made).
    let sums: Vec<Option<&mut [f32]>> = match sum {
        Some(s) => s.chunks_mut(per * ow * c_out).map(Some).collect(),
        None => (0..ntasks).map(|_| None).collect(),
    };
    let ops: Vec<Option<(&mut [u8], &mut [f32])>> = match next.as_mut() {
        Some(n) => {
            let (pad, ka) = (n.pad, n.ka);
            let data = n.data[pad * ka * sb..][..r.oh * ka * sb].chunks_mut(per * ka * sb);
            data.zip(n.tw[pad * wpn..][..r.oh * wpn].chunks_mut(per * wpn)).map(Some).collect()
        }
        None => (0..ntasks).map(|_| None).collect(),
    };
    let mut tasks: Vec<_> = sums.into_iter().zip(ops).collect();
    team::for_each_mut(&mut tasks, |t, (sum, op)| {
        let n = r.oh.min((t + 1) * per) - t * per;
        TASK_BUF.with_borrow_mut(|buf| {
            // Every value is written by the kernel: the buffer is resized, not cleared.
            buf.resize(n * ow * c_out, 0.0);
            g.task(t * per * ow, buf);
            // SAFETY (both): `Gemm::new` checked AVX-512.
            if let Some(b) = bias {
                unsafe { add_bias(buf, b) };
            }
            let ys: &[f32] = match sum {
                Some(s) => {
                    unsafe { add_into(s, buf) };
                    s
                }
                None => buf,
            };
            if let (Some((data, tw)), Some((rq, a, (_, _, pad)))) = (op, rq.as_ref()) {
                let ka = rq.ka;
                let rows =
                    ys.chunks_exact(ow * c_out).zip(data.chunks_exact_mut(ka * sb).zip(tw.chunks_exact_mut(wpn)));
                rows.for_each(|(xs, (row, tw))| rq.fill_row(xs, row, sb, tw, *pad, a));
            }
        });
    });
    Some(next)
}

/// `s += y`, element-wise, in AVX-512 code (the task closure around it compiles for the baseline ISA, where this
/// add had cost more than a separate pass: ResNet-20 W1A2's residual adds, 1 thread, batch 64).
///
/// # Safety
/// AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn add_into(s: &mut [f32], y: &[f32]) {
    s.iter_mut().zip(y).for_each(|(s, y)| *s += y);
}

/// `b` added to each pixel's channels of `y` (NHWC, `b.len()` channels), in AVX-512 code as [`add_into`].
///
/// # Safety
/// AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn add_bias(y: &mut [f32], b: &[f32]) {
    y.chunks_exact_mut(b.len()).for_each(|px| px.iter_mut().zip(b).for_each(|(y, b)| *y += b));
}

thread_local! {
    /// A fused tail's task output before it is added and quantized (a task's rows: a few KB, kept in L1).
    static TASK_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output rows per parallel task: whole rows (so a task owns its rows of a next conv's operand), about [`TASK`]
/// pixels.
fn task_rows(ow: usize) -> usize {
    (TASK / ow).max(1)
}

/// Values of a task's scratch kept on the stack.
const STACK: usize = 256;

/// `n` values of scratch: the front of `stack` where they fit, else `heap` grown to `n`.
fn scratch<'a>(stack: &'a mut [f32; STACK], heap: &'a mut Vec<f32>, n: usize) -> &'a mut [f32] {
    if n <= STACK {
        &mut stack[..n]
    } else {
        heap.resize(n, 0.0);
        heap
    }
}

/// A checked (operand, weights) pair.
struct Gemm<'a> {
    r: &'a Rows,
    wp: &'a [u32],
    c_out: usize,
    kw: usize,
    /// `2·v^w` and `S_w` per block (see [`Weights`]).
    w2: &'a [f32],
    sw: &'a [f32],
}

impl<'a> Gemm<'a> {
    /// Panics if the operand and the weights disagree or the CPU lacks the kernel.
    fn new(r: &'a Rows, wt: &'a Weights) -> Self {
        let (ka, wr, kw, c_out) = (r.ka, row_words(r.c, r.k), wt.kw, wt.c_out);
        assert!(r.a_basis.len() == ka, "the operand was made without its basis");
        assert!(takes(r.c, kw, ka), "the AVX-512 kernel does not run W{kw}A{ka} over {} channels here", r.c);
        let blocks = c_out.div_ceil(LANES);
        let wlen = [blocks, kw, r.k, wr, LANES].iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let fits = (wt.c_in, wt.k) == (r.c, r.k) && wlen == Some(wt.words.len());
        let consts = wt.w2.len() == blocks * kw * LANES && wt.sw.len() == blocks * LANES;
        assert!(fits && consts, "weights for another layer");
        assert!(r.oh * r.ow > 0 && r.data.len().is_multiple_of(ka * r.sb));
        // The last padded row a patch reads, and the last byte of a row a kernel row reads.
        assert!(((r.oh - 1) * r.stride + r.k) * ka * r.sb <= r.data.len());
        assert!((r.ow - 1) * r.stride * r.c / 8 + 4 * wr <= r.sb);
        // The u32 counts, converted as i32: a patch's bits per plane (k kernel rows of `wr` words) fit.
        assert!(r.k.checked_mul(wr * 32).is_some_and(|b| b < 1 << 31), "a patch too large for the epilogue");
        Gemm { r, wp: &wt.words, c_out, kw, w2: &wt.w2, sw: &wt.sw }
    }

    /// Output rows from pixel `p0` into `out` (NHWC, as many whole rows as it holds), [`TASK`] pixels at a time,
    /// with their `T` terms.
    #[allow(clippy::modulo_one)] // the P = 1 arm
    fn task(&self, p0: usize, out: &mut [f32]) {
        let (r, n) = (self.r, out.len() / self.c_out);
        assert!(p0.is_multiple_of(r.ow) && n.is_multiple_of(r.ow) && p0 + n <= r.oh * r.ow, "whole output rows");
        // `T` scratch on the stack where a task's rows fit (at most 256 pixels: every CIFAR layer, most ImageNet
        // ones): an allocation per task had cost a few percent of a batch-1 image.
        let (mut ts, mut th) = ([0.0f32; STACK], Vec::new());
        let t = scratch(&mut ts, &mut th, n);
        for (i, trow) in t.chunks_exact_mut(r.ow).enumerate() {
            // SAFETY: `new` checked AVX-512 (`takes`).
            unsafe { r.t_row(p0 / r.ow + i, trow) };
        }
        for ((r0, out), t) in (p0..p0 + n).step_by(TASK).zip(out.chunks_mut(TASK * self.c_out)).zip(t.chunks(TASK)) {
            let n = out.len() / self.c_out;
            macro_rules! go {
                ($(($kw:literal, $ka:literal, $p:literal)),*) => {
                    match (self.kw, self.r.ka) {
                        // SAFETY (each arm): `new` checked the CPU and bounded every read of the operand and
                        // weights; the pixels lie inside the map (asserted above). Whole tiles of P pixels, then
                        // the few left one at a time (a part tile would compute P pixels for them).
                        $(($kw, $ka) => unsafe {
                            let bulk = n - n % $p;
                            if bulk > 0 {
                                tile_rows::<$kw, $ka, $p>(self, r0, bulk, t, out);
                            }
                            if bulk < n {
                                let rest = &mut out[bulk * self.c_out..];
                                tile_rows::<$kw, $ka, 1>(self, r0 + bulk, n - bulk, &t[bulk..], rest);
                            }
                        },)*
                        _ => unreachable!("takes() allows 1..=4 bits a side"),
                    }
                };
            }
            // P·K_w·K_a ≤ 24 accumulators (of 32 registers), P a power of two dividing TASK. At K_w = 1 every
            // pixel's broadcast feeds one product per plane, and P pixel pointers spilled past the 16 general
            // registers: half the pixels measured faster there (ResNet-20 W1A1 1.15x, W1A2 1.08x, W1A3 1.07x;
            // W2A1 level at 4, W2A2 and W3A3 slower at half; measured on 8-channel u64 blocks, and W1A2 at 8 pixels
            // again on 16-channel blocks: no faster). Two 8-channel blocks per broadcast at K_w = 1 (the `ceiling`
            // example's 0.69 → 0.80 triples per cycle) had measured level on the network (W1A2 0.126 ms both).
            go!(
                (1, 1, 8),
                (1, 2, 4),
                (1, 3, 4),
                (1, 4, 4),
                (2, 1, 8),
                (2, 2, 4),
                (2, 3, 4),
                (2, 4, 2),
                (3, 1, 8),
                (3, 2, 4),
                (3, 3, 2),
                (3, 4, 2),
                (4, 1, 4),
                (4, 2, 2),
                (4, 3, 2),
                (4, 4, 1)
            )
        }
    }
}

/// Pixels per chunk of [`RowQuant::fill`] (their counts live in a stack array of this size).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const CHUNK: usize = 64;

/// Output pixels per `tile_rows` call (its pixel offsets live in a stack array of this size), and the least a
/// parallel task takes ([`task_rows`]).
const TASK: usize = 32;

/// Output pixels `r0..r0 + n` (`n ≤ TASK`, their `T` terms in `t`) into `out` (`n·C_out`): tiles of `P` pixels (past
/// `n`: the last one again, not stored; callers pass whole tiles where they can) × 16 channels, channel blocks
/// outside so a block's weights stay in L1.
///
/// # Safety
/// AVX-512 as [`is_available`]; `K_w == KW`, `K_a == KA`, the checks of [`Gemm::new`] hold and the pixels lie
/// inside the map.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vpopcntdq,avx2,fma,popcnt")]
#[allow(clippy::needless_range_loop)] // a register tile reads best as indices
unsafe fn tile_rows<const KW: usize, const KA: usize, const P: usize>(
    g: &Gemm,
    r0: usize,
    n: usize,
    t: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (r, wp, w2, swp, c_out) = (g.r, g.wp, g.w2, g.sw, g.c_out);
    let ab = &r.a_basis[..KA];
    let (k, sb, c) = (r.k, r.sb, r.c);
    let wr = row_words(c, k);
    let blocks = c_out.div_ceil(LANES);
    // Per pixel of the task, the byte offset of its patch: padded row oy·s, byte ox·s·C/8 (plane j adds j·sb, kernel
    // row ky adds ky·K_a·sb), walked by additions (a multiply per pixel had cost ~13 % of the kernel).
    let mut base = [0usize; TASK];
    let (step, row_step) = (r.stride * c / 8, r.stride * KA * sb);
    let (mut ox, mut at) = (r0 % r.ow, (r0 / r.ow) * row_step + (r0 % r.ow) * step);
    for b in base.iter_mut().take(n) {
        *b = at;
        (ox, at) = (ox + 1, at + step);
        if ox == r.ow {
            (ox, at) = (0, at - r.ow * step + row_step);
        }
    }
    let t = &t[..n];
    assert!(out.len() >= n * c_out, "an output value per pixel and channel");
    let data = r.data.as_ptr();
    for b in 0..blocks {
        let w = &wp[b * KW * k * wr * LANES..][..KW * k * wr * LANES];
        // The block's coefficients `2·v^w_{o,i}·v^a_j` (a few multiplies per block).
        // SAFETY: the block's K_w·16 values of `w2` and 16 of `S_w` (checked by `Gemm::new`).
        let (cf, swv) = unsafe {
            let cf: [[__m512; KA]; KW] = std::array::from_fn(|i| {
                let v = _mm512_loadu_ps(w2.as_ptr().add((b * KW + i) * LANES));
                std::array::from_fn(|j| _mm512_mul_ps(v, _mm512_set1_ps(ab[j])))
            });
            (cf, _mm512_loadu_ps(swp.as_ptr().add(b * LANES)))
        };
        // The block's channels inside C_out.
        let lanes = (((1u32 << (c_out - b * LANES).min(LANES)) - 1) & 0xFFFF) as u16;
        for p0 in (0..n).step_by(P) {
            // SAFETY: every pixel's patch lies inside the operand (checked by `Gemm::new`).
            let px: [*const u8; P] = std::array::from_fn(|p| unsafe { data.add(base[(p0 + p).min(n - 1)]) });
            let mut acc = [[[_mm512_setzero_si512(); KA]; KW]; P];
            for ky in 0..k {
                let row = ky * KA * sb;
                for m in 0..wr {
                    let x = ky * wr + m;
                    // SAFETY: weight word x of plane i of this block lies inside `w`; the activation word is inside
                    // its plane row (checked by `Gemm::new`: `sb` covers the last kernel row's whole words).
                    unsafe {
                        let wv: [__m512i; KW] = std::array::from_fn(|i| {
                            _mm512_loadu_si512(w.as_ptr().add((i * k * wr + x) * LANES).cast())
                        });
                        for p in 0..P {
                            for j in 0..KA {
                                let v = px[p].add(row + j * sb + 4 * m).cast::<u32>().read_unaligned();
                                let av = _mm512_set1_epi32(v as i32);
                                for i in 0..KW {
                                    let x = _mm512_popcnt_epi32(_mm512_and_si512(wv[i], av));
                                    acc[p][i][j] = _mm512_add_epi32(acc[p][i][j], x);
                                }
                            }
                        }
                    }
                }
            }
            // Constant bounds: a run-time index into `acc` would keep it in memory for the whole tile.
            for p in 0..P {
                if p0 + p >= n {
                    break;
                }
                // Counts below 2^31 (checked by `Gemm::new`) convert as i32.
                let mut f = _mm512_mul_ps(swv, _mm512_set1_ps(-t[p0 + p]));
                for i in 0..KW {
                    for j in 0..KA {
                        f = _mm512_fmadd_ps(cf[i][j], _mm512_cvtepi32_ps(acc[p][i][j]), f);
                    }
                }
                // SAFETY: pixel p0 + p < n, and the stored channels b·16.. lie below C_out: inside `out` (n·C_out
                // values, checked on entry).
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add((p0 + p) * c_out + b * LANES), lanes, f) };
            }
        }
    }
}

/// # Safety
/// Never called (no AVX-512 off x86-64: [`takes`] is false).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_rows<const KW: usize, const KA: usize, const P: usize>(
    _: &Gemm,
    _: usize,
    _: usize,
    _: &[f32],
    _: &mut [f32],
) {
    unreachable!()
}

/// Output channels the direct first conv ([`conv_f32_chw`]) takes.
pub(crate) fn direct_conv_takes(c_out: usize) -> bool {
    matches!(c_out, 16 | 32 | 64 | 128)
}

/// A full-precision conv over a CHW image (`c_in·h·w`, the network's input) computed directly, NHWC out, `None`
/// where it does not run (no AVX-512, `C_out` not 16, 32, 64 or 128, sizes that disagree). The image is first
/// copied into a zero-bordered one, so every output pixel is interior; then per group of `NP` output pixels
/// (8 at 16 or 32 channels, 4 at 64, 2 at 128), `NP·C_out/16` register accumulators (8 to 16 independent FMA
/// chains, enough to cover the FMA latency) and one broadcast-FMA per pixel, tap and input channel: no im2col, no
/// GEMM packing (for a 3-channel image they cost more than the FMAs). `wt` is the weights as
/// `[ky][kx][C_in][C_out]`, `bias` `C_out` values or empty.
pub(crate) fn conv_f32_chw(
    x: &[f32],
    (c_in, h, w): (usize, usize, usize),
    wt: &[f32],
    bias: &[f32],
    c_out: usize,
    (k, stride, pad): (usize, usize, usize),
) -> Option<Vec<f32>> {
    let ok = is_available() && direct_conv_takes(c_out) && k > 0 && stride > 0 && c_in > 0;
    let sizes = [c_in, h, w].iter().try_fold(1usize, |n, &d| n.checked_mul(d)) == Some(x.len())
        && [k, k, c_in, c_out].iter().try_fold(1usize, |n, &d| n.checked_mul(d)) == Some(wt.len())
        && (bias.is_empty() || bias.len() == c_out);
    let (hp, wp) = (h.checked_add(pad.checked_mul(2)?)?, w.checked_add(pad.checked_mul(2)?)?);
    if !ok || !sizes || hp < k || wp < k {
        return None;
    }
    let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    // Every value is written below (each output row whole).
    let mut out = crate::scratch::reused(oh.checked_mul(ow)?.checked_mul(c_out)?);
    let mut xp = Buf::<f32>::zeroed(c_in.checked_mul(hp)?.checked_mul(wp)?);
    for (plane, src) in xp.chunks_exact_mut(hp * wp).zip(x.chunks_exact(h * w)) {
        for (row, s) in plane[pad * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(w)) {
            row[pad..pad + w].copy_from_slice(s);
        }
    }
    let img = Image { x: &xp, c_in, h: hp, w: wp, wt, bias, k, stride };
    let mut rows: Vec<&mut [f32]> = out.chunks_mut(ow * c_out).collect();
    crate::team::for_each_mut(&mut rows, |oy, orow| {
        // SAFETY: AVX-512F checked above; every slice index in `conv_row` is checked.
        unsafe {
            match c_out {
                16 => conv_row::<1, 8>(&img, oy, orow),
                32 => conv_row::<2, 8>(&img, oy, orow),
                64 => conv_row::<4, 4>(&img, oy, orow),
                _ => conv_row::<8, 2>(&img, oy, orow),
            }
        }
    });
    Some(out)
}

/// The operands of [`conv_f32_chw`]: the zero-bordered image (`h × w` with the border).
struct Image<'a> {
    x: &'a [f32],
    c_in: usize,
    h: usize,
    w: usize,
    wt: &'a [f32],
    bias: &'a [f32],
    k: usize,
    stride: usize,
}

/// One output row of [`conv_f32_chw`], `NB` blocks of 16 output channels: `NP` pixels at a time, the last few one
/// at a time.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // a register tile reads best as indices
unsafe fn conv_row<const NB: usize, const NP: usize>(g: &Image, oy: usize, orow: &mut [f32]) {
    use std::arch::x86_64::*;
    let (k, s, c_in, h, w) = (g.k, g.stride, g.c_in, g.h, g.w);
    let c_out = 16 * NB;
    let ow = orow.len() / c_out;
    let mut ox = 0;
    while ox < ow {
        let np = if ox + NP <= ow { NP } else { 1 };
        let mut acc = [[_mm512_setzero_ps(); NB]; NP];
        if !g.bias.is_empty() {
            for p in 0..NP {
                for b in 0..NB {
                    // SAFETY: a checked 16-value slice.
                    acc[p][b] = unsafe { _mm512_loadu_ps(g.bias[b * 16..][..16].as_ptr()) };
                }
            }
        }
        for ky in 0..k {
            let iy = oy * s + ky;
            for kx in 0..k {
                for ci in 0..c_in {
                    let wrow = &g.wt[((ky * k + kx) * c_in + ci) * c_out..][..c_out];
                    // The pixels' input columns ox·s + kx, .., (ox + np − 1)·s + kx of this plane row.
                    let px = &g.x[(ci * h + iy) * w..][..w][ox * s + kx..][..(np - 1) * s + 1];
                    let mut wv = [_mm512_setzero_ps(); NB];
                    for b in 0..NB {
                        // SAFETY: a checked 16-value slice.
                        wv[b] = unsafe { _mm512_loadu_ps(wrow[b * 16..][..16].as_ptr()) };
                    }
                    if np == NP {
                        for p in 0..NP {
                            let v = _mm512_set1_ps(px[p * s]);
                            for b in 0..NB {
                                acc[p][b] = _mm512_fmadd_ps(v, wv[b], acc[p][b]);
                            }
                        }
                    } else {
                        let v = _mm512_set1_ps(px[0]);
                        for b in 0..NB {
                            acc[0][b] = _mm512_fmadd_ps(v, wv[b], acc[0][b]);
                        }
                    }
                }
            }
        }
        for p in 0..np {
            for b in 0..NB {
                let o = &mut orow[(ox + p) * c_out + b * 16..][..16];
                // SAFETY: `o` is 16 f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc[p][b]) };
            }
        }
        ox += np;
    }
}

/// # Safety
/// Never called (no AVX-512 off x86-64: `is_available` is false).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn conv_row<const NB: usize, const NP: usize>(_: &Image, _: usize, _: &mut [f32]) {
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lq_quant::{CodeSet, Levels};

    /// The search form runs where folding gives ascending thresholds and bit-permuted level indices (a positive
    /// basis at K_a ≤ 2 in either order, powers of two at 3 and 4 in any order, negative BN scales included), and
    /// the count form where the sorted levels leave binary order or a channel's thresholds do not ascend.
    #[test]
    fn search_form_runs_where_it_applies() {
        if !is_available() {
            eprintln!("no AVX-512 here: the quantizer forms are not built");
            return;
        }
        let scale = [1.0, -2.0, 0.5, 3.0, 1.0, -1.0, 1.0, 1.0];
        let fold =
            |basis: &[f32]| ChannelQuant::fold(&Levels::from_basis(basis, CodeSet::Binary).unwrap(), &scale, &[0.1; 8]);
        let search = |q: &ChannelQuant| RowQuant::new(q).expect("8 channels, K_a ≤ 4").search;
        for basis in [&[0.5f32, 1.0][..], &[1.0, 0.5], &[1.0, 2.0, 4.0], &[4.0, 1.0, 2.0], &[8.0, 1.0, 4.0, 2.0]] {
            assert!(search(&fold(basis)), "{basis:?}");
        }
        assert!(!search(&fold(&[1.0, 1.5, 2.0])), "levels out of binary order");
        let mut q = fold(&[0.5, 1.0]);
        q.tau.swap(0, 1);
        assert!(!search(&q), "channel 0's thresholds out of order");
    }
}
