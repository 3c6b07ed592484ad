//! End-to-end inference: the model file's op list ([`Op`]) checked once by shape inference and turned into a
//! program of steps over numbered values. Values are NHWC f32 maps; quantized convs quantize their f32 input on
//! the way in, except where a quantized conv's output feeds only another quantized conv, or only a residual add
//! whose sum a quantized conv reads: on the AVX-512 kernel the first then quantizes its output (or the sum, added in
//! the same pass) for the second in its epilogue ([`BitConv::forward_tail`]) and the value is carried as the
//! second's operand.
use crate::conv::{BitConv, Source};
use crate::error::{Error, Result};
use crate::graph::{Op, Weights};
use crate::kernels::{avx512, Isa};
use crate::layout::{out_size, patch_bit, patch_words, ChannelQuant};
use crate::model::{Data, Meta, ModelFile};
use crate::profile::{self, StepTime};
use crate::scratch::{self, Buf};
use crate::team;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Most f32 elements one value or one conv temporary (patch matrix, padded map) may hold: 1 GiB. A model asking
/// for more is broken or hostile; refusing it at load keeps a forward from aborting on allocation.
const MAX_ELEMS: usize = 1 << 28;

/// Height, width, channels of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    h: usize,
    w: usize,
    c: usize,
}

impl Shape {
    fn len(self) -> usize {
        self.h * self.w * self.c
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.h, self.w, self.c)
    }
}

/// The product of `dims` if it is at most [`MAX_ELEMS`].
fn elems(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_ELEMS)
}

/// A full-precision conv: weights `[C_out][ky][kx][C_in]` (so an NHWC patch is contiguous per tap), f32 im2col +
/// GEMM, bias added through the GEMM's accumulator; on a CHW image with AVX-512 and 16, 32, 64 or 128 output channels, a
/// direct conv instead ([`avx512::conv_f32_chw`]).
#[derive(Clone, Debug)]
struct FpConv {
    w: Vec<f32>,
    /// The weights as `[ky][kx][C_in][C_out]` for the direct conv, where it can run.
    wt: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    c_out: usize,
    c_in: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl FpConv {
    /// A conv from `[C_out][ky][kx][C_in]` weights, with the direct conv's transposed copy where it can run.
    fn new(
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        c_out: usize,
        c_in: usize,
        (k, stride, pad): (usize, usize, usize),
    ) -> Self {
        let kk = k * k * c_in;
        let wt = (avx512::is_available() && avx512::direct_conv_takes(c_out) && w.len() == kk * c_out)
            .then(|| (0..kk * c_out).map(|i| w[(i % c_out) * kk + i / c_out]).collect());
        FpConv { w, wt, bias, c_out, c_in, k, stride, pad }
    }

    /// NHWC out from `x` of `h × w`, which is CHW (the normalised image: im2col reads its planes directly, no
    /// transposed copy) or NHWC.
    fn forward(&self, x: &[f32], h: usize, w: usize, chw: bool) -> Vec<f32> {
        let (k, c, s, pad) = (self.k, self.c_in, self.stride, self.pad);
        if let Some(wt) = self.wt.as_ref().filter(|_| chw) {
            let bias = self.bias.as_deref().unwrap_or(&[]);
            if let Some(out) = avx512::conv_f32_chw(x, (c, h, w), wt, bias, self.c_out, (k, s, pad)) {
                return out;
            }
        }
        let (oh, ow) = (out_size(h, k, s, pad), out_size(w, k, s, pad));
        let kk = k * k * c;
        // Input column range of output column `ox` hitting tap `kx`: ox·s + kx − pad in 0..w.
        let cols_of = |kx: usize| (0..ow).filter(move |&ox| ox * s + kx >= pad && ox * s + kx - pad < w);
        let mut cols;
        let a: &[f32] = if !chw && k == 1 && s == 1 && pad == 0 {
            x // a 1×1 conv over NHWC is a GEMM on the map itself
        } else {
            cols = Buf::<f32>::zeroed(oh * ow * kk);
            for oy in 0..oh {
                for ky in (0..k).filter(|&ky| oy * s + ky >= pad && oy * s + ky - pad < h) {
                    let iy = oy * s + ky - pad;
                    for kx in 0..k {
                        for ox in cols_of(kx) {
                            let (ix, q) = (ox * s + kx - pad, (oy * ow + ox) * kk + (ky * k + kx) * c);
                            if chw {
                                (0..c).for_each(|ci| cols[q + ci] = x[(ci * h + iy) * w + ix]);
                            } else {
                                cols[q..q + c].copy_from_slice(&x[(iy * w + ix) * c..][..c]);
                            }
                        }
                    }
                }
            }
            &cols
        };
        let mut out = scratch::filled(oh * ow * self.c_out, 0.0f32);
        if let Some(b) = &self.bias {
            out.chunks_exact_mut(self.c_out).for_each(|o| o.copy_from_slice(b));
        }
        // SAFETY: `a` is (oh·ow)×kk row-major, `w` is c_out×kk row-major read transposed, `out` is (oh·ow)×c_out
        // (sizes checked at load).
        unsafe {
            matrixmultiply::sgemm(
                oh * ow,
                kk,
                self.c_out,
                1.0,
                a.as_ptr(),
                kk as isize,
                1,
                self.w.as_ptr(),
                1,
                kk as isize,
                1.0,
                out.as_mut_ptr(),
                self.c_out as isize,
                1,
            );
        }
        out
    }
}

/// A folded BN → ReLU → Q unit: thresholds, basis, and the level value of each code (for [`Op::Act`]).
#[derive(Clone, Debug)]
struct ActUnit {
    q: ChannelQuant,
    basis: Vec<f32>,
    value: Vec<f32>,
}

/// What a step computes (the validated, loaded form of an [`Op`]).
#[derive(Clone, Debug)]
enum Exec {
    Conv(FpConv),
    QConv { conv: BitConv, act: usize, bias: Option<Vec<f32>> },
    Act(usize),
    Bn { scale: Vec<f32>, shift: Vec<f32>, relu: bool },
    Relu,
    Add,
    Concat,
    MaxPool { k: usize, stride: usize, pad: usize },
    AvgPool { k: usize, stride: usize },
    PadChannels { before: usize, after: usize },
    GlobalAvgPool,
    Linear { w: Vec<f32>, b: Vec<f32> },
}

#[derive(Clone, Debug)]
struct Step {
    exec: Exec,
    srcs: Vec<usize>,
    /// For a quantized conv: the quantized conv step whose operand this conv's epilogue makes
    /// ([`BitConv::forward_tail`], where the AVX-512 kernel runs both). It reads this conv's output, which nothing
    /// else reads, or the residual sum below.
    fuse: Option<usize>,
    /// For a quantized conv whose output only the residual add at the next step reads: the add's other value, which
    /// this conv adds its output into (that add then only passes the sum on).
    add: Option<usize>,
    /// Values to drop after this step (their last use, or this step's own output when nothing reads it).
    free: Vec<usize>,
}

/// A loaded, validated network ready for inference.
#[derive(Clone, Debug)]
pub struct Model {
    /// The file's metadata (model description, input normalisation, graph).
    pub meta: Meta,
    shapes: Vec<Shape>,
    steps: Vec<Step>,
    acts: Vec<ActUnit>,
    /// Step of each value's last read (`usize::MAX` for the output).
    last_use: Vec<usize>,
    /// Whether an op other than an fp conv reads the input, which then needs an NHWC copy.
    nhwc_input: bool,
}

impl Model {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<Model> {
        let f = ModelFile::load(path)?;
        Model::from_file(&f).map_err(|why| Error::Format { path: path.display().to_string(), why })
    }

    /// Builds the network from a parsed file: shape inference over the graph, every tensor checked against it.
    pub fn from_file(f: &ModelFile) -> std::result::Result<Model, String> {
        let meta = f.meta.clone().ok_or("no metadata")?;
        let [cin, h, w] = meta.input;
        let size = elems(&meta.input);
        if cin == 0 || h == 0 || w == 0 || size.is_none() {
            return Err(format!("input shape {cin}x{h}x{w} is empty or too large"));
        }
        if meta.classes == 0 {
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
        if meta.graph.is_empty() {
            return Err("the graph has no ops".into());
        }
        let mut b = Builder { f, shapes: vec![Shape { h, w, c: cin }], acts: Vec::new(), act_ids: HashMap::new() };
        let mut used = BTreeSet::new();
        let mut steps = Vec::with_capacity(meta.graph.len());
        for (i, op) in meta.graph.iter().enumerate() {
            let (exec, out) = b.op(i, op, &mut used).map_err(|why| format!("op {i} ({}): {why}", op.label()))?;
            b.shapes.push(out);
            steps.push(Step { exec, srcs: op.inputs(), fuse: None, add: None, free: Vec::new() });
        }
        let last = *b.shapes.last().expect("input shape");
        if last != (Shape { h: 1, w: 1, c: meta.classes }) {
            return Err(format!(
                "op {} ({}): the last value is {last}, the model needs 1x1x{} (classes)",
                steps.len() - 1,
                meta.graph[steps.len() - 1].label(),
                meta.classes
            ));
        }
        // A tensor no op reads means export and engine disagree (e.g. a bias written for an op without one).
        if let Some(n) = f.tensors.keys().find(|n| !used.contains(*n)) {
            return Err(format!("tensor `{n}` is not used by any op of the graph"));
        }
        let n = b.shapes.len();
        let mut last_use: Vec<usize> = (0..n).map(|v| v.saturating_sub(1)).collect();
        for (i, s) in steps.iter().enumerate() {
            s.srcs.iter().for_each(|&v| last_use[v] = i);
        }
        last_use[n - 1] = usize::MAX;
        for v in 0..n - 1 {
            steps[last_use[v]].free.push(v);
        }
        // A conv into a residual add is planned here; whether it takes the add in is decided per forward (only on
        // the team, see `Model::run`).
        let mut readers = vec![0usize; n];
        steps.iter().flat_map(|s| &s.srcs).for_each(|&v| readers[v] += 1);
        let quantized = |e: &Exec| matches!(e, Exec::QConv { .. });
        for i in 0..steps.len() - 1 {
            if !quantized(&steps[i].exec) || readers[i + 1] != 1 {
                continue;
            }
            let (v, next) = (i + 1, &steps[i + 1]);
            if let (Exec::Add, &[a, b]) = (&next.exec, &next.srcs[..]) {
                if (a == v) != (b == v) {
                    steps[i].add = Some(if a == v { b } else { a });
                    // The first quantized conv over the sum (others, and the sum's other readers, read its f32).
                    let reads = |s: &Step| quantized(&s.exec) && s.srcs[0] == v + 1;
                    steps[i].fuse = (i + 2..steps.len()).find(|&j| reads(&steps[j]));
                    continue;
                }
            }
            let j = last_use[v];
            if j < steps.len() && quantized(&steps[j].exec) {
                steps[i].fuse = Some(j);
            }
        }
        let nhwc_input = steps.iter().any(|s| s.srcs.contains(&0) && !matches!(s.exec, Exec::Conv(_)));
        Ok(Model { meta, shapes: b.shapes, steps, acts: b.acts, last_use, nhwc_input })
    }

    /// Normalises u8 CHW pixels the way training did, into CHW f32.
    pub fn normalize(&self, pixels: &[u8]) -> Vec<f32> {
        let [c, h, w] = self.meta.input;
        let per_pixel = self.meta.mean.len() == c * h * w;
        let mean = |i: usize| if per_pixel { self.meta.mean[i] } else { self.meta.mean[i / (h * w)] };
        pixels.iter().enumerate().map(|(i, &p)| (p as f32 - mean(i)) * self.meta.scale[i / (h * w)]).collect()
    }

    /// Logits of `n` normalised CHW images, `[n][classes]`, images in parallel (each image's layers are parallel
    /// too, which is what a single image uses). Batching images into one GEMM per layer measured no faster here:
    /// the per-image working set stays in L2, a batch's does not.
    pub fn forward_batch(&self, x: &[f32], n: usize, isa: Isa) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let [c, h, w] = self.meta.input;
        if Some(x.len()) != n.checked_mul(c * h * w) {
            return Err(Error::Input(format!("{} values for {n} images, the model takes {c}x{h}x{w} each", x.len())));
        }
        // On a pool worker, so the many small parallel loops of a layer do not each wake the pool from outside.
        Ok(rayon::scope(|_| x.par_chunks(c * h * w).flat_map_iter(|img| self.forward_image(img, n, isa)).collect()))
    }

    /// Logits of one normalised CHW image.
    pub fn forward(&self, chw: &[f32], isa: Isa) -> Result<Vec<f32>> {
        self.forward_batch(chw, 1, isa)
    }

    fn forward_one(&self, chw: &[f32], isa: Isa) -> Vec<f32> {
        self.forward_timed(chw, isa, None)
    }

    /// One image of a batch of `n`: alone (batch 1), its layers' loops run on the spinning [`team`] of the pool's
    /// other threads; in a batch, images run in parallel and each on its own thread's share.
    fn forward_image(&self, chw: &[f32], n: usize, isa: Isa) -> Vec<f32> {
        let helpers = if n == 1 { team_size(isa) } else { 0 };
        team::run(helpers, || self.forward_one(chw, isa))
    }

    /// [`Model::forward_one`] calling `tick(step, seconds)` after each step (and with `usize::MAX` for the
    /// input transpose) where given; without it, no clock is read (a read per step had cost 1-3 % of a ResNet-20
    /// image).
    fn forward_timed(&self, chw: &[f32], isa: Isa, mut tick: Option<&mut dyn FnMut(usize, f64)>) -> Vec<f32> {
        let mut t = tick.as_ref().map(|_| std::time::Instant::now());
        let mut lap = |i: usize, t: &mut Option<std::time::Instant>| {
            if let (Some(tick), Some(t)) = (tick.as_mut(), t.as_mut()) {
                let now = std::time::Instant::now();
                tick(i, (now - *t).as_secs_f64());
                *t = now;
            }
        };
        let n = self.shapes.len();
        let mut p = Pass { vals: vec![None; n], operands: (0..n).map(|_| None).collect(), absorbed: false, chw, isa };
        if self.nhwc_input {
            let Shape { h, w, c } = self.shapes[0];
            p.vals[0] = Some((0..h * w * c).map(|i| chw[(i % c) * h * w + i / c]).collect());
        }
        lap(usize::MAX, &mut t);
        for (i, step) in self.steps.iter().enumerate() {
            let out = self.step(i, step, &mut p);
            p.vals[i + 1] = Some(out);
            step.free.iter().filter_map(|&v| p.vals[v].take()).for_each(scratch::recycle);
            lap(i, &mut t);
        }
        p.vals.pop().flatten().expect("the last value is computed")
    }

    /// Per-step times of `n` images run one after another (each image's layers in parallel as in
    /// [`Model::forward_batch`]), after one warm-up image; a quantized conv's time is split into its input map
    /// and its kernel. The last row, `input transpose`, is the CHW → NHWC copy of the input.
    pub fn profile(&self, x: &[f32], n: usize, isa: Isa) -> Result<Vec<StepTime>> {
        let [c, h, w] = self.meta.input;
        if n == 0 || Some(x.len()) != n.checked_mul(c * h * w) {
            return Err(Error::Input(format!("{} values for {n} images, the model takes {c}x{h}x{w} each", x.len())));
        }
        let mut rows: Vec<StepTime> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepTime {
                label: self.meta.graph[i].label(),
                kind: match s.exec {
                    Exec::QConv { .. } => "qconv",
                    Exec::Conv(_) | Exec::Linear { .. } => "fp",
                    _ => "glue",
                },
                input: 0.0,
                kernel: 0.0,
                other: 0.0,
            })
            .chain([StepTime { label: "input transpose".into(), kind: "glue", input: 0.0, kernel: 0.0, other: 0.0 }])
            .collect();
        let last = rows.len() - 1;
        let helpers = team_size(isa);
        rayon::scope(|_| {
            team::run(helpers, || self.forward_one(&x[..c * h * w], isa));
            profile::switch(true);
            for img in x.chunks_exact(c * h * w) {
                team::run(helpers, || {
                    self.forward_timed(
                        img,
                        isa,
                        Some(&mut |i, dt| {
                            let [inp, ker] = profile::switch(true);
                            let r = &mut rows[if i == usize::MAX { last } else { i }];
                            (r.input, r.kernel, r.other) = (r.input + inp, r.kernel + ker, r.other + dt - inp - ker);
                        }),
                    )
                });
            }
            profile::switch(false);
        });
        Ok(rows)
    }

    /// Value `v`, moved out when step `i` is its last reader (so element-wise ops work in place), else copied.
    fn take(&self, vals: &mut [Option<Vec<f32>>], v: usize, i: usize) -> Vec<f32> {
        match self.last_use[v] == i {
            true => vals[v].take(),
            false => vals[v].clone(),
        }
        .expect("validated: sources are computed before use")
    }

    /// [`Model::run`], its element-wise loops compiled for AVX2 where the CPU has it (the build's baseline is
    /// SSE2; the glue between layers is a tenth of a small network's time).
    fn step(&self, i: usize, step: &Step, p: &mut Pass) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::avx2::is_available() {
            /// # Safety
            /// AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run_avx2(m: &Model, i: usize, step: &Step, p: &mut Pass) -> Vec<f32> {
                m.run(i, step, p)
            }
            // SAFETY: AVX2 and FMA checked just above.
            return unsafe { run_avx2(self, i, step, p) };
        }
        self.run(i, step, p)
    }

    #[inline(always)]
    fn run(&self, i: usize, step: &Step, p: &mut Pass) -> Vec<f32> {
        let (vals, operands, chw, isa) = (&mut p.vals, &mut p.operands, p.chw, p.isa);
        let absorbed = std::mem::take(&mut p.absorbed);
        let s = &step.srcs;
        let sh = self.shapes[s[0]];
        let Shape { h, w, c } = sh;
        match &step.exec {
            Exec::Conv(conv) if s[0] == 0 => conv.forward(chw, h, w, true),
            Exec::Conv(conv) => conv.forward(val(vals, s[0]), h, w, false),
            Exec::QConv { conv, act, bias } => {
                let a = &self.acts[*act];
                // The residual add is taken in only on the team (batch 1 on several threads), where the add and the
                // next conv's input map then run in this conv's parallel region instead of two more; on one thread
                // it measured level (ResNet-20 W1A2 and W2A2, batch 1 and 64: the quantize, not the passes over
                // memory, is the cost there), so the add runs apart.
                let absorb = step.add.filter(|_| team::holds());
                p.absorbed = absorb.is_some();
                // The residual: a copy where this conv reads it too, or something after the add does.
                let add = absorb.map(|v| if v == s[0] { val(vals, v).to_vec() } else { self.take(vals, v, i + 1) });
                // The next conv, and the value whose operand it reads (after the add: only where taken in).
                let fuse = step.fuse.filter(|_| step.add.is_none() || absorb.is_some());
                let next = fuse.map(|j| &self.steps[j]).and_then(|st| match &st.exec {
                    Exec::QConv { conv: n, act: na, .. } => {
                        Some((st.srcs[0], (n, &self.acts[*na].q, &self.acts[*na].basis[..])))
                    }
                    _ => None,
                });
                let rows = operands[s[0]].take();
                let src = match &rows {
                    Some(r) => Source::Operand { r, h, w },
                    None => Source::F32 { x: val(vals, s[0]), h, w, q: &a.q, a_basis: &a.basis },
                };
                let tail = conv.forward_tail(src, bias.as_deref(), add, next.map(|n| n.1), isa);
                let tail = tail.expect("validated at load: the act unit and the conv agree with the input shape");
                if let (Some(r), Some((v, _))) = (tail.operand, next) {
                    operands[v] = Some(r);
                }
                tail.value
            }
            Exec::Act(u) => {
                let a = &self.acts[*u];
                let t = a.q.codes.len() - 1;
                let mut x = self.take(vals, s[0], i);
                for px in x.chunks_exact_mut(c) {
                    for (ch, v) in px.iter_mut().enumerate() {
                        // The same compares as the conv's quantizer: sign·x > sign·τ.
                        let sg = a.q.sign[ch];
                        let idx: usize = a.q.tau[ch * t..][..t].iter().map(|&tau| (sg * *v > sg * tau) as usize).sum();
                        *v = a.value[a.q.codes[idx] as usize];
                    }
                }
                x
            }
            Exec::Bn { scale, shift, relu } => {
                let mut x = self.take(vals, s[0], i);
                for px in x.chunks_exact_mut(c) {
                    for ((v, a), b) in px.iter_mut().zip(scale).zip(shift) {
                        *v = *v * a + b;
                        if *relu {
                            *v = v.max(0.0);
                        }
                    }
                }
                x
            }
            Exec::Relu => {
                let mut x = self.take(vals, s[0], i);
                x.iter_mut().for_each(|v| *v = v.max(0.0));
                x
            }
            Exec::Add if absorbed => vals[i].take().expect("the conv before added its output into the residual"),
            Exec::Add => {
                // In place on whichever operand dies here (a + b either way: addition commutes exactly).
                let (a, b) = if self.last_use[s[0]] != i && self.last_use[s[1]] == i && s[0] != s[1] {
                    (s[1], s[0])
                } else {
                    (s[0], s[1])
                };
                let mut x = if s[0] == s[1] { val(vals, a).to_vec() } else { self.take(vals, a, i) };
                let m = team::piece_rows(h, h) * w * c;
                let mut pieces: Vec<_> = x.chunks_mut(m).zip(val(vals, b).chunks(m)).collect();
                team::for_each_mut(&mut pieces, |_, (x, y)| x.iter_mut().zip(y.iter()).for_each(|(x, y)| *x += y));
                x
            }
            Exec::Concat => {
                let ins: Vec<(&[f32], usize)> = s.iter().map(|&v| (val(vals, v), self.shapes[v].c)).collect();
                let total: usize = ins.iter().map(|(_, c)| c).sum();
                let mut out = Vec::with_capacity(h * w * total);
                for p in 0..h * w {
                    ins.iter().for_each(|(x, c)| out.extend_from_slice(&x[p * c..][..*c]));
                }
                out
            }
            Exec::MaxPool { k, stride, pad } => {
                pool(val(vals, s[0]), sh, *k, *stride, *pad, f32::NEG_INFINITY, f32::max, |m| m)
            }
            Exec::AvgPool { k, stride } => {
                let n = (k * k) as f32;
                pool(val(vals, s[0]), sh, *k, *stride, 0, 0.0, |a, b| a + b, |t| t / n)
            }
            Exec::PadChannels { before, after } => {
                let x = val(vals, s[0]);
                let co = before + c + after;
                // Every value is written below: the zeros per pixel, not a zero-filled map first.
                let mut out = scratch::reused(h * w * co);
                let m = team::piece_rows(h, h) * w;
                let mut pieces: Vec<_> = out.chunks_mut(m * co).zip(x.chunks(m * c)).collect();
                team::for_each_mut(&mut pieces, |_, (out, x)| {
                    for (o, px) in out.chunks_exact_mut(co).zip(x.chunks_exact(c)) {
                        let (head, o) = o.split_at_mut(*before);
                        let (mid, tail) = o.split_at_mut(c);
                        head.fill(0.0);
                        mid.copy_from_slice(px);
                        tail.fill(0.0);
                    }
                });
                out
            }
            Exec::GlobalAvgPool => {
                let mut out = vec![0.0f32; c];
                for px in val(vals, s[0]).chunks_exact(c) {
                    out.iter_mut().zip(px).for_each(|(o, v)| *o += v);
                }
                out.iter_mut().for_each(|v| *v /= (h * w) as f32);
                out
            }
            Exec::Linear { w: wt, b } => {
                let x = val(vals, s[0]);
                let hw = h * w;
                // PyTorch flattens NCHW: feature ch·h·w + pixel.
                let feats: Vec<f32> =
                    if hw == 1 { x.to_vec() } else { (0..c * hw).map(|j| x[(j % hw) * c + j / hw]).collect() };
                b.iter()
                    .zip(wt.chunks_exact(feats.len()))
                    .map(|(b, row)| b + row.iter().zip(&feats).map(|(a, x)| a * x).sum::<f32>())
                    .collect()
            }
        }
    }
}

/// Helpers for a batch-1 forward on `isa`: the pool's other threads where the AVX-512 kernels run (their loops are
/// the team's), none elsewhere (the other kernels' loops stay on rayon, and spinning helpers would only take their
/// cores).
fn team_size(isa: Isa) -> usize {
    if isa == Isa::Avx512 && isa.is_available() {
        rayon::current_num_threads() - 1
    } else {
        0
    }
}

/// The state of one forward: the values computed so far, and the operands fused convs made for their readers (a
/// fused conv's own value is then left empty).
struct Pass<'a> {
    vals: Vec<Option<Vec<f32>>>,
    operands: Vec<Option<avx512::Rows>>,
    /// Whether the last step, a quantized conv, added its output into the residual (the add then passes it on).
    absorbed: bool,
    /// The normalised CHW image.
    chw: &'a [f32],
    isa: Isa,
}

/// A computed value (validation made every source earlier than its reader).
fn val(vals: &[Option<Vec<f32>>], v: usize) -> &[f32] {
    vals[v].as_deref().expect("validated: sources are computed before use")
}

/// Window pooling over NHWC `x`: `fold` over the window's positions inside the map (padding never takes part),
/// then `fin`.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // into `Model::run`, so its loops compile for AVX2 there
fn pool(
    x: &[f32],
    s: Shape,
    k: usize,
    stride: usize,
    pad: usize,
    init: f32,
    fold: impl Fn(f32, f32) -> f32 + Sync,
    fin: impl Fn(f32) -> f32 + Sync,
) -> Vec<f32> {
    let (oh, ow) = (out_size(s.h, k, stride, pad), out_size(s.w, k, stride, pad));
    let inside = |o: usize, n: usize| (o * stride).saturating_sub(pad)..(o * stride + k - pad).min(n);
    // Output pixels from `p0` into `out`. A macro, not a closure: expanded in place here, the loop is compiled into
    // the caller's AVX2 code (a closure called from two places stayed out of line, for the baseline ISA).
    // Channels in blocks of 8 kept in registers over the window, the rest one by one: the same folds in the same
    // order either way (a whole-pixel loop per tap had cost ~1 ns per output value, 3 % of a ResNet-20 at batch 64).
    macro_rules! rows {
        ($p0:expr, $out:expr) => {
            for (p, o) in ($p0..).zip($out.chunks_exact_mut(s.c)) {
                let (ys, xs) = (inside(p / ow, s.h), inside(p % ow, s.w));
                let (blocks, rest) = o.split_at_mut(s.c - s.c % 8);
                for (cb, ob) in (0..).step_by(8).zip(blocks.chunks_exact_mut(8)) {
                    let mut acc = [init; 8];
                    for iy in ys.clone() {
                        for ix in xs.clone() {
                            let px = &x[(iy * s.w + ix) * s.c + cb..][..8];
                            acc.iter_mut().zip(px).for_each(|(a, v)| *a = fold(*a, *v));
                        }
                    }
                    ob.iter_mut().zip(acc).for_each(|(o, a)| *o = fin(a));
                }
                for (ch, o) in (s.c - rest.len()..).zip(rest) {
                    let mut a = init;
                    for iy in ys.clone() {
                        for ix in xs.clone() {
                            a = fold(a, x[(iy * s.w + ix) * s.c + ch]);
                        }
                    }
                    *o = fin(a);
                }
            }
        };
    }
    // Every value is written below.
    let mut out = scratch::reused(oh * ow * s.c);
    if team::holds() {
        let m = team::piece_rows(oh, oh) * ow;
        let mut pieces: Vec<&mut [f32]> = out.chunks_mut(m * s.c).collect();
        team::for_each_mut(&mut pieces, |t, out| rows!(t * m, out));
    } else {
        rows!(0usize, out);
    }
    out
}

/// Shape inference and loading, op by op.
struct Builder<'a> {
    f: &'a ModelFile,
    shapes: Vec<Shape>,
    acts: Vec<ActUnit>,
    act_ids: HashMap<String, usize>,
}

impl Builder<'_> {
    /// The validated step of op `i` and the shape of its value; `used` collects the tensors it reads.
    fn op(&mut self, i: usize, op: &Op, used: &mut BTreeSet<String>) -> std::result::Result<(Exec, Shape), String> {
        let ins = op.inputs();
        if let Some(&v) = ins.iter().find(|&&v| v > i) {
            return Err(format!("reads value {v}, which is not computed before it (values 0..={i} are)"));
        }
        if ins.is_empty() {
            return Err("reads no value".into());
        }
        let s = self.shapes[ins[0]];
        let mut need = |n: String| used.insert(n);
        let (exec, out) = match op {
            Op::Conv { name, c_out, k, stride, pad, weights, bias, .. } => {
                let out = conv_shape(s, *c_out, *k, *stride, *pad)?;
                let (co, ci, k) = (*c_out, s.c, *k);
                let w = match weights {
                    Weights::Fp => {
                        need(format!("{name}.w"));
                        let oihw = self.f.f32(&format!("{name}.w"), &[co, ci, k, k])?;
                        // To [c_out][ky][kx][c_in], the patch order of the im2col.
                        let mut w = vec![0.0f32; oihw.len()];
                        for (j, &v) in oihw.iter().enumerate() {
                            let (o, ci_, ky, kx) = (j / (ci * k * k), j / (k * k) % ci, j / k % k, j % k);
                            w[((o * k + ky) * k + kx) * ci + ci_] = v;
                        }
                        w
                    }
                    Weights::Packed => {
                        need(format!("{name}.bits"));
                        need(format!("{name}.basis"));
                        expand(&self.f.conv(name, co, ci, k, *stride, *pad)?)
                    }
                };
                let bias = self.bias(name, co, *bias, &mut need)?;
                (Exec::Conv(FpConv::new(w, bias, co, ci, (k, *stride, *pad))), out)
            }
            Op::QConv { name, act, c_out, k, stride, pad, bias, .. } => {
                let out = conv_shape(s, *c_out, *k, *stride, *pad)?;
                let act = self.act(act, s.c, &mut need)?;
                need(format!("{name}.bits"));
                need(format!("{name}.basis"));
                let conv = self.f.conv(name, *c_out, s.c, *k, *stride, *pad)?;
                let bias = self.bias(name, *c_out, *bias, &mut need)?;
                (Exec::QConv { conv, act, bias }, out)
            }
            Op::Act { name, .. } => (Exec::Act(self.act(name, s.c, &mut need)?), s),
            Op::Bn { name, relu, .. } => {
                need(format!("{name}.scale"));
                need(format!("{name}.shift"));
                let (scale, shift) = self.f.bn(name, s.c)?;
                (Exec::Bn { scale, shift, relu: *relu }, s)
            }
            Op::Relu { .. } => (Exec::Relu, s),
            Op::Add { b, .. } => {
                let t = self.shapes[*b];
                if s != t {
                    return Err(format!("adds values of different shapes, {s} and {t}"));
                }
                (Exec::Add, s)
            }
            Op::Concat { srcs } => {
                let mut c = 0usize;
                for &v in srcs {
                    let t = self.shapes[v];
                    if (t.h, t.w) != (s.h, s.w) {
                        return Err(format!("concatenates maps of different sizes, {s} and {t}"));
                    }
                    c = c.checked_add(t.c).ok_or("too many channels")?;
                }
                (Exec::Concat, Shape { c, ..s })
            }
            Op::MaxPool { k, stride, pad, .. } => {
                let out = pool_shape(s, *k, *stride, *pad)?;
                (Exec::MaxPool { k: *k, stride: *stride, pad: *pad }, out)
            }
            Op::AvgPool { k, stride, .. } => (Exec::AvgPool { k: *k, stride: *stride }, pool_shape(s, *k, *stride, 0)?),
            Op::PadChannels { before, after, .. } => {
                let c = before.checked_add(*after).and_then(|n| n.checked_add(s.c));
                (Exec::PadChannels { before: *before, after: *after }, Shape { c: c.ok_or("too many channels")?, ..s })
            }
            Op::GlobalAvgPool { .. } => (Exec::GlobalAvgPool, Shape { h: 1, w: 1, c: s.c }),
            Op::Linear { name, c_out, .. } => {
                need(format!("{name}.weight"));
                need(format!("{name}.bias"));
                let w = self.f.f32(&format!("{name}.weight"), &[*c_out, s.len()])?;
                (
                    Exec::Linear { w, b: self.f.f32(&format!("{name}.bias"), &[*c_out])? },
                    Shape { h: 1, w: 1, c: *c_out },
                )
            }
        };
        if out.c == 0 || elems(&[out.h, out.w, out.c]).is_none() {
            return Err(format!("output {out} is empty or too large"));
        }
        Ok((exec, out))
    }

    /// The bias `{name}.b` when the op has one.
    fn bias(
        &self,
        name: &str,
        c: usize,
        has: bool,
        need: &mut impl FnMut(String) -> bool,
    ) -> std::result::Result<Option<Vec<f32>>, String> {
        if !has {
            return Ok(None);
        }
        need(format!("{name}.b"));
        self.f.f32(&format!("{name}.b"), &[c]).map(Some)
    }

    /// The index of act unit `name` over `c` channels, loaded on first use.
    fn act(
        &mut self,
        name: &str,
        c: usize,
        need: &mut impl FnMut(String) -> bool,
    ) -> std::result::Result<usize, String> {
        if let Some(&u) = self.act_ids.get(name) {
            let have = self.acts[u].q.sign.len();
            if have != c {
                return Err(format!("act unit `{name}` quantizes {have} channels, its input here has {c}"));
            }
            return Ok(u);
        }
        ["tau", "sign", "codes", "basis"].into_iter().for_each(|t| _ = need(format!("{name}.{t}")));
        let (q, basis) = self.f.act(name, c)?;
        let value = (0..q.codes.len())
            .map(|code| basis.iter().enumerate().filter(|(j, _)| (code >> j) & 1 == 1).map(|(_, v)| v).sum())
            .collect();
        self.acts.push(ActUnit { q, basis, value });
        self.act_ids.insert(name.to_string(), self.acts.len() - 1);
        Ok(self.acts.len() - 1)
    }
}

/// Output shape of a `k×k` conv with `stride` and `pad` over `s`; the patch matrix and the padded map must fit.
fn conv_shape(s: Shape, c_out: usize, k: usize, stride: usize, pad: usize) -> std::result::Result<Shape, String> {
    let out = pool_shape(s, k, stride, pad)?;
    if c_out == 0 {
        return Err("0 output channels".into());
    }
    let padded = elems(&[s.h + 2 * pad, s.w + 2 * pad, s.c]);
    if elems(&[out.h, out.w, k, k, s.c]).is_none() || padded.is_none() || elems(&[c_out, k, k, s.c]).is_none() {
        return Err(format!("a {k}x{k} conv over {s} with padding {pad} is too large"));
    }
    Ok(Shape { c: c_out, ..out })
}

/// Output shape of a `k×k` window with `stride` and `pad` over `s`: positive, padding smaller than the window.
fn pool_shape(s: Shape, k: usize, stride: usize, pad: usize) -> std::result::Result<Shape, String> {
    if k == 0 || stride == 0 {
        return Err(format!("kernel {k} and stride {stride} must be positive"));
    }
    if pad >= k {
        return Err(format!("padding {pad} is not smaller than the kernel {k}"));
    }
    let padded = |n: usize| pad.checked_mul(2).and_then(|p| p.checked_add(n)).ok_or("padding too large");
    let (hp, wp) = (padded(s.h)?, padded(s.w)?);
    if hp < k || wp < k {
        return Err(format!("kernel {k} is bigger than the {s} map padded by {pad}"));
    }
    Ok(Shape { h: out_size(s.h, k, stride, pad), w: out_size(s.w, k, stride, pad), c: s.c })
}

/// A packed conv's weights as level values, `[c_out][ky][kx][c_in]` (the fp conv's layout).
fn expand(conv: &BitConv) -> Vec<f32> {
    let (c_in, kw) = (conv.c_in(), conv.kw());
    let (taps, words) = (conv.k() * conv.k(), patch_words(c_in, conv.k()));
    let mut w = vec![0.0f32; conv.c_out() * taps * c_in];
    for (o, wo) in w.chunks_exact_mut(taps * c_in).enumerate() {
        for (d, v) in wo.iter_mut().enumerate() {
            let (wd, b) = patch_bit(c_in, d / c_in, d % c_in);
            *v = (0..kw)
                .map(|i| {
                    let bit = (conv.bits()[(o * kw + i) * words + wd] >> b) & 1;
                    conv.basis()[o * kw + i] * if bit == 1 { 1.0 } else { -1.0 }
                })
                .sum();
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_nets as common;

    /// The runtime fuses exactly the quantized conv → quantized conv edges whose value nothing else reads (ResNet's
    /// `conv1 → conv2`, not the block input that `conv1` and the projection both read; VGG-Small's unpooled pairs)
    /// and the quantized convs whose output only the next step's residual add reads into the first quantized conv
    /// of the sum (ResNet's `conv2 → ` next block's `conv1` where the shortcut is computed before `conv2`). On the
    /// AVX-512 kernel the fused network's logits equal the unfused one's bit for bit, on the team (which also takes
    /// the adds in) and off it.
    #[test]
    fn fused_steps_give_the_unfused_logits() {
        // A value two quantized convs read (not fused), a conv with bias into another, and a chain of three (the
        // middle one runs from its operand and so gives f32 to the third, its `fuse` unused).
        let mut n = common::Net::new([3, 8, 8], 2, 2, 5);
        let x = n.conv("conv0", 0, 16, 3, 1, 1, Weights::Fp, false);
        let a = n.qconv("a", x, "pa", 16, 3, 1, 1, false);
        let b = n.qconv("b", a, "pb", 16, 3, 1, 1, false);
        let c = n.qconv("c", a, "pc", 16, 3, 2, 1, true);
        let d = n.qconv("d", c, "pd", 16, 3, 1, 1, false);
        let e = n.qconv("e", d, "pe", 16, 1, 1, 0, false);
        let b = n.avg_pool(b, 2, 2);
        let y = n.add(b, e);
        let y = n.bn("head", y, true);
        let y = n.global_avg_pool(y);
        n.linear("fc", y, 10);
        let nets = [
            (common::resnet_cifar(20, 'B', 2, 2, 16, 3), 15),
            (common::vgg_small([16, 16, 32, 32, 64, 64], 1, 2, 4), 2),
            (n.finish(), 2),
        ];
        for (f, pairs) in nets {
            let m = Model::from_file(&f).unwrap();
            let label = |i: usize| m.meta.graph[i].label();
            let fused: Vec<(String, String, bool)> = m
                .steps
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.fuse.map(|j| (label(i), label(j), s.add.is_some())))
                .collect();
            assert_eq!(fused.len(), pairs, "{fused:?}");
            for (a, b, add) in &fused {
                let block = |l: &str| l[..l.len() - 7].to_string();
                let resnet = a.contains("conv1`") && b.contains("conv2`") && block(a) == block(b) && !add;
                let residual = a.contains("conv2`") && b.contains("conv1`") && block(a) != block(b) && *add;
                let pairs = [("conv2", "conv3"), ("conv4", "conv5"), ("c", "d"), ("d", "e")];
                let other = pairs.iter().any(|(p, q)| *a == format!("qconv `{p}`") && *b == format!("qconv `{q}`"));
                assert!(resnet || residual || (other && !add), "{a} -> {b}");
            }
            if !avx512::is_available() {
                eprintln!("SKIP the logits: no AVX-512 here, nothing fuses");
                continue;
            }
            let mut plain = m.clone();
            plain.steps.iter_mut().for_each(|s| (s.fuse, s.add) = (None, None));
            // At least one helper, so the team runs here whatever the CPU count (the sizes the forwards of other
            // tests ask for agree: the pool's threads less one).
            let helpers = rayon::current_num_threads().max(2) - 1;
            for seed in [1, 2] {
                let x = common::image(&f, seed);
                // On a pool worker, as `forward` runs it: there the convs' loops run inline, on the team (from the test
                // thread they would move to a worker that does not hold it).
                let teamed = rayon::scope(|_| {
                    team::run_waiting(helpers, || {
                        assert!(team::holds() && rayon::current_thread_index().is_some(), "the team is not held");
                        m.forward_one(&x, Isa::Avx512)
                    })
                });
                let (alone, plain) = (m.forward_one(&x, Isa::Avx512), plain.forward_one(&x, Isa::Avx512));
                let same =
                    |a: &[f32]| a.len() == plain.len() && a.iter().zip(&plain).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same(&teamed) && same(&alone), "{teamed:?} / {alone:?} vs {plain:?}");
            }
        }
    }

    /// The direct conv of a CHW image (where this CPU runs it) equals im2col + GEMM: 16, 32, 64 and 128 channels,
    /// with and without bias, strides 1 and 2, kernels 1, 3, 5 and 7, rows that are not whole pixel groups, maps
    /// narrower than one group.
    #[test]
    fn direct_image_conv_equals_gemm() {
        if !avx512::is_available() {
            eprintln!("SKIP: no AVX-512 here, the direct conv does not run");
            return;
        }
        let cases = [
            (3, 1, 1, 16, 9, 11),
            (3, 2, 1, 32, 9, 7),
            (5, 2, 2, 64, 8, 13),
            (1, 1, 0, 16, 3, 3),
            (7, 2, 3, 64, 12, 12),
            (3, 1, 1, 32, 2, 3),
            (3, 1, 1, 128, 5, 9),
            (5, 2, 2, 128, 7, 10),
            (3, 1, 1, 16, 4, 21),
        ];
        for (i, &(k, stride, pad, co, h, w)) in cases.iter().enumerate() {
            let c = 3;
            let kk = k * k * c;
            let wv: Vec<f32> = (0..co * kk).map(|i| ((i * 7919 % 613) as f32 / 300.0) - 1.0).collect();
            let x: Vec<f32> = (0..c * h * w).map(|i| ((i * 104729 % 409) as f32 / 200.0) - 1.0).collect();
            let bias = (i % 2 == 1).then(|| (0..co).map(|o| o as f32 * 0.1 - 1.0).collect::<Vec<f32>>());
            let direct = FpConv::new(wv, bias, co, c, (k, stride, pad));
            assert!(direct.wt.is_some());
            let gemm = FpConv { wt: None, ..direct.clone() };
            let (a, b) = (gemm.forward(&x, h, w, true), direct.forward(&x, h, w, true));
            assert_eq!(a.len(), b.len());
            let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "case {i}: {worst}");
        }
    }
}
