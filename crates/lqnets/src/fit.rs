//! `lqnets fit`: QEM on one tensor from a .npy file; prints bases, levels, thresholds and the quantization MSE.
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lq_quant::{baselines, quantize, CodeSet, Levels, QemState, DEFAULT_RIDGE};
use std::path::PathBuf;

/// What the tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Weights: one basis per output channel (first axis), codes in {−1,1}.
    Weight,
    /// Activations: one basis for the tensor, codes in {0,1}.
    Activation,
}

/// Which quantizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Learned (LQ-Nets QEM).
    Lq,
    /// Uniform k-bit grid (DoReFa-style), no fitting.
    Uniform,
    /// HWGQ: binary weights sign·mean|w|, 2-bit half-wave Gaussian activations.
    Hwgq,
}

/// Arguments of `lqnets fit`.
#[derive(Args, Debug)]
pub struct FitArgs {
    /// float32 .npy tensor (weights: first axis = output channel; 4-D weights are [C_out, C_in, kh, kw]).
    #[arg(long)]
    input: PathBuf,
    /// Bits K (1..=8).
    #[arg(long)]
    bits: u32,
    /// Tensor kind.
    #[arg(long, value_enum)]
    kind: Kind,
    /// QEM steps (encode + least squares + moving average) to run.
    #[arg(long, default_value_t = 1)]
    steps: u32,
    /// Quantizer.
    #[arg(long, value_enum, default_value = "lq")]
    method: Method,
    /// Print one JSON object with keys basis, levels, thresholds, mse.
    #[arg(long)]
    json: bool,
}

/// Runs `lqnets fit`.
pub fn run(a: &FitArgs) -> Result<()> {
    let t = lq_data::read_npy(&a.input)?;
    if t.data.is_empty() {
        bail!("{}: tensor is empty", a.input.display());
    }
    lq_quant::check_bits(a.bits).context("--bits")?;
    let rows = match a.kind {
        Kind::Weight => *t.shape.first().context("weights need at least one axis (output channels)")?,
        Kind::Activation => 1,
    };
    let levels = fitted_levels(a, &t.shape, &t.data, rows).with_context(|| format!("fitting {}", a.input.display()))?;
    // Per-layer bases (uniform, HWGQ) apply to every channel: report them per channel like LQ's.
    let levels: Vec<Levels> = if levels.len() == rows { levels } else { vec![levels[0].clone(); rows] };
    let mut y = vec![0.0; t.data.len()];
    quantize(&levels, &t.data, &mut y, None, false)?;
    let n = t.data.len() / rows;
    let mse: Vec<f64> = y
        .chunks(n)
        .zip(t.data.chunks(n))
        .map(|(q, x)| q.iter().zip(x).map(|(q, x)| (*q as f64 - *x as f64).powi(2)).sum::<f64>() / n as f64)
        .collect();
    print(a, &levels, &mse);
    Ok(())
}

/// The levels after fitting: one per output channel for LQ weights, else one.
fn fitted_levels(a: &FitArgs, shape: &[usize], x: &[f32], rows: usize) -> Result<Vec<Levels>> {
    let k = a.bits;
    let set = if a.kind == Kind::Weight { CodeSet::Signed } else { CodeSet::Binary };
    let fixed = |basis: Vec<f32>| -> Result<Vec<Levels>> { Ok(vec![Levels::from_basis(&basis, set)?]) };
    match (a.method, a.kind) {
        (Method::Uniform, Kind::Weight) => fixed(baselines::uniform_weight_basis(k, x)?),
        (Method::Uniform, Kind::Activation) => fixed(baselines::uniform_activation_basis(k)?),
        (Method::Hwgq, Kind::Weight) if k == 1 => fixed(baselines::hwgq_weight_basis(x)?),
        (Method::Hwgq, Kind::Activation) if k == 2 => Ok(vec![baselines::hwgq_activation()]),
        (Method::Hwgq, _) => {
            bail!("--method hwgq is 1-bit for weights and 2-bit for activations, got --bits {k}")
        }
        (Method::Lq, _) => {
            let mut st = match a.kind {
                // Official init uses n = kh·kw·C_out (spec §2.4); 2-D weights are FC layers with n = C_out.
                Kind::Weight => {
                    QemState::weight(k, rows, if shape.len() == 4 { shape[0] * shape[2] * shape[3] } else { shape[0] })?
                }
                Kind::Activation => QemState::activation(k)?,
            };
            for _ in 0..a.steps {
                let lv = st.levels()?;
                let mut y = vec![0.0; x.len()];
                let m = quantize(&lv, x, &mut y, None, true)?.expect("fit requested");
                st.update(&m, DEFAULT_RIDGE)?;
            }
            Ok(st.levels()?)
        }
    }
}

fn print(a: &FitArgs, levels: &[Levels], mse: &[f64]) {
    let basis: Vec<Vec<f32>> = levels.iter().map(Levels::basis).collect();
    let lv: Vec<&[f32]> = levels.iter().map(|l| l.levels()).collect();
    let th: Vec<&[f32]> = levels.iter().map(|l| l.thresholds()).collect();
    let per_channel = a.kind == Kind::Weight;
    if a.json {
        let j = if per_channel {
            serde_json::json!({ "basis": basis, "levels": lv, "thresholds": th, "mse": mse })
        } else {
            serde_json::json!({ "basis": basis[0], "levels": lv[0], "thresholds": th[0], "mse": mse[0] })
        };
        println!("{j}");
        return;
    }
    let total = mse.iter().sum::<f64>() / mse.len() as f64;
    println!("{:?} {:?} K={} steps={}: mean squared error {total:.6e}", a.method, a.kind, a.bits, a.steps);
    for (c, m) in mse.iter().enumerate() {
        let l = &levels[c];
        println!(
            "  [{c}] mse {m:.6e}  basis {:?}  levels {:?}  thresholds {:?}",
            l.basis(),
            l.levels(),
            l.thresholds()
        );
    }
}
