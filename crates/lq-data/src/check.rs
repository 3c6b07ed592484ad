//! `check` (walk an image folder: counts, size histogram, every bad file) and `bench` (images/s of the input
//! pipeline, per stage and per worker count): the bodies of `lqnets data check` and `lqnets bench data`.
use crate::image::{decode, read_file, Image};
use crate::source::{ImageFolder, Source};
use crate::transform::{Geometry, Scratch, Transform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckReport {
    /// Class folders.
    pub classes: usize,
    /// Files listed.
    pub files: usize,
    /// Files that decoded.
    pub images: usize,
    /// Class folders without a readable image.
    pub empty_classes: Vec<String>,
    /// Decoded images by shorter side (`"<64"`, `"64-127"`, … `">=1024"`).
    pub sizes: BTreeMap<&'static str, usize>,
    /// Every file that failed, with the reason.
    pub bad: Vec<(PathBuf, String)>,
}

const BUCKETS: [(usize, &str); 6] = [
    (64, "0: <64"),
    (128, "1: 64-127"),
    (256, "2: 128-255"),
    (512, "3: 256-511"),
    (1024, "4: 512-1023"),
    (usize::MAX, "5: >=1024"),
];

/// Decodes every file of `src` on `workers` threads.
pub fn check(src: &ImageFolder, workers: usize) -> CheckReport {
    let next = AtomicUsize::new(0);
    // (index, size or error), in completion order.
    type Found = Vec<(usize, std::result::Result<(usize, usize), String>)>;
    let found: Mutex<Found> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= src.len() {
                    return;
                }
                let r = src.load(i).map(|img| (img.w, img.h)).map_err(|e| e.to_string());
                found.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
            });
        }
    });
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.sort_by_key(|f| f.0);
    let mut rep = CheckReport { classes: src.classes(), files: src.len(), ..Default::default() };
    let mut per_class = vec![0usize; src.classes()];
    for (i, r) in found {
        match r {
            Ok((w, h)) => {
                rep.images += 1;
                per_class[src.label(i) as usize] += 1;
                let b = BUCKETS.iter().find(|b| w.min(h) < b.0).map_or("?", |b| b.1);
                *rep.sizes.entry(b).or_default() += 1;
            }
            Err(e) => rep.bad.push((src.path(i), e)),
        }
    }
    rep.empty_classes =
        per_class.iter().zip(&src.class_names).filter(|(n, _)| **n == 0).map(|(_, c)| c.clone()).collect();
    rep
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "classes {}, files {}, images {}, bad {}", self.classes, self.files, self.images, self.bad.len())?;
        if !self.empty_classes.is_empty() {
            writeln!(f, "classes without images: {}", self.empty_classes.join(", "))?;
        }
        writeln!(f, "shorter side:")?;
        for (b, n) in &self.sizes {
            writeln!(f, "  {:>9} {n}", &b[3..])?;
        }
        self.bad.iter().try_for_each(|(_, e)| writeln!(f, "bad: {e}"))
    }
}

/// What [`bench`] measured: per-stage milliseconds per image on one thread, and images/s per worker count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchReport {
    /// Images per measurement.
    pub images: usize,
    /// Reading the file (page cache), ms/image.
    pub read_ms: f64,
    /// Decoding to RGB, ms/image.
    pub decode_ms: f64,
    /// Crop box + resize, ms/image.
    pub geometry_ms: f64,
    /// Flip, jitter and lighting, ms/image.
    pub post_ms: f64,
    /// `(workers, images/s)` of the whole chain (read → transformed u8 image), threads working independently.
    pub scaling: Vec<(usize, f64)>,
}

impl BenchReport {
    /// Total ms/image on one thread.
    pub fn total_ms(&self) -> f64 {
        self.read_ms + self.decode_ms + self.geometry_ms + self.post_ms
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.total_ms();
        writeln!(f, "{} images, 1 thread: {:.3} ms/image ({:.0} img/s)", self.images, t, 1e3 / t)?;
        for (name, ms) in [
            ("read", self.read_ms),
            ("decode", self.decode_ms),
            ("crop+resize", self.geometry_ms),
            ("flip/colour", self.post_ms),
        ] {
            writeln!(f, "  {name:<12} {ms:.3} ms ({:.0} %)", 100.0 * ms / t)?;
        }
        for &(w, ips) in &self.scaling {
            let base = self.scaling.first().map_or(ips, |s| s.1 / s.0 as f64);
            writeln!(f, "  workers {w:>2}: {ips:.0} img/s ({:.2}x one worker)", ips / base)?;
        }
        Ok(())
    }
}

/// Times `tf` on `images` loads of `src` (cycling through its files; bad files are skipped): stage by stage on
/// one thread, then the whole chain on each worker count in `workers`.
pub fn bench(src: &ImageFolder, tf: Transform, images: usize, workers: &[usize]) -> BenchReport {
    let n = src.len();
    let mut rep = BenchReport { images, ..Default::default() };
    if n == 0 || images == 0 {
        return rep;
    }
    let geom = Transform { flip: false, jitter: 0.0, lighting: 0.0, ..tf };
    let post = Transform { geometry: Geometry::None, ..tf };
    let [oh, ow, oc] = tf.out_shape([0, 0, 3]);
    let (mut out, mut out2) = (vec![0u8; oh * ow * oc], vec![0u8; oh * ow * oc]);
    let mut scratch = Scratch::default();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for k in 0..images {
        let (i, mut rng) = (k % n, ChaCha8Rng::seed_from_u64(k as u64));
        let t = Instant::now();
        let Ok(bytes) = read_file(&src.files[i]) else { continue };
        rep.read_ms += ms(t);
        let t = Instant::now();
        let Ok(img) = decode(&src.files[i], &bytes) else { continue };
        rep.decode_ms += ms(t);
        let t = Instant::now();
        let _ = geom.apply(&img, &src.files[i], &mut rng, &mut scratch, &mut out);
        rep.geometry_ms += ms(t);
        let small = Image { w: ow, h: oh, c: oc, data: std::mem::take(&mut out) };
        let t = Instant::now();
        let _ = post.apply(&small, &src.files[i], &mut rng, &mut scratch, &mut out2);
        rep.post_ms += ms(t);
        out = small.data;
    }
    for v in [&mut rep.read_ms, &mut rep.decode_ms, &mut rep.geometry_ms, &mut rep.post_ms] {
        *v /= images as f64;
    }
    for &w in workers {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..w.max(1) {
                s.spawn(|| {
                    let (mut scratch, mut out) = (Scratch::default(), vec![0u8; oh * ow * oc]);
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= images {
                            return;
                        }
                        let mut rng = ChaCha8Rng::seed_from_u64(k as u64);
                        if let Ok(img) = src.load(k % n) {
                            let _ = tf.apply(&img, &src.files[k % n], &mut rng, &mut scratch, &mut out);
                        }
                    }
                });
            }
        });
        rep.scaling.push((w.max(1), images as f64 / t.elapsed().as_secs_f64()));
    }
    rep
}
