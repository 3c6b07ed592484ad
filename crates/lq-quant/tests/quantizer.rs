//! Properties of the LQ quantizer against the brute-force oracle in `lq_quant::naive`.
use lq_quant::{
    baselines, naive, quantize, quantize_on, quantize_relu_on, quantize_relu_with, quantize_with, ste_mask, CodeSet,
    Error, Isa, Levels, Moments, Parallel, QemState, Rayon, DEFAULT_RIDGE,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const SETS: [CodeSet; 2] = [CodeSet::Signed, CodeSet::Binary];

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// One raw QEM alternation without the moving average: encode with `basis`, return (mse, LS basis).
fn alternate(basis: &[f32], set: CodeSet, x: &[f32], ridge: f64) -> (f64, Vec<f64>) {
    let lv = Levels::from_basis(basis, set).unwrap();
    let mut y = vec![0.0; x.len()];
    let m = quantize(&[lv], x, &mut y, None, true).unwrap().unwrap();
    (m[0].mse(basis, set), m[0].solve(set, basis, ridge).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Encoding picks a nearest level (up to f32 rounding of the midpoints) for every K and both code sets.
    #[test]
    fn encode_is_nearest_level(k in 1u32..=8, signed in any::<bool>(), seed in any::<u64>(),
                               xs in prop::collection::vec(-4.0f32..4.0, 1..64)) {
        let set = if signed { CodeSet::Signed } else { CodeSet::Binary };
        let mut r = rng(seed);
        let basis: Vec<f32> = (0..k).map(|_| r.gen_range(0.01f32..1.5)).collect();
        let lv = Levels::from_basis(&basis, set).unwrap();
        for &x in &xs {
            let (q_best, _) = naive::nearest(&basis, set, x);
            let l = lv.index(x);
            let q = lv.levels()[l];
            prop_assert!((x - q).abs() <= (x - q_best).abs() + 1e-5, "x={x} got {q} best {q_best}");
            // The code written for that level really produces it.
            let c = lv.codes()[l] as usize;
            let q_code: f64 = basis.iter().enumerate().map(|(j, &v)| set.coeff(c, j) * v as f64).sum();
            prop_assert!((q_code as f32 - q).abs() <= 1e-5);
        }
    }

    /// After a basis step the LS solution is optimal for its codes: no perturbation lowers the ridge objective.
    #[test]
    fn ls_step_is_optimal(k in 1u32..=4, signed in any::<bool>(), seed in any::<u64>()) {
        let set = if signed { CodeSet::Signed } else { CodeSet::Binary };
        let mut r = rng(seed);
        let x: Vec<f32> = (0..300).map(|_| if signed { r.gen_range(-1.0f32..1.0) } else { r.gen_range(0.0f32..2.0) }).collect();
        let v_old = QemState::activation(k).unwrap().basis;
        let lv = Levels::from_basis(&v_old, set).unwrap();
        let mut y = vec![0.0; x.len()];
        let mut codes = vec![0u8; x.len()];
        let m = quantize(&[lv], &x, &mut y, Some(&mut codes), true).unwrap().unwrap();
        let v = m[0].solve(set, &v_old, DEFAULT_RIDGE).unwrap();
        let obj = |v: &[f64]| naive::sse(v, set, &x, &codes) + DEFAULT_RIDGE * v.iter().zip(&v_old).map(|(a, &b)| (a - b as f64).powi(2)).sum::<f64>();
        let best = obj(&v);
        for _ in 0..20 {
            let p: Vec<f64> = v.iter().map(|a| a + r.gen_range(-1e-3..1e-3)).collect();
            prop_assert!(obj(&p) >= best - 1e-9 * best.max(1.0));
        }
    }

    /// Full alternations (encode, then LS) never raise the quantization error on a fixed tensor.
    #[test]
    fn alternation_is_monotone(k in 1u32..=4, signed in any::<bool>(), seed in any::<u64>()) {
        let set = if signed { CodeSet::Signed } else { CodeSet::Binary };
        let mut r = rng(seed);
        let x: Vec<f32> = (0..500).map(|_| { let g: f32 = (0..4).map(|_| r.gen::<f32>()).sum::<f32>() - 2.0; if signed { g } else { g.max(0.0) } }).collect();
        let mut basis = if signed { QemState::weight(k, 1, 9).unwrap().basis } else { QemState::activation(k).unwrap().basis };
        let mut prev = f64::INFINITY;
        for _ in 0..8 {
            let (mse, v) = alternate(&basis, set, &x, DEFAULT_RIDGE);
            prop_assert!(mse <= prev * (1.0 + 1e-6) + 1e-12, "mse rose from {prev} to {mse}");
            prev = mse;
            basis = v.iter().map(|&a| a as f32).collect();
        }
    }

    /// The fused multi-threaded pass equals the simple pass bit for bit (sums to f64 rounding), rows included.
    #[test]
    fn fused_equals_simple(k in 1u32..=8, signed in any::<bool>(), rows in 1usize..4, seed in any::<u64>(), n in 1usize..300) {
        let set = if signed { CodeSet::Signed } else { CodeSet::Binary };
        let mut r = rng(seed);
        let x: Vec<f32> = (0..rows * n).map(|_| r.gen_range(-3.0f32..3.0)).collect();
        let levels: Vec<Levels> = (0..rows).map(|_| {
            let b: Vec<f32> = (0..k).map(|_| r.gen_range(0.05f32..1.0)).collect();
            Levels::from_basis(&b, set).unwrap()
        }).collect();
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_available()) {
        let (mut y1, mut c1) = (vec![0.0; x.len()], vec![0u8; x.len()]);
        let m1 = quantize_with(isa, &levels, &x, &mut y1, Some(&mut c1), true).unwrap().unwrap();
        // Without statistics (the evaluation path, its own kernels): the same values and codes.
        let (mut y0, mut c0) = (vec![0.0; x.len()], vec![0u8; x.len()]);
        prop_assert!(quantize_with(isa, &levels, &x, &mut y0, Some(&mut c0), false).unwrap().is_none());
        prop_assert_eq!(&y0, &y1);
        prop_assert_eq!(&c0, &c1);
        for (row, lv) in levels.iter().enumerate() {
            let s = row * n..(row + 1) * n;
            let (mut y2, mut c2, mut m2) = (vec![0.0; n], vec![0u8; n], Moments::new(k));
            lv.quantize(&x[s.clone()], &mut y2, Some(&mut c2), Some(&mut m2)).unwrap();
            prop_assert_eq!(&y1[s.clone()], &y2[..]);
            prop_assert_eq!(&c1[s], &c2[..]);
            prop_assert_eq!(&m1[row].count, &m2.count);
            for (a, b) in m1[row].sum.iter().zip(&m2.sum) {
                prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()));
            }
            prop_assert!((m1[row].sum_sq - m2.sum_sq).abs() <= 1e-12 * (1.0 + m2.sum_sq));
        }
        }
    }
}

/// The kernels `test` can run here: Portable, plus AVX2 and AVX-512 where this CPU has them (passing one on a CPU
/// without it is not a test). A missing one prints a SKIP line that test capture does not hide.
fn isas(test: &str) -> Vec<Isa> {
    use std::io::Write;
    let (have, missing): (Vec<Isa>, Vec<Isa>) =
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().partition(|i| i.is_available());
    for m in missing {
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {m:?} cases (this CPU lacks it)");
    }
    have
}

/// Inputs larger than one parallel chunk (65536) are split and merged in order: same result as one pass.
#[test]
fn fused_large_tensor_matches_simple() {
    let mut r = rng(7);
    let x: Vec<f32> = (0..200_003).map(|_| r.gen_range(0.0f32..2.0)).collect();
    let isas = isas("fused_large_tensor_matches_simple");
    let cases = [(2, Isa::Portable), (2, Isa::Avx2), (4, Isa::Avx2), (2, Isa::Avx512), (4, Isa::Avx512)];
    for (k, isa) in cases.into_iter().filter(|c| isas.contains(&c.1)) {
        let lv = Levels::from_basis(&QemState::activation(k).unwrap().basis, CodeSet::Binary).unwrap();
        let (mut y1, mut c1) = (vec![0.0; x.len()], vec![0u8; x.len()]);
        let m1 = quantize_with(isa, std::slice::from_ref(&lv), &x, &mut y1, Some(&mut c1), true).unwrap().unwrap();
        let (mut y2, mut c2, mut m2) = (vec![0.0; x.len()], vec![0u8; x.len()], Moments::new(k));
        lv.quantize(&x, &mut y2, Some(&mut c2), Some(&mut m2)).unwrap();
        assert_eq!(y1, y2);
        assert_eq!(c1, c2, "{isa:?} K={k}: codes across blocks and chunks");
        assert_eq!(m1[0].count, m2.count);
        assert!(m1[0].sum.iter().zip(&m2.sum).all(|(a, b)| (a - b).abs() <= 1e-9 * (1.0 + b.abs())));
    }
}

/// An executor that runs only some items, or some twice, changes nothing: skipped items run on the caller, a
/// second run of an item is a no-op.
#[test]
fn any_executor_gives_the_rayon_result() {
    struct Odd; // runs every odd item twice and skips the even ones
    impl Parallel for Odd {
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            (1..n).step_by(2).chain((1..n).step_by(2)).for_each(f);
        }
    }
    let mut r = rng(5);
    let x: Vec<f32> = (0..300_007).map(|_| r.gen_range(-1.0f32..2.0)).collect();
    let lv = [Levels::from_basis(&QemState::activation(2).unwrap().basis, CodeSet::Binary).unwrap()];
    let (mut y1, mut y2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let m1 = quantize_relu_on(&Rayon, &lv, &x, &mut y1, true).unwrap().unwrap();
    let m2 = quantize_relu_on(&Odd, &lv, &x, &mut y2, true).unwrap().unwrap();
    assert_eq!(y1, y2);
    assert_eq!(m1, m2);
    let w: Vec<f32> = x[..64 * 300].to_vec();
    let rows: Vec<Levels> = (0..64).map(|_| Levels::from_basis(&[0.3, 0.6], CodeSet::Signed).unwrap()).collect();
    let (mut c1, mut c2) = (vec![0u8; w.len()], vec![0u8; w.len()]);
    let m1 = quantize_on(&Rayon, &rows, &w, &mut y1[..w.len()], Some(&mut c1), true).unwrap().unwrap();
    let m2 = quantize_on(&Odd, &rows, &w, &mut y2[..w.len()], Some(&mut c2), true).unwrap().unwrap();
    assert_eq!((&y1[..w.len()], c1, m1), (&y2[..w.len()], c2, m2));
}

/// `quantize_relu(x)` is `quantize(max(x, 0))` exactly (values and statistics, every bit width the fused kernels
/// and the fallback cover, every ISA), without the caller materialising the ReLU; NaN and ±∞ stay errors.
#[test]
fn fused_relu_equals_quantizing_the_relu() {
    let mut r = rng(11);
    let x: Vec<f32> = (0..70_001).map(|_| r.gen_range(-2.0f32..2.0)).collect();
    let relu: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
    for isa in isas("fused_relu_equals_quantizing_the_relu") {
        for k in [1, 2, 3, 4, 5] {
            let lv = [Levels::from_basis(&QemState::activation(k).unwrap().basis, CodeSet::Binary).unwrap()];
            let (mut y1, mut y2) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            let m1 = quantize_relu_with(isa, &lv, &x, &mut y1, true).unwrap().unwrap();
            let m2 = quantize_with(isa, &lv, &relu, &mut y2, None, true).unwrap().unwrap();
            assert_eq!(y1, y2, "{isa:?} K={k}");
            assert_eq!(m1[0].count, m2[0].count, "{isa:?} K={k}");
            assert_eq!(m1[0].sum, m2[0].sum, "{isa:?} K={k}");
            assert_eq!(m1[0].sum_sq, m2[0].sum_sq, "{isa:?} K={k}");
            for bad in [f32::NAN, f32::NEG_INFINITY, f32::INFINITY] {
                let mut xb = x[..100].to_vec();
                xb[37] = bad;
                assert!(quantize_relu_with(isa, &lv, &xb, &mut y1[..100], false).is_err(), "{isa:?} K={k} {bad}");
            }
        }
    }
}

/// Zero-debiased EMA: after the first update the basis is the LS solution itself, later ones average.
#[test]
fn ema_first_step_is_exact_solution() {
    let mut r = rng(3);
    let x: Vec<f32> = (0..1000).map(|_| r.gen_range(-0.2f32..0.2)).collect();
    let mut st = QemState::weight(2, 2, 9 * 2).unwrap();
    let lv = st.levels().unwrap();
    let mut y = vec![0.0; x.len()];
    let m = quantize(&lv, &x, &mut y, None, true).unwrap().unwrap();
    let want: Vec<f32> = (0..2)
        .flat_map(|c| m[c].solve(CodeSet::Signed, st.basis_of(c), DEFAULT_RIDGE).unwrap())
        .map(|v| v as f32)
        .collect();
    st.update(&m, DEFAULT_RIDGE).unwrap();
    assert_eq!(st.basis, want);
    assert_eq!(st.steps, 1);
    // Second step with the same statistics: m = 0.9·0.1v1 + 0.1v2 over 1 − 0.81.
    let before = st.clone();
    let v2: Vec<f64> =
        (0..2).flat_map(|c| m[c].solve(CodeSet::Signed, before.basis_of(c), DEFAULT_RIDGE).unwrap()).collect();
    st.update(&m, DEFAULT_RIDGE).unwrap();
    for i in 0..4 {
        let expect = (0.9 * 0.1 * want[i] as f64 + 0.1 * v2[i]) / (1.0 - 0.81);
        assert!((st.basis[i] as f64 - expect).abs() < 1e-6, "{} vs {expect}", st.basis[i]);
    }
}

/// Degenerate tensors still give a finite basis (the ridge keeps G invertible).
#[test]
fn degenerate_inputs_give_finite_basis() {
    let cases: [&[f32]; 4] = [&[0.7; 50], &[0.0; 50], &[0.3], &[0.01, 0.02, 0.015, 0.0]];
    for set in SETS {
        for k in 1..=4 {
            for x in cases {
                let mut st = if set == CodeSet::Binary {
                    QemState::activation(k).unwrap()
                } else {
                    QemState::weight(k, 1, 9).unwrap()
                };
                for _ in 0..3 {
                    let lv = st.levels().unwrap();
                    let mut y = vec![0.0; x.len()];
                    let m = quantize(&lv, x, &mut y, None, true).unwrap().unwrap();
                    st.update(&m, DEFAULT_RIDGE).unwrap();
                    assert!(st.basis.iter().all(|v| v.is_finite()), "{set:?} K={k} x={x:?}: {:?}", st.basis);
                }
            }
        }
    }
}

/// Initial bases are the official ones (spec §2.4).
#[test]
fn official_initial_bases() {
    let a = QemState::activation(2).unwrap().basis;
    assert!((a[0] - 0.44967).abs() < 1e-5 && (a[1] - 0.89933).abs() < 1e-5);
    let l = Levels::from_basis(&QemState::activation(3).unwrap().basis, CodeSet::Binary).unwrap();
    assert!((l.max_level() - 1.349).abs() < 1e-5);
    // Weights: 3×3 conv with 16 outputs, n = 9·16, σ = sqrt(2/n); K=2 gives [0.33725σ, 0.6745σ] per channel.
    let w = QemState::weight(2, 16, 9 * 16).unwrap();
    let s = (2.0f32 / 144.0).sqrt();
    assert_eq!(w.channels(), 16);
    assert!((w.basis_of(15)[0] - 0.33725 * s).abs() < 1e-6 && (w.basis_of(15)[1] - 0.6745 * s).abs() < 1e-6);
}

#[test]
fn bad_input_is_an_error() {
    let lv = Levels::from_basis(&[0.5, 1.0], CodeSet::Binary).unwrap();
    let mut y = [0.0; 3];
    let e = quantize(std::slice::from_ref(&lv), &[1.0, f32::NAN, 0.0], &mut y, None, true).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 1, .. }), "{e}");
    let mut big = vec![0.5f32; 1000];
    big[900] = f32::INFINITY;
    let mut yb = vec![0.0; 1000];
    for isa in isas("bad_input_is_an_error") {
        let e = quantize_with(isa, std::slice::from_ref(&lv), &big, &mut yb, None, false).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 900, .. }), "{isa:?}: {e}");
    }
    assert!(matches!(Levels::from_basis(&[], CodeSet::Binary), Err(Error::BitsOutOfRange(0))));
    assert!(matches!(QemState::activation(9), Err(Error::BitsOutOfRange(9))));
    assert!(matches!(
        quantize(std::slice::from_ref(&lv), &[1.0; 4], &mut y, None, false),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(quantize(&[lv.clone(), lv], &[1.0; 3], &mut y, None, false), Err(Error::Invalid { .. })));
    let m = Moments::new(2);
    assert!(matches!(m.solve(CodeSet::Binary, &[0.5, 1.0], 0.0), Err(Error::Singular { .. })));
}

/// Official tie rule: a value exactly on a threshold takes the lower level.
#[test]
fn ties_go_to_the_lower_level() {
    let lv = Levels::from_basis(&[1.0, 2.0], CodeSet::Signed).unwrap();
    assert_eq!(lv.levels()[lv.index(0.0)], -1.0);
    assert_eq!(lv.levels()[lv.index(2.0)], 1.0);
    assert_eq!(lv.levels()[lv.index(2.000001)], 3.0);
}

#[test]
fn hwgq_levels_and_mask() {
    let h = baselines::hwgq_activation();
    let mut y = [0.0; 5];
    h.quantize(&[-1.0, 0.0, 0.001, 0.9, 9.0], &mut y, None, None).unwrap();
    assert_eq!(y, [0.0, 0.0, 0.538, 1.076, 1.614]);
    assert_eq!(h.basis(), vec![0.538, 1.076]);
    let back = Levels::from_basis(&[0.3, 0.7, 0.1], CodeSet::Signed).unwrap().basis();
    assert!(back.iter().zip([0.3, 0.7, 0.1]).all(|(a, b)| (a - b).abs() < 1e-6), "{back:?}");
    let mut mask = [0.0; 3];
    ste_mask(&[0.5, 1.614, 1.7], h.max_level(), &mut mask).unwrap();
    assert_eq!(mask, [1.0, 1.0, 0.0]);
    assert_eq!(baselines::hwgq_weight_basis(&[-1.0, 3.0]).unwrap(), vec![2.0]);
    let u = Levels::from_basis(&baselines::uniform_activation_basis(2).unwrap(), CodeSet::Binary).unwrap();
    let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
    assert!(u.levels().iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
    let uw = Levels::from_basis(&baselines::uniform_weight_basis(2, &[-0.3, 0.6]).unwrap(), CodeSet::Signed).unwrap();
    assert!((uw.max_level() - 0.6).abs() < 1e-6 && (uw.levels()[0] + 0.6).abs() < 1e-6);
}
