//! GoogLeNet-Variant (spec §5.6, official `googlenet_model.py`): inception blocks with three branches (1×1;
//! 1×1 reduce → 3×3; 1×1 reduce → 5×5; the reduce convs as wide as the conv they feed; no pool branch), every conv
//! followed by BN → ReLU → Q. The last block of a stage downsamples inside: each branch output goes through
//! max pool 3/2 → BN → ReLU → Q before the concatenation; the very last block concatenates raw branch outputs and
//! applies BN → ReLU (no Q) before the global pool and the full-precision classifier.
use super::opts;
use crate::error::Result;
use crate::graph::Builder;
use tch::nn::init::FanInOut::FanIn;

/// (name, 1×1, 3×3, 5×5 widths, last block of a stage)
const BLOCKS: [(&str, i64, i64, i64, bool); 9] = [
    ("inception_3a", 96, 128, 32, false),
    ("inception_3b", 192, 192, 96, true),
    ("inception_4a", 256, 208, 48, false),
    ("inception_4b", 224, 224, 64, false),
    ("inception_4c", 192, 256, 64, false),
    ("inception_4d", 176, 288, 64, false),
    ("inception_4e", 384, 320, 128, true),
    ("inception_5a", 384, 320, 128, false),
    ("inception_5b", 512, 384, 128, true),
];

/// GoogLeNet-Variant (224² input).
pub fn googlenet(b: &mut Builder, classes: i64) -> Result<()> {
    let x = b.conv("conv1", b.input(), 64, 7, 2, 3, opts(false, FanIn))?;
    let x = b.max_pool(x, 3, 2, 1)?;
    let x = b.bn_relu_q("pool1_act", x, true)?;
    let x = b.conv("conv2_reduce", x, 192, 1, 1, 0, opts(true, FanIn))?;
    let x = b.bn_relu_q("conv2_reduce_act", x, true)?;
    let x = b.conv("conv2", x, 192, 3, 1, 1, opts(true, FanIn))?;
    let x = b.max_pool(x, 3, 2, 1)?;
    let mut x = b.bn_relu_q("pool2_act", x, true)?;
    for (i, &(name, c1, c3, c5, last_block)) in BLOCKS.iter().enumerate() {
        let last = i == BLOCKS.len() - 1;
        let mut branches = Vec::new();
        for (br, c, k) in [("1x1", c1, 1), ("3x3", c3, 3), ("5x5", c5, 5)] {
            let mut y = x;
            if k > 1 {
                y = b.conv(&format!("{name}.{br}_reduce"), y, c, 1, 1, 0, opts(true, FanIn))?;
                y = b.bn_relu_q(&format!("{name}.{br}_reduce_act"), y, true)?;
            }
            y = b.conv(&format!("{name}.{br}"), y, c, k, 1, k / 2, opts(true, FanIn))?;
            if !last_block {
                y = b.bn_relu_q(&format!("{name}.{br}_act"), y, true)?;
            } else if !last {
                y = b.max_pool(y, 3, 2, 1)?;
                y = b.bn_relu_q(&format!("{name}.{br}_pool_act"), y, true)?;
            }
            branches.push(y);
        }
        x = b.concat(&branches)?;
        if last {
            x = b.bn(&format!("{name}.output_bn"), x, true, false)?;
        }
    }
    let x = b.gap(x)?;
    b.linear("fc", x, classes)?;
    Ok(())
}
