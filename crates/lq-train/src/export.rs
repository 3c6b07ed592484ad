//! Export of a trained network to the engine's model file (`lq_engine::ModelFile`): quantized convs as packed
//! weight bit-planes with their per-channel bases, every BN → ReLU → Q unit folded into per-channel thresholds,
//! full-precision BNs folded to scale/shift, full-precision convs and the FC as f32, the network as the engine's op
//! list and the input normalisation in the metadata.
use crate::error::{Error, Result};
use crate::graph::{Graph, Layer, Node};
use crate::layers::{BnReluQuant, QConv2d};
use crate::quant::{Method, Quantizer};
use crate::trainer::Trainer;
use lq_data::Normalize;
use lq_engine::{BitConv, ChannelQuant, Meta, ModelFile, Op, Weights, FORMAT_VERSION};
use lq_quant::{baselines, CodeSet, Levels};
use std::collections::HashSet;
use tch::nn;
use tch::Tensor;

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.detach().to_device(tch::Device::Cpu).contiguous().flatten(0, -1))?)
}

fn qerr(name: &str) -> impl Fn(lq_quant::Error) -> Error + '_ {
    move |source| Error::Quant { layer: name.into(), source }
}

/// Packs a quantized conv under `name`.
pub fn put_conv(f: &mut ModelFile, name: &str, c: &QConv2d) -> Result<()> {
    let q = c
        .quant
        .as_ref()
        .ok_or_else(|| Error::Config(format!("{name}: the engine needs quantized weights (w_bits <= 8)")))?;
    let s = c.w.size();
    let (c_out, c_in, k) = (s[0] as usize, s[1] as usize, s[2] as usize);
    let w = host(&c.w)?;
    let basis = match q.method {
        Method::Lq => q.state.basis.clone(),
        Method::Hwgq => baselines::hwgq_weight_basis(&w).map_err(qerr(name))?.repeat(c_out),
        Method::Uniform => baselines::uniform_weight_basis(q.state.bits, &w).map_err(qerr(name))?.repeat(c_out),
    };
    let packed = BitConv::pack(c_out, c_in, k, c.stride as usize, &w, &basis).map_err(qerr(name))?;
    f.put_conv(name, &packed);
    Ok(())
}

/// BN as `scale·x + shift` (ε = 1e-5 as in training).
pub fn bn_affine(bn: &nn::BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mean, var) = (host(&bn.running_mean)?, host(&bn.running_var)?);
    let gamma = bn.ws.as_ref().map(host).transpose()?.unwrap_or_else(|| vec![1.0; mean.len()]);
    let beta = bn.bs.as_ref().map(host).transpose()?.unwrap_or_else(|| vec![0.0; mean.len()]);
    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + 1e-5).sqrt()).collect();
    let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    Ok((scale, shift))
}

/// Stores a full-precision BN under `name`.
pub fn put_bn(f: &mut ModelFile, name: &str, bn: &nn::BatchNorm) -> Result<()> {
    let (scale, shift) = bn_affine(bn)?;
    f.put_f32(&format!("{name}.scale"), vec![scale.len()], scale);
    f.put_f32(&format!("{name}.shift"), vec![shift.len()], shift);
    Ok(())
}

/// The activation levels a quantizer uses at inference.
fn act_levels(q: &Quantizer) -> Result<Levels> {
    match q.method {
        Method::Hwgq => Ok(baselines::hwgq_activation()),
        _ => Levels::from_basis(&q.state.basis, CodeSet::Binary).map_err(qerr(&q.name)),
    }
}

/// Folds a BN → ReLU → Q unit on `channels` channels into thresholds under `name` (a unit without BN folds as
/// scale 1, shift 0).
pub fn put_act(f: &mut ModelFile, name: &str, a: &BnReluQuant, channels: usize) -> Result<()> {
    let q = a.quant.as_ref().ok_or_else(|| Error::Config(format!("{name}: not a quantized activation")))?;
    let lv = act_levels(q)?;
    let (scale, shift) = match &a.bn {
        Some(bn) => bn_affine(bn)?,
        None => (vec![1.0; channels], vec![0.0; channels]),
    };
    f.put_act(name, &ChannelQuant::fold(&lv, &scale, &shift), &lv.basis());
    Ok(())
}

/// Stores an f32 tensor with its shape.
pub fn put_tensor(f: &mut ModelFile, name: &str, t: &Tensor) -> Result<()> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    f.put_f32(name, shape, host(t)?);
    Ok(())
}

/// Walks the trainer's graph into the engine's op list. A conv with quantized weights whose input is a quantized
/// BN → ReLU → Q unit becomes a bit-op `QConv` reading the unit's input through the folded unit; any other conv
/// is an f32 `Conv` (packed weights when quantized). A quantized unit's values are emitted as an `Act` op only
/// when something other than such a conv reads them.
struct Walk<'a> {
    g: &'a Graph,
    f: ModelFile,
    ops: Vec<Op>,
    /// Trainer value → engine value, once emitted.
    map: Vec<Option<usize>>,
    folded: HashSet<String>,
}

/// The quantized activation unit producing value `v` of `g`, if that is what produces it.
fn quant_unit(g: &Graph, v: usize) -> Option<(&Node, &BnReluQuant)> {
    let n = g.nodes.get(v.checked_sub(1)?)?;
    match &n.layer {
        Layer::Act(a) if a.quant.is_some() => Some((n, a)),
        _ => None,
    }
}

impl<'a> Walk<'a> {
    fn fold(&mut self, n: &'a Node, a: &'a BnReluQuant) -> Result<()> {
        if self.folded.insert(n.name.clone()) {
            put_act(&mut self.f, &n.name, a, n.shape[0] as usize)?;
        }
        Ok(())
    }

    /// The engine value of trainer value `v`, emitting a deferred `Act` op on first use.
    fn value(&mut self, v: usize) -> Result<usize> {
        if let Some(e) = self.map[v] {
            return Ok(e);
        }
        let g = self.g;
        let (n, a) = quant_unit(g, v).ok_or_else(|| Error::Config(format!("export: value {v} was never emitted")))?;
        self.fold(n, a)?;
        let src = self.value(n.inputs[0])?;
        Ok(self.emit(v, Op::Act { name: n.name.clone(), src }))
    }

    fn emit(&mut self, v: usize, op: Op) -> usize {
        self.ops.push(op);
        self.map[v] = Some(self.ops.len());
        self.ops.len()
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let g = self.g;
        let n = &g.nodes[i];
        let v = i + 1;
        let name = n.name.clone();
        let op = match &n.layer {
            Layer::Conv(c) => {
                let s = c.w.size();
                let (c_out, k, stride, pad) = (s[0] as usize, s[2] as usize, c.stride as usize, c.padding as usize);
                if let Some(b) = &c.b {
                    put_tensor(&mut self.f, &format!("{name}.b"), b)?;
                }
                let bias = c.b.is_some();
                match (c.quant.is_some(), quant_unit(g, n.inputs[0])) {
                    (true, Some((an, a))) => {
                        self.fold(an, a)?;
                        put_conv(&mut self.f, &name, c)?;
                        let src = self.value(an.inputs[0])?;
                        Op::QConv { name, src, act: an.name.clone(), c_out, k, stride, pad, bias }
                    }
                    (quantized, _) => {
                        let weights = if quantized {
                            put_conv(&mut self.f, &name, c)?;
                            Weights::Packed
                        } else {
                            put_tensor(&mut self.f, &format!("{name}.w"), &c.w)?;
                            Weights::Fp
                        };
                        let src = self.value(n.inputs[0])?;
                        Op::Conv { name, src, c_out, k, stride, pad, weights, bias }
                    }
                }
            }
            // Quantized units are emitted on demand (see `value`).
            Layer::Act(a) if a.quant.is_some() => return Ok(()),
            Layer::Act(a) => {
                let src = self.value(n.inputs[0])?;
                match &a.bn {
                    Some(bn) => {
                        put_bn(&mut self.f, &name, bn)?;
                        Op::Bn { name, src, relu: true }
                    }
                    None => Op::Relu { src },
                }
            }
            Layer::Bn { bn, relu } => {
                put_bn(&mut self.f, &name, bn)?;
                Op::Bn { name, src: self.value(n.inputs[0])?, relu: *relu }
            }
            Layer::Relu => Op::Relu { src: self.value(n.inputs[0])? },
            Layer::Add => Op::Add { a: self.value(n.inputs[0])?, b: self.value(n.inputs[1])? },
            Layer::Concat => Op::Concat { srcs: n.inputs.iter().map(|&s| self.value(s)).collect::<Result<_>>()? },
            Layer::MaxPool { k, stride, pad } => Op::MaxPool {
                src: self.value(n.inputs[0])?,
                k: *k as usize,
                stride: *stride as usize,
                pad: *pad as usize,
            },
            Layer::AvgPool { k, stride } => {
                Op::AvgPool { src: self.value(n.inputs[0])?, k: *k as usize, stride: *stride as usize }
            }
            Layer::PadChannels { before, after } => {
                Op::PadChannels { src: self.value(n.inputs[0])?, before: *before as usize, after: *after as usize }
            }
            Layer::GlobalAvgPool => Op::GlobalAvgPool { src: self.value(n.inputs[0])? },
            Layer::Linear(l) => {
                put_tensor(&mut self.f, &format!("{name}.weight"), &l.ws)?;
                let b = l.bs.as_ref().ok_or_else(|| Error::Config(format!("{name}: linear layer without bias")))?;
                put_tensor(&mut self.f, &format!("{name}.bias"), b)?;
                Op::Linear { name, src: self.value(n.inputs[0])?, c_out: l.ws.size()[0] as usize }
            }
        };
        self.emit(v, op);
        Ok(())
    }
}

/// The whole model file of a trainer: the op list and tensors from its graph, `norm` the input normalisation used
/// in training, `input` the image shape, `classes` the outputs.
pub fn export(tr: &Trainer, norm: &Normalize, input: [usize; 3], classes: usize) -> Result<ModelFile> {
    let g = &tr.net;
    let mut w = Walk {
        g,
        f: ModelFile::default(),
        ops: Vec::new(),
        map: vec![None; g.nodes.len() + 1],
        folded: HashSet::new(),
    };
    w.map[0] = Some(0);
    for i in 0..g.nodes.len() {
        w.node(i)?;
    }
    // The output must be the last op (a deferred unit at the very end would not be).
    let out = w.value(g.nodes.len())?;
    if out != w.ops.len() {
        return Err(Error::Config("export: the network output is not the last op".into()));
    }
    let mut f = w.f;
    let q = tr.cfg.quant;
    f.meta = Some(Meta {
        version: FORMAT_VERSION,
        model: serde_json::to_string(&tr.cfg.model).map_err(|e| Error::Config(e.to_string()))?,
        classes,
        w_bits: q.w_bits,
        a_bits: q.a_bits,
        input,
        mean: norm.compact_mean(),
        scale: norm.parts().1.to_vec(),
        graph: w.ops,
    });
    Ok(f)
}
