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
