//! ImageNet ResNet-18/34/50 (spec §5.3, official `resnet_model.py`). Stem: conv0 7×7/2 (full precision) → BN →
//! ReLU → max pool 3/2. Groups of 64/128/256/512 features; basic blocks (18, 34) or bottlenecks ×4 with the stride
//! on the 3×3 conv (50).
//!
//! `preact` (every W/A result): block 0 of group 0 quantizes the (non-negative) max-pool output without a BN and
//! keeps the full-precision tensor as shortcut; block 0 of groups 1-3 takes the previous group's quantized tail
//! as is, for both branches; later blocks read BN → ReLU → Q of the raw sum and keep the sum as shortcut. The
//! residual branch ends in a BN before the addition; a channel change gets a projection (type B: quantized 1×1
//! conv + BN). Each group ends with BN → ReLU → Q (no Q after the last). Head: global average pool → FC.
//!
//! `postact` (weight-only results): the standard ResNet, ReLU after each addition, γ of each branch's last BN
//! starting at 0, weights quantized, activations full precision.
//!
//! Max pooling uses PyTorch's symmetric padding (1) where TensorFlow's SAME pads only after: same output sizes,
//! a one-pixel shift at the border.
use super::{opts, ResnetMode};
use crate::error::Result;
use crate::graph::Builder;
use tch::nn::init::FanInOut::FanOut;

/// ResNet of `depth` 18, 34 or 50.
pub fn resnet(b: &mut Builder, depth: usize, mode: ResnetMode, classes: i64) -> Result<()> {
    let (blocks, bottleneck) = match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        _ => ([3, 4, 6, 3], true),
    };
    let x = b.conv("conv0", b.input(), 64, 7, 2, 3, opts(false, FanOut))?;
    let x = b.bn("conv0_bn", x, true, false)?;
    let mut x = b.max_pool(x, 3, 2, 1)?;
    let preact = mode == ResnetMode::Preact;
    for (g, (&n, f)) in blocks.iter().zip([64i64, 128, 256, 512]).enumerate() {
        for i in 0..n {
            let p = format!("group{g}.block{i}");
            let stride = if g > 0 && i == 0 { 2 } else { 1 };
            // (input of the residual branch, shortcut)
            let (h, short) = match (preact, g, i) {
                (true, 0, 0) => (b.quant(&format!("{p}.quant1"), x)?, x),
                (true, _, 0) | (false, _, _) => (x, x),
                (true, _, _) => (b.bn_relu_q(&format!("{p}.preact"), x, true)?, x),
            };
            let out = if bottleneck { f * 4 } else { f };
            let mut r = if bottleneck {
                let r = b.conv(&format!("{p}.conv1"), h, f, 1, 1, 0, opts(true, FanOut))?;
                let r = mid(b, &format!("{p}.conv1_bn"), r, preact)?;
                let r = b.conv(&format!("{p}.conv2"), r, f, 3, stride, 1, opts(true, FanOut))?;
                let r = mid(b, &format!("{p}.conv2_bn"), r, preact)?;
                b.conv(&format!("{p}.conv3"), r, out, 1, 1, 0, opts(true, FanOut))?
            } else {
                let r = b.conv(&format!("{p}.conv1"), h, f, 3, stride, 1, opts(true, FanOut))?;
                let r = mid(b, &format!("{p}.conv1_bn"), r, preact)?;
                b.conv(&format!("{p}.conv2"), r, out, 3, 1, 1, opts(true, FanOut))?
            };
            r = b.bn(&format!("{p}.out_bn"), r, false, !preact)?;
            let short = if b.shape(short)[0] != out {
                let s = b.conv(&format!("{p}.proj"), short, out, 1, stride, 0, opts(true, FanOut))?;
                b.bn(&format!("{p}.proj_bn"), s, false, false)?
            } else {
                short
            };
            x = b.add(r, short)?;
            if !preact {
                x = b.relu(x)?;
            }
        }
        if preact {
            x = b.bn_relu_q(&format!("group{g}.tail"), x, g < 3)?;
        }
    }
    let x = b.gap(x)?;
    b.linear("fc", x, classes)?;
    Ok(())
}

/// The unit between two convs of a branch: BN → ReLU → Q (pre-activation) or BN → ReLU.
fn mid(b: &mut Builder, name: &str, x: usize, preact: bool) -> Result<usize> {
    if preact {
        b.bn_relu_q(name, x, true)
    } else {
        b.bn(name, x, true, false)
    }
}
