//! End-to-end inference of exported CIFAR networks: the pre-activation ResNet (shortcut A or B) and VGG-Small,
//! mirroring `lq-train`'s models layer by layer. Feature maps are NHWC f32 between layers where the network adds
//! or pools full-precision values, and bit-planes wherever a quantized conv reads them.
use crate::conv::{BitConv, ChannelQuant};
use crate::error::{Error, Result};
use crate::kernels::Isa;
use crate::model::{Data, Meta, ModelFile};
use crate::scratch::Buf;
use std::path::Path;

/// A full-precision conv (OIHW weights), computed as f32 im2col + GEMM.
#[derive(Clone, Debug)]
struct FpConv {
    w: Vec<f32>,
    c_out: usize,
    c_in: usize,
    k: usize,
}

impl FpConv {
    /// CHW in (the normalised image), NHWC out, stride 1, same padding: im2col straight from the planes (no
    /// transposed copy of the image), then one GEMM.
    fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (k, c, pad) = (self.k, self.c_in, self.k / 2);
        let kk = k * k * c;
        let mut cols = Buf::<f32>::zeroed(h * w * kk);
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    let q = (ci * k + ky) * k + kx;
                    for y in (0..h).filter(|&y| y + ky >= pad && y + ky - pad < h) {
                        let src = &x[(ci * h + y + ky - pad) * w..][..w];
                        for xx in (0..w).filter(|&xx| xx + kx >= pad && xx + kx - pad < w) {
                            cols[(y * w + xx) * kk + q] = src[xx + kx - pad];
                        }
                    }
                }
            }
        }
        let mut out = vec![0.0f32; h * w * self.c_out];
        // SAFETY: cols is (h·w)×kk row-major, w is c_out×kk row-major read transposed, out is (h·w)×c_out.
        unsafe {
            matrixmultiply::sgemm(
                h * w,
                kk,
                self.c_out,
                1.0,
                cols.as_ptr(),
                kk as isize,
                1,
                self.w.as_ptr(),
                1,
                kk as isize,
                0.0,
                out.as_mut_ptr(),
                self.c_out as isize,
                1,
            );
        }
        out
    }
}

#[derive(Clone, Debug)]
struct Act {
    q: ChannelQuant,
    basis: Vec<f32>,
}

#[derive(Clone, Debug)]
struct Block {
    pre: Act,
    conv1: BitConv,
    mid: Act,
    conv2: BitConv,
    proj: Option<(BitConv, Vec<f32>, Vec<f32>)>,
    pad_to: Option<usize>,
}

#[derive(Clone, Debug)]
enum Body {
    ResNet { blocks: Vec<Block>, head: (Vec<f32>, Vec<f32>) },
    Vgg { convs: Vec<BitConv>, acts: Vec<Act>, last_bn: (Vec<f32>, Vec<f32>) },
}

/// A loaded, validated network ready for inference.
#[derive(Clone, Debug)]
pub struct Model {
    /// The file's metadata (architecture, input normalisation).
    pub meta: Meta,
    conv0: FpConv,
    body: Body,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

impl Model {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<Model> {
        let f = ModelFile::load(path)?;
        Model::from_file(&f).map_err(|why| Error::Format { path: path.display().to_string(), why })
    }

    /// Builds the network from a parsed file, checking every tensor against the architecture.
    pub fn from_file(f: &ModelFile) -> std::result::Result<Model, String> {
        let meta = f.meta.clone().ok_or("no metadata")?;
        let a = &meta.arch;
        let (kw, ka) = (a.w_bits as usize, a.a_bits as usize);
        if !(1..=8).contains(&kw) || !(1..=8).contains(&ka) {
            return Err(format!("engine needs 1..=8-bit weights and activations, file says W{kw}A{ka}"));
        }
        let [cin, h, w] = a.input;
        let size = cin.checked_mul(h).and_then(|n| n.checked_mul(w));
        if cin == 0 || h == 0 || w == 0 || size.is_none() {
            return Err(format!("input shape {cin}x{h}x{w} is empty or too large"));
        }
        if a.classes == 0 {
            return Err("0 classes".into());
        }
        if (Some(meta.mean.len()) != size && meta.mean.len() != cin) || meta.scale.len() != cin {
            return Err("input normalisation does not match the input shape".into());
        }
        // Non-finite values would only show up as NaN/inf logits, so they are load errors.
        let f32s = f.tensors.iter().filter_map(|(n, (_, d))| match d {
            Data::F32(v) => Some((format!("tensor `{n}`"), v)),
            _ => None,
        });
        let all = [("input `mean`".to_string(), &meta.mean), ("input `scale`".to_string(), &meta.scale)];
        for (what, v) in all.into_iter().chain(f32s) {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("{what} holds a non-finite value ({}) at index {i}", v[i]));
            }
        }
        let act = |n: &str, c: usize| f.act(n, c, ka).map(|(q, basis)| Act { q, basis });
        let (c0, body, feat) = match a.kind.as_str() {
            "resnet" => {
                if a.depth < 8 || (a.depth - 2) % 6 != 0 {
                    return Err(format!("resnet depth {} is not 6n+2", a.depth));
                }
                // Shortcut A pools 2×2 after each of the two stride-2 stages, so both need even sizes.
                if a.shortcut == "A" && (h % 4 != 0 || w % 4 != 0) {
                    return Err(format!(
                        "resnet with shortcut A needs an input height and width divisible by 4, not {h}x{w}"
                    ));
                }
                let (mut blocks, mut c_in) = (Vec::new(), 16);
                for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
                    for b in 0..(a.depth - 2) / 6 {
                        let p = format!("stage{}.block{b}", s + 1);
                        let stride = if s > 0 && b == 0 { 2 } else { 1 };
                        let change = stride != 1 || c_in != c;
                        let proj = match (change, a.shortcut.as_str()) {
                            (true, "B") => Some({
                                let (sc, sh) = f.bn(&format!("{p}.proj_bn"), c)?;
                                (f.conv(&format!("{p}.proj"), c, c_in, 1, stride, kw)?, sc, sh)
                            }),
                            (_, "A" | "B") => None,
                            (_, s) => return Err(format!("unknown shortcut '{s}'")),
                        };
                        blocks.push(Block {
                            pre: act(&format!("{p}.pre"), c_in)?,
                            conv1: f.conv(&format!("{p}.conv1"), c, c_in, 3, stride, kw)?,
                            mid: act(&format!("{p}.mid"), c)?,
                            conv2: f.conv(&format!("{p}.conv2"), c, c, 3, 1, kw)?,
                            pad_to: (change && proj.is_none()).then_some(c),
                            proj,
                        });
                        c_in = c;
                    }
                }
                (16, Body::ResNet { blocks, head: f.bn("head_bn", 64)? }, 64)
            }
            "vgg_small" => {
                if h != 32 || w != 32 {
                    return Err(format!("vgg_small needs 32x32 inputs, not {h}x{w}"));
                }
                const W: [usize; 6] = [128, 128, 256, 256, 512, 512];
                let convs = (1..6)
                    .map(|i| f.conv(&format!("conv{i}"), W[i], W[i - 1], 3, 1, kw))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let acts = (0..5).map(|i| act(&format!("act{i}"), W[i])).collect::<std::result::Result<Vec<_>, _>>()?;
                (128, Body::Vgg { convs, acts, last_bn: f.bn("act5", 512)? }, 512 * 16)
            }
            k => return Err(format!("unknown architecture '{k}'")),
        };
        let conv0 = FpConv { w: f.f32("conv0.w", &[c0, cin, 3, 3])?, c_out: c0, c_in: cin, k: 3 };
        Ok(Model {
            fc_w: f.f32("fc.weight", &[a.classes, feat])?,
            fc_b: f.f32("fc.bias", &[a.classes])?,
            meta,
            conv0,
            body,
        })
    }

    /// Normalises u8 CHW pixels the way training did, into CHW f32.
    pub fn normalize(&self, pixels: &[u8]) -> Vec<f32> {
        let [c, h, w] = self.meta.arch.input;
        let per_pixel = self.meta.mean.len() == c * h * w;
        let mean = |i: usize| if per_pixel { self.meta.mean[i] } else { self.meta.mean[i / (h * w)] };
        pixels.iter().enumerate().map(|(i, &p)| (p as f32 - mean(i)) * self.meta.scale[i / (h * w)]).collect()
    }

    /// Logits of `n` normalised CHW images, `[n][classes]`, images in parallel (each image's layers are parallel
    /// too, which is what a single image uses). Batching images into one GEMM per layer measured no faster here:
    /// the per-image working set stays in L2, a batch's does not.
    pub fn forward_batch(&self, x: &[f32], n: usize, isa: Isa) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let [c, h, w] = self.meta.arch.input;
        if x.len() != n * c * h * w {
            return Err(Error::Input(format!("{} values for {n} images, the model takes {c}x{h}x{w} each", x.len())));
        }
        // On a pool worker, so the many small parallel loops of a layer do not each wake the pool from outside.
        Ok(rayon::scope(|_| x.par_chunks(c * h * w).flat_map_iter(|img| self.forward_one(img, isa)).collect()))
    }

    /// Logits of one normalised CHW image.
    pub fn forward(&self, chw: &[f32], isa: Isa) -> Result<Vec<f32>> {
        self.forward_batch(chw, 1, isa)
    }

    fn forward_one(&self, chw: &[f32], isa: Isa) -> Vec<f32> {
        let [_, h, w] = self.meta.arch.input;
        let x = self.conv0.forward(chw, h, w);
        let feats = match &self.body {
            Body::ResNet { blocks, head } => resnet(blocks, head, x, h, w, isa),
            Body::Vgg { convs, acts, last_bn } => vgg(convs, acts, last_bn, x, isa),
        };
        let classes = self.fc_b.len();
        (0..classes)
            .map(|o| {
                self.fc_b[o]
                    + self.fc_w[o * feats.len()..(o + 1) * feats.len()]
                        .iter()
                        .zip(&feats)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
            })
            .collect()
    }
}

fn resnet(
    blocks: &[Block],
    head: &(Vec<f32>, Vec<f32>),
    mut x: Vec<f32>,
    mut h: usize,
    mut w: usize,
    isa: Isa,
) -> Vec<f32> {
    for b in blocks {
        let (oh, ow) = b.conv1.out_hw(h, w);
        let r = b.conv1.forward_f32(&x, h, w, &b.pre.q, &b.pre.basis, isa);
        let mut r = b.conv2.forward_f32(&r, oh, ow, &b.mid.q, &b.mid.basis, isa);
        let c = b.conv2.c_out;
        match (&b.proj, b.pad_to) {
            (Some((conv, sc, sh)), _) => {
                // Quantized again on the way in: its operand (1×1, stride 2, no padding) differs from conv1's.
                let s = conv.forward_f32(&x, h, w, &b.pre.q, &b.pre.basis, isa);
                r.iter_mut().zip(&s).enumerate().for_each(|(i, (r, s))| *r += s * sc[i % c] + sh[i % c]);
            }
            (None, Some(_)) => {
                // Option A: 2×2 average pool of x, zero channels split evenly before and after.
                let c_in = x.len() / (h * w);
                let lo = (c - c_in) / 2;
                for (p, rp) in r.chunks_exact_mut(c).enumerate() {
                    let (y, xx) = (p / ow, p % ow);
                    for ci in 0..c_in {
                        let at = |dy: usize, dx: usize| x[((2 * y + dy) * w + 2 * xx + dx) * c_in + ci];
                        rp[lo + ci] += (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) * 0.25;
                    }
                }
            }
            (None, None) => r.iter_mut().zip(&x).for_each(|(r, x)| *r += x),
        }
        (x, h, w) = (r, oh, ow);
    }
    let c = head.0.len();
    let mut f = vec![0.0f32; c];
    for px in x.chunks_exact(c) {
        for ch in 0..c {
            f[ch] += (px[ch] * head.0[ch] + head.1[ch]).max(0.0);
        }
    }
    f.iter_mut().for_each(|v| *v /= (h * w) as f32);
    f
}

fn vgg(convs: &[BitConv], acts: &[Act], last_bn: &(Vec<f32>, Vec<f32>), x: Vec<f32>, isa: Isa) -> Vec<f32> {
    let (mut h, mut w, mut y) = (32, 32, x);
    for (i, conv) in convs.iter().enumerate() {
        y = conv.forward_f32(&y, h, w, &acts[i].q, &acts[i].basis, isa);
        if i % 2 == 0 {
            (y, h, w) = (maxpool2(&y, h, w, conv.c_out), h / 2, w / 2);
        }
    }
    // Last BN → ReLU, then NCHW flatten order for the FC (as the trainer's `flatten`).
    let c = last_bn.0.len();
    (0..c * h * w)
        .map(|i| (y[(i % (h * w)) * c + i / (h * w)] * last_bn.0[i / (h * w)] + last_bn.1[i / (h * w)]).max(0.0))
        .collect()
}

fn maxpool2(x: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![f32::NEG_INFINITY; oh * ow * c];
    for y in 0..oh * 2 {
        for xx in 0..ow * 2 {
            let o = ((y / 2) * ow + xx / 2) * c;
            for ch in 0..c {
                out[o + ch] = out[o + ch].max(x[(y * w + xx) * c + ch]);
            }
        }
    }
    out
}
