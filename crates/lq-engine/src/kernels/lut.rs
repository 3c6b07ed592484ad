//! AVX2 lookup-table kernel (bitops.md §4 point 6, T-MAC's idea applied exactly to bit-planes): the K axis is cut
//! into 4-bit groups; for each activation nibble `a` the 16-byte table `t_a[w] = popc(w ∧ a)` is one of 16
//! constants, and one `vpshufb` of that table by 32 weight nibbles (one byte per output channel) yields 32 AND +
//! popcount results of a group. Per 256 binary MACs that is 2 shuffles + 2 byte adds, against the popcount
//! kernel's 2 ANDs + 2 shuffles + 2 adds: the AND moved into the table choice, so ~1.5× fewer vector ops.
//!
//! The 32 byte lanes are 32 output channels, or for 16-channel layers 16 channels × 2 patch rows (each 128-bit
//! half shuffles its own row's table). A tile is `B` channel blocks × `K_w` planes × `P` lane-rows × `K_a` planes
//! of byte accumulators (≤ 12 of 16 registers), widened to i16 every 63 groups (a byte gains at most 4 per group).
//! The epilogue writes NHWC rows directly with the same `2·Σ_ij v^w_i v^a_j P_ij − S_w·T` recombination as the
//! popcount kernels.
use super::BitGemm;
use crate::conv::Planes;
use crate::scratch::Buf;

/// The 4-bit groups of the patch rows as table offsets (`16·nibble`, one byte each), laid out `[row][K_a][group]`
/// (with 16 lanes `[row pair][K_a][group]`, the byte `16·nibble_even + nibble_odd`), plus
/// `T_row = Σ_j v^a_j popc(A_row,j)`.
pub struct LutRows {
    offs: Buf<u8>,
    t: Buf<f32>,
}

/// How the kernel tiles a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Accumulator rows per tile (each is 1 patch row with 32 lanes, 2 with 16).
    pub p: usize,
    /// Channel blocks per tile.
    pub b: usize,
    /// Channels per block: 32, or 16 (two patch rows per register).
    pub lanes: usize,
}

impl Plan {
    /// Patch rows per tile; [`im2col`] pads to a multiple of it.
    pub fn rows(&self) -> usize {
        self.p * 32 / self.lanes
    }
}

/// The tile for a layer, or `None` where the kernel does not apply: no AVX2, `C_out` not whole 16-channel blocks,
/// more than 12 accumulators (or more than 4 bits a side), or 1 or 2 input channels (their densely packed taps
/// do not start on 4-bit groups).
pub fn plan(c_in: usize, c_out: usize, kw: usize, ka: usize) -> Option<Plan> {
    if !super::avx2::is_available() || c_out % 16 != 0 || c_in < 4 || kw > 4 || ka > 4 || kw * ka > 12 {
        return None;
    }
    let lanes = if c_out % 32 == 0 { 32 } else { 16 };
    // Two blocks share each table load where weights have one plane (a table then feeds 2 shuffles).
    let b = if lanes == 32 && kw == 1 && c_out % 64 == 0 { 2 } else { 1 };
    Some(Plan { p: (12 / (kw * ka * b)).max(1), b, lanes })
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

/// The bit-domain im2col of [`crate::im2col`] in this kernel's operand form: each pixel's planes are expanded to
/// table offsets once into a zero-bordered map, `[K_a][padded pixel][run]` with `run` = the groups of one tap
/// (`C/4` for channels that divide 64, whole words otherwise, matching [`crate::patch_bit`]); a patch row then
/// takes the `k` horizontally adjacent taps of each kernel row as one contiguous copy per plane, with no bounds
/// logic. Rows are padded with zero rows (offset 0 is the all-zero table) to a multiple of `pad_rows`.
pub fn im2col(x: &Planes, k: usize, stride: usize, pad: usize, a_basis: &[f32], plan: Plan) -> LutRows {
    // The common 3×3 runs get copies of compile-time length (a few moves); the rest a general short copy.
    let run = if x.c < 64 && 64 % x.c == 0 { x.c / 4 } else { x.words() * 16 };
    match (run, k) {
        (4, 3) => im2col_run::<4>(x, k, stride, pad, a_basis, plan),
        (8, 3) => im2col_run::<8>(x, k, stride, pad, a_basis, plan),
        (16, 3) => im2col_run::<16>(x, k, stride, pad, a_basis, plan),
        _ => im2col_run::<0>(x, k, stride, pad, a_basis, plan),
    }
}

/// [`im2col`] with the run length fixed at compile time (`RUN > 0`, 3×3 kernels) or taken at run time (`0`).
fn im2col_run<const RUN: usize>(
    x: &Planes,
    k: usize,
    stride: usize,
    pad: usize,
    a_basis: &[f32],
    plan: Plan,
) -> LutRows {
    use rayon::prelude::*;
    let (cw, ka) = (x.words(), x.k);
    let (hp, wp) = (x.h + 2 * pad, x.w + 2 * pad);
    let run = if RUN > 0 {
        RUN
    } else if x.c < 64 && 64 % x.c == 0 {
        x.c / 4
    } else {
        cw * 16
    };
    let mut pix = Buf::<u8>::zeroed(ka * hp * wp * run);
    // Per padded pixel and plane the number of set bits (integer sums per patch: exact and without a chain of
    // dependent float adds).
    let mut cnt = Buf::<u32>::zeroed(ka * hp * wp);
    for (j, (pix, cnt)) in pix.chunks_mut(hp * wp * run).zip(cnt.chunks_mut(hp * wp)).enumerate() {
        let rows = pix.par_chunks_mut(wp * run).zip(cnt.par_chunks_mut(wp)).skip(pad).take(x.h);
        rows.enumerate().for_each(|(y, (pix, cnt))| {
            for (xx, (o, c)) in pix.chunks_mut(run).zip(cnt.iter_mut()).skip(pad).take(x.w).enumerate() {
                let src = &x.data[((y * x.w + xx) * ka + j) * cw..][..cw];
                *c = src.iter().map(|w| w.count_ones()).sum::<u32>();
                for (o, &w) in o.chunks_mut(16).zip(src) {
                    let b = (spread(w as u32) as u128 | (spread((w >> 32) as u32) as u128) << 64).to_le_bytes();
                    if RUN > 0 && RUN <= 16 {
                        o[..RUN].copy_from_slice(&b[..RUN]);
                    } else {
                        copy_small(o, &b[..o.len()]);
                    }
                }
            }
        });
    }
    let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let groups = crate::patch_words(x.c, k) * 16;
    let n = (oh * ow).div_ceil(plan.rows()) * plan.rows();
    let (len, plane, per) = (k * run, hp * wp * run, groups * ka);
    // Patch row (oy, ox) into `o` (its tail groups stay as they are: zero), T into `t`.
    let fill = |oy: usize, ox: usize, o: &mut [u8], t: &mut f32| {
        *t = 0.0;
        for j in 0..ka {
            let mut c = 0;
            for ky in 0..k {
                let p0 = (oy * stride + ky) * wp + ox * stride;
                let (d, s) = (&mut o[j * groups + ky * len..], &pix[j * plane + p0 * run..]);
                if RUN > 0 {
                    c += cnt[j * hp * wp + p0..][..3].iter().sum::<u32>();
                    d[..3 * RUN].copy_from_slice(&s[..3 * RUN]);
                } else {
                    c += cnt[j * hp * wp + p0..][..k].iter().sum::<u32>();
                    copy_small(&mut d[..len], &s[..len]);
                }
            }
            *t += a_basis[j] * c as f32;
        }
    };
    let mut t = Buf::<f32>::zeroed(n);
    if plan.lanes == 16 {
        // Rows 2p and 2p+1 share a register (low and high half): one byte indexes their pair of tables.
        let mut pairs = Buf::<u8>::zeroed(n / 2 * per);
        let it = pairs.par_chunks_mut(per).zip(t.par_chunks_mut(2)).enumerate();
        it.for_each_init(
            || vec![0u8; 2 * per],
            |two, (q, (o, t))| {
                for (h, (row, t)) in two.chunks_mut(per).zip(t).enumerate() {
                    match 2 * q + h {
                        r if r < oh * ow => fill(r / ow, r % ow, row, t),
                        _ => row.fill(0),
                    }
                }
                let (a, b) = two.split_at(per);
                o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a | b >> 4);
            },
        );
        return LutRows { offs: pairs, t };
    }
    let mut offs = Buf::<u8>::zeroed(n * per);
    // One task per output row of the image.
    let line = offs.par_chunks_mut(ow * per).zip(t.par_chunks_mut(ow)).take(oh).enumerate();
    line.for_each(|(oy, (offs, t))| {
        for (ox, (o, t)) in offs.chunks_mut(per).zip(t).enumerate() {
            fill(oy, ox, o, t);
        }
    });
    LutRows { offs, t }
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

/// `out[p·C_out + o]` for all rows of `a` (see [`BitGemm::run`]); `lw` from [`pack_weights`] and `a` from
/// [`im2col`], both made for `plan`.
pub fn run(g: &BitGemm, plan: Plan, lw: &[u8], a: &LutRows, rows: usize, out: &mut [f32]) {
    macro_rules! go {
        ($(($kw:literal, $ka:literal, $p:literal, $b:literal, $l:literal)),*) => {
            match (g.kw, g.ka, plan.p, plan.b, plan.lanes) {
                $(($kw, $ka, $p, $b, $l) => drive::<$kw, $ka, $p, $b, $l>(g, lw, a, rows, out),)*
                _ => unreachable!("plan() and the instantiated tiles disagree"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    go!(
        (1, 1, 6, 2, 32),
        (1, 2, 3, 2, 32),
        (1, 3, 2, 2, 32),
        (1, 4, 1, 2, 32),
        (1, 1, 12, 1, 32),
        (1, 2, 6, 1, 32),
        (1, 3, 4, 1, 32),
        (1, 4, 3, 1, 32),
        (2, 1, 6, 1, 32),
        (2, 2, 3, 1, 32),
        (2, 3, 2, 1, 32),
        (2, 4, 1, 1, 32),
        (3, 1, 4, 1, 32),
        (3, 2, 2, 1, 32),
        (3, 3, 1, 1, 32),
        (3, 4, 1, 1, 32),
        (4, 1, 3, 1, 32),
        (4, 2, 1, 1, 32),
        (4, 3, 1, 1, 32),
        (1, 1, 12, 1, 16),
        (1, 2, 6, 1, 16),
        (1, 3, 4, 1, 16),
        (1, 4, 3, 1, 16),
        (2, 1, 6, 1, 16),
        (2, 2, 3, 1, 16),
        (2, 3, 2, 1, 16),
        (2, 4, 1, 1, 16),
        (3, 1, 4, 1, 16),
        (3, 2, 2, 1, 16),
        (3, 3, 1, 1, 16),
        (3, 4, 1, 1, 16),
        (4, 1, 3, 1, 16),
        (4, 2, 1, 1, 16),
        (4, 3, 1, 1, 16)
    );
}

#[cfg(target_arch = "x86_64")]
fn drive<const KW: usize, const KA: usize, const P: usize, const B: usize, const L: usize>(
    g: &BitGemm,
    lw: &[u8],
    a: &LutRows,
    rows: usize,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let (c_out, groups) = (g.c_out, g.words * 16);
    // Epilogue coefficients `2·v^w_{o,i}·v^a_j` as `[i][j][C_out]`, and `S_w[o] = Σ_i v^w_{o,i}`.
    let mut coef = vec![0.0f32; KW * KA * c_out];
    let mut sw = vec![0.0f32; c_out];
    for o in 0..c_out {
        for i in 0..KW {
            sw[o] += g.w_basis[o * KW + i];
            for j in 0..KA {
                coef[(i * KA + j) * c_out + o] = 2.0 * g.w_basis[o * KW + i] * g.a_basis[j];
            }
        }
    }
    // A task is up to 16 row tiles; K is cut into equal chunks of at most 24 KB of a tile's weights, so that they
    // stay in L1 while the task's tiles pass over them (1×1 convs over 4096 channels have 1024 groups).
    let chunks = (groups * KW * B * 32).div_ceil(24 << 10);
    let kc = groups.div_ceil(chunks);
    let r = P * 32 / L; // patch rows per tile
    let per_task = rows.div_ceil(r).div_ceil(4 * rayon::current_num_threads()).clamp(1, 16);
    let per = groups * KA;
    out[..rows * c_out].par_chunks_mut(per_task * r * c_out).enumerate().for_each(|(t, o)| {
        for g0 in (0..groups).step_by(kc) {
            let gr = g0..(g0 + kc).min(groups);
            for blk in (0..c_out / L).step_by(B) {
                let w = &lw[blk * groups * KW * 32..(blk + B) * groups * KW * 32];
                for (tt, o) in o.chunks_mut(r * c_out).enumerate() {
                    let r0 = (t * per_task + tt) * r;
                    let lr = r0 * L / 32; // offset rows: one per row, or per row pair with 16 lanes
                    let (offs, tv) = (&a.offs[lr * per..(lr + P) * per], &a.t[r0..r0 + r]);
                    // SAFETY: AVX2 was checked by `plan`; the slices hold `r` rows of offsets, `B` weight blocks,
                    // and `o` holds `o.len() / c_out` whole rows.
                    unsafe { tile::<KW, KA, P, B, L>(w, offs, groups, gr.clone(), tv, &coef, &sw, blk * L, o) };
                }
            }
        }
    });
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

/// One tile: `B` channel blocks starting at channel `o0`, `P·32/L` patch rows (those of `out` that exist), the
/// groups `gr`; the first chunk of K stores its result, later chunks add to it.
///
/// # Safety
/// AVX2 must be available; `w` holds `B` blocks of `groups·KW·32` bytes, `offs` `P·32/L` rows of `groups·KA`
/// offsets < 256, `gr` lies within `0..groups`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // a register tile reads best as indices
unsafe fn tile<const KW: usize, const KA: usize, const P: usize, const B: usize, const L: usize>(
    w: &[u8],
    offs: &[u8],
    groups: usize,
    gr: std::ops::Range<usize>,
    tv: &[f32],
    coef: &[f32],
    sw: &[f32],
    o0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_si256();
    // i16 totals [b][i][p][j] as (unpacklo, unpackhi) of the byte accumulators.
    let mut wide = [[[[[zero; 2]; KA]; P]; KW]; B];
    let (tab, pairs) = (TABLES.0.as_ptr(), PAIRS.0.as_ptr() as *const u8);
    let (wp, op) = (w.as_ptr(), offs.as_ptr());
    let per = groups * KA;
    let (first, c_out) = (gr.start == 0, sw.len());
    let mut g0 = gr.start;
    while g0 < gr.end {
        let end = (g0 + 63).min(gr.end);
        let mut acc = [[[[zero; KA]; P]; KW]; B];
        for gi in g0..end {
            let mut wv = [[zero; KW]; B];
            for (b, wb) in wv.iter_mut().enumerate() {
                for (i, v) in wb.iter_mut().enumerate() {
                    // SAFETY: block b, group gi, plane i lies inside `w` (see the contract).
                    *v = unsafe { _mm256_loadu_si256(wp.add(((b * groups + gi) * KW + i) * 32) as *const __m256i) };
                }
            }
            for p in 0..P {
                for j in 0..KA {
                    // SAFETY: offsets index one of the 16 tables of `TABLES`; rows are within `offs`.
                    let t = unsafe {
                        let off = *op.add(p * per + j * groups + gi) as usize;
                        if L == 32 {
                            _mm256_load_si256(tab.add(2 * off) as *const __m256i)
                        } else {
                            _mm256_load_si256(pairs.add(off * 32) as *const __m256i)
                        }
                    };
                    for b in 0..B {
                        for i in 0..KW {
                            acc[b][i][p][j] = _mm256_add_epi8(acc[b][i][p][j], _mm256_shuffle_epi8(t, wv[b][i]));
                        }
                    }
                }
            }
        }
        for b in 0..B {
            for i in 0..KW {
                for p in 0..P {
                    for j in 0..KA {
                        let x = acc[b][i][p][j];
                        let wd = &mut wide[b][i][p][j];
                        wd[0] = _mm256_add_epi16(wd[0], _mm256_unpacklo_epi8(x, zero));
                        wd[1] = _mm256_add_epi16(wd[1], _mm256_unpackhi_epi8(x, zero));
                    }
                }
            }
        }
        g0 = end;
    }
    // unpacklo holds bytes 0..8 | 16..24, unpackhi 8..16 | 24..32: 8-lane chunk q comes from half q % 2 of
    // 128-bit lane q / 2. With 32 lanes that is channels 8q.., with 16 it is channels 8·(q % 2).. of row q / 2.
    let rows = out.len() / c_out;
    for p in 0..P {
        for b in 0..B {
            for q in 0..4 {
                let (row, o) =
                    if L == 32 { (p, o0 + b * 32 + q * 8) } else { (2 * p + q / 2, o0 + b * 16 + (q % 2) * 8) };
                if row >= rows {
                    continue;
                }
                // SAFETY: o + 8 <= c_out (whole blocks) for `sw`, `coef` rows and the output row.
                unsafe {
                    let dst = out.as_mut_ptr().add(row * c_out + o);
                    let mut f = if first {
                        _mm256_mul_ps(_mm256_loadu_ps(sw.as_ptr().add(o)), _mm256_set1_ps(-tv[row]))
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
