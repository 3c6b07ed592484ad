//! Model file round trip and hostile input: truncations and corruptions give errors, never panics.
mod common;
use lq_engine::{Isa, Meta, Model, ModelFile};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

/// A valid ResNet-8 (shortcut B, W2A2, 32×32) file, built op by op as the exporter builds one.
fn resnet8() -> ModelFile {
    common::resnet_cifar(8, 'B', 2, 2, 32, 7)
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
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx2Lut, Isa::Avx512].into_iter().filter(|i| i.is_available()) {
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
        let _ = ModelFile::from_bytes(b);
        // Past the hash check (which rejects nearly every corruption) to the shape and value checks.
        if let Ok(f) = ModelFile::from_bytes_unverified(b) {
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

/// `resnet8()` with its metadata edited by `edit`.
fn edited(edit: impl FnOnce(&mut Meta)) -> ModelFile {
    let mut f = resnet8();
    edit(f.meta.as_mut().unwrap());
    f
}

/// Every declared input the graph cannot run (or that would overflow a size) is a load error naming the problem.
#[test]
fn input_shape_disagreeing_with_layers_is_rejected() {
    let cases: Vec<(&str, ModelFile, &str)> = vec![
        ("zero height", edited(|m| (m.input, m.mean) = ([3, 0, 32], vec![128.0; 3])), "empty"),
        ("zero channels", edited(|m| (m.input, m.mean, m.scale) = ([0, 32, 32], vec![], vec![])), "empty"),
        ("size overflow", edited(|m| (m.input, m.mean) = ([3, 1 << 40, 1 << 40], vec![128.0; 3])), "too large"),
        (
            "1 channel vs conv0.w",
            edited(|m| (m.input, m.mean, m.scale) = ([1, 32, 32], vec![128.0], vec![0.1])),
            "conv0.w",
        ),
        ("classes", edited(|m| m.classes = 7), "needs 1x1x7"),
        ("mean", edited(|m| m.mean = vec![0.0; 5]), "normalisation"),
    ];
    for (what, f, want) in cases {
        let e = Model::from_file(&f).unwrap_err();
        assert!(e.contains(want), "{what}: {e}");
    }
    assert!(Model::from_file(&edited(|m| m.classes = 0)).unwrap_err().contains("0 classes"));
    // Shortcut A halves the map by pooling, conv1 by a stride-2 conv: at 30x30 they disagree (15 → 7 vs 8).
    let f = common::resnet_cifar(8, 'A', 2, 2, 30, 3);
    let e = Model::from_file(&f).unwrap_err();
    assert!(e.contains("(add)") && e.contains("different shapes"), "{e}");
    // Shortcut B at an odd size (conv1 and proj agree on ⌈h/2⌉) loads and runs.
    let m = Model::from_file(&common::resnet_cifar(8, 'B', 2, 2, 31, 3)).unwrap();
    assert_eq!(m.forward(&vec![0.1; 3 * 31 * 31], Isa::best()).unwrap().len(), 10);
}

#[test]
fn non_finite_values_are_named() {
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut f = resnet8();
        if let Some((_, lq_engine::Data::F32(w))) = f.tensors.get_mut("stage2.block0.conv1.basis") {
            w[3] = v;
        }
        let e = Model::from_file(&f).unwrap_err();
        assert!(e.contains("stage2.block0.conv1.basis") && e.contains("index 3"), "{e}");
        let e = Model::from_file(&edited(|m| m.mean[2] = v)).unwrap_err();
        assert!(e.contains("mean") && e.contains("index 2"), "{e}");
        let e = Model::from_file(&edited(|m| m.scale[1] = v)).unwrap_err();
        assert!(e.contains("scale") && e.contains("index 1"), "{e}");
    }
}

fn saved_bytes(f: &ModelFile) -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = tempfile_dir(&format!("bytes{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    f.save(&dir.join("m.lqm")).unwrap();
    let b = std::fs::read(dir.join("m.lqm")).unwrap();
    std::fs::remove_dir_all(dir).ok();
    b
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lqm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn content_hash_catches_edits() {
    let bytes = saved_bytes(&resnet8());
    assert!(ModelFile::from_bytes(&bytes).is_ok());
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    // One digit of the metadata JSON (the scale 0.015625 → 0.015626), same length: a different model.
    let text = String::from_utf8_lossy(&bytes[8..header]).into_owned();
    let at = 8 + text.find("0.015625").expect("scale in the metadata") + 7;
    let mut b = bytes.clone();
    b[at] = b'6';
    assert!(ModelFile::from_bytes_unverified(&b).is_ok(), "the edit keeps a valid file");
    let e = ModelFile::from_bytes(&b).unwrap_err();
    assert!(e.contains("content hash mismatch") && e.contains("modified or corrupted"), "{e}");
    // One flipped bit in the last tensor byte.
    let mut b = bytes.clone();
    *b.last_mut().unwrap() ^= 1;
    assert!(ModelFile::from_bytes(&b).unwrap_err().contains("content hash mismatch"));
    // The hash key removed (renamed, same length): not an exported file.
    let mut b = bytes.clone();
    let at = 8 + text.find("lqnets.sha256").unwrap();
    b[at..at + 13].copy_from_slice(b"lqnets.sha000");
    assert!(ModelFile::from_bytes(&b).unwrap_err().contains("no content hash"));
}

#[test]
fn old_versions_ask_for_re_export() {
    for v in [1, 2] {
        old_version_asks_for_re_export(v);
    }
}

fn old_version_asks_for_re_export(version: u32) {
    // A version-1 or -2 file as older builds wrote it: the fixed-architecture metadata; no hash in version 1.
    let f = edited(|m| m.version = version);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = f
        .tensors
        .iter()
        .map(|(n, (s, d))| match d {
            lq_engine::Data::F32(v) => (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            lq_engine::Data::U8(v) => (n.clone(), s.clone(), v.clone()),
            lq_engine::Data::U64(_) => unreachable!("no u64 tensors here"),
        })
        .collect();
    let views: Vec<_> = data
        .iter()
        .zip(&f.tensors)
        .map(|((n, s, b), (_, (_, d)))| {
            let dt = if matches!(d, lq_engine::Data::F32(_)) { Dtype::F32 } else { Dtype::U8 };
            (n.as_str(), TensorView::new(dt, s.clone(), b).unwrap())
        })
        .collect();
    let json = format!(
        r#"{{"version":{version},"arch":{{"kind":"resnet","depth":8,"shortcut":"B","classes":10,"w_bits":2,"a_bits":2,"input":[3,32,32]}},"mean":[128.0,128.0,128.0],"scale":[0.015625,0.015625,0.015625]}}"#
    );
    let bytes = safetensors::serialize(views, &Some(HashMap::from([("lqnets".to_string(), json)]))).unwrap();
    let e = ModelFile::from_bytes(&bytes).unwrap_err();
    let want = format!("format version {version} (this build reads 3): re-export the checkpoint with `lqnets export`");
    assert!(e.contains(&want), "{e}");
    // Also when the file carries a (valid) hash.
    let e = ModelFile::from_bytes(&saved_bytes(&f)).unwrap_err();
    assert!(e.contains(&format!("format version {version}")) && e.contains("re-export"), "{e}");
}

/// A read error names the file once and its cause once, also as `anyhow`'s `{:#}` prints the chain.
#[test]
fn io_error_is_not_repeated() {
    let e = Model::load(std::path::Path::new("/nonexistent/m.lqm")).unwrap_err();
    let mut msg = e.to_string();
    let mut at = std::error::Error::source(&e);
    while let Some(c) = at {
        msg += &format!(": {c}");
        at = c.source();
    }
    assert_eq!((msg.matches("m.lqm").count(), msg.matches("os error 2").count()), (1, 1), "{msg}");
}
