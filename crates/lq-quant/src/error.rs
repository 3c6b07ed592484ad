//! The one error type of `lq-quant`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in quantizer math. Messages are lower-case and carry the offending values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bit width outside `1..=MAX_BITS`.
    #[error("bit width K = {0} is out of range (supported: 1..=8)")]
    BitsOutOfRange(u32),
    /// An input value is NaN or infinite.
    #[error("{what}: element {index} is not finite ({value})")]
    NonFinite {
        /// Which tensor.
        what: &'static str,
        /// Flat index of the first bad element.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// Two buffers that must agree in length do not.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Length required by the other arguments.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A configuration value that makes no sense (negative ridge, empty tensor where one is required, ...).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The K×K normal equations could not be solved (only possible with a zero ridge).
    #[error("normal equations are singular (pivot {pivot:e} at row {row}); use a ridge > 0")]
    Singular {
        /// Row where elimination failed.
        row: usize,
        /// The pivot found there.
        pivot: f64,
    },
}
