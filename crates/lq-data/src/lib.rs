//! Data for lqnets: dataset readers, decoding, augmentation and threaded batching, without libtorch.
//!
//! # Overview
//! - [`Dataset`]: labelled u8 images in memory, filled by [`load_cifar`] (CIFAR-10/100 binary) or [`load_idx`]
//!   (MNIST / Fashion-MNIST IDX, optionally as 32×32×3).
//! - [`Normalize`] and the pure augmentation functions in [`augment`] (the supplement's pad-4, crop, flip).
//! - [`Loader`]: seeded shuffling and f32 batches built ahead by worker threads; [`Batch`] is what a step consumes.
//! - Streaming (ImageNet): a [`Source`] (the in-memory [`Dataset`], or an [`ImageFolder`] of JPEG/PNG files
//!   decoded by content with [`decode`]), a [`Transform`] chain (spec §6: random-resized crop, resize-shorter +
//!   centre/random crop, pad-crop, flip, colour jitter, PCA lighting; see [`transform`]) and a [`StreamLoader`]
//!   handing out u8 NHWC [`U8Batch`]es (normalised by the consumer, [`U8Batch::to_batch`] on the CPU); bad files
//!   are skipped, recorded and bounded. [`check`] walks a folder, [`bench`] times the chain.
//! - [`read_npy`] / [`write_npy`]: float32 `.npy` tensors (the `lqnets fit` input).
//! - [`read_png`]: one 8-bit PNG as CHW pixels (the `lqnets infer` image input).
//!
//! Every parse error names the file and what is wrong (byte offsets where useful). Every size read from a file is
//! checked against the file's length (or an expected shape, or a pixel limit) before anything is allocated or
//! indexed by it.
#![deny(missing_docs)]

pub use augment::Normalize;
pub use check::{bench, check, BenchReport, CheckReport};
pub use cifar::{load_cifar, Cifar};
pub use dataset::Dataset;
pub use error::{Error, Result};
pub use idx::load_idx;
pub use image::{decode, read_image, Image};
pub use loader::{Batch, Loader, LoaderConfig, Shard};
pub use npy::{read_npy, write_npy, NpyArray};
pub use png::read_png;
pub use source::{ImageFolder, Source, Split, Subset, VAL_LABELS};
pub use stream::{StreamConfig, StreamLoader, U8Batch, IMAGENET_MEAN, IMAGENET_STD};
pub use transform::{Filter, Geometry, Transform};

pub mod augment;
mod check;
mod cifar;
mod dataset;
mod error;
mod idx;
mod image;
mod loader;
mod npy;
mod png;
mod source;
mod stream;
pub mod transform;
