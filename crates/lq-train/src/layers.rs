//! Thin layers: a conv whose weights may be quantized, the BN → ReLU → activation-quantizer unit, BN, FC.
use crate::error::Result;
use crate::quant::{Method, Quantizer};
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;

/// Bit widths and quantizer family of a network; 32 bits means full precision (no quantizer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A bias-free 2-D convolution (square kernel) whose weights are quantized per output channel when asked.
#[derive(Debug)]
pub struct QConv2d {
    /// Latent full-precision weights `[C_out, C_in, k, k]`.
    pub w: Tensor,
    /// Stride.
    pub stride: i64,
    /// Zero padding.
    pub padding: i64,
    /// Weight quantizer (None: full precision).
    pub quant: Option<Quantizer>,
}

impl QConv2d {
    /// Creates `p/"w"` with He init (`fan` as the official model file uses) and a weight quantizer unless
    /// `w_bits == 32`.
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        spec: QuantSpec,
        fan: FanInOut,
    ) -> Result<Self> {
        let init = Init::Kaiming { dist: NormalOrUniform::Normal, fan, non_linearity: NonLinearity::ReLU };
        let w = p.var("w", &[c_out, c_in, k, k], init);
        let quant = match spec.w_bits {
            32 => None,
            b => Some(Quantizer::weight(
                &format!("{}.w", p.components().collect::<Vec<_>>().join(".")),
                spec.method,
                b,
                c_out as usize,
                (k * k * c_out) as usize,
            )?),
        };
        Ok(QConv2d { w, stride, padding: k / 2, quant })
    }

    /// Convolution with the (quantized) weights.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = match &mut self.quant {
            Some(q) => q.forward_weight(&self.w, train)?,
            None => self.w.shallow_clone(),
        };
        Ok(x.conv2d(&w, None::<Tensor>, [self.stride], [self.padding], [1], 1))
    }
}

/// BatchNorm with the official settings: decay 0.9 (momentum 0.1), ε = 1e-5.
pub fn batch_norm(p: &nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { momentum: 0.1, eps: 1e-5, ..Default::default() })
}

/// BN → ReLU → activation quantizer (none when `a_bits == 32` or `quantize` is false), spec §1.4.
#[derive(Debug)]
pub struct BnReluQuant {
    /// The BatchNorm.
    pub bn: nn::BatchNorm,
    /// The activation quantizer of this layer's output.
    pub quant: Option<Quantizer>,
}

impl BnReluQuant {
    /// Creates `p/"bn"` and, if asked, the quantizer named `p.act`.
    pub fn new(p: &nn::Path, c: i64, spec: QuantSpec, quantize: bool) -> Result<Self> {
        let quant = match (quantize, spec.a_bits) {
            (false, _) | (_, 32) => None,
            (true, b) => Some(Quantizer::activation(
                &format!("{}.act", p.components().collect::<Vec<_>>().join(".")),
                spec.method,
                b,
            )?),
        };
        Ok(BnReluQuant { bn: batch_norm(&(p / "bn"), c), quant })
    }

    /// `Q(relu(bn(x)))`.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = x.apply_t(&self.bn, train).relu();
        match &mut self.quant {
            Some(q) => q.forward_activation(&h, train),
            None => Ok(h),
        }
    }
}
