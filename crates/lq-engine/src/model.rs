//! The deployable model file: one safetensors file whose JSON metadata (`lqnets`, [`Meta`]) holds the format
//! version, the trainer's model description, the input normalisation and the network as a list of operations
//! ([`crate::graph::Op`]), and whose tensors hold, per layer `X` (names are the trainer's layer names):
//!
//! | tensor | dtype, shape | what |
//! |---|---|---|
//! | `X.bits` | U8 `[C_out, K_w, ⌈k·k·C_in/8⌉]` | quantized conv X: weight bit-planes, bit 1 = +1, densely packed in (ky, kx, c_in) order, LSB first |
//! | `X.basis` | F32 `[C_out, K_w]` | its per-channel weight bases (weight = Σ_i basis_i·(bit_i ? +1 : −1)) |
//! | `X.w` | F32 `[C_out, C_in, k, k]` | full-precision conv X (OIHW) |
//! | `X.b` | F32 `[C_out]` | bias of conv X (either kind), when its op says `bias: true` |
//! | `Y.tau`, `Y.sign` | F32 `[C, 2^K_a−1]`, `[C]` | BN→ReLU→Q unit Y folded into per-channel thresholds |
//! | `Y.codes`, `Y.basis` | U8 `[2^K_a]`, F32 `[K_a]` | code of each sorted level, activation basis |
//! | `Z.scale`, `Z.shift` | F32 `[C]` | a full-precision BN folded to `scale·x + shift` |
//! | `L.weight`, `L.bias` | F32 `[C_out, C·H·W]`, `[C_out]` | full-precision linear layer L |
//!
//! Bit widths are per layer, read from the shapes: K_w from `X.bits`, K_a from `Y.basis` (1..=8 each).
//!
//! Metadata key `lqnets.sha256` holds the SHA-256 (hex) of the content: the `lqnets` JSON, then every tensor's
//! name, dtype, shape and bytes in name order, each length-prefixed. Loading recomputes it, so an edited digit or
//! a flipped bit is an error ("content hash mismatch"), not a silently different prediction.
//!
//! Loading validates the version, the hash, the header, dtypes, the graph, every shape against it and every f32
//! value (finite): a truncated, edited or hostile file gives an error, never a panic. Files of versions 1 (no
//! hash) and 2 (fixed CIFAR architectures) are rejected with a hint to re-export.
use crate::conv::BitConv;
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::layout::{patch_bit, patch_words, ChannelQuant};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Version of the file format this build reads and writes (2: content hash; 3: the network as a list of ops).
pub const FORMAT_VERSION: u32 = 3;

/// Metadata keys: the JSON [`Meta`] and the content hash.
const META_KEY: &str = "lqnets";
const HASH_KEY: &str = "lqnets.sha256";

/// SHA-256 (hex) of the metadata JSON and the tensors `(name, dtype, shape, bytes)`, which must come in name order.
/// Every field is length-prefixed so no two different contents feed the same byte stream. The one content hash of
/// lqnets files: model files here, checkpoints in `lq-train`.
pub fn content_hash<'a>(json: &str, tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut h = Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(json.as_bytes());
    for (name, dt, shape, bytes) in tensors {
        put(name.as_bytes());
        put(format!("{dt:?}").as_bytes());
        put(&shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect::<Vec<_>>());
        put(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Metadata stored under the `lqnets` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Format version.
    pub version: u32,
    /// The trainer's model description (JSON), opaque to the engine: the CLI rebuilds an fp32 baseline from it.
    pub model: String,
    /// Output classes: the last value is `1 × 1 × classes`.
    pub classes: usize,
    /// Weight bits of the quantized layers, for display (each layer's own width comes from its tensors).
    pub w_bits: u32,
    /// Activation bits, for display.
    pub a_bits: u32,
    /// Input channels, height, width.
    pub input: [usize; 3],
    /// Input normalisation: `(pixel − mean)·scale[channel]`, pixels in 0..255; `mean` is per channel (`[C]`) or
    /// per pixel (`[C·H·W]`, the official VGG-Small input).
    pub mean: Vec<f32>,
    /// Per-channel scale.
    pub scale: Vec<f32>,
    /// The network: op `i` makes value `i + 1` from earlier values; value 0 is the normalised input.
    pub graph: Vec<Op>,
}

/// One stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 values.
    F32(Vec<f32>),
    /// u64 words.
    U64(Vec<u64>),
    /// bytes.
    U8(Vec<u8>),
}

/// Tensors by name with their shapes, plus the metadata: what export writes and load reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFile {
    /// Name → (shape, data).
    pub tensors: BTreeMap<String, (Vec<usize>, Data)>,
    /// Metadata (None only while being built).
    pub meta: Option<Meta>,
}

impl ModelFile {
    /// Adds a packed quantized conv under `name`, densely packed (no per-pixel word padding, so 16-channel layers
    /// cost 16 bits per tap, not 64).
    pub fn put_conv(&mut self, name: &str, c: &BitConv) {
        let (c_in, c_out, kw) = (c.c_in(), c.c_out(), c.kw());
        let (taps, words) = (c.k() * c.k(), patch_words(c_in, c.k()));
        let bytes = (taps * c_in).div_ceil(8);
        let mut dense = vec![0u8; c_out * kw * bytes];
        for row in 0..c_out * kw {
            for d in 0..taps * c_in {
                let (wd, b) = patch_bit(c_in, d / c_in, d % c_in);
                if (c.bits()[row * words + wd] >> b) & 1 == 1 {
                    dense[row * bytes + d / 8] |= 1 << (d % 8);
                }
            }
        }
        self.tensors.insert(format!("{name}.bits"), (vec![c_out, kw, bytes], Data::U8(dense)));
        self.tensors.insert(format!("{name}.basis"), (vec![c_out, kw], Data::F32(c.basis().to_vec())));
    }
    /// Adds a folded BN→ReLU→Q unit under `name`.
    pub fn put_act(&mut self, name: &str, q: &ChannelQuant, basis: &[f32]) {
        let c = q.sign.len();
        self.tensors.insert(format!("{name}.tau"), (vec![c, q.codes.len() - 1], Data::F32(q.tau.clone())));
        self.tensors.insert(format!("{name}.sign"), (vec![c], Data::F32(q.sign.clone())));
        self.tensors.insert(format!("{name}.codes"), (vec![q.codes.len()], Data::U8(q.codes.clone())));
        self.tensors.insert(format!("{name}.basis"), (vec![basis.len()], Data::F32(basis.to_vec())));
    }
    /// Adds an f32 tensor.
    pub fn put_f32(&mut self, name: &str, shape: Vec<usize>, v: Vec<f32>) {
        self.tensors.insert(name.to_string(), (shape, Data::F32(v)));
    }

    /// Writes the file (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let p = path.display().to_string();
        let meta = self.meta.as_ref().ok_or_else(|| Error::Format { path: p.clone(), why: "no metadata".into() })?;
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, d))| {
                let (dt, b) = match d {
                    Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                    Data::U64(v) => (Dtype::U64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                    Data::U8(v) => (Dtype::U8, v.clone()),
                };
                (n.clone(), dt, s.clone(), b)
            })
            .collect();
        let fmt = |why: String| Error::Format { path: p.clone(), why };
        let views = bytes
            .iter()
            .map(|(n, dt, s, b)| Ok((n.as_str(), TensorView::new(*dt, s.clone(), b).map_err(|e| fmt(e.to_string()))?)))
            .collect::<Result<Vec<_>>>()?;
        let json = serde_json::to_string(meta).map_err(|e| fmt(e.to_string()))?;
        let hash = content_hash(&json, bytes.iter().map(|(n, dt, s, b)| (n.as_str(), *dt, &s[..], &b[..])));
        let md = HashMap::from([(META_KEY.to_string(), json), (HASH_KEY.to_string(), hash)]);
        let out = safetensors::serialize(views, &Some(md)).map_err(|e| fmt(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|cause| Error::Io { path: p, cause })
    }

    /// Reads and checks a file's structure (version, content hash, dtypes); shapes and values are checked when a
    /// [`crate::Model`] is built.
    pub fn load(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|cause| Error::Io { path: p.clone(), cause })?;
        Self::from_bytes(&bytes).map_err(|why| Error::Format { path: p, why })
    }

    /// Parses a file's bytes and verifies its content hash; any inconsistency is an error message.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::parse(bytes, true)
    }

    /// [`ModelFile::from_bytes`] without the content hash check: for fuzzing the checks behind it (a mutated file
    /// rarely keeps a valid hash). Everything else is validated as usual.
    #[doc(hidden)]
    pub fn from_bytes_unverified(bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::parse(bytes, false)
    }

    fn parse(bytes: &[u8], verify: bool) -> std::result::Result<Self, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let md = header.metadata().as_ref();
        let json = md.and_then(|m| m.get(META_KEY)).ok_or("no `lqnets` metadata: not an lqnets model")?;
        let hash = md.and_then(|m| m.get(HASH_KEY));
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        if let (Some(stored), true) = (hash, verify) {
            let it = views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data()));
            if *stored != content_hash(json, it) {
                return Err("content hash mismatch: the file was modified or corrupted after export".into());
            }
        }
        // The version first, on its own: older files may not parse as today's metadata.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v = serde_json::from_str::<Version>(json).map_err(|e| format!("metadata: {e}"))?.version;
        if v < FORMAT_VERSION {
            return Err(format!(
                "format version {v} (this build reads {FORMAT_VERSION}): re-export the checkpoint with `lqnets export`"
            ));
        } else if v > FORMAT_VERSION {
            return Err(format!("format version {v} (this build reads {FORMAT_VERSION}): written by a newer lqnets"));
        }
        if hash.is_none() && verify {
            return Err(format!(
                "no content hash (`{HASH_KEY}` metadata): the file was not written by `lqnets export`"
            ));
        }
        let meta: Meta = serde_json::from_str(json).map_err(|e| format!("metadata: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, v) in views {
            let d = v.data();
            let data = match v.dtype() {
                Dtype::F32 => {
                    Data::F32(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                Dtype::U64 => {
                    Data::U64(d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
                }
                Dtype::U8 => Data::U8(d.to_vec()),
                other => return Err(format!("tensor `{name}`: unsupported dtype {other:?}")),
            };
            tensors.insert(name, (v.shape().to_vec(), data));
        }
        Ok(ModelFile { tensors, meta: Some(meta) })
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| &s[..])
    }
    fn get(&self, name: &str, shape: &[usize]) -> std::result::Result<&Data, String> {
        let (s, d) = self.tensors.get(name).ok_or_else(|| format!("tensor `{name}` is missing"))?;
        if s != shape {
            return Err(format!("tensor `{name}` has shape {s:?}, the graph needs {shape:?}"));
        }
        Ok(d)
    }
    /// An f32 tensor of exactly `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
        match self.get(name, shape)? {
            Data::F32(v) => Ok(v.clone()),
            _ => Err(format!("tensor `{name}` must be F32")),
        }
    }
    /// The bit width stored as dimension `dim` of tensor `name` (K_w of `X.bits`, K_a of `Y.basis`): 1..=8.
    fn bits_of(&self, name: &str, dims: usize, dim: usize) -> std::result::Result<usize, String> {
        let s = self.shape(name).ok_or_else(|| format!("tensor `{name}` is missing"))?;
        match s.get(dim) {
            Some(&k) if s.len() == dims && (1..=8).contains(&k) => Ok(k),
            _ => Err(format!("tensor `{name}` has shape {s:?}: dimension {dim} of {dims} must be a bit width 1..=8")),
        }
    }
    /// A packed conv stored by [`ModelFile::put_conv`] with zero padding `pad`, checked against its geometry;
    /// K_w comes from the shape of `{name}.bits`. The caller checks that `k·k·c_in` and the tensor sizes fit.
    pub fn conv(
        &self,
        name: &str,
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> std::result::Result<BitConv, String> {
        let kw = self.bits_of(&format!("{name}.bits"), 3, 1)?;
        let (taps, words) = (k * k, patch_words(c_in, k));
        let bytes = (taps * c_in).div_ceil(8);
        let dense = match self.get(&format!("{name}.bits"), &[c_out, kw, bytes])? {
            Data::U8(v) => v,
            _ => return Err(format!("tensor `{name}.bits` must be U8")),
        };
        // Expand to the kernels' layout (`patch_bit`).
        let mut bits = vec![0u64; c_out * kw * words];
        for row in 0..c_out * kw {
            for d in 0..taps * c_in {
                if (dense[row * bytes + d / 8] >> (d % 8)) & 1 == 1 {
                    let (wd, b) = patch_bit(c_in, d / c_in, d % c_in);
                    bits[row * words + wd] |= 1 << b;
                }
            }
        }
        let basis = self.f32(&format!("{name}.basis"), &[c_out, kw])?;
        BitConv::new(c_out, c_in, k, stride, pad, kw, bits, basis).map_err(|e| format!("conv `{name}`: {e}"))
    }
    /// A folded activation unit over `c` channels stored by [`ModelFile::put_act`]: (thresholds, basis); K_a
    /// comes from the shape of `{name}.basis`.
    pub fn act(&self, name: &str, c: usize) -> std::result::Result<(ChannelQuant, Vec<f32>), String> {
        let ka = self.bits_of(&format!("{name}.basis"), 1, 0)?;
        let n = 1usize << ka;
        let codes = match self.get(&format!("{name}.codes"), &[n])? {
            Data::U8(v) if v.iter().all(|&c| (c as usize) < n) => v.clone(),
            _ => return Err(format!("tensor `{name}.codes` must be U8 codes below {n}")),
        };
        let q = ChannelQuant {
            sign: self.f32(&format!("{name}.sign"), &[c])?,
            tau: self.f32(&format!("{name}.tau"), &[c, n - 1])?,
            codes,
        };
        Ok((q, self.f32(&format!("{name}.basis"), &[ka])?))
    }
    /// A folded full-precision BN: (scale, shift).
    pub fn bn(&self, name: &str, c: usize) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
        Ok((self.f32(&format!("{name}.scale"), &[c])?, self.f32(&format!("{name}.shift"), &[c])?))
    }
}
