//! Export of a trained network to the engine's model file (`lq_engine::ModelFile`): quantized convs as packed
//! weight bit-planes with their per-channel bases, every BN → ReLU → Q unit folded into per-channel thresholds,
//! full-precision BNs folded to scale/shift, conv0 and the FC as f32, the input normalisation in the metadata.
use crate::error::{Error, Result};
use crate::layers::{BnReluQuant, QConv2d};
use crate::quant::{Method, Quantizer};
use crate::trainer::Trainer;
use lq_data::Normalize;
use lq_engine::{Arch, BitConv, ChannelQuant, Meta, ModelFile, FORMAT_VERSION};
use lq_quant::{baselines, CodeSet, Levels};
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

/// Folds a BN → ReLU → Q unit into thresholds under `name`.
pub fn put_act(f: &mut ModelFile, name: &str, a: &BnReluQuant) -> Result<()> {
    let q = a
        .quant
        .as_ref()
        .ok_or_else(|| Error::Config(format!("{name}: the engine needs quantized activations (a_bits <= 8)")))?;
    let lv = act_levels(q)?;
    let (scale, shift) = bn_affine(&a.bn)?;
    f.put_act(name, &ChannelQuant::fold(&lv, &scale, &shift), &lv.basis());
    Ok(())
}

/// Stores an f32 tensor with its shape.
pub fn put_tensor(f: &mut ModelFile, name: &str, t: &Tensor) -> Result<()> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    f.put_f32(name, shape, host(t)?);
    Ok(())
}

/// The whole model file of a trainer: architecture from its config, tensors from its network, `norm` the input
/// normalisation used in training.
pub fn export(tr: &Trainer, norm: &Normalize, input: [usize; 3], classes: usize) -> Result<ModelFile> {
    let m = &tr.cfg.model;
    if m.w_bits > 8 || m.a_bits > 8 {
        return Err(Error::Config(format!(
            "the bit-op engine needs quantized weights and activations; model is W{}A{}",
            m.w_bits, m.a_bits
        )));
    }
    let mut f = ModelFile::default();
    tr.net.export(&mut f)?;
    let (mean, scale) = norm.parts();
    // A per-channel mean is stored as C numbers, not C·H·W.
    let plane = mean.len() / scale.len().max(1);
    let mean: Vec<f32> = if mean.chunks(plane.max(1)).all(|c| c.iter().all(|&v| v == c[0])) {
        mean.iter().step_by(plane.max(1)).copied().collect()
    } else {
        mean.to_vec()
    };
    let arch = Arch {
        kind: m.arch.clone(),
        depth: m.depth,
        shortcut: format!("{:?}", m.shortcut),
        classes,
        w_bits: m.w_bits,
        a_bits: m.a_bits,
        input,
    };
    f.meta = Some(Meta { version: FORMAT_VERSION, arch, mean, scale: scale.to_vec() });
    Ok(f)
}
