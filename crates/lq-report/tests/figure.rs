//! Figure I: PNGs decode at the stated size, SVGs parse as XML, the diamonds sit at the stored levels.
mod common;

use common::{act_layer, weight_layer};
use lq_report::{figure::LEVEL_COLOR, ActivationCollector, FigureOptions, LayerStats, Options, Range, StatsFile};
use std::path::{Path, PathBuf};

/// Two weight layers and three activation layers of a "trained" 3-bit network.
pub fn stats_file() -> StatsFile {
    let (w, st) = weight_layer();
    let mut layers = vec![
        LayerStats::weights("stage1.0.conv1", &st, 9, &w, &Options::default()).unwrap(),
        LayerStats::weights("stage2.1.conv2", &st, 9, &w, &Options { channel: 9, ..Options::default() }).unwrap(),
    ];
    for (i, n) in [20_000, 30_000, 40_000].into_iter().enumerate() {
        let (x, st) = act_layer(n);
        let mut c =
            ActivationCollector::new(&format!("stage{}.act", i + 1), &st, Range::of(&x), &Options::default()).unwrap();
        c.push(&x);
        layers.push(c.finish().unwrap());
    }
    StatsFile { model: "ResNet-20".into(), w_bits: 3, a_bits: 3, source: "synthetic".into(), layers }
}

/// Where to write: `LQ_REPORT_KEEP=DIR` keeps the files for a person to look at.
fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("LQ_REPORT_KEEP") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(buf.iter().any(|&b| b != 255), "{} is blank", path.display());
    (info.width, info.height)
}

#[test]
fn figures_are_written_decode_and_have_the_stated_size() {
    let stats = stats_file();
    let (_keep, dir) = out_dir();
    let opts = FigureOptions::default();
    let files = lq_report::write_figures(&stats, &dir, &opts).unwrap();
    assert_eq!(files.len(), 2 + 2 * stats.layers.len());
    // Grid: 3 columns (the longer row), 2 rows.
    assert_eq!(png_size(&dir.join("figure-1.png")), opts.size(3, 2));
    assert_eq!(opts.size(3, 2), (2400, 640));
    assert_eq!(png_size(&dir.join("layer-stage1.0.conv1.png")), opts.size(1, 1));
    for f in files.iter().filter(|f| f.extension().unwrap() == "svg") {
        let text = std::fs::read_to_string(f).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }
}

/// Centres (x) of the orange diamonds of an SVG, in drawing order; a diamond's bottom tip is its second-to-last
/// point... we take the mean x of its points.
fn diamonds(svg: &str) -> Vec<f64> {
    let fill = format!("#{:02X}{:02X}{:02X}", LEVEL_COLOR.0, LEVEL_COLOR.1, LEVEL_COLOR.2);
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("polygon") && n.attribute("fill").is_some_and(|f| f.eq_ignore_ascii_case(&fill)))
        .map(|n| {
            let xs: Vec<f64> = n
                .attribute("points")
                .unwrap()
                .split_whitespace()
                .map(|p| p.split(',').next().unwrap().parse().unwrap())
                .collect();
            xs.iter().sum::<f64>() / xs.len() as f64
        })
        .collect()
}

#[test]
fn level_markers_equal_the_stored_levels() {
    let stats = stats_file();
    let (_keep, dir) = out_dir();
    lq_report::write_figures(&stats, &dir, &FigureOptions::default()).unwrap();
    for l in &stats.layers {
        let svg = std::fs::read_to_string(dir.join(format!("layer-{}.svg", l.name))).unwrap();
        let d = diamonds(&svg);
        let k = l.panel.levels.len();
        // "before" draws its diamonds first (at the levels), then "after" (one per bar).
        assert_eq!(d.len(), 2 * k, "{}", l.name);
        let (px, lv) = (&d[..k], &l.panel.levels);
        // Pixel positions are an increasing affine image of the levels: x = a + b·level, b > 0.
        let b = (px[k - 1] - px[0]) / (lv[k - 1] - lv[0]) as f64;
        assert!(b > 0.0, "{}", l.name);
        for (x, &q) in px.iter().zip(lv) {
            let want = px[0] + b * (q - lv[0]) as f64;
            assert!((x - want).abs() <= 1.0, "{}: diamond at {x}, level {q} maps to {want}", l.name);
        }
    }
}
