//! The AVX-512 kernel's instruction ceiling on this CPU: how many `vpandd` + `vpopcntd` + `vpaddd` triples (512
//! binary products each) one core retires per cycle, with the activation word broadcast from memory every 1, 2,
//! 4 or 12 triples, and the core clock from a chain of dependent adds (one per cycle). The engine's kernel time
//! compares with the network's triple count at this rate (`cargo run --release -p lq-engine --example ceiling`).
use std::time::Instant;

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f| std::is_x86_feature_detected!("avx512f") && f;
        if !has(std::is_x86_feature_detected!("avx512vpopcntdq")) {
            println!("no AVX-512 VPOPCNTDQ here: the kernel this measures does not run");
            return;
        }
        let ghz = clock_ghz();
        println!("core clock {ghz:.2} GHz (dependent adds)");
        let words: Vec<u64> = (0..1100u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let n = 20_000_000;
        for per in [1, 2, 4, 12] {
            // SAFETY: AVX-512F and VPOPCNTDQ checked above; `words` holds 1100 words.
            let (dt, sum) = unsafe {
                match per {
                    1 => triples::<1>(n, &words),
                    2 => triples::<2>(n, &words),
                    4 => triples::<4>(n, &words),
                    _ => triples::<12>(n, &words),
                }
            };
            let rate = (n * 12) as f64 / dt / (ghz * 1e9);
            println!("broadcast every {per:>2} triples: {rate:.2} triples per cycle ({sum})");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}

/// GHz from 4·10⁸ dependent single-cycle adds.
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> f64 {
    let (n, mut a) = (100_000_000u64, 1u64);
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: register arithmetic only.
        unsafe { std::arch::asm!("add {0}, 1", "add {0}, 1", "add {0}, 1", "add {0}, 1", inout(reg) a) };
    }
    let dt = t.elapsed().as_secs_f64();
    std::hint::black_box(a);
    4.0 * n as f64 / dt / 1e9
}

/// Seconds for `n` rounds of 12 independent accumulator updates (a broadcast every `PER`, all indices constant so
/// the accumulators stay in registers), and their sum.
///
/// # Safety
/// AVX-512F and VPOPCNTDQ (`words` shorter than 1036 panics).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn triples<const PER: usize>(n: usize, words: &[u64]) -> (f64, i64) {
    use std::arch::x86_64::*;
    // 12 weight vectors of 16 distinct 32-bit words (as a block of 16 output channels; splats would let the
    // compiler fold the AND into scalar code).
    let wv: Vec<u64> = (0..96u64).map(|i| 0x5555_1234_9876_0F0Fu64.wrapping_mul(i + 3)).collect();
    let w: [__m512i; 12] = std::array::from_fn(|i| _mm512_loadu_si512(wv[i * 8..][..8].as_ptr().cast()));
    let mut acc = [_mm512_setzero_si512(); 12];
    let t = Instant::now();
    let mut off = 0;
    for _ in 0..n {
        let ws = &words[off..off + 12];
        for q in (0..12).step_by(PER) {
            let av = _mm512_set1_epi32(ws[q] as i32);
            for r in q..q + PER {
                acc[r] = _mm512_add_epi32(acc[r], _mm512_popcnt_epi32(_mm512_and_si512(w[r], av)));
            }
        }
        off = (off + 12) & 1023;
    }
    let dt = t.elapsed().as_secs_f64();
    // The counts' sum (in u64: the u32 lanes' total would wrap), so the work is not optimised away.
    let mut lanes = [0u32; 16];
    let sum = acc.iter().fold(0i64, |s, a| {
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), *a);
        s + lanes.iter().map(|&l| l as i64).sum::<i64>()
    });
    (dt, sum)
}
