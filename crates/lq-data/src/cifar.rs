//! CIFAR-10 and CIFAR-100 in the official binary layout.
//!
//! CIFAR-10: `data_batch_1..5.bin` and `test_batch.bin`, records of 3073 bytes (label, then 1024 R, 1024 G,
//! 1024 B, row-major). CIFAR-100: `train.bin` and `test.bin`, records of 3074 bytes (coarse label, fine label,
//! pixels); we use the fine label. Files with a whole number of records are accepted (the 20-record genuine
//! test set of `get-real-data.sh` included). `scripts/get-cifar10.sh` downloads the official archive.
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes.
    Ten,
    /// 100 classes (fine labels).
    Hundred,
}

impl Cifar {
    fn files(self, train: bool) -> Vec<String> {
        match (self, train) {
            (Cifar::Ten, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Cifar::Ten, false) => vec!["test_batch.bin".into()],
            (Cifar::Hundred, true) => vec!["train.bin".into()],
            (Cifar::Hundred, false) => vec!["test.bin".into()],
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }
}

/// Loads the training (`train`) or test split from `dir`.
pub fn load_cifar(dir: &Path, kind: Cifar, train: bool) -> Result<Dataset> {
    let mut ds = Dataset { images: Vec::new(), labels: Vec::new(), c: 3, h: 32, w: 32, classes: kind.classes() };
    for f in kind.files(train) {
        let path = dir.join(&f);
        if !path.exists() {
            let hint = "run `scripts/get-cifar10.sh DIR` with internet access, or copy the official binary files \
                        (cifar-10-batches-bin/*.bin) into this folder";
            return Err(Error::Missing { path, hint: hint.into() });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        parse_records(&path, &bytes, kind, &mut ds)?;
    }
    Ok(ds)
}

fn parse_records(path: &Path, bytes: &[u8], kind: Cifar, ds: &mut Dataset) -> Result<()> {
    let rec = kind.label_bytes() + PIXELS;
    if bytes.is_empty() {
        return Err(Error::format(path, "empty file (no records)"));
    }
    if !bytes.len().is_multiple_of(rec) {
        let why = format!(
            "{} bytes is not a whole number of {rec}-byte records (truncated or not a CIFAR batch)",
            bytes.len()
        );
        return Err(Error::format(path, why));
    }
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1] as usize;
        if label >= kind.classes() {
            let why = format!("record {i} (byte offset {}): label {label} out of range 0..{}", i * rec, kind.classes());
            return Err(Error::format(path, why));
        }
        ds.labels.push(label as u16);
        ds.images.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}
