//! Quantizer modules on tensors: LQ (QEM-fitted), uniform and HWGQ, for weights and activations.
//!
//! Forward returns the quantized tensor with straight-through gradients (detach trick, spec §2.3): weights pass
//! the gradient unchanged, activations only where `x <= q_max`. In training mode the quantizer records the QEM
//! statistics of this forward and updates its basis right after it, so the forward of step t used `v_{t−1}`
//! (spec §2.2 point 4). On CPU the work is one fused `lq-quant` pass on the tensor memory; on other devices the
//! same result comes from tensor ops (compare with thresholds, gather levels, one-hot sums for the statistics).
use crate::error::{Error, Result};
use lq_quant::{baselines, quantize_on, quantize_relu_on, CodeSet, Levels, Moments, Parallel, QemState, DEFAULT_RIDGE};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which quantizer family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LQ-Nets learned quantizer (QEM).
    Lq,
    /// Uniform grid: weights per layer up to max|w|, activations DoReFa-style on [0, 1].
    Uniform,
    /// HWGQ: binary weights `sign·mean|w|`, 2-bit half-wave Gaussian activations.
    Hwgq,
}

/// QEM moments of a training forward: on the host (the fused CPU pass), or still on the device as a
/// `[rows, 2·levels + 1]` f64 tensor (per sorted level: counts, then sums; then Σx²) until [`gather_moments`]
/// brings every quantizer's to the host in one copy.
#[derive(Debug)]
enum Pending {
    Host(Vec<Moments>),
    Device(Tensor),
}

impl Clone for Pending {
    fn clone(&self) -> Self {
        match self {
            Pending::Host(m) => Pending::Host(m.clone()),
            Pending::Device(t) => Pending::Device(t.copy()),
        }
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Pending::Host(a), Pending::Host(b)) => a == b,
            (Pending::Device(a), Pending::Device(b)) => a.equal(b),
            _ => false,
        }
    }
}

/// A quantizer's state: its QEM state (bits, code set, bases, EMA) and the method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantizer {
    /// Layer name (the tensor's path in the model).
    pub name: String,
    /// Family.
    pub method: Method,
    /// Bases and their moving average (for fixed methods: the basis last used).
    pub state: QemState,
    /// Mean squared quantization error of the last training forward.
    #[serde(skip)]
    pub last_mse: f64,
    /// The levels and QEM moments of the last training forward, until [`Quantizer::fit`] uses them.
    #[serde(skip)]
    pending: Option<(Vec<Levels>, Pending)>,
}

impl Quantizer {
    /// Weight quantizer of a conv/linear with `c_out` output channels and `n_init = kh·kw·C_out` (spec §2.4).
    pub fn weight(name: &str, method: Method, bits: u32, c_out: usize, n_init: usize) -> Result<Self> {
        let e = |source| Error::Quant { layer: name.into(), source };
        let state = match method {
            Method::Lq => QemState::weight(bits, c_out, n_init).map_err(e)?,
            // Per-layer bases, derived from the weights at every forward.
            _ => QemState::with_basis(bits, CodeSet::Signed, vec![1.0; bits as usize]),
        };
        if method == Method::Hwgq && bits != 1 {
            return Err(Error::Config(format!("{name}: HWGQ weights are 1-bit, got {bits}")));
        }
        Ok(Quantizer { name: name.into(), method, state, last_mse: 0.0, pending: None })
    }

    /// Activation quantizer (one basis per layer).
    pub fn activation(name: &str, method: Method, bits: u32) -> Result<Self> {
        let e = |source| Error::Quant { layer: name.into(), source };
        let state = match method {
            Method::Lq => QemState::activation(bits).map_err(e)?,
            Method::Uniform => {
                QemState::with_basis(bits, CodeSet::Binary, baselines::uniform_activation_basis(bits).map_err(e)?)
            }
            Method::Hwgq if bits == 2 => {
                QemState::with_basis(2, CodeSet::Binary, vec![baselines::HWGQ_STEP, 2.0 * baselines::HWGQ_STEP])
            }
            Method::Hwgq => return Err(Error::Config(format!("{name}: HWGQ activations are 2-bit, got {bits}"))),
        };
        Ok(Quantizer { name: name.into(), method, state, last_mse: 0.0, pending: None })
    }

    fn err(&self, source: lq_quant::Error) -> Error {
        Error::Quant { layer: self.name.clone(), source }
    }

    /// The levels to use now: one per channel (LQ weights) or one per layer (data-derived for uniform/HWGQ weights).
    fn levels(&self, w_host: Option<&[f32]>) -> Result<Vec<Levels>> {
        let fixed =
            |b: lq_quant::Result<Vec<f32>>| b.and_then(|b| Levels::from_basis(&b, CodeSet::Signed)).map(|l| vec![l]);
        let r = match (self.method, self.state.code_set, w_host) {
            (Method::Hwgq, CodeSet::Binary, _) => Ok(vec![baselines::hwgq_activation()]),
            (Method::Hwgq, CodeSet::Signed, Some(w)) => fixed(baselines::hwgq_weight_basis(w)),
            (Method::Uniform, CodeSet::Signed, Some(w)) => fixed(baselines::uniform_weight_basis(self.state.bits, w)),
            _ => self.state.levels(),
        };
        r.map_err(|e| self.err(e))
    }

    /// Quantizes a weight tensor `[C_out, ...]` with STE. `train` runs the QEM step (LQ only).
    pub fn forward_weight(&mut self, w: &Tensor, train: bool) -> Result<Tensor> {
        let q = self.quantize(w, None, train)?;
        Ok(w + (q - w).detach())
    }

    /// Quantizes a non-negative activation tensor with the clipped STE: value Q(x), gradient `1[x <= q_max]`.
    pub fn forward_activation(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let q_max = self.levels(None)?[0].max_level() as f64;
        // clamp_max passes the gradient where x <= q_max (ties included, like TF's `minimum`): one pass instead of
        // building a mask.
        let xc = x.clamp_max(q_max);
        if x.device() == Device::Cpu && x.kind() == Kind::Float && xc.is_contiguous() {
            // The fused pass writes Q(x) straight over the clamp's output: the value is Q(x), the gradient stays
            // clamp_max's (its backward reads only x), and the two extra element-wise passes of the STE are gone.
            let _written = self.quantize(x, Some(&xc), train)?;
            return Ok(xc);
        }
        let q = self.quantize(x, None, train)?;
        Ok(&xc + (q - &xc).detach())
    }

    /// `Q(relu(x))` with the clipped STE, gradient `1[0 < x <= q_max]`: the BN → ReLU → Q unit from the BN output.
    /// On the CPU one fused pass (ReLU inside) makes the values and statistics and one libtorch autograd function
    /// (`csrc/ste.cpp`) the one-pass backward; elsewhere ReLU then [`Quantizer::forward_activation`].
    pub fn forward_relu_activation(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !(x.device() == Device::Cpu && x.kind() == Kind::Float) || x.numel() == 0 {
            return self.forward_activation(&x.relu(), train);
        }
        let q_max = self.levels(None)?[0].max_level() as f64;
        let q = self.quantize_with(x, None, train, true)?;
        act_ste(x, &q, q_max)
    }

    /// The quantized values (no gradient), updating the basis from this tensor when training an LQ quantizer. On
    /// the CPU they are written into `out` when given: a fresh contiguous f32 tensor of x's size that nothing has
    /// read yet (the caller's clamp output).
    fn quantize(&mut self, x: &Tensor, out: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.quantize_with(x, out, train, false)
    }

    /// [`Quantizer::quantize`] of `relu(x)` when `relu` (CPU f32 only).
    fn quantize_with(&mut self, x: &Tensor, out: Option<&Tensor>, train: bool, relu: bool) -> Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x.detach().zeros_like());
        }
        let rows = if self.state.code_set == CodeSet::Signed { x.size()[0] as usize } else { 1 };
        let xd = x.detach().contiguous();
        let on_cpu = x.device() == Device::Cpu && x.kind() == Kind::Float;
        let per_layer_weights = self.state.code_set == CodeSet::Signed && self.method != Method::Lq;
        let host_copy = (!on_cpu && per_layer_weights)
            .then(|| Vec::<f32>::try_from(&xd.flatten(0, -1).to_device(Device::Cpu)))
            .transpose()?;
        // SAFETY: `xd` is a non-empty contiguous f32 CPU tensor that outlives `host`, and nothing writes to it meanwhile.
        let host: Option<&[f32]> = if on_cpu {
            Some(unsafe { std::slice::from_raw_parts(xd.data_ptr() as *const f32, xd.numel()) })
        } else {
            host_copy.as_deref()
        };
        let mut levels = self.levels(host)?;
        if levels.len() == 1 && rows > 1 {
            levels = vec![levels[0].clone(); rows];
        }
        let (q, pending) = if on_cpu {
            let q = match out {
                Some(o) if o.numel() == xd.numel() && o.is_contiguous() && o.kind() == Kind::Float => o.shallow_clone(),
                _ => Tensor::empty(x.size().as_slice(), (Kind::Float, Device::Cpu)),
            };
            // SAFETY: `q` is a contiguous f32 CPU tensor of x's number of elements that does not alias `xd` (a fresh
            // tensor, or the caller's fresh clamp output), and nothing else reads or writes it meanwhile.
            let y = unsafe { std::slice::from_raw_parts_mut(q.data_ptr() as *mut f32, q.numel()) };
            let xs = host.expect("cpu input");
            let m = if relu {
                quantize_relu_on(EXEC, &levels, xs, y, train)
            } else {
                quantize_on(EXEC, &levels, xs, y, None, train)
            }
            .map_err(|e| self.err(e))?;
            (q, m.map(Pending::Host))
        } else {
            let (q, stats) = tensor_quantize(&xd, &levels, train)?;
            (q, stats.map(Pending::Device))
        };
        if let Some(p) = pending {
            self.pending = Some((levels, p));
        }
        Ok(q)
    }

    /// The host moments of the last training forward, not yet used by [`Quantizer::fit`] (one per basis row),
    /// after [`gather_moments`]; zero moments at the current levels when this rank recorded none (e.g. an empty
    /// data-parallel shard), so every rank reduces the same layout.
    pub fn pending_moments_or_zero(&mut self) -> Result<&mut [Moments]> {
        if !matches!(self.pending, Some((_, Pending::Host(_)))) {
            let levels = self.levels(None)?;
            let m = levels.iter().map(|l| Moments::new(l.bits())).collect();
            self.pending = Some((levels, Pending::Host(m)));
        }
        match &mut self.pending {
            Some((_, Pending::Host(m))) => Ok(m.as_mut_slice()),
            _ => Err(Error::Config(format!("quantizer {}: moments are still on the device", self.name))),
        }
    }

    /// The QEM phase: keeps the error of the last training forward for the metrics and updates the basis from its
    /// moments (LQ), or keeps the per-layer basis actually used (uniform/HWGQ, for checkpoints and export). Does
    /// nothing without a training forward since the last call.
    pub fn fit(&mut self) -> Result<()> {
        let m = match self.pending.take() {
            None => return Ok(()),
            Some((levels, Pending::Host(m))) => (levels, m),
            Some((levels, Pending::Device(t))) => {
                let v = Vec::<f64>::try_from(&t.flatten(0, -1).to_device(Device::Cpu))?;
                let m = moments_from_stats(&levels, &v);
                (levels, m)
            }
        };
        let (levels, m) = m;
        let n: u64 = m.iter().map(Moments::n).sum();
        let sse: f64 = m.iter().zip(&levels).map(|(m, l)| m.mse(&l.basis(), l.code_set()) * m.n() as f64).sum();
        self.last_mse = sse / n.max(1) as f64;
        if self.method == Method::Lq {
            self.state.update(&m, DEFAULT_RIDGE).map_err(|e| self.err(e))?;
        } else {
            self.state.basis = levels[0].basis();
        }
        Ok(())
    }
}

extern "C" {
    #[cfg(lq_omp)]
    fn lqs_parallel_for(n: i64, f: extern "C" fn(*const std::ffi::c_void, i64), ctx: *const std::ffi::c_void) -> i32;
    fn lqs_act_ste(x: *mut std::ffi::c_void, q: *mut std::ffi::c_void, hi: f64, out: *mut *mut std::ffi::c_void)
        -> i32;
}

/// The fused pass's work items on libtorch's OpenMP threads (`at::parallel_for`). On rayon's pool they ran while
/// OpenMP's idle threads spun on the same cores, which cost more than the pass itself.
#[cfg(lq_omp)]
pub struct Omp;

/// Where the CPU training path runs the fused pass: [`Omp`] where the shim was built with OpenMP (`build.rs`),
/// else rayon.
#[cfg(lq_omp)]
pub const EXEC: &dyn Parallel = &Omp;
/// Where the CPU training path runs the fused pass: rayon (the shim was built without OpenMP, see `build.rs`).
#[cfg(not(lq_omp))]
pub const EXEC: &dyn Parallel = &lq_quant::Rayon;

#[cfg(lq_omp)]
impl Parallel for Omp {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        type Job<'a> = &'a (dyn Fn(usize) + Sync);
        extern "C" fn call(ctx: *const std::ffi::c_void, i: i64) {
            // SAFETY: `ctx` is the `Job` below, alive until `lqs_parallel_for` returns.
            let f = unsafe { *(ctx as *const Job) };
            // A panic must not unwind into C++: the item then stays unrun and lq-quant runs it again on the
            // caller's thread, where the panic unwinds normally.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i as usize)));
        }
        let job: Job = f;
        // SAFETY: `call` matches the shim's callback type and `job` outlives the call. An error (a C++ exception,
        // kept by the guard) leaves items unrun, which lq-quant runs afterwards.
        let _ = unsafe { lqs_parallel_for(n as i64, call, &job as *const Job as *const _) };
    }
}

/// A tensor with `q`'s values whose gradient flows to `x` as `dy·1[0 < x <= hi]` (one pass in the backward).
fn act_ste(x: &Tensor, q: &Tensor, hi: f64) -> Result<Tensor> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: `x` and `q` are live tensors (tch's C_tensor is the shim's at::Tensor*); on success the shim hands
    // over a new at::Tensor*, which `from_ptr` owns; on failure it leaves `out` null and keeps a message.
    let rc = unsafe { lqs_act_ste(x.as_ptr() as *mut _, q.as_ptr() as *mut _, hi, &mut out) };
    if rc != 0 || out.is_null() {
        let msg = crate::dist::cpp_error();
        return Err(Error::Torch(tch::TchError::Torch(format!("activation STE: {msg}"))));
    }
    // SAFETY: as above.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Brings every quantizer's device-side moments to the host together with `extra` (e.g. the step's loss and
/// accuracy counts, on the same device) in **one** copy: the step's only host synchronisation. Returns `extra`'s
/// values; afterwards [`Quantizer::pending_moments`] and [`Quantizer::fit`] see host moments.
pub fn gather_moments(qs: &mut [&mut Quantizer], extra: &Tensor) -> Result<Vec<f64>> {
    let mut parts = vec![extra.flatten(0, -1).to_kind(Kind::Double)];
    for q in qs.iter() {
        if let Some((_, Pending::Device(t))) = &q.pending {
            parts.push(t.flatten(0, -1).to_device(extra.device()));
        }
    }
    let host = Vec::<f64>::try_from(&Tensor::cat(&parts, 0).to_device(Device::Cpu))?;
    let k = extra.numel();
    let mut off = k;
    for q in qs.iter_mut() {
        if let Some((levels, Pending::Device(t))) = &q.pending {
            let n = t.numel();
            let m = moments_from_stats(levels, &host[off..off + n]);
            off += n;
            q.pending = Some((levels.clone(), Pending::Host(m)));
        }
    }
    Ok(host[..k].to_vec())
}

/// Moments from the `[rows, 2·levels + 1]` statistics of [`tensor_quantize`] (per sorted level: counts, sums;
/// then Σx²), mapped from sorted levels to codes.
pub fn moments_from_stats(levels: &[Levels], v: &[f64]) -> Vec<Moments> {
    let nl = levels.first().map_or(0, |l| l.levels().len());
    levels
        .iter()
        .zip(v.chunks_exact(2 * nl + 1))
        .map(|(l, row)| {
            let mut m = Moments::new(l.bits());
            for s in 0..nl {
                let c = l.codes()[s] as usize;
                m.count[c] += row[s] as u64;
                m.sum[c] += row[nl + s];
            }
            m.sum_sq = row[2 * nl];
            m
        })
        .collect()
}

/// Quantization with tensor ops (any device; the CPU uses the fused pass instead and tests compare the two):
/// index = number of thresholds below (`bucketize` on each row's sorted thresholds), value = gathered level. With
/// `stats`, the QEM statistics stay on the device: a `[rows, 2·levels + 1]` f64 tensor of per-level counts and sums
/// (`scatter_add` on the indices) and Σx² (see [`moments_from_stats`]); nothing is copied to the host.
pub fn tensor_quantize(x: &Tensor, levels: &[Levels], stats: bool) -> Result<(Tensor, Option<Tensor>)> {
    let dev = x.device();
    let rows = levels.len() as i64;
    let flat = x.reshape([rows, -1]);
    let nl = levels[0].levels().len() as i64;
    // One upload for both tables: thresholds (nl − 1) then levels (nl), per row.
    let tab: Vec<f32> = levels.iter().flat_map(|l| l.thresholds().iter().chain(l.levels()).copied()).collect();
    let tab = Tensor::from_slice(&tab).view([rows, 2 * nl - 1]).to_device(dev);
    let (thr, lv) = (tab.narrow(1, 0, nl - 1).contiguous(), tab.narrow(1, nl - 1, nl));
    // right = false: the number of thresholds strictly below x (a value on a threshold takes the lower level).
    let idx = flat.contiguous().searchsorted(&thr, false, false, "left", None::<Tensor>);
    let q = lv.gather(1, &idx, false).reshape(x.size().as_slice());
    if !stats {
        return Ok((q, None));
    }
    let xd = flat.to_kind(Kind::Double);
    let opts = (Kind::Double, dev);
    let count = Tensor::zeros([rows, nl], opts).scatter_add(1, &idx, &xd.ones_like());
    let sum = Tensor::zeros([rows, nl], opts).scatter_add(1, &idx, &xd);
    let sq = (&xd * &xd).sum_dim_intlist(1, true, Kind::Double);
    Ok((q, Some(Tensor::cat(&[count, sum, sq], 1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lq_quant::quantize;

    /// The executor runs every item exactly once, on more than one thread where libtorch has more (a shim
    /// compiled without OpenMP ran them all on the caller), and a panicking item neither aborts nor stops the others.
    #[test]
    fn the_training_executor_runs_every_item_once_in_parallel() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let runs: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        EXEC.run(runs.len(), &|i| {
            runs[i].fetch_add(1, Ordering::Relaxed);
            threads.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_micros(20));
        });
        assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        let n = threads.lock().unwrap().len();
        if tch::get_num_threads() > 1 {
            assert!(n > 1, "{} libtorch threads, items ran on {n}", tch::get_num_threads());
        }
        // Rayon resumes an item's panic on the caller; the OpenMP executor must not let one unwind into C++.
        #[cfg(lq_omp)]
        {
            let done = AtomicU32::new(0);
            EXEC.run(10, &|i| {
                if i == 3 {
                    panic!("item 3");
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(done.load(Ordering::Relaxed), 9);
        }
    }

    /// The BN → ReLU → Q unit on the CPU (ReLU inside the fused pass, one-pass STE backward in `csrc/ste.cpp`) gives
    /// ReLU then the clipped STE exactly: values, gradients (0 and q_max included: ReLU drops x = 0, the STE keeps
    /// x = q_max) and the fitted basis.
    #[test]
    fn relu_unit_equals_relu_then_clipped_ste() {
        let mut a = Quantizer::activation("a", Method::Lq, 2).unwrap();
        let mut b = a.clone();
        let q_max = a.levels(None).unwrap()[0].max_level();
        let mut v: Vec<f32> = (0..5000).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 1.5) * q_max).collect();
        v[..4].copy_from_slice(&[0.0, q_max, -q_max, 2.0 * q_max]);
        let w = Tensor::from_slice(&(0..v.len()).map(|i| (i % 13) as f32 - 6.0).collect::<Vec<_>>());
        let run = |q: &mut Quantizer, fused: bool| {
            let x = Tensor::from_slice(&v).set_requires_grad(true);
            let y = if fused { q.forward_relu_activation(&x, true) } else { q.forward_activation(&x.relu(), true) };
            let y = y.unwrap();
            (&y * &w).sum(Kind::Float).backward();
            q.fit().unwrap();
            (Vec::<f32>::try_from(&y.detach()).unwrap(), Vec::<f32>::try_from(&x.grad()).unwrap())
        };
        let (ya, ga) = run(&mut a, true);
        let (yb, gb) = run(&mut b, false);
        assert_eq!(ya, yb);
        assert_eq!(ga, gb);
        assert_eq!(&ga[..4], &[0.0, Vec::<f32>::try_from(&w).unwrap()[1], 0.0, 0.0]);
        assert_eq!(a.state.basis, b.state.basis);
    }

    /// The tensor-op path (used on CUDA) gives the fused CPU pass's values and statistics.
    #[test]
    fn tensor_path_equals_fused_pass() {
        for (set, k, rows) in [(CodeSet::Signed, 2u32, 3usize), (CodeSet::Binary, 3, 1), (CodeSet::Signed, 4, 2)] {
            let n = 257;
            let x: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 7919 % 1000) as f32 / 400.0 - 1.0) * if set == CodeSet::Binary { -1.0 } else { 1.0 })
                .map(|v| if set == CodeSet::Binary { v.abs() } else { v })
                .collect();
            let levels: Vec<Levels> = (0..rows)
                .map(|r| {
                    Levels::from_basis(&(0..k).map(|j| 0.1 * (r + 1) as f32 * (1 << j) as f32).collect::<Vec<_>>(), set)
                        .unwrap()
                })
                .collect();
            let mut y = vec![0.0; x.len()];
            let m = quantize(&levels, &x, &mut y, None, true).unwrap().unwrap();
            let (q, tm) =
                tensor_quantize(&Tensor::from_slice(&x).view([rows as i64, n as i64]), &levels, true).unwrap();
            assert_eq!(Vec::<f32>::try_from(&q.flatten(0, -1)).unwrap(), y);
            let tm = moments_from_stats(&levels, &Vec::<f64>::try_from(&tm.unwrap().flatten(0, -1)).unwrap());
            for (a, b) in m.iter().zip(&tm) {
                assert_eq!(a.count, b.count);
                assert!(a.sum.iter().zip(&b.sum).all(|(p, q)| (p - q).abs() < 1e-9 * (1.0 + p.abs())));
                assert!((a.sum_sq - b.sum_sq).abs() < 1e-9 * (1.0 + a.sum_sq));
            }
        }
    }
}
