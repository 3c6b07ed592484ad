//! Reading a run directory: its resolved `config.toml` (read as a generic TOML table, so this crate does not
//! depend on the trainer) and its `metrics.jsonl` (one JSON object per epoch). A damaged metrics line (a torn
//! last line of a run being written, a missing key, a `null` where a number belongs) is recorded in
//! [`Run::problems`] and skipped, never fatal.

use crate::error::{Error, Result};
use crate::stats::StatsFile;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The settings of a run that the report shows and matches against the paper. Missing keys take the trainer's
/// defaults (README, "Keys").
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// `model.arch`.
    pub arch: String,
    /// `model.depth` (ResNets).
    pub depth: Option<i64>,
    /// `quant.method`.
    pub method: String,
    /// `quant.w_bits` (32 = full precision).
    pub w_bits: i64,
    /// `quant.a_bits` (32 = full precision).
    pub a_bits: i64,
    /// `data.dataset`.
    pub dataset: String,
    /// `data.dir`.
    pub data_dir: String,
    /// `data.train_limit` (0 = all).
    pub train_limit: i64,
    /// `data.test_limit` (0 = all).
    pub test_limit: i64,
    /// `optim.epochs`: the planned schedule.
    pub epochs: i64,
    /// `optim.batch`.
    pub batch: i64,
    /// `run.max_steps_per_epoch` (0 = whole epochs).
    pub max_steps_per_epoch: i64,
}

impl RunConfig {
    /// Reads the keys from a parsed `config.toml`; `path` names the file in errors (a key of the wrong type).
    pub fn from_table(t: &toml::Table, path: &Path) -> Result<Self> {
        let get = |section: &str, key: &str| t.get(section).and_then(|s| s.get(key));
        let int = |section: &str, key: &str, default: i64| match get(section, key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => Ok(*i),
            Some(v) => Err(Error::format(path, format!("`{section}.{key}` must be an integer, found {v}"))),
        };
        let text = |section: &str, key: &str, default: &str| match get(section, key) {
            None => Ok(default.to_string()),
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(Error::format(path, format!("`{section}.{key}` must be a string, found {v}"))),
        };
        let arch = text("model", "arch", "resnet_cifar")?;
        let depth = match arch.as_str() {
            "resnet_cifar" => Some(int("model", "depth", 20)?),
            "resnet" => Some(int("model", "depth", 0)?),
            _ => None,
        };
        Ok(RunConfig {
            arch,
            depth,
            method: text("quant", "method", "lq")?,
            w_bits: int("quant", "w_bits", 2)?,
            a_bits: int("quant", "a_bits", 2)?,
            dataset: text("data", "dataset", "cifar10")?,
            data_dir: text("data", "dir", "data/cifar10")?,
            train_limit: int("data", "train_limit", 0)?,
            test_limit: int("data", "test_limit", 0)?,
            epochs: int("optim", "epochs", 200)?,
            batch: int("optim", "batch", 128)?,
            max_steps_per_epoch: int("run", "max_steps_per_epoch", 0)?,
        })
    }

    /// The network's name as the paper writes it ("ResNet-20", "VGG-Small", ...).
    pub fn model_name(&self) -> String {
        match (self.arch.as_str(), self.depth) {
            ("resnet_cifar" | "resnet", Some(d)) => format!("ResNet-{d}"),
            ("vgg_small", _) => "VGG-Small".into(),
            ("alexnet", _) => "AlexNet".into(),
            ("vgg_variant", _) => "VGG-Variant".into(),
            ("googlenet", _) => "GoogLeNet-Variant".into(),
            ("densenet121", _) => "DenseNet-121".into(),
            (a, _) => a.to_string(),
        }
    }

    /// True for Fashion-MNIST written in the CIFAR-10 layout (`data.dataset = "cifar10"` read from a
    /// `fashion-as-cifar` folder): its numbers are Fashion-MNIST numbers.
    pub fn is_fashion_stand_in(&self) -> bool {
        self.dataset == "cifar10" && self.data_dir.to_ascii_lowercase().contains("fashion")
    }

    /// The data set as a person names it.
    pub fn dataset_name(&self) -> String {
        if self.is_fashion_stand_in() {
            return "Fashion-MNIST (CIFAR layout)".into();
        }
        match self.dataset.as_str() {
            "cifar10" => "CIFAR-10".into(),
            "cifar100" => "CIFAR-100".into(),
            "fashion" => "Fashion-MNIST".into(),
            "mnist" => "MNIST".into(),
            "imagenet" => "ImageNet".into(),
            d => d.to_string(),
        }
    }

    /// `W2/A2`; a full-precision side prints as 32.
    pub fn bits_label(&self) -> String {
        format!("W{}/A{}", self.w_bits, self.a_bits)
    }

    /// Training images per epoch, where the data set's size is known.
    pub fn images_per_epoch(&self) -> Option<i64> {
        let full = match self.dataset.as_str() {
            _ if self.is_fashion_stand_in() => None,
            "cifar10" | "cifar100" => Some(50_000),
            "fashion" | "mnist" => Some(60_000),
            "imagenet" => Some(1_281_167),
            _ => None,
        };
        let n = if self.train_limit > 0 { Some(self.train_limit) } else { full }?;
        let per_batch = self.batch.max(1);
        let steps = n / per_batch;
        let steps = if self.max_steps_per_epoch > 0 { steps.min(self.max_steps_per_epoch) } else { steps };
        Some(steps * per_batch)
    }
}

/// One quantizer's line in an epoch record.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizerMetrics {
    /// Quantizer name (`….w` weights, `….act` activations).
    pub name: String,
    /// Basis, `channels × K` (weights have one basis per output channel).
    pub basis: Vec<f64>,
    /// Quantization MSE of the last training step.
    pub mse: Option<f64>,
}

/// One line of `metrics.jsonl`. Accuracies are fractions in [0, 1], as the trainer writes them.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Epoch {
    /// Epochs completed (1 = the first).
    pub epoch: u64,
    /// Mean training loss.
    pub train_loss: Option<f64>,
    /// Training top-1.
    pub train_acc: Option<f64>,
    /// Test loss.
    pub test_loss: Option<f64>,
    /// Test top-1.
    pub test_acc: Option<f64>,
    /// Test top-5 (absent in older runs).
    pub test_acc5: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: Option<f64>,
    /// Wall time of the epoch (training and evaluation), seconds.
    pub seconds: Option<f64>,
    /// Per-quantizer basis and MSE.
    pub quantizers: Vec<QuantizerMetrics>,
}

/// A run directory, read.
#[derive(Clone, Debug)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its settings.
    pub config: RunConfig,
    /// Every readable line of `metrics.jsonl`, in file order.
    pub epochs: Vec<Epoch>,
    /// What could not be read (torn or malformed lines, missing keys), one message each.
    pub problems: Vec<String>,
    /// `stats/figure-1.svg`, where `lqnets stats` wrote one.
    pub figure_svg: Option<String>,
    /// `stats/stats.json`, where present and readable.
    pub stats: Option<StatsFile>,
}

impl Run {
    /// Reads `dir/config.toml` (required) and `dir/metrics.jsonl` (a missing file is a run with no epochs yet).
    pub fn read(dir: &Path) -> Result<Run> {
        let cfg_path = dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::format(&cfg_path, e.to_string()))?;
        let config = RunConfig::from_table(&table, &cfg_path)?;
        let mut problems = Vec::new();
        let log = dir.join("metrics.jsonl");
        let epochs = match std::fs::read_to_string(&log) {
            Ok(text) => parse_metrics(&text, &mut problems),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push("metrics.jsonl: not written yet".into());
                Vec::new()
            }
            Err(e) => return Err(Error::io(&log, e)),
        };
        let stats_dir = dir.join("stats");
        let figure_svg = std::fs::read_to_string(stats_dir.join("figure-1.svg")).ok();
        let stats = match stats_dir.join("stats.json") {
            p if p.exists() => StatsFile::read(&p).map_err(|e| problems.push(e.to_string())).ok(),
            _ => None,
        };
        Ok(Run { dir: dir.to_path_buf(), config, epochs, problems, figure_svg, stats })
    }

    /// The directory's last path component, as the report names the run.
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| self.dir.display().to_string())
    }
}

/// Parses `metrics.jsonl` text: one [`Epoch`] per good line; each bad line adds a message to `problems`.
pub fn parse_metrics(text: &str, problems: &mut Vec<String>) -> Vec<Epoch> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("metrics.jsonl line {}", i + 1);
        let torn = i + 1 == lines.len(); // no newline after it: the trainer may be writing it right now
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) if torn => {
                problems.push(format!("{at}: torn last line (a write in progress?): {e}"));
                continue;
            }
            Err(e) => {
                problems.push(format!("{at}: not valid JSON: {e}"));
                continue;
            }
        };
        match epoch_of(&v, &at, problems) {
            Some(ep) => out.push(ep),
            None => continue,
        }
    }
    out
}

fn epoch_of(v: &Value, at: &str, problems: &mut Vec<String>) -> Option<Epoch> {
    let Some(obj) = v.as_object() else {
        problems.push(format!("{at}: not a JSON object"));
        return None;
    };
    let Some(epoch) = obj.get("epoch").and_then(Value::as_u64) else {
        problems.push(format!("{at}: no integer `epoch`; line skipped"));
        return None;
    };
    // A present key that is not a finite number (serde_json writes NaN as null) is reported; an absent
    // optional key (`test_acc5` in older runs) is not.
    let mut num = |key: &str, required: bool| match obj.get(key) {
        Some(x) => match x.as_f64().filter(|f| f.is_finite()) {
            Some(f) => Some(f),
            None => {
                problems.push(format!("{at}: `{key}` is {x}, not a finite number"));
                None
            }
        },
        None => {
            if required {
                problems.push(format!("{at}: `{key}` missing"));
            }
            None
        }
    };
    let mut ep = Epoch {
        epoch,
        train_loss: num("train_loss", true),
        train_acc: num("train_acc", true),
        test_loss: num("test_loss", true),
        test_acc: num("test_acc", true),
        test_acc5: num("test_acc5", false),
        lr: num("lr", true),
        seconds: num("seconds", true),
        quantizers: Vec::new(),
    };
    for q in obj.get("quantizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let name = q.get("name").and_then(Value::as_str);
        let basis: Option<Vec<f64>> =
            q.get("basis").and_then(Value::as_array).map(|b| b.iter().filter_map(Value::as_f64).collect());
        match (name, basis) {
            (Some(name), Some(basis)) => ep.quantizers.push(QuantizerMetrics {
                name: name.to_string(),
                basis,
                mse: q.get("mse").and_then(Value::as_f64),
            }),
            _ => problems.push(format!("{at}: a quantizer entry without `name` or `basis`")),
        }
    }
    Some(ep)
}
