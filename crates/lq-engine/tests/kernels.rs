//! Every kernel path against the dense oracle on the dequantized values: random shapes incl. channel counts that
//! are not multiples of 64, odd sizes, padding, stride 2, single pixels; all-zero and all-one planes.
//!
//! Bases are distinct powers of two, so every level is an integer, the oracle's sums are exact integers and so is
//! every step of the kernels' epilogue (all values stay below 2^24): outputs must be **equal**, and a single
//! popcount off by one anywhere shows as a difference of at least 2.
use lq_engine::{naive, BitConv, ChannelQuant, Isa, Planes};
use lq_quant::{CodeSet, Levels};
use proptest::prelude::*;

/// The kernel paths this CPU runs; says which it skips.
fn isas() -> Vec<Isa> {
    let all = [Isa::Portable, Isa::Avx2, Isa::Avx2Lut, Isa::Avx512];
    for isa in all.iter().filter(|i| !i.is_available()) {
        eprintln!("kernel path {isa:?} is not available on this CPU: not tested here");
    }
    all.into_iter().filter(|i| i.is_available()).collect()
}

/// Runs one conv through every kernel and compares with the dense conv of the dequantized tensors, exactly.
#[allow(clippy::too_many_arguments)]
fn check(
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    kw: usize,
    ka: usize,
    seed: u64,
    x_scale: f32,
) {
    let mut s = seed;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let wt: Vec<f32> = (0..c_out * c_in * k * k).map(|_| rnd() * 16.0).collect();
    // Weight bases 2^i, doubled on odd channels; activation bases a permutation of 1, 2, .., 2^(K_a−1), so codes
    // and sorted level indices differ.
    let wb: Vec<f32> = (0..c_out * kw).map(|x| (1 << (x % kw + (x / kw) % 2)) as f32).collect();
    let ab: Vec<f32> = (0..ka).map(|j| (1 << ((j + 1) % ka)) as f32).collect();
    let top: f32 = ab.iter().sum();
    let x: Vec<f32> = (0..h * w * c_in).map(|_| (rnd() + 0.5) * x_scale * top).collect();
    let alv = Levels::from_basis(&ab, CodeSet::Binary).unwrap();
    // Reference: dequantize activations (identity BN) and weights, dense conv.
    let xq: Vec<f32> = x.iter().map(|&v| alv.levels()[alv.index(v.max(0.0))]).collect();
    let wq: Vec<f32> = wt
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let o = i / (c_in * k * k);
            let lv = Levels::from_basis(&wb[o * kw..(o + 1) * kw], CodeSet::Signed).unwrap();
            lv.levels()[lv.index(v)]
        })
        .collect();
    let want = naive::conv(&xq, h, w, c_in, &wq, c_out, k, stride, k / 2);
    assert!(want.iter().all(|v| v.fract() == 0.0 && v.abs() < (1 << 24) as f32));
    let conv = BitConv::pack(c_out, c_in, k, stride, &wt, &wb).unwrap();
    let cq = ChannelQuant::fold(&alv, &vec![1.0; c_in], &vec![0.0; c_in]);
    let planes = Planes::quantize(&x, h, w, &cq).unwrap();
    for isa in isas() {
        let got = conv.forward(&planes, &ab, isa).unwrap();
        // Quantizing on the way in (fused into the table kernel's operand where it runs) gives the same result.
        assert_eq!(conv.forward_f32(&x, h, w, &cq, &ab, isa).unwrap(), got, "{isa:?} forward_f32");
        assert_eq!(got.len(), want.len());
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{isa:?} c_in={c_in} c_out={c_out} {h}x{w} k={k} s={stride} W{kw}A{ka} [{i}]: {} vs {}",
                got[i], want[i]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn bit_conv_matches_dense(c_in in 1usize..150, c_out in 1usize..12, h in 1usize..9, w in 1usize..9,
                              k in prop::sample::select(vec![1usize, 3, 5]), stride in 1usize..3,
                              kw in 1usize..5, ka in 1usize..5, seed in any::<u64>()) {
        check(c_in, c_out, h, w, k, stride, kw, ka, seed, 1.5);
    }

    /// Whole 16-channel blocks, where the LUT kernel runs (16 or 32 lanes, one or two blocks per tile, row tails
    /// of every tile).
    #[test]
    fn lut_blocks_match_dense(c_in in 1usize..100, blocks in 1usize..9, h in 1usize..7, w in 1usize..7,
                              k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3,
                              kw in 1usize..5, ka in 1usize..5, seed in any::<u64>()) {
        check(c_in, 16 * blocks, h, w, k, stride, kw, ka, seed, 1.5);
    }
}

#[test]
fn edge_shapes() {
    for &c in &[16, 32, 63, 64, 65, 144] {
        check(c, 5, 5, 3, 3, 1, 2, 2, 3, 1.5);
        check(c, 9, 7, 7, 3, 2, 3, 3, 4, 1.5);
    }
    check(64, 256, 1, 1, 3, 1, 1, 2, 5, 1.5); // one pixel, all padding around
    check(32, 8, 4, 4, 3, 1, 2, 2, 6, 0.0); // all-zero activation planes
    check(32, 8, 4, 4, 3, 1, 2, 2, 7, 100.0); // all-one activation planes (top level everywhere)
    check(512, 4, 2, 2, 3, 1, 4, 4, 8, 1.5); // 4608-bit rows: several byte-accumulator flushes
                                             // Maps past one parallel task (whole rows of at least 32 output pixels for the AVX-512 kernel, 32 patch
                                             // rows for the popcount ones) and odd pixel counts, for narrow channels (4, 8, 16, 32: several taps per
                                             // word) and whole words (64).
    for c in [4, 8, 16, 32, 64] {
        check(c, 24, 12, 11, 3, 1, 2, 2, 17, 1.5);
        check(c, 8, 13, 9, 3, 2, 1, 3, 18, 1.5);
    }
    // Rows wider than one AVX-512 tile call (70: calls of 32, 32 and 6 pixels, the last partly one at a time), and
    // wider than its stack scratch (300 pixels: heap scratch), with P = 16 and P = 4.
    check(16, 8, 3, 70, 3, 1, 1, 1, 19, 1.5);
    check(8, 16, 3, 70, 3, 1, 2, 2, 20, 1.5);
    check(8, 8, 2, 300, 3, 1, 1, 2, 21, 1.5);
    for (kw, ka) in [(1, 1), (1, 2), (1, 4), (2, 2), (3, 3), (4, 3)] {
        check(512, 64, 3, 2, 3, 1, kw, ka, 9, 1.5); // LUT kernel: 1152 groups, 19 widenings
        check(16, 32, 5, 5, 3, 1, kw, ka, 10, 100.0); // LUT kernel, all-one planes
        check(16, 16, 5, 5, 3, 1, kw, ka, 11, 1.5); // 16 lanes: two rows per register
        check(32, 32, 6, 5, 3, 2, kw, ka, 13, 1.5); // 8-group taps, stride 2
        check(64, 64, 4, 4, 3, 1, kw, ka, 14, 1.5); // 16-group taps
        check(8, 32, 3, 4, 3, 1, kw, ka, 15, 1.5); // 2-group taps (run-time length)
        check(3, 16, 5, 4, 3, 1, kw, ka, 16, 1.5); // 3 channels: one word per tap (the image-like input)
        check(512, 48, 2, 3, 3, 2, kw, ka, 12, 1.5); // 16 lanes, several widenings and K chunks
    }
}

/// NaN activations take the level of no threshold passed, the same as 0 below the first threshold, on every path.
#[test]
fn nan_activations_quantize_like_zero() {
    let (c, h, w) = (24, 5, 6);
    let wt: Vec<f32> = (0..16 * c * 9).map(|i| ((i * 7919 % 997) as f32 / 500.0) - 1.0).collect();
    let conv = BitConv::pack(16, c, 3, 1, &wt, &[1.0, 2.0].repeat(16)).unwrap();
    let lv = Levels::from_basis(&[0.5, 1.0], CodeSet::Binary).unwrap();
    let cq = ChannelQuant::fold(&lv, &vec![1.0; c], &vec![0.0; c]);
    let x: Vec<f32> = (0..h * w * c).map(|i| if i % 3 == 0 { f32::NAN } else { (i % 7) as f32 * 0.3 }).collect();
    let zeros: Vec<f32> = x.iter().map(|&v| if v.is_nan() { 0.0 } else { v }).collect();
    for isa in isas() {
        let got = conv.forward_f32(&x, h, w, &cq, &[0.5, 1.0], isa).unwrap();
        assert_eq!(got, conv.forward_f32(&zeros, h, w, &cq, &[0.5, 1.0], isa).unwrap(), "{isa:?}");
    }
}

#[test]
fn bn_folding_handles_negative_and_zero_scale() {
    let lv = Levels::from_basis(&[0.5, 1.0], CodeSet::Binary).unwrap();
    let (scale, shift) = ([2.0f32, -1.0, 0.0, 0.0], [0.1f32, 0.2, 0.9, -3.0]);
    let q = ChannelQuant::fold(&lv, &scale, &shift);
    let xs = [-1.0f32, -0.3, 0.0, 0.2, 0.4, 0.7, 1.3, 2.0];
    for &x in &xs {
        let p = Planes::quantize(&[x, x, x, x], 1, 1, &q).unwrap();
        for ch in 0..4 {
            let y = (scale[ch] * x + shift[ch]).max(0.0);
            let want = lv.codes()[lv.index(y)];
            let got = (0..2).map(|j| (((p.data[j] >> ch) & 1) as u8) << j).sum::<u8>();
            assert_eq!(got, want, "x={x} ch={ch}");
        }
    }
}

/// The AVX2 activation packer equals the portable one (K_a 1..3 take the vector path, 4 falls back).
#[test]
fn activation_packing_paths_agree() {
    for (c, ka) in [(16usize, 2usize), (32, 1), (64, 3), (72, 2), (24, 4), (5, 2)] {
        let x: Vec<f32> = (0..7 * 5 * c).map(|i| ((i * 7919 % 997) as f32 / 300.0) - 1.0).collect();
        let basis: Vec<f32> = (0..ka).map(|j| 0.3 * (1 << j) as f32).collect();
        let lv = Levels::from_basis(&basis, CodeSet::Binary).unwrap();
        let scale: Vec<f32> = (0..c).map(|i| if i % 3 == 0 { -0.7 } else { 1.3 }).collect();
        let shift: Vec<f32> = (0..c).map(|i| (i % 5) as f32 * 0.1).collect();
        let q = ChannelQuant::fold(&lv, &scale, &shift);
        let a = Planes::quantize_with(Isa::Portable, &x, 7, 5, &q).unwrap();
        for isa in isas() {
            assert_eq!(Planes::quantize_with(isa, &x, 7, 5, &q).unwrap(), a, "c={c} ka={ka} {isa:?}");
        }
    }
}

/// The fused quantize-into-operand path equals quantizing to planes first, with negative and zero BN scales and
/// channel counts that take its vector paths (multiples of 8: groups of 16 and a last 8) or fall back (20
/// channels), K_a 1 to 4, rows longer than the quantizer's 64-pixel chunks, and stride 2 over output rows wider
/// than the 16 pixels `T` is summed for at a time.
#[test]
fn fused_quantize_matches_planes() {
    let cases = [(16usize, 2usize, 16usize, 5usize, 1usize), (32, 1, 32, 5, 1), (64, 3, 64, 5, 1), (72, 2, 32, 5, 1)];
    let more = [(24, 4, 48, 5, 1), (20, 2, 16, 5, 1), (8, 4, 8, 70, 1), (40, 3, 16, 131, 1), (16, 2, 16, 70, 2)];
    for (c, ka, c_out, w, stride) in cases.into_iter().chain(more) {
        let x: Vec<f32> = (0..6 * w * c).map(|i| ((i * 7919 % 997) as f32 / 300.0) - 1.0).collect();
        let basis: Vec<f32> = (0..ka).map(|j| 0.3 * (1 << j) as f32).collect();
        let lv = Levels::from_basis(&basis, CodeSet::Binary).unwrap();
        let scale: Vec<f32> = (0..c).map(|i| [1.3, -0.7, 0.0][i % 3]).collect();
        let shift: Vec<f32> = (0..c).map(|i| (i % 5) as f32 * 0.1).collect();
        let q = ChannelQuant::fold(&lv, &scale, &shift);
        let wt: Vec<f32> = (0..c_out * c * 9).map(|i| ((i * 104729 % 613) as f32 / 306.0) - 1.0).collect();
        let wb: Vec<f32> = (0..c_out * 2).map(|i| 0.05 * (1 + i % 2) as f32).collect();
        let conv = BitConv::pack(c_out, c, 3, stride, &wt, &wb).unwrap();
        let planes = Planes::quantize_with(Isa::Portable, &x, 6, w, &q).unwrap();
        for isa in isas() {
            let want = conv.forward(&planes, &basis, isa).unwrap();
            assert_eq!(
                conv.forward_f32(&x, 6, w, &q, &basis, isa).unwrap(),
                want,
                "c={c} ka={ka} w={w} s={stride} {isa:?}"
            );
        }
    }
}

/// Both forms of the fused quantizer (binary search where thresholds ascend and codes are bit-permuted level
/// indices, the count elsewhere) equal quantizing to planes first: codes in level order, with bits swapped or
/// rotated, in an order no bit permutation gives, and with a code twice; thresholds with ties (what ReLU's clamp at
/// 0 folds to), one channel's pair swapped, and a NaN one; inputs exactly at thresholds, NaN and ±∞; K_a 1 to 4 over
/// 8 to 48 channels. (Which form runs is checked in the kernel module's own tests.)
#[test]
fn quantizer_forms_agree() {
    let mut s = 7u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    for (ka, codes) in [
        (1, vec![0u8, 1]),
        (2, vec![0, 1, 2, 3]),
        (2, vec![0, 2, 1, 3]),
        (2, vec![1, 3, 0, 2]),
        (2, vec![0, 1, 1, 2]),
        (3, (0..8).collect()),
        (3, (0..8u8).map(|i| ((i << 1) | (i >> 2)) & 7).collect()),
        (4, (0..16).collect()),
    ] {
        for c in [8usize, 16, 24, 48] {
            let t = codes.len() - 1;
            // Ascending per channel, ties on even channels, signs mixed.
            let sign: Vec<f32> = (0..c).map(|i| if i % 3 == 1 { -1.0 } else { 1.0 }).collect();
            let tau: Vec<f32> = (0..c)
                .flat_map(|ch| {
                    let base: Vec<f32> =
                        (0..t).map(|l| if ch % 2 == 0 && l < 2 { 0.25 } else { 0.25 * l as f32 }).collect();
                    let sg = if ch % 3 == 1 { -1.0 } else { 1.0 };
                    // Signed thresholds ascend: τ itself descends where the sign is negative.
                    base.into_iter().map(move |b| sg * b).collect::<Vec<_>>()
                })
                .collect();
            let q = ChannelQuant { sign: sign.clone(), tau: tau.clone(), codes: codes.clone() };
            let (h, w) = (3, 5);
            let pick =
                [0.0f32, 0.25, 0.5, -0.25, 0.75, 1.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.3, 3.9];
            let x: Vec<f32> = (0..h * w * c).map(|_| pick[rnd() % pick.len()]).collect();
            let ab: Vec<f32> = (0..ka).map(|j| (1 << j) as f32).collect();
            let wt: Vec<f32> = (0..16 * c * 9).map(|_| (rnd() % 7) as f32 - 3.0).collect();
            let conv = BitConv::pack(16, c, 3, 1, &wt, &[1.0; 16]).unwrap();
            let mut unsorted = tau.clone();
            if t > 1 {
                unsorted.swap(t, t + 1); // channel 1's first two
            }
            let mut nan = tau.clone();
            nan[t * (c - 1)] = f32::NAN;
            for (name, q) in [
                ("ascending", q.clone()),
                ("unsorted", ChannelQuant { tau: unsorted, ..q.clone() }),
                ("nan", ChannelQuant { tau: nan, ..q.clone() }),
            ] {
                let planes = Planes::quantize_with(Isa::Portable, &x, h, w, &q).unwrap();
                for isa in isas() {
                    let want = conv.forward(&planes, &ab, isa).unwrap();
                    let got = conv.forward_f32(&x, h, w, &q, &ab, isa).unwrap();
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()) && got.len() == want.len(),
                        "{name} codes {codes:?} c={c} {isa:?}"
                    );
                }
            }
        }
    }
}

/// A zero BN scale makes a channel's code constant; its thresholds must still be finite (model files hold only
/// finite values) and decide the same way for every finite input.
#[test]
fn zero_bn_scale_folds_to_finite_thresholds() {
    let lv = lq_quant::Levels::from_basis(&[0.5, 1.0], lq_quant::CodeSet::Binary).unwrap();
    let q = lq_engine::ChannelQuant::fold(&lv, &[0.0, 0.0, 2.0], &[2.0, -1.0, 0.0]);
    assert!(q.tau.iter().all(|t| t.is_finite()), "{:?}", q.tau);
    // Channel 0: the output 2.0 is above every threshold; channel 1: -1 is below all.
    assert!(q.tau[..3].iter().all(|&t| t == -f32::MAX) && q.tau[3..6].iter().all(|&t| t == f32::MAX));
    assert_eq!(&q.tau[6..], &[0.125, 0.375, 0.625]);
}

/// The safe door refuses operands that do not fit the conv instead of reading past them (an empty weight slice
/// or plane buffer, mismatched channels, planes vs basis, a map smaller than the kernel).
#[test]
fn bad_operands_are_errors() {
    assert!(BitConv::pack(16, 16, 3, 1, &[], &[0.5; 16]).is_err());
    assert!(BitConv::pack(16, 16, 3, 1, &vec![0.1; 16 * 16 * 9], &[]).is_err());
    assert!(BitConv::pack(0, 16, 3, 1, &[], &[]).is_err());
    let conv = BitConv::pack(16, 16, 3, 1, &vec![0.1; 16 * 16 * 9], &[0.5; 16]).unwrap();
    let lv = Levels::from_basis(&[1.0, 2.0], CodeSet::Binary).unwrap();
    let q = ChannelQuant::fold(&lv, &[1.0; 16], &[0.0; 16]);
    let good = Planes::quantize(&[1.0; 4 * 4 * 16], 4, 4, &q).unwrap();
    for isa in isas() {
        assert!(conv.forward(&good, &[1.0, 2.0], isa).is_ok());
        let empty = Planes { data: vec![], ..good.clone() };
        assert!(conv.forward(&empty, &[1.0, 2.0], isa).is_err(), "empty planes");
        assert!(conv.forward(&Planes { c: 32, ..good.clone() }, &[1.0, 2.0], isa).is_err(), "channels");
        assert!(conv.forward(&good, &[1.0], isa).is_err(), "basis vs planes");
        assert!(conv.forward_f32(&[1.0; 10], 4, 4, &q, &[1.0, 2.0], isa).is_err(), "short map");
        assert!(conv.forward_f32(&[], 0, 0, &q, &[1.0, 2.0], isa).is_err(), "empty map");
        let bad_q = ChannelQuant { codes: vec![0, 1, 2], ..q.clone() };
        assert!(conv.forward_f32(&[1.0; 4 * 4 * 16], 4, 4, &bad_q, &[1.0, 2.0], isa).is_err(), "3 codes");
    }
    let k5 = BitConv::pack(16, 16, 5, 1, &vec![0.1; 16 * 16 * 25], &[0.5; 16]).unwrap();
    let one = Planes::quantize(&[1.0; 16], 1, 1, &q).unwrap();
    assert!(k5.forward(&one, &[1.0, 2.0], Isa::Portable).is_ok(), "padding 2 covers a 1x1 map");
    assert!(Planes::quantize(&[1.0; 15], 1, 1, &q).is_err());
}
