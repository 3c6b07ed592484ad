//! AVX2 kernel (bitops.md §2.1 "LQ W_kw A_ka"): lanes are 4 patch rows (one u64 each), the weight word is
//! broadcast; popcount by the nibble lookup (`vpshufb`) into byte accumulators, flushed with `vpsadbw` every 31
//! words (a byte gains at most 8 per word). The activation operand is split into low/high nibbles once per word
//! and reused by every weight row of the tile, so each (row, plane, word) costs 2 and + 2 shuffles + 2 byte adds.
//! A tile is R weight rows (all K_w planes of R/K_w channels) × K_a planes × 4 rows; the LQ epilogue runs on
//! the tile's counts. Pays off as long as K_w·K_a is small (bitops.md §2.2: W3A3 is near fp32 parity).
use super::BitGemm;

/// Whether AVX2 (with FMA, used by the epilogues, and POPCNT, for the per-pixel counts) is present (cached by the
/// standard library).
pub(crate) fn is_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA ([`is_available`]); `a` holds `⌈rows/4⌉·K_a·words·4` words, `g.w`
/// `C_out·K_w·words`, `out` `rows·C_out` values (what [`BitGemm::run`] checks before it splits the rows).
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

/// # Safety
/// None beyond the x86-64 version's (this one is portable code).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    super::portable::gemm(g, a, rows, sw, out)
}

/// All output channels for `rows` patch rows: tiles of R weight rows (R/KW channels), the channel tail one
/// channel at a time. The epilogue runs on 4 lanes at once: `Σ_ij c_{o,i,j}·P_ij − S_w·T` with the per-layer
/// coefficients `c_{o,i,j} = 2·v^w_{o,i}·v^a_j` precomputed.
///
/// # Safety
/// AVX2 and FMA must be available; `g.kw == KW`, `g.ka == KA`, and `a`, `out`, `sw` hold what [`BitGemm::run`]
/// checks for `rows` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn run<const KW: usize, const KA: usize, const R: usize>(
    g: &BitGemm,
    a: &[u64],
    rows: usize,
    sw: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (words, c_out) = (g.words, g.c_out);
    let ga = KA * words * 4;
    let ch = R / KW;
    let coef: Vec<f32> = (0..c_out * KW * KA).map(|x| 2.0 * g.w_basis[x / KA] * g.a_basis[x % KA]).collect();
    // u64 lanes → their low 32 bits in the low 128 bits.
    let lo32 = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for grp in 0..rows.div_ceil(4) {
        let group = &a[grp * ga..(grp + 1) * ga];
        let lanes = (rows - grp * 4).min(4);
        let t: [f32; 4] = std::array::from_fn(|l| if l < lanes { g.t_of(group, l) } else { 0.0 });
        // SAFETY: `t` is 4 f32.
        let tv = unsafe { _mm_loadu_ps(t.as_ptr()) };
        let mut o0 = 0;
        while o0 < c_out {
            let take = if c_out - o0 >= ch { ch } else { 1 };
            let w = &g.w[o0 * KW * words..(o0 + take) * KW * words];
            let mut counts = [[_mm256_setzero_si256(); KA]; R];
            // SAFETY: `w` holds `take·KW` rows of `words` words, `group` K_a rows of `words`×4 words, and AVX2 is
            // enabled on this function.
            unsafe {
                if take == ch {
                    counts = tile::<R, KA>(w, group, words);
                } else {
                    counts[..KW].copy_from_slice(&tile::<KW, KA>(w, group, words));
                }
            }
            let mut res = [[0.0f32; 4]; R];
            for c in 0..take {
                let o = o0 + c;
                let mut acc = _mm_mul_ps(_mm_set1_ps(-sw[o]), tv);
                for i in 0..KW {
                    for j in 0..KA {
                        let p = _mm_cvtepi32_ps(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
                            counts[c * KW + i][j],
                            lo32,
                        )));
                        acc = _mm_fmadd_ps(_mm_set1_ps(coef[(o * KW + i) * KA + j]), p, acc);
                    }
                }
                // SAFETY: res[c] is 4 f32.
                unsafe { _mm_storeu_ps(res[c].as_mut_ptr(), acc) };
            }
            for l in 0..lanes {
                let row = &mut out[(grp * 4 + l) * c_out + o0..][..take];
                row.iter_mut().zip(&res).for_each(|(o, r)| *o = r[l]);
            }
            o0 += take;
        }
    }
}

/// Popcounts of `RR` weight rows against the K_a planes of one group of 4 patch rows, as u64 lanes.
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
) -> [[std::arch::x86_64::__m256i; KA]; RR] {
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
    total
}
