//! `lqnets train`, `lqnets eval` and `lqnets bench train`.
use anyhow::{Context, Result};
use clap::Args;
use lq_data::{Dataset, Loader, LoaderConfig, Normalize};
use lq_train::{trainer, TrainConfig, Trainer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `lqnets train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/); omitted: the defaults (ResNet-20 W2A2 on data/cifar10).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value, e.g. `--set optim.lr=0.05` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder (metrics.jsonl, config.toml, last/best checkpoints).
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in this folder from its last checkpoint (its config is used).
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// Runs `lqnets train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    let (mut tr, out) = match &a.resume {
        Some(dir) => {
            // The class count comes from the data: read the checkpoint's config first.
            let (_, meta) = lq_train::checkpoint::load(&dir.join("last.safetensors"))?;
            let (train, _) = trainer::load_data(&meta.config)?;
            let tr = Trainer::load(&dir.join("last.safetensors"), train.classes as i64, None)?;
            eprintln!("resuming {} after epoch {}", dir.display(), tr.epoch);
            (tr, dir.clone())
        }
        None => {
            let cfg = TrainConfig::load(a.config.as_deref(), &a.sets)?;
            let (train, _) = trainer::load_data(&cfg)?;
            (Trainer::new(cfg, train.classes as i64)?, a.out.clone())
        }
    };
    let (train, test) = trainer::load_data(&tr.cfg)?;
    let (tl, vl) = trainer::loaders(&tr.cfg, train, test);
    trainer::run(&mut tr, &tl, &vl, &out)?;
    eprintln!("done: best test accuracy {:.4}; checkpoints in {}", tr.best_acc, out.display());
    Ok(())
}

/// Arguments of `lqnets eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (.safetensors written by `lqnets train`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset folder (default: the one in the checkpoint's config).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Device to evaluate on (cpu, cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `lqnets eval`: test loss and accuracy of a checkpoint.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let (_, meta) = lq_train::checkpoint::load(&a.checkpoint)?;
    let mut cfg = meta.config;
    if let Some(d) = &a.data {
        cfg.data.dir = d.display().to_string();
    }
    let (train, test) = trainer::load_data(&cfg)?;
    let mut tr = Trainer::load(&a.checkpoint, train.classes as i64, Some(&a.device))?;
    tr.cfg.data = cfg.data.clone();
    let (_, vl) = trainer::loaders(&cfg, train, test);
    let s = tr.evaluate(&vl)?;
    println!("{}: {} images, loss {:.4}, top-1 accuracy {:.4}", a.checkpoint.display(), s.n, s.loss(), s.acc());
    Ok(())
}

/// Arguments of `lqnets bench train`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps per setting (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Settings as W/A pairs (32 = full precision).
    #[arg(long, default_value = "32/32,1/2,2/2,3/3,4/32")]
    settings: String,
    /// Model architecture (resnet or vgg_small).
    #[arg(long, default_value = "resnet")]
    arch: String,
    /// Device (cpu, cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `lqnets bench train`: median step time per W/A setting as a ratio to full precision in the same run,
/// img/s, time spent waiting for data, and peak resident memory.
pub fn bench(a: &BenchArgs) -> Result<()> {
    let n = a.batch * (a.steps + 2);
    let ds = Arc::new(Dataset {
        images: (0..n * 3072).map(|i| ((i * 2654435761usize) >> 13) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        c: 3,
        h: 32,
        w: 32,
        classes: 10,
    });
    let norm = Normalize::per_channel_of(&ds);
    let loader = Loader::new(
        ds,
        norm,
        LoaderConfig { batch: a.batch, shuffle: true, pad: 4, drop_last: true, workers: 2, seed: 1 },
    );
    let mut fp_median = None;
    println!(
        "{:<8} {:>12} {:>9} {:>9} {:>12} {:>12}",
        "W/A", "median ms", "x FP", "img/s", "data wait ms", "peak RSS MB"
    );
    for s in a.settings.split(',') {
        let (w, act) = s.split_once('/').with_context(|| format!("--settings: '{s}' is not W/A"))?;
        let sets = vec![
            format!("model.arch=\"{}\"", a.arch),
            format!("model.w_bits={w}"),
            format!("model.a_bits={act}"),
            format!("optim.batch={}", a.batch),
            format!("run.device=\"{}\"", a.device),
        ];
        let cfg = TrainConfig::load(None, &sets)?;
        let mut tr = Trainer::new(cfg, 10)?;
        let (mut times, mut wait) = (Vec::new(), 0.0);
        let mut it = loader.epoch(0);
        for i in 0..a.steps + 2 {
            let t = Instant::now();
            let b = it.next().context("bench loader ran dry")?;
            let waited = t.elapsed().as_secs_f64();
            let t = Instant::now();
            tr.step(&b, 0.01)?;
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64());
                wait += waited;
            }
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let base = *fp_median.get_or_insert(med);
        println!(
            "{:<8} {:>12.1} {:>9.3} {:>9.0} {:>12.2} {:>12.0}",
            s,
            med * 1e3,
            med / base,
            a.batch as f64 / med,
            wait * 1e3 / a.steps as f64,
            peak_rss_mb()
        );
    }
    Ok(())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
