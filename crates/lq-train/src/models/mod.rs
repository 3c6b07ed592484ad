//! The networks, each a function adding nodes to a [`Builder`]; [`ModelSpec`] names them in configs and
//! [`build`] is the registry. Node names (`stage1.block0.conv1`) are the names in checkpoints and model files.
use crate::error::{Error, Result};
use crate::graph::{Builder, ConvOpts, Graph};
use crate::layers::QuantSpec;
use crate::quant::Method;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::nn::init::FanInOut;

mod cifar;
mod densenet;
mod googlenet;
mod plain;
mod resnet;

/// How a CIFAR ResNet block changes width/resolution on its shortcut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Average pool + zero channel padding (parameter free, full precision).
    #[default]
    A,
    /// 1×1 stride-2 quantized conv + BN on the block's quantized pre-activation.
    B,
}

/// ImageNet ResNet variant (spec §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResnetMode {
    /// Pre-activation LQ ResNet of every W/A result (official `--mode preact`).
    #[default]
    Preact,
    /// Standard post-activation ResNet, weights quantized only (official `--mode resnet`).
    Postact,
}

/// The network of a run: `[model] arch = "..."` plus that network's own keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Pre-activation CIFAR ResNet, depth 6n+2 (20, 32, 44, 56).
    ResnetCifar {
        /// Depth.
        #[serde(default = "depth20")]
        depth: usize,
        /// Shortcut option.
        #[serde(default)]
        shortcut: Shortcut,
    },
    /// VGG-Small (CIFAR, spec §5.1).
    VggSmall {},
    /// ImageNet ResNet-18/34/50.
    Resnet {
        /// 18, 34 or 50.
        depth: usize,
        /// Pre- or post-activation.
        #[serde(default)]
        mode: ResnetMode,
    },
    /// AlexNet with BN (spec §5.5), 227² input.
    Alexnet {},
    /// HWGQ's VGG-Variant (spec §5.4).
    VggVariant {},
    /// GoogLeNet-Variant with three-branch inception blocks (spec §5.6).
    Googlenet {},
    /// DenseNet-121 (spec §5.7).
    Densenet121 {},
}

fn depth20() -> usize {
    20
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::ResnetCifar { depth: 20, shortcut: Shortcut::A }
    }
}

impl ModelSpec {
    /// Checks values the types do not: depths, and quantization settings the network cannot take.
    pub fn check(&self, q: &QuantSpec) -> Result<()> {
        let bad = |k: &str, why: String| Err(Error::Config(format!("{k}: {why}")));
        match self {
            ModelSpec::ResnetCifar { depth, .. } if *depth < 8 || (depth - 2) % 6 != 0 => {
                bad("model.depth", format!("{depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56)"))
            }
            ModelSpec::Resnet { depth, .. } if ![18, 34, 50].contains(depth) => {
                bad("model.depth", format!("{depth}: ImageNet ResNets are 18, 34 or 50"))
            }
            ModelSpec::Resnet { mode: ResnetMode::Postact, .. } if q.a_bits != 32 => bad(
                "quant.a_bits",
                format!(
                    "{}: the post-activation ResNet quantizes weights only (set 32, or mode = \"preact\")",
                    q.a_bits
                ),
            ),
            _ if q.method == Method::Hwgq && (q.w_bits != 1 && q.w_bits != 32 || q.a_bits != 2 && q.a_bits != 32) => {
                bad("quant.method", format!("hwgq is W1 / A2, not W{} / A{}", q.w_bits, q.a_bits))
            }
            _ => Ok(()),
        }
    }

    /// A short name for tables and file metadata, e.g. `resnet18`, `resnet20-A`.
    pub fn label(&self) -> String {
        match self {
            ModelSpec::ResnetCifar { depth, shortcut } => format!("resnet{depth}-{shortcut:?}"),
            ModelSpec::VggSmall {} => "vgg_small".into(),
            ModelSpec::Resnet { depth, mode } => format!("resnet{depth}-{mode:?}").to_lowercase(),
            ModelSpec::Alexnet {} => "alexnet".into(),
            ModelSpec::VggVariant {} => "vgg_variant".into(),
            ModelSpec::Googlenet {} => "googlenet".into(),
            ModelSpec::Densenet121 {} => "densenet121".into(),
        }
    }
}

/// Builds the network `m` under `p` for `input = [c, h, w]` images and `classes` outputs.
pub fn build(p: nn::Path, m: &ModelSpec, q: QuantSpec, input: [i64; 3], classes: i64) -> Result<Graph> {
    m.check(&q)?;
    let mut b = Builder::new(p, input, q);
    match m {
        ModelSpec::ResnetCifar { depth, shortcut } => cifar::resnet(&mut b, *depth, *shortcut, classes)?,
        ModelSpec::VggSmall {} => cifar::vgg_small(&mut b, classes)?,
        ModelSpec::Resnet { depth, mode } => resnet::resnet(&mut b, *depth, *mode, classes)?,
        ModelSpec::Alexnet {} => plain::alexnet(&mut b, classes)?,
        ModelSpec::VggVariant {} => plain::vgg_variant(&mut b, classes)?,
        ModelSpec::Googlenet {} => googlenet::googlenet(&mut b, classes)?,
        ModelSpec::Densenet121 {} => densenet::densenet121(&mut b, classes)?,
    };
    Ok(b.finish())
}

/// Conv options: quantized weights (unless `quantize` is false), no bias, He init with `fan`.
pub(crate) fn opts(quantize: bool, fan: FanInOut) -> ConvOpts {
    ConvOpts { quantize, bias: false, fan }
}
