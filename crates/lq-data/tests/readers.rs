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
    let cfg = LoaderConfig { batch: 8, shuffle: true, pad: 4, drop_last: false, workers: 1, seed: 5 };
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

#[test]
fn augmentation_pads_with_zero_pixels_and_flips() {
    use rand::SeedableRng;
    let ds = tiny(1);
    let norm = Normalize::per_channel(&[0.0; 3], &[1.0 / 255.0; 3], 8, 8); // identity on pixel values
    let mut seen_pad = false;
    let mut seen_flip = false;
    for s in 0..64 {
        let mut out = vec![0.0; 3 * 64];
        augment::pad_crop_flip(
            ds.image(0),
            [3, 8, 8],
            4,
            &norm,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(s),
            &mut out,
        );
        seen_pad |= out.contains(&0.0);
        // A flipped, unshifted crop is the mirrored image.
        let mirrored: Vec<f32> = (0..3 * 64).map(|i| ds.image(0)[i / 8 * 8 + 7 - i % 8] as f32).collect();
        seen_flip |= out == mirrored;
        assert!(out.iter().all(|&v| v == 0.0 || ds.image(0).contains(&(v as u8))));
    }
    assert!(seen_pad && seen_flip);
}
