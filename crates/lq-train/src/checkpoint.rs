//! Checkpoints: one safetensors file holding every model variable (`model/<name>`, BN statistics included), every
//! momentum buffer (`momentum/<name>`) and, as JSON metadata under `lqnets`, the quantizer states (bases, EMA,
//! step), the epoch, the best accuracy and the resolved config. Written atomically: temporary file, fsync, rename.
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::quant::Quantizer;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Format version of the metadata.
pub const VERSION: u32 = 1;

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
}

/// Writes `tensors` and `meta` to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
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
    let views = host
        .iter()
        .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| Error::file(path, e))?)))
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(meta).map_err(|e| Error::file(path, e))?;
    let bytes = safetensors::serialize(views, &Some(HashMap::from([("lqnets".to_string(), json)])))
        .map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Reads a checkpoint: tensors by name (on the CPU) and the metadata.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, Meta)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid checkpoint: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, e))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lqnets"))
        .ok_or_else(|| Error::file(path, "no lqnets metadata"))?;
    let meta: Meta = serde_json::from_str(json).map_err(|e| Error::file(path, format!("metadata: {e}")))?;
    if meta.version != VERSION {
        return Err(Error::file(path, format!("checkpoint version {} (this build reads {VERSION})", meta.version)));
    }
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::file(path, format!("tensor {name}: dtype {:?}, expected F32", view.dtype())));
        }
        let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::from_slice(&v).view(shape.as_slice()));
    }
    Ok((out, meta))
}
