//! SGD with momentum (optionally Nesterov), weight decay on kernels only, and the learning-rate schedules.
use crate::config::Schedule;
use tch::Tensor;

/// The learning rate at a fractional `epoch` (pure; unit-tested against the supplement's milestones).
/// `multistep`: `lr · gamma^(number of milestones ≤ epoch)`; `poly`: linear from `lr` to `final_lr` over `epochs`.
pub fn lr_at(epoch: f64, cfg: &crate::config::OptimConfig) -> f64 {
    match cfg.schedule {
        Schedule::Poly => cfg.final_lr + (cfg.lr - cfg.final_lr) * (1.0 - epoch / cfg.epochs as f64).max(0.0),
        Schedule::Multistep => {
            cfg.lr * cfg.gamma.powi(cfg.milestones.iter().filter(|&&m| epoch >= m as f64).count() as i32)
        }
    }
}

/// One parameter with its momentum buffer.
#[derive(Debug)]
pub struct Param {
    /// Name (checkpoint key).
    pub name: String,
    /// The variable.
    pub var: Tensor,
    /// Momentum buffer (same shape).
    pub buf: Tensor,
    /// Whether weight decay applies (conv/FC kernels).
    pub decay: bool,
}

/// SGD with momentum as in TF's MomentumOptimizer / PyTorch without dampening:
/// `g ← ∇ + wd·w` (kernels), `buf ← μ·buf + g`, `w ← w − lr·(g + μ·buf if nesterov else buf)`.
#[derive(Debug)]
pub struct Sgd {
    /// Parameters, sorted by name.
    pub params: Vec<Param>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    /// Over the trainable variables of `vs`; weight decay applies to names ending in `.w` or `fc.weight`.
    pub fn new(vs: &tch::nn::VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let mut params: Vec<Param> = vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(name, var)| Param {
                decay: name.ends_with(".w") || name.ends_with("fc.weight"),
                buf: var.zeros_like(),
                name,
                var,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Sgd { params, momentum, nesterov, weight_decay }
    }

    /// Applies one update with learning rate `lr` and clears the gradients.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                // Out of place: the gradient tensor itself must stay the plain loss gradient.
                let g = if p.decay && self.weight_decay > 0.0 { g + &p.var * self.weight_decay } else { g };
                let _ = p.buf.g_mul_scalar_(self.momentum).g_add_(&g);
                let upd = if self.nesterov { g + &p.buf * self.momentum } else { p.buf.shallow_clone() };
                let _ = p.var.g_sub_(&(upd * lr));
                let _ = p.var.grad().zero_();
            }
        });
    }
}
