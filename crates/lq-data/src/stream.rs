//! Batches of u8 NHWC images from a streaming [`Source`], decoded and augmented ahead by worker threads.
//!
//! Determinism: the epoch's order is a permutation seeded by `(seed, epoch)`, and image `i`'s augmentation draws
//! from an RNG seeded by `(seed, epoch, i)`, so batches do not depend on the number of workers or on which worker
//! made them. Memory: worker `k` makes batches `k, k + W, …` into its own channel of `prefetch` batches and blocks
//! when it is full, so at most `W · (prefetch + 1)` batches exist besides the consumer's (back-pressure).
//! An image that fails to load is skipped (its batch is one shorter), recorded in [`StreamLoader::bad_files`], and
//! counted; once an epoch's count exceeds `max_bad_fraction · len` the epoch ends with [`Error::TooManyBad`].
use crate::augment::Normalize;
use crate::error::{Error, Result};
use crate::loader::{mix, Batch, Shard};
use crate::source::Source;
use crate::transform::{Scratch, Transform};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

/// ImageNet's per-channel mean (RGB, 0..1 scale), as the official code and torchvision.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel std (RGB, 0..1 scale).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One mini-batch of u8 images, NHWC, with labels.
#[derive(Clone, Debug, PartialEq)]
pub struct U8Batch {
    /// Pixels, `n × h × w × c`.
    pub x: Vec<u8>,
    /// Labels.
    pub y: Vec<i64>,
    /// Shape `[n, h, w, c]`.
    pub shape: [usize; 4],
    /// Images of this batch that failed to load and were left out.
    pub skipped: usize,
}

impl U8Batch {
    /// The f32 NCHW batch the trainer consumes, normalised by `norm` (built for `h×w`, e.g.
    /// `Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, h, w)`).
    pub fn to_batch(&self, norm: &Normalize) -> Batch {
        let [n, h, w, c] = self.shape;
        let mut x = vec![0.0f32; n * c * h * w];
        self.fill(norm, &mut x);
        Batch { x, y: self.y.clone(), shape: [n, c, h, w] }
    }

    /// [`U8Batch::to_batch`]'s values written into `out` (`n·c·h·w` values, NCHW; e.g. a fresh tensor's memory,
    /// saving a zeroing and a copy); every value of `out` is written. Panics if the batch's pixels do not fill its
    /// shape, or `out` or `norm` is for another size (the caller built them for each other).
    pub fn normalise_into(&self, norm: &Normalize, out: &mut [std::mem::MaybeUninit<f32>]) {
        self.fill(norm, out)
    }

    fn fill<T: Slot>(&self, norm: &Normalize, out: &mut [T]) {
        let [n, h, w, c] = self.shape;
        let plane = h * w;
        let len = n * c * plane;
        assert!(
            self.x.len() == len && out.len() == len,
            "{} pixels and {} outputs for {:?}",
            self.x.len(),
            out.len(),
            self.shape
        );
        assert!(norm.fits(c, h, w), "normalisation for another image size than {h}x{w}x{c}");
        if len == 0 {
            return;
        }
        for (src, dst) in self.x.chunks_exact(plane * c).zip(out.chunks_exact_mut(plane * c)) {
            // Channel by channel with the channel's mean plane and scale at hand (`norm.apply` per value divides by
            // the plane size to find the scale: 4× slower).
            for (ch, d) in dst.chunks_exact_mut(plane).enumerate() {
                let (mean, scale) = norm.channel(ch);
                for ((o, &m), &v) in d.iter_mut().zip(mean).zip(src[ch..].iter().step_by(c)) {
                    o.set((v as f32 - m) * scale);
                }
            }
        }
    }
}

/// An output value [`U8Batch::fill`] writes: initialised (`to_batch`) or not (`normalise_into`).
trait Slot {
    fn set(&mut self, v: f32);
}

impl Slot for f32 {
    fn set(&mut self, v: f32) {
        *self = v;
    }
}

impl Slot for std::mem::MaybeUninit<f32> {
    fn set(&mut self, v: f32) {
        self.write(v);
    }
}

/// How to cut a streaming source into batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamConfig {
    /// Images per batch.
    pub batch: usize,
    /// Shuffle each epoch.
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Base seed.
    pub seed: u64,
    /// Largest fraction of the dataset allowed to fail to load in one epoch (e.g. 0.001).
    pub max_bad_fraction: f64,
    /// The part of every batch this process takes (data-parallel rank).
    pub shard: Shard,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            batch: 256,
            shuffle: true,
            drop_last: true,
            workers: 4,
            prefetch: 2,
            seed: 1,
            max_bad_fraction: 0.001,
            shard: Shard::default(),
        }
    }
}

/// A source, its transform and a batching configuration.
pub struct StreamLoader {
    src: Arc<dyn Source>,
    tf: Transform,
    cfg: StreamConfig,
    out: [usize; 3],
    bad: Arc<Mutex<BTreeMap<usize, String>>>,
}

impl StreamLoader {
    /// A loader over `src`; an error when `tf` needs a fixed image size the source does not have.
    pub fn new(src: Arc<dyn Source>, tf: Transform, cfg: StreamConfig) -> Result<Self> {
        let cfg =
            StreamConfig { batch: cfg.batch.max(1), workers: cfg.workers.max(1), prefetch: cfg.prefetch.max(1), ..cfg };
        let out = match (src.shape(), tf.geometry) {
            (Some(s), _) => tf.out_shape(s),
            (None, crate::transform::Geometry::None | crate::transform::Geometry::PadCrop { .. }) => {
                let why = "images of varying size need a resizing transform (fb, hwgq or eval)";
                return Err(Error::format(&src.path(0), why));
            }
            (None, _) => tf.out_shape([0, 0, 3]),
        };
        Ok(StreamLoader { src, tf, cfg, out, bad: Default::default() })
    }
    /// The same loader taking `shard`'s part of every batch.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.cfg.shard = shard;
        self
    }
    /// Output image shape `[h, w, c]`.
    pub fn out_shape(&self) -> [usize; 3] {
        self.out
    }
    /// The source.
    pub fn source(&self) -> &dyn Source {
        &*self.src
    }
    /// Batches in one epoch.
    pub fn batches(&self) -> usize {
        let n = self.src.len();
        if self.cfg.drop_last {
            n / self.cfg.batch
        } else {
            n.div_ceil(self.cfg.batch)
        }
    }
    /// Every image that failed to load so far (index → error naming the file), over all epochs.
    pub fn bad_files(&self) -> Vec<(usize, String)> {
        self.bad.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&i, s)| (i, s.clone())).collect()
    }

    /// Iterates the batches of `epoch`, made ahead by the workers; an `Err` (too many bad files) ends it.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<U8Batch>> {
        let mut order: Vec<usize> = (0..self.src.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, epoch, u64::MAX)));
        }
        let order = Arc::new(order);
        let nb = self.batches();
        let workers = self.cfg.workers.min(nb.max(1));
        let receivers: Vec<Receiver<U8Batch>> = (0..workers)
            .map(|wk| {
                let (tx, rx) = sync_channel(self.cfg.prefetch);
                let (src, order, cfg, tf, out, bad) =
                    (self.src.clone(), order.clone(), self.cfg, self.tf, self.out, self.bad.clone());
                std::thread::spawn(move || {
                    let mut scratch = Scratch::default();
                    for b in (wk..nb).step_by(workers) {
                        let idx = cfg.shard.of(&order[b * cfg.batch..((b + 1) * cfg.batch).min(order.len())]);
                        let batch = make_batch(&*src, &tf, out, idx, cfg.seed, epoch, &mut scratch, &bad);
                        if tx.send(batch).is_err() {
                            return; // the consumer stopped early
                        }
                    }
                });
                rx
            })
            .collect();
        let (budget, total, max_fraction, bad) = (
            (self.cfg.max_bad_fraction * order.len() as f64).floor() as usize,
            order.len(),
            self.cfg.max_bad_fraction,
            self.bad.clone(),
        );
        let mut seen_bad = 0;
        let mut stopped = false;
        (0..nb).map_while(move |b| {
            if stopped {
                return None;
            }
            let batch = receivers[b % workers].recv().ok()?;
            seen_bad += batch.skipped;
            if seen_bad > budget {
                stopped = true;
                let first = bad.lock().unwrap_or_else(|e| e.into_inner()).values().next().cloned().unwrap_or_default();
                return Some(Err(Error::TooManyBad { bad: seen_bad, total, max_fraction, first }));
            }
            Some(Ok(batch))
        })
    }
}

/// Loads and transforms the images `idx` into one batch (failures skipped and recorded).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_batch(
    src: &dyn Source,
    tf: &Transform,
    [h, w, c]: [usize; 3],
    idx: &[usize],
    seed: u64,
    epoch: u64,
    scratch: &mut Scratch,
    bad: &Mutex<BTreeMap<usize, String>>,
) -> U8Batch {
    let size = h * w * c;
    let mut x = vec![0u8; idx.len() * size];
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, i as u64));
        let slot = &mut x[y.len() * size..(y.len() + 1) * size];
        let done = src.load(i).and_then(|img| {
            if img.c != c {
                return Err(Error::format(&src.path(i), format!("{} channels, the loader makes {c}", img.c)));
            }
            tf.apply(&img, &src.path(i), &mut rng, scratch, slot)
        });
        match done {
            Ok(()) => y.push(src.label(i) as i64),
            Err(e) => {
                bad.lock().unwrap_or_else(|e| e.into_inner()).insert(i, e.to_string());
            }
        }
    }
    x.truncate(y.len() * size);
    U8Batch { skipped: idx.len() - y.len(), shape: [y.len(), h, w, c], x, y }
}
