//! The one error type of `lq-train`.
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Training failed; every variant says where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Quantizer math rejected its input.
    #[error("quantizer {layer}: {source}")]
    Quant {
        /// Layer name.
        layer: String,
        /// Underlying error.
        source: lq_quant::Error,
    },
    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] lq_data::Error),
    /// Data-parallel training failed: joining the group, a collective (a rank died or timed out), or ranks that
    /// disagree.
    #[error("data-parallel: {0}")]
    Dist(String),
    /// A configuration key is unknown or its value invalid.
    #[error("config: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// File concerned.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The test loss or a weight became NaN or infinite at the end of an epoch although every training loss was
    /// finite (an exploding run); the last good checkpoint is kept.
    #[error(
        "the run diverged in epoch {epoch}: test loss {test_loss}, or a weight is not finite; stopping \
         (last good checkpoint kept)"
    )]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// The test loss.
        test_loss: f64,
    },
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("loss is not finite ({loss}) at epoch {epoch}, step {step}; stopping (last good checkpoint kept)")]
    NonFiniteLoss {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// The loss value.
        loss: f64,
    },
}

impl Error {
    pub(crate) fn file(path: &std::path::Path, why: impl std::fmt::Display) -> Self {
        Error::File { path: path.to_path_buf(), why: why.to_string() }
    }
}
