//! Where inference time goes, per step of a [`crate::Model`] and per phase of a quantized conv: the input map
//! (quantize + operand layout), the kernel (binary products with the fused LQ epilogue), full-precision layers
//! (conv0, FC) and the framework glue (element-wise ops, pools, copies, allocation). Off unless
//! [`crate::Model::profile`] runs: then each phase adds its wall time to a per-thread accumulator.
use std::cell::Cell;
use std::time::Instant;

/// A phase of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A quantized conv's input map: quantization and the kernel's operand (table offsets, im2col).
    Input = 0,
    /// A quantized conv's kernel with its epilogue.
    Kernel = 1,
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static ACC: Cell<[f64; 2]> = const { Cell::new([0.0; 2]) };
}

/// Runs `f`, adding its wall time to `phase` when profiling is on for this thread.
#[inline]
pub(crate) fn time<R>(phase: Phase, f: impl FnOnce() -> R) -> R {
    if !ON.with(Cell::get) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    ACC.with(|a| {
        let mut v = a.get();
        v[phase as usize] += dt;
        a.set(v);
    });
    r
}

/// Switches profiling on or off for this thread and returns the phase totals so far, resetting them.
pub(crate) fn switch(on: bool) -> [f64; 2] {
    ON.with(|o| o.set(on));
    ACC.with(|a| a.replace([0.0; 2]))
}

/// The time of one step of a network, summed over the profiled images.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTime {
    /// The op's label (kind and name).
    pub label: String,
    /// Category: `qconv`, `fp` (full-precision conv / linear) or `glue`.
    pub kind: &'static str,
    /// Seconds in the input map of a quantized conv.
    pub input: f64,
    /// Seconds in the kernel and its epilogue.
    pub kernel: f64,
    /// Seconds in the rest of the step.
    pub other: f64,
}

impl StepTime {
    /// All seconds of the step.
    pub fn total(&self) -> f64 {
        self.input + self.kernel + self.other
    }
}
