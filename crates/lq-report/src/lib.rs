//! Statistics, figures and reports of lqnets runs, with no libtorch and no system libraries.
//!
//! This crate owns what a person looks at after (or while) training:
//! - [`stats`]: per-layer quantizer statistics. [`LayerStats::weights`] and the streaming [`ActivationCollector`]
//!   count values per learned level, keep an equal-width [`Histogram`] and compare the mean squared error of the
//!   learned quantizer with the official initial one and with uniform ones on the same values; [`StatsFile`] is
//!   `stats.json`.
//! - [`figure`]: the supplement's Figure I from a [`StatsFile`] ([`write_figures`]: `figure-1.png`/`.svg` and one
//!   pair per layer), drawn with plotters and the DejaVu Sans font shipped in `assets/`.
//! - [`run`] and [`report`]: read run directories (`config.toml`, `metrics.jsonl`, optional `stats/`), match them
//!   against the paper's tables ([`paper`]) and render a table as Markdown or CSV, or one self-contained HTML page
//!   with inline SVG charts.
//!
//! ```
//! use lq_quant::{CodeSet, QemState};
//! use lq_report::{ActivationCollector, Options, Range};
//! // A 2-bit activation quantizer with levels {0, 0.5, 1, 1.5}, fed in two chunks.
//! let state = QemState::with_basis(2, CodeSet::Binary, vec![0.5, 1.0]);
//! let mut acc = ActivationCollector::new("act1", &state, Range { min: 0.0, max: 2.0 }, &Options::default())?;
//! acc.push(&[0.0, 0.1, 0.6]);
//! acc.push(&[1.4, 3.0]);
//! let s = acc.finish()?;
//! assert_eq!(s.panel.levels, vec![0.0, 0.5, 1.0, 1.5]);
//! assert_eq!(s.counts, vec![2, 1, 0, 2]);
//! assert_eq!(s.panel.histogram.above, 1); // 3.0 lies past the histogram but is still counted and quantized
//! assert!((s.mse.learned - (0.01 + 0.01 + 0.01 + 2.25) / 5.0).abs() < 1e-6);
//! # Ok::<(), lq_report::Error>(())
//! ```
#![deny(missing_docs)]

pub use error::{Error, Result};
pub use figure::{write_figures, FigureOptions};
pub use hist::{Histogram, Range};
pub use paper::{compare, Match, PaperRow};
pub use report::{render, write as write_report, Format, Summary};
pub use run::{Epoch, Run, RunConfig};
pub use stats::{ActivationCollector, Kind, LayerStats, Mse, Options, Panel, StatsFile};

mod error;
pub mod figure;
pub mod hist;
pub mod paper;
pub mod report;
pub mod run;
pub mod stats;
pub mod svg;
