//! DenseNet-121 (spec §5.7, official `densenet_model.py`): growth 32, compression 0.5, blocks of 6/12/24/16 layers.
//! A layer is 1×1 conv (128) on the current concatenation → BN → ReLU → Q → 3×3 conv (32) → BN → ReLU → Q, and
//! its output goes in front of the concatenation. No BN → ReLU before the 1×1 conv: it reads quantized features,
//! the block's full-precision input and average-pooled transition outputs as they are (on the bit-op engine that
//! makes it an f32 conv with quantized weights). Transition: 1×1 conv to ⌊C/2⌋ → 2×2 average pool. Stem: 7×7/2 conv
//! (64, full precision) → BN → ReLU → max pool 3/2; head: BN → ReLU → global pool → full-precision classifier.
use super::opts;
use crate::error::Result;
use crate::graph::Builder;
use tch::nn::init::FanInOut::FanIn;

/// DenseNet-121 (224² input).
pub fn densenet121(b: &mut Builder, classes: i64) -> Result<()> {
    let x = b.conv("conv1", b.input(), 64, 7, 2, 3, opts(false, FanIn))?;
    let x = b.bn("conv1_bn", x, true, false)?;
    let mut x = b.max_pool(x, 3, 2, 1)?;
    let blocks = [6, 12, 24, 16];
    for (bi, &n) in blocks.iter().enumerate() {
        for i in 0..n {
            let p = format!("block{bi}.layer{i}");
            let c = b.conv(&format!("{p}.conv1x1"), x, 128, 1, 1, 0, opts(true, FanIn))?;
            let c = b.bn_relu_q(&format!("{p}.act2"), c, true)?;
            let c = b.conv(&format!("{p}.conv3x3"), c, 32, 3, 1, 1, opts(true, FanIn))?;
            let c = b.bn_relu_q(&format!("{p}.act3"), c, true)?;
            x = b.concat(&[c, x])?;
        }
        if bi + 1 < blocks.len() {
            let half = b.shape(x)[0] / 2;
            let t = b.conv(&format!("block{bi}.transition"), x, half, 1, 1, 0, opts(true, FanIn))?;
            x = b.avg_pool(t, 2, 2)?;
        }
    }
    let x = b.bn("head_bn", x, true, false)?;
    let x = b.gap(x)?;
    b.linear("fc", x, classes)?;
    Ok(())
}
