//! The training plan: defaults, then a TOML file, then `--set key=value` overrides. Unknown keys and values of
//! the wrong type are errors naming the key.
use crate::error::{Error, Result};
pub use crate::layers::QuantSpec;
pub use crate::models::ModelSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a run needs. Defaults are the paper's ResNet-20 recipe (supplement: lr 0.1, ÷10 at 82 and 123,
/// 200 epochs, wd 1e-4, batch 128, momentum 0.9).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Network (`[model] arch = ...` and its parameters).
    pub model: ModelSpec,
    /// Quantization of the network.
    pub quant: QuantSpec,
    /// Dataset and input pipeline.
    pub data: DataConfig,
    /// Optimizer and schedule.
    pub optim: OptimConfig,
    /// Seed, device, logging.
    pub run: RunConfig,
}

/// Largest input side (`data.size`, and the input of a checkpoint's data description): far above any network here,
/// and small enough that a per-pixel normalisation (`3·size²` floats) is a modest allocation.
pub const MAX_SIZE: usize = 2048;

/// Datasets lqnets reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// CIFAR-10 binary batches (also the Fashion-MNIST stand-in written in that layout).
    Cifar10,
    /// CIFAR-100 binary.
    Cifar100,
    /// Fashion-MNIST IDX files, padded to 32×32×3.
    Fashion,
    /// MNIST IDX files, padded to 32×32×3.
    Mnist,
    /// ImageNet as an image folder (`train/<class>/*`, `val/<class>/*`), streamed.
    Imagenet,
}

impl DatasetKind {
    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            DatasetKind::Imagenet => 1000,
            _ => 10,
        }
    }
}

/// Training augmentation of streamed (ImageNet) images (supplement §2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// fb.resnet.torch: random-resized crop, colour jitter, PCA lighting, flip (the rows above 1/2 bits).
    #[default]
    Fb,
    /// HWGQ comparison: resize shorter side to 256, random crop, flip (the 1/2-bit rows).
    Hwgq,
}

/// Input normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeKind {
    /// Mean/std per channel, measured on the training set.
    PerChannel,
    /// Mean image subtracted, then /128 (the official VGG-Small input).
    PerPixel,
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `lr · gamma^(milestones passed)`.
    Multistep,
    /// Linear (polynomial power 1) from `lr` to `final_lr` over the run.
    Poly,
}

/// Where tensors live: `"cpu"`, `"cuda"` (device 0) or `"cuda:N"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (cpu, cuda, cuda:N)")),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        match d {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// Dataset and input pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Which dataset.
    pub dataset: DatasetKind,
    /// Folder holding the files.
    pub dir: String,
    /// Input normalisation.
    pub normalize: NormalizeKind,
    /// Zero padding of the random-crop augmentation of in-memory datasets (0 disables augmentation).
    pub pad: usize,
    /// Augmentation of streamed (ImageNet) training images.
    pub augment: Augment,
    /// Side of the (square) network input; the network is built for it.
    pub size: usize,
    /// Loader worker threads.
    pub workers: usize,
    /// Use only the first N training images (0 = all).
    pub train_limit: usize,
    /// Use only the first N test images (0 = all).
    pub test_limit: usize,
}

/// Optimizer and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum (the official ImageNet script; CIFAR uses plain momentum).
    pub nesterov: bool,
    /// L2 weight decay on conv/FC kernels only (not BN, biases, bases).
    pub weight_decay: f64,
    /// Batch size.
    pub batch: usize,
    /// Epochs.
    pub epochs: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Epochs at which the multistep schedule multiplies the lr by `gamma`.
    pub milestones: Vec<usize>,
    /// Multistep factor.
    pub gamma: f64,
    /// Final lr of the poly schedule.
    pub final_lr: f64,
}

/// Seed, device, logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seed of weights init, shuffling and augmentation.
    pub seed: u64,
    /// Device.
    pub device: DeviceSpec,
    /// Stop after this many steps per epoch (0 = full epochs); for smoke runs and benchmarks.
    pub max_steps_per_epoch: usize,
    /// Data-parallel runs: BatchNorm statistics over the whole global batch (synchronised BN) instead of each
    /// rank's part (PyTorch DDP's default).
    pub sync_bn: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetKind::Cifar10,
            dir: "data/cifar10".into(),
            normalize: NormalizeKind::PerChannel,
            pad: 4,
            augment: Augment::Fb,
            size: 32,
            workers: 2,
            train_limit: 0,
            test_limit: 0,
        }
    }
}
impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            batch: 128,
            epochs: 200,
            schedule: Schedule::Multistep,
            milestones: vec![82, 123],
            gamma: 0.1,
            final_lr: 0.0,
        }
    }
}
impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { seed: 1, device: DeviceSpec::Cpu, max_steps_per_epoch: 0, sync_bn: false }
    }
}

impl TrainConfig {
    /// Defaults ← `file` (if any) ← each `key=value` of `sets` (value in TOML syntax; bare words are strings).
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self> {
        let mut doc = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::file(p, e))?;
                let doc = text.parse::<toml::Table>().map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                // The file alone first, so that an error points at the file's own line (a `[model]` without
                // `arch` gets the default network below, which the file's own text does not name).
                let names_arch = doc.get("model").and_then(|m| m.get("arch")).is_some();
                if names_arch || !doc.contains_key("model") {
                    toml::from_str::<TrainConfig>(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                }
                doc
            }
            None => toml::Table::new(),
        };
        apply_sets(&mut doc, sets)?;
        Self::from_table(doc)
    }

    /// This config with `key=value` overrides applied (as `--set`), validated.
    pub fn with_sets(&self, sets: &[String]) -> Result<Self> {
        let mut doc = toml::Table::try_from(self).map_err(|e| Error::Config(e.to_string()))?;
        apply_sets(&mut doc, sets)?;
        Self::from_table(doc)
    }

    fn from_table(mut doc: toml::Table) -> Result<Self> {
        // `[model]` keys without `arch` are the default network's (`--set model.depth=32`).
        if let Some(m) = doc.get_mut("model").and_then(|m| m.as_table_mut()) {
            m.entry("arch").or_insert_with(|| "resnet_cifar".into());
        }
        // Through text so that the error shows the offending `key = value` line.
        let text = toml::to_string(&doc).map_err(|e| Error::Config(e.to_string()))?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The value of `section.key` in TOML syntax.
    pub fn get(&self, key: &str) -> Option<String> {
        let doc = toml::Table::try_from(self).ok()?;
        let (sec, k) = key.split_once('.')?;
        doc.get(sec)?.get(k).map(|v| v.to_string())
    }

    /// The `section.key`s whose values differ between two configs, with both values (`key: a -> b`).
    pub fn diff(&self, other: &TrainConfig) -> Vec<String> {
        let flat = |c: &TrainConfig| {
            let mut out = std::collections::BTreeMap::new();
            if let Ok(toml::Value::Table(t)) = toml::Value::try_from(c) {
                for (sec, v) in t {
                    for (k, v) in v.as_table().into_iter().flatten() {
                        out.insert(format!("{sec}.{k}"), v.to_string());
                    }
                }
            }
            out
        };
        let (a, b) = (flat(self), flat(other));
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} -> {}", b.get(k).map_or("(none)", |s| s.as_str())))
            .collect()
    }

    /// Checks values that types alone do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Config(format!("{k}: {why}")));
        for (k, b) in [("quant.w_bits", self.quant.w_bits), ("quant.a_bits", self.quant.a_bits)] {
            if !(1..=8).contains(&b) && b != 32 {
                return bad(k, format!("{b} bits; use 1..=8 or 32 (full precision)"));
            }
        }
        self.model.check(&self.quant)?;
        if !(1..=MAX_SIZE).contains(&self.data.size) {
            return bad("data.size", format!("{}: use 1..={MAX_SIZE}", self.data.size));
        }
        let o = &self.optim;
        for (k, v) in [
            ("optim.lr", o.lr),
            ("optim.momentum", o.momentum),
            ("optim.weight_decay", o.weight_decay),
            ("optim.gamma", o.gamma),
            ("optim.final_lr", o.final_lr),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(k, format!("{v} must be finite and >= 0"));
            }
        }
        if o.batch == 0 || o.epochs == 0 {
            return bad("optim.batch/optim.epochs", "must be > 0".into());
        }
        Ok(())
    }
}

fn apply_sets(doc: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, val) = s.split_once('=').ok_or_else(|| Error::Config(format!("--set {s}: expected key=value")))?;
        let val = format!("v = {val}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(val.into()));
        set_path(doc, key.trim(), val)?;
    }
    Ok(())
}

fn set_path(doc: &mut toml::Table, key: &str, val: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last =
        parts.pop().filter(|s| !s.is_empty()).ok_or_else(|| Error::Config(format!("--set: empty key in '{key}'")))?;
    let mut t = doc;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("--set {key}: '{p}' is not a section")))?;
    }
    t.insert(last.into(), val);
    Ok(())
}
