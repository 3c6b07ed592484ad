//! Image augmentation and normalisation, as small pure functions on one CHW u8 image.
//!
//! Training augmentation is the supplement's CIFAR recipe: zero-pad 4 pixels on each side, take a random 32×32
//! crop, flip horizontally with probability ½. Test images are only normalised.
use crate::dataset::Dataset;
use rand::Rng;

/// Maps raw pixels to network inputs: `(pixel − mean[i]) · scale[channel]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    scale: Vec<f32>,
    plane: usize,
}

impl Normalize {
    /// Per-channel mean and std given on the 0..1 scale (e.g. CIFAR-10's (0.4914, 0.4822, 0.4465) /
    /// (0.2470, 0.2435, 0.2616)).
    pub fn per_channel(mean: &[f32], std: &[f32], h: usize, w: usize) -> Self {
        let plane = h * w;
        let m = mean.iter().flat_map(|&m| std::iter::repeat_n(m * 255.0, plane)).collect();
        Normalize { mean: m, scale: std.iter().map(|s| 1.0 / (s * 255.0)).collect(), plane }
    }
    /// Per-channel mean/std measured on `ds`.
    pub fn per_channel_of(ds: &Dataset) -> Self {
        let plane = ds.h * ds.w;
        let (mut mean, mut std) = (vec![0.0f32; ds.c], vec![0.0f32; ds.c]);
        for c in 0..ds.c {
            let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..ds.len() {
                for &p in &ds.image(i)[c * plane..(c + 1) * plane] {
                    let v = p as f64 / 255.0;
                    s += v;
                    s2 += v * v;
                    n += 1.0;
                }
            }
            let m = s / n.max(1.0);
            mean[c] = m as f32;
            std[c] = ((s2 / n.max(1.0) - m * m).max(1e-12)).sqrt() as f32;
        }
        Self::per_channel(&mean, &std, ds.h, ds.w)
    }
    /// The official VGG-Small input: subtract the per-pixel mean image of `ds`, then divide by 128.
    pub fn per_pixel_of(ds: &Dataset) -> Self {
        let size = ds.c * ds.h * ds.w;
        let mut sum = vec![0.0f64; size];
        for i in 0..ds.len() {
            sum.iter_mut().zip(ds.image(i)).for_each(|(s, &p)| *s += p as f64);
        }
        let mean = sum.iter().map(|s| (s / ds.len().max(1) as f64) as f32).collect();
        Normalize { mean, scale: vec![1.0 / 128.0; ds.c], plane: ds.h * ds.w }
    }
    /// The per-element mean (`[C·H·W]`, pixel units) and per-channel scale.
    pub fn parts(&self) -> (&[f32], &[f32]) {
        (&self.mean, &self.scale)
    }
    /// The mean as stored in files: `C` values when it is constant over each channel's plane, else `C·H·W`.
    pub fn compact_mean(&self) -> Vec<f32> {
        let plane = self.plane.max(1);
        if self.mean.chunks(plane).all(|c| c.iter().all(|&v| v == c[0])) {
            self.mean.iter().step_by(plane).copied().collect()
        } else {
            self.mean.clone()
        }
    }
    /// Rebuilds a normalisation from [`Normalize::compact_mean`] (or the full mean) and the per-channel scale, for
    /// `h×w` images; `None` when the lengths do not fit `scale.len()` channels or a value is not finite.
    pub fn from_parts(mean: &[f32], scale: &[f32], h: usize, w: usize) -> Option<Self> {
        let (c, plane) = (scale.len(), h.checked_mul(w)?);
        let finite = mean.iter().chain(scale).all(|v| v.is_finite());
        let mean = match mean.len() {
            n if n == c => mean.iter().flat_map(|&m| std::iter::repeat_n(m, plane)).collect(),
            n if Some(n) == c.checked_mul(plane) => mean.to_vec(),
            _ => return None,
        };
        (finite && c > 0 && plane > 0).then_some(Normalize { mean, scale: scale.to_vec(), plane })
    }
    /// Whether this normalisation is for `c`-channel `h×w` images.
    pub fn fits(&self, c: usize, h: usize, w: usize) -> bool {
        self.scale.len() == c && Some(self.plane) == h.checked_mul(w) && self.mean.len() == c * self.plane
    }
    /// Channel `ch`'s mean plane (`h·w` values) and scale; what [`Normalize::apply`] uses for that channel.
    pub(crate) fn channel(&self, ch: usize) -> (&[f32], f32) {
        (&self.mean[ch * self.plane..][..self.plane], self.scale[ch])
    }
    #[inline]
    pub(crate) fn apply(&self, i: usize, p: u8) -> f32 {
        (p as f32 - self.mean[i]) * self.scale[i / self.plane]
    }
}

/// Writes `img` (CHW, `c×h×w`) normalised into `out`, without augmentation.
pub fn plain(img: &[u8], norm: &Normalize, out: &mut [f32]) {
    out.iter_mut().zip(img).enumerate().for_each(|(i, (o, &p))| *o = norm.apply(i, p));
}

/// Pad `pad` pixels of zeros on each side, crop back to `h×w` at a random offset, flip with probability ½, normalise.
pub fn pad_crop_flip(
    img: &[u8],
    [c, h, w]: [usize; 3],
    pad: usize,
    norm: &Normalize,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let oy = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let ox = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let flip = rng.gen_bool(0.5);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x } as isize + ox;
                let sy = y as isize + oy;
                let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                let src = ch * h * w + (sy.max(0) as usize).min(h - 1) * w + (sx.max(0) as usize).min(w - 1);
                let i = ch * h * w + y * w + x;
                // A padded pixel is a zero pixel before normalisation, as in the official pipeline.
                out[i] = norm.apply(i, if inside { img[src] } else { 0 });
            }
        }
    }
}
