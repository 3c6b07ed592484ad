//! The network registry: every network builds, trains a step in every mode, and has the parameter count the
//! definitions imply; unknown networks are rejected naming the valid ones.
use lq_train::{TrainConfig, Trainer};
use tch::{Kind, Tensor};

/// `[model]` settings and the smallest convenient input side of every network.
pub const NETS: [(&str, i64); 9] = [
    ("model.arch=\"resnet_cifar\"", 32),
    ("model.arch=\"vgg_small\"", 32),
    ("model.arch=\"resnet\"\nmodel.depth=18", 64),
    ("model.arch=\"resnet\"\nmodel.depth=50", 64),
    ("model.arch=\"resnet\"\nmodel.depth=18\nmodel.mode=\"postact\"", 64),
    ("model.arch=\"alexnet\"", 67),
    ("model.arch=\"vgg_variant\"", 64),
    ("model.arch=\"googlenet\"", 64),
    ("model.arch=\"densenet121\"", 64),
];

fn config(net: &str, size: i64, mode: &[&str]) -> Option<TrainConfig> {
    let mut sets: Vec<String> = net.lines().map(String::from).collect();
    sets.extend(mode.iter().map(|s| s.to_string()));
    sets.push(format!("data.size={size}"));
    if net.contains("postact") && !mode.contains(&"quant.a_bits=32") {
        // Weight-only by definition: the config check must refuse it.
        let e = TrainConfig::load(None, &sets).unwrap_err().to_string();
        assert!(e.contains("quant.a_bits") && e.contains("post-activation"), "{e}");
        return None;
    }
    Some(TrainConfig::load(None, &sets).unwrap_or_else(|e| panic!("{sets:?}: {e}")))
}

#[test]
fn every_network_trains_in_every_mode() {
    tch::manual_seed(0);
    let modes: [&[&str]; 4] = [
        &["quant.w_bits=32", "quant.a_bits=32"],
        &["quant.w_bits=2", "quant.a_bits=2"],
        &["quant.method=\"hwgq\"", "quant.w_bits=1", "quant.a_bits=2"],
        &["quant.w_bits=2", "quant.a_bits=32"],
    ];
    for (net, size) in NETS {
        for mode in modes {
            let Some(cfg) = config(net, size, mode) else { continue };
            let mut tr = Trainer::new(cfg, 7).unwrap();
            let x = Tensor::randn([2, 3, size, size], (Kind::Float, tch::Device::Cpu));
            let y = Tensor::from_slice(&[1i64, 5]);
            // One step first: the post-activation branches start with γ = 0 and pass no gradient until it moves.
            let loss = tr.net.forward(&x, true).unwrap().cross_entropy_for_logits(&y);
            loss.backward();
            tr.opt.step(0.01);
            let logits = tr.net.forward(&x, true).unwrap();
            assert_eq!(logits.size(), [2, 7], "{net} {mode:?}");
            let loss = logits.cross_entropy_for_logits(&y);
            assert!(loss.double_value(&[]).is_finite(), "{net} {mode:?}");
            loss.backward();
            for p in tr.opt.params.iter().filter(|p| p.name.ends_with(".w")) {
                let g = p.var.grad().abs().sum(Kind::Double).double_value(&[]);
                assert!(g > 0.0 && g.is_finite(), "{net} {mode:?}: {} has gradient sum {g}", p.name);
            }
            let quantized = tr.net.quantizers().len();
            assert_eq!(quantized == 0, mode[0].ends_with("=32") && mode[1].ends_with("=32"), "{net} {mode:?}");
            tr.opt.step(0.01);
            let eval = tch::no_grad(|| tr.net.forward(&x, false)).unwrap();
            assert_eq!(eval.size(), [2, 7]);
        }
    }
}

fn params(sets: &[&str]) -> usize {
    let mut s: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    s.extend(["quant.w_bits=32".into(), "quant.a_bits=32".into()]);
    let tr = Trainer::new(TrainConfig::load(None, &s).unwrap(), 1000).unwrap();
    tr.net.summary().iter().map(|r| r.params).sum()
}

/// Parameter counts (weights, biases, BN γ/β) against the published ones and the spec's definitions.
#[test]
fn parameter_counts_match_the_definitions() {
    // The post-activation ResNets are torchvision's ResNets (v1.5: stride on the 3×3 of a bottleneck).
    let r = |d: usize, mode: &str| {
        params(&[
            "model.arch=\"resnet\"",
            &format!("model.depth={d}"),
            &format!("model.mode=\"{mode}\""),
            "data.size=224",
        ])
    };
    assert_eq!(r(18, "postact"), 11_689_512);
    assert_eq!(r(34, "postact"), 21_797_672);
    assert_eq!(r(50, "postact"), 25_557_032);
    // Pre-activation: one more BN per later block (pre-activation) and per group (tail); ResNet-50's group-0 BN
    // after the first block's projection is there in both.
    let extra = |blocks: [usize; 4], out: [usize; 4]| -> usize {
        blocks.iter().zip(out).map(|(&n, c)| (n - 1) * 2 * c + 2 * c).sum()
    };
    assert_eq!(r(18, "preact"), 11_689_512 + extra([2, 2, 2, 2], [64, 128, 256, 512]));
    assert_eq!(r(50, "preact"), 25_557_032 + extra([3, 4, 6, 3], [256, 512, 1024, 2048]));

    // DenseNet-121: torchvision's 7,978,856 has a BN on the input of every 1×1 conv (dense layers and
    // transitions); the official LQ model has none there but one after each 3×3 conv (32 channels).
    let mut c = 64;
    let mut missing = 0;
    for (i, n) in [6, 12, 24, 16].into_iter().enumerate() {
        for _ in 0..n {
            missing += 2 * c;
            c += 32;
        }
        if i < 3 {
            missing += 2 * c;
            c /= 2;
        }
    }
    let d = params(&["model.arch=\"densenet121\"", "data.size=224"]);
    assert_eq!(d, 7_978_856 - missing + 58 * 2 * 32);

    // AlexNet-BN (227²), from spec §5.5: conv1 11×11 96 (no bias), conv2 5×5 256, conv3 384, conv4 384,
    // conv5 256, each with BN γ/β; fc6 6×6×256→4096 and fc7 4096→4096 with bias and BN without γ/β; fc8.
    let alex = 96 * 3 * 121
        + 256 * 96 * 25
        + 384 * 256 * 9
        + 384 * 384 * 9
        + 256 * 384 * 9
        + 2 * (96 + 256 + 384 + 384 + 256)
        + (4096 * 256 * 36 + 4096)
        + (4096 * 4096 + 4096)
        + (1000 * 4096 + 1000);
    assert_eq!(params(&["model.arch=\"alexnet\"", "data.size=227"]), alex);

    // VGG-Variant (224²), spec §5.4.
    let convs = 96 * 3 * 49 + 256 * 96 * 9 + 2 * 256 * 256 * 9 + 512 * 256 * 9 + 2 * 512 * 512 * 9 + 3 * 512 * 512 * 9;
    let bns = 2 * (96 + 3 * 256 + 6 * 512);
    let fcs = (4096 * 512 * 49 + 4096) + (4096 * 4096 + 4096) + (1000 * 4096 + 1000);
    assert_eq!(params(&["model.arch=\"vgg_variant\"", "data.size=224"]), convs + bns + fcs);

    // GoogLeNet-Variant (224²), spec §5.6: reduce convs as wide as the convs they feed.
    let mut g = 64 * 3 * 49 + 2 * 64 + 192 * 64 + 2 * 192 + 192 * 192 * 9 + 2 * 192;
    let mut c_in = 192;
    let blocks = [(96, 128, 32), (192, 192, 96), (256, 208, 48), (224, 224, 64), (192, 256, 64), (176, 288, 64)];
    for (c1, c3, c5) in blocks.into_iter().chain([(384, 320, 128), (384, 320, 128), (512, 384, 128)]) {
        g += c1 * c_in + c3 * c_in + c3 * c3 * 9 + c5 * c_in + c5 * c5 * 25;
        g += 2 * (c1 + 2 * c3 + 2 * c5); // a BN after every conv (after the pool in stage-end blocks; 5b: one on the concat)
        c_in = c1 + c3 + c5;
    }
    // 5b: no BN on the branch outputs but one on the concatenation (c_in channels), and its reduce BNs.
    g -= 2 * (512 + 384 + 128);
    g += 2 * c_in;
    g += 1000 * c_in + 1000;
    assert_eq!(params(&["model.arch=\"googlenet\"", "data.size=224"]), g);
}

#[test]
fn unknown_networks_name_the_valid_ones() {
    let e = TrainConfig::load(None, &["model.arch=\"resnet19\"".into()]).unwrap_err().to_string();
    for name in ["resnet_cifar", "vgg_small", "resnet", "alexnet", "vgg_variant", "googlenet", "densenet121"] {
        assert!(e.contains(name), "{e}");
    }
    let e = TrainConfig::load(None, &["model.arch=\"resnet\"".into(), "model.depth=20".into()]).unwrap_err();
    assert!(e.to_string().contains("18, 34 or 50"), "{e}");
    let e = TrainConfig::load(None, &["model.arch=\"vgg_small\"".into(), "model.depth=20".into()]).unwrap_err();
    assert!(e.to_string().contains("depth"), "{e}");
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/imagenet")).unwrap() {
        let p = f.unwrap().path();
        TrainConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
