//! `lqnets train`, `lqnets eval` and `lqnets bench train`.
use anyhow::{bail, Context, Result};
use clap::Args;
use lq_data::{Dataset, Loader, LoaderConfig, Normalize};
use lq_report::Format;
use lq_train::checkpoint::DataInfo;
use lq_train::config::DeviceSpec;
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
    /// Refresh the run's report.html (the `lqnets report` dashboard) after each epoch.
    #[arg(long)]
    report: bool,
    #[command(flatten)]
    launch: LaunchArgs,
}

/// Data-parallel launch, like torchrun: `--nproc N` starts N ranks on this machine (one per device); several
/// machines run the same command with `--nnodes`, their `--node-rank` and rank 0's `--master-addr/--master-port`.
/// A process started with `WORLD_SIZE`/`RANK`/`MASTER_ADDR`/`MASTER_PORT` set (by this launcher or another) is one
/// rank and ignores these flags.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Ranks (processes) on this machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    nproc: u16,
    /// Machines in the job.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    nnodes: u16,
    /// This machine's index among them.
    #[arg(long, default_value_t = 0)]
    node_rank: u16,
    /// Address of node 0, where rank 0 serves the rendezvous (default 127.0.0.1 on one machine).
    #[arg(long)]
    master_addr: Option<String>,
    /// Its port (default: a free one, on one machine).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds a rank waits for the others (start-up and every collective) before the job fails.
    #[arg(long, default_value_t = lq_train::dist::DEFAULT_TIMEOUT.as_secs())]
    dist_timeout: u64,
}

/// Starts this machine's ranks as child processes running the same command line and waits for them; the first
/// rank to fail stops the others, and the launcher fails naming it.
fn launch(l: &LaunchArgs) -> Result<()> {
    if l.node_rank >= l.nnodes {
        bail!("--node-rank {} must be below --nnodes {}", l.node_rank, l.nnodes);
    }
    let (addr, port) = match (&l.master_addr, l.master_port) {
        (Some(a), Some(p)) => (a.clone(), p),
        _ if l.nnodes > 1 => bail!("--nnodes {} needs --master-addr and --master-port (node 0's)", l.nnodes),
        (a, p) => {
            let port = match p {
                Some(p) => p,
                None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            };
            (a.clone().unwrap_or_else(|| "127.0.0.1".into()), port)
        }
    };
    let world = l.nproc as usize * l.nnodes as usize;
    // Like torchrun: the machine's cores are shared by its ranks, not oversubscribed by each.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / l.nproc as usize).max(1).to_string());
    let exe = std::env::current_exe().context("cannot find the lqnets executable to start the ranks")?;
    let (mut children, mut forwards) = (Vec::new(), Vec::new());
    for local in 0..l.nproc as usize {
        let rank = l.node_rank as usize * l.nproc as usize + local;
        let mut cmd = std::process::Command::new(&exe);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes the kernel send SIGTERM
        // to the rank when the launcher dies (killed by a scheduler), so no rank outlives it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.args(std::env::args_os().skip(1))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .env("LQ_DIST_TIMEOUT", l.dist_timeout.to_string())
            .env("OMP_NUM_THREADS", &threads);
        // Rank 0 keeps the terminal (its live progress line); the others' output comes through us in whole lines
        // prefixed with the rank (see `forward_lines`).
        if rank != 0 {
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start rank {rank}"))?;
        if let Some(o) = child.stdout.take() {
            forwards.push(forward_lines(rank, o, false));
        }
        if let Some(e) = child.stderr.take() {
            forwards.push(forward_lines(rank, e, true));
        }
        children.push((rank, child));
    }
    eprintln!(
        "launched ranks {}..{} of {world} (rendezvous {addr}:{port})",
        children[0].0,
        children[children.len() - 1].0
    );
    let mut failed: Option<(usize, std::process::ExitStatus)> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            let st = match children[i].1.try_wait() {
                Ok(st) => st,
                Err(e) => {
                    for (_, c) in &mut children {
                        let _ = c.kill();
                    }
                    return Err(e).context("waiting for the ranks");
                }
            };
            match st {
                Some(st) => {
                    let (rank, _) = children.remove(i);
                    if !st.success() && failed.is_none() {
                        failed = Some((rank, st));
                        for (_, c) in &mut children {
                            let _ = c.kill(); // it would fail at its next collective anyway
                        }
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The ranks have exited: their pipes are at end of file, and the forwarders end with their last line (unless
    // something a rank started still holds a pipe: then they are left behind after a few seconds).
    let t0 = std::time::Instant::now();
    while forwards.iter().any(|f| !f.is_finished()) && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match failed {
        Some((rank, st)) => bail!("rank {rank} failed ({st}); the other ranks on this machine were stopped"),
        None => Ok(()),
    }
}

/// Copies a rank's output to ours line by line (ended by `\n` or `\r`), each line prefixed with `[rank N] ` and
/// written in one call, so the forwarded ranks' lines stay whole. Rank 0 writes to the terminal itself, and its
/// multi-piece messages and `\r` progress line can still take a forwarded line in the middle.
fn forward_lines(
    rank: usize,
    src: impl std::io::Read + Send + 'static,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut r = std::io::BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Up to and including the next '\n' or '\r'.
            let done = loop {
                let buf = match r.fill_buf() {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok([]) | Err(_) => break true,
                    Ok(b) => b,
                };
                match buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                    Some(i) => {
                        line.extend_from_slice(&buf[..=i]);
                        r.consume(i + 1);
                        break false;
                    }
                    None => {
                        let n = buf.len();
                        line.extend_from_slice(buf);
                        r.consume(n);
                    }
                }
            };
            let text = line.strip_suffix(b"\n").or(line.strip_suffix(b"\r")).unwrap_or(&line);
            if !text.is_empty() {
                let mut out = format!("[rank {rank}] ").into_bytes();
                out.extend_from_slice(&line);
                if !matches!(out.last(), Some(b'\n' | b'\r')) {
                    out.push(b'\n');
                }
                // One write per line (stderr is unbuffered; stdout is flushed so a `\r` line is not held back).
                let _ = if to_stderr {
                    std::io::stderr().write_all(&out)
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&out).and_then(|_| o.flush())
                };
            } else if line.first() == Some(&b'\n') {
                let _ = if to_stderr { std::io::stderr().write_all(b"\n") } else { std::io::stdout().write_all(b"\n") };
            }
            if done {
                break;
            }
        }
    })
}

/// Runs `lqnets train`: one process, one rank of a data-parallel job (from the environment), or the launcher of
/// `--nproc` ranks.
pub fn run(a: &TrainArgs) -> Result<()> {
    let rank_env = std::env::var_os("WORLD_SIZE").is_some();
    if !rank_env && (a.launch.nproc > 1 || a.launch.nnodes > 1) {
        return launch(&a.launch);
    }
    // Joins before anything else can fail differently on different ranks (a missing data folder fails everywhere).
    let group = lq_train::dist::Group::from_env()?;
    // One process per device: local rank r of a CUDA run trains on cuda:r.
    let local_device = |cfg: &TrainConfig| -> Result<Option<String>> {
        if group.is_none() || cfg.run.device == DeviceSpec::Cpu {
            return Ok(None);
        }
        let v = std::env::var("LOCAL_RANK").context("a CUDA rank needs LOCAL_RANK (its device index)")?;
        let local: usize = v.parse().with_context(|| format!("LOCAL_RANK = {v:?} is not a device index"))?;
        Ok(Some(format!("run.device=\"cuda:{local}\"")))
    };
    let (mut tr, out, (mut tl, mut vl)) = match &a.resume {
        Some(dir) => {
            let mut sets = a.sets.clone();
            if group.is_some() {
                sets.extend(local_device(&TrainConfig::load(Some(&dir.join("config.toml")), &[])?)?);
            }
            let tr = Trainer::resume(dir, &sets)?;
            eprintln!("resuming {} after epoch {}", dir.display(), tr.epoch);
            let feeds = trainer::feeds(&tr.cfg)?;
            (tr, dir.clone(), feeds)
        }
        None => {
            let mut sets = a.sets.clone();
            sets.extend(local_device(&TrainConfig::load(a.config.as_deref(), &a.sets)?)?);
            let cfg = TrainConfig::load(a.config.as_deref(), &sets)?;
            let feeds = trainer::feeds(&cfg)?;
            (Trainer::new(cfg, feeds.0.info().classes as i64)?, a.out.clone(), feeds)
        }
    };
    if let Some(g) = group {
        // One write for the whole line: the ranks share stderr, and `eprintln!` writes a line in pieces that
        // interleave with the other ranks' ("rank 0rank  of 3 joined").
        let line = format!("rank {} of {} joined\n", g.rank, g.world);
        std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes()).ok();
        tr.join(g)?;
        tl = tl.with_shard(tr.shard());
        vl = vl.with_shard(tr.shard());
    }
    let main = tr.is_main();
    let page = out.join("report.html");
    trainer::run_with(&mut tr, &tl, &vl, &out, &mut |_| {
        if a.report && main {
            // A report that cannot be written is worth a warning, never a stopped run.
            if let Err(e) = lq_report::Run::read(&out).and_then(|r| lq_report::write_report(&[r], Format::Html, &page))
            {
                eprintln!("warning: {}: {e}", page.display());
            }
        }
    })?;
    if main {
        eprintln!("done: best test accuracy {:.4}; checkpoints in {}", tr.best_acc, out.display());
    }
    Ok(())
}

/// Opens a checkpoint on `device` with the description of its data (`data_dir` replaces the stored folder). A
/// version-1 checkpoint has none stored: it is measured on the training set, as the run did.
pub(crate) fn open_checkpoint(path: &Path, data_dir: Option<&Path>, device: &str) -> Result<(Trainer, DataInfo)> {
    let device = DeviceSpec::try_from(device.to_string()).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
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
    println!(
        "{}: {} images, loss {:.4}, top-1 accuracy {:.4}, top-5 {:.4}",
        a.checkpoint.display(),
        s.n,
        s.loss(),
        s.acc(),
        s.acc5()
    );
    Ok(())
}

/// Arguments of `lqnets bench train`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps per setting and round.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Rounds over all settings (interleaved A B C A B C ...); the first round is warm-up and not counted.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Settings as W/A pairs (32 = full precision); ratios are to the first.
    #[arg(long, default_value = "32/32,1/2,2/2,3/3,4/32")]
    settings: String,
    /// Network: resnet_cifar (ResNet-20), vgg_small, resnet18, resnet34, resnet50, alexnet, vgg_variant, googlenet,
    /// densenet121.
    #[arg(long, default_value = "resnet_cifar")]
    arch: String,
    /// Input side (32 for the CIFAR networks, 224 for ImageNet ones; 227 for AlexNet).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Device (cpu, cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `lqnets bench train`: step times of every W/A setting, interleaved over rounds so that drift and warm-up
/// hit all settings alike (first round dropped); per setting the median, the spread (min–max) and the median as a
/// ratio to the first setting's median, img/s, data wait per step, and the process's peak resident memory.
pub fn bench(a: &BenchArgs) -> Result<()> {
    if a.rounds < 2 || a.steps == 0 {
        bail!("--rounds must be >= 2 (the first is warm-up) and --steps >= 1");
    }
    let n = a.batch * a.steps;
    let ds = Arc::new(Dataset {
        images: (0..n * 3 * a.size * a.size).map(|i| ((i * 2654435761usize) >> 13) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        c: 3,
        h: a.size,
        w: a.size,
        classes: 10,
    });
    let arch = match a.arch.strip_prefix("resnet").and_then(|d| d.parse::<usize>().ok()) {
        Some(depth) => vec!["model.arch=\"resnet\"".to_string(), format!("model.depth={depth}")],
        None => vec![format!("model.arch=\"{}\"", a.arch)],
    };
    let norm = Normalize::per_channel_of(&ds);
    let loader = Loader::new(
        ds,
        norm,
        LoaderConfig {
            batch: a.batch,
            shuffle: true,
            pad: 4,
            drop_last: true,
            workers: 2,
            seed: 1,
            shard: Default::default(),
        },
    );
    let settings: Vec<&str> = a.settings.split(',').map(str::trim).collect();
    let mut runs = Vec::new();
    for s in &settings {
        let (w, act) = s.split_once('/').with_context(|| format!("--settings: '{s}' is not W/A"))?;
        let mut sets = arch.clone();
        sets.extend([
            format!("data.size={}", a.size),
            format!("quant.w_bits={w}"),
            format!("quant.a_bits={act}"),
            format!("optim.batch={}", a.batch),
            format!("run.device=\"{}\"", a.device),
        ]);
        runs.push((Trainer::new(TrainConfig::load(None, &sets)?, 10)?, Vec::new(), 0.0f64));
    }
    for round in 0..a.rounds {
        for (tr, times, wait) in &mut runs {
            let mut it = loader.epoch(round as u64);
            for _ in 0..a.steps {
                let t = Instant::now();
                let b = it.next().context("bench loader ran dry")?;
                let waited = t.elapsed().as_secs_f64();
                let t = Instant::now();
                tr.step(&b, 0.01)?;
                if round > 0 {
                    times.push(t.elapsed().as_secs_f64());
                    *wait += waited;
                }
            }
        }
    }
    println!(
        "{} at {}x{}, batch {}, {} rounds x {} steps per setting, interleaved (first round dropped)",
        a.arch, a.size, a.size, a.batch, a.rounds, a.steps
    );
    println!(
        "{:<8} {:>10} {:>17} {:>8} {:>8} {:>13}",
        "W/A", "median ms", "spread ms", "x first", "img/s", "data wait ms"
    );
    let mut first = None;
    for (s, (_, times, wait)) in settings.iter().zip(&mut runs) {
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let base = *first.get_or_insert(med);
        println!(
            "{:<8} {:>10.1} {:>8.1}-{:<8.1} {:>8.3} {:>8.0} {:>13.2}",
            s,
            med * 1e3,
            times[0] * 1e3,
            times[times.len() - 1] * 1e3,
            med / base,
            a.batch as f64 / med,
            *wait * 1e3 / times.len() as f64
        );
    }
    println!("peak resident memory {:.0} MB", peak_rss_mb());
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
