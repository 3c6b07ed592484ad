//! Pre-activation ResNet for CIFAR (ResNet-20/32/44/56: depth = 6n + 2), LQ variant.
//!
//! The official code has no CIFAR ResNet (spec §5.2, issue #14); this follows the tensorpack pre-activation CIFAR
//! ResNet with the official quantization rules (spec §1.3, §5.3): conv0 and the FC stay full precision, the FC
//! input is not quantized, every other conv reads BN → ReLU → Q(·) of its input. Block:
//! `h = Q(relu(bn1(x)))`, `r = conv2(Q(relu(bn2(conv1(h)))))`, `out = r + shortcut`, with shortcut = `x`
//! (identity), or when the shape changes either option A (2×2 average pool of `x` plus zero channels, full
//! precision) or option B (quantized 1×1 stride-2 conv of `h`, then BN, as the official `preact` type B).
//! Head: BN → ReLU → global average pool → FC.
use super::{collect, collect_mut, Net};
use crate::error::Result;
use crate::layers::{batch_norm, BnReluQuant, QConv2d, QuantSpec};
use crate::quant::Quantizer;
use serde::{Deserialize, Serialize};
use tch::nn::init::FanInOut;
use tch::nn::{self, Module};
use tch::Tensor;

/// How a block changes width/resolution on its shortcut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Average pool + zero channel padding (parameter free, full precision).
    A,
    /// 1×1 stride-2 quantized conv + BN on the block's quantized pre-activation.
    B,
}

#[derive(Debug)]
struct Block {
    pre: BnReluQuant,
    conv1: QConv2d,
    mid: BnReluQuant,
    conv2: QConv2d,
    proj: Option<(QConv2d, nn::BatchNorm)>,
    pad_to: Option<i64>,
}

impl Block {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, spec: QuantSpec, shortcut: Shortcut) -> Result<Self> {
        let change = stride != 1 || c_in != c_out;
        let proj = match (change, shortcut) {
            (true, Shortcut::B) => Some((
                QConv2d::new(&(p / "proj"), c_in, c_out, 1, stride, spec, FanInOut::FanOut)?,
                batch_norm(&(p / "proj_bn"), c_out),
            )),
            _ => None,
        };
        Ok(Block {
            pre: BnReluQuant::new(&(p / "pre"), c_in, spec, true)?,
            conv1: QConv2d::new(&(p / "conv1"), c_in, c_out, 3, stride, spec, FanInOut::FanOut)?,
            mid: BnReluQuant::new(&(p / "mid"), c_out, spec, true)?,
            conv2: QConv2d::new(&(p / "conv2"), c_out, c_out, 3, 1, spec, FanInOut::FanOut)?,
            pad_to: (change && shortcut == Shortcut::A).then_some(c_out),
            proj,
        })
    }

    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.pre.forward(x, train)?;
        let r = self.conv1.forward(&h, train)?;
        let r = self.conv2.forward(&self.mid.forward(&r, train)?, train)?;
        let s = match (&mut self.proj, self.pad_to) {
            (Some((conv, bn)), _) => conv.forward(&h, train)?.apply_t(bn, train),
            (None, Some(c)) => {
                let p = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
                let extra = c - p.size()[1];
                p.constant_pad_nd([0, 0, 0, 0, extra / 2, extra - extra / 2])
            }
            (None, None) => x.shallow_clone(),
        };
        Ok(r + s)
    }

    fn slots(&self) -> [&Option<Quantizer>; 6] {
        let proj = self.proj.as_ref().map(|p| &p.0.quant).unwrap_or(&None);
        [&self.pre.quant, &self.conv1.quant, &self.mid.quant, &self.conv2.quant, proj, &None]
    }
}

/// Pre-activation CIFAR ResNet with LQ quantizers.
#[derive(Debug)]
pub struct ResNetCifar {
    conv0: QConv2d,
    blocks: Vec<Block>,
    head_bn: nn::BatchNorm,
    fc: nn::Linear,
}

impl ResNetCifar {
    /// Depth 6n+2 (20, 32, 44, 56), stages of 16/32/64 channels, `classes` outputs.
    pub fn new(p: &nn::Path, depth: usize, classes: i64, spec: QuantSpec, shortcut: Shortcut) -> Result<Self> {
        if depth < 8 || (depth - 2) % 6 != 0 {
            return Err(crate::Error::Config(format!(
                "model.depth = {depth}: ResNet-CIFAR depth must be 6n+2 (20, 32, 44, 56)"
            )));
        }
        let n = (depth - 2) / 6;
        let conv0 = QConv2d::new(&(p / "conv0"), 3, 16, 3, 1, QuantSpec { w_bits: 32, ..spec }, FanInOut::FanOut)?;
        let mut blocks = Vec::new();
        let mut c_in = 16;
        for (s, c) in [16i64, 32, 64].into_iter().enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    &(p / format!("stage{}", s + 1) / format!("block{b}")),
                    c_in,
                    c,
                    stride,
                    spec,
                    shortcut,
                )?);
                c_in = c;
            }
        }
        let head_bn = batch_norm(&(p / "head_bn"), 64);
        let fc = nn::linear(p / "fc", 64, classes, Default::default());
        Ok(ResNetCifar { conv0, blocks, head_bn, fc })
    }
}

impl Net for ResNetCifar {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.conv0.forward(x, train)?;
        for b in &mut self.blocks {
            h = b.forward(&h, train)?;
        }
        let h = h.apply_t(&self.head_bn, train).relu().mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float);
        Ok(self.fc.forward(&h))
    }
    fn quantizers(&self) -> Vec<&Quantizer> {
        collect(self.blocks.iter().flat_map(|b| b.slots()))
    }
    fn export(&self, f: &mut lq_engine::ModelFile) -> Result<()> {
        use crate::export::{put_act, put_bn, put_conv, put_tensor};
        put_tensor(f, "conv0.w", &self.conv0.w)?;
        let n = self.blocks.len() / 3;
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("stage{}.block{}", i / n + 1, i % n);
            put_act(f, &format!("{p}.pre"), &b.pre)?;
            put_conv(f, &format!("{p}.conv1"), &b.conv1)?;
            put_act(f, &format!("{p}.mid"), &b.mid)?;
            put_conv(f, &format!("{p}.conv2"), &b.conv2)?;
            if let Some((conv, bn)) = &b.proj {
                put_conv(f, &format!("{p}.proj"), conv)?;
                put_bn(f, &format!("{p}.proj_bn"), bn)?;
            }
        }
        put_bn(f, "head_bn", &self.head_bn)?;
        put_tensor(f, "fc.weight", &self.fc.ws)?;
        put_tensor(f, "fc.bias", self.fc.bs.as_ref().expect("fc has a bias"))
    }
    fn quantizers_mut(&mut self) -> Vec<&mut Quantizer> {
        collect_mut(self.blocks.iter_mut().flat_map(|b| {
            let proj = b.proj.as_mut().map(|p| &mut p.0.quant);
            [Some(&mut b.pre.quant), Some(&mut b.conv1.quant), Some(&mut b.mid.quant), Some(&mut b.conv2.quant), proj]
                .into_iter()
                .flatten()
        }))
    }
}
