//! The supplement's transforms (spec §6) on one HWC u8 image, writing a fixed-size HWC u8 output.
//!
//! Geometry is one crop box + resize call (`fast_image_resize`, AVX2: 0.26–0.44 ms per 224² output on 512²/500×375
//! photos, a tenth of a JPEG decode, so a hand-written resampler would not pay), then an in-place flip, then the
//! optional colour jitter and PCA lighting, composed into one per-pixel affine colour map ([`ColorMap`]) and applied
//! in one pass, rounded back to u8 (the loader's batches stay u8; the rounding costs ≤ 0.5 level and values are
//! clamped to 0..=255 where fb.resnet.torch would let them leave 0..1). One pass instead of six halved the colour
//! stage (0.57–0.75 → 0.33–0.37 ms per 224² image with the flip).
//! Random draws happen in a fixed order (geometry, flip, jitter, lighting) from the caller's RNG, so an image's
//! augmentation is a function of that RNG's seed alone.
use crate::error::{Error, Result};
use crate::image::Image;
use fast_image_resize as fr;
use rand::Rng;
use std::path::Path;

/// Resampling filter of the resize (both are Pillow's, with support widened by the downscale factor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Triangle (Pillow `BILINEAR`, torchvision's default).
    Bilinear,
    /// Catmull-Rom, a = −0.5 (Pillow `BICUBIC`, the official fb.resnet.torch / tensorpack choice).
    Bicubic,
}

/// Where the output comes from in the source image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Geometry {
    /// The image unchanged (fixed-size sources).
    None,
    /// Zero-pad `pad` pixels on each side, random crop back to the input size (the CIFAR recipe).
    PadCrop {
        /// Padding in pixels.
        pad: usize,
    },
    /// Random box of `area` (fraction of the image) and aspect `ratio` (w/h, log-uniform); 10 tries, then the
    /// centre square (fb.resnet.torch's Scale(size) + CenterCrop(size)); resized to `size²`.
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Area fraction range, e.g. `[0.08, 1.0]`.
        area: [f64; 2],
        /// Aspect range, e.g. `[3/4, 4/3]`.
        ratio: [f64; 2],
    },
    /// Resize the shorter side to `resize`, take the centre `size²` (evaluation).
    ResizeCenterCrop {
        /// Shorter side after resizing.
        resize: usize,
        /// Output side.
        size: usize,
    },
    /// Resize the shorter side to `resize`, take a random `size²` (the HWGQ training setting).
    ResizeRandomCrop {
        /// Shorter side after resizing.
        resize: usize,
        /// Output side.
        size: usize,
    },
}

/// A transform chain: geometry, then optional flip, colour jitter and lighting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Crop / resize.
    pub geometry: Geometry,
    /// Mirror horizontally with probability ½.
    pub flip: bool,
    /// Brightness, contrast and saturation jitter strength (0 = off), applied in random order.
    pub jitter: f32,
    /// PCA lighting noise std (0 = off).
    pub lighting: f32,
    /// Resize filter.
    pub filter: Filter,
}

/// ImageNet's RGB PCA (fb.resnet.torch): eigenvalues and eigenvectors (columns) of the pixel covariance, 0..1 scale.
pub const PCA_EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
/// See [`PCA_EIGVAL`]; `PCA_EIGVEC[channel][component]`.
pub const PCA_EIGVEC: [[f32; 3]; 3] =
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]];

impl Transform {
    /// The supplement's >2-bit training chain (fb.resnet.torch): random-resized crop 8–100 %, aspect 3/4–4/3, to
    /// `size`; jitter 0.4; lighting 0.1; flip; bicubic.
    pub fn fb(size: usize) -> Self {
        let geometry = Geometry::RandomResizedCrop { size, area: [0.08, 1.0], ratio: [0.75, 4.0 / 3.0] };
        Transform { geometry, flip: true, jitter: 0.4, lighting: 0.1, filter: Filter::Bicubic }
    }
    /// The HWGQ-comparison training chain: shorter side 256, random `size²` crop, flip; bicubic.
    pub fn hwgq(size: usize) -> Self {
        let geometry = Geometry::ResizeRandomCrop { resize: 256, size };
        Transform { geometry, flip: true, jitter: 0.0, lighting: 0.0, filter: Filter::Bicubic }
    }
    /// Evaluation: shorter side 256, centre `size²`; bicubic.
    pub fn eval(size: usize) -> Self {
        let geometry = Geometry::ResizeCenterCrop { resize: 256, size };
        Transform { geometry, flip: false, jitter: 0.0, lighting: 0.0, filter: Filter::Bicubic }
    }
    /// The CIFAR chain: pad `pad` (0 = none), crop, flip.
    pub fn cifar(pad: usize) -> Self {
        let geometry = if pad > 0 { Geometry::PadCrop { pad } } else { Geometry::None };
        Transform { geometry, flip: pad > 0, jitter: 0.0, lighting: 0.0, filter: Filter::Bilinear }
    }
    /// Training chain by name, as a config would give it: `"fb"`, `"hwgq"`, `"eval"` or `"none"` (no augmentation
    /// beyond the eval resize + centre crop).
    pub fn by_name(name: &str, size: usize) -> Option<Self> {
        match name {
            "fb" => Some(Self::fb(size)),
            "hwgq" => Some(Self::hwgq(size)),
            "eval" | "none" => Some(Self::eval(size)),
            _ => None,
        }
    }

    /// Output `[h, w, c]` for a source whose images are `[h, w, c]` (only `None`/`PadCrop` depend on it).
    pub fn out_shape(&self, [h, w, c]: [usize; 3]) -> [usize; 3] {
        match self.geometry {
            Geometry::None | Geometry::PadCrop { .. } => [h, w, c],
            Geometry::RandomResizedCrop { size, .. }
            | Geometry::ResizeCenterCrop { size, .. }
            | Geometry::ResizeRandomCrop { size, .. } => [size, size, c],
        }
    }

    /// Transforms `img` into `out` (`out_shape` of the image's shape, HWC). `path` names the image in errors.
    pub fn apply(
        &self,
        img: &Image,
        path: &Path,
        rng: &mut impl Rng,
        scratch: &mut Scratch,
        out: &mut [u8],
    ) -> Result<()> {
        let [oh, ow, c] = self.out_shape([img.h, img.w, img.c]);
        if out.len() != oh * ow * c || img.data.len() != img.h * img.w * img.c || !matches!(c, 1 | 3) {
            return Err(Error::format(path, format!("{}x{}x{} image does not fit the transform", img.h, img.w, img.c)));
        }
        match self.geometry {
            Geometry::None => out.copy_from_slice(&img.data),
            Geometry::PadCrop { pad } => pad_crop(img, pad, rng, out),
            Geometry::RandomResizedCrop { size, area, ratio } => {
                let b = random_resized_box(img.w, img.h, area, ratio, rng);
                scratch.resize(img, b, size, self.filter, out);
            }
            Geometry::ResizeCenterCrop { resize, size } | Geometry::ResizeRandomCrop { resize, size } => {
                let random = matches!(self.geometry, Geometry::ResizeRandomCrop { .. });
                let b = shorter_side_box(img.w, img.h, resize, size, random.then_some(rng as &mut dyn rand::RngCore));
                scratch.resize(img, b, size, self.filter, out);
            }
        }
        if self.flip && rng.gen_bool(0.5) {
            flip(out, ow, c);
        }
        if (self.jitter > 0.0 || self.lighting > 0.0) && c == 3 {
            // Jitter and lighting are affine per pixel: composed into one colour map, applied in one pass.
            let mut map = ColorMap::IDENTITY;
            if self.jitter > 0.0 {
                map = color_jitter(mean_pixel(out), self.jitter, rng);
            }
            if self.lighting > 0.0 {
                map = map.then(&lighting(self.lighting, rng));
            }
            map.apply_u8(out);
        }
        Ok(())
    }
}

/// A crop box in source pixels (fractional for the resize-then-crop geometries).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// The random-resized-crop box of a `w×h` image (torchvision's draw with fb.resnet.torch's fallback).
pub fn random_resized_box(w: usize, h: usize, area: [f64; 2], ratio: [f64; 2], rng: &mut impl Rng) -> CropBox {
    let total = (w * h) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let a = total * rng.gen_range(area[0]..=area[1]);
        let r = rng.gen_range(lr0..=lr1).exp();
        let (cw, ch) = ((a * r).sqrt().round() as usize, (a / r).sqrt().round() as usize);
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            let x = rng.gen_range(0..=w - cw);
            let y = rng.gen_range(0..=h - ch);
            return CropBox { x: x as f64, y: y as f64, w: cw as f64, h: ch as f64 };
        }
    }
    let s = w.min(h);
    CropBox { x: ((w - s) / 2) as f64, y: ((h - s) / 2) as f64, w: s as f64, h: s as f64 }
}

/// The source box of "resize the shorter side to `resize`, crop `size²`" (centred, or at a random offset when
/// `rng` is given), with torchvision's rounding of the resized size and of the centre offset.
pub fn shorter_side_box(
    w: usize,
    h: usize,
    resize: usize,
    size: usize,
    rng: Option<&mut dyn rand::RngCore>,
) -> CropBox {
    let short = w.min(h) as f64;
    let (nw, nh) = if w <= h {
        (resize, (resize as f64 * h as f64 / short) as usize)
    } else {
        ((resize as f64 * w as f64 / short) as usize, resize)
    };
    let (mx, my) = (nw.saturating_sub(size), nh.saturating_sub(size));
    let (ox, oy) = match rng {
        Some(r) => (r.gen_range(0..=mx), r.gen_range(0..=my)),
        None => (((mx as f64) / 2.0).round() as usize, ((my as f64) / 2.0).round() as usize),
    };
    let (sx, sy) = (nw as f64 / w as f64, nh as f64 / h as f64);
    CropBox { x: ox as f64 / sx, y: oy as f64 / sy, w: size as f64 / sx, h: size as f64 / sy }
}

/// Per-worker buffers (the resizer's).
#[derive(Default)]
pub struct Scratch {
    resizer: fr::Resizer,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

impl Scratch {
    /// Resizes box `b` of `img` to `size × size` into `out` (HWC).
    pub fn resize(&mut self, img: &Image, b: CropBox, size: usize, filter: Filter, out: &mut [u8]) {
        let pt = if img.c == 3 { fr::PixelType::U8x3 } else { fr::PixelType::U8 };
        // Sizes were checked by the caller (and by the decoder's limits), so these cannot fail.
        let src = fr::images::ImageRef::new(img.w as u32, img.h as u32, &img.data, pt).expect("checked image size");
        let mut dst = fr::images::Image::from_slice_u8(size as u32, size as u32, out, pt).expect("checked out size");
        let alg = fr::ResizeAlg::Convolution(match filter {
            Filter::Bilinear => fr::FilterType::Bilinear,
            Filter::Bicubic => fr::FilterType::CatmullRom,
        });
        let opts = fr::ResizeOptions::new().resize_alg(alg).crop(b.x, b.y, b.w, b.h);
        self.resizer.resize(&src, &mut dst, &opts).expect("crop box inside the image");
    }
}

/// Zero-pad and random crop back to the same size (draws: dy, then dx, as the CIFAR loader).
fn pad_crop(img: &Image, pad: usize, rng: &mut impl Rng, out: &mut [u8]) {
    let oy = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let ox = rng.gen_range(0..=2 * pad) as isize - pad as isize;
    let (w, h, c) = (img.w as isize, img.h as isize, img.c);
    for y in 0..h {
        for x in 0..w {
            let (sy, sx) = (y + oy, x + ox);
            let o = (y * w + x) as usize * c;
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                let s = (sy * w + sx) as usize * c;
                out[o..o + c].copy_from_slice(&img.data[s..s + c]);
            } else {
                out[o..o + c].fill(0);
            }
        }
    }
}

/// Mirrors an HWC image of width `w` left to right, in place.
pub fn flip(img: &mut [u8], w: usize, c: usize) {
    if w == 0 || c == 0 {
        return;
    }
    match c {
        3 => flip_px::<3>(img, w),
        1 => img.chunks_exact_mut(w).for_each(|row| row.reverse()),
        _ => {
            for row in img.chunks_exact_mut(w * c) {
                for x in 0..w / 2 {
                    let (a, b) = (x * c, (w - 1 - x) * c);
                    (0..c).for_each(|k| row.swap(a + k, b + k));
                }
            }
        }
    }
}

/// [`flip`] for `C` channels: each row's halves swapped pixel by pixel, no index checks (a quarter of the time of
/// the byte-indexed loop).
fn flip_px<const C: usize>(img: &mut [u8], w: usize) {
    for row in img.chunks_exact_mut(w * C) {
        // The left half's pixels with the right part's from its end (an odd width's middle pixel stays).
        let (l, r) = row.split_at_mut(w / 2 * C);
        for (a, b) in l.chunks_exact_mut(C).zip(r.rchunks_exact_mut(C)) {
            let t: [u8; C] = a.try_into().expect("C bytes");
            a.copy_from_slice(b);
            b.copy_from_slice(&t);
        }
    }
}

/// A per-pixel colour map `p ↦ M·p + b` on RGB pixel values (0–255 scale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorMap {
    /// `m[out_channel][in_channel]`.
    pub m: [[f32; 3]; 3],
    /// Offset added after `m`.
    pub b: [f32; 3],
}

impl ColorMap {
    /// The map that changes nothing.
    pub const IDENTITY: Self = Self { m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], b: [0.0; 3] };

    /// `self` followed by `next`.
    pub fn then(&self, next: &Self) -> Self {
        let m = std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| next.m[r][k] * self.m[k][c]).sum()));
        let b = std::array::from_fn(|r| (0..3).map(|k| next.m[r][k] * self.b[k]).sum::<f32>() + next.b[r]);
        Self { m, b }
    }

    /// The mapped pixel.
    pub fn apply(&self, p: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|r| self.m[r][0] * p[0] + self.m[r][1] * p[1] + self.m[r][2] * p[2] + self.b[r])
    }

    /// Maps HWC RGB bytes in place, rounding to the nearest value (halves up) and clamping to 0–255.
    pub fn apply_u8(&self, img: &mut [u8]) {
        for p in img.chunks_exact_mut(3) {
            let q = self.apply([p[0] as f32, p[1] as f32, p[2] as f32]);
            // Clamped first, so the truncating cast of `v + 0.5` rounds (`round()` is a libm call on baseline x86-64).
            p.iter_mut().zip(q).for_each(|(o, v)| *o = (v.clamp(0.0, 255.0) + 0.5) as u8);
        }
    }
}

/// The mean pixel of HWC RGB bytes (zeros when empty).
pub fn mean_pixel(img: &[u8]) -> [f32; 3] {
    let mut sum = [0u64; 3];
    for p in img.chunks_exact(3) {
        (0..3).for_each(|c| sum[c] += p[c] as u64);
    }
    let n = (img.len() / 3).max(1) as f64;
    sum.map(|s| (s as f64 / n) as f32)
}

/// The grey value of a pixel (ITU-R 601 luma, as fb.resnet.torch).
const GREY: [f32; 3] = [0.299, 0.587, 0.114];

/// fb.resnet.torch's ColorJitter as a colour map, for an image whose mean pixel is `mean`: brightness, contrast and
/// saturation, each a blend with factor `1 + U(−s, s)` towards black, the mean grey, or the per-pixel grey, in
/// random order. (Each blend is affine per pixel, and the mean grey that contrast blends towards is the grey of the
/// mean pixel mapped by the blends before it, so the whole chain is one map.)
pub fn color_jitter(mean: [f32; 3], s: f32, rng: &mut impl Rng) -> ColorMap {
    let mut order = [0, 1, 2];
    // Fisher-Yates with explicit draws (rand's shuffle is not promised stable across versions).
    for i in (1..3).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut map = ColorMap::IDENTITY;
    for op in order {
        let a = 1.0 + rng.gen_range(-s..=s);
        let scale = |b: [f32; 3]| ColorMap { m: ColorMap::IDENTITY.m.map(|r| r.map(|v| v * a)), b };
        let step = match op {
            0 => scale([0.0; 3]),
            1 => {
                let g: f32 = map.apply(mean).iter().zip(GREY).map(|(v, w)| v * w).sum();
                scale([g * (1.0 - a); 3])
            }
            _ => {
                let mut m = scale([0.0; 3]);
                m.m.iter_mut().for_each(|r| r.iter_mut().zip(GREY).for_each(|(v, w)| *v += (1.0 - a) * w));
                m
            }
        };
        map = map.then(&step);
    }
    map
}

/// AlexNet-style PCA lighting noise (fb.resnet.torch) as a colour map: `α ~ N(0, std)` per component, adds
/// `255 · Σ_i eigvec[c][i] · α_i · eigval_i` to channel `c` of every pixel.
pub fn lighting(std: f32, rng: &mut impl Rng) -> ColorMap {
    let alpha: [f32; 3] = std::array::from_fn(|_| normal(rng) * std);
    let b = std::array::from_fn(|c| 255.0 * (0..3).map(|i| PCA_EIGVEC[c][i] * alpha[i] * PCA_EIGVAL[i]).sum::<f32>());
    ColorMap { b, ..ColorMap::IDENTITY }
}

/// A standard normal draw (Box-Muller; avoids a dependency for three numbers per image).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}
