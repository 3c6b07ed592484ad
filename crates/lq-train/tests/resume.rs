//! Exact resume, in its own test binary: libtorch's CPU kernels are deterministic for a fixed thread count, but
//! ops issued from several test threads at once share one intra-op pool and may split work differently.
mod common;
use common::{batch, cfg, dataset};
use lq_train::config::OptimConfig;
use lq_train::{trainer, TrainConfig, Trainer};

fn weights(tr: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> =
        tr.vs.variables().into_iter().map(|(n, t)| (n, Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn checkpoint_round_trip_and_exact_resume() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&["quant.w_bits=2", "quant.a_bits=2", "optim.epochs=2", "data.train_limit=32"]);
    let (tl, vl) = trainer::loaders(&c, dataset(32, 1), dataset(16, 2));
    // Two epochs straight.
    let mut straight = Trainer::new(c.clone(), 10).unwrap();
    trainer::run(&mut straight, &tl, &vl, &dir.path().join("a")).unwrap();
    // One epoch, "killed", resumed from the checkpoint for the second.
    let mut first =
        Trainer::new(TrainConfig { optim: OptimConfig { epochs: 1, ..c.optim.clone() }, ..c.clone() }, 10).unwrap();
    trainer::run(&mut first, &tl, &vl, &dir.path().join("b")).unwrap();
    drop(first);
    let mut resumed = Trainer::load(&dir.path().join("b/last.safetensors"), None).unwrap();
    assert_eq!(resumed.epoch, 1);
    resumed.cfg.optim.epochs = 2;
    trainer::run(&mut resumed, &tl, &vl, &dir.path().join("b")).unwrap();
    // Compared with == (not assert_eq!) so a failure does not print every weight.
    assert!(weights(&straight) == weights(&resumed), "resumed run differs");
    let q = |t: &Trainer| t.net.quantizers().iter().map(|q| q.state.clone()).collect::<Vec<_>>();
    assert!(q(&straight) == q(&resumed), "resumed quantizer states differ");
    // The reloaded checkpoint evaluates identically.
    let mut again = Trainer::load(&dir.path().join("a/last.safetensors"), None).unwrap();
    let b = batch(4);
    let diff = (straight.logits(&b).unwrap() - again.logits(&b).unwrap()).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0);
    let lines = std::fs::read_to_string(dir.path().join("a/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("\"quantizers\"") && lines.contains("\"mse\""));
}
