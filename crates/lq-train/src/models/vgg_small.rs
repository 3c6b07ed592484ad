//! VGG-Small for CIFAR-10 (spec §5.1, official `cifar10-vgg-small.py`): six 3×3 convs (128, 128, 256, 256,
//! 512, 512) in conv → [max-pool] → BN → ReLU → Q order, then one FC on the 4×4×512 features. conv0 and the FC
//! are full precision; the FC input (after the last BN-ReLU) is not quantized.
use super::{collect, collect_mut, Net};
use crate::error::Result;
use crate::layers::{BnReluQuant, QConv2d, QuantSpec};
use crate::quant::Quantizer;
use tch::nn::init::FanInOut;
use tch::nn::{self, Module};
use tch::Tensor;

const WIDTHS: [i64; 6] = [128, 128, 256, 256, 512, 512];

/// VGG-Small with LQ quantizers.
#[derive(Debug)]
pub struct VggSmall {
    convs: Vec<QConv2d>,
    acts: Vec<BnReluQuant>,
    fc: nn::Linear,
}

impl VggSmall {
    /// Builds the network for `classes` outputs on 32×32×3 inputs.
    pub fn new(p: &nn::Path, classes: i64, spec: QuantSpec) -> Result<Self> {
        let (mut convs, mut acts, mut c_in) = (Vec::new(), Vec::new(), 3);
        for (i, &c) in WIDTHS.iter().enumerate() {
            let s = if i == 0 { QuantSpec { w_bits: 32, ..spec } } else { spec };
            convs.push(QConv2d::new(&(p / format!("conv{i}")), c_in, c, 3, 1, s, FanInOut::FanIn)?);
            acts.push(BnReluQuant::new(&(p / format!("act{i}")), c, spec, i < 5)?);
            c_in = c;
        }
        Ok(VggSmall { convs, acts, fc: nn::linear(p / "fc", 512 * 16, classes, Default::default()) })
    }
}

impl Net for VggSmall {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for (i, (conv, act)) in self.convs.iter_mut().zip(&mut self.acts).enumerate() {
            h = conv.forward(&h, train)?;
            if i % 2 == 1 {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            h = act.forward(&h, train)?;
        }
        Ok(self.fc.forward(&h.flatten(1, -1)))
    }
    fn export(&self, f: &mut lq_engine::ModelFile) -> Result<()> {
        use crate::export::{put_act, put_bn, put_conv, put_tensor};
        put_tensor(f, "conv0.w", &self.convs[0].w)?;
        for (i, conv) in self.convs.iter().enumerate().skip(1) {
            put_conv(f, &format!("conv{i}"), conv)?;
        }
        for (i, act) in self.acts.iter().enumerate().take(5) {
            put_act(f, &format!("act{i}"), act)?;
        }
        put_bn(f, "act5", &self.acts[5].bn)?;
        put_tensor(f, "fc.weight", &self.fc.ws)?;
        put_tensor(f, "fc.bias", self.fc.bs.as_ref().expect("fc has a bias"))
    }
    fn quantizers(&self) -> Vec<&Quantizer> {
        collect(self.convs.iter().map(|c| &c.quant).chain(self.acts.iter().map(|a| &a.quant)))
    }
    fn quantizers_mut(&mut self) -> Vec<&mut Quantizer> {
        collect_mut(self.convs.iter_mut().map(|c| &mut c.quant).chain(self.acts.iter_mut().map(|a| &mut a.quant)))
    }
}
