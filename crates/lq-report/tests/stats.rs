//! Statistics: histogram bookkeeping, streaming equals one-shot, counts equal lq-quant's code counts, MSEs.
mod common;

use common::{act_layer, gaussian, weight_layer};
use lq_quant::{quantize, CodeSet, Levels, QemState};
use lq_report::{ActivationCollector, Histogram, Kind, LayerStats, Options, Range, StatsFile};

#[test]
fn histogram_counts_sum_to_the_number_of_values() {
    let mut h = Histogram::new(-1.0, 1.0, 10).unwrap();
    let mut x = gaussian(1000, 0.0, 1.0, 3);
    x.extend([f32::NAN, f32::INFINITY, 1.0, -1.0]);
    h.extend(&x);
    assert_eq!(h.total(), x.len() as u64);
    assert_eq!(h.non_finite, 2);
    assert!(h.below > 0 && h.above > 0);
    // The right edge belongs to the last bin, the left edge to the first.
    let mut e = Histogram::new(-1.0, 1.0, 4).unwrap();
    e.extend(&[-1.0, 1.0, 0.0]);
    assert_eq!(e.counts, vec![1, 0, 1, 1]);
}

#[test]
fn histogram_bins_are_equal_width() {
    let mut h = Histogram::new(0.0, 4.0, 4).unwrap();
    h.extend(&[0.5, 1.5, 1.9, 2.0, 3.99]);
    assert_eq!(h.counts, vec![1, 2, 1, 1]);
    assert_eq!(h.edge(2), 2.0);
}

#[test]
fn bad_histograms_are_errors() {
    assert!(Histogram::new(1.0, 1.0, 4).is_err());
    assert!(Histogram::new(0.0, f64::NAN, 4).is_err());
    assert!(Histogram::new(0.0, 1.0, 0).is_err());
    let mut a = Histogram::new(0.0, 1.0, 4).unwrap();
    let err = a.merge(&Histogram::new(0.0, 2.0, 4).unwrap()).unwrap_err().to_string();
    assert!(err.contains("histogram merge"), "{err}");
}

#[test]
fn streaming_equals_one_shot() {
    let (x, st) = act_layer(50_000);
    let range = Range::of(&x);
    let opts = Options::default();
    let mut one = ActivationCollector::new("a", &st, range, &opts).unwrap();
    one.push(&x);
    let one = one.finish().unwrap();
    // Uneven chunks, split over two collectors that are merged.
    let (mut a, mut b) = (
        ActivationCollector::new("a", &st, range, &opts).unwrap(),
        ActivationCollector::new("a", &st, range, &opts).unwrap(),
    );
    for (i, chunk) in x.chunks(777).enumerate() {
        if i % 3 == 0 {
            a.push(chunk)
        } else {
            b.push(chunk)
        }
    }
    a.merge(&b).unwrap();
    let streamed = a.finish().unwrap();
    assert_eq!(streamed.counts, one.counts);
    assert_eq!(streamed.panel.histogram, one.panel.histogram);
    assert_eq!(streamed.n, one.n);
    assert!((streamed.mse.learned - one.mse.learned).abs() <= 1e-12 * one.mse.learned.max(1e-30));
    // Ranges merge like the values: the union of chunk ranges is the range of all.
    let mut r = Range::default();
    x.chunks(1000).for_each(|c| r.merge(&Range::of(c)));
    assert_eq!(r, range);
}

/// Counts per code from lq-quant's fused pass, reordered to sorted levels.
fn code_counts(lv: &Levels, x: &[f32]) -> (Vec<u64>, f64) {
    let mut y = vec![0.0; x.len()];
    let m = quantize(std::slice::from_ref(lv), x, &mut y, None, true).unwrap().unwrap().remove(0);
    (lv.codes().iter().map(|&c| m.count[c as usize]).collect(), m.mse(&lv.basis(), lv.code_set()))
}

#[test]
fn activation_counts_equal_lq_quant_code_counts() {
    let (x, st) = act_layer(20_000);
    let mut c = ActivationCollector::new("a", &st, ActivationCollector::level_range(&st), &Options::default()).unwrap();
    c.push(&x);
    let s = c.finish().unwrap();
    let lv = Levels::from_basis(&st.basis, CodeSet::Binary).unwrap();
    let (counts, mse) = code_counts(&lv, &x);
    assert_eq!(s.counts, counts);
    assert_eq!(s.panel.counts, counts);
    assert_eq!(s.panel.levels, lv.levels());
    // lq-quant's MSE comes from moments (Σx² − 2Σqs + Σnq²): equal up to its cancellation error.
    assert!((s.mse.learned - mse).abs() < 1e-6 * mse, "{} vs {mse}", s.mse.learned);
    assert_eq!(s.n, x.len() as u64);
    assert!((s.fractions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(s.panel.histogram.total(), x.len() as u64);
}

#[test]
fn weight_counts_equal_lq_quant_code_counts_per_channel() {
    let (w, st) = weight_layer();
    let opts = Options { channel: 5, ..Options::default() };
    let s = LayerStats::weights("conv", &st, 9, &w, &opts).unwrap();
    let levels = st.levels().unwrap();
    let per = w.len() / levels.len();
    let mut total = vec![0u64; 8];
    for (c, lv) in levels.iter().enumerate() {
        let (counts, _) = code_counts(lv, &w[c * per..(c + 1) * per]);
        total.iter_mut().zip(&counts).for_each(|(t, n)| *t += n);
        if c == 5 {
            assert_eq!(s.panel.counts, counts);
            assert_eq!(s.panel.levels, lv.levels());
            assert_eq!(s.panel.basis, st.basis_of(5));
        }
    }
    assert_eq!(s.counts, total);
    assert_eq!((s.kind, s.channels, s.bits, s.n), (Kind::Weight, 16, 3, w.len() as u64));
    assert_eq!(s.panel.histogram.total(), per as u64);
}

#[test]
fn learned_quantizer_beats_initial_and_uniform_on_a_trained_layer() {
    let (w, st) = weight_layer();
    let s = LayerStats::weights("conv", &st, 9, &w, &Options::default()).unwrap();
    assert!(s.mse.learned < s.mse.initial, "{:?}", s.mse);
    assert!(s.mse.learned < s.mse.uniform, "{:?}", s.mse);
    // The initial MSE is the official init's error: recompute it independently.
    let init = QemState::weight(3, 1, 9 * 16).unwrap().levels().unwrap().remove(0);
    let per = w.len() / 16;
    let sse: f64 = w.chunks(per).map(|r| code_counts(&init, r).1 * per as f64).sum();
    assert!((s.mse.initial - sse / w.len() as f64).abs() < 1e-6 * s.mse.initial);

    let (x, st) = act_layer(20_000);
    let mut c = ActivationCollector::new("a", &st, Range::of(&x), &Options::default()).unwrap();
    c.push(&x);
    let a = c.finish().unwrap();
    assert!(a.mse.learned < a.mse.initial && a.mse.learned < a.mse.uniform, "{:?}", a.mse);
    let uni = Levels::from_basis(&lq_quant::baselines::uniform_activation_basis(3).unwrap(), CodeSet::Binary).unwrap();
    assert!((a.mse.uniform - code_counts(&uni, &x).1).abs() < 1e-6 * a.mse.uniform);
}

#[test]
fn non_finite_values_are_counted_not_fatal() {
    let (mut x, st) = act_layer(1000);
    x[3] = f32::NAN;
    x[7] = f32::NEG_INFINITY;
    let mut c = ActivationCollector::new("a", &st, Range::of(&x), &Options::default()).unwrap();
    c.push(&x);
    let s = c.finish().unwrap();
    assert_eq!((s.n, s.non_finite), (998, 2));
    assert!(s.mse.learned.is_finite());

    let mut c = ActivationCollector::new("dead", &st, Range::default(), &Options::default()).unwrap();
    c.push(&[f32::NAN; 4]);
    let err = c.finish().unwrap_err().to_string();
    assert!(err.contains("dead") && err.contains("no finite"), "{err}");

    let (mut w, wst) = weight_layer();
    w[0] = f32::NAN;
    let s = LayerStats::weights("conv", &wst, 9, &w, &Options::default()).unwrap();
    assert_eq!(s.non_finite, 1);
}

#[test]
fn bad_layer_arguments_are_errors_naming_the_layer() {
    let (w, st) = weight_layer();
    let e = LayerStats::weights("conv9", &st, 9, &w, &Options { channel: 16, ..Options::default() }).unwrap_err();
    assert!(e.to_string().contains("conv9") && e.to_string().contains("channel 16"), "{e}");
    let e = LayerStats::weights("conv9", &st, 9, &w[..w.len() - 1], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("conv9"), "{e}");
    let act = QemState::activation(2).unwrap();
    assert!(LayerStats::weights("conv9", &act, 9, &w, &Options::default()).is_err());
    let e = ActivationCollector::new("act9", &st, Range::default(), &Options::default()).unwrap_err();
    assert!(e.to_string().contains("act9"), "{e}");
}

#[test]
fn stats_json_round_trips() {
    let (w, st) = weight_layer();
    let file = StatsFile {
        model: "ResNet-20".into(),
        w_bits: 3,
        a_bits: 3,
        source: "test".into(),
        layers: vec![LayerStats::weights("conv", &st, 9, &w, &Options::default()).unwrap()],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = file.write(dir.path()).unwrap();
    assert_eq!(StatsFile::read(&path).unwrap(), file);
    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let e = StatsFile::read(&path).unwrap_err().to_string();
    assert!(e.contains("stats.json"), "{e}");
}
