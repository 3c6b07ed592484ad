//! Hostile and faulty inputs to the trainer: edited or damaged checkpoints, resumes that would change the run,
//! diverging runs, too little data, config errors. Each must give an error naming the problem, never a panic and
//! never a silently different run.
mod common;
use common::{cfg, dataset};
use lq_train::checkpoint;
use lq_train::{trainer, Error, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A finished one-epoch W2A2 run in `dir`, returning its checkpoint path.
fn trained(dir: &Path, extra: &[&str]) -> PathBuf {
    let mut sets = vec!["quant.w_bits=2", "quant.a_bits=2", "optim.epochs=1", "data.train_limit=16"];
    sets.extend_from_slice(extra);
    let c = cfg(&sets);
    let (tl, vl) = trainer::loaders(&c, dataset(16, 1), dataset(8, 2));
    let mut tr = Trainer::new(c, 10).unwrap();
    trainer::run(&mut tr, &tl, &vl, dir).unwrap();
    dir.join("last.safetensors")
}

/// Loads `path`, lets `edit` change tensors or metadata, and writes it back as a valid (re-hashed) checkpoint.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>, &mut checkpoint::Meta)) {
    let (t, mut meta) = checkpoint::load(path).unwrap();
    let mut t: Vec<(String, Tensor)> = t.into_iter().collect();
    edit(&mut t, &mut meta);
    checkpoint::save(path, &t, &meta).unwrap();
}

fn load_err(path: &Path) -> String {
    match Trainer::load(path, None) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn edited_checkpoints_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ck = trained(dir.path(), &[]);
    let orig = std::fs::read(&ck).unwrap();
    Trainer::load(&ck, None).unwrap();

    // A momentum buffer of the wrong shape (libtorch's copy_ used to panic).
    rewrite(&ck, |t, _| {
        let e = t.iter_mut().find(|(n, _)| n.starts_with("momentum/") && n.ends_with("conv1.w")).unwrap();
        e.1 = Tensor::zeros([3, 3], (tch::Kind::Float, tch::Device::Cpu));
    });
    let e = load_err(&ck);
    assert!(e.contains("momentum/") && e.contains("shape"), "{e}");

    // A stored config that no config file could hold.
    std::fs::write(&ck, &orig).unwrap();
    rewrite(&ck, |_, m| m.config.optim.lr = -1.0);
    assert!(load_err(&ck).contains("optim.lr"));
    std::fs::write(&ck, &orig).unwrap();
    rewrite(&ck, |_, m| m.config.optim.batch = 0);
    assert!(load_err(&ck).contains("optim.batch"));

    // Bit widths edited in the stored config: the quantizer states no longer fit.
    std::fs::write(&ck, &orig).unwrap();
    rewrite(&ck, |_, m| m.config.quant.w_bits = 3);
    let e = load_err(&ck);
    assert!(e.contains("quantizer") && e.contains("2-bit") && e.contains("3-bit"), "{e}");

    // A data description whose input would allocate without bound (the normalisation expands to c·h·w).
    std::fs::write(&ck, &orig).unwrap();
    rewrite(&ck, |_, m| m.data.as_mut().unwrap().input = [3, 1 << 30, 1 << 30]);
    let e = load_err(&ck);
    assert!(e.contains("data:") && e.contains("sides"), "{e}");
    let e = TrainConfig::load(None, &["data.size=100000".into()]).unwrap_err().to_string();
    assert!(e.contains("data.size"), "{e}");

    // Non-finite weights.
    std::fs::write(&ck, &orig).unwrap();
    rewrite(&ck, |t, _| {
        let e = t.iter_mut().find(|(n, _)| n == "model/fc.weight").unwrap();
        e.1 = e.1.fill(f64::NAN);
    });
    let e = load_err(&ck);
    assert!(e.contains("model/fc.weight") && e.contains("not finite"), "{e}");

    // Bytes changed after writing: one tensor byte, one digit of the metadata (same length, still valid JSON).
    let mut b = orig.clone();
    let last = b.len() - 3;
    b[last] ^= 0x10;
    std::fs::write(&ck, &b).unwrap();
    assert!(load_err(&ck).contains("content hash mismatch"));
    let mut b = orig.clone();
    let at = b.windows(10).position(|w| w == b"\\\"seed\\\":1").expect("seed in the header") + 9;
    b[at] = b'7';
    std::fs::write(&ck, &b).unwrap();
    assert!(load_err(&ck).contains("content hash mismatch"));
}

#[test]
fn resume_keeps_the_runs_config() {
    let dir = tempfile::tempdir().unwrap();
    trained(dir.path(), &[]);
    let e = Trainer::resume(dir.path(), &["quant.w_bits=3".into()]).err().unwrap().to_string();
    assert!(e.contains("quant.w_bits") && e.contains("cannot change"), "{e}");
    let tr = Trainer::resume(dir.path(), &["optim.epochs=3".into()]).unwrap();
    assert_eq!((tr.epoch, tr.cfg.optim.epochs), (1, 3));

    // Editing config.toml: only the allowed keys take effect; anything else is an error naming it.
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("epochs = 1", "epochs = 4")).unwrap();
    assert_eq!(Trainer::resume(dir.path(), &[]).unwrap().cfg.optim.epochs, 4);
    std::fs::write(&path, text.replace("lr = 0.1", "lr = 0.2")).unwrap();
    let e = Trainer::resume(dir.path(), &[]).err().unwrap().to_string();
    assert!(e.contains("optim.lr: 0.1 -> 0.2"), "{e}");
}

#[test]
fn resume_cuts_the_log_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    trained(dir.path(), &[]);
    let log = dir.path().join("metrics.jsonl");
    // As if killed after logging epoch 2 but before its checkpoint.
    let line = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("{line}{}", line.replace("\"epoch\":1", "\"epoch\":2"))).unwrap();
    Trainer::resume(dir.path(), &[]).unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), line);
}

#[test]
fn a_diverging_run_keeps_its_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ck = trained(dir.path(), &[]);
    let before = std::fs::read(&ck).unwrap();
    let mut tr = Trainer::resume(dir.path(), &["optim.epochs=2".into()]).unwrap();
    // Training losses stay finite (batch statistics), the test forward reads the poisoned running variance.
    tch::no_grad(|| {
        let mut v = tr.vs.variables()["head_bn.running_var"].shallow_clone();
        let _ = v.fill_(f64::NAN);
    });
    let (tl, vl) = trainer::loaders(&tr.cfg, dataset(16, 1), dataset(8, 2));
    let e = trainer::run(&mut tr, &tl, &vl, dir.path()).unwrap_err();
    assert!(matches!(e, Error::Diverged { epoch: 1, .. }), "{e}");
    assert_eq!(before, std::fs::read(&ck).unwrap());
}

#[test]
fn too_little_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&["optim.batch=32"]);
    let (tl, vl) = trainer::loaders(&c, dataset(16, 1), dataset(8, 2));
    let mut tr = Trainer::new(c.clone(), 10).unwrap();
    let e = trainer::run(&mut tr, &tl, &vl, dir.path()).unwrap_err().to_string();
    assert!(e.contains("16 training images make no full batch of optim.batch = 32"), "{e}");
    let (tl, vl) = trainer::loaders(&c, dataset(64, 1), dataset(0, 2));
    let e = trainer::run(&mut tr, &tl, &vl, dir.path()).unwrap_err().to_string();
    assert!(e.contains("no test images"), "{e}");
}

#[test]
fn config_file_errors_point_at_the_files_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[quant]\nw_bits = 2\n\n[optim]\nlr = 0.1\nbatch = \"big\"\n").unwrap();
    let e = TrainConfig::load(Some(&p), &[]).unwrap_err().to_string();
    assert!(e.contains("c.toml") && e.contains("line 6") && e.contains("batch"), "{e}");
}

/// A small deterministic generator (no extra dependency for the mutation tests).
fn rng(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Stable-toolchain fuzzing of the checkpoint reader and the config reader (their cargo-fuzz targets would link
/// libtorch): byte flips, overwrites, truncations and splices of a real checkpoint, and edits of real config
/// files. Every input must give a value or an error, never a panic.
#[test]
fn checkpoint_and_config_readers_survive_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let orig = std::fs::read(trained(dir.path(), &[])).unwrap();
    let mut r = rng(0x9e3779b97f4a7c15);
    let header = 8 + u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
    for i in 0..4000 {
        let mut b = orig.clone();
        match i % 4 {
            // Most mutations inside the JSON header, where the parsing happens.
            0 => (0..1 + r() % 4).for_each(|_| {
                let at = (r() as usize) % header.min(b.len());
                b[at] ^= 1 << (r() % 8);
            }),
            1 => b.truncate((r() as usize) % b.len()),
            2 => {
                let at = (r() as usize) % header;
                b[at] = b"{}[]\",:0123456789e-"[(r() % 19) as usize];
            }
            _ => {
                let (a, c) = ((r() as usize) % b.len(), (r() as usize) % b.len());
                let to = (r() as usize) % (b.len() - 64);
                b.copy_within(a.min(c)..a.max(c).min(a.min(c) + 64), to);
            }
        }
        let _ = checkpoint::parse(&b);
    }
    let configs: Vec<String> = ["cifar10", "imagenet"]
        .iter()
        .flat_map(|d| std::fs::read_dir(format!("{}/../../configs/{d}", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    let words = ["=", "[", "]", "\"", "0", "-1", "1e400", "nan", "[model]", "arch", "depth = 18", "[quant]", "\n"];
    let p = dir.path().join("c.toml");
    for i in 0..3000 {
        let mut t = configs[i % configs.len()].clone().into_bytes();
        for _ in 0..1 + r() % 3 {
            let at = (r() as usize) % t.len();
            let w = words[(r() as usize) % words.len()].as_bytes();
            t.splice(at..(at + (r() as usize) % 4).min(t.len()), w.iter().copied());
        }
        std::fs::write(&p, &t).unwrap();
        let _ = TrainConfig::load(Some(&p), &[]);
    }
}
