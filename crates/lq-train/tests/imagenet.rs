//! Training from an image folder (the ImageNet layout) end to end: streamed, augmented, checkpointed with its data
//! description, exported and run by the engine.
use lq_train::{trainer, TrainConfig, Trainer};
use std::path::Path;

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    let px: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7 + seed * 101) % 251) as u8).collect();
    e.write_header().unwrap().write_image_data(&px).unwrap();
}

#[test]
fn an_image_folder_trains_exports_and_runs() {
    let d = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 4), ("val", 2)] {
        for class in ["cat", "dog"] {
            let dir = d.path().join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                write_png(&dir.join(format!("{i}.JPEG")), 40 + i, 48, i + class.len() as u32);
            }
        }
    }
    let sets: Vec<String> = [
        "model.arch=\"resnet_cifar\"",
        "model.depth=8",
        "data.dataset=\"imagenet\"",
        &format!("data.dir=\"{}\"", d.path().display()),
        "data.size=32",
        "data.workers=2",
        "optim.batch=4",
        "optim.epochs=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = TrainConfig::load(None, &sets).unwrap();
    let (tl, vl) = trainer::feeds(&cfg).unwrap();
    assert_eq!((tl.len(), vl.len(), tl.batches()), (8, 4, 2));
    let info = tl.info();
    assert_eq!((info.classes, info.input), (2, [3, 32, 32]));
    let mut tr = Trainer::new(cfg, info.classes as i64).unwrap();
    let out = d.path().join("run");
    trainer::run(&mut tr, &tl, &vl, &out).unwrap();
    let back = Trainer::load(&out.join("last.safetensors"), None).unwrap();
    assert_eq!(back.data.as_ref().unwrap(), &info);
    let f = lq_train::export::export(&back, &info.norm().unwrap(), info.input, info.classes).unwrap();
    let m = lq_engine::Model::from_file(&f).unwrap();
    let logits = m.forward(&vec![0.1; 3 * 32 * 32], lq_engine::Isa::best()).unwrap();
    assert_eq!(logits.len(), 2);
}

/// Streamed u8 batches normalised on the device equal the host's f32 conversion bit for bit, per-channel and
/// per-pixel means alike (a swapped permute or a mean in the wrong layout fails it).
#[test]
fn pixels_normalised_on_the_device_equal_the_host_batch() {
    use lq_data::{Normalize, U8Batch, IMAGENET_MEAN, IMAGENET_STD};
    use std::sync::Arc;
    use trainer::{Input, Pixels};
    let (n, h, w, c) = (3usize, 5usize, 7usize, 3usize);
    let x: Vec<u8> = (0..n * h * w * c).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let b = U8Batch { x, y: vec![2, 0, 1], shape: [n, h, w, c], skipped: 0 };
    let per_pixel: Vec<f32> = (0..c * h * w).map(|i| 0.3 + 0.001 * i as f32).collect();
    for norm in [
        Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, h, w),
        Normalize::from_parts(&per_pixel.iter().map(|m| m * 255.0).collect::<Vec<_>>(), &[0.02, 0.03, 0.04], h, w)
            .unwrap(),
    ] {
        let want = b.to_batch(&norm);
        let px = Pixels::new(b.clone(), Arc::new(norm));
        let t = px.on_device(tch::Device::Cpu);
        assert_eq!(t.size(), [n as i64, c as i64, h as i64, w as i64]);
        assert_eq!(Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap(), want.x);
        let (t, y) = px.tensors(tch::Device::Cpu); // the host loop on the CPU
        assert_eq!(Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap(), want.x);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), want.y);
    }
    // An empty shard (a data-parallel rank's part of a short last batch) is an empty input, not a fault.
    let empty = U8Batch { x: vec![], y: vec![], shape: [0, h, w, c], skipped: 0 };
    let px = Pixels::new(empty, Arc::new(Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, h, w)));
    assert_eq!(px.tensors(tch::Device::Cpu).0.size(), [0, c as i64, h as i64, w as i64]);
    assert_eq!(px.on_device(tch::Device::Cpu).size(), [0, c as i64, h as i64, w as i64]);
}
