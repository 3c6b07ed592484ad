//! The network of a model file as a list of operations, written by the trainer's export and interpreted by
//! [`crate::Model`]. Adding a network touches the trainer only: every network is made of these ops.
//!
//! Values are numbered: value 0 is the normalised input image, op `i` produces value `i + 1`. Every value is a
//! feature map `h × w × c` (NHWC, f32); a vector is a `1 × 1 × c` map. Tensor names are the trainer's layer
//! names (`{name}.bits`, `{name}.w`, ...; see [`crate::model`]).
use serde::{Deserialize, Serialize};

/// Where a conv's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// Full precision: `{name}.w`, f32 OIHW.
    Fp,
    /// Quantized: `{name}.bits` and `{name}.basis` as written by `ModelFile::put_conv`.
    Packed,
}

/// One operation. `src`, `a`, `b`, `srcs` are value numbers of earlier values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Convolution in f32 (im2col + GEMM) with zero padding `pad`; packed weights are expanded to their levels
    /// at load. Optional bias `{name}.b`. For convs whose input is not one quantizer's output (the first conv,
    /// DenseNet's 1×1 on concatenations, GoogLeNet's inception inputs).
    Conv {
        /// Layer name.
        name: String,
        /// Input value.
        src: usize,
        /// Output channels.
        c_out: usize,
        /// Square kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        pad: usize,
        /// Weight storage.
        weights: Weights,
        /// Whether `{name}.b` holds a bias.
        bias: bool,
    },
    /// Bit-operation conv: `src` goes through the folded BN → ReLU → Q unit `act` (tensors `{act}.tau` ...) into
    /// codes, then `K_w·K_a` binary products with the packed weights `{name}.bits`/`{name}.basis`; zero padding
    /// `pad` (a padded activation is code 0, the level 0 of a ReLU quantizer). Optional bias `{name}.b`.
    QConv {
        /// Layer name.
        name: String,
        /// Input value (before BN → ReLU → Q).
        src: usize,
        /// The folded activation unit quantizing the input.
        act: String,
        /// Output channels.
        c_out: usize,
        /// Square kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        pad: usize,
        /// Whether `{name}.b` holds a bias.
        bias: bool,
    },
    /// The folded BN → ReLU → Q unit `name` as values (each element its level), for consumers other than a
    /// quantized conv (concatenations, pools, adds).
    Act {
        /// Unit name.
        name: String,
        /// Input value.
        src: usize,
    },
    /// A BN folded to `{name}.scale`·x + `{name}.shift`, then ReLU when `relu`.
    Bn {
        /// Layer name.
        name: String,
        /// Input value.
        src: usize,
        /// Apply ReLU after.
        relu: bool,
    },
    /// max(x, 0).
    Relu {
        /// Input value.
        src: usize,
    },
    /// Element-wise sum of two values of the same shape.
    Add {
        /// First input.
        a: usize,
        /// Second input.
        b: usize,
    },
    /// Channel concatenation of values with the same height and width, in order.
    Concat {
        /// Inputs.
        srcs: Vec<usize>,
    },
    /// Max pooling; padded positions never win (PyTorch's `max_pool2d` with padding; `ceil_mode` false).
    MaxPool {
        /// Input value.
        src: usize,
        /// Window.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side.
        pad: usize,
    },
    /// Average pooling without padding (`ceil_mode` false).
    AvgPool {
        /// Input value.
        src: usize,
        /// Window.
        k: usize,
        /// Stride.
        stride: usize,
    },
    /// Zero channels added before and after (ResNet shortcut option A).
    PadChannels {
        /// Input value.
        src: usize,
        /// Zero channels before.
        before: usize,
        /// Zero channels after.
        after: usize,
    },
    /// Mean over height and width: a `1 × 1 × c` value.
    GlobalAvgPool {
        /// Input value.
        src: usize,
    },
    /// Fully connected layer on the value flattened in C, H, W order (PyTorch's `flatten` of NCHW):
    /// `{name}.weight` `[c_out, c·h·w]`, `{name}.bias` `[c_out]`, full precision. Output `1 × 1 × c_out`.
    Linear {
        /// Layer name.
        name: String,
        /// Input value.
        src: usize,
        /// Outputs.
        c_out: usize,
    },
}

impl Op {
    /// The values this op reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Add { a, b } => vec![*a, *b],
            Op::Concat { srcs } => srcs.clone(),
            Op::Conv { src, .. }
            | Op::QConv { src, .. }
            | Op::Act { src, .. }
            | Op::Bn { src, .. }
            | Op::Relu { src }
            | Op::MaxPool { src, .. }
            | Op::AvgPool { src, .. }
            | Op::PadChannels { src, .. }
            | Op::GlobalAvgPool { src }
            | Op::Linear { src, .. } => vec![*src],
        }
    }
}

impl Op {
    /// How errors name the op: its kind and, where it has one, its layer name (`qconv `stage1.block0.conv1``).
    pub fn label(&self) -> String {
        let (kind, name) = match self {
            Op::Conv { name, .. } => ("conv", Some(name)),
            Op::QConv { name, .. } => ("qconv", Some(name)),
            Op::Act { name, .. } => ("act", Some(name)),
            Op::Bn { name, .. } => ("bn", Some(name)),
            Op::Linear { name, .. } => ("linear", Some(name)),
            Op::Relu { .. } => ("relu", None),
            Op::Add { .. } => ("add", None),
            Op::Concat { .. } => ("concat", None),
            Op::MaxPool { .. } => ("max_pool", None),
            Op::AvgPool { .. } => ("avg_pool", None),
            Op::PadChannels { .. } => ("pad_channels", None),
            Op::GlobalAvgPool { .. } => ("global_avg_pool", None),
        };
        name.map_or(kind.to_string(), |n| format!("{kind} `{n}`"))
    }
}
