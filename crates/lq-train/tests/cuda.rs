//! CUDA test: the tensor-op quantizer path trains like the fused CPU path. Same initial weights on both devices;
//! TF32/cuDNN arithmetic differs slightly, so the comparison is loose. Ignored by default (cargo test counts it
//! as ignored); on a GPU machine: `cargo test -p lq-train --test cuda -- --ignored`, which fails without CUDA.
mod common;
use common::{batch, cfg};
use lq_train::trainer::load_cuda_backend;
use lq_train::Trainer;

#[test]
#[ignore = "needs a CUDA libtorch and a GPU: run with --ignored there"]
fn cuda_trains_like_cpu() {
    assert!(load_cuda_backend(), "CUDA is not available (see README: CUDA)");
    let sets = ["quant.w_bits=2", "quant.a_bits=2"];
    let mut cpu = Trainer::new(cfg(&sets), 10).unwrap();
    let mut gpu = Trainer::new(cfg(&[sets[0], sets[1], "run.device=\"cuda\""]), 10).unwrap();
    let src = cpu.vs.variables();
    tch::no_grad(|| {
        for (n, mut v) in gpu.vs.variables() {
            v.copy_(&src[&n]);
        }
    });
    let b = batch(16);
    for step in 0..5 {
        let (a, g) = (cpu.step(&b, 0.05).unwrap().loss(), gpu.step(&b, 0.05).unwrap().loss());
        eprintln!("step {step}: cpu loss {a:.5} cuda loss {g:.5}");
        assert!((a - g).abs() <= 0.05 * a.abs().max(1.0), "step {step}: {a} vs {g}");
    }
    for (qc, qg) in cpu.net.quantizers().iter().zip(gpu.net.quantizers()) {
        let d = qc
            .state
            .basis
            .iter()
            .zip(&qg.state.basis)
            .map(|(x, y)| ((x - y) / x.abs().max(1e-3)).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 0.05, "{}: bases differ by {d}", qc.name);
    }
    let t = std::time::Instant::now();
    for _ in 0..10 {
        gpu.step(&batch(128), 0.05).unwrap();
    }
    eprintln!("cuda: {:.1} ms per step at batch 128 (ResNet-8 W2A2)", t.elapsed().as_secs_f64() * 100.0);
}
