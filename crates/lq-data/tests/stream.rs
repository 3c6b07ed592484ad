//! Image decoding, the image folder, the supplement's transforms and the streaming loader.
use lq_data::transform::{flip, random_resized_box, shorter_side_box, Scratch};
use lq_data::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A JPEG of a smooth RGB gradient, `w×h`, baseline or progressive.
fn jpeg(w: u16, h: u16, pixels: &[u8], ct: jpeg_encoder::ColorType, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
    enc.set_progressive(progressive);
    enc.encode(pixels, w, h, ct).unwrap();
    out
}

fn gradient(w: usize, h: usize) -> Vec<u8> {
    (0..w * h).flat_map(|p| [(p % w * 255 / w) as u8, (p / w * 255 / h) as u8, 128]).collect()
}

fn png_rgb(w: u32, h: u32, px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, w, h);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap().write_image_data(px).unwrap();
    out
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn jpeg_baseline_progressive_grey_cmyk_and_png_named_jpeg_decode_to_rgb() {
    let p = Path::new("x.JPEG");
    let g = gradient(40, 24);
    for progressive in [false, true] {
        let img = decode(p, &jpeg(40, 24, &g, jpeg_encoder::ColorType::Rgb, progressive)).unwrap();
        assert_eq!((img.w, img.h, img.c), (40, 24, 3));
        assert!(max_diff(&img.data, &g) <= 6, "progressive={progressive}");
    }
    // Greyscale: every channel is the grey value.
    let grey: Vec<u8> = (0..40 * 24).map(|p| (p % 40 * 6) as u8).collect();
    let img = decode(p, &jpeg(40, 24, &grey, jpeg_encoder::ColorType::Luma, false)).unwrap();
    let want: Vec<u8> = grey.iter().flat_map(|&v| [v; 3]).collect();
    assert!(max_diff(&img.data, &want) <= 4);
    // CMYK (Adobe, stored inverted as Photoshop does): R = (255 − C)(255 − K)/255, as Pillow converts it.
    let (c, m, y, k) = (200u8, 50u8, 0u8, 40u8);
    let cmyk: Vec<u8> = (0..32 * 16).flat_map(|_| [c, m, y, k]).collect();
    let img = decode(p, &jpeg(32, 16, &cmyk, jpeg_encoder::ColorType::Cmyk, false)).unwrap();
    let rgb = |v: u8| ((255 - v as u32) * (255 - k as u32) / 255) as u8;
    let want: Vec<u8> = (0..32 * 16).flat_map(|_| [rgb(c), rgb(m), rgb(y)]).collect();
    assert!(max_diff(&img.data, &want) <= 4, "{:?} vs {:?}", &img.data[..3], &want[..3]);
    // A PNG named .JPEG is decoded as a PNG, exactly.
    let img = decode(p, &png_rgb(40, 24, &g)).unwrap();
    assert_eq!(img.data, g);
}

#[test]
fn corrupt_truncated_huge_and_non_images_are_errors_naming_the_file() {
    let p = Path::new("dir/bad.jpg");
    let full = jpeg(64, 64, &gradient(64, 64), jpeg_encoder::ColorType::Rgb, false);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", full[..full.len() / 2].to_vec()),
        ("text", b"hello, not an image".to_vec()),
        ("empty", vec![]),
        ("png header only", png_rgb(4, 4, &[0; 48])[..40].to_vec()),
    ];
    // Garbage after a valid header.
    let mut garbage = full[..200].to_vec();
    garbage.extend((0..2000u32).map(|i| (i * 7919 % 251) as u8));
    cases.push(("garbage", garbage));
    // A header claiming 65000×65000 pixels: refused before the frame buffer is allocated.
    let mut huge = full.clone();
    let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    huge[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    cases.push(("huge", huge));
    for (what, bytes) in cases {
        let e = decode(p, &bytes).expect_err(what).to_string();
        assert!(e.starts_with("dir/bad.jpg: "), "{what}: {e}");
    }
}

/// root/{train,val}/<class>/...: a good JPEG, a progressive one, grey, CMYK, a PNG named .JPEG, a truncated JPEG,
/// a corrupt file, a text file, and an empty class folder.
fn make_folder(root: &Path) -> usize {
    let g = gradient(48, 40);
    let good = jpeg(48, 40, &g, jpeg_encoder::ColorType::Rgb, false);
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("train/a", "1.JPEG", good.clone()),
        ("train/a", "2.JPEG", jpeg(48, 40, &g, jpeg_encoder::ColorType::Rgb, true)),
        ("train/b", "3.JPEG", jpeg(30, 50, &[90; 1500], jpeg_encoder::ColorType::Luma, false)),
        ("train/b", "4.JPEG", jpeg(50, 30, &[10; 6000], jpeg_encoder::ColorType::Cmyk, false)),
        ("train/c", "5.JPEG", png_rgb(48, 40, &g)),
        ("train/c", "6.JPEG", good[..good.len() / 3].to_vec()),
        ("train/c", "7.JPEG", vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]),
        ("train/c", "notes.txt", b"not an image".to_vec()),
        ("val/a", "v1.JPEG", good.clone()),
        ("val/c", "v2.JPEG", good),
    ];
    for (d, f, bytes) in &files {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join(f), bytes).unwrap();
    }
    std::fs::create_dir_all(root.join("train/d_empty")).unwrap();
    3 // bad files in train
}

#[test]
fn image_folder_lists_classes_and_the_loader_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let nbad = make_folder(dir.path());
    let train = ImageFolder::open(dir.path(), Split::Train).unwrap();
    assert_eq!(train.class_names, ["a", "b", "c", "d_empty"]);
    assert_eq!(train.len(), 8);
    let val = ImageFolder::open(dir.path(), Split::Val).unwrap();
    assert_eq!((val.classes(), val.labels.clone()), (4, vec![0, 2]), "val labels follow train's class list");

    let cfg = StreamConfig {
        batch: 8,
        workers: 2,
        shuffle: false,
        drop_last: false,
        max_bad_fraction: 0.5,
        ..Default::default()
    };
    let ld = StreamLoader::new(Arc::new(train.clone()), Transform::fb(32), cfg).unwrap();
    let batches: Vec<U8Batch> = ld.epoch(0).collect::<Result<_>>().unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!((b.shape, b.skipped), ([5, 32, 32, 3], nbad));
    assert_eq!(b.y, [0, 0, 1, 1, 2]);
    let bad = ld.bad_files();
    let names: Vec<&str> = bad.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(bad.len(), nbad, "{names:?}");
    for n in ["6.JPEG: ", "7.JPEG: ", "notes.txt: not a JPEG or PNG"] {
        assert!(names.iter().any(|e| e.contains(n)), "{n} not in {names:?}");
    }
    // 3 of 8 bad is over a 25 % limit: the epoch ends with an error naming a bad file.
    let cfg = StreamConfig { max_bad_fraction: 0.25, ..cfg };
    let ld = StreamLoader::new(Arc::new(train), Transform::fb(32), cfg).unwrap();
    let e = ld.epoch(0).find_map(|b| b.err()).expect("too many bad files").to_string();
    assert!(e.contains("3 of 8 images") && e.contains(".JPEG: "), "{e}");
}

#[test]
fn batches_are_identical_for_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path());
    let src: Arc<dyn Source> = Arc::new(ImageFolder::open(dir.path(), Split::Train).unwrap());
    let run = |workers| {
        let cfg = StreamConfig { batch: 3, workers, max_bad_fraction: 1.0, ..Default::default() };
        let ld = StreamLoader::new(src.clone(), Transform::fb(24), cfg).unwrap();
        (0..2).flat_map(|e| ld.epoch(e).map(|b| b.unwrap()).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    let one = run(1);
    assert_eq!(one.len(), 4);
    assert_eq!(one, run(4));
    assert_ne!(one[0..2], one[2..4], "epochs differ");
}

/// Counts loads, to see how far ahead the workers run.
struct Counting(Dataset, AtomicUsize);
impl Source for Counting {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn label(&self, i: usize) -> u16 {
        self.0.labels[i]
    }
    fn classes(&self) -> usize {
        self.0.classes
    }
    fn load(&self, i: usize) -> Result<Image> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.load(i)
    }
    fn shape(&self) -> Option<[usize; 3]> {
        self.0.shape()
    }
}

fn tiny(n: usize) -> Dataset {
    let images = (0..n * 3 * 8 * 8).map(|i| (i * 31 % 256) as u8).collect();
    Dataset { images, labels: (0..n).map(|i| (i % 10) as u16).collect(), c: 3, h: 8, w: 8, classes: 10 }
}

/// The streamed loader shards like the in-memory one: the ranks' parts of each batch in rank order are the
/// one-process batch, augmentation included.
#[test]
fn stream_shards_make_the_whole_batch() {
    let src: Arc<dyn Source> = Arc::new(tiny(30));
    let cfg = StreamConfig { batch: 8, workers: 2, ..Default::default() };
    let whole: Vec<U8Batch> =
        StreamLoader::new(src.clone(), Transform::cifar(2), cfg).unwrap().epoch(1).collect::<Result<_>>().unwrap();
    for world in [2, 3] {
        let parts: Vec<Vec<U8Batch>> = (0..world)
            .map(|rank| {
                let c = StreamConfig { shard: Shard { rank, world }, ..cfg };
                StreamLoader::new(src.clone(), Transform::cifar(2), c).unwrap().epoch(1).collect::<Result<_>>().unwrap()
            })
            .collect();
        for (b, w) in whole.iter().enumerate() {
            let x: Vec<u8> = parts.iter().flat_map(|p| p[b].x.clone()).collect();
            let y: Vec<i64> = parts.iter().flat_map(|p| p[b].y.clone()).collect();
            assert_eq!((&x, &y), (&w.x, &w.y), "world {world}, batch {b}");
        }
    }
}

#[test]
fn workers_stop_ahead_of_a_slow_consumer() {
    let src = Arc::new(Counting(tiny(100_000), AtomicUsize::new(0)));
    let cfg = StreamConfig { batch: 4, workers: 2, prefetch: 2, ..Default::default() };
    let ld = StreamLoader::new(src.clone(), Transform::cifar(2), cfg).unwrap();
    let mut it = ld.epoch(0);
    it.next().unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Each worker: `prefetch` queued + one blocked in send; plus the batch consumed.
    let bound = 2 * (2 + 1) * 4 + 4;
    let loaded = src.1.load(Ordering::SeqCst);
    assert!(loaded <= bound, "{loaded} images loaded ahead, bound {bound}");
}

#[test]
fn in_memory_dataset_is_a_source_and_u8_batches_normalise_like_the_f32_loader() {
    let ds = tiny(10);
    let img = Source::load(&ds, 3).unwrap();
    // HWC from CHW: pixel (y=2, x=5), channel 1.
    assert_eq!(img.data[(2 * 8 + 5) * 3 + 1], ds.image(3)[64 + 2 * 8 + 5]);
    let cfg = StreamConfig { batch: 10, shuffle: false, workers: 1, ..Default::default() };
    let ld = StreamLoader::new(Arc::new(ds.clone()), Transform::cifar(0), cfg).unwrap();
    let b = ld.epoch(0).next().unwrap().unwrap();
    let norm = Normalize::per_channel(&[0.4, 0.5, 0.6], &[0.2, 0.25, 0.3], 8, 8);
    let f = b.to_batch(&norm);
    let old = Loader::new(
        Arc::new(ds),
        norm,
        LoaderConfig {
            batch: 10,
            shuffle: false,
            pad: 0,
            drop_last: false,
            workers: 1,
            seed: 1,
            shard: Default::default(),
        },
    )
    .epoch(0)
    .next()
    .unwrap();
    assert_eq!(f, old);
}

#[test]
fn random_resized_crop_boxes_have_the_stated_area_and_aspect() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (w, h) in [(500, 375), (375, 500), (224, 224), (1000, 300)] {
        let (mut amin, mut amax, mut rmin, mut rmax) = (f64::MAX, 0f64, f64::MAX, 0f64);
        for _ in 0..20_000 {
            let b = random_resized_box(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(b.x >= 0.0 && b.y >= 0.0 && b.x + b.w <= w as f64 && b.y + b.h <= h as f64, "{b:?}");
            let fallback = b.w == b.h && b.w == w.min(h) as f64;
            if !fallback {
                let (a, r) = (b.w * b.h / (w * h) as f64, b.w / b.h);
                // Sides are rounded to whole pixels: allow one pixel of slack.
                let slack = 1.0 / b.w.min(b.h);
                assert!(a >= 0.08 * (1.0 - 2.0 * slack) && a <= 1.0, "area {a} {b:?}");
                assert!(r >= 0.75 * (1.0 - 2.0 * slack) && r <= 4.0 / 3.0 * (1.0 + 2.0 * slack), "aspect {r}");
                (amin, amax, rmin, rmax) = (amin.min(a), amax.max(a), rmin.min(r), rmax.max(r));
            }
        }
        // The draws span the ranges (a 1000×300 strip holds at most 400×300 at aspect ≤ 4/3: 40 %).
        let top = if w == 1000 { 0.38 } else { 0.9 };
        assert!(amin < 0.09 && amax > top && rmin < 0.77 && rmax > 1.3, "{w}x{h}: {amin} {amax} {rmin} {rmax}");
    }
    // No box of ≥ 8 % area fits a 1000×10 strip: ten failed tries, then the centre square.
    let b = random_resized_box(1000, 10, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
    assert_eq!((b.x, b.y, b.w, b.h), (495.0, 0.0, 10.0, 10.0));
}

#[test]
fn shorter_side_boxes_match_resize_then_crop() {
    // 500×375 → 341×256; centre 224: offsets (round(117/2)=58 [banker's? no: 58.5 → 59], 16).
    let b = shorter_side_box(500, 375, 256, 224, None);
    let s = 256.0 / 375.0;
    assert!((b.x - 59.0 * (500.0 / 341.0)).abs() < 1e-9 && (b.y - 16.0 / s).abs() < 1e-9, "{b:?}");
    assert!((b.w - 224.0 * 500.0 / 341.0).abs() < 1e-9 && (b.h - 224.0 / s).abs() < 1e-9);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..1000 {
        let b = shorter_side_box(300, 600, 256, 227, Some(&mut rng));
        assert!(b.x >= 0.0 && b.y >= 0.0 && b.x + b.w <= 300.0 + 1e-9 && b.y + b.h <= 600.0 + 1e-9, "{b:?}");
    }
}

/// Pillow's resampling in f64: separable, support scaled by the downscale factor, weights normalised per output.
fn reference_resize(img: &Image, b: transform::CropBox, size: usize, filter: Filter) -> Vec<f64> {
    let (support, kernel): (f64, fn(f64) -> f64) = match filter {
        Filter::Bilinear => (1.0, |x: f64| (1.0 - x.abs()).max(0.0)),
        Filter::Bicubic => (2.0, |x: f64| {
            let (a, x) = (-0.5, x.abs());
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }),
    };
    let weights = |start: f64, len: f64, n_in: usize| -> Vec<Vec<(usize, f64)>> {
        let scale = len / size as f64;
        let fs = scale.max(1.0);
        (0..size)
            .map(|i| {
                let center = start + (i as f64 + 0.5) * scale;
                let lo = ((center - support * fs).floor().max(0.0)) as usize;
                let hi = ((center + support * fs).ceil() as usize).min(n_in);
                let mut w: Vec<(usize, f64)> = (lo..hi).map(|j| (j, kernel((j as f64 + 0.5 - center) / fs))).collect();
                let s: f64 = w.iter().map(|x| x.1).sum();
                w.iter_mut().for_each(|x| x.1 /= s);
                w
            })
            .collect()
    };
    let (wx, wy) = (weights(b.x, b.w, img.w), weights(b.y, b.h, img.h));
    let c = img.c;
    let mut tmp = vec![0.0; img.h * size * c]; // horizontal pass
    for y in 0..img.h {
        for (x, ws) in wx.iter().enumerate() {
            for k in 0..c {
                tmp[(y * size + x) * c + k] =
                    ws.iter().map(|&(j, w)| w * img.data[(y * img.w + j) * c + k] as f64).sum();
            }
        }
    }
    let mut out = vec![0.0; size * size * c];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..size {
            for k in 0..c {
                out[(y * size + x) * c + k] = ws.iter().map(|&(j, w)| w * tmp[(j * size + x) * c + k]).sum();
            }
        }
    }
    out
}

#[test]
fn resize_agrees_with_a_float_reference() {
    // A textured image (gradient + a checker pattern), downscaled and upscaled from fractional boxes.
    let (w, h) = (97, 71);
    let data: Vec<u8> = (0..w * h)
        .flat_map(|p| [(p % w * 2) as u8, (p / w * 3) as u8, if (p % w / 3 + p / w / 3) % 2 == 0 { 30 } else { 220 }])
        .collect();
    let img = Image { w, h, c: 3, data };
    let mut scratch = Scratch::default();
    for filter in [Filter::Bilinear, Filter::Bicubic] {
        for (b, size) in [
            (transform::CropBox { x: 0.0, y: 0.0, w: 97.0, h: 71.0 }, 32),
            (transform::CropBox { x: 10.5, y: 3.25, w: 60.0, h: 50.5 }, 24),
            (transform::CropBox { x: 20.0, y: 20.0, w: 30.0, h: 30.0 }, 64),
        ] {
            let mut out = vec![0; size * size * 3];
            scratch.resize(&img, b, size, filter, &mut out);
            let want = reference_resize(&img, b, size, filter);
            // fast_image_resize uses fixed-point weights (Pillow's method): ≤ 1 level from the rounded float result.
            let worst = out
                .iter()
                .zip(&want)
                .map(|(&o, &r)| (o as f64 - r.round().clamp(0.0, 255.0)).abs())
                .fold(0.0, f64::max);
            assert!(worst <= 1.0, "{filter:?} {b:?} → {size}: worst {worst}");
        }
    }
}

#[test]
fn flip_is_an_exact_mirror_and_happens_half_the_time() {
    // Odd and even widths, and each channel count's path (3, 1, any other).
    for (w, c) in [(6, 3), (1, 3), (7, 1), (4, 4), (0, 3), (0, 1)] {
        let data: Vec<u8> = (0..w * 3 * c).map(|i| (i * 7) as u8).collect();
        let mut m = data.clone();
        flip(&mut m, w, c);
        for y in 0..3 {
            for x in 0..w {
                assert_eq!(m[(y * w + x) * c..][..c], data[(y * w + w - 1 - x) * c..][..c], "{w} wide, {c} channels");
            }
        }
    }
    let (w, h) = (5, 3);
    let img = Image { w, h, c: 3, data: (0..w * h * 3).map(|i| i as u8).collect() };
    let mut m = img.data.clone();
    flip(&mut m, w, 3);
    let tf = Transform { geometry: Geometry::None, flip: true, jitter: 0.0, lighting: 0.0, filter: Filter::Bilinear };
    let (mut flipped, mut scratch) = (0, Scratch::default());
    for s in 0..400 {
        let mut out = vec![0; w * h * 3];
        tf.apply(&img, Path::new("x"), &mut ChaCha8Rng::seed_from_u64(s), &mut scratch, &mut out).unwrap();
        assert!(out == img.data || out == m);
        flipped += (out == m) as usize;
    }
    assert!((160..240).contains(&flipped), "{flipped} of 400 flipped");
}

#[test]
fn lighting_noise_has_the_stated_scale_and_jitter_stays_in_range() {
    let img = Image { w: 4, h: 4, c: 3, data: vec![128; 48] };
    let tf = Transform { geometry: Geometry::None, flip: false, jitter: 0.0, lighting: 0.1, filter: Filter::Bilinear };
    let mut scratch = Scratch::default();
    let n = 4000;
    let mut sum2 = [0.0f64; 3];
    for s in 0..n {
        let mut out = vec![0; 48];
        tf.apply(&img, Path::new("x"), &mut ChaCha8Rng::seed_from_u64(s), &mut scratch, &mut out).unwrap();
        assert!(out.chunks(3).all(|p| p == &out[..3]), "one offset per channel for the whole image");
        (0..3).for_each(|c| sum2[c] += (out[c] as f64 - 128.0).powi(2));
    }
    for (c, s2) in sum2.iter().enumerate() {
        let want = 255.0
            * 0.1
            * (0..3)
                .map(|i| ((transform::PCA_EIGVEC[c][i] * transform::PCA_EIGVAL[i]) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
        // + rounding noise (1/12 level²); 4000 draws give ~1.1 % error on a std.
        let got = (s2 / n as f64 - 1.0 / 12.0).sqrt();
        assert!((got / want - 1.0).abs() < 0.05, "channel {c}: std {got:.3}, want {want:.3}");
    }
    // Jitter: brightness/contrast/saturation factors in 0.6..1.4 on a grey image only scale/shift it.
    let tf = Transform { jitter: 0.4, lighting: 0.0, ..tf };
    let mut seen = std::collections::BTreeSet::new();
    for s in 0..200 {
        let mut out = vec![0; 48];
        tf.apply(&img, Path::new("x"), &mut ChaCha8Rng::seed_from_u64(s), &mut scratch, &mut out).unwrap();
        assert!((128.0 * 0.6 - 1.0..=128.0 * 1.4 + 1.0).contains(&(out[0] as f64)), "{}", out[0]);
        seen.insert(out[0]);
    }
    assert!(seen.len() > 50, "brightness varies");
}

/// fb.resnet.torch's colour chain written out step by step on f32 pixels (the definition): brightness, contrast and
/// saturation blends in random order, then PCA lighting, rounded and clamped once at the end.
fn colour_reference(img: &[u8], s: f32, std: f32, rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut f: Vec<f32> = img.iter().map(|&p| p as f32).collect();
    let grey = |p: &[f32]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut order = [0, 1, 2];
    for i in (1..3).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    for op in order {
        let a = 1.0 + rng.gen_range(-s..=s);
        match op {
            0 => f.iter_mut().for_each(|v| *v *= a),
            1 => {
                let m = f.chunks_exact(3).map(grey).sum::<f32>() / (f.len() / 3) as f32;
                f.iter_mut().for_each(|v| *v = *v * a + m * (1.0 - a));
            }
            _ => f.chunks_exact_mut(3).for_each(|p| {
                let g = grey(p) * (1.0 - a);
                p.iter_mut().for_each(|v| *v = *v * a + g);
            }),
        }
    }
    let normal = |rng: &mut dyn rand::RngCore| {
        let u1: f64 = 1.0 - rand::Rng::gen::<f64>(rng);
        let u2: f64 = rand::Rng::gen(rng);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    };
    let alpha: [f32; 3] = std::array::from_fn(|_| normal(rng) * std);
    for p in f.chunks_exact_mut(3) {
        for (c, v) in p.iter_mut().enumerate() {
            *v +=
                255.0 * (0..3).map(|i| transform::PCA_EIGVEC[c][i] * alpha[i] * transform::PCA_EIGVAL[i]).sum::<f32>();
        }
    }
    f.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect()
}

/// The transform composes jitter and lighting into one per-pixel colour map: on random images and draws it gives
/// the step-by-step chain's bytes, up to one level where a value lies within float rounding of a half.
#[test]
fn fused_colour_map_equals_the_step_by_step_chain() {
    let tf = Transform { geometry: Geometry::None, flip: false, jitter: 0.4, lighting: 0.1, filter: Filter::Bilinear };
    let mut scratch = Scratch::default();
    let (mut values, mut exact) = (0usize, 0usize);
    for s in 0..300u64 {
        let mut r = ChaCha8Rng::seed_from_u64(1000 + s);
        let (w, h) = (1 + (s as usize % 13), 1 + (s as usize % 7));
        let img: Vec<u8> = (0..w * h * 3).map(|_| rand::Rng::gen(&mut r)).collect();
        let mut out = vec![0; img.len()];
        let image = Image { w, h, c: 3, data: img.clone() };
        tf.apply(&image, Path::new("x"), &mut ChaCha8Rng::seed_from_u64(s), &mut scratch, &mut out).unwrap();
        let want = colour_reference(&img, 0.4, 0.1, &mut ChaCha8Rng::seed_from_u64(s));
        for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
            assert!(g.abs_diff(e) <= 1, "seed {s} value {i}: {g} vs {e}");
            exact += (g == e) as usize;
        }
        values += out.len();
    }
    assert!(exact as f64 >= 0.99 * values as f64, "{exact} of {values} values equal");
}

/// Colour jitter and lighting act on RGB only: a greyscale image passes through unchanged.
#[test]
fn colour_transforms_leave_greyscale_images_alone() {
    let tf = Transform { geometry: Geometry::None, flip: false, jitter: 0.4, lighting: 0.1, filter: Filter::Bilinear };
    let img = Image { w: 5, h: 3, c: 1, data: (0..15).map(|i| (i * 17) as u8).collect() };
    let mut out = vec![0; 15];
    for s in 0..20 {
        tf.apply(&img, Path::new("x"), &mut ChaCha8Rng::seed_from_u64(s), &mut Scratch::default(), &mut out).unwrap();
        assert_eq!(out, img.data);
    }
}

#[test]
fn colour_maps_compose_in_order() {
    use lq_data::transform::ColorMap;
    let a = ColorMap { m: [[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], b: [1.0, 2.0, 3.0] };
    let b = ColorMap { m: [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], b: [-1.0, 0.0, 5.0] };
    let p = [3.0, 5.0, 7.0];
    assert_eq!(a.then(&b).apply(p), b.apply(a.apply(p)));
    assert_ne!(b.then(&a).apply(p), b.apply(a.apply(p)));
}

/// The 20 real ImageNet photos of `get-real-data.sh`, when present (`LQ_REALDATA` or /work/realdata).
#[test]
fn real_photos_decode_and_transform() {
    let root = std::env::var("LQ_REALDATA").map(PathBuf::from).unwrap_or_else(|_| "/work/realdata".into());
    let mini = root.join("imagenet-mini");
    if !mini.is_dir() {
        eprintln!("SKIP real_photos_decode_and_transform: no {}", mini.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&mini, dir.path().join("train")).unwrap();
    let src = ImageFolder::open(dir.path(), Split::Train).unwrap();
    assert_eq!((src.len(), src.classes()), (20, 19));
    for i in 0..src.len() {
        let img = src.load(i).unwrap();
        assert!(img.c == 3 && img.w >= 256 && img.h >= 256 && img.data.len() == img.w * img.h * 3);
    }
    let cfg = StreamConfig { batch: 8, workers: 2, ..Default::default() };
    for tf in [Transform::fb(224), Transform::hwgq(227), Transform::eval(224)] {
        let ld = StreamLoader::new(Arc::new(src.clone()), tf, cfg).unwrap();
        let b: Vec<U8Batch> = ld.epoch(3).collect::<Result<_>>().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].shape[1..], tf.out_shape([0, 0, 3]));
    }
}

#[test]
fn check_counts_images_sizes_and_every_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let nbad = make_folder(dir.path());
    let src = ImageFolder::open(dir.path(), Split::Train).unwrap();
    let rep = check(&src, 2);
    assert_eq!((rep.classes, rep.files, rep.images, rep.bad.len()), (4, 8, 8 - nbad, nbad));
    assert_eq!(rep.empty_classes, ["d_empty"]);
    // Shorter sides 40, 40, 30, 30, 40: all below 64.
    assert_eq!(rep.sizes.values().sum::<usize>(), 5);
    assert_eq!(rep.sizes.get("0: <64"), Some(&5));
    let text = rep.to_string();
    for f in ["6.JPEG", "7.JPEG", "notes.txt", "classes without images: d_empty"] {
        assert!(text.contains(f), "{f} missing from\n{text}");
    }
    let b = bench(&src, Transform::fb(32), 16, &[1, 2]);
    assert!(b.total_ms() > 0.0 && b.scaling.len() == 2 && b.scaling.iter().all(|s| s.1 > 0.0), "{b:?}");
}

/// ImageNet's validation images as distributed: one flat `val/` folder and a label file (our `FILE CLASS` lines
/// or Kaggle's LOC_val_solution.csv); classes come from `train/`.
#[test]
fn flat_val_folder_with_a_label_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for c in ["n01", "n02"] {
        std::fs::create_dir_all(root.join("train").join(c)).unwrap();
        std::fs::write(root.join("train").join(c).join("a.png"), png_rgb(4, 4, &[9; 48])).unwrap();
    }
    std::fs::create_dir_all(root.join("val")).unwrap();
    for f in ["v1.JPEG", "v2.JPEG", "v3.png"] {
        std::fs::write(root.join("val").join(f), png_rgb(4, 4, &[7; 48])).unwrap();
    }
    let labels = root.join(lq_data::VAL_LABELS);
    std::fs::write(&labels, "ImageId,PredictionString\nv1,n02 1 2 3 4\nv2,n01 5 6 7 8\n# comment\nv3.png n02\n")
        .unwrap();
    let v = lq_data::ImageFolder::open(root, lq_data::Split::Val).unwrap();
    assert_eq!(v.labels, [1, 0, 1]);
    assert_eq!(v.files[0], root.join("val/v1.JPEG"));
    assert!(v.load(2).is_ok());
    std::fs::write(&labels, "v1 n03\n").unwrap();
    let e = lq_data::ImageFolder::open(root, lq_data::Split::Val).unwrap_err().to_string();
    assert!(e.contains("val_labels.txt") && e.contains("line 1") && e.contains("n03"), "{e}");
    std::fs::write(&labels, "../x n01\n").unwrap();
    assert!(lq_data::ImageFolder::open(root, lq_data::Split::Val).is_err());
}
