//! A network as a list of layer nodes: the one description of an architecture. Training runs it
//! ([`Graph::forward`]), export walks it into the engine's op list ([`crate::export`]), `lqnets summary` prints it.
//! Networks ([`crate::models`]) are functions that add nodes through a [`Builder`]; a node's name is the
//! `nn::Path` its variables live under, so checkpoint names, model-file names and summaries agree by construction.
//!
//! Values are numbered like the engine's: value 0 is the input, node `i` produces value `i + 1`; every value has a
//! known `[c, h, w]` shape, checked when the node is added.
use crate::error::{Error, Result};
use crate::layers::{batch_norm, BnReluQuant, QConv2d, QuantSpec};
use crate::quant::Quantizer;
use tch::nn::init::FanInOut;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// What a node computes.
#[derive(Debug)]
pub enum Layer {
    /// Convolution, weights quantized unless full precision.
    Conv(QConv2d),
    /// BN → ReLU → Q (each part optional, see [`BnReluQuant`]).
    Act(BnReluQuant),
    /// BatchNorm, then ReLU when `relu`.
    Bn {
        /// The BatchNorm.
        bn: nn::BatchNorm,
        /// Apply ReLU after.
        relu: bool,
    },
    /// max(x, 0).
    Relu,
    /// Sum of two values.
    Add,
    /// Channel concatenation of the inputs in order.
    Concat,
    /// Max pooling (padding never wins).
    MaxPool {
        /// Window.
        k: i64,
        /// Stride.
        stride: i64,
        /// Padding on each side.
        pad: i64,
    },
    /// Average pooling, no padding.
    AvgPool {
        /// Window.
        k: i64,
        /// Stride.
        stride: i64,
    },
    /// Zero channels before and after (ResNet shortcut option A).
    PadChannels {
        /// Channels before.
        before: i64,
        /// Channels after.
        after: i64,
    },
    /// Mean over height and width.
    GlobalAvgPool,
    /// Fully connected layer on the flattened (C, H, W) input; full precision.
    Linear(nn::Linear),
}

/// One node: a layer, its inputs and its output shape.
#[derive(Debug)]
pub struct Node {
    /// Name (the variables' path, dotted); empty for parameter-free nodes.
    pub name: String,
    /// The layer.
    pub layer: Layer,
    /// Input values.
    pub inputs: Vec<usize>,
    /// Output shape `[c, h, w]`.
    pub shape: [i64; 3],
}

/// A network: its input shape and nodes; the last node's value is the output.
#[derive(Debug)]
pub struct Graph {
    /// Input `[c, h, w]`.
    pub input: [i64; 3],
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
    last_use: Vec<usize>,
}

impl Graph {
    /// Shape of value `v`.
    pub fn shape(&self, v: usize) -> [i64; 3] {
        if v == 0 {
            self.input
        } else {
            self.nodes[v - 1].shape
        }
    }

    /// Logits for a batch; `train` selects BN batch statistics and QEM updates. Values are dropped after their
    /// last use (autograd keeps what backward needs).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, None)
    }

    /// Evaluation forward that shows `probe` each activation quantizer with its input (`relu(bn(x))`), for the
    /// statistics of `lqnets stats`.
    pub fn forward_probed(&mut self, x: &Tensor, probe: Probe) -> Result<Tensor> {
        self.run(x, false, Some(probe))
    }

    fn run(&mut self, x: &Tensor, train: bool, mut probe: Option<Probe>) -> Result<Tensor> {
        let mut vals: Vec<Option<Tensor>> = vec![Some(x.shallow_clone())];
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let ins: Vec<&Tensor> = n.inputs.iter().map(|&v| vals[v].as_ref().expect("value alive")).collect();
            let y = match &mut n.layer {
                Layer::Conv(c) => c.forward(ins[0], train)?,
                Layer::Act(a) => match (probe.as_mut(), a.quant.as_ref()) {
                    (Some(p), Some(q)) => {
                        let h = a.pre(ins[0], train)?;
                        p(q, &h);
                        a.quantize(&h, train)?
                    }
                    _ => a.forward(ins[0], train)?,
                },
                Layer::Bn { bn, relu } => {
                    let y = crate::dist::batch_norm(ins[0], bn, train)?;
                    if *relu {
                        y.relu()
                    } else {
                        y
                    }
                }
                Layer::Relu => ins[0].relu(),
                Layer::Add => ins[0] + ins[1],
                Layer::Concat => Tensor::cat(&ins, 1),
                Layer::MaxPool { k, stride, pad } => {
                    ins[0].max_pool2d([*k, *k], [*stride, *stride], [*pad, *pad], [1, 1], false)
                }
                Layer::AvgPool { k, stride } => {
                    ins[0].avg_pool2d([*k, *k], [*stride, *stride], [0, 0], false, true, None::<i64>)
                }
                Layer::PadChannels { before, after } => ins[0].constant_pad_nd([0, 0, 0, 0, *before, *after]),
                Layer::GlobalAvgPool => ins[0].mean_dim([2i64, 3].as_slice(), true, Kind::Float),
                Layer::Linear(l) => l.forward(&ins[0].flatten(1, -1)),
            };
            for &v in &n.inputs {
                if self.last_use[v] == i {
                    vals[v] = None;
                }
            }
            vals.push(Some(y));
        }
        Ok(vals.pop().flatten().expect("graph output").flatten(1, -1))
    }

    /// Every quantizer, in node order.
    pub fn quantizers(&self) -> Vec<&Quantizer> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.layer {
                Layer::Conv(c) => c.quant.as_ref(),
                Layer::Act(a) => a.quant.as_ref(),
                _ => None,
            })
            .collect()
    }

    /// Data-parallel half of the QEM phase (after [`Graph::gather`]), in **one** f64 all-reduce together with the
    /// caller's `extra` words (the step's loss and accuracy counts): the activation quantizers' moments (each rank
    /// saw its own images) are summed over the ranks; the weight quantizers' moments (every rank holds the same
    /// weights) are rank 0's, the others adding zeros, so that even a device whose sums are not bit-reproducible
    /// gives every rank the same bases. A quantizer that recorded nothing on this rank (an empty shard) takes part
    /// with zeros, so the buffer has the same layout on every rank.
    pub fn reduce_moments(&mut self, extra: &mut [f64], g: &crate::dist::Group) -> Result<()> {
        let mut qs = self.quantizers_mut();
        let mut buf: Vec<f64> = extra.to_vec();
        for q in qs.iter_mut() {
            let own = q.state.code_set == lq_quant::CodeSet::Binary || g.rank == 0;
            for m in q.pending_moments_or_zero()? {
                let k = if own { 1.0 } else { 0.0 };
                buf.extend(m.count.iter().map(|&c| k * c as f64));
                buf.extend(m.sum.iter().map(|&s| k * s));
                buf.push(k * m.sum_sq);
            }
        }
        g.sum_f64(&mut buf)?;
        extra.copy_from_slice(&buf[..extra.len()]);
        let mut it = buf[extra.len()..].iter().copied();
        for q in qs.iter_mut() {
            for m in q.pending_moments_or_zero()? {
                // Counts are sums of whole numbers below 2^53: exact in f64.
                m.count.iter_mut().zip(&mut it).for_each(|(c, v)| *c = v as u64);
                m.sum.iter_mut().zip(&mut it).for_each(|(s, v)| *s = v);
                m.sum_sq = it.next().unwrap_or(0.0);
            }
        }
        Ok(())
    }

    /// The QEM phase of a training step, after backward: every quantizer updates its basis from the moments of
    /// the last training forward ([`Quantizer::fit`]).
    pub fn fit_quantizers(&mut self) -> Result<()> {
        self.quantizers_mut().into_iter().try_for_each(|q| q.fit())
    }

    /// Copies the step's `stats` (a device tensor) and every quantizer's device-side moments to the host in one
    /// transfer ([`crate::quant::gather_moments`]); returns the stats. A no-op copy on the CPU.
    pub fn gather(&mut self, stats: &Tensor) -> Result<Vec<f64>> {
        crate::quant::gather_moments(&mut self.quantizers_mut(), stats)
    }

    /// Every quantizer, mutable (checkpoint restore).
    pub fn quantizers_mut(&mut self) -> Vec<&mut Quantizer> {
        self.nodes
            .iter_mut()
            .filter_map(|n| match &mut n.layer {
                Layer::Conv(c) => c.quant.as_mut(),
                Layer::Act(a) => a.quant.as_mut(),
                _ => None,
            })
            .collect()
    }
}

/// Sees each activation quantizer with its input during [`Graph::forward_probed`].
pub type Probe<'p> = &'p mut dyn FnMut(&Quantizer, &Tensor);

/// Conv options beyond the geometry.
#[derive(Clone, Copy, Debug)]
pub struct ConvOpts {
    /// Quantize the weights (with the network's `w_bits`); false for the first conv.
    pub quantize: bool,
    /// Learn a bias.
    pub bias: bool,
    /// He-init fan mode of the official model file.
    pub fan: FanInOut,
}

/// Adds nodes under one `nn::Path`, checking shapes as it goes. Every method returns the new value's number.
pub struct Builder<'a> {
    root: nn::Path<'a>,
    spec: QuantSpec,
    g: Graph,
}

impl<'a> Builder<'a> {
    /// An empty network on `input = [c, h, w]` with the quantization `spec`.
    pub fn new(root: nn::Path<'a>, input: [i64; 3], spec: QuantSpec) -> Self {
        Builder { root, spec, g: Graph { input, nodes: Vec::new(), last_use: Vec::new() } }
    }

    /// The input value.
    pub fn input(&self) -> usize {
        0
    }

    /// Shape `[c, h, w]` of value `v`.
    pub fn shape(&self, v: usize) -> [i64; 3] {
        self.g.shape(v)
    }

    /// The quantization of the network.
    pub fn spec(&self) -> QuantSpec {
        self.spec
    }

    fn path(&self, name: &str) -> nn::Path<'a> {
        name.split('.').fold(self.root.clone(), |p, c| p / c)
    }

    fn push(&mut self, name: &str, layer: Layer, inputs: Vec<usize>, shape: [i64; 3]) -> Result<usize> {
        if shape.iter().any(|&d| d <= 0) {
            return Err(Error::Config(format!(
                "layer {name}: output shape {shape:?} from input {:?}: the input size (data.size = {}) is too small \
                 for this network",
                inputs.iter().map(|&v| self.shape(v)).collect::<Vec<_>>(),
                self.g.input[1]
            )));
        }
        self.g.nodes.push(Node { name: name.into(), layer, inputs, shape });
        Ok(self.g.nodes.len())
    }

    /// Conv `name` on `x`: `c_out` outputs, `k×k` kernel, `stride`, zero padding `pad`. (The geometry as plain
    /// arguments keeps network definitions reading like the official layer calls.)
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: usize,
        c_out: i64,
        k: i64,
        stride: i64,
        pad: i64,
        o: ConvOpts,
    ) -> Result<usize> {
        let [c, h, w] = self.shape(x);
        let spec = if o.quantize { self.spec } else { QuantSpec { w_bits: 32, ..self.spec } };
        let conv = QConv2d::new(&self.path(name), c, c_out, k, stride, pad, o.bias, spec, o.fan)?;
        let out = |d: i64| if d + 2 * pad < k { 0 } else { (d + 2 * pad - k) / stride + 1 };
        self.push(name, Layer::Conv(conv), vec![x], [c_out, out(h), out(w)])
    }

    /// BN → ReLU → Q unit `name` on `x` (quantized unless `quantize` is false or `a_bits` is 32).
    pub fn bn_relu_q(&mut self, name: &str, x: usize, quantize: bool) -> Result<usize> {
        self.act(name, x, true, true, quantize)
    }

    /// BN (without γ/β) → ReLU → Q: the official FC-side unit.
    pub fn fc_bn_relu_q(&mut self, name: &str, x: usize, quantize: bool) -> Result<usize> {
        self.act(name, x, true, false, quantize)
    }

    /// ReLU → Q without a BN (the input is already non-negative).
    pub fn quant(&mut self, name: &str, x: usize) -> Result<usize> {
        self.act(name, x, false, false, true)
    }

    fn act(&mut self, name: &str, x: usize, bn: bool, affine: bool, quantize: bool) -> Result<usize> {
        let s = self.shape(x);
        let a = BnReluQuant::new(&self.path(name), s[0], self.spec, bn, affine, quantize)?;
        self.push(name, Layer::Act(a), vec![x], s)
    }

    /// BatchNorm `name` (affine; γ starting at 0 when `zero_gamma`), then ReLU when `relu`.
    pub fn bn(&mut self, name: &str, x: usize, relu: bool, zero_gamma: bool) -> Result<usize> {
        let s = self.shape(x);
        let bn = batch_norm(&self.path(name), s[0], true, zero_gamma);
        self.push(name, Layer::Bn { bn, relu }, vec![x], s)
    }

    /// max(x, 0).
    pub fn relu(&mut self, x: usize) -> Result<usize> {
        let s = self.shape(x);
        self.push("", Layer::Relu, vec![x], s)
    }

    /// a + b (same shapes).
    pub fn add(&mut self, a: usize, b: usize) -> Result<usize> {
        let (sa, sb) = (self.shape(a), self.shape(b));
        if sa != sb {
            return Err(Error::Config(format!("add: shapes {sa:?} and {sb:?} differ")));
        }
        self.push("", Layer::Add, vec![a, b], sa)
    }

    /// Channel concatenation.
    pub fn concat(&mut self, xs: &[usize]) -> Result<usize> {
        let s0 = self.shape(xs[0]);
        if xs.iter().any(|&x| self.shape(x)[1..] != s0[1..]) {
            let shapes: Vec<_> = xs.iter().map(|&x| self.shape(x)).collect();
            return Err(Error::Config(format!("concat: spatial sizes differ: {shapes:?}")));
        }
        let c = xs.iter().map(|&x| self.shape(x)[0]).sum();
        self.push("", Layer::Concat, xs.to_vec(), [c, s0[1], s0[2]])
    }

    /// Max pooling `k`/`stride` with `pad`.
    pub fn max_pool(&mut self, x: usize, k: i64, stride: i64, pad: i64) -> Result<usize> {
        let [c, h, w] = self.shape(x);
        let out = |d: i64| if d + 2 * pad < k { 0 } else { (d + 2 * pad - k) / stride + 1 };
        self.push("", Layer::MaxPool { k, stride, pad }, vec![x], [c, out(h), out(w)])
    }

    /// Average pooling `k`/`stride`, no padding.
    pub fn avg_pool(&mut self, x: usize, k: i64, stride: i64) -> Result<usize> {
        let [c, h, w] = self.shape(x);
        let out = |d: i64| if d < k { 0 } else { (d - k) / stride + 1 };
        self.push("", Layer::AvgPool { k, stride }, vec![x], [c, out(h), out(w)])
    }

    /// Zero channels before and after.
    pub fn pad_channels(&mut self, x: usize, before: i64, after: i64) -> Result<usize> {
        let [c, h, w] = self.shape(x);
        self.push("", Layer::PadChannels { before, after }, vec![x], [c + before + after, h, w])
    }

    /// Global average pool to `[c, 1, 1]`.
    pub fn gap(&mut self, x: usize) -> Result<usize> {
        let c = self.shape(x)[0];
        self.push("", Layer::GlobalAvgPool, vec![x], [c, 1, 1])
    }

    /// The full-precision classifier `name` on the flattened input.
    pub fn linear(&mut self, name: &str, x: usize, c_out: i64) -> Result<usize> {
        let [c, h, w] = self.shape(x);
        let l = nn::linear(self.path(name), c * h * w, c_out, Default::default());
        self.push(name, Layer::Linear(l), vec![x], [c_out, 1, 1])
    }

    /// The finished network.
    pub fn finish(mut self) -> Graph {
        let n = self.g.nodes.len();
        let mut last = vec![usize::MAX; n + 1];
        for (i, node) in self.g.nodes.iter().enumerate() {
            node.inputs.iter().for_each(|&v| last[v] = i);
        }
        last[n] = usize::MAX; // the output stays
        self.g.last_use = last;
        self.g
    }
}

/// One line of `lqnets summary`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// Node name (empty for parameter-free nodes).
    pub name: String,
    /// What it computes.
    pub op: &'static str,
    /// Output `[c, h, w]`.
    pub shape: [i64; 3],
    /// Bit widths: weights and input activations of a conv (`W2A2`; `A32` = f32 input), or a unit's `A2`.
    pub bits: String,
    /// Trainable parameters (weights, biases, BN γ/β; not BN running statistics or bases).
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Bytes in the deployed model file at these bit widths (packed bits + bases, thresholds, folded BN, f32).
    pub bytes: usize,
}

impl Graph {
    /// Per node: parameters, MACs, deployed bytes.
    pub fn summary(&self) -> Vec<LayerRow> {
        let numel = |t: &Tensor| t.numel();
        let bn_params = |bn: &nn::BatchNorm| bn.ws.as_ref().map_or(0, numel) + bn.bs.as_ref().map_or(0, numel);
        self.nodes
            .iter()
            .map(|n| {
                let [c, h, w] = n.shape;
                let (op, bits, params, macs, bytes) = match &n.layer {
                    Layer::Conv(conv) => {
                        let s = conv.w.size();
                        let (c_in, k) = (s[1] as usize, s[2] as usize);
                        let bias = conv.b.as_ref().map_or(0, numel);
                        let params = numel(&conv.w) + bias;
                        let macs = (c * h * w) as u64 * (c_in * k * k) as u64;
                        let a_in = match n.inputs[0].checked_sub(1).and_then(|p| self.nodes.get(p)).map(|p| &p.layer) {
                            Some(Layer::Act(a)) => a.quant.as_ref().map_or(32, |q| q.state.bits),
                            _ => 32,
                        };
                        match &conv.quant {
                            Some(q) => {
                                let kw = q.state.bits as usize;
                                let packed = c as usize * ((k * k * c_in * kw).div_ceil(8) + kw * 4) + bias * 4;
                                ("conv", format!("W{kw}A{a_in}"), params, macs, packed)
                            }
                            None => ("conv", "W32".to_string(), params, macs, params * 4),
                        }
                    }
                    Layer::Act(a) => {
                        let p = a.bn.as_ref().map_or(0, bn_params);
                        match &a.quant {
                            // Thresholds and sign per channel, codes and basis per layer.
                            Some(q) => {
                                let levels = 1usize << q.state.bits;
                                let b = c as usize * (levels * 4) + levels + q.state.bits as usize * 4;
                                ("bn-relu-q", format!("A{}", q.state.bits), p, 0, b)
                            }
                            None => ("bn-relu", String::new(), p, 0, if a.bn.is_some() { c as usize * 8 } else { 0 }),
                        }
                    }
                    Layer::Bn { bn, relu } => {
                        (if *relu { "bn-relu" } else { "bn" }, String::new(), bn_params(bn), 0, c as usize * 8)
                    }
                    Layer::Linear(l) => {
                        let p = numel(&l.ws) + l.bs.as_ref().map_or(0, numel);
                        ("linear", "W32".into(), p, numel(&l.ws) as u64, p * 4)
                    }
                    Layer::Relu => ("relu", String::new(), 0, 0, 0),
                    Layer::Add => ("add", String::new(), 0, 0, 0),
                    Layer::Concat => ("concat", String::new(), 0, 0, 0),
                    Layer::MaxPool { .. } => ("max-pool", String::new(), 0, 0, 0),
                    Layer::AvgPool { .. } => ("avg-pool", String::new(), 0, 0, 0),
                    Layer::PadChannels { .. } => ("pad-channels", String::new(), 0, 0, 0),
                    Layer::GlobalAvgPool => ("global-avg-pool", String::new(), 0, 0, 0),
                };
                LayerRow { name: n.name.clone(), op, shape: n.shape, bits, params, macs, bytes }
            })
            .collect()
    }
}
