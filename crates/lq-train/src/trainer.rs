//! The training loop: a step reads top to bottom (lr, forward, loss, backward, SGD, stats; the QEM basis updates
//! happen inside the forward), the epoch loop adds evaluation, checkpoints and the metrics log.
use crate::checkpoint::{self, Meta};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::layers::QuantSpec;
use crate::models::{Net, ResNetCifar, VggSmall};
use crate::optim::{lr_at, Sgd};
use lq_data::{load_cifar, load_idx, Batch, Cifar, Dataset, Loader, LoaderConfig, Normalize};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Loss and accuracy counts of one step or one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Σ loss over images.
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Images.
    pub n: usize,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
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
}

/// A model, its variables, its optimizer and where the run stands.
pub struct Trainer {
    /// The resolved configuration.
    pub cfg: TrainConfig,
    /// All variables (weights, BN parameters and statistics).
    pub vs: nn::VarStore,
    /// The network.
    pub net: Box<dyn Net>,
    /// SGD state.
    pub opt: Sgd,
    /// Epochs completed.
    pub epoch: usize,
    /// Best test accuracy so far.
    pub best_acc: f64,
}

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

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(s: &str) -> Result<Device> {
    if s.starts_with("cuda") {
        load_cuda_backend();
    }
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        s if s.starts_with("cuda:") && tch::Cuda::is_available() => {
            s[5..].parse().map(Device::Cuda).map_err(|_| Error::Config(format!("run.device: bad device '{s}'")))
        }
        s if s.starts_with("cuda") => Err(Error::Config(format!(
            "run.device = {s}: this libtorch has no CUDA device (see README: LQ_TORCH=cuda)"
        ))),
        s => Err(Error::Config(format!("run.device: unknown device '{s}' (cpu, cuda, cuda:N)"))),
    }
}

/// Builds the network named by `cfg.model` under `p`.
pub fn build_net(p: &nn::Path, cfg: &TrainConfig, classes: i64) -> Result<Box<dyn Net>> {
    let spec: QuantSpec = cfg.spec();
    Ok(match cfg.model.arch.as_str() {
        "vgg_small" => Box::new(VggSmall::new(p, classes, spec)?),
        _ => Box::new(ResNetCifar::new(p, cfg.model.depth, classes, spec, cfg.model.shortcut)?),
    })
}

impl Trainer {
    /// A fresh run: seeded weights, zero momentum, initial bases.
    pub fn new(cfg: TrainConfig, classes: i64) -> Result<Self> {
        let dev = device(&cfg.run.device)?; // first: seeding queries libtorch's CUDA hooks
        tch::manual_seed(cfg.run.seed as i64);
        let vs = nn::VarStore::new(dev);
        let net = build_net(&vs.root(), &cfg, classes)?;
        let opt = Sgd::new(&vs, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay);
        Ok(Trainer { cfg, vs, net, opt, epoch: 0, best_acc: 0.0 })
    }

    /// One training step on `batch` at learning rate `lr`.
    pub fn step(&mut self, batch: &Batch, lr: f64) -> Result<Stats> {
        let (x, y) = self.tensors(batch);
        let logits = self.net.forward(&x, true)?;
        let loss = logits.cross_entropy_for_logits(&y);
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            return Err(Error::NonFiniteLoss { epoch: self.epoch, step: 0, loss: l });
        }
        loss.backward();
        self.opt.step(lr);
        let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as usize;
        Ok(Stats { loss_sum: l * batch.y.len() as f64, correct, n: batch.y.len() })
    }

    /// Evaluation forward (stored bases, BN running statistics, no updates).
    pub fn logits(&mut self, batch: &Batch) -> Result<Tensor> {
        let (x, _) = self.tensors(batch);
        tch::no_grad(|| self.net.forward(&x, false))
    }

    /// Loss and accuracy over a loader's epoch 0.
    pub fn evaluate(&mut self, loader: &Loader) -> Result<Stats> {
        let mut s = Stats::default();
        for b in loader.epoch(0) {
            let logits = self.logits(&b)?;
            let y = Tensor::from_slice(&b.y).to_device(logits.device());
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
            let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as usize;
            s.add(Stats { loss_sum: loss, correct, n: b.y.len() });
        }
        Ok(s)
    }

    fn tensors(&self, b: &Batch) -> (Tensor, Tensor) {
        let shape: Vec<i64> = b.shape.iter().map(|&d| d as i64).collect();
        let d = self.vs.device();
        (Tensor::from_slice(&b.x).view(shape.as_slice()).to_device(d), Tensor::from_slice(&b.y).to_device(d))
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
        };
        checkpoint::save(path, &t, &meta)
    }

    /// Restores a run from a checkpoint (its config included); `device` overrides the saved `run.device` (a run
    /// trained on CUDA evaluates on a CPU machine).
    pub fn load(path: &Path, classes: i64, device: Option<&str>) -> Result<Self> {
        let (tensors, mut meta) = checkpoint::load(path)?;
        if let Some(d) = device {
            meta.config.run.device = d.to_string();
        }
        let mut tr = Trainer::new(meta.config.clone(), classes)?;
        let miss = |n: &str| Error::file(path, format!("checkpoint lacks tensor {n}"));
        tch::no_grad(|| -> Result<()> {
            for (n, mut v) in tr.vs.variables() {
                let src = tensors.get(&format!("model/{n}")).ok_or_else(|| miss(&n))?;
                if src.size() != v.size() {
                    return Err(Error::file(
                        path,
                        format!("tensor {n}: shape {:?} in file, model has {:?}", src.size(), v.size()),
                    ));
                }
                v.copy_(src);
            }
            for p in &mut tr.opt.params {
                p.buf.copy_(tensors.get(&format!("momentum/{}", p.name)).ok_or_else(|| miss(&p.name))?);
            }
            Ok(())
        })?;
        for q in tr.net.quantizers_mut() {
            let saved = meta
                .quantizers
                .iter()
                .find(|s| s.name == q.name)
                .ok_or_else(|| Error::file(path, format!("no state for quantizer {}", q.name)))?;
            q.state = saved.state.clone();
        }
        tr.epoch = meta.epoch;
        tr.best_acc = meta.best_acc;
        Ok(tr)
    }
}

/// Loads the train and test sets named by `cfg.data`, with `train_limit`/`test_limit` applied.
pub fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let d = &cfg.data;
    let dir = Path::new(&d.dir);
    let (tr, te) = match d.dataset.as_str() {
        "cifar100" => (load_cifar(dir, Cifar::Hundred, true)?, load_cifar(dir, Cifar::Hundred, false)?),
        "fashion" | "mnist" => (load_idx(dir, "train", true)?, load_idx(dir, "t10k", true)?),
        _ => (load_cifar(dir, Cifar::Ten, true)?, load_cifar(dir, Cifar::Ten, false)?),
    };
    let lim = |ds: Dataset, n: usize| if n > 0 { ds.take(n) } else { ds };
    Ok((lim(tr, d.train_limit), lim(te, d.test_limit)))
}

/// Train and test loaders for `cfg` (normalisation measured on the training set).
pub fn loaders(cfg: &TrainConfig, train: Dataset, test: Dataset) -> (Loader, Loader) {
    let norm = if cfg.data.normalize == "per_pixel" {
        Normalize::per_pixel_of(&train)
    } else {
        Normalize::per_channel_of(&train)
    };
    let base = LoaderConfig {
        batch: cfg.optim.batch,
        shuffle: true,
        pad: cfg.data.pad,
        drop_last: true,
        workers: cfg.data.workers,
        seed: cfg.run.seed,
    };
    let test_cfg = LoaderConfig { shuffle: false, pad: 0, drop_last: false, ..base };
    (Loader::new(Arc::new(train), norm.clone(), base), Loader::new(Arc::new(test), norm, test_cfg))
}

/// Runs (or resumes) training into `out`: `metrics.jsonl`, `config.toml`, `last.safetensors`, `best.safetensors`.
pub fn run(tr: &mut Trainer, train: &Loader, test: &Loader, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let cfg_text = toml::to_string(&tr.cfg).map_err(|e| Error::Config(e.to_string()))?;
    checkpoint::write_atomic(&out.join("config.toml"), cfg_text.as_bytes())?;
    eprintln!("config:\n{cfg_text}");
    let steps = match tr.cfg.run.max_steps_per_epoch {
        0 => train.batches(),
        m => m.min(train.batches()),
    };
    while tr.epoch < tr.cfg.optim.epochs {
        let t0 = Instant::now();
        let mut s = Stats::default();
        let mut lr = 0.0;
        for (i, b) in train.epoch(tr.epoch as u64).take(steps).enumerate() {
            lr = lr_at(tr.epoch as f64 + i as f64 / steps as f64, &tr.cfg.optim);
            let st = tr.step(&b, lr).map_err(|e| match e {
                Error::NonFiniteLoss { epoch, loss, .. } => Error::NonFiniteLoss { epoch, step: i, loss },
                e => e,
            })?;
            s.add(st);
            progress(tr, i + 1, steps, &s, t0);
        }
        let test_s = tr.evaluate(test)?;
        tr.epoch += 1;
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
        let line = json!({"epoch": tr.epoch, "train_loss": s.loss(), "train_acc": s.acc(), "test_loss": test_s.loss(), "test_acc": test_s.acc(), "lr": lr, "seconds": secs, "quantizers": quant});
        append_line(&out.join("metrics.jsonl"), &line.to_string())?;
        let best = test_s.acc() > tr.best_acc;
        tr.best_acc = tr.best_acc.max(test_s.acc());
        tr.save(&out.join("last.safetensors"))?;
        if best {
            std::fs::copy(out.join("last.safetensors"), out.join("best.tmp")).map_err(|e| Error::file(out, e))?;
            std::fs::rename(out.join("best.tmp"), out.join("best.safetensors")).map_err(|e| Error::file(out, e))?;
        }
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
