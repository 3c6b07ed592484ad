//! The networks, one per file, built from the layers in [`crate::layers`]. Variable paths (`stage1.block0.conv1.w`)
//! are the names in checkpoints.
use crate::error::Result;
use crate::quant::Quantizer;
use tch::Tensor;

mod resnet_cifar;
mod vgg_small;

pub use resnet_cifar::{ResNetCifar, Shortcut};
pub use vgg_small::VggSmall;

/// A trainable network with quantizers.
pub trait Net {
    /// Logits for a batch; `train` selects BN batch statistics and QEM updates.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// Every quantizer, in forward order.
    fn quantizers(&self) -> Vec<&Quantizer>;
    /// Every quantizer, mutable (checkpoint restore).
    fn quantizers_mut(&mut self) -> Vec<&mut Quantizer>;
    /// Writes the network's tensors to an engine model file (see [`crate::export`]).
    fn export(&self, f: &mut lq_engine::ModelFile) -> Result<()>;
}

/// Collects the quantizers found in a list of optional slots.
pub(crate) fn collect<'a>(slots: impl IntoIterator<Item = &'a Option<Quantizer>>) -> Vec<&'a Quantizer> {
    slots.into_iter().filter_map(Option::as_ref).collect()
}

/// Mutable version of [`collect`].
pub(crate) fn collect_mut<'a>(slots: impl IntoIterator<Item = &'a mut Option<Quantizer>>) -> Vec<&'a mut Quantizer> {
    slots.into_iter().filter_map(Option::as_mut).collect()
}
