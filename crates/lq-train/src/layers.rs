//! Thin layers: a conv whose weights may be quantized, the BN → ReLU → activation-quantizer unit, BN, FC.
use crate::error::Result;
use crate::quant::{Method, Quantizer};
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;

/// Bit widths and quantizer family of a network (`[quant]`); 32 bits means full precision (no quantizer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantSpec {
    /// Quantizer family.
    pub method: Method,
    /// Weight bits (1..=8, or 32).
    pub w_bits: u32,
    /// Activation bits (1..=8, or 32).
    pub a_bits: u32,
}

impl QuantSpec {
    /// Full precision everywhere.
    pub const FP: QuantSpec = QuantSpec { method: Method::Lq, w_bits: 32, a_bits: 32 };
}

impl Default for QuantSpec {
    fn default() -> Self {
        QuantSpec { method: Method::Lq, w_bits: 2, a_bits: 2 }
    }
}

/// A 2-D convolution (square kernel, zero padding) whose weights are quantized per output channel when asked.
#[derive(Debug)]
pub struct QConv2d {
    /// Latent full-precision weights `[C_out, C_in, k, k]`.
    pub w: Tensor,
    /// Bias (AlexNet / VGG-Variant "fc" convs only; never quantized).
    pub b: Option<Tensor>,
    /// Stride.
    pub stride: i64,
    /// Zero padding.
    pub padding: i64,
    /// Weight quantizer (None: full precision).
    pub quant: Option<Quantizer>,
}

impl QConv2d {
    /// Creates `p/"w"` (and `p/"b"` when `bias`) with He init (`fan` as the official model file uses) and a weight
    /// quantizer unless `w_bits == 32`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        bias: bool,
        spec: QuantSpec,
        fan: FanInOut,
    ) -> Result<Self> {
        let init = Init::Kaiming { dist: NormalOrUniform::Normal, fan, non_linearity: NonLinearity::ReLU };
        let w = p.var("w", &[c_out, c_in, k, k], init);
        let b = bias.then(|| p.var("b", &[c_out], Init::Const(0.0)));
        let quant = match spec.w_bits {
            32 => None,
            bits => Some(Quantizer::weight(&format!("{}.w", dotted(p)), spec.method, bits, c_out as usize, {
                (k * k * c_out) as usize
            })?),
        };
        Ok(QConv2d { w, b, stride, padding, quant })
    }

    /// Convolution with the (quantized) weights.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = match &mut self.quant {
            Some(q) => q.forward_weight(&self.w, train)?,
            None => self.w.shallow_clone(),
        };
        Ok(x.conv2d(&w, self.b.as_ref(), [self.stride], [self.padding], [1], 1))
    }
}

/// A path's name as the checkpoints spell it (`stage1.block0.conv1`).
pub fn dotted(p: &nn::Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// BatchNorm momentum (the official decay 0.9).
pub const BN_MOMENTUM: f64 = 0.1;
/// BatchNorm ε.
pub const BN_EPS: f64 = 1e-5;

/// BatchNorm with the official settings: decay 0.9 (momentum 0.1), ε = 1e-5; without γ/β when not `affine` (the
/// official FC-side BNs), γ starting at 0 when `zero_gamma` (last BN of a post-activation residual branch).
pub fn batch_norm(p: &nn::Path, c: i64, affine: bool, zero_gamma: bool) -> nn::BatchNorm {
    let ws_init = if zero_gamma { Init::Const(0.0) } else { Init::Const(1.0) };
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig { momentum: BN_MOMENTUM, eps: BN_EPS, affine, ws_init, ..Default::default() },
    )
}

/// BN → ReLU → activation quantizer (spec §1.4). The BN is absent where the official code quantizes a tensor
/// that is already non-negative (the max-pool output entering a pre-activation ResNet); the quantizer is absent
/// when `a_bits == 32` or the unit is not quantized (network heads).
#[derive(Debug)]
pub struct BnReluQuant {
    /// The BatchNorm.
    pub bn: Option<nn::BatchNorm>,
    /// The activation quantizer of this layer's output.
    pub quant: Option<Quantizer>,
}

impl BnReluQuant {
    /// Creates `p/"bn"` (when `bn`; without γ/β unless `affine`) and, if asked, the quantizer named `p.act`.
    pub fn new(p: &nn::Path, c: i64, spec: QuantSpec, bn: bool, affine: bool, quantize: bool) -> Result<Self> {
        let quant = match (quantize, spec.a_bits) {
            (false, _) | (_, 32) => None,
            (true, b) => Some(Quantizer::activation(&format!("{}.act", dotted(p)), spec.method, b)?),
        };
        Ok(BnReluQuant { bn: bn.then(|| batch_norm(&(p / "bn"), c, affine, false)), quant })
    }

    /// `Q(relu(bn(x)))` (`relu(bn(x))` without a quantizer).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b = match &self.bn {
            Some(bn) => crate::dist::batch_norm(x, bn, train)?,
            None => x.shallow_clone(),
        };
        match &mut self.quant {
            Some(q) => q.forward_relu_activation(&b, train),
            None => Ok(b.relu()),
        }
    }

    /// `relu(bn(x))`: the quantizer's input.
    pub fn pre(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(match &self.bn {
            Some(bn) => crate::dist::batch_norm(x, bn, train)?.relu(),
            None => x.relu(),
        })
    }

    /// `Q(h)` (or `h` without a quantizer).
    pub fn quantize(&mut self, h: &Tensor, train: bool) -> Result<Tensor> {
        match &mut self.quant {
            Some(q) => q.forward_activation(h, train),
            None => Ok(h.shallow_clone()),
        }
    }
}
