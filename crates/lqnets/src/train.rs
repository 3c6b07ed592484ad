//! `lqnets train`, `lqnets eval` and `lqnets bench train`.
use anyhow::{bail, Context, Result};
use clap::Args;
use lq_data::{Dataset, Loader, LoaderConfig, Normalize};
use lq_train::checkpoint::DataInfo;
use lq_train::{trainer, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `lqnets train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/); omitted: the defaults (ResNet-20 W2A2 on data/cifar10).
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Override a config value, e.g. `--set optim.lr=0.05` (repeatable). With --resume only optim.epochs,
    /// data.dir, data.workers and run.device.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder (metrics.jsonl, config.toml, last/best checkpoints).
    #[arg(long, default_value = "runs/latest", conflicts_with = "resume")]
    out: PathBuf,
    /// Continue the run in this folder from its last checkpoint, with its config.
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// Runs `lqnets train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    let (mut tr, out) = match &a.resume {
        Some(dir) => {
            let tr = Trainer::resume(dir, &a.sets)?;
            eprintln!("resuming {} after epoch {}", dir.display(), tr.epoch);
            (tr, dir.clone())
        }
        None => {
            let cfg = TrainConfig::load(a.config.as_deref(), &a.sets)?;
            let train = trainer::load_split(&cfg, true)?;
            (Trainer::new(cfg, train.classes as i64)?, a.out.clone())
        }
    };
    let (train, test) = trainer::load_data(&tr.cfg)?;
    let (tl, vl) = trainer::loaders(&tr.cfg, train, test);
    trainer::run(&mut tr, &tl, &vl, &out)?;
    eprintln!("done: best test accuracy {:.4}; checkpoints in {}", tr.best_acc, out.display());
    Ok(())
}

/// Opens a checkpoint on `device` with the description of its data (`data_dir` replaces the stored folder). A
/// version-1 checkpoint has none stored: it is measured on the training set, as the run did.
pub(crate) fn open_checkpoint(path: &Path, data_dir: Option<&Path>, device: &str) -> Result<(Trainer, DataInfo)> {
    let mut tr = Trainer::load(path, Some(device))?;
    if let Some(d) = data_dir {
        tr.cfg.data.dir = d.display().to_string();
    }
    let info = match &tr.data {
        Some(d) => d.clone(),
        None => {
            let train = trainer::load_split(&tr.cfg, true)?;
            DataInfo::new(&train, &trainer::normalization(&tr.cfg, &train))
        }
    };
    Ok((tr, info))
}

/// Arguments of `lqnets eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (.safetensors written by `lqnets train`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset folder (default: the one in the checkpoint's config); only its test split is read.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Device to evaluate on (cpu, cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `lqnets eval`: test loss and accuracy of a checkpoint.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let (mut tr, info) = open_checkpoint(&a.checkpoint, a.data.as_deref(), &a.device)?;
    let test = trainer::load_split(&tr.cfg, false)?;
    if [test.c, test.h, test.w] != info.input || test.classes != info.classes {
        bail!(
            "{}: test images are {}x{}x{} with {} classes, the checkpoint was trained on {:?} with {}",
            tr.cfg.data.dir,
            test.c,
            test.h,
            test.w,
            test.classes,
            info.input,
            info.classes
        );
    }
    if test.is_empty() {
        bail!("{}: the test split has no images", tr.cfg.data.dir);
    }
    let vl = trainer::test_loader(&tr.cfg, test, info.norm()?);
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
