//! The one error type of `lq-report`.
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while collecting statistics, drawing or reporting. Messages are lower-case and
/// name the file, layer or field concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error: in the message, deliberately not a `source()` (so `{:#}` does not repeat it).
        cause: std::io::Error,
    },
    /// A file's contents are not what its format requires (TOML, JSON, a missing or mistyped field).
    #[error("{path}: {why}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong, naming the field or line.
        why: String,
    },
    /// An argument that makes no sense (empty range, zero bins, a channel out of range, mismatched histograms).
    #[error("{what}: {why}")]
    Invalid {
        /// Which argument or layer.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// Quantizer math refused its input (bit width, basis).
    #[error("layer {layer}: {cause}")]
    Quant {
        /// Layer concerned.
        layer: String,
        /// The `lq-quant` error.
        cause: lq_quant::Error,
    },
    /// Drawing failed (plotters backend or PNG encoder).
    #[error("drawing {what}: {why}")]
    Draw {
        /// Which figure or panel.
        what: String,
        /// Backend message.
        why: String,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, cause: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), cause }
    }
    pub(crate) fn format(path: &std::path::Path, why: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), why: why.into() }
    }
    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), why: why.into() }
    }
    pub(crate) fn quant(layer: &str, cause: lq_quant::Error) -> Self {
        Error::Quant { layer: layer.to_string(), cause }
    }
}
