//! AVX2 kernel (bitops.md §2.1 "LQ W_kw A_ka"): lanes are 4 patch rows (one u64 each), the weight word is
//! broadcast; popcount by the nibble lookup (`vpshufb`) into byte accumulators, flushed with `vpsadbw` every 31
//! words (a byte gains at most 8 per word). The activation operand is split into low/high nibbles once per word
//! and reused by every weight row of the tile, so each (row, plane, word) costs 2 and + 2 shuffles + 2 byte adds.
//! A tile is R weight rows (all K_w planes of R/K_w channels) × K_a planes × 4 rows; the LQ epilogue runs on
//! the tile's counts. Pays off as long as K_w·K_a is small (bitops.md §2.2: W3A3 is near fp32 parity).
use super::BitGemm;

/// Whether AVX2 is present (cached by the standard library).
pub(crate) fn is_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// # Safety
/// The CPU must support AVX2 ([`is_available`]).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    macro_rules! go {
        ($(($kw:literal, $ka:literal, $r:literal)),*) => {
            match (g.kw, g.ka) {
                // SAFETY (each arm): AVX2 is present per this function's contract.
                $(($kw, $ka) => unsafe { run::<$kw, $ka, $r>(g, a, rows, sw, out) },)*
                _ => super::portable::gemm(g, a, rows, sw, out),
            }
        };
    }
    go!(
        (1, 1, 4),
        (1, 2, 4),
        (1, 3, 4),
        (1, 4, 4),
        (2, 1, 4),
        (2, 2, 4),
        (2, 3, 4),
        (2, 4, 4),
        (3, 1, 3),
        (3, 2, 3),
        (3, 3, 3),
        (3, 4, 3),
        (4, 1, 4),
        (4, 2, 4),
        (4, 3, 4),
        (4, 4, 4)
    )
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    super::portable::gemm(g, a, rows, sw, out)
}

/// All output channels for `rows` patch rows: tiles of R weight rows (R/KW channels), the channel tail one
/// channel at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run<const KW: usize, const KA: usize, const R: usize>(
    g: &BitGemm,
    a: &[u64],
    rows: usize,
    sw: &[f32],
    out: &mut [f32],
) {
    let (words, c_out) = (g.words, g.c_out);
    let ga = KA * words * 4;
    let ch = R / KW;
    for grp in 0..rows.div_ceil(4) {
        let group = &a[grp * ga..(grp + 1) * ga];
        let lanes = (rows - grp * 4).min(4);
        let t: [f32; 4] = std::array::from_fn(|l| if l < lanes { g.t_of(group, l) } else { 0.0 });
        let mut o0 = 0;
        while o0 < c_out {
            let take = if c_out - o0 >= ch { ch } else { 1 };
            let w = &g.w[o0 * KW * words..(o0 + take) * KW * words];
            let mut counts = [[[0u64; 4]; KA]; R];
            // SAFETY: `w` holds `take·KW` rows of `words` words, `group` K_a rows of `words`×4 words, and AVX2 is
            // enabled on this function.
            unsafe {
                if take == ch {
                    tile::<R, KA>(w, group, words, &mut counts);
                } else {
                    let mut c1 = [[[0u64; 4]; KA]; KW];
                    tile::<KW, KA>(w, group, words, &mut c1);
                    counts[..KW].copy_from_slice(&c1);
                }
            }
            for l in 0..lanes {
                let row = &mut out[(grp * 4 + l) * c_out..];
                for c in 0..take {
                    let p = |i: usize, j: usize| counts[c * KW + i][j][l] as u32;
                    row[o0 + c] = g.epilogue(o0 + c, p, sw[o0 + c], t[l]);
                }
            }
            o0 += take;
        }
    }
}

/// Popcounts of `RR` weight rows against the K_a planes of one group of 4 patch rows.
///
/// # Safety
/// AVX2 must be available; `w.len() >= RR·words`, `a.len() >= KA·words·4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const RR: usize, const KA: usize>(
    w: &[u64],
    a: &[u64],
    words: usize,
    counts: &mut [[[u64; 4]; KA]; RR],
) {
    use std::arch::x86_64::*;
    let lut = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
    );
    let m = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    let mut total = [[zero; KA]; RR];
    let mut k = 0;
    while k < words {
        let end = (k + 31).min(words);
        let mut acc = [[zero; KA]; RR];
        for kk in k..end {
            let mut lo = [zero; KA];
            let mut hi = [zero; KA];
            for j in 0..KA {
                // SAFETY: (j·words + kk)·4 + 4 <= KA·words·4 <= a.len().
                let v = unsafe { _mm256_loadu_si256(a.as_ptr().add((j * words + kk) * 4) as *const __m256i) };
                lo[j] = _mm256_and_si256(v, m);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
            }
            for r in 0..RR {
                let wb = _mm256_set1_epi64x(w[r * words + kk] as i64);
                let wh = _mm256_srli_epi64::<4>(wb);
                for j in 0..KA {
                    let pl = _mm256_shuffle_epi8(lut, _mm256_and_si256(lo[j], wb));
                    let ph = _mm256_shuffle_epi8(lut, _mm256_and_si256(hi[j], wh));
                    acc[r][j] = _mm256_add_epi8(acc[r][j], _mm256_add_epi8(pl, ph));
                }
            }
        }
        for r in 0..RR {
            for j in 0..KA {
                total[r][j] = _mm256_add_epi64(total[r][j], _mm256_sad_epu8(acc[r][j], zero));
            }
        }
        k = end;
    }
    for r in 0..RR {
        for j in 0..KA {
            // SAFETY: counts[r][j] is 4 u64 = 32 bytes.
            unsafe { _mm256_storeu_si256(counts[r][j].as_mut_ptr() as *mut __m256i, total[r][j]) };
        }
    }
}
