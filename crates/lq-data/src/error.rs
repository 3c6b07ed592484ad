//! The one error type of `lq-data`.
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Reading or preparing data failed. Every variant names the file (`TooManyBad`: the first bad one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{path}: {cause}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error: shown in the message, deliberately not a `source()`, so printing the chain
        /// (`anyhow`'s `{:#}`) does not repeat it ("X: X").
        cause: std::io::Error,
    },
    /// The file's contents are not what the format requires.
    #[error("{path}: {why}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong, with the byte offset where it helps.
        why: String,
    },
    /// More files failed to load than the configured fraction allows (the run stops).
    #[error(
        "{bad} of {total} images could not be loaded (more than the allowed fraction {max_fraction}); first: {first}"
    )]
    TooManyBad {
        /// Bad images so far this epoch.
        bad: usize,
        /// Images in the dataset.
        total: usize,
        /// The configured limit.
        max_fraction: f64,
        /// The first failure (names its file).
        first: String,
    },
    /// A dataset file is missing (offline download, wrong folder).
    #[error("{path}: missing; {hint}")]
    Missing {
        /// Expected file.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, cause: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), cause }
    }
    pub(crate) fn format(path: &std::path::Path, why: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), why: why.into() }
    }
}
