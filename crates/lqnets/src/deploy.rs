//! `lqnets export`, `lqnets infer` and `lqnets bench infer`: the bit-op engine side.
use crate::train::open_checkpoint;
use anyhow::{bail, Context, Result};
use clap::Args;
use lq_data::{load_cifar, Cifar};
use lq_engine::{Data, Isa, Model};
use lq_train::config::{ModelSpec, QuantSpec};
use lq_train::graph::Layer;
use lq_train::{TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `lqnets export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint written by `lqnets train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output model file.
    #[arg(long)]
    out: PathBuf,
    /// Training data folder: only for version-1 checkpoints, which do not store their input normalisation.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// Runs `lqnets export` and prints the size accounting.
pub fn export(a: &ExportArgs) -> Result<()> {
    let (tr, info) = open_checkpoint(&a.checkpoint, a.data.as_deref(), "cpu")?;
    let f = lq_train::export::export(&tr, &info.norm()?, info.input, info.classes)?;
    // The engine validates the file before it is written: a model that would not load is never saved.
    Model::from_file(&f)
        .map_err(|why| anyhow::anyhow!("{}: export does not validate: {why}", a.checkpoint.display()))?;
    f.save(&a.out)?;
    // Full-precision tensors are stored as f32 `{name}.w` / `.weight` / `.bias` / `.b`; everything else is packed
    // bits, bases, thresholds and folded BNs. Their fp32 size: every quantized conv kernel of the trainer.
    let fp_name = |n: &str| [".w", ".weight", ".bias", ".b"].iter().any(|e| n.ends_with(e));
    let bytes = |d: &Data| match d {
        Data::F32(v) => v.len() * 4,
        Data::U64(v) => v.len() * 8,
        Data::U8(v) => v.len(),
    };
    let fp: usize = f.tensors.iter().filter(|(n, _)| fp_name(n)).map(|(_, (_, d))| bytes(d)).sum();
    let packed: usize = f.tensors.iter().filter(|(n, _)| !fp_name(n)).map(|(_, (_, d))| bytes(d)).sum();
    let q_fp32: usize = tr
        .net
        .nodes
        .iter()
        .filter_map(|n| match &n.layer {
            Layer::Conv(c) if c.quant.is_some() => Some(c.w.numel() * 4),
            _ => None,
        })
        .sum();
    let file = std::fs::metadata(&a.out)?.len() as usize;
    let bound = 1.1 * (tr.cfg.quant.w_bits.min(32) as f64 / 32.0 * q_fp32 as f64 + fp as f64);
    println!("wrote {} ({file} bytes, {} ops)", a.out.display(), f.meta.as_ref().map_or(0, |m| m.graph.len()));
    println!(
        "  quantized layers: {q_fp32} bytes as fp32 -> {packed} bytes packed (bits, bases, thresholds, folded BN)"
    );
    println!("  full-precision tensors (first conv, classifier, biases): {fp} bytes");
    println!(
        "  bound 1.1 x (K_w/32 x quantized fp32 + full-precision) = {bound:.0} bytes: {}",
        if (file as f64) <= bound { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Arguments of `lqnets infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model file written by `lqnets export`.
    #[arg(long)]
    model: PathBuf,
    /// A CIFAR-format folder (its test_batch.bin) or one PNG image of the model's input size.
    #[arg(long)]
    data: PathBuf,
    /// Use at most N images of the folder.
    #[arg(long)]
    limit: Option<usize>,
    /// Compare the engine's logits with this checkpoint's eval forward.
    #[arg(long)]
    check: Option<PathBuf>,
    /// Force the portable kernel.
    #[arg(long)]
    portable: bool,
}

/// Runs `lqnets infer`.
pub fn infer(a: &InferArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let isa = if a.portable { Isa::Portable } else { Isa::best() };
    let [c, h, w] = model.meta.input;
    if a.data.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        let px = read_png(&a.data, [c, h, w])?;
        let logits = model.forward(&model.normalize(&px), isa)?;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        println!(
            "{}: top-1 class {} ({:.4}); top-5 {:?}",
            a.data.display(),
            idx[0],
            logits[idx[0]],
            &idx[..5.min(idx.len())]
        );
        return Ok(());
    }
    let mut ds = load_cifar(&a.data, if model.meta.classes == 100 { Cifar::Hundred } else { Cifar::Ten }, false)?;
    if let Some(n) = a.limit {
        ds = ds.take(n);
    }
    let x: Vec<f32> = (0..ds.len()).flat_map(|i| model.normalize(ds.image(i))).collect();
    let t = Instant::now();
    let logits = model.forward_batch(&x, ds.len(), isa)?;
    let secs = t.elapsed().as_secs_f64();
    let k = model.meta.classes;
    let (mut top1, mut top5) = (0, 0);
    for (i, l) in logits.chunks(k).enumerate() {
        let mut idx: Vec<usize> = (0..k).collect();
        idx.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
        top1 += (idx[0] == ds.labels[i] as usize) as usize;
        top5 += idx[..5.min(k)].contains(&(ds.labels[i] as usize)) as usize;
    }
    let n = ds.len().max(1) as f64;
    println!(
        "{} images: top-1 {:.4}, top-5 {:.4} ({:.1} img/s, kernel {isa:?})",
        ds.len(),
        top1 as f64 / n,
        top5 as f64 / n,
        n / secs
    );
    if let Some(ck) = &a.check {
        let (mut tr, _) = open_checkpoint(ck, None, "cpu")?;
        let b = lq_data::Batch { x, y: ds.labels.iter().map(|&l| l as i64).collect(), shape: [ds.len(), c, h, w] };
        let want = Vec::<f32>::try_from(&tr.logits(&b)?.flatten(0, -1))?;
        let (mut worst, mut same) = (0.0f32, 0);
        for (g, w) in logits.chunks(k).zip(want.chunks(k)) {
            let scale = w.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
            worst = worst.max(g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale);
            let top = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|x| x.0);
            same += (top(g) == top(w)) as usize;
        }
        println!(
            "check vs {}: max relative logit error {worst:.3e}; top-1 identical on {same}/{} images",
            ck.display(),
            ds.len()
        );
    }
    Ok(())
}

fn read_png(path: &Path, expect: [usize; 3]) -> Result<Vec<u8>> {
    Ok(lq_data::read_png(path, expect)?)
}

/// Arguments of `lqnets bench infer`.
#[derive(Args, Debug)]
pub struct BenchInferArgs {
    /// Model file (e.g. an exported ResNet-20 W2A2).
    #[arg(long)]
    model: PathBuf,
    /// Batch sizes.
    #[arg(long, default_value = "1,64")]
    batches: String,
    /// Threads for the engine (rayon), libtorch and the anchors.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed repetitions per round (after one warm-up); each side reports its median.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// A Python environment with torch and onnxruntime (`DIR/venv/bin/python`, with `DIR/stubs` put on
    /// LD_LIBRARY_PATH when present, as `../shared/scripts/torch-cpu-venv.sh` makes it): adds the anchors of the same
    /// architecture, ONNX Runtime fp32 / INT8 and PyTorch INT8 (ResNet-20 and VGG-Small; `--anchors`).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The anchors script (run from the repository root by default).
    #[arg(long, default_value = "bench/anchors_cifar.py")]
    anchors: PathBuf,
    /// The anchors' network, when not the model's own (e.g. `resnet20-post`: the post-activation ResNet-20 whose
    /// conv-BN-ReLU fuse, the fastest INT8 ResNet-20 a user would deploy).
    #[arg(long, value_parser = ["resnet20-A", "resnet20-B", "resnet20-post", "vgg-small"])]
    anchor_arch: Option<String>,
    /// Rounds: libtorch, the engine, then the anchors, each timed in its own block, alternated round after round;
    /// medians over rounds, ratios as min-max.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// Milliseconds of `reps` calls of `f` after one warm-up.
fn timed(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Median of `v` (not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `--arch` of the anchors script for a model description, if it has one.
fn anchor_arch(spec: &ModelSpec) -> Option<String> {
    match spec {
        ModelSpec::ResnetCifar { depth: 20, shortcut } => Some(format!("resnet20-{shortcut:?}")),
        ModelSpec::VggSmall {} => Some("vgg-small".into()),
        _ => None,
    }
}

/// Median and minimum (ms) of one side at one batch size.
type Stat = [f64; 2];

/// One run of the anchors script: batch → (ORT fp32, ORT INT8, PyTorch INT8), each (median, min) ms.
fn run_anchors(a: &BenchInferArgs, venv: &Path, arch: &str) -> Result<Vec<(usize, [Stat; 3])>> {
    let mut cmd = std::process::Command::new(venv.join("venv/bin/python"));
    if venv.join("stubs").is_dir() {
        cmd.env("LD_LIBRARY_PATH", venv.join("stubs"));
    }
    let out = cmd
        .arg(&a.anchors)
        .args(["--arch", arch, "--torch", "--threads", &a.threads.to_string(), "--batches", &a.batches])
        .args(["--reps", &(3 * a.reps).to_string()])
        .output()
        .with_context(|| format!("running {} with {}", a.anchors.display(), venv.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", a.anchors.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `anchor batch=B ort_fp32=.. ort_int8=.. torch_int8=.. min ort_fp32=.. ort_int8=.. torch_int8=..`
    let field = |l: &str, k: &str| -> f64 {
        l.split_whitespace().find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok()).unwrap_or(f64::NAN)
    };
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("anchor "))
        .map(|l| {
            let (med, min) = l.split_once(" min ").unwrap_or((l, ""));
            let stat = |k: &str| [field(med, k), field(min, k)];
            (field(med, "batch") as usize, [stat("ort_fp32"), stat("ort_int8"), stat("torch_int8")])
        })
        .collect())
}

/// Engine latency vs the same architecture on libtorch fp32 (eval forward) and, with `--venv`, ONNX Runtime fp32 /
/// INT8 and PyTorch INT8, same threads; rounds alternate the sides so they share the machine's state.
pub fn bench_infer(a: &BenchInferArgs) -> Result<()> {
    // The calling thread is worker 0, so a forward runs on it (with one thread: without any hand-off to a pool
    // thread that went to sleep while libtorch ran).
    rayon::ThreadPoolBuilder::new().num_threads(a.threads).use_current_thread().build_global().ok();
    tch::set_num_threads(a.threads as i32);
    let model = Model::load(&a.model)?;
    let m = &model.meta;
    let spec: ModelSpec = serde_json::from_str(&m.model)
        .with_context(|| format!("{}: the model description is not one this lqnets builds", a.model.display()))?;
    let mut cfg = TrainConfig { model: spec.clone(), quant: QuantSpec::FP, ..Default::default() };
    cfg.data.size = m.input[1];
    if m.input[1] != m.input[2] || m.input[0] != 3 {
        bail!(
            "{}: the libtorch baseline takes square 3-channel inputs, the model has {:?}",
            a.model.display(),
            m.input
        );
    }
    let arch = match (&a.venv, a.anchor_arch.clone().or_else(|| anchor_arch(&spec))) {
        (Some(_), None) => bail!("--venv: anchors exist for ResNet-20 and VGG-Small, not {}", spec.label()),
        (None, Some(_)) if a.anchor_arch.is_some() => bail!("--anchor-arch needs --venv"),
        (v, arch) => v.as_ref().and(arch),
    };
    let batches: Vec<usize> = a
        .batches
        .split(',')
        .map(|b| b.trim().parse().with_context(|| format!("--batches: '{b}'")))
        .collect::<Result<_>>()?;
    let mut fp = Trainer::new(cfg, m.classes as i64)?;
    println!(
        "W{}A{} {} ({}), {} thread(s), kernel {:?}, {} round(s) of {} reps, medians",
        m.w_bits,
        m.a_bits,
        spec.label(),
        arch.as_deref().unwrap_or("no anchors"),
        a.threads,
        Isa::best(),
        a.rounds.max(1),
        a.reps
    );
    // [round][batch] → [libtorch, engine, ORT fp32, ORT INT8, PyTorch INT8], each (median, min) ms.
    let mut rounds: Vec<Vec<[Stat; 5]>> = Vec::new();
    for _ in 0..a.rounds.max(1) {
        let mut row = Vec::new();
        for &n in &batches {
            let [c, h, w] = m.input;
            let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919 % 255) as f32 / 128.0) - 1.0).collect();
            let batch = lq_data::Batch { x: x.clone(), y: vec![0; n], shape: [n, c, h, w] };
            // Each side in its own block of reps after one warm-up, as the anchors script times its sides: a
            // libtorch forward between two engine forwards evicts the engine's weights and maps from the caches.
            let mut tt = timed(a.reps, || fp.logits(&batch).map(drop).map_err(Into::into))?;
            // libtorch's OpenMP workers spin for a while after its last parallel region: on two cores that took a
            // core from the engine's first milliseconds (2 threads, batch 1: 0.22 ms instead of 0.16).
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut te = timed(a.reps, || model.forward_batch(&x, n, Isa::best()).map(drop).map_err(Into::into))?;
            let stat = |v: &mut Vec<f64>| [median(v), v[0]];
            row.push([stat(&mut tt), stat(&mut te), [f64::NAN; 2], [f64::NAN; 2], [f64::NAN; 2]]);
        }
        if let (Some(venv), Some(arch)) = (&a.venv, &arch) {
            for (b, t) in run_anchors(a, venv, arch)? {
                if let Some(i) = batches.iter().position(|&x| x == b) {
                    row[i][2..].copy_from_slice(&t);
                }
            }
        }
        rounds.push(row);
    }
    for (k, what) in [(0, "medians"), (1, "minimum over the reps (the steadier figure on a shared machine)")] {
        println!("ms per batch, {what}; ratios = baseline / engine, min-max over rounds");
        println!(
            "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11}",
            "batch", "torch fp", "ORT fp32", "ORT int8", "PT int8", "engine", "x torch fp", "x ORT fp32", "x ORT int8"
        );
        for (i, n) in batches.iter().enumerate() {
            let col = |s: usize| {
                let mut v: Vec<f64> = rounds.iter().map(|r| r[i][s][k]).collect();
                median(&mut v)
            };
            let range = |s: usize| {
                let v: Vec<f64> = rounds.iter().map(|r| r[i][s][k] / r[i][1][k]).collect();
                let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
                if v.iter().any(|x| x.is_nan()) {
                    "-".to_string()
                } else if rounds.len() == 1 {
                    format!("{lo:.2}")
                } else {
                    format!("{lo:.2}-{hi:.2}")
                }
            };
            println!(
                "{n:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11} {:>11} {:>11}",
                col(0),
                col(2),
                col(3),
                col(4),
                col(1),
                range(0),
                range(2),
                range(3),
            );
        }
    }
    Ok(())
}
