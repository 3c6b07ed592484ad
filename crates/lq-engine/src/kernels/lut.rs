//! AVX2 lookup-table kernel (bitops.md §4 point 6, T-MAC's idea applied exactly to bit-planes): the K axis is cut
//! into 4-bit groups; for each activation nibble `a` the 16-byte table `t_a[w] = popc(w ∧ a)` is one of 16
//! constants, and one `vpshufb` of that table by 32 weight nibbles (one byte per output channel) yields 32 AND +
//! popcount results of a group. Per 256 binary MACs that is 2 shuffles + 2 byte adds, against the popcount
//! kernel's 2 ANDs + 2 shuffles + 2 adds: the AND moved into the table choice, so ~1.5× fewer vector ops.
//!
//! The 32 byte lanes are 32 output channels, or for 16-channel layers 16 channels × 2 adjacent output pixels (each
//! 128-bit half shuffles its own pixel's table, the pair's tables come from one 32-byte entry). A tile is `B`
//! channel blocks × `K_w` planes × `P` lane rows × `K_a` planes of byte accumulators (≤ 12 of 16 registers),
//! widened to i16 every 63 groups (a byte gains at most 4 per group). There is no im2col: the kernel reads patch
//! rows straight from a zero-bordered map of table offsets ([`LutInput`]), where a kernel row's `k` taps are
//! consecutive bytes. The epilogue writes NHWC rows directly with the same `2·Σ_ij v^w_i v^a_j P_ij − S_w·T`
//! recombination as the popcount kernels.
use super::quant::Quant8;
use super::BitGemm;
use crate::layout::{groups_per_tap, narrow, out_size, ChannelQuant, Planes};
use crate::scratch::Buf;

/// The kernel's activation operand: every pixel's planes as table offsets (`16·nibble`, one byte per 4-bit group)
/// in a zero-bordered map, `[padded row][K_a][padded column][run]` with `run` = the groups of one tap (`C/4` for
/// channels that divide 64, whole words otherwise, matching [`crate::patch_bit`]). The kernel reads patch rows
/// straight from it (an implicit im2col: the `k` taps of a kernel row are `k·run` consecutive bytes). With 16
/// lanes each entry also holds, in its low nibble, the nibble of the pixel `stride` to the right: the two output
/// pixels that share a register then read one byte. `t` is `T = Σ_j v^a_j popc(A_j)` per output pixel.
pub struct LutInput {
    map: Buf<u8>,
    /// Set bits per padded pixel and plane, `[padded row][K_a][wp]` (the `T` term's window sums come from it).
    cnt: Buf<u32>,
    a_basis: Vec<f32>,
    k: usize,
    stride: usize,
    run: usize,
    ka: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    /// The plan's lanes the map was made for (16-lane maps carry the pair nibbles).
    lanes: usize,
}

/// How the kernel tiles a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Lane rows per tile (each is 1 output pixel with 32 lanes, 2 horizontally adjacent ones with 16).
    pub p: usize,
    /// Channel blocks per tile.
    pub b: usize,
    /// Channels per block: 32, or 16 (two output pixels per register).
    pub lanes: usize,
}

/// The tile for a layer, or `None` where the kernel does not apply: no AVX2, `C_out` not whole 16-channel blocks,
/// more than 12 accumulators (or more than 4 bits a side), or 1 or 2 input channels (their densely packed taps
/// do not start on 4-bit groups).
pub fn plan(c_in: usize, c_out: usize, kw: usize, ka: usize) -> Option<Plan> {
    let split_taps = narrow(c_in) && c_in < 4;
    let lanes = lanes(c_out, kw)?;
    if split_taps || ka > 4 || kw * ka > 12 {
        return None;
    }
    // Two blocks share each table load where weights have one plane (a table then feeds 2 shuffles).
    let b = if kw == 1 && c_out.is_multiple_of(2 * lanes) { 2 } else { 1 };
    Some(Plan { p: (12 / (kw * ka * b)).max(1), b, lanes })
}

/// The lanes per channel block for `c_out` channels with `kw` weight planes (32, or 16 for an odd number of
/// 16-channel blocks), or `None` where the kernel cannot run them: no AVX2, `C_out` not whole 16-channel blocks,
/// more than 4 weight planes.
pub fn lanes(c_out: usize, kw: usize) -> Option<usize> {
    if !super::avx2::is_available() || !c_out.is_multiple_of(16) || kw > 4 {
        return None;
    }
    // One weight plane over 32 channels: two 16-lane blocks, so each table load feeds two shuffles (with one
    // 32-lane block every shuffle needs its own table load, and the loads bind: W1A2 ran no faster than W2A2).
    Some(if c_out.is_multiple_of(32) && (kw != 1 || c_out.is_multiple_of(64)) { 32 } else { 16 })
}

/// Weights as one nibble per byte, `[block][group][K_w][32]`, from `[C_out][K_w][words]` bits; with 16-lane
/// blocks each block's 16 channels fill both register halves.
pub fn pack_weights(bits: &[u64], c_out: usize, kw: usize, words: usize, lanes: usize) -> Vec<u8> {
    let groups = words * 16;
    let mut out = vec![0u8; c_out.div_ceil(lanes) * groups * kw * 32];
    for (blk, chunk) in out.chunks_exact_mut(groups * kw * 32).enumerate() {
        for (gi, lane) in chunk.chunks_exact_mut(32).enumerate() {
            let (g, i) = (gi / kw, gi % kw);
            for (byte, v) in lane.iter_mut().enumerate() {
                let o = blk * lanes + byte % lanes;
                if o < c_out {
                    *v = ((bits[(o * kw + i) * words + g / 16] >> (4 * (g % 16))) & 15) as u8;
                }
            }
        }
    }
    out
}

/// The operand for a `k×k` conv with `stride` and zero padding `pad` over `x` (see [`LutInput`]).
pub fn input(x: &Planes, k: usize, stride: usize, pad: usize, a_basis: &[f32], plan: Plan) -> LutInput {
    let (cw, ka) = (x.words(), x.k);
    let run = groups_per_tap(x.c);
    // Each pixel's plane words, expanded nibble by nibble.
    let fill = |y: usize, row: &mut [u8], cnt: &mut [u32]| {
        let (rl, cl) = (row.len() / ka, cnt.len() / ka);
        for j in 0..ka {
            let (row, cnt) = (&mut row[j * rl..], &mut cnt[j * cl..]);
            for xx in 0..x.w {
                let src = &x.data[((y * x.w + xx) * ka + j) * cw..][..cw];
                cnt[pad + xx] = src.iter().map(|w| w.count_ones()).sum::<u32>();
                for (o, &w) in row[(pad + xx) * run..][..run].chunks_mut(16).zip(src) {
                    let b = (spread(w as u32) as u128 | (spread((w >> 32) as u32) as u128) << 64).to_le_bytes();
                    copy_small(o, &b[..o.len()]);
                }
            }
        }
    };
    build(x.h, x.w, ka, run, k, stride, pad, a_basis, plan, fill)
}

/// [`input`] straight from the f32 conv input (`x.len() = h·w·C`, NHWC) and its folded quantizer: codes go to
/// table offsets in one pass, with no bit-planes in between. Takes the AVX2 path for `C % 8 == 0` and `K_a ≤ 3`,
/// else quantizes to [`Planes`] first.
#[allow(clippy::too_many_arguments)]
pub fn input_f32(
    x: &[f32],
    h: usize,
    w: usize,
    q: &ChannelQuant,
    k: usize,
    stride: usize,
    pad: usize,
    a_basis: &[f32],
    plan: Plan,
) -> LutInput {
    let (c, ka) = (q.channels(), q.bits().expect("the caller checked the quantizer"));
    if !Quant8::takes(q) {
        return input(
            &super::quant::quantize_checked(super::Isa::Avx2Lut, x, h, w, q, ka),
            k,
            stride,
            pad,
            a_basis,
            plan,
        );
    }
    let (q8, run) = (Quant8::new(q), groups_per_tap(c));
    let fill = |y: usize, row: &mut [u8], cnt: &mut [u32]| {
        // SAFETY: `Quant8::takes` checked AVX2, C % 8 == 0 and K_a ≤ 3; `run >= C/4`; `row`/`cnt` are one padded
        // map row.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            q8.offsets_row(&x[y * w * c..][..w * c], row, cnt, run, pad)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (y, row, cnt, &q8);
    };
    build(h, w, ka, run, k, stride, pad, a_basis, plan, fill)
}

/// The map around a per-row filler: `fill(y, row, cnt)` writes image row `y`'s pixels (all planes) into its padded
/// map row `[K_a][wp][run]` and counts `[K_a][wp]`; this adds the zero border, the 16-lane pair nibbles and `T`.
#[allow(clippy::too_many_arguments)]
fn build(
    h: usize,
    w: usize,
    ka: usize,
    run: usize,
    k: usize,
    stride: usize,
    pad: usize,
    a_basis: &[f32],
    plan: Plan,
    fill: impl Fn(usize, &mut [u8], &mut [u32]) + Sync,
) -> LutInput {
    use rayon::prelude::*;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    // Every byte is written below (pixels, or zeros for the border), so the buffers need no clearing first.
    let mut map = Buf::<u8>::reused(hp * ka * wp * run);
    // Per padded pixel and plane the number of set bits (integer sums per patch: exact, no float add chains).
    let mut cnt = Buf::<u32>::reused(hp * ka * wp);
    map.par_chunks_mut(ka * wp * run).zip(cnt.par_chunks_mut(ka * wp)).enumerate().for_each(|(yp, (row, cn))| {
        if yp < pad || yp >= pad + h {
            row.fill(0);
            cn.fill(0);
            return;
        }
        for j in 0..ka {
            let (r, c) = (&mut row[j * wp * run..][..wp * run], &mut cn[j * wp..][..wp]);
            r[..pad * run].fill(0);
            r[(pad + w) * run..].fill(0);
            c[..pad].fill(0);
            c[pad + w..].fill(0);
        }
        fill(yp - pad, row, cn);
        if plan.lanes == 16 {
            // Low nibble: the pixel `stride` to the right (zero past the row's end). Reads only high nibbles,
            // which this loop leaves alone.
            row.chunks_mut(wp * run).for_each(|r| pair_nibbles(r, stride * run));
        }
    });
    let (oh, ow) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
    LutInput { map, cnt, a_basis: a_basis.to_vec(), k, stride, run, ka, wp, oh, ow, lanes: plan.lanes }
}

impl LutInput {
    /// `T = Σ_j v^a_j popc(A_j)` of the output pixels of row `oy` into `t` (`ow` values), from the window sums of
    /// the per-pixel counts (integer sums, exact), 8 pixels at a time in registers (passes over a sum row in
    /// memory had chained each add on the previous pass's store).
    ///
    /// # Safety
    /// AVX2.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
    unsafe fn t_row(&self, oy: usize, t: &mut [f32]) {
        let (k, s, wp, n) = (self.k, self.stride, self.wp, t.len());
        for (i0, t) in (0..n).step_by(8).zip(t.chunks_mut(8)) {
            let m = t.len();
            let mut acc = [0.0f32; 8];
            for j in 0..self.ka {
                let mut sum = [0u32; 8];
                for ky in 0..k {
                    let r = &self.cnt[((oy * s + ky) * self.ka + j) * wp..][..wp];
                    for kx in 0..k {
                        if s == 1 && m == 8 {
                            sum.iter_mut().zip(&r[i0 + kx..][..8]).for_each(|(s, &v)| *s += v);
                        } else {
                            sum.iter_mut().zip(r[i0 * s + kx..].iter().step_by(s).take(m)).for_each(|(s, &v)| *s += v);
                        }
                    }
                }
                acc.iter_mut().zip(sum).for_each(|(t, s)| *t += self.a_basis[j] * s as f32);
            }
            t.copy_from_slice(&acc[..m]);
        }
    }
}

/// `r[i] |= r[i + d] >> 4` for every `i` below `r.len() − d`, eight bytes a step (the byte loop does not
/// vectorise: its reads trail its writes by `d`). The reads take high nibbles, which the writes never change, so
/// the steps see what the byte loop sees, whatever `d`. Out of line: inlined, it slowed the 32-lane maps' builds.
#[inline(never)]
fn pair_nibbles(r: &mut [u8], d: usize) {
    let n = r.len().saturating_sub(d);
    let word = |r: &[u8], at: usize| u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 <= n {
        let v = word(r, i) | ((word(r, i + d) >> 4) & 0x0F0F_0F0F_0F0F_0F0F);
        r[i..i + 8].copy_from_slice(&v.to_le_bytes());
        i += 8;
    }
    for i in i..n {
        r[i] |= r[i + d] >> 4;
    }
}

/// The 8 nibbles of `w` as the high nibbles of 8 bytes (nibble `g` → byte `g`): the table offsets `16·nibble`.
#[inline]
fn spread(w: u32) -> u64 {
    let mut x = w as u64;
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x << 4
}

/// A short copy as a few fixed-size (possibly overlapping) moves instead of a `memcpy` call.
#[inline]
fn copy_small(d: &mut [u8], s: &[u8]) {
    let n = d.len();
    debug_assert_eq!(n, s.len());
    fn mv<const W: usize>(d: &mut [u8], s: &[u8], at: usize) {
        d[at..at + W].copy_from_slice(&s[at..at + W]);
    }
    if n >= 16 {
        (0..n - 16).step_by(16).for_each(|i| mv::<16>(d, s, i));
        mv::<16>(d, s, n - 16);
    } else if n >= 8 {
        mv::<8>(d, s, 0);
        mv::<8>(d, s, n - 8);
    } else if n >= 4 {
        mv::<4>(d, s, 0);
        mv::<4>(d, s, n - 4);
    } else {
        d.copy_from_slice(s);
    }
}

/// `out[p·C_out + o]` for every output pixel `p` of `a` (see [`BitGemm::run`]); `lw` from [`pack_weights`] and
/// `a` from [`input`], both made for `plan`. Panics where the operands disagree with each other or with `plan`,
/// or without AVX2 (the checks that make the unchecked reads of the tiles sound; [`crate::BitConv`] only calls
/// it with operands it made).
pub fn run(g: &BitGemm, plan: Plan, lw: &[u8], a: &LutInput, out: &mut [f32]) {
    let (l, groups) = (plan.lanes, g.words * 16);
    assert!(super::avx2::is_available(), "the table kernel needs AVX2 and FMA");
    assert!(
        matches!(l, 16 | 32) && plan.b >= 1 && g.c_out.is_multiple_of(l * plan.b),
        "plan {plan:?} for {} channels",
        g.c_out
    );
    assert!(lw.len() == g.c_out / l * groups * g.kw * 32, "{} weight bytes for the plan", lw.len());
    assert!(a.ka == g.ka && a.lanes == l && a.k * a.k * a.run <= groups, "the input was made for another layer");
    assert!(g.w_basis.len() >= g.c_out * g.kw && g.a_basis.len() >= g.ka, "bases shorter than the layer");
    assert!(out.len() >= a.oh * a.ow * g.c_out, "output shorter than {}x{}x{}", a.oh, a.ow, g.c_out);
    let p = tile_rows(plan.p, a.ow.div_ceil(32 / l));
    macro_rules! go {
        ($(($kw:literal, $ka:literal, $p:literal, $b:literal, $l:literal)),*) => {
            match (g.kw, g.ka, p, plan.b, plan.lanes) {
                $(($kw, $ka, $p, $b, $l) => drive::<$kw, $ka, $p, $b, $l>(g, lw, a, out),)*
                _ => unreachable!("plan() and the instantiated tiles disagree"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    go!(
        (1, 1, 12, 1, 32),
        (1, 1, 8, 1, 32),
        (1, 1, 6, 1, 32),
        (1, 1, 4, 1, 32),
        (1, 1, 3, 1, 32),
        (1, 1, 2, 1, 32),
        (1, 1, 1, 1, 32),
        (1, 1, 6, 2, 32),
        (1, 1, 4, 2, 32),
        (1, 1, 3, 2, 32),
        (1, 1, 2, 2, 32),
        (1, 1, 1, 2, 32),
        (1, 2, 6, 1, 32),
        (1, 2, 4, 1, 32),
        (1, 2, 3, 1, 32),
        (1, 2, 2, 1, 32),
        (1, 2, 1, 1, 32),
        (1, 2, 3, 2, 32),
        (1, 2, 2, 2, 32),
        (1, 2, 1, 2, 32),
        (1, 3, 4, 1, 32),
        (1, 3, 3, 1, 32),
        (1, 3, 2, 1, 32),
        (1, 3, 1, 1, 32),
        (1, 3, 2, 2, 32),
        (1, 3, 1, 2, 32),
        (1, 4, 3, 1, 32),
        (1, 4, 2, 1, 32),
        (1, 4, 1, 1, 32),
        (1, 4, 1, 2, 32),
        (2, 1, 6, 1, 32),
        (2, 1, 4, 1, 32),
        (2, 1, 3, 1, 32),
        (2, 1, 2, 1, 32),
        (2, 1, 1, 1, 32),
        (2, 2, 3, 1, 32),
        (2, 2, 2, 1, 32),
        (2, 2, 1, 1, 32),
        (2, 3, 2, 1, 32),
        (2, 3, 1, 1, 32),
        (2, 4, 1, 1, 32),
        (3, 1, 4, 1, 32),
        (3, 1, 3, 1, 32),
        (3, 1, 2, 1, 32),
        (3, 1, 1, 1, 32),
        (3, 2, 2, 1, 32),
        (3, 2, 1, 1, 32),
        (3, 3, 1, 1, 32),
        (3, 4, 1, 1, 32),
        (4, 1, 3, 1, 32),
        (4, 1, 2, 1, 32),
        (4, 1, 1, 1, 32),
        (4, 2, 1, 1, 32),
        (4, 3, 1, 1, 32),
        (1, 1, 12, 1, 16),
        (1, 1, 8, 1, 16),
        (1, 1, 6, 1, 16),
        (1, 1, 4, 1, 16),
        (1, 1, 3, 1, 16),
        (1, 1, 2, 1, 16),
        (1, 1, 1, 1, 16),
        (1, 1, 6, 2, 16),
        (1, 1, 4, 2, 16),
        (1, 1, 3, 2, 16),
        (1, 1, 2, 2, 16),
        (1, 1, 1, 2, 16),
        (1, 2, 6, 1, 16),
        (1, 2, 4, 1, 16),
        (1, 2, 3, 1, 16),
        (1, 2, 2, 1, 16),
        (1, 2, 1, 1, 16),
        (1, 2, 3, 2, 16),
        (1, 2, 2, 2, 16),
        (1, 2, 1, 2, 16),
        (1, 3, 4, 1, 16),
        (1, 3, 3, 1, 16),
        (1, 3, 2, 1, 16),
        (1, 3, 1, 1, 16),
        (1, 3, 2, 2, 16),
        (1, 3, 1, 2, 16),
        (1, 4, 3, 1, 16),
        (1, 4, 2, 1, 16),
        (1, 4, 1, 1, 16),
        (1, 4, 1, 2, 16),
        (2, 1, 6, 1, 16),
        (2, 1, 4, 1, 16),
        (2, 1, 3, 1, 16),
        (2, 1, 2, 1, 16),
        (2, 1, 1, 1, 16),
        (2, 2, 3, 1, 16),
        (2, 2, 2, 1, 16),
        (2, 2, 1, 1, 16),
        (2, 3, 2, 1, 16),
        (2, 3, 1, 1, 16),
        (2, 4, 1, 1, 16),
        (3, 1, 4, 1, 16),
        (3, 1, 3, 1, 16),
        (3, 1, 2, 1, 16),
        (3, 1, 1, 1, 16),
        (3, 2, 2, 1, 16),
        (3, 2, 1, 1, 16),
        (3, 3, 1, 1, 16),
        (3, 4, 1, 1, 16),
        (4, 1, 3, 1, 16),
        (4, 1, 2, 1, 16),
        (4, 1, 1, 1, 16),
        (4, 2, 1, 1, 16),
        (4, 3, 1, 1, 16)
    );
}

/// Lane rows per tile for a row of `lanes` lane rows, at most `p_max`: a tile past the row's end recomputes
/// clamped rows, so the count that wastes least wins, weighed against the weight loads a smaller tile repeats
/// (cost `rows·(1 + 0.5/p)`). E.g. 16 lane rows with up to 6 per tile: 4 tiles of 4, not 3 of 6 (18 rows).
fn tile_rows(p_max: usize, lanes: usize) -> usize {
    let cost = |p: usize| (lanes.div_ceil(p) * p) as f64 * (1.0 + 0.5 / p as f64);
    let all = [12, 8, 6, 4, 3, 2, 1].into_iter().filter(|&p| p <= p_max);
    all.min_by(|&a, &b| cost(a).total_cmp(&cost(b))).unwrap_or(1)
}

/// One task per output row; within it, per pass over some kernel rows and per channel block, tiles of `P` lane
/// rows left to right.
#[cfg(target_arch = "x86_64")]
fn drive<const KW: usize, const KA: usize, const P: usize, const B: usize, const L: usize>(
    g: &BitGemm,
    lw: &[u8],
    a: &LutInput,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let (c_out, groups) = (g.c_out, g.words * 16);
    // Epilogue coefficients `2·v^w_{o,i}·v^a_j` as `[i][j][C_out]`.
    let (mut coef, sw) = (vec![0.0f32; KW * KA * c_out], g.weight_sums());
    for o in 0..c_out {
        for i in 0..KW {
            for j in 0..KA {
                coef[(i * KA + j) * c_out + o] = 2.0 * g.w_basis[o * KW + i] * g.a_basis[j];
            }
        }
    }
    let (k, s, run, ow) = (a.k, a.stride, a.run, a.ow);
    let seg = k * run; // groups per kernel row
                       // Kernel rows per pass: a pass's weights for the tile (≤ 24 KB) stay in L1 while the row's tiles use them.
    let kys = ((24 << 10) / (seg * KW * B * 32)).clamp(1, k);
    let px = 32 / L; // output pixels per lane row
    let lanes = ow.div_ceil(px);
    // T per output row inside the row's task (one parallel loop per layer fewer than a separate pass).
    out[..a.oh * ow * c_out].par_chunks_mut(ow * c_out).enumerate().for_each_init(
        || vec![0.0f32; ow],
        |tv, (oy, orow)| {
            // SAFETY: `run` checked AVX2.
            unsafe { a.t_row(oy, tv) };
            let tv = &tv[..];
            let row = a.ka * a.wp * run; // bytes per padded map row
            let m = &a.map[oy * s * row..];
            for ky0 in (0..k).step_by(kys) {
                for blk in (0..c_out / L).step_by(B) {
                    let w = &lw[(blk * groups + ky0 * seg) * KW * 32..];
                    for lr0 in (0..lanes).step_by(P) {
                        let t = Tile {
                            m: &m[ky0 * row..],
                            lane_step: px * s * run,
                            row_step: row,
                            plane: a.wp * run,
                            lr0,
                            lanes,
                            seg,
                            kys: kys.min(k - ky0),
                            first: ky0 == 0,
                        };
                        // SAFETY: AVX2 was checked by `plan`; `t` addresses lie inside the map (lane rows past
                        // `lanes` are clamped), the weights of `B` blocks of `groups` groups follow `w`.
                        unsafe { tile::<KW, KA, P, B, L>(&t, w, groups * KW * 32, tv, &coef, &sw, blk * L, orow) };
                    }
                }
            }
        },
    );
}

/// Where one tile reads: kernel row `r` (of `kys`) of lane row `lr` in plane `j` starts at
/// `m[j·plane + r·row_step + lr·lane_step]`, and its `seg` groups follow.
struct Tile<'a> {
    m: &'a [u8],
    lane_step: usize,
    row_step: usize,
    plane: usize,
    kys: usize,
    lr0: usize,
    lanes: usize,
    seg: usize,
    first: bool,
}

/// 16 tables `popc(w ∧ a)` for `w` in 0..16, one per activation nibble `a`, each already in both 128-bit halves:
/// a plain 32-byte load (`vbroadcasti128` from memory costs a shuffle-pipe uop on Zen 3, and the lookups keep
/// those pipes busy). Offset `16·a` addresses entry `a` with scale 2.
#[repr(align(64))]
struct Tables([u8; 512]);
static TABLES: Tables = Tables({
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = ((i >> 5) & i & 15).count_ones() as u8;
        i += 1;
    }
    t
});

/// For 16 lanes: entry `16·a + b` is `[t_a | t_b]`, the tables of two rows' nibbles in one 32-byte load.
#[repr(align(64))]
struct Pairs([[u8; 32]; 256]);
static PAIRS: Pairs = Pairs({
    let mut t = [[0u8; 32]; 256];
    let mut i = 0;
    while i < 256 * 32 {
        let (e, w) = (i / 32, i % 32);
        let a = if w < 16 { e >> 4 } else { e & 15 };
        t[e][w] = (a & w & 15).count_ones() as u8;
        i += 1;
    }
    t
});

/// One tile: `B` channel blocks starting at channel `o0`, `P` lane rows from `t.lr0` (those past `t.lanes` are
/// read clamped and not stored) over `t.kys` kernel rows; the pass with the first kernel row stores its result,
/// later passes add to it. `orow` is one output row, `ow × C_out`.
///
/// # Safety
/// AVX2 must be available; `t.m` holds `KA` planes with `t.seg` groups from every start `t` describes, `w` holds
/// `B` blocks (`wstride` apart) of `t.kys·t.seg` groups × `KW` × 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // a register tile reads best as indices
unsafe fn tile<const KW: usize, const KA: usize, const P: usize, const B: usize, const L: usize>(
    t: &Tile,
    w: &[u8],
    wstride: usize,
    tv: &[f32],
    coef: &[f32],
    sw: &[f32],
    o0: usize,
    orow: &mut [f32],
) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_si256();
    // i16 totals [b][i][p][j] as (unpacklo, unpackhi) of the byte accumulators.
    let mut wide = [[[[[zero; 2]; KA]; P]; KW]; B];
    let (tab, pairs) = (TABLES.0.as_ptr(), PAIRS.0.as_ptr() as *const u8);
    let wp = w.as_ptr();
    // SAFETY: the clamped lane rows start inside the map (contract).
    let rows: [*const u8; P] =
        std::array::from_fn(|p| unsafe { t.m.as_ptr().add((t.lr0 + p).min(t.lanes - 1) * t.lane_step) });
    // Byte accumulators gain at most 4 per group: widen them to i16 every 63 groups (counted across kernel rows).
    // `acc` is a fresh local per interval, never borrowed, so that it lives in registers.
    let (mut r, mut g0) = (0, 0);
    while r < t.kys {
        let mut acc = [[[[zero; KA]; P]; KW]; B];
        let mut n = 0;
        while n < 63 && r < t.kys {
            let end = (g0 + 63 - n).min(t.seg);
            let (base, wr) = (r * t.row_step, r * t.seg);
            for gi in g0..end {
                let mut wv = [[zero; KW]; B];
                for (b, wb) in wv.iter_mut().enumerate() {
                    for (i, v) in wb.iter_mut().enumerate() {
                        // SAFETY: block b, group wr + gi, plane i lies inside `w` (see the contract).
                        let at = b * wstride + ((wr + gi) * KW + i) * 32;
                        *v = unsafe { _mm256_loadu_si256(wp.add(at) as *const __m256i) };
                    }
                }
                for p in 0..P {
                    for j in 0..KA {
                        // SAFETY: the byte lies inside the map (contract); offsets index the tables.
                        let tb = unsafe {
                            let off = *rows[p].add(base + j * t.plane + gi) as usize;
                            if L == 32 {
                                _mm256_load_si256(tab.add(2 * off) as *const __m256i)
                            } else {
                                _mm256_load_si256(pairs.add(off * 32) as *const __m256i)
                            }
                        };
                        for b in 0..B {
                            for i in 0..KW {
                                let x = _mm256_shuffle_epi8(tb, wv[b][i]);
                                acc[b][i][p][j] = _mm256_add_epi8(acc[b][i][p][j], x);
                            }
                        }
                    }
                }
            }
            n += end - g0;
            g0 = end;
            if g0 == t.seg {
                (r, g0) = (r + 1, 0);
            }
        }
        for b in 0..B {
            for i in 0..KW {
                for p in 0..P {
                    for j in 0..KA {
                        let (x, wd) = (acc[b][i][p][j], &mut wide[b][i][p][j]);
                        wd[0] = _mm256_add_epi16(wd[0], _mm256_unpacklo_epi8(x, zero));
                        wd[1] = _mm256_add_epi16(wd[1], _mm256_unpackhi_epi8(x, zero));
                    }
                }
            }
        }
    }
    // unpacklo holds bytes 0..8 | 16..24, unpackhi 8..16 | 24..32: 8-lane chunk q comes from half q % 2 of
    // 128-bit lane q / 2. With 32 lanes that is channels 8q.. of one pixel, with 16 it is channels 8·(q % 2).. of
    // pixel q / 2 of the lane row's two.
    let c_out = sw.len();
    let ow = orow.len() / c_out;
    for p in 0..P {
        for b in 0..B {
            for q in 0..4 {
                let (ox, o) = if L == 32 {
                    (t.lr0 + p, o0 + b * 32 + q * 8)
                } else {
                    (2 * (t.lr0 + p) + q / 2, o0 + b * 16 + (q % 2) * 8)
                };
                if ox >= ow {
                    continue;
                }
                // SAFETY: o + 8 <= c_out (whole blocks) for `sw`, `coef` rows and the output pixel.
                unsafe {
                    let dst = orow.as_mut_ptr().add(ox * c_out + o);
                    let mut f = if t.first {
                        _mm256_mul_ps(_mm256_loadu_ps(sw.as_ptr().add(o)), _mm256_set1_ps(-tv[ox]))
                    } else {
                        _mm256_loadu_ps(dst)
                    };
                    for i in 0..KW {
                        for j in 0..KA {
                            let h = wide[b][i][p][j][q % 2];
                            let h = if q < 2 { _mm256_castsi256_si128(h) } else { _mm256_extracti128_si256::<1>(h) };
                            let c = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(h));
                            let k = _mm256_loadu_ps(coef.as_ptr().add((i * KA + j) * c_out + o));
                            f = _mm256_fmadd_ps(k, c, f);
                        }
                    }
                    _mm256_storeu_ps(dst, f);
                }
            }
        }
    }
}
