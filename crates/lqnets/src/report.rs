//! `lqnets stats` (quantizer statistics and the supplement's Figure I from a checkpoint) and `lqnets report`
//! (tables and the HTML dashboard over run folders); the drawing and the tables live in `lq-report`.
use crate::train::open_checkpoint;
use anyhow::{bail, Context, Result};
use clap::Args;
use lq_report::{ActivationCollector, FigureOptions, Format, LayerStats, Options, Run, StatsFile};
use lq_train::graph::Layer;
use lq_train::trainer;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::Tensor;

/// Arguments of `lqnets stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Checkpoint written by `lqnets train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset folder (default: the checkpoint's); its test split feeds the activations.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Quantized convs to show, by name (default: the first, middle and last).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<String>,
    /// Test batches whose activations are collected.
    #[arg(long, default_value_t = 4)]
    batches: usize,
    /// Output folder: stats.json, figure-1.png/.svg and one PNG/SVG per layer.
    #[arg(long)]
    out: PathBuf,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.detach().to_device(tch::Device::Cpu).contiguous().flatten(0, -1))?)
}

/// Runs `lqnets stats`: for each chosen conv, its weights and the activations entering it, before and after
/// quantization, with the learned / initial / uniform quantizers' errors.
pub fn stats(a: &StatsArgs) -> Result<()> {
    let (mut tr, info) = open_checkpoint(&a.checkpoint, a.data.as_deref(), "cpu")?;
    let g = &tr.net;
    // Quantized convs with the quantized unit feeding them (if any).
    let convs: Vec<(usize, Option<usize>)> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(&n.layer, Layer::Conv(c) if c.quant.is_some()))
        .map(|(i, n)| {
            let feeder =
                n.inputs[0].checked_sub(1).filter(|&p| matches!(&g.nodes[p].layer, Layer::Act(u) if u.quant.is_some()));
            (i, feeder)
        })
        .collect();
    if convs.is_empty() {
        bail!("{}: the network has no quantized convs", a.checkpoint.display());
    }
    let chosen: Vec<(usize, Option<usize>)> = if a.layers.is_empty() {
        let mut c = vec![convs[0], convs[convs.len() / 2], convs[convs.len() - 1]];
        c.dedup();
        c
    } else {
        a.layers
            .iter()
            .map(|name| {
                convs.iter().find(|(i, _)| g.nodes[*i].name == *name).copied().with_context(|| {
                    let names: Vec<&str> = convs.iter().map(|(i, _)| g.nodes[*i].name.as_str()).collect();
                    format!("--layers: no quantized conv '{name}' (there are: {})", names.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let opts = Options::default();
    let mut layers = Vec::new();
    let mut collectors = BTreeMap::new();
    for &(i, feeder) in &chosen {
        let Layer::Conv(c) = &g.nodes[i].layer else { unreachable!("chosen from convs") };
        let q = c.quant.as_ref().expect("quantized conv");
        let k = c.w.size()[2] as usize;
        layers.push(LayerStats::weights(&q.name, &q.state, k * k, &host(&c.w)?, &opts)?);
        if let Some(p) = feeder {
            let Layer::Act(u) = &g.nodes[p].layer else { unreachable!("feeder is a unit") };
            let q = u.quant.as_ref().expect("quantized unit");
            let range = ActivationCollector::level_range(&q.state);
            collectors.entry(q.name.clone()).or_insert(ActivationCollector::new(&q.name, &q.state, range, &opts)?);
        }
    }
    let test = trainer::load_split(&tr.cfg, false)?;
    if [test.c, test.h, test.w] != info.input {
        bail!(
            "{}: test images are {}x{}x{}, the network takes {:?}",
            tr.cfg.data.dir,
            test.c,
            test.h,
            test.w,
            info.input
        );
    }
    let loader = trainer::test_loader(&tr.cfg, test, info.norm()?);
    let mut seen = 0;
    for b in loader.epoch(0).take(a.batches) {
        let b = b?;
        let (x, _) = b.tensors(tch::Device::Cpu);
        let mut failed = None;
        let _logits = tch::no_grad(|| {
            tr.net.forward_probed(&x, &mut |q, h| {
                if let Some(c) = collectors.get_mut(&q.name) {
                    match host(h) {
                        Ok(v) => c.push(&v),
                        Err(e) => failed = Some(e),
                    }
                }
            })
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        seen += b.labels().len();
    }
    // Activations in the order of the chosen convs.
    for &(_, feeder) in &chosen {
        if let Some(p) = feeder {
            let Layer::Act(u) = &tr.net.nodes[p].layer else { unreachable!("feeder is a unit") };
            if let Some(c) = collectors.remove(&u.quant.as_ref().expect("quantized unit").name) {
                layers.push(c.finish()?);
            }
        }
    }
    let q = tr.cfg.quant;
    let file = StatsFile {
        model: tr.cfg.model.label(),
        w_bits: q.w_bits,
        a_bits: q.a_bits,
        source: format!("{}, {seen} test images", a.checkpoint.display()),
        layers,
    };
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    file.write(&a.out)?;
    let figures = lq_report::write_figures(&file, &a.out, &FigureOptions::default())?;
    println!("{:<28} {:<10} {:>12} {:>12} {:>12}  (MSE)", "quantizer", "kind", "learned", "initial", "uniform");
    for l in &file.layers {
        println!(
            "{:<28} {:<10} {:>12.4e} {:>12.4e} {:>12.4e}",
            l.name,
            format!("{:?}", l.kind),
            l.mse.learned,
            l.mse.initial,
            l.mse.uniform
        );
    }
    println!("wrote stats.json and {} figures in {}", figures.len(), a.out.display());
    Ok(())
}

/// Arguments of `lqnets report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folders (each with config.toml and metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// md, csv or html.
    #[arg(long, default_value = "md")]
    format: String,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `lqnets report`.
pub fn report(a: &ReportArgs) -> Result<()> {
    let fmt: Format = a.format.parse().map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let runs = a.runs.iter().map(|d| Run::read(d)).collect::<std::result::Result<Vec<_>, _>>()?;
    match &a.out {
        Some(p) => {
            lq_report::write_report(&runs, fmt, p)?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{}", lq_report::render(&runs, fmt)),
    }
    Ok(())
}
