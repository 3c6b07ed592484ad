//! Training-side tests on tiny generated data (CI has no CIFAR): every model and mode runs forward/backward,
//! training lowers the loss, QEM moves bases only in training, checkpoints round-trip and resume exactly.
mod common;
use common::{batch, cfg, dataset};
use lq_train::config::OptimConfig;
use lq_train::optim::lr_at;
use lq_train::{trainer, Error, TrainConfig, Trainer};
use tch::Tensor;

#[test]
fn every_model_and_mode_runs_forward_and_backward() {
    let modes: &[&[&str]] = &[
        &["quant.w_bits=32", "quant.a_bits=32"],
        &["quant.w_bits=2", "quant.a_bits=32"],
        &["quant.w_bits=1", "quant.a_bits=2"],
        &["quant.w_bits=2", "quant.a_bits=2"],
        &["quant.w_bits=3", "quant.a_bits=3"],
        &["quant.w_bits=4", "quant.a_bits=4"],
        &["quant.method=\"hwgq\"", "quant.w_bits=1", "quant.a_bits=2"],
        &["quant.method=\"uniform\"", "quant.w_bits=2", "quant.a_bits=2"],
    ];
    let b = batch(4);
    for arch in [&["model.shortcut=\"A\""][..], &["model.shortcut=\"B\""], &["model.arch=\"vgg_small\""]] {
        for m in modes {
            let sets: Vec<&str> = arch.iter().chain(m.iter()).copied().collect();
            let mut tr = Trainer::new(cfg(&sets), 10).unwrap();
            let s = tr.step(&b, 0.01).unwrap();
            assert!(s.loss().is_finite(), "{sets:?}");
            let logits = tr.logits(&b).unwrap();
            assert_eq!(logits.size(), [4, 10], "{sets:?}");
            // A second forward + backward without the SGD step (which zeroes gradients in place, so "defined"
            // says nothing): every conv kernel, quantized or not, gets a non-zero gradient through the STE.
            let x = Tensor::from_slice(&b.x).view([4, 3, 32, 32]);
            let loss = tr.net.forward(&x, true).unwrap().cross_entropy_for_logits(&Tensor::from_slice(&b.y));
            loss.backward();
            for p in tr.opt.params.iter().filter(|p| p.name.ends_with(".w")) {
                let g = p.var.grad().abs().sum(tch::Kind::Double).double_value(&[]);
                assert!(g > 0.0 && g.is_finite(), "{sets:?}: {} has gradient sum {g}", p.name);
            }
        }
    }
}

#[test]
fn a_few_steps_lower_the_loss() {
    let mut tr = Trainer::new(cfg(&["quant.w_bits=2", "quant.a_bits=2"]), 10).unwrap();
    let b = batch(16);
    let first = tr.step(&b, 0.05).unwrap().loss();
    let mut last = first;
    for _ in 0..15 {
        last = tr.step(&b, 0.05).unwrap().loss();
    }
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

#[test]
fn qem_moves_bases_in_training_only() {
    let mut tr = Trainer::new(cfg(&["quant.w_bits=2", "quant.a_bits=2"]), 10).unwrap();
    let snap =
        |tr: &Trainer| tr.net.quantizers().iter().map(|q| (q.state.basis.clone(), q.state.steps)).collect::<Vec<_>>();
    let b = batch(4);
    let before = snap(&tr);
    let _ = tr.logits(&b).unwrap();
    assert_eq!(before, snap(&tr), "eval changed a basis");
    tr.step(&b, 0.01).unwrap();
    let after = snap(&tr);
    assert!(after.iter().all(|(_, t)| *t == 1));
    assert!(before.iter().zip(&after).all(|(a, b)| a.0 != b.0), "a basis did not move");
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&["quant.w_bits=32", "quant.a_bits=32", "optim.epochs=3", "data.train_limit=32"]);
    let (tl, vl) = trainer::loaders(&c, dataset(32, 1), dataset(16, 2));
    let mut tr = Trainer::new(c, 10).unwrap();
    trainer::run(&mut tr, &tl, &vl, dir.path()).unwrap();
    let before = std::fs::read(dir.path().join("last.safetensors")).unwrap();
    tr.cfg.optim.epochs = 5;
    tr.cfg.optim.lr = 1e30;
    tch::no_grad(|| {
        let _ = tr.opt.params[0].var.g_mul_scalar_(f64::NAN);
    });
    let e = trainer::run(&mut tr, &tl, &vl, dir.path()).unwrap_err();
    assert!(matches!(e, Error::NonFiniteLoss { epoch: 3, .. }), "{e}");
    assert_eq!(before, std::fs::read(dir.path().join("last.safetensors")).unwrap());
}

#[test]
fn config_errors_name_the_key() {
    let e = TrainConfig::load(None, &["optim.lrr=0.1".into()]).unwrap_err().to_string();
    assert!(e.contains("lrr"), "{e}");
    let e = TrainConfig::load(None, &["quant.w_bits=5.5".into()]).unwrap_err().to_string();
    assert!(e.contains("w_bits") || e.contains("integer"), "{e}");
    let e = TrainConfig::load(None, &["quant.a_bits=9".into()]).unwrap_err().to_string();
    assert!(e.contains("quant.a_bits"), "{e}");
    let e = TrainConfig::load(None, &["optim.lr=-1".into()]).unwrap_err().to_string();
    assert!(e.contains("optim.lr"), "{e}");
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/cifar10")).unwrap() {
        let p = f.unwrap().path();
        TrainConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

#[test]
fn schedules_follow_the_supplement() {
    let o = OptimConfig::default(); // ResNet-20: 0.1, ÷10 at 82 and 123
    assert_eq!(lr_at(0.0, &o), 0.1);
    assert_eq!(lr_at(81.9, &o), 0.1);
    assert!((lr_at(82.0, &o) - 0.01).abs() < 1e-12);
    assert!((lr_at(150.0, &o) - 0.001).abs() < 1e-12);
    let p = OptimConfig { schedule: lq_train::config::Schedule::Poly, epochs: 64, lr: 0.1, final_lr: 0.0, ..o };
    assert!((lr_at(32.0, &p) - 0.05).abs() < 1e-12);
    assert_eq!(lr_at(64.0, &p), 0.0);
}

#[test]
fn activation_ste_masks_above_top_level() {
    let mut q = lq_train::quant::Quantizer::activation("t", lq_train::quant::Method::Lq, 2).unwrap();
    let x = Tensor::from_slice(&[0.1f32, 1.0, 1.349, 2.0]).set_requires_grad(true);
    let y = q.forward_activation(&x, false).unwrap();
    y.sum(tch::Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), vec![1.0, 1.0, 1.0, 0.0]);
    let v = Vec::<f32>::try_from(&y.detach()).unwrap();
    assert!((v[0] - 0.0).abs() < 1e-6 && (v[1] - 0.89933).abs() < 1e-4 && (v[3] - 1.349).abs() < 1e-4);
}

/// The engine's logits on exported models match the trainer's eval forward (≤ 1e-4 relative to the largest
/// logit; measured ~1e-6) with the same top-1 class, for ResNet A/B and VGG-Small at several W/A.
/// Exception, by construction of any two float implementations: an activation within rounding (~1e-7) of a
/// threshold can take the neighbouring code in one of them (libtorch's f32 convs and the engine's full-precision
/// conv0 sum in other orders; the engine compares against BN-folded thresholds), and that moves the logits by
/// percent. How often depends on the CPU's libtorch kernels: on VGG-Small (420k activations per image) 2 of 64
/// images on a Zen 3 machine, 3 of 8 on an AVX-512 one. So of 32 images at least 8 must agree, and every agreeing
/// image has the same top-1. That catches a wrong export or engine op that moves most images (tried: input images
/// shifted by one fail all); errors confined to a few images are left to lq-engine's exact integer kernel tests.
#[test]
fn engine_agrees_with_trainer() {
    let cases: &[&[&str]] = &[
        &["model.shortcut=\"A\"", "quant.w_bits=2", "quant.a_bits=2"],
        &["model.shortcut=\"B\"", "quant.w_bits=1", "quant.a_bits=2"],
        &["model.shortcut=\"A\"", "quant.w_bits=3", "quant.a_bits=3"],
        &["quant.method=\"hwgq\"", "quant.w_bits=1", "quant.a_bits=2"],
        &["model.arch=\"vgg_small\"", "quant.w_bits=2", "quant.a_bits=2"],
    ];
    let ds = dataset(32, 3);
    let norm = lq_data::Normalize::per_channel_of(&ds);
    for sets in cases {
        let mut tr = Trainer::new(cfg(sets), 10).unwrap();
        let train_b = batch(16);
        for _ in 0..3 {
            tr.step(&train_b, 0.05).unwrap();
        }
        let f = lq_train::export::export(&tr, &norm, [3, 32, 32], 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lqm");
        f.save(&path).unwrap();
        let model = lq_engine::Model::load(&path).unwrap();
        let n = 32;
        let b = batch(n);
        let want = Vec::<f32>::try_from(&tr.logits(&b).unwrap().flatten(0, -1)).unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut off = 0;
        // All images as one batch: every engine layer is one GEMM over the images' patch rows.
        let all = model.forward_batch(&b.x, n, lq_engine::Isa::best()).unwrap();
        for i in 0..n {
            let got = &all[i * 10..(i + 1) * 10];
            let w = &want[i * 10..(i + 1) * 10];
            let err = got.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            if err > 1e-4 * scale {
                off += 1;
                eprintln!("{sets:?} image {i}: max error {err:e} (scale {scale}): a code flipped at a threshold");
                continue;
            }
            let top = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(top(got), top(w), "{sets:?} image {i}");
        }
        assert!(off <= n - n / 4, "{sets:?}: {off} of {n} images disagree by more than 1e-4");
    }
}
