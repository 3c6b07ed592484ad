//! The op-list interpreter against a dense float64 interpretation of the same file (tests/common), on graphs that
//! cover every op, at several bit widths, on every kernel path; and the load-time validation of graphs.
mod common;
use common::{image, reference, resnet_cifar, vgg_small, Net};
use lq_engine::{Isa, Model, ModelFile, Op, Weights};

/// The kernel paths this CPU runs; the others are reported as skipped.
fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx2Lut, Isa::Avx512]
        .into_iter()
        .filter(|i| {
            let ok = i.is_available();
            if !ok {
                println!("SKIP {i:?}: not available on this CPU");
            }
            ok
        })
        .collect()
}

/// Engine logits equal the reference's (within the float rounding of the last layers) on two images, on every
/// kernel path.
fn check(what: &str, f: &ModelFile) {
    let m = Model::from_file(f).unwrap_or_else(|e| panic!("{what}: {e}"));
    for seed in [1, 2] {
        let x = image(f, seed);
        let want = reference(f, &x);
        let tol = 1e-5 * want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for isa in isas() {
            let got = m.forward(&x, isa).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - e).abs() <= tol, "{what} {isa:?} image {seed} logit {i}: {g} vs {e}");
            }
        }
    }
}

/// An ImageNet-style stem and residual stage: 7×7/2 pad 3 fp conv, max pool 3/2 pad 1, BN+ReLU, 3×3 QConvs at
/// strides 1 and 2 (pad 1, one with bias), a 1×1/2 pad 0 QConv sharing its act unit with the first, BN without
/// ReLU, add, ReLU, global average pool, linear.
fn stem(kw: usize, ka: usize) -> ModelFile {
    let mut n = Net::new([3, 19, 21], kw, ka, 11 + kw as u64);
    let x = n.conv("conv1", 0, 16, 7, 2, 3, Weights::Fp, false); // 10×11
    let x = n.max_pool(x, 3, 2, 1); // 5×6, over negative values too: padding must not win
    let x = n.bn("bn1", x, true);
    let r = n.qconv("b.conv1", x, "b.pre", 16, 3, 1, 1, false);
    let r = n.qconv("b.conv2", r, "b.mid", 24, 3, 2, 1, true); // 3×3
    let s = n.qconv("b.proj", x, "b.pre", 24, 1, 2, 0, false);
    let s = n.bn("b.proj_bn", s, false);
    let x = n.add(r, s);
    let x = n.relu(x);
    let x = n.global_avg_pool(x);
    n.linear("fc", x, 7);
    n.finish()
}

/// AlexNet/GoogLeNet/DenseNet pieces: 11×11/4 VALID fp conv with bias, max pool 3/2 VALID, act values
/// concatenated with another branch's and the pooled map into a packed fp conv, a 1×1 QConv, and an fc6-style VALID QConv whose
/// kernel covers the whole map, with bias.
fn alexnet(kw: usize, ka: usize) -> ModelFile {
    let mut n = Net::new([3, 39, 39], kw, ka, 23 + ka as u64);
    let x = n.conv("conv1", 0, 8, 11, 4, 0, Weights::Fp, true); // 8×8
    let x = n.max_pool(x, 3, 2, 0); // 3×3
    let a = n.act("a1", x);
    let q = n.qconv("branch", x, "a1", 12, 1, 1, 0, false);
    let b = n.act("a2", q);
    let x = n.concat(&[a, b, x]);
    let x = n.conv("mix", x, 16, 3, 1, 1, Weights::Packed, true);
    let x = n.qconv("fc6", x, "a3", 32, 3, 1, 0, true); // 1×1
    let x = n.qconv("fc7", x, "a4", 16, 1, 1, 0, true);
    n.linear("fc8", x, 5);
    n.finish()
}

/// A shortcut-A block: 2×2 average pool and zero channels added, and a linear layer on a 2×2×C map (its C,H,W
/// flatten order).
fn pooled(kw: usize, ka: usize) -> ModelFile {
    let mut n = Net::new([3, 8, 8], kw, ka, 37);
    let x = n.conv("conv0", 0, 8, 3, 1, 1, Weights::Fp, false);
    let r = n.qconv("conv1", x, "pre", 16, 3, 2, 1, false); // 4×4
    let p = n.avg_pool(x, 2, 2);
    let p = n.pad_channels(p, 3, 5);
    let x = n.add(p, r);
    let x = n.avg_pool(x, 2, 2); // 2×2
    let x = n.bn("head", x, true);
    n.linear("fc", x, 6);
    n.finish()
}

/// Zero channels added around maps of 12 channels (a whole copy of 8 and a tail of 4) and of 5 (a tail only), and
/// pools over them (channel blocks of 8 and the channels past the last).
fn padded(kw: usize, ka: usize) -> ModelFile {
    let mut n = Net::new([3, 6, 6], kw, ka, 43);
    let x = n.conv("conv0", 0, 12, 3, 1, 1, Weights::Fp, false);
    let x = n.avg_pool(x, 2, 1); // 5×5
    let x = n.pad_channels(x, 1, 3);
    let x = n.qconv("q", x, "a", 5, 3, 1, 1, false);
    let x = n.max_pool(x, 3, 1, 1);
    let x = n.pad_channels(x, 2, 1);
    n.linear("fc", x, 4);
    n.finish()
}

/// Ops other than an fp conv reading the input (its NHWC copy) next to an fp conv reading it (from CHW), and an
/// add of a value to itself.
fn input_ops(kw: usize, ka: usize) -> ModelFile {
    let mut n = Net::new([3, 6, 5], kw, ka, 41);
    let a = n.act("a_in", 0);
    let q = n.qconv("q", 0, "a_in", 8, 3, 1, 1, true);
    let c = n.conv("c", 0, 4, 3, 1, 1, Weights::Fp, false);
    let x = n.concat(&[a, q, c]);
    let x = n.conv("mix", x, 8, 1, 1, 0, Weights::Fp, false);
    let x = n.add(x, x);
    let x = n.global_avg_pool(x);
    n.linear("fc", x, 3);
    n.finish()
}

#[test]
fn every_op_matches_the_reference() {
    for (kw, ka) in [(1, 2), (2, 2), (3, 3)] {
        check(&format!("stem W{kw}A{ka}"), &stem(kw, ka));
        check(&format!("alexnet W{kw}A{ka}"), &alexnet(kw, ka));
        check(&format!("pooled W{kw}A{ka}"), &pooled(kw, ka));
        check(&format!("input ops W{kw}A{ka}"), &input_ops(kw, ka));
        check(&format!("padded W{kw}A{ka}"), &padded(kw, ka));
    }
}

#[test]
fn resnet20_matches_the_reference() {
    check("resnet20 A W2A2", &resnet_cifar(20, 'A', 2, 2, 16, 5));
    check("resnet20 B W1A2", &resnet_cifar(20, 'B', 1, 2, 16, 6));
    check("resnet8 B W3A3", &resnet_cifar(8, 'B', 3, 3, 12, 7));
}

#[test]
fn vgg_small_matches_the_reference() {
    check("vgg-small/4 W2A2", &vgg_small([32, 32, 64, 64, 128, 128], 2, 2, 8));
}

/// `pooled(2, 2)` with op `i` replaced by `edit(op)`.
fn mutated(i: usize, edit: impl FnOnce(&mut Op)) -> ModelFile {
    let mut f = pooled(2, 2);
    edit(&mut f.meta.as_mut().unwrap().graph[i]);
    f
}

fn rejects(what: &str, f: &ModelFile, want: &[&str]) {
    let e = Model::from_file(f).expect_err(what);
    assert!(want.iter().all(|w| e.contains(w)), "{what}: {e}");
}

/// Each graph inconsistency is a load error naming the op and the problem.
#[test]
fn invalid_graphs_are_rejected_naming_the_op() {
    // Ops of `pooled`: 0 conv0, 1 conv1, 2 avg_pool, 3 pad_channels, 4 add, 5 avg_pool, 6 head, 7 fc.
    assert!(Model::from_file(&pooled(2, 2)).is_ok());
    let src = |v: usize| {
        move |op: &mut Op| {
            if let Op::Add { b, .. } = op {
                *b = v
            }
        }
    };
    rejects("later src", &mutated(4, src(6)), &["op 4 (add)", "reads value 6"]);
    rejects("own output", &mutated(4, src(5)), &["op 4 (add)", "reads value 5"]);
    rejects("add shapes", &mutated(4, src(1)), &["op 4 (add)", "different shapes", "4x4x16", "8x8x8"]);
    let pad = |before: usize| {
        move |op: &mut Op| {
            if let Op::PadChannels { before: b, .. } = op {
                *b = before
            }
        }
    };
    rejects("channel mismatch", &mutated(3, pad(4)), &["op 4 (add)", "4x4x17"]);
    let k = |k: usize, pad: usize| {
        move |op: &mut Op| {
            if let Op::QConv { k: kk, pad: p, .. } = op {
                (*kk, *p) = (k, pad)
            }
        }
    };
    rejects("kernel > map", &mutated(1, k(11, 1)), &["op 1 (qconv `conv1`)", "kernel 11 is bigger", "8x8x8"]);
    rejects("pad >= k", &mutated(1, k(3, 3)), &["op 1 (qconv `conv1`)", "padding 3"]);
    // Same geometry, other kernel: the stored bits no longer fit.
    rejects("bits shape", &mutated(1, k(1, 0)), &["op 1 (qconv `conv1`)", "conv1.bits", "[16, 2, 1]"]);
    let name = |op: &mut Op| {
        if let Op::Bn { name, .. } = op {
            *name = "nohead".into()
        }
    };
    rejects("missing tensor", &mutated(6, name), &["op 6 (bn `nohead`)", "`nohead.scale` is missing"]);
    let stride0 = |op: &mut Op| {
        if let Op::AvgPool { stride, .. } = op {
            *stride = 0
        }
    };
    rejects("stride 0", &mutated(5, stride0), &["op 5 (avg_pool)", "stride 0"]);
    let act = |op: &mut Op| {
        if let Op::QConv { act, .. } = op {
            *act = "missing".into()
        }
    };
    rejects("missing act", &mutated(1, act), &["op 1 (qconv `conv1`)", "`missing.basis` is missing"]);
    let concat = |op: &mut Op| *op = Op::Concat { srcs: vec![3, 1] };
    rejects("concat sizes", &mutated(4, concat), &["op 4 (concat)", "different sizes"]);
    let huge = |op: &mut Op| {
        if let Op::PadChannels { after, .. } = op {
            *after = usize::MAX
        }
    };
    rejects("channel overflow", &mutated(3, huge), &["op 3 (pad_channels)", "too many channels"]);
    let big = |op: &mut Op| {
        if let Op::PadChannels { after, .. } = op {
            *after = 1 << 30
        }
    };
    rejects("too large", &mutated(3, big), &["op 3 (pad_channels)", "too large"]);

    // The last value must be 1×1×classes.
    let mut f = pooled(2, 2);
    f.meta.as_mut().unwrap().graph.pop();
    f.tensors.retain(|n, _| !n.starts_with("fc."));
    rejects("last value", &f, &["op 6 (bn `head`)", "2x2x16", "1x1x6"]);
    let mut f = pooled(2, 2);
    f.meta.as_mut().unwrap().classes = 0;
    rejects("0 classes", &f, &["0 classes"]);
    let mut f = pooled(2, 2);
    f.meta.as_mut().unwrap().graph.clear();
    rejects("empty graph", &f, &["no ops"]);
    // A tensor no op reads (e.g. a bias the op does not declare).
    let mut f = pooled(2, 2);
    f.put_f32("conv1.b", vec![16], vec![0.0; 16]);
    rejects("unused tensor", &f, &["`conv1.b`", "not used"]);
    // An act unit shared by convs over different channel counts.
    let mut n = Net::new([3, 4, 4], 2, 2, 3);
    let x = n.conv("c0", 0, 8, 3, 1, 1, Weights::Fp, false);
    let y = n.qconv("q1", x, "a", 16, 3, 1, 1, false);
    let mut f = n.finish();
    let g = &mut f.meta.as_mut().unwrap().graph;
    g.push(Op::QConv { name: "q1".into(), src: y, act: "a".into(), c_out: 16, k: 3, stride: 1, pad: 1, bias: false });
    rejects("shared act", &f, &["op 2 (qconv `q1`)", "act unit `a` quantizes 8 channels", "has 16"]);
}
