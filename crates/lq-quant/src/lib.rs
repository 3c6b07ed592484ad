//! Quantizer math of LQ-Nets (Zhang et al., ECCV 2018) on plain `f32` slices: no tensors, no libtorch.
//!
//! # Overview
//! - [`Levels`]: the sorted levels `vᵀe` of one basis, the code of each level and the decision thresholds;
//!   [`Levels::quantize`] is the simple reference pass (nearest level, official tie rule).
//! - [`quantize`]: the fused multi-threaded pass over a weight matrix (one basis per output channel) or an
//!   activation tensor (one basis), writing quantized values, codes and the QEM statistics [`Moments`]; AVX-512,
//!   AVX2 or portable kernels ([`Isa`]); [`quantize_on`] runs its work items on the caller's threads ([`Parallel`]).
//! - [`QemState`]: basis + zero-debiased moving average, with the official initial bases; [`QemState::update`]
//!   is one QEM basis step (ridge least squares in f64, then EMA with decay 0.9).
//! - [`baselines`]: HWGQ and uniform quantizers as fixed or data-derived bases in the same shape.
//!
//! The math, and every departure from the official code, is written out in [`lq`].
//!
//! ```
//! use lq_quant::{quantize, CodeSet, Levels, QemState};
//! // Fit a 2-bit signed basis to eight values: one encode + least-squares step.
//! let x = [-3.3f32, -2.9, -1.2, -0.8, 0.8, 1.2, 2.9, 3.3];
//! let mut state = QemState::with_basis(2, CodeSet::Signed, vec![1.0, 2.0]);
//! let lv = Levels::from_basis(&state.basis, CodeSet::Signed)?;
//! assert_eq!(lv.levels(), &[-3.0, -1.0, 1.0, 3.0]); // −v0−v1, v0−v1, −v0+v1, v0+v1
//! assert_eq!(lv.codes(), &[0b00, 0b01, 0b10, 0b11]);
//! assert_eq!(lv.thresholds(), &[-2.0, 0.0, 2.0]);
//! let mut y = [0.0f32; 8];
//! let stats = quantize(&[lv], &x, &mut y, None, true)?.unwrap();
//! state.update(&stats, 0.0)?; // after the first step the basis is the LS solution itself
//! let lv = Levels::from_basis(&state.basis, CodeSet::Signed)?;
//! assert!((state.basis[0] - 1.05).abs() < 1e-6 && (state.basis[1] - 2.05).abs() < 1e-6);
//! let want = [-3.1, -1.0, 1.0, 3.1]; // the means of the four pairs
//! assert!(lv.levels().iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5));
//! # Ok::<(), lq_quant::Error>(())
//! ```
#![deny(missing_docs)]

pub use error::{Error, Result};
pub use fused::{
    quantize, quantize_on, quantize_relu, quantize_relu_on, quantize_relu_with, quantize_with, Isa, Parallel, Rayon,
};
pub use lq::{
    check_bits, ste_mask, CodeSet, Levels, Moments, QemState, DEFAULT_RIDGE, EMA_DECAY, MAX_BITS, NORM_PPF_0_75,
};

pub mod baselines;
mod error;
mod fused;
pub mod lq;
pub mod naive;
