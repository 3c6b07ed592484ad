//! Tiny generated data and configs shared by the lq-train test binaries.
#![allow(dead_code)]
use lq_data::{Batch, Dataset};
use lq_train::TrainConfig;

/// Tiny ResNet/VGG settings for tests, plus `sets`.
pub fn cfg(sets: &[&str]) -> TrainConfig {
    let mut s: Vec<String> = vec!["optim.batch=8".into(), "data.workers=1".into(), "data.pad=2".into()];
    if !sets.iter().any(|x| x.starts_with("model.arch")) {
        s.extend(["model.arch=\"resnet_cifar\"".into(), "model.depth=8".into()]);
    }
    s.extend(sets.iter().map(|x| x.to_string()));
    TrainConfig::load(None, &s).unwrap()
}

/// 10 classes, each a fixed random pattern plus noise, so a tiny net can learn them.
pub fn dataset(n: usize, seed: u64) -> Dataset {
    let mut state = seed;
    let mut rnd = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let protos: Vec<Vec<u8>> = (0..10).map(|_| (0..3072).map(|_| (rnd() % 256) as u8).collect()).collect();
    let labels: Vec<u16> = (0..n).map(|i| (i % 10) as u16).collect();
    let images = labels
        .iter()
        .flat_map(|&l| protos[l as usize].iter().map(|&p| p.saturating_add((rnd() % 32) as u8)).collect::<Vec<_>>())
        .collect();
    Dataset { images, labels, c: 3, h: 32, w: 32, classes: 10 }
}

pub fn batch(n: usize) -> Batch {
    let ds = dataset(n, 9);
    Batch {
        x: ds.images.iter().map(|&p| p as f32 / 128.0 - 1.0).collect(),
        y: ds.labels.iter().map(|&l| l as i64).collect(),
        shape: [n, 3, 32, 32],
    }
}
