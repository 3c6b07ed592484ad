//! Shared layout types and geometry, a leaf module (no kernel code): activation bit-planes ([`Planes`]), the
//! folded per-channel activation quantizer ([`ChannelQuant`]), where a patch bit lives ([`patch_bit`],
//! [`patch_words`]) and the output size of a window ([`out_size`]). The order of the crate's modules is
//! layout → kernels → conv → runtime.
use lq_quant::Levels;

/// Activation codes of one feature map as bit-planes: `[pixel][plane][word]`, channel `c` at bit `c % 64` of
/// word `c / 64`. Padding pixels and channels beyond `c` are zero bits, i.e. the level of code 0, which is 0
/// for activation (`{0,1}`) codes.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Planes (bits K_a).
    pub k: usize,
    /// The bits.
    pub data: Vec<u64>,
}

impl Planes {
    /// Words per plane per pixel.
    pub fn words(&self) -> usize {
        self.c.div_ceil(64)
    }

    /// Whether `data` holds exactly `h·w·k·words` words (the fields are public, so a caller can break this).
    pub(crate) fn is_consistent(&self) -> bool {
        [self.h, self.w, self.k, self.words()].iter().try_fold(1usize, |n, &d| n.checked_mul(d))
            == Some(self.data.len())
    }
}

/// Per-channel activation quantization with BN folded in: `Q(relu(scale·x + shift))` becomes a count of
/// thresholds passed on the raw input, `τ = (t − shift)/scale` compared in the direction of `sign(scale)`
/// (a zero scale gives ±∞ thresholds, a constant code). `codes` maps sorted level index to code.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelQuant {
    /// `±1` per channel.
    pub sign: Vec<f32>,
    /// Folded thresholds `[C][2^K − 1]`.
    pub tau: Vec<f32>,
    /// Code of each sorted level (2^K).
    pub codes: Vec<u8>,
}

impl ChannelQuant {
    /// Folds per-channel BN (`y = scale·x + shift`) and ReLU into the thresholds of `levels`.
    pub fn fold(levels: &Levels, scale: &[f32], shift: &[f32]) -> ChannelQuant {
        let th = levels.thresholds();
        let mut tau = Vec::with_capacity(scale.len() * th.len());
        let mut sign = Vec::with_capacity(scale.len());
        for (&a, &b) in scale.iter().zip(shift) {
            sign.push(if a < 0.0 { -1.0 } else { 1.0 });
            for &t in th {
                // relu(y) > t  ⇔  y > t for the non-negative thresholds of activation levels.
                let t = t.max(0.0);
                // ±f32::MAX rather than ±inf (a zero BN scale, or a tiny one overflowing): the same decisions for
                // every finite input, and model files hold only finite values.
                let tau_t = if a == 0.0 {
                    if b > t {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    }
                } else {
                    ((t as f64 - b as f64) / a as f64) as f32
                };
                tau.push(tau_t.clamp(-f32::MAX, f32::MAX));
            }
        }
        ChannelQuant { sign, tau, codes: levels.codes().to_vec() }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.sign.len()
    }

    /// The bit width K_a when the fields agree (2^K_a codes, K_a in 1..=8, each code below 2^K_a, `C·(2^K_a − 1)`
    /// thresholds), else `None`.
    pub fn bits(&self) -> Option<usize> {
        let n = self.codes.len();
        let k = n.trailing_zeros() as usize;
        let ok = n.is_power_of_two()
            && (1..=8).contains(&k)
            && self.codes.iter().all(|&c| (c as usize) < n)
            && Some(self.tau.len()) == self.sign.len().checked_mul(n - 1);
        ok.then_some(k)
    }
}

/// Where bit `(tap, ci)` of a patch row lives, as (word, bit). When `C_in` divides 64 or is a multiple of it the
/// row is dense, `tap·C_in + ci` (a 3×3 conv over 16 channels takes 3 words, not 9); otherwise each tap starts a
/// new word.
#[inline]
pub fn patch_bit(c_in: usize, tap: usize, ci: usize) -> (usize, usize) {
    if c_in.is_multiple_of(64) || narrow(c_in) {
        let d = tap * c_in + ci;
        (d / 64, d % 64)
    } else {
        (tap * c_in.div_ceil(64) + ci / 64, ci % 64)
    }
}

/// Whether `c` channels are narrower than a word and divide it: their taps are packed densely (see
/// [`patch_bit`]), several per word.
pub(crate) fn narrow(c: usize) -> bool {
    c < 64 && 64 % c == 0
}

/// Words per plane of a patch row of a `k×k` conv over `c_in` channels (see [`patch_bit`]).
pub fn patch_words(c_in: usize, k: usize) -> usize {
    if c_in.is_multiple_of(64) || narrow(c_in) {
        (k * k * c_in).div_ceil(64)
    } else {
        k * k * c_in.div_ceil(64)
    }
}

/// 4-channel groups of one tap in the [`patch_bit`] layout (`C/4` for channels that divide 64, whole words
/// otherwise): the table kernel's unit along K.
pub(crate) fn groups_per_tap(c: usize) -> usize {
    if narrow(c) {
        c / 4
    } else {
        c.div_ceil(64) * 16
    }
}

/// Output length along one side of a `k`-wide window moved by `stride` over `n` values zero-padded by `pad` on
/// both ends (`n + 2·pad ≥ k` and `stride ≥ 1`, checked where shapes are validated).
#[inline]
pub fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}
