//! The deployable side of lqnets: bit-packed LQ layers computed with AND + popcount, pure Rust, no libtorch.
//!
//! # Overview
//! - [`Planes`]: activation codes as bit-planes packed along channels; [`ChannelQuant`] folds BN + ReLU into
//!   per-channel thresholds so a conv output maps straight to codes (both in the leaf module `layout`, with the
//!   patch geometry [`patch_bit`] / [`patch_words`] / [`out_size`]).
//! - [`BitConv`]: a quantized conv with packed weights, immutable after construction, and the one safe door to
//!   the kernels. `forward(&Planes)` = bit im2col + binary GEMM + LQ epilogue; `forward_f32` quantizes on the way
//!   in, straight into the table or AVX-512 kernel's operand where one runs. Both check their input and return
//!   errors. On the AVX-512 kernel a conv feeding only another quantized conv quantizes its output for it in the
//!   epilogue (no f32 map between them).
//! - The kernels (crate-private): an AVX-512 VPOPCNTDQ popcount kernel for layers whose input channels are a
//!   multiple of 8 where the CPU has it, an AVX2 table-lookup kernel for layers with whole 16-channel blocks, an
//!   AVX2 popcount kernel for the rest, a portable one without AVX2, chosen once at run time; [`Isa`] forces one.
//!   The `internals` feature re-exports them for the benchmarks (module `internals`).
//! - Parallelism: batches run images in parallel on rayon; a single image on several threads runs its layers'
//!   loops on a spinning team of helper threads (module `team`), where its conv → residual add → conv chains also
//!   fuse (the add and the next input map in the conv's tail).
//! - [`naive`]: the dense reference the kernels are tested against.
//! - [`ModelFile`] (the deployable safetensors file) and [`Model`]: the file's network, a list of [`graph::Op`]s,
//!   validated by shape inference and interpreted for end-to-end inference.
//!
//! Identity used (spec §3): `Q(w)·Q(a) = Σ_ij v^w_i v^a_j (2·popc(bw_i ∧ ba_j) − popc(ba_j))`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

// The unit tests share the integration tests' model builders (which name the crate).
#[cfg(test)]
extern crate self as lq_engine;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_nets;

pub use conv::BitConv;
pub use error::{Error, Result};
pub use graph::{Op, Weights};
pub use kernels::Isa;
pub use layout::{out_size, patch_bit, patch_words, ChannelQuant, Planes};
pub use model::{Data, Meta, ModelFile, FORMAT_VERSION};
pub use profile::StepTime;
pub use runtime::Model;

mod conv;
mod error;
pub mod graph;
pub(crate) mod kernels;
mod layout;
pub mod model;
pub mod naive;
mod profile;
mod runtime;
mod scratch;
mod team;

/// Kernel internals for the benchmarks (`--features internals`); not a stable API. These functions panic on
/// operands that disagree with each other instead of returning errors: use [`BitConv`] otherwise.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::conv::im2col;
    pub use crate::kernels::{avx512, lut, BitGemm};
}
