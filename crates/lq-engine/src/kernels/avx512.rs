//! AVX-512 popcount kernel (VPOPCNTDQ): the 8 u64 lanes of a register are 8 patch rows (two of the operand's
//! 4-row groups side by side), the weight word is broadcast from memory, and each (row, plane, word) costs one
//! `vpandq` + `vpopcntq` + `vpaddq` on 512 binary products, with no nibble split and no widening (the counts are
//! u64 from the start). A tile is R weight rows (all K_w planes of R/K_w channels) × K_a planes × 8 rows.
use super::BitGemm;

/// Whether AVX-512 F/DQ/VPOPCNTDQ (with AVX2 and FMA for the epilogue) is present.
pub(crate) fn is_available() -> bool {
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

/// # Safety
/// The CPU must support what [`is_available`] checks; `a` holds `⌈rows/4⌉·K_a·words·4` words, `g.w`
/// `C_out·K_w·words`, `out` `rows·C_out` values (what [`BitGemm::run`] checks before it splits the rows).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    macro_rules! go {
        ($(($kw:literal, $ka:literal, $r:literal)),*) => {
            match (g.kw, g.ka) {
                // SAFETY (each arm): the CPU features are present per this function's contract.
                $(($kw, $ka) => unsafe { run::<$kw, $ka, $r>(g, a, rows, sw, out) },)*
                _ => super::portable::gemm(g, a, rows, sw, out),
            }
        };
    }
    // R·K_a ≤ 24 accumulators; R/K_w channels per tile divide the usual channel counts.
    go!(
        (1, 1, 16),
        (1, 2, 8),
        (1, 3, 8),
        (1, 4, 4),
        (2, 1, 16),
        (2, 2, 8),
        (2, 3, 8),
        (2, 4, 4),
        (3, 1, 24),
        (3, 2, 12),
        (3, 3, 6),
        (3, 4, 6),
        (4, 1, 16),
        (4, 2, 8),
        (4, 3, 8),
        (4, 4, 4)
    )
}

/// # Safety
/// None beyond the x86-64 version's (this one is portable code).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gemm(g: &BitGemm, a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    super::portable::gemm(g, a, rows, sw, out)
}

/// All output channels for `rows` patch rows, 8 at a time: tiles of R weight rows (R/KW channels), the channel
/// tail one channel at a time; epilogue `Σ_ij c_{o,i,j}·P_ij − S_w·T` on 8 lanes.
///
/// # Safety
/// As [`gemm`], and `g.kw == KW`, `g.ka == KA`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vpopcntdq,avx2,fma,popcnt")]
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
    let groups = rows.div_ceil(4);
    for g0 in (0..groups).step_by(2) {
        let lanes = (rows - g0 * 4).min(8);
        // A lone last group pairs with itself; its copy's lanes are not stored.
        let g1 = (g0 + 1).min(groups - 1);
        let (a0, a1) = (&a[g0 * ga..(g0 + 1) * ga], &a[g1 * ga..(g1 + 1) * ga]);
        let t: [f32; 8] =
            std::array::from_fn(|l| if l < lanes { g.t_of(if l < 4 { a0 } else { a1 }, l % 4) } else { 0.0 });
        // SAFETY: `t` is 8 f32.
        let tv = unsafe { _mm256_loadu_ps(t.as_ptr()) };
        let mut o0 = 0;
        while o0 < c_out {
            let take = if c_out - o0 >= ch { ch } else { 1 };
            let w = &g.w[o0 * KW * words..(o0 + take) * KW * words];
            let mut counts = [[_mm512_setzero_si512(); KA]; R];
            // SAFETY: `w` holds `take·KW` rows of `words` words, each group K_a rows of `words`×4 words, and the
            // features are enabled on this function.
            unsafe {
                if take == ch {
                    counts = tile::<R, KA>(w, a0, a1, words);
                } else {
                    counts[..KW].copy_from_slice(&tile::<KW, KA>(w, a0, a1, words));
                }
            }
            let mut res = [[0.0f32; 8]; R];
            for c in 0..take {
                let o = o0 + c;
                let mut acc = _mm256_mul_ps(_mm256_set1_ps(-sw[o]), tv);
                for i in 0..KW {
                    for j in 0..KA {
                        let p = _mm512_cvtepi64_ps(counts[c * KW + i][j]);
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(coef[(o * KW + i) * KA + j]), p, acc);
                    }
                }
                // SAFETY: res[c] is 8 f32.
                unsafe { _mm256_storeu_ps(res[c].as_mut_ptr(), acc) };
            }
            for l in 0..lanes {
                let row = &mut out[(g0 * 4 + l) * c_out + o0..][..take];
                row.iter_mut().zip(&res).for_each(|(o, r)| *o = r[l]);
            }
            o0 += take;
        }
    }
}

/// Popcounts of `RR` weight rows against the K_a planes of two groups of 4 patch rows, as u64 lanes.
///
/// # Safety
/// The features of [`run`]; `w.len() >= RR·words`, `a0.len()` and `a1.len() >= KA·words·4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
#[inline]
unsafe fn tile<const RR: usize, const KA: usize>(
    w: &[u64],
    a0: &[u64],
    a1: &[u64],
    words: usize,
) -> [[std::arch::x86_64::__m512i; KA]; RR] {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_si512();
    let mut acc = [[zero; KA]; RR];
    for kk in 0..words {
        let mut av = [zero; KA];
        for (j, v) in av.iter_mut().enumerate() {
            let at = (j * words + kk) * 4;
            // SAFETY: at + 4 <= KA·words·4 for both groups.
            unsafe {
                let lo = _mm256_loadu_si256(a0.as_ptr().add(at) as *const __m256i);
                let hi = _mm256_loadu_si256(a1.as_ptr().add(at) as *const __m256i);
                *v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            }
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            // SAFETY: r·words + kk < RR·words <= w.len().
            let wb = _mm512_set1_epi64(unsafe { *w.get_unchecked(r * words + kk) } as i64);
            for (j, x) in ar.iter_mut().enumerate() {
                *x = _mm512_add_epi64(*x, _mm512_popcnt_epi64(_mm512_and_si512(av[j], wb)));
            }
        }
    }
    acc
}
