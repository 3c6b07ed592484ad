//! `lqnets summary`: the network of a config, layer by layer.
use anyhow::Result;
use clap::Args;
use lq_train::{TrainConfig, Trainer};
use std::path::PathBuf;

/// Arguments of `lqnets summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// TOML config (see configs/); omitted: the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// Prints name, op, output shape, bits, parameters, MACs and deployed bytes per layer, then the totals.
pub fn run(a: &SummaryArgs) -> Result<()> {
    let cfg = TrainConfig::load(a.config.as_deref(), &a.sets)?;
    let classes = cfg.data.dataset.classes();
    let label = cfg.model.label();
    let q = cfg.quant;
    let tr = Trainer::new(cfg, classes as i64)?;
    let rows = tr.net.summary();
    println!("{label} W{}A{} ({:?}), input {:?}, {classes} classes", q.w_bits, q.a_bits, q.method, tr.net.input);
    println!(
        "{:<34} {:<16} {:>16} {:>6} {:>11} {:>14} {:>12}",
        "layer", "op", "output", "bits", "params", "MACs", "bytes"
    );
    for r in rows.iter().filter(|r| r.params > 0 || r.macs > 0) {
        let shape = format!("{}x{}x{}", r.shape[0], r.shape[1], r.shape[2]);
        println!(
            "{:<34} {:<16} {:>16} {:>6} {:>11} {:>14} {:>12}",
            r.name, r.op, shape, r.bits, r.params, r.macs, r.bytes
        );
    }
    let params: usize = rows.iter().map(|r| r.params).sum();
    let macs: u64 = rows.iter().map(|r| r.macs).sum();
    let bytes: usize = rows.iter().map(|r| r.bytes).sum();
    println!(
        "total: {:.2} M parameters, {:.3} G MACs per image; fp32 {:.2} MB -> deployed {:.2} MB ({:.1}x smaller)",
        params as f64 / 1e6,
        macs as f64 / 1e9,
        params as f64 * 4.0 / 1e6,
        bytes as f64 / 1e6,
        params as f64 * 4.0 / bytes.max(1) as f64
    );
    Ok(())
}
