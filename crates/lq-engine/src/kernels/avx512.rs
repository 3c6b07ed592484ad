//! AVX-512 popcount kernel (VPOPCNTDQ): the 8 u64 lanes of a register are 8 output channels (weights repacked
//! `[C_out/8][K_w][words][8]`), the patch row's word is broadcast from memory, and each (row, plane, word) costs one
//! `vpandq` + `vpopcntq` + `vpaddq` on 512 binary products into u64 counts (no widening). A tile is `P` patch rows ×
//! 8 channels × K_w × K_a accumulators. With channels in the lanes the epilogue is vector work written straight
//! into the NHWC row (8 channels per store), which matters where patches are short (a 3×3 conv over 16 channels
//! has 3 words per row: with rows in the lanes the scattered epilogue cost 40 % of the kernel).
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

/// The kernel's weights: `g.w` (`[C_out][K_w][words]`) as `[⌈C_out/8⌉][K_w][words][8]`, channel `8·b + l` in
/// lane `l`, lanes past `C_out` zero.
pub(crate) fn pack(g: &BitGemm) -> Vec<u64> {
    let (kw, words) = (g.kw, g.words);
    let mut out = vec![0u64; g.c_out.div_ceil(8) * kw * words * 8];
    for o in 0..g.c_out {
        for i in 0..kw {
            for k in 0..words {
                out[(((o / 8) * kw + i) * words + k) * 8 + o % 8] = g.w[(o * kw + i) * words + k];
            }
        }
    }
    out
}

/// # Safety
/// The CPU must support what [`is_available`] checks; `wp` is [`pack`]`(g)`, `a` holds `⌈rows/4⌉·K_a·words·4`
/// words, `out` `rows·C_out` values, `sw` `C_out` (what [`BitGemm::run`] checks before it splits the rows).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm(g: &BitGemm, wp: &[u64], a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    macro_rules! go {
        ($(($kw:literal, $ka:literal, $p:literal)),*) => {
            match (g.kw, g.ka) {
                // SAFETY (each arm): the CPU features are present per this function's contract.
                $(($kw, $ka) => unsafe { run::<$kw, $ka, $p>(g, wp, a, rows, sw, out) },)*
                _ => super::portable::gemm(g, a, rows, sw, out),
            }
        };
    }
    // P·K_w·K_a ≤ 24 accumulators (of 32 registers), P a power of two so tiles divide the 32-row tasks.
    go!(
        (1, 1, 16),
        (1, 2, 8),
        (1, 3, 8),
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

/// # Safety
/// None beyond the x86-64 version's (this one is portable code).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gemm(g: &BitGemm, _wp: &[u64], a: &[u64], rows: usize, sw: &[f32], out: &mut [f32]) {
    super::portable::gemm(g, a, rows, sw, out)
}

/// Tiles of `P` rows (the last tile's rows past `rows` recompute the last row and are not stored) × 8 channels;
/// epilogue `Σ_ij c_{o,i,j}·P_ij − S_w·T` with `c_{o,i,j} = 2·v^w_{o,i}·v^a_j`, 8 channels at once.
///
/// # Safety
/// As [`gemm`], and `g.kw == KW`, `g.ka == KA`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vpopcntdq,avx2,fma,popcnt")]
#[allow(clippy::needless_range_loop)] // a register tile reads best as indices
unsafe fn run<const KW: usize, const KA: usize, const P: usize>(
    g: &BitGemm,
    wp: &[u64],
    a: &[u64],
    rows: usize,
    sw: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (words, c_out) = (g.words, g.c_out);
    let blocks = c_out.div_ceil(8);
    // Per block: coefficients [i][j][8] and S_w [8], lanes past C_out zero.
    let mut coef = vec![0.0f32; blocks * KW * KA * 8];
    let mut swp = vec![0.0f32; blocks * 8];
    for o in 0..c_out {
        let (b, l) = (o / 8, o % 8);
        swp[o] = sw[o];
        for i in 0..KW {
            for j in 0..KA {
                coef[((b * KW + i) * KA + j) * 8 + l] = 2.0 * g.w_basis[o * KW + i] * g.a_basis[j];
            }
        }
    }
    // Word k of plane j of row r in the operand's 4-row groups.
    let at = |r: usize, j: usize, k: usize| ((r / 4) * KA * words + j * words + k) * 4 + r % 4;
    assert!(rows > 0 && a.len() > at(rows - 1, KA - 1, words - 1) && wp.len() >= blocks * KW * words * 8);
    let t: Vec<f32> = (0..rows).map(|r| g.t_of(&a[(r / 4) * KA * words * 4..], r % 4)).collect();
    // Channel blocks outside, rows inside: a block's weights (K_w·words·64 bytes) stay in L1 while every row of the
    // task reads them (rows outside re-streamed all of a wide layer's weights per tile: VGG-Small ran 1.5x slower).
    for b in 0..blocks {
        for r0 in (0..rows).step_by(P) {
            // Each row's plane-0 word 0 (rows past the end read the last row); planes are `4·words` apart, words 4.
            let row: [*const u64; P] = std::array::from_fn(|p| a[at((r0 + p).min(rows - 1), 0, 0)..].as_ptr());
            let mut acc = [[[_mm512_setzero_si512(); KA]; KW]; P];
            let w = &wp[b * KW * words * 8..][..KW * words * 8];
            for k in 0..words {
                // SAFETY: (i·words + k)·8 + 8 <= w.len(); word k of plane j of each row lies inside `a` (asserted
                // above for the last row, and every row of the tile is at most it).
                unsafe {
                    let wv: [__m512i; KW] =
                        std::array::from_fn(|i| _mm512_loadu_si512(w.as_ptr().add((i * words + k) * 8).cast()));
                    for p in 0..P {
                        for j in 0..KA {
                            let av = _mm512_set1_epi64(*row[p].add((j * words + k) * 4) as i64);
                            for i in 0..KW {
                                let x = _mm512_popcnt_epi64(_mm512_and_si512(wv[i], av));
                                acc[p][i][j] = _mm512_add_epi64(acc[p][i][j], x);
                            }
                        }
                    }
                }
            }
            let n = (c_out - b * 8).min(8);
            // Constant bounds: a run-time index into `acc` would keep it in memory for the whole tile.
            for p in 0..P {
                if r0 + p >= rows {
                    break;
                }
                // SAFETY: the block's 8 coefficients and S_w lie inside `coef` and `swp`.
                let f = unsafe {
                    let mut f = _mm256_mul_ps(_mm256_loadu_ps(swp.as_ptr().add(b * 8)), _mm256_set1_ps(-t[r0 + p]));
                    for i in 0..KW {
                        for j in 0..KA {
                            let c = _mm256_loadu_ps(coef.as_ptr().add(((b * KW + i) * KA + j) * 8));
                            f = _mm256_fmadd_ps(c, _mm512_cvtepi64_ps(acc[p][i][j]), f);
                        }
                    }
                    f
                };
                let dst = &mut out[(r0 + p) * c_out + b * 8..][..n];
                if n == 8 {
                    // SAFETY: `dst` is 8 f32.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), f) };
                } else {
                    let mut v = [0.0f32; 8];
                    // SAFETY: `v` is 8 f32.
                    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), f) };
                    dst.copy_from_slice(&v[..n]);
                }
            }
        }
    }
}
