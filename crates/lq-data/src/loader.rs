//! Batches prepared by worker threads ahead of the training step, with seeded, reproducible shuffling.
//!
//! The order of an epoch is a permutation seeded by `(seed, epoch)`; each image's augmentation draws from an RNG
//! seeded by `(seed, epoch, image index)`. So a batch does not depend on which worker made it, on the number of
//! workers or on how it is sharded over data-parallel ranks ([`Shard`]), and a run resumed at an epoch boundary
//! sees exactly the batches it would have seen.
use crate::augment::{pad_crop_flip, plain, Normalize};
use crate::dataset::Dataset;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// One mini-batch of normalised images (`n × c × h × w`, f32) and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Inputs, NCHW.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<i64>,
    /// Shape `[n, c, h, w]`.
    pub shape: [usize; 4],
}

/// How to cut a dataset into batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch: usize,
    /// Shuffle each epoch.
    pub shuffle: bool,
    /// Apply the pad-crop-flip augmentation (padding in pixels; 0 = none).
    pub pad: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Base seed.
    pub seed: u64,
    /// The part of every batch this process takes (data-parallel rank).
    pub shard: Shard,
}

/// A data-parallel rank's part of every batch: `batch` stays the global batch, and rank `r` of `world` takes the
/// contiguous block `[n·r/world, n·(r+1)/world)` of each batch's `n` images. The ranks' blocks in rank order are
/// the whole batch, so the global order is the same for every world size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, `< world`.
    pub rank: usize,
    /// Number of ranks (at least 1).
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

impl Shard {
    /// This rank's block of `batch` (all of it for one rank; a rank ≥ world gets nothing).
    pub fn of<'a, T>(&self, batch: &'a [T]) -> &'a [T] {
        let (n, w) = (batch.len(), self.world.max(1));
        let r = self.rank.min(w);
        &batch[n * r / w..n * (r + 1).min(w) / w]
    }
}

/// A dataset, its normalisation and a batching configuration.
pub struct Loader {
    ds: Arc<Dataset>,
    norm: Arc<Normalize>,
    cfg: LoaderConfig,
}

impl Loader {
    /// A loader over `ds`.
    pub fn new(ds: Arc<Dataset>, norm: Normalize, cfg: LoaderConfig) -> Self {
        let cfg = LoaderConfig { batch: cfg.batch.max(1), workers: cfg.workers.max(1), ..cfg };
        Loader { ds, norm: Arc::new(norm), cfg }
    }
    /// The same loader taking `shard`'s part of every batch.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.cfg.shard = shard;
        self
    }
    /// The normalisation applied to every image.
    pub fn norm(&self) -> &Normalize {
        &self.norm
    }
    /// Batches in one epoch.
    pub fn batches(&self) -> usize {
        if self.cfg.drop_last {
            self.ds.len() / self.cfg.batch
        } else {
            self.ds.len().div_ceil(self.cfg.batch)
        }
    }
    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    /// Iterates the batches of `epoch`, produced ahead by the worker threads (2 batches queued per worker).
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Batch> {
        let mut order: Vec<usize> = (0..self.ds.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, epoch, u64::MAX)));
        }
        let order = Arc::new(order);
        let nb = self.batches();
        let workers = self.cfg.workers.min(nb.max(1));
        let receivers: Vec<Receiver<Batch>> = (0..workers)
            .map(|wk| {
                let (tx, rx) = sync_channel(2);
                let (ds, norm, order, cfg) = (self.ds.clone(), self.norm.clone(), order.clone(), self.cfg);
                std::thread::spawn(move || {
                    for b in (wk..nb).step_by(workers) {
                        if tx.send(make_batch(&ds, &norm, &order, &cfg, epoch, b)).is_err() {
                            return; // the consumer stopped early
                        }
                    }
                });
                rx
            })
            .collect();
        (0..nb).map_while(move |b| receivers[b % workers].recv().ok())
    }
}

fn make_batch(ds: &Dataset, norm: &Normalize, order: &[usize], cfg: &LoaderConfig, epoch: u64, b: usize) -> Batch {
    let idx = cfg.shard.of(&order[b * cfg.batch..((b + 1) * cfg.batch).min(order.len())]);
    let size = ds.c * ds.h * ds.w;
    let mut x = vec![0.0f32; idx.len() * size];
    for (&i, out) in idx.iter().zip(x.chunks_exact_mut(size)) {
        if cfg.pad > 0 {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch, i as u64));
            pad_crop_flip(ds.image(i), [ds.c, ds.h, ds.w], cfg.pad, norm, &mut rng, out);
        } else {
            plain(ds.image(i), norm, out);
        }
    }
    Batch { x, y: idx.iter().map(|&i| ds.labels[i] as i64).collect(), shape: [idx.len(), ds.c, ds.h, ds.w] }
}

/// A seed for (base, epoch, item): splitmix64 over the three.
pub(crate) fn mix(seed: u64, epoch: u64, batch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ batch.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
