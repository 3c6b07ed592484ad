//! The plain (non-residual) ImageNet networks of the HWGQ comparison, official `alexnet_model.py` and
//! `vgg_model.py` (spec §5.4, §5.5). Quantized activations follow conv → [max pool] → BN → ReLU → Q; the "fc"
//! layers before the classifier are quantized convs with bias (the first one's kernel covers the whole remaining
//! map: 6×6 at 227² for AlexNet, 7×7 at 224² for VGG-Variant) followed by BN without γ/β; the classifier and the
//! first conv are full precision. The official AlexNet draws its weights from N(0, 0.01); here every conv uses the
//! He fan-in init (each is followed by a BN, so the scale of the init does not carry through).
use super::opts;
use crate::error::Result;
use crate::graph::{Builder, ConvOpts};
use tch::nn::init::FanInOut::FanIn;

/// A quantized "fc" conv with bias.
fn fc_conv(b: &mut Builder, name: &str, x: usize, c_out: i64, k: i64) -> Result<usize> {
    b.conv(name, x, c_out, k, 1, 0, ConvOpts { quantize: true, bias: true, fan: FanIn })
}

/// AlexNet with BN (227² input).
pub fn alexnet(b: &mut Builder, classes: i64) -> Result<()> {
    let x = b.conv("conv1", b.input(), 96, 11, 4, 0, opts(false, FanIn))?;
    let x = b.max_pool(x, 3, 2, 0)?;
    let x = b.bn_relu_q("conv1_act", x, true)?;
    let x = b.conv("conv2", x, 256, 5, 1, 2, opts(true, FanIn))?;
    let x = b.max_pool(x, 3, 2, 0)?;
    let x = b.bn_relu_q("conv2_act", x, true)?;
    let x = b.conv("conv3", x, 384, 3, 1, 1, opts(true, FanIn))?;
    let x = b.bn_relu_q("conv3_act", x, true)?;
    let x = b.conv("conv4", x, 384, 3, 1, 1, opts(true, FanIn))?;
    let x = b.bn_relu_q("conv4_act", x, true)?;
    let x = b.conv("conv5", x, 256, 3, 1, 1, opts(true, FanIn))?;
    let x = b.max_pool(x, 3, 2, 0)?;
    let x = b.bn_relu_q("conv5_act", x, true)?;
    let k = b.shape(x)[1];
    let x = fc_conv(b, "fc6", x, 4096, k)?;
    let x = b.fc_bn_relu_q("fc6_act", x, true)?;
    let x = fc_conv(b, "fc7", x, 4096, 1)?;
    let x = b.fc_bn_relu_q("fc7_act", x, false)?;
    b.linear("fc", x, classes)?;
    Ok(())
}

/// HWGQ's VGG-Variant (224² input).
pub fn vgg_variant(b: &mut Builder, classes: i64) -> Result<()> {
    let x = b.conv("conv1", b.input(), 96, 7, 2, 3, opts(false, FanIn))?;
    let x = b.relu(x)?;
    let x = b.max_pool(x, 2, 2, 0)?;
    let mut x = b.bn_relu_q("conv1_act", x, true)?;
    for (s, c) in [(2, 256i64), (3, 512), (4, 512)] {
        for i in 1..=3 {
            let name = format!("conv{s}_{i}");
            x = b.conv(&name, x, c, 3, 1, 1, opts(true, FanIn))?;
            if i == 3 {
                x = b.max_pool(x, 2, 2, 0)?;
            }
            x = b.bn_relu_q(&format!("{name}_act"), x, true)?;
        }
    }
    let k = b.shape(x)[1];
    let x = fc_conv(b, "fc5", x, 4096, k)?;
    let x = b.fc_bn_relu_q("fc5_act", x, true)?;
    let x = fc_conv(b, "fc6", x, 4096, 1)?;
    let x = b.fc_bn_relu_q("fc6_act", x, false)?;
    b.linear("fc", x, classes)?;
    Ok(())
}
