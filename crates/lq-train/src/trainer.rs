//! The training loop: a step reads top to bottom (lr → forward → loss → backward → all-reduce of gradients and
//! moments when data-parallel → SGD → QEM → stats); the epoch loop adds evaluation, checkpoints and the metrics
//! log (rank 0 alone writes files).
use crate::checkpoint::{self, DataInfo, Meta};
use crate::config::{Augment, DatasetKind, DeviceSpec, NormalizeKind, TrainConfig};
use crate::dist::Group;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::optim::{lr_at, Sgd};
use lq_data::{
    load_cifar, load_idx, Batch, Cifar, Dataset, ImageFolder, Loader, LoaderConfig, Normalize, Shard, Source, Split,
    StreamConfig, StreamLoader, Transform, U8Batch, IMAGENET_MEAN, IMAGENET_STD,
};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What a step reads: a batch that becomes the network's input tensors on the training device.
pub trait Input {
    /// Inputs `[n, c, h, w]` (f32) and labels, on `device`.
    fn tensors(&self, device: Device) -> (Tensor, Tensor);
    /// The labels.
    fn labels(&self) -> &[i64];
}

impl Input for Batch {
    fn tensors(&self, device: Device) -> (Tensor, Tensor) {
        let shape: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        (
            Tensor::from_slice(&self.x).view(shape.as_slice()).to_device(device),
            Tensor::from_slice(&self.y).to_device(device),
        )
    }
    fn labels(&self) -> &[i64] {
        &self.y
    }
}

/// Streamed images as the loader made them (u8, NHWC) with their normalisation, applied where it is cheaper: on a
/// GPU after the copy, which then moves a quarter of the bytes of the f32 batch; on the CPU by the host loop of
/// [`U8Batch::normalise_into`], straight into the tensor (libtorch's permute, convert, subtract and scale took
/// 69–73 ms per 64 images at 224² against its 22, see the `normalise` example). Both do the same f32 arithmetic, so the values agree
/// bit for bit.
pub struct Pixels {
    /// The images.
    pub batch: U8Batch,
    norm: Arc<Normalize>,
}

impl Pixels {
    /// `batch` with the normalisation `norm`, built for the batch's image size.
    pub fn new(batch: U8Batch, norm: Arc<Normalize>) -> Pixels {
        Pixels { batch, norm }
    }

    /// The inputs normalised by tensor ops on `device` after a u8 copy (what [`Input::tensors`] does off the CPU;
    /// public so that a CPU test can compare it with the host loop).
    pub fn on_device(&self, device: Device) -> Tensor {
        let [n, h, w, c] = self.batch.shape.map(|d| d as i64);
        // A per-pixel mean (`C·H·W`, as `Normalize` keeps one that varies over the plane) broadcasts as well.
        let mean = self.norm.compact_mean();
        let mean = Tensor::from_slice(&mean);
        let mean = if mean.numel() as i64 == c { mean.view([1, c, 1, 1]) } else { mean.view([1, c, h, w]) };
        let scale = Tensor::from_slice(self.norm.parts().1).view([1, c, 1, 1]);
        let x = Tensor::from_slice(&self.batch.x).view([n, h, w, c]).to_device(device);
        let x = (x.permute([0, 3, 1, 2]).to_kind(Kind::Float) - mean.to_device(device)) * scale.to_device(device);
        x.contiguous()
    }
}

impl Input for Pixels {
    fn tensors(&self, device: Device) -> (Tensor, Tensor) {
        if device == Device::Cpu {
            let [n, h, w, c] = self.batch.shape.map(|d| d as i64);
            let x = Tensor::empty([n, c, h, w], (Kind::Float, Device::Cpu));
            if x.numel() > 0 {
                // SAFETY: `x` is a fresh contiguous f32 CPU tensor of `numel` (> 0, so a real allocation) values
                // that nothing else references; viewed as uninitialised, which it is, and all written below.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(x.data_ptr() as *mut std::mem::MaybeUninit<f32>, x.numel())
                };
                self.batch.normalise_into(&self.norm, out);
            }
            return (x, Tensor::from_slice(&self.batch.y));
        }
        (self.on_device(device), Tensor::from_slice(&self.batch.y).to_device(device))
    }
    fn labels(&self) -> &[i64] {
        &self.batch.y
    }
}

/// Loss and accuracy counts of one step or one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Σ loss over images.
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Labels among the top 5 predictions (evaluation only).
    pub correct5: usize,
    /// Images.
    pub n: usize,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.correct5 += o.correct5;
        self.n += o.n;
    }
    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.n.max(1) as f64
    }
    /// Top-1 accuracy in [0, 1].
    pub fn acc(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
    /// Top-5 accuracy in [0, 1].
    pub fn acc5(&self) -> f64 {
        self.correct5 as f64 / self.n.max(1) as f64
    }
}

/// A model, its variables, its optimizer and where the run stands.
pub struct Trainer {
    /// The resolved configuration.
    pub cfg: TrainConfig,
    /// All variables (weights, BN parameters and statistics).
    pub vs: nn::VarStore,
    /// The network.
    pub net: Graph,
    /// SGD state.
    pub opt: Sgd,
    /// Epochs completed.
    pub epoch: usize,
    /// Best test accuracy so far.
    pub best_acc: f64,
    /// The data the run trains on (set by [`run`], restored from checkpoints).
    pub data: Option<DataInfo>,
    /// The data-parallel group this rank trains in ([`Trainer::join`]); `None` for one process.
    group: Option<Group>,
    /// Time spent in the step's collectives after backward (the moments; gradients overlap the backward) since
    /// the last reset.
    pub comm: std::time::Duration,
    /// The gradient reducer of a data-parallel run (declared after `group`: dropped after it, it holds its own
    /// reference to the process group).
    ddp: Option<crate::dist::Ddp>,
}

/// Config keys a resumed run may change (with `--set` or in its `config.toml`): where the data lives, how the run
/// executes, and how long it goes on. Anything else would make the resumed run a different experiment.
pub const RESUME_KEYS: [&str; 4] = ["optim.epochs", "data.dir", "data.workers", "run.device"];

/// Makes libtorch's CUDA backend available when the binary was linked against `libtorch_cpu` only (the default
/// CPU build, or a linker that dropped `libtorch_cuda` as unneeded): loading `libtorch_cuda.so` registers it.
/// The library is searched on the usual path (`LD_LIBRARY_PATH`, e.g. a CUDA torch's `torch/lib`). Returns whether
/// CUDA is available afterwards. Call it before anything asks libtorch about CUDA.
pub fn load_cuda_backend() -> bool {
    // Before any CUDA query: libtorch caches the CUDA hooks it finds at the first one.
    {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is intentionally kept for the process;
        // dlerror returns a NUL-terminated message or null.
        unsafe {
            if libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
                let e = libc::dlerror();
                if !e.is_null() {
                    eprintln!(
                        "warning: cannot load libtorch_cuda.so: {}",
                        std::ffi::CStr::from_ptr(e).to_string_lossy()
                    );
                }
            }
        }
    }
    tch::Cuda::is_available()
}

/// The libtorch device of `d` (loading the CUDA backend first when asked for).
pub fn device(d: DeviceSpec) -> Result<Device> {
    match d {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) if load_cuda_backend() => Ok(Device::Cuda(n)),
        DeviceSpec::Cuda(_) => {
            Err(Error::Config("run.device: this libtorch has no CUDA device (see README: LQ_TORCH=cuda)".into()))
        }
    }
}

/// Builds the network of `cfg` under `p` for `classes` outputs on 3-channel `data.size`² images.
pub fn build_net(p: &nn::Path, cfg: &TrainConfig, classes: i64) -> Result<Graph> {
    let s = cfg.data.size as i64;
    crate::models::build(p.clone(), &cfg.model, cfg.quant, [3, s, s], classes)
}

impl Trainer {
    /// A fresh run: seeded weights, zero momentum, initial bases.
    pub fn new(cfg: TrainConfig, classes: i64) -> Result<Self> {
        let dev = device(cfg.run.device)?; // first: seeding queries libtorch's CUDA hooks
        tch::manual_seed(cfg.run.seed as i64);
        let vs = nn::VarStore::new(dev);
        let net = build_net(&vs.root(), &cfg, classes)?;
        let opt = Sgd::new(&vs, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay);
        Ok(Trainer {
            cfg,
            vs,
            net,
            opt,
            epoch: 0,
            best_acc: 0.0,
            data: None,
            group: None,
            comm: Default::default(),
            ddp: None,
        })
    }

    /// Joins a data-parallel group: every rank must run the same config (up to where its data lives, its
    /// workers and its device) and the same lqnets at the same epoch, else all fail here; then rank 0's weights,
    /// BN statistics and momenta become everyone's, and BN is synchronised when `run.sync_bn`.
    pub fn join(&mut self, g: Group) -> Result<()> {
        if !self.cfg.optim.batch.is_multiple_of(g.world) {
            return Err(Error::Config(format!(
                "optim.batch = {} (the global batch) does not split evenly over {} ranks",
                self.cfg.optim.batch, g.world
            )));
        }
        let mut c = self.cfg.clone();
        // Each rank has its own device index, data copy and loader threads; the device kind must agree.
        let kind = match c.run.device {
            DeviceSpec::Cpu => DeviceSpec::Cpu,
            DeviceSpec::Cuda(_) => DeviceSpec::Cuda(0),
        };
        (c.run.device, c.data.dir, c.data.workers) = (kind, String::new(), 0);
        let text = toml::to_string(&c).map_err(|e| Error::Config(e.to_string()))?;
        g.agree(&[crate::dist::digest(env!("CARGO_PKG_VERSION").as_bytes())], "the lqnets version")?;
        g.agree(&[crate::dist::digest(text.as_bytes())], "the config")?;
        g.agree(&[self.epoch as i64], "the epoch to start from")?;
        g.broadcast_vars(&self.vs)?;
        tch::no_grad(|| self.opt.params.iter().try_for_each(|p| g.broadcast(&p.buf, 0)))?;
        // Bases come from the same seed or checkpoint everywhere; a node with another copy fails here, not later.
        g.agree(&[self.state_digest()?], "the weights and quantizer bases at the start")?;
        crate::dist::set_sync_bn(self.cfg.run.sync_bn.then_some(&g));
        let vars: Vec<&Tensor> = self.opt.params.iter().map(|p| &p.var).collect();
        self.ddp = Some(g.ddp(&vars)?);
        self.group = Some(g);
        Ok(())
    }

    /// A digest of every variable and quantizer basis, bit for bit (data-parallel ranks must hold the same).
    pub fn state_digest(&self) -> Result<i64> {
        let mut vars = self.vs.variables().into_iter().collect::<Vec<_>>();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut bytes = Vec::new();
        for (name, v) in vars {
            bytes.extend(name.as_bytes());
            let v = Vec::<f32>::try_from(v.to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        for q in self.net.quantizers() {
            bytes.extend(q.state.basis.iter().flat_map(|x| x.to_le_bytes()));
        }
        Ok(crate::dist::digest(&bytes))
    }

    /// This rank's part of every batch (all of it for one process).
    pub fn shard(&self) -> Shard {
        self.group.as_ref().map_or(Shard::default(), |g| Shard { rank: g.rank, world: g.world })
    }

    /// Whether this process writes files and logs (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank == 0)
    }

    /// One training step on `batch` (this rank's part of the global batch) at learning rate `lr`. The stats are
    /// the global batch's.
    pub fn step(&mut self, batch: &(impl Input + ?Sized), lr: f64) -> Result<Stats> {
        let (x, y) = batch.tensors(self.vs.device());
        let logits = self.net.forward(&x, true)?;
        let loss = logits.cross_entropy_for_logits(&y);
        if let Some(d) = &self.ddp {
            d.prepare()?;
        }
        loss.f_backward().map_err(|e| match &self.group {
            // The gradient all-reduce (and synchronised BN) run inside backward: a lost rank surfaces here.
            Some(g) => Error::Dist(format!("rank {}: backward: {e}", g.rank)),
            None => e.into(),
        })?;
        // Loss, accuracy and the quantizers' moments reach the host in one copy (on a GPU, the step's only
        // synchronisation).
        let n = batch.labels().len() as f64;
        let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Double);
        let count = correct.zeros_like() + n;
        let stats = Tensor::stack(&[loss.detach().to_kind(Kind::Double) * n, correct, count], 0);
        let mut s: [f64; 3] = self.net.gather(&stats)?.try_into().expect("three stats");
        if let Some(g) = &self.group {
            let t0 = Instant::now();
            self.net.reduce_moments(&mut s, g)?;
            self.comm += t0.elapsed();
        }
        let l = s[0] / s[2];
        if !l.is_finite() {
            // Before the update: the weights stay those of the last finite step on every rank.
            return Err(Error::NonFiniteLoss { epoch: self.epoch, step: 0, loss: l });
        }
        self.opt.step(lr);
        self.net.fit_quantizers()?;
        Ok(Stats { loss_sum: s[0], correct: s[1] as usize, correct5: 0, n: s[2] as usize })
    }

    /// Evaluation forward (stored bases, BN running statistics, no updates).
    pub fn logits(&mut self, batch: &(impl Input + ?Sized)) -> Result<Tensor> {
        let (x, _) = batch.tensors(self.vs.device());
        tch::no_grad(|| self.net.forward(&x, false))
    }

    /// Loss and accuracy over a loader's epoch 0.
    pub fn evaluate(&mut self, loader: &Feed) -> Result<Stats> {
        let mut s = Stats::default();
        for b in loader.epoch(0) {
            let b = b?;
            let logits = self.logits(&*b)?;
            let y = Tensor::from_slice(b.labels()).to_device(logits.device());
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
            let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as usize;
            let k = logits.size()[1].min(5);
            let top = logits.topk(k, -1, true, true).1;
            let correct5 = top.eq_tensor(&y.unsqueeze(-1)).sum(Kind::Int64).int64_value(&[]) as usize;
            s.add(Stats { loss_sum: loss, correct, correct5, n: b.labels().len() });
        }
        if let Some(g) = &self.group {
            // Each rank evaluated its shard of every batch.
            let mut v = [s.loss_sum, s.correct as f64, s.correct5 as f64, s.n as f64];
            g.sum_f64(&mut v)?;
            s = Stats { loss_sum: v[0], correct: v[1] as usize, correct5: v[2] as usize, n: v[3] as usize };
        }
        Ok(s)
    }

    /// Saves the whole state to `path` (atomic).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().map(|(n, v)| (format!("model/{n}"), v)).collect();
        t.extend(self.opt.params.iter().map(|p| (format!("momentum/{}", p.name), p.buf.shallow_clone())));
        let meta = Meta {
            version: checkpoint::VERSION,
            epoch: self.epoch,
            best_acc: self.best_acc,
            config: self.cfg.clone(),
            quantizers: self.net.quantizers().into_iter().cloned().collect(),
            data: self.data.clone(),
        };
        checkpoint::save(path, &t, &meta)
    }

    /// Restores a run from a checkpoint (its config included); `device` overrides the saved `run.device` (a run
    /// trained on CUDA evaluates on a CPU machine).
    pub fn load(path: &Path, device: Option<DeviceSpec>) -> Result<Self> {
        let (tensors, mut meta) = checkpoint::load(path)?;
        if let Some(d) = device {
            meta.config.run.device = d;
        }
        Self::restore(path, tensors, meta)
    }

    /// Builds the network of `meta.config` and fills it from `tensors`, checking that the file holds exactly this
    /// network's tensors (names and shapes), momentum buffers and quantizer states (bit widths, shapes).
    pub fn restore(path: &Path, tensors: HashMap<String, Tensor>, meta: Meta) -> Result<Self> {
        let bad = |why: String| Error::file(path, why);
        let classes = match (&meta.data, tensors.get("model/fc.bias")) {
            (Some(d), _) => d.classes as i64,
            (None, Some(b)) => b.size()[0],
            (None, None) => {
                return Err(bad("no data description and no model/fc.bias: cannot tell the classes".into()))
            }
        };
        let mut tr = Trainer::new(meta.config.clone(), classes)?;
        let vars = tr.vs.variables();
        let want = vars.len() + tr.opt.params.len();
        if tensors.len() != want {
            let extra: Vec<&String> = tensors
                .keys()
                .filter(|n| {
                    !n.strip_prefix("model/").is_some_and(|m| vars.contains_key(m))
                        && !n.strip_prefix("momentum/").is_some_and(|m| tr.opt.params.iter().any(|p| p.name == m))
                })
                .take(3)
                .collect();
            return Err(bad(format!(
                "{} tensors, the configured network has {want} (not in it: {extra:?}): a different architecture?",
                tensors.len()
            )));
        }
        let fetch = |key: String, like: &Tensor| -> Result<&Tensor> {
            let src = tensors.get(&key).ok_or_else(|| bad(format!("checkpoint lacks tensor {key}")))?;
            if src.size() != like.size() {
                return Err(bad(format!("tensor {key}: shape {:?} in file, model has {:?}", src.size(), like.size())));
            }
            Ok(src)
        };
        tch::no_grad(|| -> Result<()> {
            for (n, mut v) in vars {
                v.copy_(fetch(format!("model/{n}"), &v)?);
            }
            for p in &mut tr.opt.params {
                p.buf.copy_(fetch(format!("momentum/{}", p.name), &p.buf)?);
            }
            Ok(())
        })?;
        let qs = tr.net.quantizers_mut();
        if qs.len() != meta.quantizers.len() {
            return Err(bad(format!("{} quantizer states, the network has {}", meta.quantizers.len(), qs.len())));
        }
        for q in qs {
            let saved = meta
                .quantizers
                .iter()
                .find(|s| s.name == q.name)
                .ok_or_else(|| bad(format!("no state for quantizer {}", q.name)))?;
            let (a, b) = (&saved.state, &q.state);
            if saved.method != q.method
                || a.bits != b.bits
                || a.code_set != b.code_set
                || a.basis.len() != b.basis.len()
            {
                return Err(bad(format!(
                    "quantizer {}: stored {:?} {}-bit with {} basis values, the config builds {:?} {}-bit with {}",
                    q.name,
                    saved.method,
                    a.bits,
                    a.basis.len(),
                    q.method,
                    b.bits,
                    b.basis.len()
                )));
            }
            if a.biased.len() != a.basis.len() {
                return Err(bad(format!("quantizer {}: EMA state of the wrong length", q.name)));
            }
            q.state = a.clone();
        }
        if let Some(d) = &meta.data {
            d.norm()?;
        }
        tr.epoch = meta.epoch;
        tr.best_acc = meta.best_acc;
        tr.data = meta.data;
        Ok(tr)
    }

    /// Reopens the run in `dir` from its `last.safetensors` to continue it. The checkpoint's config is the run's:
    /// `sets` and edits of `dir/config.toml` may change only [`RESUME_KEYS`]; anything else is an error naming
    /// the key. `metrics.jsonl` is cut back to the checkpoint's epoch (a run killed between the log line and the
    /// checkpoint would otherwise log that epoch twice).
    pub fn resume(dir: &Path, sets: &[String]) -> Result<Self> {
        let ckpt = dir.join("last.safetensors");
        let (tensors, mut meta) = checkpoint::load(&ckpt)?;
        let saved = dir.join("config.toml");
        let mut allowed: Vec<String> = Vec::new();
        if saved.exists() {
            let on_disk = TrainConfig::load(Some(&saved), &[])?;
            let (changed, other): (Vec<String>, Vec<String>) = meta
                .config
                .diff(&on_disk)
                .into_iter()
                .partition(|d| RESUME_KEYS.iter().any(|k| d.starts_with(&format!("{k}:"))));
            if !other.is_empty() {
                return Err(Error::Config(format!(
                    "{} was edited after the checkpoint ({}); a resumed run keeps its config (only {} may change): \
                     restore the file or start a new run",
                    saved.display(),
                    other.join("; "),
                    RESUME_KEYS.join(", ")
                )));
            }
            for d in changed {
                let key = d.split(':').next().unwrap_or_default();
                let value = on_disk.get(key).unwrap_or_default();
                allowed.push(format!("{key}={value}"));
            }
        }
        for s in sets {
            let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k.trim());
            if !RESUME_KEYS.contains(&key) {
                return Err(Error::Config(format!(
                    "--set {s}: {key} cannot change when resuming (allowed: {})",
                    RESUME_KEYS.join(", ")
                )));
            }
            allowed.push(s.clone());
        }
        meta.config = meta.config.with_sets(&allowed)?;
        let tr = Trainer::restore(&ckpt, tensors, meta)?;
        let log = dir.join("metrics.jsonl");
        // Rank 0 alone owns the run's files in a data-parallel job (the launcher's environment says which).
        let main = crate::dist::Launch::from_env()?.is_none_or(|l| l.rank == 0);
        if main && log.exists() {
            let text = std::fs::read_to_string(&log).map_err(|e| Error::file(&log, e))?;
            let keep: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["epoch"].as_u64())
                        .is_some_and(|e| e as usize <= tr.epoch)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if keep != text {
                checkpoint::write_atomic(&log, keep.as_bytes())?;
            }
        }
        Ok(tr)
    }

    /// Whether every variable is finite (a diverged run must not overwrite its last good checkpoint).
    pub fn all_finite(&self) -> bool {
        self.vs.variables().values().all(|v| v.isfinite().all().int64_value(&[]) != 0)
    }
}

/// Loads the train and test sets named by `cfg.data`, with `train_limit`/`test_limit` applied.
pub fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    Ok((load_split(cfg, true)?, load_split(cfg, false)?))
}

/// Loads the training (`train`) or test split named by `cfg.data`, with its limit applied.
pub fn load_split(cfg: &TrainConfig, train: bool) -> Result<Dataset> {
    let d = &cfg.data;
    let dir = Path::new(&d.dir);
    let ds = match d.dataset {
        DatasetKind::Cifar10 => load_cifar(dir, Cifar::Ten, train)?,
        DatasetKind::Cifar100 => load_cifar(dir, Cifar::Hundred, train)?,
        DatasetKind::Fashion | DatasetKind::Mnist => load_idx(dir, if train { "train" } else { "t10k" }, true)?,
        DatasetKind::Imagenet => {
            return Err(Error::Config(
                "data.dataset = \"imagenet\" is streamed from its folder (trainer::feeds), not loaded in memory".into(),
            ))
        }
    };
    let n = if train { d.train_limit } else { d.test_limit };
    Ok(if n > 0 { ds.take(n) } else { ds })
}

/// The input normalisation `cfg.data.normalize` measures on the training set.
pub fn normalization(cfg: &TrainConfig, train: &Dataset) -> Normalize {
    match cfg.data.normalize {
        NormalizeKind::PerPixel => Normalize::per_pixel_of(train),
        NormalizeKind::PerChannel => Normalize::per_channel_of(train),
    }
}

/// Train and test loaders for `cfg` (normalisation measured on the training set).
pub fn loaders(cfg: &TrainConfig, train: Dataset, test: Dataset) -> (Feed, Feed) {
    let norm = normalization(cfg, &train);
    let base = LoaderConfig {
        batch: cfg.optim.batch,
        shuffle: true,
        pad: cfg.data.pad,
        drop_last: true,
        workers: cfg.data.workers,
        seed: cfg.run.seed,
        shard: Shard::default(),
    };
    (Feed::Memory(Loader::new(Arc::new(train), norm.clone(), base)), test_loader(cfg, test, norm))
}

/// The evaluation loader: in order, no augmentation, every image.
pub fn test_loader(cfg: &TrainConfig, test: Dataset, norm: Normalize) -> Feed {
    let c = LoaderConfig {
        batch: cfg.optim.batch,
        shuffle: false,
        pad: 0,
        drop_last: false,
        workers: cfg.data.workers,
        seed: cfg.run.seed,
        shard: Shard::default(),
    };
    Feed::Memory(Loader::new(Arc::new(test), norm, c))
}

/// Where a run's batches come from: a dataset held in memory (CIFAR, IDX) or images streamed from a folder
/// (ImageNet), decoded and augmented by worker threads.
#[allow(clippy::large_enum_variant)] // two per run: boxing would only add a pointer chase
pub enum Feed {
    /// In memory.
    Memory(Loader),
    /// Streamed; `norm` turns its u8 batches into network inputs on the training device ([`Pixels`]), `desc` is
    /// what checkpoints record.
    Stream {
        /// The loader.
        loader: StreamLoader,
        /// Input normalisation.
        norm: Arc<Normalize>,
        /// Classes, input shape, normalisation.
        desc: DataInfo,
        /// Images in the split.
        len: usize,
    },
}

impl Feed {
    /// The same feed taking `shard`'s part of every batch (data-parallel ranks).
    pub fn with_shard(self, shard: Shard) -> Feed {
        match self {
            Feed::Memory(l) => Feed::Memory(l.with_shard(shard)),
            Feed::Stream { loader, norm, desc, len } => {
                Feed::Stream { loader: loader.with_shard(shard), norm, desc, len }
            }
        }
    }
    /// Batches per epoch.
    pub fn batches(&self) -> usize {
        match self {
            Feed::Memory(l) => l.batches(),
            Feed::Stream { loader, .. } => loader.batches(),
        }
    }
    /// Images in the split.
    pub fn len(&self) -> usize {
        match self {
            Feed::Memory(l) => l.dataset().len(),
            Feed::Stream { len, .. } => *len,
        }
    }
    /// True without images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Classes, input shape and normalisation, as checkpoints record them.
    pub fn info(&self) -> DataInfo {
        match self {
            Feed::Memory(l) => DataInfo::new(l.dataset(), l.norm()),
            Feed::Stream { desc, .. } => desc.clone(),
        }
    }
    /// The batches of `epoch` (a streamed image that cannot be read is skipped and recorded; too many end the
    /// epoch with an error).
    pub fn epoch(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<Box<dyn Input>>> + '_> {
        match self {
            Feed::Memory(l) => Box::new(l.epoch(epoch).map(|b| Ok(Box::new(b) as Box<dyn Input>))),
            Feed::Stream { loader, norm, .. } => Box::new(
                loader
                    .epoch(epoch)
                    .map(move |b| Ok(Box::new(Pixels::new(b.map_err(Error::Data)?, norm.clone())) as Box<dyn Input>)),
            ),
        }
    }
}

/// The training and test feeds of `cfg`: in-memory datasets through [`loaders`], ImageNet as an image folder
/// (`data.dir/train/<class>/*`, `data.dir/val/<class>/*`) with the `data.augment` chain for training and resize-256
/// + centre crop for testing, normalised with ImageNet's mean and std.
pub fn feeds(cfg: &TrainConfig) -> Result<(Feed, Feed)> {
    if cfg.data.dataset != DatasetKind::Imagenet {
        let (train, test) = load_data(cfg)?;
        return Ok(loaders(cfg, train, test));
    }
    let d = &cfg.data;
    let size = d.size;
    let norm = Normalize::per_channel(&IMAGENET_MEAN, &IMAGENET_STD, size, size);
    let stream = |split: Split, tf: Transform, train: bool| -> Result<Feed> {
        let src = ImageFolder::open(Path::new(&d.dir), split)?;
        let mut n = src.len();
        if let l @ 1.. = if train { d.train_limit } else { d.test_limit } {
            n = n.min(l);
        }
        let desc = DataInfo {
            classes: src.classes(),
            input: [3, size, size],
            mean: norm.compact_mean(),
            scale: norm.parts().1.to_vec(),
        };
        let c = StreamConfig {
            batch: cfg.optim.batch,
            shuffle: train,
            drop_last: train,
            workers: d.workers,
            seed: cfg.run.seed,
            ..StreamConfig::default()
        };
        let src: Arc<dyn Source> = if n < src.len() { Arc::new(lq_data::Subset::new(src, n)) } else { Arc::new(src) };
        Ok(Feed::Stream { loader: StreamLoader::new(src, tf, c)?, norm: Arc::new(norm.clone()), desc, len: n })
    };
    let augment = match d.augment {
        Augment::Fb => Transform::fb(size),
        Augment::Hwgq => Transform::hwgq(size),
    };
    Ok((stream(Split::Train, augment, true)?, stream(Split::Val, Transform::eval(size), false)?))
}

/// Runs (or resumes) training into `out`: `metrics.jsonl`, `config.toml`, `last.safetensors`, `best.safetensors`.
pub fn run(tr: &mut Trainer, train: &Feed, test: &Feed, out: &Path) -> Result<()> {
    run_with(tr, train, test, out, &mut |_| {})
}

/// [`run`], calling `after_epoch` once each epoch's log line and checkpoints are written (e.g. to refresh a report).
pub fn run_with(
    tr: &mut Trainer,
    train: &Feed,
    test: &Feed,
    out: &Path,
    after_epoch: &mut dyn FnMut(&Trainer),
) -> Result<()> {
    let d = &tr.cfg.data;
    if train.batches() == 0 {
        return Err(Error::Config(format!(
            "data: {} training images make no full batch of optim.batch = {} (data.dir = {}, data.train_limit = {})",
            train.len(),
            tr.cfg.optim.batch,
            d.dir,
            d.train_limit
        )));
    }
    if test.is_empty() {
        return Err(Error::Config(format!(
            "data: no test images (data.dir = {}, data.test_limit = {})",
            d.dir, d.test_limit
        )));
    }
    let info = train.info();
    match &tr.data {
        Some(d) if d.classes != info.classes || d.input != info.input || d.norm()? != info.norm()? => {
            return Err(Error::Config(format!(
                "the training data ({} classes, input {:?}) differs from the run's ({} classes, input {:?}) or \
                 normalises differently: is data.dir the run's dataset?",
                info.classes, info.input, d.classes, d.input
            )))
        }
        Some(_) => {}
        None => tr.data = Some(info),
    }
    let main = tr.is_main();
    if main {
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
        let cfg_text = toml::to_string(&tr.cfg).map_err(|e| Error::Config(e.to_string()))?;
        checkpoint::write_atomic(&out.join("config.toml"), cfg_text.as_bytes())?;
        eprintln!("config:\n{cfg_text}");
    }
    let steps = match tr.cfg.run.max_steps_per_epoch {
        0 => train.batches(),
        m => m.min(train.batches()),
    };
    while tr.epoch < tr.cfg.optim.epochs {
        let t0 = Instant::now();
        tr.comm = Default::default();
        let mut s = Stats::default();
        let mut lr = 0.0;
        for (i, b) in train.epoch(tr.epoch as u64).take(steps).enumerate() {
            let b = b?;
            lr = lr_at(tr.epoch as f64 + i as f64 / steps as f64, &tr.cfg.optim);
            let st = tr.step(&*b, lr).map_err(|e| match e {
                Error::NonFiniteLoss { epoch, loss, .. } => Error::NonFiniteLoss { epoch, step: i, loss },
                e => e,
            })?;
            s.add(st);
            if main {
                progress(tr, i + 1, steps, &s, t0);
            }
        }
        if let Some(g) = &tr.group {
            // Per-rank BN keeps per-rank running statistics: rank 0's become everyone's (as DDP's buffer
            // broadcast), so every rank evaluates and checkpoints the same network.
            g.broadcast_buffers(&tr.vs)?;
            g.agree(&[tr.state_digest()?], "the weights and bases after this epoch (the ranks diverged)")?;
        }
        let test_s = tr.evaluate(test)?;
        if !test_s.loss().is_finite() || !tr.all_finite() {
            return Err(Error::Diverged { epoch: tr.epoch, test_loss: test_s.loss() });
        }
        tr.epoch += 1;
        let best = test_s.acc() > tr.best_acc;
        tr.best_acc = tr.best_acc.max(test_s.acc());
        if !main {
            continue;
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "\repoch {}/{}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | lr {lr:.4} | {secs:.1}s",
            tr.epoch,
            tr.cfg.optim.epochs,
            s.loss(),
            s.acc(),
            test_s.loss(),
            test_s.acc()
        );
        let quant: Vec<_> = tr
            .net
            .quantizers()
            .iter()
            .map(|q| json!({"name": q.name, "basis": q.state.basis, "mse": q.last_mse}))
            .collect();
        let mut line = json!({"epoch": tr.epoch, "train_loss": s.loss(), "train_acc": s.acc(), "test_loss": test_s.loss(), "test_acc": test_s.acc(), "test_acc5": test_s.acc5(), "lr": lr, "seconds": secs, "quantizers": quant});
        if let Some(g) = &tr.group {
            line["world"] = json!(g.world);
            line["comm_seconds"] = json!(tr.comm.as_secs_f64());
        }
        append_line(&out.join("metrics.jsonl"), &line.to_string())?;
        tr.save(&out.join("last.safetensors"))?;
        if best {
            std::fs::copy(out.join("last.safetensors"), out.join("best.tmp")).map_err(|e| Error::file(out, e))?;
            std::fs::rename(out.join("best.tmp"), out.join("best.safetensors")).map_err(|e| Error::file(out, e))?;
        }
        after_epoch(tr);
    }
    Ok(())
}

fn progress(tr: &Trainer, i: usize, steps: usize, s: &Stats, t0: Instant) {
    let el = t0.elapsed().as_secs_f64();
    let eta = el / i as f64 * (steps - i) as f64;
    eprint!(
        "\repoch {}/{} [{i}/{steps}] {:.0} img/s loss {:.4} acc {:.3} ETA {:.0}s   ",
        tr.epoch + 1,
        tr.cfg.optim.epochs,
        s.n as f64 / el,
        s.loss(),
        s.acc(),
        eta
    );
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::file(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::file(path, e))
}
