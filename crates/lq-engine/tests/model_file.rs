//! Model file round trip and hostile input: truncations and corruptions give errors, never panics.
use lq_engine::{Arch, BitConv, ChannelQuant, Isa, Meta, Model, ModelFile, FORMAT_VERSION};
use lq_quant::{CodeSet, Levels};

/// A random but valid ResNet-8 (shortcut B) file, built the way the exporter builds one.
fn resnet8() -> ModelFile {
    let mut s = 7u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut f = ModelFile::default();
    let lv = Levels::from_basis(&[0.4, 0.8], CodeSet::Binary).unwrap();
    let act = |f: &mut ModelFile, name: &str, c: usize, rnd: &mut dyn FnMut() -> f32| {
        let scale: Vec<f32> = (0..c).map(|_| rnd() + 0.7).collect();
        let shift: Vec<f32> = (0..c).map(|_| rnd()).collect();
        f.put_act(name, &ChannelQuant::fold(&lv, &scale, &shift), &[0.4, 0.8]);
    };
    let conv =
        |f: &mut ModelFile, name: &str, co: usize, ci: usize, k: usize, st: usize, rnd: &mut dyn FnMut() -> f32| {
            let w: Vec<f32> = (0..co * ci * k * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..co * 2).map(|_| rnd().abs() * 0.1 + 0.01).collect();
            f.put_conv(name, &BitConv::pack(co, ci, k, st, &w, &b).unwrap());
        };
    f.put_f32("conv0.w", vec![16, 3, 3, 3], (0..432).map(|_| rnd()).collect());
    let mut c_in = 16;
    for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
        let p = format!("stage{}.block0", s + 1);
        let st = if s > 0 { 2 } else { 1 };
        act(&mut f, &format!("{p}.pre"), c_in, &mut rnd);
        conv(&mut f, &format!("{p}.conv1"), c, c_in, 3, st, &mut rnd);
        act(&mut f, &format!("{p}.mid"), c, &mut rnd);
        conv(&mut f, &format!("{p}.conv2"), c, c, 3, 1, &mut rnd);
        if s > 0 {
            conv(&mut f, &format!("{p}.proj"), c, c_in, 1, st, &mut rnd);
            f.put_f32(&format!("{p}.proj_bn.scale"), vec![c], vec![1.0; c]);
            f.put_f32(&format!("{p}.proj_bn.shift"), vec![c], vec![0.0; c]);
        }
        c_in = c;
    }
    f.put_f32("head_bn.scale", vec![64], vec![1.0; 64]);
    f.put_f32("head_bn.shift", vec![64], vec![0.1; 64]);
    f.put_f32("fc.weight", vec![10, 64], (0..640).map(|_| rnd()).collect());
    f.put_f32("fc.bias", vec![10], vec![0.0; 10]);
    let arch = Arch {
        kind: "resnet".into(),
        depth: 8,
        shortcut: "B".into(),
        classes: 10,
        w_bits: 2,
        a_bits: 2,
        input: [3, 32, 32],
    };
    f.meta = Some(Meta { version: FORMAT_VERSION, arch, mean: vec![128.0; 3072], scale: vec![1.0 / 64.0; 3] });
    f
}

#[test]
fn round_trip_runs_and_is_identical() {
    let f = resnet8();
    let dir = std::env::temp_dir().join(format!("lqm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.lqm");
    f.save(&path).unwrap();
    let back = ModelFile::load(&path).unwrap();
    assert_eq!(back, f);
    let m = Model::load(&path).unwrap();
    let img: Vec<u8> = (0..3072).map(|i| (i * 37 % 256) as u8).collect();
    let x = m.normalize(&img);
    let a = m.forward(&x, Isa::Portable).unwrap();
    let b = m.forward(&x, Isa::best()).unwrap();
    assert_eq!(a.len(), 10);
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + p.abs())));
    assert!(m.forward(&x[..100], Isa::best()).is_err());
    // A batch gives each image's own logits (images share GEMMs but not pixels: padding, pooling, shortcuts).
    let imgs: Vec<f32> = (0..5)
        .flat_map(|s| m.normalize(&(0..3072).map(|i| ((i * 37 + s * 101) % 256) as u8).collect::<Vec<_>>()))
        .collect();
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx2Lut].into_iter().filter(|i| i.is_available()) {
        let batch = m.forward_batch(&imgs, 5, isa).unwrap();
        for (i, img) in imgs.chunks(3072).enumerate() {
            let one = m.forward(img, isa).unwrap();
            let got = &batch[i * 10..(i + 1) * 10];
            assert!(one.iter().zip(got).all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + p.abs())), "{isa:?} image {i}");
        }
    }
    assert!(m.forward_batch(&imgs, 4, Isa::best()).is_err());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn wrong_shapes_and_versions_are_named() {
    let mut f = resnet8();
    f.put_f32("fc.bias", vec![11], vec![0.0; 11]);
    let e = Model::from_file(&f).unwrap_err();
    assert!(e.contains("fc.bias") && e.contains("[11]"), "{e}");
    let mut f = resnet8();
    f.tensors.remove("stage2.block0.proj.bits");
    assert!(Model::from_file(&f).unwrap_err().contains("stage2.block0.proj.bits"));
    let mut f = resnet8();
    f.meta.as_mut().unwrap().version = 99;
    let dir = std::env::temp_dir().join(format!("lqm-v-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    f.save(&dir.join("v.lqm")).unwrap();
    let e = ModelFile::load(&dir.join("v.lqm")).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("v.lqm"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// Every truncation and a sweep of single-byte corruptions are rejected or load into a consistent model;
/// none panics (each is parsed and, if that succeeds, built and run).
#[test]
fn hostile_bytes_never_panic() {
    let f = resnet8();
    let dir = std::env::temp_dir().join(format!("lqm-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    f.save(&dir.join("m.lqm")).unwrap();
    let bytes = std::fs::read(dir.join("m.lqm")).unwrap();
    std::fs::remove_dir_all(dir).ok();
    let try_all = |b: &[u8]| {
        if let Ok(f) = ModelFile::from_bytes(b) {
            if let Ok(m) = Model::from_file(&f) {
                let _ = m.forward(&vec![0.1; 3072], Isa::Portable);
            }
        }
    };
    for cut in (0..bytes.len()).step_by(bytes.len() / 300 + 1) {
        assert!(ModelFile::from_bytes(&bytes[..cut]).is_err() || cut == bytes.len());
    }
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    for i in (0..header.min(bytes.len())).step_by(header / 150 + 1) {
        for v in [0u8, b'9', b'"', 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            try_all(&b);
        }
    }
}
