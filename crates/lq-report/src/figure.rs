//! Figure I of the supplement: per layer, the float values as an equal-width histogram with the learned levels as
//! orange diamonds ("before"), and one bar per level holding every value quantized to it ("after"). The grid has
//! the weight layers on the top row and the activation layers on the bottom row.
//!
//! Drawn with plotters into a PNG (bitmap backend, encoded with `png`) and an SVG, with text laid out by ab_glyph
//! from the DejaVu Sans file this crate ships: no system font or library is used.

use crate::error::{Error, Result};
use crate::stats::{Kind, LayerStats, Panel, StatsFile};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The only font: DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Family name the figures use; the SVG's `font-family` falls back to the viewer's sans-serif.
const FAMILY: &str = "sans-serif";
/// Colour of the level diamonds (the supplement's orange).
pub const LEVEL_COLOR: RGBColor = RGBColor(255, 127, 14);
const BAR_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Height of the title strip above the panels, in pixels.
pub const TITLE_HEIGHT: u32 = 40;

/// Panel size of the figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FigureOptions {
    /// Width of one panel (before or after), pixels.
    pub panel_width: u32,
    /// Height of one panel, pixels.
    pub panel_height: u32,
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions { panel_width: 400, panel_height: 300 }
    }
}

impl FigureOptions {
    /// Pixel size of a grid with `cols` layers per row and `rows` rows: `(2·cols·panel_width,
    /// rows·panel_height + TITLE_HEIGHT)`.
    pub fn size(&self, cols: usize, rows: usize) -> (u32, u32) {
        (2 * cols.max(1) as u32 * self.panel_width, rows.max(1) as u32 * self.panel_height + TITLE_HEIGHT)
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            unreachable!("the shipped DejaVu Sans parses");
        }
    });
}

/// Writes `figure-1.png` / `figure-1.svg` (the grid of every layer in `stats`: weights on top, activations below)
/// and `layer-NAME.png` / `.svg` for each layer into `dir`; returns the paths written.
pub fn write_figures(stats: &StatsFile, dir: &Path, opts: &FigureOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights: Vec<&LayerStats> = stats.layers.iter().filter(|l| l.kind == Kind::Weight).collect();
    let acts: Vec<&LayerStats> = stats.layers.iter().filter(|l| l.kind == Kind::Activation).collect();
    let rows: Vec<Vec<&LayerStats>> = [weights, acts].into_iter().filter(|r| !r.is_empty()).collect();
    let title = format!(
        "{} {}/{} bits: weights (top) and activations (bottom), before | after quantization",
        stats.model, stats.w_bits, stats.a_bits
    );
    let mut out = write_pair(dir, "figure-1", &title, &rows, opts)?;
    for l in &stats.layers {
        let title = format!("{} {}/{} bits: {}", stats.model, stats.w_bits, stats.a_bits, l.name);
        let stem = format!("layer-{}", file_stem(&l.name));
        out.extend(write_pair(dir, &stem, &title, &[vec![l]], opts)?);
    }
    Ok(out)
}

/// A layer name made safe as a file name (`stage1.0/conv1` → `stage1.0_conv1`).
pub fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

fn write_pair(
    dir: &Path,
    stem: &str,
    title: &str,
    rows: &[Vec<&LayerStats>],
    opts: &FigureOptions,
) -> Result<Vec<PathBuf>> {
    register_font();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let (w, h) = opts.size(cols, rows.len());
    let draw_err = |e: String| Error::Draw { what: stem.to_string(), why: e };
    let mut svg = String::new();
    draw_grid(SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area(), title, rows).map_err(draw_err)?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    draw_grid(BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(), title, rows).map_err(draw_err)?;
    let (png_path, svg_path) = (dir.join(format!("{stem}.png")), dir.join(format!("{stem}.svg")));
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;
    std::fs::write(&png_path, encode_png(&rgb, w, h).map_err(|e| Error::format(&png_path, e))?)
        .map_err(|e| Error::io(&png_path, e))?;
    Ok(vec![png_path, svg_path])
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(bytes)
}

type DrawResult = std::result::Result<(), String>;

fn draw_grid<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, rows: &[Vec<&LayerStats>]) -> DrawResult {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    top.titled(title, (FAMILY, 18)).map_err(e)?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let cells = body.split_evenly((rows.len().max(1), 2 * cols));
    for (r, row) in rows.iter().enumerate() {
        for (c, layer) in row.iter().enumerate() {
            draw_before(&cells[r * 2 * cols + 2 * c], layer)?;
            draw_after(&cells[r * 2 * cols + 2 * c + 1], layer)?;
        }
    }
    root.present().map_err(e)
}

fn what(l: &LayerStats) -> String {
    match (l.kind, l.panel.channel) {
        (Kind::Weight, Some(c)) => format!("{} weights, channel {c}", l.name),
        (Kind::Weight, None) => format!("{} weights", l.name),
        (Kind::Activation, _) => format!("{} activations", l.name),
    }
}

/// Upper end of the y axis: a bar more than 4x the next one (the exact zeros of ReLU outputs) is cut off and
/// labelled, so the rest of the distribution stays readable.
fn y_top(fractions: &[f64]) -> f64 {
    let mut s: Vec<f64> = fractions.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let (first, second) = (s.first().copied().unwrap_or(0.0), s.get(1).copied().unwrap_or(0.0));
    let top = if second > 0.0 && first > 4.0 * second { 1.6 * second } else { 1.12 * first };
    if top > 0.0 {
        top
    } else {
        1.0
    }
}

/// An orange diamond standing on the x axis at data coordinate `$at` (bottom tip on the axis, 12 px tall).
macro_rules! diamond {
    ($at:expr) => {
        EmptyElement::at($at) + Polygon::new(vec![(0, -12), (6, -6), (0, 0), (-6, -6)], LEVEL_COLOR.filled())
    };
}

fn percent(v: &f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// An axis tick label with as many decimals as a sixth of the axis span needs (`-0.00` prints as `0`).
fn tick(v: f64, span: f64) -> String {
    let decimals = (-(span / 6.0).log10().floor()).clamp(0.0, 8.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        "0".into()
    } else {
        s
    }
}

/// A level value in three significant digits.
fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.*}", (2 - a.log10().floor() as i32).clamp(2, 6) as usize)
    }
}

fn draw_before<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, l: &LayerStats) -> DrawResult {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let p: &Panel = &l.panel;
    let h = &p.histogram;
    let n = h.total().saturating_sub(h.non_finite).max(1) as f64;
    let fr: Vec<f64> = h.counts.iter().map(|&c| c as f64 / n).collect();
    let top = y_top(&fr);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: float values", what(l)), (FAMILY, 14))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(46)
        .build_cartesian_2d(h.lo..h.hi, 0.0..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(6)
        .y_labels(5)
        .x_label_formatter(&|v| tick(*v, h.hi - h.lo))
        .y_label_formatter(&percent)
        .x_desc("value")
        .y_desc("share of values")
        .label_style((FAMILY, 11))
        .axis_desc_style((FAMILY, 12))
        .draw()
        .map_err(e)?;
    let bars = fr
        .iter()
        .enumerate()
        .map(|(i, &f)| Rectangle::new([(h.edge(i), 0.0), (h.edge(i + 1), f.min(top))], BAR_COLOR.mix(0.75).filled()));
    chart.draw_series(bars).map_err(e)?;
    let cut = fr.iter().enumerate().filter(|(_, &f)| f > top).map(|(i, &f)| {
        let x = (h.edge(i) + h.edge(i + 1)) / 2.0;
        EmptyElement::at((x, top)) + Text::new(format!("{:.0}%", f * 100.0), (4, 2), (FAMILY, 11))
    });
    chart.draw_series(cut).map_err(e)?;
    chart.draw_series(p.levels.iter().map(|&q| diamond!((q as f64, 0.0)))).map_err(e)?;
    Ok(())
}

fn draw_after<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, l: &LayerStats) -> DrawResult {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let p: &Panel = &l.panel;
    let levels = p.levels.len();
    let top = 1.12 * p.fractions.iter().fold(0.0f64, |m, &f| m.max(f)).max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("after: {} levels, MSE {:.3e}", levels, p.mse.learned), (FAMILY, 14))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(46)
        .build_cartesian_2d(-0.5..levels as f64 - 0.5, 0.0..top)
        .map_err(e)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < levels {
            short(p.levels[i as usize] as f64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(levels + 1)
        .y_labels(5)
        .x_label_formatter(&label)
        .y_label_formatter(&percent)
        .x_desc("quantization level")
        .y_desc("share of values")
        .label_style((FAMILY, 10))
        .axis_desc_style((FAMILY, 12))
        .draw()
        .map_err(e)?;
    let bars = p
        .fractions
        .iter()
        .enumerate()
        .map(|(i, &f)| Rectangle::new([(i as f64 - 0.4, 0.0), (i as f64 + 0.4, f)], BAR_COLOR.mix(0.75).filled()));
    chart.draw_series(bars).map_err(e)?;
    chart.draw_series((0..levels).map(|i| diamond!((i as f64, 0.0)))).map_err(e)?;
    Ok(())
}
