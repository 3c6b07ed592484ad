//! The one error type of `lq-engine`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Loading or running a model failed. Messages name the file and tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read or written.
    #[error("model file {path}: {cause}")]
    Io {
        /// File.
        path: String,
        /// Cause: shown in the message, deliberately not a `source()`, so printing the chain (`anyhow`'s `{:#}`)
        /// does not repeat it ("X: X").
        cause: std::io::Error,
    },
    /// The file is not a valid model file (bad header, missing or mis-shaped tensor, wrong version...).
    #[error("model file {path}: {why}")]
    Format {
        /// File.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Input of the wrong size.
    #[error("input: {0}")]
    Input(String),
    /// Quantizer math rejected the stored bases.
    #[error(transparent)]
    Quant(#[from] lq_quant::Error),
}
