//! The deployable side of lqnets: bit-packed LQ layers computed with AND + popcount, pure Rust, no libtorch.
//!
//! # Overview
//! - [`Planes`]: activation codes as bit-planes packed along channels; [`ChannelQuant`] folds BN + ReLU into
//!   per-channel thresholds so a conv output maps straight to codes.
//! - [`BitConv`]: a quantized conv with packed weight planes. `forward(&Planes)` = bit im2col + binary GEMM + LQ
//!   epilogue; `forward_f32` quantizes on the way in, straight into the table kernel's operand where it runs.
//! - [`kernels`]: the binary GEMM: an AVX2 table-lookup kernel ([`kernels::lut`]) for layers with whole
//!   16-channel blocks, an AVX2 popcount kernel for the rest, a portable one without AVX2 (chosen once at run
//!   time; [`Isa`] forces one).
//! - [`naive`]: the dense reference the kernels are tested against.
//! - [`ModelFile`] (the deployable safetensors file) and [`Model`]: the file's network, a list of [`graph::Op`]s,
//!   validated by shape inference and interpreted for end-to-end inference.
//!
//! Identity used (spec §3): `Q(w)·Q(a) = Σ_ij v^w_i v^a_j (2·popc(bw_i ∧ ba_j) − popc(ba_j))`.
#![deny(missing_docs)]

pub use conv::{im2col, patch_bit, patch_words, BitConv, ChannelQuant, Planes};
pub use error::{Error, Result};
pub use graph::{Op, Weights};
pub use kernels::{BitGemm, Isa};
pub use model::{Data, Meta, ModelFile, FORMAT_VERSION};
pub use runtime::Model;

mod conv;
mod error;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod naive;
mod runtime;
mod scratch;
