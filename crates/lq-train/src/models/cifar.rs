//! The CIFAR networks.
//!
//! **Pre-activation ResNet** (ResNet-20/32/44/56: depth = 6n + 2). The official code has no CIFAR ResNet (spec
//! §5.2, issue #14); this follows the tensorpack pre-activation CIFAR ResNet with the official quantization rules
//! (spec §1.3, §5.3): conv0 and the FC stay full precision, the FC input is not quantized, every other conv reads
//! BN → ReLU → Q(·) of its input. Block: `h = Q(relu(bn1(x)))`, `r = conv2(Q(relu(bn2(conv1(h)))))`,
//! `out = r + shortcut`, with shortcut = `x` (identity), or when the shape changes either option A (2×2 average
//! pool of `x` plus zero channels, full precision) or option B (quantized 1×1 stride-2 conv of `h`, then BN, as
//! the official `preact` type B). Head: BN → ReLU → global average pool → FC.
//!
//! **VGG-Small** (spec §5.1, official `cifar10-vgg-small.py`): six 3×3 convs (128, 128, 256, 256, 512, 512) in
//! conv → [max-pool] → BN → ReLU → Q order, then one FC on the 4×4×512 features. conv0 and the FC are full
//! precision; the FC input (after the last BN-ReLU) is not quantized.
use super::{opts, Shortcut};
use crate::error::Result;
use crate::graph::Builder;
use tch::nn::init::FanInOut::{FanIn, FanOut};

/// Pre-activation CIFAR ResNet of `depth` (checked by [`super::ModelSpec::check`]).
pub fn resnet(b: &mut Builder, depth: usize, shortcut: Shortcut, classes: i64) -> Result<()> {
    let n = (depth - 2) / 6;
    let mut x = b.conv("conv0", b.input(), 16, 3, 1, 1, opts(false, FanOut))?;
    for (s, c) in [16i64, 32, 64].into_iter().enumerate() {
        for i in 0..n {
            let p = format!("stage{}.block{i}", s + 1);
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let c_in = b.shape(x)[0];
            let h = b.bn_relu_q(&format!("{p}.pre"), x, true)?;
            let r = b.conv(&format!("{p}.conv1"), h, c, 3, stride, 1, opts(true, FanOut))?;
            let r = b.bn_relu_q(&format!("{p}.mid"), r, true)?;
            let r = b.conv(&format!("{p}.conv2"), r, c, 3, 1, 1, opts(true, FanOut))?;
            let short = match (stride != 1 || c_in != c, shortcut) {
                (false, _) => x,
                (true, Shortcut::B) => {
                    let s = b.conv(&format!("{p}.proj"), h, c, 1, stride, 0, opts(true, FanOut))?;
                    b.bn(&format!("{p}.proj_bn"), s, false, false)?
                }
                (true, Shortcut::A) => {
                    let s = b.avg_pool(x, 2, 2)?;
                    let extra = c - c_in;
                    b.pad_channels(s, extra / 2, extra - extra / 2)?
                }
            };
            x = b.add(r, short)?;
        }
    }
    let x = b.bn("head_bn", x, true, false)?;
    let x = b.gap(x)?;
    b.linear("fc", x, classes)?;
    Ok(())
}

/// VGG-Small.
pub fn vgg_small(b: &mut Builder, classes: i64) -> Result<()> {
    let mut x = b.input();
    for (i, c) in [128i64, 128, 256, 256, 512, 512].into_iter().enumerate() {
        x = b.conv(&format!("conv{i}"), x, c, 3, 1, 1, opts(i > 0, FanIn))?;
        if i % 2 == 1 {
            x = b.max_pool(x, 2, 2, 0)?;
        }
        x = b.bn_relu_q(&format!("act{i}"), x, i < 5)?;
    }
    b.linear("fc", x, classes)?;
    Ok(())
}
