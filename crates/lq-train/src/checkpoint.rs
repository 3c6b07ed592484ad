//! Checkpoints: one safetensors file holding every model variable (`model/<name>`, BN statistics included), every
//! momentum buffer (`momentum/<name>`) and, as JSON metadata under `lqnets`, the quantizer states (bases, EMA,
//! step), the epoch, the best accuracy, the resolved config and what the data looked like (classes, input shape,
//! normalisation: `eval` and `export` then need no training set). A SHA-256 of the content under `lqnets.sha256`
//! (the model file's [`content_hash`]) is verified on load, so an edited or damaged file is an error, not a
//! silently different model. Written atomically: temporary file, fsync, rename.
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::quant::Quantizer;
use lq_data::Normalize;
use lq_engine::model::content_hash;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Format version of the metadata (2: content hash and data description).
pub const VERSION: u32 = 2;

/// What the network was trained on, as inference needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Output classes.
    pub classes: usize,
    /// Input channels, height, width.
    pub input: [usize; 3],
    /// Normalisation mean in pixel units, `[C]` or `[C·H·W]` ([`Normalize::compact_mean`]).
    pub mean: Vec<f32>,
    /// Per-channel scale.
    pub scale: Vec<f32>,
}

impl DataInfo {
    /// The description of a training set and its normalisation.
    pub fn new(d: &lq_data::Dataset, norm: &Normalize) -> Self {
        let scale = norm.parts().1.to_vec();
        DataInfo { classes: d.classes, input: [d.c, d.h, d.w], mean: norm.compact_mean(), scale }
    }
    /// The normalisation, rebuilt.
    pub fn norm(&self) -> Result<Normalize> {
        Normalize::from_parts(&self.mean, &self.scale, self.input[1], self.input[2]).ok_or_else(|| {
            Error::Config(format!(
                "checkpoint normalisation: {} mean and {} scale values do not fit input {:?} (or are not finite)",
                self.mean.len(),
                self.scale.len(),
                self.input
            ))
        })
    }
}

/// Everything in a checkpoint besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// Format version.
    pub version: u32,
    /// Epochs completed.
    pub epoch: usize,
    /// Best test accuracy so far.
    pub best_acc: f64,
    /// The resolved configuration of the run.
    pub config: TrainConfig,
    /// Every quantizer's state.
    pub quantizers: Vec<Quantizer>,
    /// The data the run was trained on (absent in version-1 files).
    #[serde(default)]
    pub data: Option<DataInfo>,
}

/// Version 1 kept the quantization in `[model]` and called the CIFAR ResNet `resnet`: move `method`, `w_bits`,
/// `a_bits` to `[quant]` and name the network as today.
fn upgrade_v1(j: &mut serde_json::Value) -> Option<()> {
    let cfg = j.get_mut("config")?.as_object_mut()?;
    let model = cfg.get_mut("model")?.as_object_mut()?;
    let mut quant = serde_json::Map::new();
    for k in ["method", "w_bits", "a_bits"] {
        quant.insert(k.into(), model.remove(k)?);
    }
    if model.get("arch")?.as_str()? == "vgg_small" {
        model.retain(|k, _| k == "arch");
    } else {
        model.insert("arch".into(), "resnet_cifar".into());
    }
    cfg.insert("quant".into(), quant.into());
    Some(())
}

/// Writes `tensors` and `meta` to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    let mut host: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            if t.kind() != Kind::Float {
                return Err(Error::file(path, format!("tensor {n} has kind {:?}; only f32 is stored", t.kind())));
            }
            let v = Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).contiguous().flatten(0, -1))?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((n.clone(), shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        })
        .collect::<Result<_>>()?;
    host.sort_by(|a, b| a.0.cmp(&b.0));
    let views = host
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| Error::file(path, e))?)))
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(meta).map_err(|e| Error::file(path, e))?;
    let hash = content_hash(&json, host.iter().map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice())));
    let info = HashMap::from([("lqnets".to_string(), json), ("lqnets.sha256".to_string(), hash)]);
    let bytes = safetensors::serialize(views, &Some(info)).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Tensors of a checkpoint as host values: name → (shape, values).
pub type HostTensors = HashMap<String, (Vec<i64>, Vec<f32>)>;

/// Reads a checkpoint: tensors by name (on the CPU) and the metadata.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, Meta)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (host, meta) = parse(&bytes).map_err(|why| Error::file(path, why))?;
    let tensors = host.into_iter().map(|(n, (s, v))| (n, Tensor::from_slice(&v).view(s.as_slice()))).collect();
    Ok((tensors, meta))
}

/// Parses checkpoint bytes without libtorch; every inconsistency is an error message. The config inside is
/// validated like a config file (a checkpoint is as untrusted as any input).
pub fn parse(bytes: &[u8]) -> std::result::Result<(HostTensors, Meta), String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid checkpoint: {e}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let info = header.metadata().as_ref();
    let json = info.and_then(|m| m.get("lqnets")).ok_or("no lqnets metadata: not an lqnets checkpoint")?;
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_str(json).map_err(|e| format!("metadata: {e}"))?;
    if v.version != VERSION && v.version != 1 {
        return Err(format!("checkpoint version {} (this build reads 1 and {VERSION})", v.version));
    }
    let meta: Meta = if v.version == 1 {
        let mut j: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("metadata: {e}"))?;
        upgrade_v1(&mut j).ok_or("metadata: version-1 config without a model section")?;
        serde_json::from_value(j).map_err(|e| format!("metadata: {e}"))?
    } else {
        serde_json::from_str(json).map_err(|e| format!("metadata: {e}"))?
    };
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut out = HashMap::new();
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| e.to_string())?;
        if view.dtype() != Dtype::F32 {
            return Err(format!("tensor {name}: dtype {:?}, expected F32", view.dtype()));
        }
        let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("tensor {name}: value {} at index {i} is not finite", v[i]));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        views.push((name.clone(), view));
        out.insert(name, (shape, v));
    }
    if meta.version >= 2 {
        let want = info.and_then(|m| m.get("lqnets.sha256")).ok_or("no content hash (lqnets.sha256)")?;
        let got = content_hash(json, views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        if &got != want {
            return Err("content hash mismatch: the file was modified or corrupted after it was written".into());
        }
    }
    meta.config.validate().map_err(|e| format!("stored {e}"))?;
    if let Some(d) = &meta.data {
        // Checked before anything is allocated from them (the normalisation expands to c·h·w floats).
        let [c, h, w] = d.input;
        let max = crate::config::MAX_SIZE;
        if !(1..=65535).contains(&d.classes)
            || !(1..=4).contains(&c)
            || !(1..=max).contains(&h)
            || !(1..=max).contains(&w)
        {
            return Err(format!(
                "data: {} classes, input {:?} (1..=65535 classes, 1..=4 channels, sides 1..={max})",
                d.classes, d.input
            ));
        }
    }
    for q in &meta.quantizers {
        if q.state.basis.iter().any(|v| !v.is_finite()) || q.state.biased.iter().any(|v| !v.is_finite()) {
            return Err(format!("quantizer {}: non-finite basis", q.name));
        }
    }
    Ok((out, meta))
}
