//! Quantization-aware training of LQ-Nets on libtorch through `tch` (CPU here, CUDA where libtorch has it).
//!
//! # Overview
//! - [`quant::Quantizer`]: LQ / uniform / HWGQ quantizer of a weight or activation tensor with straight-through
//!   gradients; the QEM basis step runs in the training forward (fused `lq-quant` pass on CPU tensors).
//! - [`layers`], [`graph`] and [`models`]: quantized conv, BN → ReLU → Q; a network is one list of layer nodes
//!   ([`graph::Graph`]) built by one function per network (CIFAR ResNet-20/32/44/56 with shortcut A or B,
//!   VGG-Small; ImageNet ResNet-18/34/50 pre- and post-activation, AlexNet, VGG-Variant, GoogLeNet-Variant,
//!   DenseNet-121), selected by [`models::ModelSpec`]. Training runs it, export walks it, `summary` prints it.
//! - [`Trainer`]: one step, evaluation, checkpoints that resume exactly; [`trainer::run`] is the epoch loop.
//! - [`export::export`]: the trained network as an `lq-engine` model file (packed bits, folded BN).
//! - [`TrainConfig`]: defaults ← TOML file ← `--set key=value`, unknown keys rejected.
#![deny(missing_docs)]

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use trainer::{Stats, Trainer};

pub mod checkpoint;
pub mod config;
pub mod dist;
mod error;
pub mod export;
pub mod graph;
pub mod layers;
pub mod models;
pub mod optim;
pub mod quant;
pub mod trainer;
