//! The training plan: defaults, then a TOML file, then `--set key=value` overrides. Unknown keys and values of
//! the wrong type are errors naming the key.
use crate::error::{Error, Result};
use crate::layers::QuantSpec;
use crate::models::Shortcut;
use crate::quant::Method;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a run needs. Defaults are the paper's ResNet-20 recipe (supplement: lr 0.1, ÷10 at 82 and 123,
/// 200 epochs, wd 1e-4, batch 128, momentum 0.9).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Network and quantization.
    pub model: ModelConfig,
    /// Dataset and input pipeline.
    pub data: DataConfig,
    /// Optimizer and schedule.
    pub optim: OptimConfig,
    /// Seed, device, logging.
    pub run: RunConfig,
}

/// Network and quantization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `resnet` (pre-activation CIFAR ResNet) or `vgg_small`.
    pub arch: String,
    /// ResNet depth (6n+2).
    pub depth: usize,
    /// ResNet shortcut option `A` or `B`.
    pub shortcut: Shortcut,
    /// Quantizer family: `lq`, `uniform`, `hwgq`.
    pub method: Method,
    /// Weight bits (1..=4 as in the paper, up to 8; 32 = full precision).
    pub w_bits: u32,
    /// Activation bits (1..=4, up to 8; 32 = full precision).
    pub a_bits: u32,
}

/// Dataset and input pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `cifar10` (binary batches; also the Fashion-MNIST stand-in in that layout), `cifar100`, or `fashion` /
    /// `mnist` (IDX files, padded to 32×32×3).
    pub dataset: String,
    /// Folder holding the files.
    pub dir: String,
    /// `per_channel` (mean/std of the training set) or `per_pixel` (mean image, then /128: official VGG-Small).
    pub normalize: String,
    /// Zero padding of the random-crop augmentation (0 disables augmentation).
    pub pad: usize,
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
    /// `multistep` or `poly` (power 1 down to `final_lr`).
    pub schedule: String,
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
    /// `cpu` or `cuda` (`cuda:N`).
    pub device: String,
    /// Stop after this many steps per epoch (0 = full epochs); for smoke runs and benchmarks.
    pub max_steps_per_epoch: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: "resnet".into(),
            depth: 20,
            shortcut: Shortcut::A,
            method: Method::Lq,
            w_bits: 2,
            a_bits: 2,
        }
    }
}
impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "cifar10".into(),
            dir: "data/cifar10".into(),
            normalize: "per_channel".into(),
            pad: 4,
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
            schedule: "multistep".into(),
            milestones: vec![82, 123],
            gamma: 0.1,
            final_lr: 0.0,
        }
    }
}
impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { seed: 1, device: "cpu".into(), max_steps_per_epoch: 0 }
    }
}

impl TrainConfig {
    /// Defaults ← `file` (if any) ← each `key=value` of `sets` (value in TOML syntax; bare words are strings).
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self> {
        let mut doc = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::file(p, e))?;
                // The file alone first, so that an error points at the file's own line.
                toml::from_str::<TrainConfig>(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                text.parse::<toml::Table>().map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
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

    fn from_table(doc: toml::Table) -> Result<Self> {
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

    /// The quantization of the model.
    pub fn spec(&self) -> QuantSpec {
        QuantSpec { method: self.model.method, w_bits: self.model.w_bits, a_bits: self.model.a_bits }
    }

    /// Checks values that types alone do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Config(format!("{k}: {why}")));
        for (k, b) in [("model.w_bits", self.model.w_bits), ("model.a_bits", self.model.a_bits)] {
            if !(1..=8).contains(&b) && b != 32 {
                return bad(k, format!("{b} bits; use 1..=8 or 32 (full precision)"));
            }
        }
        if !["resnet", "vgg_small"].contains(&self.model.arch.as_str()) {
            return bad("model.arch", format!("unknown architecture '{}' (resnet, vgg_small)", self.model.arch));
        }
        if !["cifar10", "cifar100", "fashion", "mnist"].contains(&self.data.dataset.as_str()) {
            return bad(
                "data.dataset",
                format!("unknown dataset '{}' (cifar10, cifar100, fashion, mnist)", self.data.dataset),
            );
        }
        if !["per_channel", "per_pixel"].contains(&self.data.normalize.as_str()) {
            return bad("data.normalize", format!("'{}' (per_channel, per_pixel)", self.data.normalize));
        }
        if !["multistep", "poly"].contains(&self.optim.schedule.as_str()) {
            return bad("optim.schedule", format!("'{}' (multistep, poly)", self.optim.schedule));
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
