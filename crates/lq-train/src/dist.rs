//! Data-parallel training on PyTorch's own collective engine: a c10d `ProcessGroupGloo` with a `TCPStore`
//! rendezvous, both inside `libtorch_cpu.so`, reached through the small C++ shim `csrc/dist.cpp`.
//!
//! One process per device (rank). The launcher (`lqnets train --nproc N`, or any torchrun-style launcher) sets
//! `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`; [`Group::from_env`] joins the group. Every rank holds the
//! same weights and bases: gradients are averaged over ranks, the activation quantizers' QEM moments are summed
//! (so every rank solves the same least squares on the whole global batch), and rank 0 alone writes files.
//! Collectives wait at most the group's timeout, so a dead or hung rank ends the others with an error.
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::RwLock;
use std::time::Duration;
use tch::{nn, Tensor};

extern "C" {
    fn lq_last_error() -> *const c_char;
    fn lqd_new(addr: *const c_char, port: c_int, rank: c_int, world: c_int, timeout_ms: i64) -> *mut c_void;
    fn lqd_free(g: *mut c_void);
    fn lqd_all_reduce(g: *mut c_void, t: *mut c_void, op: c_int) -> c_int;
    fn lqd_broadcast(g: *mut c_void, t: *mut c_void, root: c_int) -> c_int;
    fn lqd_ddp_new(
        g: *mut c_void,
        params: *const *mut c_void,
        n: c_int,
        bucket_bytes: i64,
        out: *mut *mut c_void,
    ) -> c_int;
    fn lqd_ddp_prepare(r: *mut c_void) -> c_int;
    fn lqd_ddp_free(r: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    fn lqd_sync_bn(
        g: *mut c_void,
        x: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        rm: *mut c_void,
        rv: *mut c_void,
        momentum: f64,
        eps: f64,
        out: *mut *mut c_void,
    ) -> c_int;
}

/// Default wait for the other ranks, at start-up and in every collective (`LQ_DIST_TIMEOUT` seconds overrides).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Σ over ranks.
    Sum = 0,
    /// Minimum over ranks.
    Min = 1,
    /// Maximum over ranks.
    Max = 2,
}

/// Where this process stands in a data-parallel job, read from the launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Global rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rank 0's address (the TCPStore server).
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Wait for the other ranks.
    pub timeout: Duration,
}

impl Launch {
    /// `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` (and `LQ_DIST_TIMEOUT` seconds); `None` without
    /// `WORLD_SIZE` or with a world of one.
    pub fn from_env() -> Result<Option<Launch>> {
        let var = |k: &str| std::env::var(k).ok();
        let num = |k: &str, v: &str| -> Result<u64> {
            v.parse().map_err(|_| Error::Dist(format!("environment variable {k} = {v:?} is not a whole number")))
        };
        let world = match var("WORLD_SIZE") {
            None => return Ok(None),
            Some(w) => num("WORLD_SIZE", &w)? as usize,
        };
        if world <= 1 {
            return Ok(None);
        }
        let need = |k: &str| var(k).ok_or_else(|| Error::Dist(format!("WORLD_SIZE = {world} but {k} is not set")));
        let rank = num("RANK", &need("RANK")?)? as usize;
        if rank >= world {
            return Err(Error::Dist(format!("RANK = {rank} is not below WORLD_SIZE = {world}")));
        }
        let port = num("MASTER_PORT", &need("MASTER_PORT")?)?;
        let port = u16::try_from(port).map_err(|_| Error::Dist(format!("MASTER_PORT = {port} is not a port")))?;
        let timeout = match var("LQ_DIST_TIMEOUT") {
            Some(s) => Duration::from_secs(num("LQ_DIST_TIMEOUT", &s)?.max(1)),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Launch { rank, world, addr: need("MASTER_ADDR")?, port, timeout }))
    }
}

/// A joined process group.
#[derive(Debug)]
pub struct Group {
    ptr: NonNull<c_void>,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
}

// SAFETY: the c10d process group may be used from any one thread at a time; collectives must be issued in the
// same order on every rank, which one owning thread (no `Sync`) guarantees.
unsafe impl Send for Group {}

/// The message of this thread's last failed C++ entry point.
pub(crate) fn cpp_error() -> String {
    // SAFETY: lq_last_error returns a pointer to this thread's NUL-terminated message, valid until the next call.
    unsafe { CStr::from_ptr(lq_last_error()) }.to_string_lossy().into_owned()
}

fn last_error(what: &str) -> Error {
    Error::Dist(format!("{what}: {}", cpp_error()))
}

/// A dense tensor the shim may read and write in place: contiguous (the collectives' requirement).
fn check_dense(t: &Tensor, what: &str) -> Result<()> {
    if t.is_contiguous() {
        Ok(())
    } else {
        Err(Error::Dist(format!("{what}: the tensor is not contiguous")))
    }
}

impl Group {
    /// Joins the group of `l` (waits up to `l.timeout` for every rank).
    pub fn join(l: &Launch) -> Result<Group> {
        let addr = CString::new(l.addr.as_str())
            .map_err(|_| Error::Dist(format!("MASTER_ADDR {:?} contains a NUL byte", l.addr)))?;
        let ms = l.timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: `addr` is NUL-terminated and outlives the call; the shim copies what it keeps.
        let p = unsafe { lqd_new(addr.as_ptr(), l.port as c_int, l.rank as c_int, l.world as c_int, ms) };
        let ptr = NonNull::new(p).ok_or_else(|| {
            last_error(&format!(
                "rank {} of {} could not join the group at {}:{} within {:?}",
                l.rank, l.world, l.addr, l.port, l.timeout
            ))
        })?;
        Ok(Group { ptr, rank: l.rank, world: l.world })
    }

    /// Joins the launcher's group when the environment names one of more than one rank.
    pub fn from_env() -> Result<Option<Group>> {
        Launch::from_env()?.map(|l| Group::join(&l)).transpose()
    }

    /// Reduces `t` in place over all ranks.
    pub fn all_reduce(&self, t: &Tensor, op: Op) -> Result<()> {
        check_dense(t, "all-reduce")?;
        // SAFETY: the group is alive; `t` is a live, contiguous tensor (tch's C_tensor is the shim's at::Tensor*).
        let rc = unsafe { lqd_all_reduce(self.ptr.as_ptr(), t.as_ptr() as *mut c_void, op as c_int) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_error(&format!("rank {}: all-reduce", self.rank)))
        }
    }

    /// Makes every rank's `t` equal to rank `root`'s, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        check_dense(t, "broadcast")?;
        // SAFETY: as in `all_reduce`.
        let rc = unsafe { lqd_broadcast(self.ptr.as_ptr(), t.as_ptr() as *mut c_void, root as c_int) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_error(&format!("rank {}: broadcast", self.rank)))
        }
    }

    /// Sums `v` over all ranks, in place, in f64 (one collective).
    pub fn sum_f64(&self, v: &mut [f64]) -> Result<()> {
        if v.is_empty() {
            return Ok(());
        }
        let t = Tensor::from_slice(v);
        self.all_reduce(&t, Op::Sum)?;
        t.f_copy_data(v, v.len())?;
        Ok(())
    }

    /// Fails on every rank unless all ranks hold the same `words` (config and code version at start-up).
    pub fn agree(&self, words: &[i64], what: &str) -> Result<()> {
        let lo = Tensor::from_slice(words);
        let hi = lo.copy();
        self.all_reduce(&lo, Op::Min)?;
        self.all_reduce(&hi, Op::Max)?;
        if lo.equal(&hi) {
            Ok(())
        } else {
            Err(Error::Dist(format!("the ranks disagree on {what}: every rank must run the same lqnets and config")))
        }
    }

    /// PyTorch DDP's gradient reducer over `vars` (trainable; forward order buckets best): from then on every backward
    /// preceded by [`Ddp::prepare`] leaves each variable's gradient averaged over the ranks, the all-reduce of
    /// 25 MiB buckets (the first 1 MiB) launched from autograd hooks while the backward still runs.
    pub fn ddp(&self, vars: &[&Tensor]) -> Result<Ddp> {
        const BUCKET_BYTES: i64 = 25 << 20;
        let ptrs: Vec<*mut c_void> = vars.iter().map(|v| v.as_ptr() as *mut c_void).collect();
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: the group is alive; `ptrs` holds live tensors (copied by the shim) for the call's duration.
        let rc = unsafe { lqd_ddp_new(self.ptr.as_ptr(), ptrs.as_ptr(), ptrs.len() as c_int, BUCKET_BYTES, &mut out) };
        match NonNull::new(out) {
            Some(ptr) if rc == 0 => Ok(Ddp { ptr }),
            _ => Err(last_error(&format!("rank {}: gradient reducer", self.rank))),
        }
    }

    /// Copies rank 0's BN running statistics (the variables without gradient) to all ranks.
    pub fn broadcast_buffers(&self, vs: &nn::VarStore) -> Result<()> {
        let mut vars: Vec<_> = vs.variables().into_iter().filter(|(_, v)| !v.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| vars.iter().try_for_each(|(_, v)| self.broadcast(v, 0)))
    }

    /// Copies rank 0's value of every variable of `vs` (weights, BN statistics) to all ranks.
    pub fn broadcast_vars(&self, vs: &nn::VarStore) -> Result<()> {
        let mut vars = vs.variables().into_iter().collect::<Vec<_>>();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, v) in &vars {
                self.broadcast(v, 0).map_err(|e| Error::Dist(format!("{e} (variable {name})")))?;
            }
            Ok(())
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        set_sync_bn(None);
        // SAFETY: `ptr` came from lqd_new; the shim keeps the group until process exit (autograd graphs of
        // synchronised BN may still point at it).
        unsafe { lqd_free(self.ptr.as_ptr()) }
    }
}

/// PyTorch DDP's gradient reducer ([`Group::ddp`]); it keeps its own reference to the process group.
#[derive(Debug)]
pub struct Ddp {
    ptr: NonNull<c_void>,
}

// SAFETY: used from the training thread only; the reducer synchronises with its autograd hooks itself.
unsafe impl Send for Ddp {}

impl Ddp {
    /// Arms the reducer for the next backward (call once per training step, before it).
    pub fn prepare(&self) -> Result<()> {
        // SAFETY: `ptr` came from lqd_ddp_new and is alive until drop.
        if unsafe { lqd_ddp_prepare(self.ptr.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(last_error("gradient reducer"))
        }
    }
}

impl Drop for Ddp {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from lqd_ddp_new and is freed once, here.
        unsafe { lqd_ddp_free(self.ptr.as_ptr()) }
    }
}

/// The group synchronised BatchNorm reduces over (process-wide: one process is one rank).
static SYNC_BN: RwLock<Option<usize>> = RwLock::new(None);

/// Makes training-mode BatchNorm synchronised over `g` (or per rank again with `None`). `g` must outlive its use:
/// [`Group`]'s drop clears it.
pub fn set_sync_bn(g: Option<&Group>) {
    *SYNC_BN.write().unwrap_or_else(|e| e.into_inner()) = g.map(|g| g.ptr.as_ptr() as usize);
}

/// BatchNorm `bn` (built by [`crate::layers::batch_norm`]) on `x`: synchronised over the ranks when training with [`set_sync_bn`] on, else libtorch's.
pub fn batch_norm(x: &Tensor, bn: &nn::BatchNorm, train: bool) -> Result<Tensor> {
    let group = *SYNC_BN.read().unwrap_or_else(|e| e.into_inner());
    let g = match group {
        Some(g) if train => g as *mut c_void,
        _ => return Ok(x.apply_t(bn, train)),
    };
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: the group pointer is alive (set_sync_bn is cleared before the group is freed); every tensor pointer
    // is a live tensor or null; on success the shim hands over a new at::Tensor*, which `from_ptr` owns.
    let rc = unsafe {
        lqd_sync_bn(
            g,
            x.as_ptr() as *mut c_void,
            ptr(bn.ws.as_ref()),
            ptr(bn.bs.as_ref()),
            ptr(Some(&bn.running_mean)),
            ptr(Some(&bn.running_var)),
            crate::layers::BN_MOMENTUM,
            crate::layers::BN_EPS,
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(last_error("synchronised BatchNorm"));
    }
    // SAFETY: `out` is a fresh at::Tensor* from the shim, owned by nobody else.
    Ok(unsafe { Tensor::from_ptr(out.cast()) }.to_kind(x.kind()))
}

/// A stable 64-bit digest (FNV-1a) of `bytes`, as i64 words for [`Group::agree`].
pub fn digest(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
