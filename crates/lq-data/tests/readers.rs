//! Readers and loader on small files generated here, including corrupt ones.
use lq_data::*;
use std::path::Path;
use std::sync::Arc;

fn cifar_records(n: usize, label_bytes: usize, label: u8) -> Vec<u8> {
    let rec = label_bytes + 3072;
    let mut b = vec![0u8; n * rec];
    for i in 0..n {
        b[i * rec + label_bytes - 1] = label.wrapping_add(i as u8) % 10;
        for p in 0..3072 {
            b[i * rec + label_bytes + p] = ((i * 7 + p) % 251) as u8;
        }
    }
    b
}

fn write_cifar10(dir: &Path, n: usize) {
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), cifar_records(n, 1, i as u8)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records(n, 1, 0)).unwrap();
}

#[test]
fn cifar10_round_trip_and_errors() {
    let d = tempfile::tempdir().unwrap();
    write_cifar10(d.path(), 4);
    let train = load_cifar(d.path(), Cifar::Ten, true).unwrap();
    assert_eq!((train.len(), train.c, train.h, train.w), (20, 3, 32, 32));
    assert_eq!(train.labels[..4], [1, 2, 3, 4]);
    // Record 1, pixel 5 holds (1·7 + 5) mod 251.
    assert_eq!(train.image(1)[5], 7 + 5);
    // Truncated file.
    let bad = d.path().join("test_batch.bin");
    std::fs::write(&bad, &cifar_records(2, 1, 0)[..3073 + 100]).unwrap();
    let e = load_cifar(d.path(), Cifar::Ten, false).unwrap_err().to_string();
    assert!(e.contains("test_batch.bin") && e.contains("whole number"), "{e}");
    // Label out of range.
    let mut r = cifar_records(2, 1, 0);
    r[3073] = 10;
    std::fs::write(&bad, r).unwrap();
    let e = load_cifar(d.path(), Cifar::Ten, false).unwrap_err().to_string();
    assert!(e.contains("record 1") && e.contains("label 10"), "{e}");
    // Missing batch.
    std::fs::remove_file(d.path().join("data_batch_3.bin")).unwrap();
    let e = load_cifar(d.path(), Cifar::Ten, true).unwrap_err().to_string();
    assert!(e.contains("data_batch_3.bin") && e.contains("missing"), "{e}");
}

#[test]
fn cifar100_uses_fine_label() {
    let d = tempfile::tempdir().unwrap();
    let mut r = cifar_records(2, 2, 0);
    r[1] = 77;
    std::fs::write(d.path().join("test.bin"), r).unwrap();
    let ds = load_cifar(d.path(), Cifar::Hundred, false).unwrap();
    assert_eq!((ds.labels[0], ds.classes), (77, 100));
}

fn write_idx(dir: &Path, prefix: &str, n: usize, images_extra: usize) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    img.extend((0..n * 784 + images_extra).map(|i| (i % 256) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
}

#[test]
fn idx_native_and_as_cifar() {
    let d = tempfile::tempdir().unwrap();
    write_idx(d.path(), "t10k", 3, 0);
    let ds = load_idx(d.path(), "t10k", false).unwrap();
    assert_eq!((ds.len(), ds.c, ds.h, ds.w), (3, 1, 28, 28));
    let cf = load_idx(d.path(), "t10k", true).unwrap();
    assert_eq!((cf.c, cf.h, cf.w), (3, 32, 32));
    // Pixel (0,0) of the 28×28 image sits at (2,2) in every channel; the border is zero.
    let img = cf.image(1);
    assert_eq!(img[2 * 32 + 2], ds.image(1)[0]);
    assert_eq!(img[1024 + 2 * 32 + 2], ds.image(1)[0]);
    assert_eq!(img[0], 0);
    write_idx(d.path(), "t10k", 3, 5);
    let e = load_idx(d.path(), "t10k", false).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("data bytes"), "{e}");
}

fn write_idx_dims(dir: &Path, img_dims: [u32; 3], lab_n: u32) {
    let mut img = vec![0, 0, 8, 3];
    img.extend(img_dims.iter().flat_map(|d| d.to_be_bytes()));
    let n = img_dims.iter().map(|&d| d as usize).try_fold(1usize, |a, d| a.checked_mul(d));
    img.resize(img.len() + n.filter(|&n| n < 1 << 20).unwrap_or(16), 7);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), img).unwrap();
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&lab_n.to_be_bytes());
    lab.resize(8 + lab_n as usize, 1);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), lab).unwrap();
}

#[test]
fn idx_zero_dims_and_overflow_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    for as_cifar in [false, true] {
        // Zero images: an empty dataset of the right shape (the trainer rejects empty sets).
        write_idx_dims(d.path(), [0, 28, 28], 0);
        let ds = load_idx(d.path(), "t10k", as_cifar).unwrap();
        assert!(ds.is_empty() && ds.images.is_empty());
        // A zero height or width: chunks_exact(0) / a division by zero before the check.
        for dims in [[3, 0, 28], [3, 28, 0], [0, 0, 0]] {
            write_idx_dims(d.path(), dims, dims[0]);
            let e = load_idx(d.path(), "t10k", as_cifar).unwrap_err().to_string();
            assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("zero dimension"), "{dims:?}: {e}");
        }
        // A dims product past usize::MAX (an overflow panic with debug assertions, a wrapped size without).
        write_idx_dims(d.path(), [u32::MAX, u32::MAX, u32::MAX], 1);
        let e = load_idx(d.path(), "t10k", as_cifar).unwrap_err().to_string();
        assert!(e.contains("more than usize::MAX"), "{e}");
    }
}

#[test]
fn npy_shape_overflow_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.npy");
    // 2^62 elements of 4 bytes: the element count fits usize, the byte count does not.
    let h = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }\n";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h);
    std::fs::write(&p, b).unwrap();
    let e = read_npy(&p).unwrap_err().to_string();
    assert!(e.contains("big.npy") && e.contains("overflows"), "{e}");
}

/// An 8-bit PNG of `w×h` with `ch` samples per pixel, sample = (pixel index · 3 + channel) mod 251 + 1.
fn png_bytes(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let ch = color.samples();
    let per = if depth == png::BitDepth::Sixteen { 2 } else { 1 };
    let data: Vec<u8> = (0..(w * h) as usize * ch * per).map(|i| ((i / per) * 3 % 251 + 1) as u8).collect();
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, w, h);
    e.set_color(color);
    e.set_depth(depth);
    e.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// CRC-32 of a PNG chunk's type and data (to forge headers).
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn png_rgb_grey_rgba_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.png");
    let (w, h) = (5u32, 3u32);
    let plane = 15;
    for (color, ch) in [(png::ColorType::Rgb, 3), (png::ColorType::Grayscale, 1), (png::ColorType::Rgba, 4)] {
        std::fs::write(&p, png_bytes(w, h, color, png::BitDepth::Eight)).unwrap();
        let px = read_png(&p, [3, 3, 5]).unwrap();
        // CHW: channel c of pixel i is sample (i·ch + c) for colour, sample i for grey in every channel.
        let want: Vec<u8> = (0..3 * plane)
            .map(|i| {
                let (c, pix) = (i / plane, i % plane);
                ((pix * ch + if ch == 1 { 0 } else { c }) * 3 % 251 + 1) as u8
            })
            .collect();
        assert_eq!(px, want, "{color:?}");
    }
    std::fs::write(&p, png_bytes(w, h, png::ColorType::Grayscale, png::BitDepth::Eight)).unwrap();
    assert_eq!(read_png(&p, [1, 3, 5]).unwrap(), (0..plane).map(|i| (i * 3 % 251 + 1) as u8).collect::<Vec<_>>());
}

#[test]
fn png_hostile_headers_and_data_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.png");
    // Wrong size: the message names the file and both sizes.
    std::fs::write(&p, png_bytes(8, 4, png::ColorType::Rgb, png::BitDepth::Eight)).unwrap();
    let e = read_png(&p, [3, 32, 32]).unwrap_err().to_string();
    assert!(e.contains("bad.png") && e.contains("8x4") && e.contains("32x32"), "{e}");
    // A 1-pixel file whose header declares 1×1_000_000_000: an error before any frame buffer is allocated.
    let mut b = png_bytes(1, 1, png::ColorType::Rgb, png::BitDepth::Eight);
    b[20..24].copy_from_slice(&1_000_000_000u32.to_be_bytes()); // IHDR height
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = read_png(&p, [3, 32, 32]).unwrap_err().to_string();
    assert!(e.contains("1x1000000000") && e.contains("32x32"), "{e}");
    let e = read_png(&p, [3, 1_000_000_000, 1]).unwrap_err().to_string();
    assert!(e.contains("pixels"), "{e}");
    // 16-bit samples, a 3-channel image for a 1-channel model, a palette image.
    std::fs::write(&p, png_bytes(2, 2, png::ColorType::Rgb, png::BitDepth::Sixteen)).unwrap();
    assert!(read_png(&p, [3, 2, 2]).unwrap_err().to_string().contains("16-bit"));
    std::fs::write(&p, png_bytes(2, 2, png::ColorType::Rgb, png::BitDepth::Eight)).unwrap();
    assert!(read_png(&p, [1, 2, 2]).unwrap_err().to_string().contains("1-channel"));
    // Every truncation before IEND (the pixels are complete after it) and a corrupt data byte (CRC) are errors.
    let good = png_bytes(6, 6, png::ColorType::Rgb, png::BitDepth::Eight);
    for cut in 0..good.len() - 12 {
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = read_png(&p, [3, 6, 6]).unwrap_err().to_string();
        assert!(e.contains("bad.png"), "cut {cut}: {e}");
    }
    let mut b = good.clone();
    let idat = b.windows(4).position(|w| w == b"IDAT").unwrap();
    b[idat + 6] ^= 0x55;
    std::fs::write(&p, &b).unwrap();
    assert!(read_png(&p, [3, 6, 6]).is_err());
    // Missing file.
    let e = read_png(&d.path().join("none.png"), [3, 6, 6]).unwrap_err().to_string();
    assert!(e.contains("none.png"), "{e}");
}

#[test]
fn npy_round_trip_and_bad_dtype() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.npy");
    write_npy(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
    let a = read_npy(&p).unwrap();
    assert_eq!(a, NpyArray { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5] });
    let mut b = std::fs::read(&p).unwrap();
    let at = b.windows(3).position(|w| w == b"<f4").unwrap();
    b[at + 2] = b'8';
    std::fs::write(&p, &b).unwrap();
    let e = read_npy(&p).unwrap_err().to_string();
    assert!(e.contains("float32"), "{e}");
    std::fs::write(&p, &std::fs::read(&p).unwrap()[..50]).unwrap();
    assert!(read_npy(&p).is_err());
}

fn tiny(n: usize) -> Dataset {
    Dataset {
        images: (0..n * 3 * 8 * 8).map(|i| (i % 256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        c: 3,
        h: 8,
        w: 8,
        classes: 10,
    }
}

#[test]
fn loader_is_reproducible_and_worker_independent() {
    let ds = Arc::new(tiny(37));
    let norm = Normalize::per_channel_of(&ds);
    let cfg = LoaderConfig {
        batch: 8,
        shuffle: true,
        pad: 4,
        drop_last: false,
        workers: 1,
        seed: 5,
        shard: Shard::default(),
    };
    let one: Vec<Batch> = Loader::new(ds.clone(), norm.clone(), cfg).epoch(3).collect();
    let three: Vec<Batch> =
        Loader::new(ds.clone(), norm.clone(), LoaderConfig { workers: 3, ..cfg }).epoch(3).collect();
    assert_eq!(one.len(), 5);
    assert_eq!(one, three);
    let other: Vec<Batch> = Loader::new(ds.clone(), norm.clone(), cfg).epoch(4).collect();
    assert_ne!(one[0].y, other[0].y);
    // Every image appears once per epoch.
    let mut seen: Vec<i64> = one.iter().flat_map(|b| b.y.clone()).collect();
    seen.sort();
    let mut want: Vec<i64> = ds.labels.iter().map(|&l| l as i64).collect();
    want.sort();
    assert_eq!(seen, want);
    let dropped = Loader::new(ds, norm, LoaderConfig { drop_last: true, ..cfg });
    assert_eq!(dropped.batches(), 4);
}

/// Data-parallel shards: the ranks' parts of each batch, in rank order, are exactly the one-process batch (images,
/// augmentation and labels), for every world size; a batch that does not split evenly still splits completely.
#[test]
fn shards_of_a_batch_make_the_whole_batch() {
    let ds = Arc::new(tiny(37));
    let norm = Normalize::per_channel_of(&ds);
    let cfg = LoaderConfig {
        batch: 12,
        shuffle: true,
        pad: 4,
        drop_last: false,
        workers: 2,
        seed: 9,
        shard: Shard::default(),
    };
    let whole: Vec<Batch> = Loader::new(ds.clone(), norm.clone(), cfg).epoch(2).collect();
    for world in [2, 3, 4] {
        let parts: Vec<Vec<Batch>> = (0..world)
            .map(|rank| {
                Loader::new(ds.clone(), norm.clone(), LoaderConfig { shard: Shard { rank, world }, ..cfg })
                    .epoch(2)
                    .collect()
            })
            .collect();
        for (b, w) in whole.iter().enumerate() {
            let x: Vec<f32> = parts.iter().flat_map(|p| p[b].x.clone()).collect();
            let y: Vec<i64> = parts.iter().flat_map(|p| p[b].y.clone()).collect();
            assert_eq!((&x, &y), (&w.x, &w.y), "world {world}, batch {b}");
        }
    }
}

#[test]
fn augmentation_pads_with_zero_pixels_and_flips() {
    use rand::SeedableRng;
    // No zero pixel in the source, so a zero in the output can only come from padding (edge replication fails).
    let mut ds = tiny(1);
    ds.images.iter_mut().for_each(|p| *p = *p % 255 + 1);
    let img = ds.image(0);
    let norm = Normalize::per_channel(&[0.0; 3], &[1.0 / 255.0; 3], 8, 8); // identity on pixel values
                                                                           // The crop of the zero-padded image at shift (oy, ox), optionally mirrored.
    let crop = |oy: isize, ox: isize, flip: bool| -> Vec<f32> {
        (0..3 * 64)
            .map(|i| {
                let (c, y, x) = (i / 64, (i / 8 % 8) as isize, (i % 8) as isize);
                let (sy, sx) = (y + oy, if flip { 7 - x } else { x } + ox);
                let inside = (0..8).contains(&sy) && (0..8).contains(&sx);
                if inside {
                    img[c * 64 + sy as usize * 8 + sx as usize] as f32
                } else {
                    0.0
                }
            })
            .collect()
    };
    let (mut seen_pad, mut seen_flip) = (false, false);
    for s in 0..64 {
        let mut out = vec![0.0; 3 * 64];
        augment::pad_crop_flip(img, [3, 8, 8], 4, &norm, &mut rand_chacha::ChaCha8Rng::seed_from_u64(s), &mut out);
        // Every output is one of the 2·9·9 crops of the zero-padded image.
        let hit = (-4..=4)
            .flat_map(|oy| (-4..=4).flat_map(move |ox| [(oy, ox, false), (oy, ox, true)]))
            .find(|&(oy, ox, f)| out == crop(oy, ox, f));
        let (oy, ox, flip) = hit.unwrap_or_else(|| panic!("seed {s}: not a crop of the zero-padded image"));
        seen_pad |= (oy, ox) != (0, 0) && out.contains(&0.0);
        seen_flip |= flip && (oy, ox) == (0, 0);
    }
    assert!(seen_pad && seen_flip);
}

/// The message as `anyhow`'s `{:#}` prints it: the error, then each `source()`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut at = e.source();
    while let Some(c) = at {
        s += &format!(": {c}");
        at = c.source();
    }
    s
}

#[test]
fn io_errors_name_the_file_once_and_the_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let e = read_npy(&d.path().join("none.npy")).unwrap_err();
    let msg = chain(&e);
    assert_eq!(msg.matches("none.npy").count(), 1, "{msg}");
    assert_eq!(msg.matches("os error 2").count(), 1, "{msg}");
}
