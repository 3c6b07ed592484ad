//! The run report: one row per run (model, data set, bits, method, epochs, accuracies, time, the paper's number
//! where comparable), as Markdown, CSV or one self-contained HTML page with inline SVG charts.

use crate::error::{Error, Result};
use crate::paper::{compare, Match};
use crate::run::{Epoch, Run};
use crate::svg::{escape, Chart, Series, PALETTE};
use std::fmt::Write;
use std::path::Path;

/// Output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A GitHub-flavoured Markdown table plus the problems found.
    Markdown,
    /// One header line and one line per run (RFC 4180 quoting).
    Csv,
    /// One self-contained page: table, curves, quantizer plots, Figure I of runs that have `stats/`.
    Html,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "md" | "markdown" => Ok(Format::Markdown),
            "csv" => Ok(Format::Csv),
            "html" => Ok(Format::Html),
            _ => Err(Error::invalid("--format", format!("unknown format `{s}` (valid: md, csv, html)"))),
        }
    }
}

/// One run's line of the table. Accuracies are percent.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Run directory name.
    pub run: String,
    /// "ResNet-20", ...
    pub model: String,
    /// "CIFAR-10", "Fashion-MNIST (CIFAR layout)", ...
    pub dataset: String,
    /// "W2/A2".
    pub bits: String,
    /// `quant.method`.
    pub method: String,
    /// Epochs logged.
    pub epochs_done: u64,
    /// `optim.epochs`.
    pub epochs_planned: i64,
    /// Best test top-1 over the epochs.
    pub best_top1: Option<f64>,
    /// Test top-1 of the last epoch.
    pub final_top1: Option<f64>,
    /// Best test top-5.
    pub best_top5: Option<f64>,
    /// Test top-5 of the last epoch.
    pub final_top5: Option<f64>,
    /// Sum of the epochs' wall times, seconds.
    pub wall_seconds: f64,
    /// Training images per second of wall time (evaluation included), where the data set size is known.
    pub images_per_second: Option<f64>,
    /// Whether and with what the run is compared.
    pub paper: Match,
    /// Problems met reading the run.
    pub problems: Vec<String>,
}

impl Summary {
    /// The table line of `run`.
    pub fn of(run: &Run) -> Summary {
        let pct = |f: fn(&Epoch) -> Option<f64>| run.epochs.iter().filter_map(f).map(|a| a * 100.0);
        let last = run.epochs.last();
        let wall_seconds: f64 = run.epochs.iter().filter_map(|e| e.seconds).sum();
        let timed = run.epochs.iter().filter(|e| e.seconds.is_some()).count();
        let images_per_second = run
            .config
            .images_per_epoch()
            .filter(|_| wall_seconds > 0.0)
            .map(|n| n as f64 * timed as f64 / wall_seconds);
        Summary {
            run: run.name(),
            model: run.config.model_name(),
            dataset: run.config.dataset_name(),
            bits: run.config.bits_label(),
            method: run.config.method.clone(),
            epochs_done: run.epochs.iter().map(|e| e.epoch).max().unwrap_or(0),
            epochs_planned: run.config.epochs,
            best_top1: pct(|e| e.test_acc).reduce(f64::max),
            final_top1: last.and_then(|e| e.test_acc).map(|a| a * 100.0),
            best_top5: pct(|e| e.test_acc5).reduce(f64::max),
            final_top5: last.and_then(|e| e.test_acc5).map(|a| a * 100.0),
            wall_seconds,
            images_per_second,
            paper: compare(&run.config),
            problems: run.problems.clone(),
        }
    }

    /// True when every planned epoch is logged.
    pub fn finished(&self) -> bool {
        self.epochs_done as i64 >= self.epochs_planned
    }

    /// The paper's top-1 for a comparable run, and `final − paper` once the run has finished its schedule.
    pub fn paper_diff(&self) -> Option<(f64, Option<f64>)> {
        match &self.paper {
            Match::Row(r) => Some((r.top1, self.final_top1.filter(|_| self.finished()).map(|f| f - r.top1))),
            _ => None,
        }
    }

    /// "compared", or why not.
    pub fn note(&self) -> String {
        match &self.paper {
            Match::Row(r) => {
                let mut notes = Vec::new();
                if !self.finished() {
                    notes.push(format!("in progress: compared at epoch {}", self.epochs_planned));
                }
                if !r.verified {
                    notes.push("paper number unverified (spec §4.2)".to_string());
                }
                notes.join("; ")
            }
            Match::NotComparable(why) => format!("not comparable: {why}"),
            Match::NoRow(why) => why.clone(),
        }
    }

    fn cells(&self) -> Vec<String> {
        let pair = |best: Option<f64>, last: Option<f64>| match (best, last) {
            (Some(b), Some(l)) => format!("{b:.2} / {l:.2}"),
            (Some(b), None) => format!("{b:.2} / –"),
            _ => String::new(),
        };
        let (paper, diff) = match self.paper_diff() {
            Some((p, d)) => (format!("{p:.1}"), d.map(|d| format!("{d:+.2}")).unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        vec![
            self.run.clone(),
            self.model.clone(),
            self.dataset.clone(),
            self.bits.clone(),
            self.method.clone(),
            format!("{}/{}", self.epochs_done, self.epochs_planned),
            pair(self.best_top1, self.final_top1),
            pair(self.best_top5, self.final_top5),
            duration(self.wall_seconds),
            self.images_per_second.map(|v| format!("{v:.0}")).unwrap_or_default(),
            paper,
            diff,
            self.note(),
        ]
    }
}

const HEADER: [&str; 13] = [
    "run",
    "model",
    "dataset",
    "W/A",
    "method",
    "epochs",
    "top-1 best / final",
    "top-5 best / final",
    "wall time",
    "img/s",
    "paper top-1",
    "final − paper",
    "note",
];

fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Renders the report of `runs` in `format`.
pub fn render(runs: &[Run], format: Format) -> String {
    let rows: Vec<Summary> = runs.iter().map(Summary::of).collect();
    match format {
        Format::Markdown => markdown(&rows),
        Format::Csv => csv(&rows),
        Format::Html => html(runs, &rows),
    }
}

/// Renders and writes the report atomically (a temporary file renamed over `path`), so a browser reloading the
/// page while a run refreshes it never reads half a file.
pub fn write(runs: &[Run], format: Format, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render(runs, format)).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn markdown(rows: &[Summary]) -> String {
    let mut s = format!("| {} |\n|{}\n", HEADER.join(" | "), "---|".repeat(HEADER.len()));
    for r in rows {
        let cells: Vec<String> = r.cells().iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s.push_str("\nAccuracies in percent on the test set; \"final − paper\" uses the last epoch. ");
    s.push_str("img/s = training images per second of epoch wall time (evaluation included).\n");
    for r in rows.iter().filter(|r| !r.problems.is_empty()) {
        let _ = writeln!(s, "\n{}:", r.run);
        r.problems.iter().for_each(|p| {
            let _ = writeln!(s, "- {p}");
        });
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(rows: &[Summary]) -> String {
    let mut s = HEADER.join(",") + ",problems\n";
    for r in rows {
        let mut cells = r.cells();
        cells[8] = format!("{:.1}", r.wall_seconds); // seconds, machine-readable
        cells.push(r.problems.len().to_string());
        let _ = writeln!(s, "{}", cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
    }
    s
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1rem 1.5rem;\
max-width:1400px;color:#222;line-height:1.4}h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px \
solid #ddd}h3{font-size:1rem}.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem}th,td{padding:\
.3rem .5rem;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}th{background:#f5f5f5;position:\
sticky;top:0}td.l,th.l{text-align:left}td.w{white-space:normal}td.note{white-space:normal;min-width:12rem;text-align:left;color:#555}th{white-space:normal}.neg\
{color:#b00}.pos{color:#070}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,430px),1fr));\
gap:1rem}.small{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.5rem}svg{max-width:100%;\
height:auto;display:block}svg.chart{font-size:11px;font-family:inherit}.ct{font-size:13px;font-weight:600}.tk\
{font-size:11px;fill:#333}.fig{overflow-x:auto;border:1px solid #eee}.fig svg{min-width:1800px}.problems{color:#a40}details{margin:.5rem 0}";

fn html(runs: &[Run], rows: &[Summary]) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"/><title>lqnets report</title><style>{CSS}</style></head><body>\
         <h1>lqnets report: {} run{}</h1>",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    s.push_str("<div class=\"scroll\"><table><thead><tr>");
    for (i, h) in HEADER.iter().enumerate() {
        let _ = write!(s, "<th{}>{}</th>", if i < 5 || i == 12 { " class=\"l\"" } else { "" }, escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for (i, c) in r.cells().iter().enumerate() {
            let class = match i {
                0 | 2 => " class=\"l w\"",
                1..5 => " class=\"l\"",
                11 if c.starts_with('-') => " class=\"neg\"",
                11 if c.starts_with('+') => " class=\"pos\"",
                12 => " class=\"note\"",
                _ => "",
            };
            let _ = write!(s, "<td{class}>{}</td>", escape(c));
        }
        s.push_str("</tr>");
    }
    s.push_str(
        "</tbody></table></div><p>Accuracies in percent on the test set; \u{201c}final − paper\u{201d} uses the last \
         epoch and appears only for a run with the paper's data set, network, bits, method and full schedule. img/s = \
         training images per second of epoch wall time (evaluation included).</p>",
    );
    for r in rows.iter().filter(|r| !r.problems.is_empty()) {
        let _ = write!(s, "<div class=\"problems\"><b>{}</b>: problems reading the run<ul>", escape(&r.run));
        r.problems.iter().for_each(|p| {
            let _ = write!(s, "<li>{}</li>", escape(p));
        });
        s.push_str("</ul></div>");
    }
    curves(&mut s, runs);
    for run in runs {
        run_section(&mut s, run);
    }
    s.push_str("</body></html>\n");
    s
}

fn curves(s: &mut String, runs: &[Run]) {
    let chart =
        |title, y_label, log_y| Chart { title, x_label: "epoch", y_label, log_y, legend: true, size: (520.0, 320.0) };
    let series = |f: &dyn Fn(&Epoch) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| Series {
                name: r.name(),
                points: r.epochs.iter().map(|e| (e.epoch as f64, f(e).unwrap_or(f64::NAN))).collect(),
                color: PALETTE[i % PALETTE.len()].into(),
            })
            .collect()
    };
    s.push_str("<h2>Training curves</h2><div class=\"grid\">");
    s.push_str(&chart("Test top-1 accuracy", "top-1 (%)", false).render(&series(&|e| e.test_acc.map(|a| a * 100.0))));
    s.push_str(&chart("Test loss", "loss", false).render(&series(&|e| e.test_loss)));
    s.push_str(&chart("Training loss", "loss", false).render(&series(&|e| e.train_loss)));
    s.push_str(&chart("Learning rate", "lr (log)", true).render(&series(&|e| e.lr)));
    s.push_str("</div>");
}

/// Per quantizer: mean over channels of each basis component, per epoch.
fn basis_series(run: &Run, name: &str, bits: usize) -> Vec<Series> {
    let per_epoch: Vec<(f64, Vec<f64>)> = run
        .epochs
        .iter()
        .filter_map(|e| e.quantizers.iter().find(|q| q.name == name).map(|q| (e.epoch as f64, q.basis.clone())))
        .collect();
    (0..bits)
        .map(|j| Series {
            name: format!("v{j}"),
            points: per_epoch
                .iter()
                .map(|(x, b)| {
                    let comp: Vec<f64> = b.iter().skip(j).step_by(bits).copied().collect();
                    let mean = if comp.is_empty() || b.len() % bits != 0 {
                        f64::NAN
                    } else {
                        comp.iter().sum::<f64>() / comp.len() as f64
                    };
                    (*x, mean)
                })
                .collect(),
            color: PALETTE[j % PALETTE.len()].into(),
        })
        .collect()
}

fn run_section(s: &mut String, run: &Run) {
    let cfg = &run.config;
    let _ = write!(
        s,
        "<h2>{}</h2><p>{} on {}, {}, method {}, {} planned epochs.</p>",
        escape(&run.name()),
        escape(&cfg.model_name()),
        escape(&cfg.dataset_name()),
        escape(&cfg.bits_label()),
        escape(&cfg.method),
        cfg.epochs
    );
    let names: Vec<String> =
        run.epochs.last().map(|e| e.quantizers.iter().map(|q| q.name.clone()).collect()).unwrap_or_default();
    if !names.is_empty() {
        let mse: Vec<Series> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Series {
                name: n.clone(),
                points: run
                    .epochs
                    .iter()
                    .map(|e| {
                        let m = e.quantizers.iter().find(|q| &q.name == n).and_then(|q| q.mse);
                        (e.epoch as f64, m.unwrap_or(f64::NAN))
                    })
                    .collect(),
                color: PALETTE[i % PALETTE.len()].into(),
            })
            .collect();
        let chart = Chart {
            title: "Quantization MSE per quantizer (hover a line for its name)",
            x_label: "epoch",
            y_label: "MSE (log)",
            log_y: true,
            legend: names.len() <= 9,
            size: (720.0, 320.0),
        };
        let _ = write!(s, "<div class=\"grid\">{}</div>", chart.render(&mse));
        let _ = write!(s, "<details><summary>Basis per quantizer over epochs (mean over channels), {} quantizers</summary><div class=\"small\">", names.len());
        for n in &names {
            let bits = if n.ends_with(".w") { cfg.w_bits } else { cfg.a_bits }.clamp(1, 8) as usize;
            let chart = Chart {
                title: n,
                x_label: "epoch",
                y_label: "basis",
                log_y: false,
                legend: true,
                size: (300.0, 220.0),
            };
            s.push_str(&chart.render(&basis_series(run, n, bits)));
        }
        s.push_str("</div></details>");
    }
    if let Some(stats) = &run.stats {
        s.push_str("<h3>Quantizer fit (stats.json)</h3><div class=\"scroll\"><table><thead><tr><th class=\"l\">layer</th>\
<th class=\"l\">kind</th><th>values</th><th>MSE learned</th><th>MSE initial</th><th>MSE uniform</th><th>MSE uniform, learned range</th>\
<th class=\"l\">learned levels (shown channel)</th></tr></thead><tbody>");
        for l in &stats.layers {
            let levels: Vec<String> = l.panel.levels.iter().map(|v| format!("{v:.3}")).collect();
            let _ = write!(
                s,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{:?}</td><td>{}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td><td class=\"l\">{}</td></tr>",
                escape(&l.name),
                l.kind,
                l.n,
                l.mse.learned,
                l.mse.initial,
                l.mse.uniform,
                l.mse.uniform_span,
                levels.join(" ")
            );
        }
        s.push_str("</tbody></table></div>");
    }
    if let Some(svg) = &run.figure_svg {
        let body = svg.find("<svg").map(|i| &svg[i..]).unwrap_or("");
        let _ = write!(
            s,
            "<h3>Figure I: weights and activations before and after quantization (scroll sideways)</h3><div class=\"fig\">{body}</div>"
        );
    }
}
