//! Model files built op by op (as the trainer's export writes them) and a dense float64 reference interpreter of
//! the op list. Shared by the tests and the `synthetic` example.
//!
//! Parameters are dyadic rationals (pixels (p − 128)/64, weights k/16, bases m/32 and m/8, BN scales ±½, ±1, ±2)
//! and every threshold sits an odd multiple of 2⁻¹⁸ off that grid, so every quantizer input is computed exactly
//! in f32 and in f64 and never equals a threshold: engine and reference must pick the same code for every
//! activation, and their logits differ only by the float rounding of the last layers.
#![allow(dead_code)]
use lq_engine::{BitConv, ChannelQuant, Data, Meta, ModelFile, Op, Weights, FORMAT_VERSION};
use lq_quant::{CodeSet, Levels};
use std::collections::HashMap;

/// A small deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// An integer in `lo..=hi` divided by `den`.
    pub fn dyadic(&mut self, lo: i64, hi: i64, den: f32) -> f32 {
        (lo + self.below((hi - lo + 1) as u64) as i64) as f32 / den
    }
}

/// A model file under construction: each method appends one op and returns its value number.
pub struct Net {
    pub f: ModelFile,
    pub graph: Vec<Op>,
    /// (h, w, c) of each value.
    pub shapes: Vec<(usize, usize, usize)>,
    pub rng: Rng,
    /// Weight and activation bits of the quantized layers.
    pub kw: usize,
    pub ka: usize,
    acts: HashMap<String, usize>,
}

impl Net {
    pub fn new(input: [usize; 3], kw: usize, ka: usize, seed: u64) -> Net {
        let [c, h, w] = input;
        Net {
            f: ModelFile::default(),
            graph: Vec::new(),
            shapes: vec![(h, w, c)],
            rng: Rng(seed),
            kw,
            ka,
            acts: HashMap::new(),
        }
    }

    fn push(&mut self, op: Op, shape: (usize, usize, usize)) -> usize {
        self.graph.push(op);
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    fn conv_out(&self, src: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> (usize, usize, usize) {
        let (h, w, _) = self.shapes[src];
        ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1, c_out)
    }

    fn put_bias(&mut self, name: &str, c: usize, bias: bool) {
        if bias {
            let b = (0..c).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
            self.f.put_f32(&format!("{name}.b"), vec![c], b);
        }
    }

    /// Packed weights with per-channel bases `b0·2^i`, `b0` in {1, 2, 3}/32.
    fn put_packed(&mut self, name: &str, c_out: usize, c_in: usize, k: usize, stride: usize) {
        let w: Vec<f32> = (0..c_out * c_in * k * k).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
        let kw = self.kw;
        let b0: Vec<f32> = (0..c_out).map(|_| (self.rng.below(3) + 1) as f32 / 32.0).collect();
        let basis: Vec<f32> = b0.iter().flat_map(|&b| (0..kw).map(move |i| b * (1 << i) as f32)).collect();
        self.f.put_conv(name, &BitConv::pack(c_out, c_in, k, stride, &w, &basis).unwrap());
    }

    /// A full-precision conv, `Weights::Fp` (dyadic OIHW weights) or `Weights::Packed`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        src: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        weights: Weights,
        bias: bool,
    ) -> usize {
        let c_in = self.shapes[src].2;
        match weights {
            Weights::Fp => {
                let w = (0..c_out * c_in * k * k).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
                self.f.put_f32(&format!("{name}.w"), vec![c_out, c_in, k, k], w);
            }
            Weights::Packed => self.put_packed(name, c_out, c_in, k, stride),
        }
        self.put_bias(name, c_out, bias);
        let out = self.conv_out(src, c_out, k, stride, pad);
        self.push(Op::Conv { name: name.into(), src, c_out, k, stride, pad, weights, bias }, out)
    }

    /// The folded unit `name` over `c` channels (once per name): BN scale in {±½, ±1, ±2}, shift on a 1/16 grid
    /// plus 2⁻¹⁸, activation basis `a0·2^j` (in either order), `a0` in {2, 3, 4}/8.
    fn put_act(&mut self, name: &str, c: usize) {
        if let Some(&have) = self.acts.get(name) {
            assert_eq!(have, c, "act unit {name}");
            return;
        }
        let a0 = (self.rng.below(3) + 2) as f32 / 8.0;
        // Every other unit lists its basis largest first, so sorted level index and code differ.
        let flip = self.acts.len() % 2 == 1;
        let basis: Vec<f32> = (0..self.ka).map(|j| a0 * (1 << if flip { self.ka - 1 - j } else { j }) as f32).collect();
        let lv = Levels::from_basis(&basis, CodeSet::Binary).unwrap();
        let scale: Vec<f32> = (0..c).map(|_| [0.5, 1.0, 2.0, -0.5, -1.0, 2.0][self.rng.below(6) as usize]).collect();
        let shift: Vec<f32> = (0..c).map(|_| self.rng.dyadic(-16, 16, 16.0) + 1.0 / (1 << 18) as f32).collect();
        self.f.put_act(name, &ChannelQuant::fold(&lv, &scale, &shift), &basis);
        self.acts.insert(name.into(), c);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn qconv(
        &mut self,
        name: &str,
        src: usize,
        act: &str,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> usize {
        let c_in = self.shapes[src].2;
        self.put_act(act, c_in);
        self.put_packed(name, c_out, c_in, k, stride);
        self.put_bias(name, c_out, bias);
        let out = self.conv_out(src, c_out, k, stride, pad);
        self.push(Op::QConv { name: name.into(), src, act: act.into(), c_out, k, stride, pad, bias }, out)
    }

    pub fn act(&mut self, name: &str, src: usize) -> usize {
        self.put_act(name, self.shapes[src].2);
        let s = self.shapes[src];
        self.push(Op::Act { name: name.into(), src }, s)
    }

    /// A folded BN with scale in {¼ .. 2} (either sign) and shift on a 1/16 grid.
    pub fn bn(&mut self, name: &str, src: usize, relu: bool) -> usize {
        let s = self.shapes[src];
        let scale = (0..s.2).map(|_| self.rng.dyadic(-8, 8, 4.0)).collect();
        let shift = (0..s.2).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
        self.f.put_f32(&format!("{name}.scale"), vec![s.2], scale);
        self.f.put_f32(&format!("{name}.shift"), vec![s.2], shift);
        self.push(Op::Bn { name: name.into(), src, relu }, s)
    }

    pub fn relu(&mut self, src: usize) -> usize {
        let s = self.shapes[src];
        self.push(Op::Relu { src }, s)
    }

    pub fn add(&mut self, a: usize, b: usize) -> usize {
        let s = self.shapes[a];
        self.push(Op::Add { a, b }, s)
    }

    pub fn concat(&mut self, srcs: &[usize]) -> usize {
        let (h, w, _) = self.shapes[srcs[0]];
        let c = srcs.iter().map(|&v| self.shapes[v].2).sum();
        self.push(Op::Concat { srcs: srcs.to_vec() }, (h, w, c))
    }

    pub fn max_pool(&mut self, src: usize, k: usize, stride: usize, pad: usize) -> usize {
        let out = self.conv_out(src, self.shapes[src].2, k, stride, pad);
        self.push(Op::MaxPool { src, k, stride, pad }, out)
    }

    pub fn avg_pool(&mut self, src: usize, k: usize, stride: usize) -> usize {
        let out = self.conv_out(src, self.shapes[src].2, k, stride, 0);
        self.push(Op::AvgPool { src, k, stride }, out)
    }

    pub fn pad_channels(&mut self, src: usize, before: usize, after: usize) -> usize {
        let (h, w, c) = self.shapes[src];
        self.push(Op::PadChannels { src, before, after }, (h, w, before + c + after))
    }

    pub fn global_avg_pool(&mut self, src: usize) -> usize {
        let c = self.shapes[src].2;
        self.push(Op::GlobalAvgPool { src }, (1, 1, c))
    }

    pub fn linear(&mut self, name: &str, src: usize, c_out: usize) -> usize {
        let (h, w, c) = self.shapes[src];
        let wt = (0..c_out * c * h * w).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
        self.f.put_f32(&format!("{name}.weight"), vec![c_out, c * h * w], wt);
        let b = (0..c_out).map(|_| self.rng.dyadic(-8, 8, 16.0)).collect();
        self.f.put_f32(&format!("{name}.bias"), vec![c_out], b);
        self.push(Op::Linear { name: name.into(), src, c_out }, (1, 1, c_out))
    }

    /// The model file: classes = channels of the last value, input normalised as `(p − 128)/64`.
    pub fn finish(mut self) -> ModelFile {
        let (h, w, c) = self.shapes[0];
        self.f.meta = Some(Meta {
            version: FORMAT_VERSION,
            model: r#"{"test":true}"#.into(),
            classes: self.shapes.last().unwrap().2,
            w_bits: self.kw as u32,
            a_bits: self.ka as u32,
            input: [c, h, w],
            mean: vec![128.0; c],
            scale: vec![1.0 / 64.0; c],
            graph: self.graph,
        });
        self.f
    }
}

/// Pre-activation CIFAR ResNet of `depth` (6n+2), shortcut `A` (avg-pool + zero channels) or `B` (quantized 1×1
/// conv + BN), named as the trainer names it.
pub fn resnet_cifar(depth: usize, shortcut: char, kw: usize, ka: usize, hw: usize, seed: u64) -> ModelFile {
    let mut n = Net::new([3, hw, hw], kw, ka, seed);
    let mut x = n.conv("conv0", 0, 16, 3, 1, 1, Weights::Fp, false);
    let mut c_in = 16;
    for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
        for b in 0..(depth - 2) / 6 {
            let p = format!("stage{}.block{b}", s + 1);
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let r = n.qconv(&format!("{p}.conv1"), x, &format!("{p}.pre"), c, 3, stride, 1, false);
            let r = n.qconv(&format!("{p}.conv2"), r, &format!("{p}.mid"), c, 3, 1, 1, false);
            let short = match (stride != 1 || c_in != c, shortcut) {
                (false, _) => x,
                (true, 'A') => {
                    let p = n.avg_pool(x, 2, 2);
                    n.pad_channels(p, (c - c_in) / 2, c - c_in - (c - c_in) / 2)
                }
                (true, _) => {
                    let s = n.qconv(&format!("{p}.proj"), x, &format!("{p}.pre"), c, 1, stride, 0, false);
                    n.bn(&format!("{p}.proj_bn"), s, false)
                }
            };
            x = n.add(r, short);
            c_in = c;
        }
    }
    let x = n.bn("head_bn", x, true);
    let x = n.global_avg_pool(x);
    n.linear("fc", x, 10);
    n.finish()
}

/// VGG-Small with channel widths `wd` (the paper's: 128, 128, 256, 256, 512, 512) on 32×32 inputs.
pub fn vgg_small(wd: [usize; 6], kw: usize, ka: usize, seed: u64) -> ModelFile {
    let mut n = Net::new([3, 32, 32], kw, ka, seed);
    let mut x = n.conv("conv0", 0, wd[0], 3, 1, 1, Weights::Fp, false);
    for (i, &c) in wd.iter().enumerate().skip(1) {
        x = n.qconv(&format!("conv{i}"), x, &format!("act{}", i - 1), c, 3, 1, 1, false);
        if i % 2 == 1 {
            x = n.max_pool(x, 2, 2, 0);
        }
    }
    let x = n.bn("act5", x, true);
    n.linear("fc", x, 10);
    n.finish()
}

/// Input pixels of image `i` normalised as the files above say.
pub fn image(f: &ModelFile, seed: u64) -> Vec<f32> {
    let [c, h, w] = f.meta.as_ref().unwrap().input;
    let mut r = Rng(seed);
    (0..c * h * w).map(|_| (r.below(256) as f32 - 128.0) / 64.0).collect()
}

fn f32s<'a>(f: &'a ModelFile, name: &str) -> &'a [f32] {
    match &f.tensors[name].1 {
        Data::F32(v) => v,
        _ => panic!("{name} is not F32"),
    }
}

/// Conv weights as f64 OIHW from the file: `{name}.w`, or `{name}.bits`/`{name}.basis` decoded from the
/// documented dense layout (bit `(ky·k + kx)·C_in + ci` of each `[o][plane]` row, LSB first, 1 = +1).
fn weights(f: &ModelFile, name: &str, c_out: usize, c_in: usize, k: usize, packed: bool) -> Vec<f64> {
    if !packed {
        return f32s(f, &format!("{name}.w")).iter().map(|&v| v as f64).collect();
    }
    let bits = match &f.tensors[&format!("{name}.bits")] {
        (s, Data::U8(b)) => (s.clone(), b),
        _ => panic!("{name}.bits"),
    };
    let (kw, bytes) = (bits.0[1], bits.0[2]);
    let basis = f32s(f, &format!("{name}.basis"));
    let mut w = vec![0.0f64; c_out * c_in * k * k];
    for o in 0..c_out {
        for ci in 0..c_in {
            for t in 0..k * k {
                let d = t * c_in + ci;
                w[(o * c_in + ci) * k * k + t] = (0..kw)
                    .map(|i| {
                        let bit = bits.1[(o * kw + i) * bytes + d / 8] >> (d % 8) & 1;
                        basis[o * kw + i] as f64 * if bit == 1 { 1.0 } else { -1.0 }
                    })
                    .sum();
            }
        }
    }
    w
}

/// Direct-loop conv, NHWC in and out, OIHW weights, zero padding.
#[allow(clippy::too_many_arguments)]
fn conv(x: &[f64], (h, w, c): (usize, usize, usize), wt: &[f64], co: usize, k: usize, s: usize, p: usize) -> Vec<f64> {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut out = vec![0.0; oh * ow * co];
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..co {
                let mut acc = 0.0;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ci in 0..c {
                            acc += x[(iy as usize * w + ix as usize) * c + ci] * wt[((o * c + ci) * k + ky) * k + kx];
                        }
                    }
                }
                out[(oy * ow + ox) * co + o] = acc;
            }
        }
    }
    out
}

/// The folded unit `name` applied: the code of the sorted level index `#{l : sign·x > sign·τ_l}`, then the level
/// `Σ_j basis_j·bit_j(code)`.
fn quantize(f: &ModelFile, name: &str, x: &[f64], c: usize) -> Vec<f64> {
    let (tau, sign, basis) =
        (f32s(f, &format!("{name}.tau")), f32s(f, &format!("{name}.sign")), f32s(f, &format!("{name}.basis")));
    let codes = match &f.tensors[&format!("{name}.codes")].1 {
        Data::U8(v) => v,
        _ => panic!(),
    };
    let t = codes.len() - 1;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i % c;
            let s = sign[ch] as f64;
            let idx = (0..t).filter(|&l| s * v > s * tau[ch * t + l] as f64).count();
            (0..basis.len()).filter(|j| codes[idx] >> j & 1 == 1).map(|j| basis[j] as f64).sum()
        })
        .collect()
}

/// Max (padding excluded) or average (divided by `k·k`) pooling.
fn pool(
    x: &[f64],
    (h, w, c): (usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
    max: bool,
) -> (Vec<f64>, (usize, usize, usize)) {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let mut inside = Vec::new();
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                        if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                            inside.push(x[(iy as usize * w + ix as usize) * c + ch]);
                        }
                    }
                }
                y.push(match max {
                    true => inside.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    false => inside.iter().sum::<f64>() / (k * k) as f64,
                });
            }
        }
    }
    (y, (oh, ow, c))
}

/// Logits of one normalised CHW image by the dense float64 interpretation of the file's op list.
pub fn reference(f: &ModelFile, chw: &[f32]) -> Vec<f64> {
    let meta = f.meta.as_ref().unwrap();
    let [c0, h0, w0] = meta.input;
    let mut vals: Vec<Vec<f64>> = vec![(0..h0 * w0 * c0).map(|i| chw[(i % c0) * h0 * w0 + i / c0] as f64).collect()];
    let mut shapes = vec![(h0, w0, c0)];
    for op in &meta.graph {
        let (x, s) = (&vals[op.inputs()[0]], shapes[op.inputs()[0]]);
        let (h, w, c) = s;
        let (v, shape) = match op {
            Op::Conv { name, c_out, k, stride, pad, weights: wts, bias, .. } => {
                let wt = weights(f, name, *c_out, c, *k, *wts == Weights::Packed);
                let mut y = conv(x, s, &wt, *c_out, *k, *stride, *pad);
                if *bias {
                    let b = f32s(f, &format!("{name}.b"));
                    y.iter_mut().enumerate().for_each(|(i, y)| *y += b[i % c_out] as f64);
                }
                (y, ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1, *c_out))
            }
            Op::QConv { name, act, c_out, k, stride, pad, bias, .. } => {
                let q = quantize(f, act, x, c);
                let wt = weights(f, name, *c_out, c, *k, true);
                let mut y = conv(&q, s, &wt, *c_out, *k, *stride, *pad);
                if *bias {
                    let b = f32s(f, &format!("{name}.b"));
                    y.iter_mut().enumerate().for_each(|(i, y)| *y += b[i % c_out] as f64);
                }
                (y, ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1, *c_out))
            }
            Op::Act { name, .. } => (quantize(f, name, x, c), s),
            Op::Bn { name, relu, .. } => {
                let (a, b) = (f32s(f, &format!("{name}.scale")), f32s(f, &format!("{name}.shift")));
                let y = x.iter().enumerate().map(|(i, &v)| v * a[i % c] as f64 + b[i % c] as f64);
                (y.map(|v| if *relu { v.max(0.0) } else { v }).collect(), s)
            }
            Op::Relu { .. } => (x.iter().map(|v| v.max(0.0)).collect(), s),
            Op::Add { b, .. } => (x.iter().zip(&vals[*b]).map(|(a, b)| a + b).collect(), s),
            Op::Concat { srcs } => {
                let ct: usize = srcs.iter().map(|&v| shapes[v].2).sum();
                let mut y = Vec::new();
                for p in 0..h * w {
                    for &v in srcs {
                        let cv = shapes[v].2;
                        y.extend_from_slice(&vals[v][p * cv..][..cv]);
                    }
                }
                (y, (h, w, ct))
            }
            Op::MaxPool { k, stride, pad, .. } => pool(x, s, *k, *stride, *pad, true),
            Op::AvgPool { k, stride, .. } => pool(x, s, *k, *stride, 0, false),
            Op::PadChannels { before, after, .. } => {
                let ct = before + c + after;
                let y = (0..h * w * ct)
                    .map(|i| {
                        let (p, ch) = (i / ct, i % ct);
                        if ch >= *before && ch < before + c {
                            x[p * c + ch - before]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                (y, (h, w, ct))
            }
            Op::GlobalAvgPool { .. } => {
                ((0..c).map(|ch| (0..h * w).map(|p| x[p * c + ch]).sum::<f64>() / (h * w) as f64).collect(), (1, 1, c))
            }
            Op::Linear { name, c_out, .. } => {
                let (wt, b) = (f32s(f, &format!("{name}.weight")), f32s(f, &format!("{name}.bias")));
                let n = c * h * w;
                // Feature j of PyTorch's NCHW flatten: channel j / (h·w), pixel j % (h·w).
                let y = (0..*c_out)
                    .map(|o| {
                        b[o] as f64
                            + (0..n).map(|j| wt[o * n + j] as f64 * x[(j % (h * w)) * c + j / (h * w)]).sum::<f64>()
                    })
                    .collect();
                (y, (1, 1, *c_out))
            }
        };
        vals.push(v);
        shapes.push(shape);
    }
    vals.pop().unwrap()
}
