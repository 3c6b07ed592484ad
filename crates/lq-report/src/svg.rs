//! Small hand-written SVG line charts for the HTML report: shared axes, nice ticks, a legend, and a `<title>` on
//! each line so hovering names it (no script). Text uses the page's font; nothing is fetched.

use std::fmt::Write;

/// Colours of successive series (Tableau 10).
pub const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend and hover name.
    pub name: String,
    /// `(x, y)` points; non-finite ones are skipped (and break the line).
    pub points: Vec<(f64, f64)>,
    /// CSS colour.
    pub color: String,
}

/// A line chart.
#[derive(Clone, Debug)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// Logarithmic y axis (values ≤ 0 are skipped).
    pub log_y: bool,
    /// Draw the legend (turn off for many series; hovering still names each line).
    pub legend: bool,
    /// Width and height of the view box (the SVG scales to its container).
    pub size: (f64, f64),
}

/// Escapes text for XML/HTML content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// About `n` round tick values covering `[lo, hi]`.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart<'_> {
    /// The chart as an `<svg>` element with a `viewBox`, ready to inline in HTML.
    pub fn render(&self, series: &[Series]) -> String {
        let (w, h) = self.size;
        let legend_rows = if self.legend { series.len().div_ceil(3) } else { 0 };
        let (left, right, top) = (58.0, 14.0, 28.0);
        let bottom = 40.0 + 16.0 * legend_rows as f64;
        let (pw, ph) = (w - left - right, h - top - bottom);
        let tf = |y: f64| if self.log_y { y.log10() } else { y };
        let pts: Vec<(f64, f64)> = series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0))
            .map(|(x, y)| (x, tf(y)))
            .collect();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{t}</title><text x="{cx}" y="18" text-anchor="middle" class="ct">{t}</text>"#,
            t = escape(self.title),
            cx = w / 2.0
        );
        if pts.is_empty() {
            let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">no data yet</text></svg>"#, w / 2.0, h / 2.0);
            return s;
        }
        let (mut x0, mut x1, mut y0, mut y1) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(a, b, c, d), &(x, y)| {
                (a.min(x), b.max(x), c.min(y), d.max(y))
            });
        if x1 <= x0 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if y1 <= y0 {
            let pad = y0.abs().max(1e-9) * 0.05;
            (y0, y1) = (y0 - pad, y1 + pad);
        }
        let pad = (y1 - y0) * 0.05;
        let (y0, y1) = (y0 - pad, y1 + pad);
        let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
        let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
        // Grid and ticks.
        let yt = if self.log_y {
            (y0.ceil() as i64..=y1.floor() as i64).map(|e| e as f64).collect::<Vec<_>>()
        } else {
            ticks(y0, y1, 5)
        };
        for t in yt {
            let text = if self.log_y { label(10f64.powf(t)) } else { label(t) };
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{x2}" y1="{y}" y2="{y}" stroke="#e4e4e4"/><text x="{tx}" y="{ty}" text-anchor="end" class="tk">{text}</text>"##,
                x2 = left + pw,
                y = py(t),
                tx = left - 6.0,
                ty = py(t) + 4.0
            );
        }
        for t in ticks(x0, x1, 6) {
            let _ = write!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{y1}" y2="{y2}" stroke="#999"/><text x="{x}" y="{ty}" text-anchor="middle" class="tk">{text}</text>"##,
                x = px(t),
                y1 = top + ph,
                y2 = top + ph + 4.0,
                ty = top + ph + 16.0,
                text = label(t)
            );
        }
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{cx}" y="{ly}" text-anchor="middle" class="tk">{xl}</text><text transform="translate(12 {cy}) rotate(-90)" text-anchor="middle" class="tk">{yl}</text>"##,
            cx = left + pw / 2.0,
            ly = top + ph + 32.0,
            xl = escape(self.x_label),
            cy = top + ph / 2.0,
            yl = escape(self.y_label)
        );
        for se in series {
            let mut d = String::new();
            let mut pen_up = true;
            for &(x, y) in &se.points {
                if !(x.is_finite() && y.is_finite()) || (self.log_y && y <= 0.0) {
                    pen_up = true;
                    continue;
                }
                let _ = write!(d, "{}{:.1},{:.1} ", if pen_up { "M" } else { "L" }, px(x), py(tf(y)));
                pen_up = false;
            }
            let dot = if se.points.len() == 1 {
                let (x, y) = se.points[0];
                format!(r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(x), py(tf(y)), se.color)
            } else {
                String::new()
            };
            let _ = write!(
                s,
                r#"<g><title>{n}</title><path d="{d}" fill="none" stroke="{c}" stroke-width="1.6"/>{dot}</g>"#,
                n = escape(&se.name),
                d = d.trim_end(),
                c = se.color
            );
        }
        if self.legend {
            for (i, se) in series.iter().enumerate() {
                let (lx, ly) = (left + (i % 3) as f64 * pw / 3.0, top + ph + 48.0 + 16.0 * (i / 3) as f64);
                let _ = write!(
                    s,
                    r#"<rect x="{lx}" y="{ry}" width="12" height="4" fill="{c}"/><text x="{tx}" y="{ly}" class="tk">{n}</text>"#,
                    ry = ly - 6.0,
                    c = se.color,
                    tx = lx + 16.0,
                    n = escape(&se.name)
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}
