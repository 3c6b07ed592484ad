//! The `lqnets` binary end to end on small generated files.
mod common;
use common::cifar_folder;
use std::process::Command;

fn lqnets(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lqnets")).args(args).output().expect("run lqnets")
}

#[test]
fn fit_prints_per_channel_json_and_lowers_the_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.npy");
    // 4 output channels × (3×3×2) weights, each channel at its own scale.
    let w: Vec<f32> = (0..72).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.01 * (1 + i / 18) as f32).collect();
    lq_data::write_npy(&p, &[4, 2, 3, 3], &w).unwrap();
    let fit =
        |args: &[&str]| lqnets(&[&["fit", "--input", p.to_str().unwrap(), "--bits", "2", "--json"], args].concat());
    let mse = |steps: &str| -> Vec<f64> {
        let o = fit(&["--kind", "weight", "--steps", steps]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for key in ["basis", "levels", "thresholds", "mse"] {
            assert_eq!(j[key].as_array().unwrap().len(), 4, "{key}: one entry per output channel");
        }
        assert_eq!(j["levels"][0].as_array().unwrap().len(), 4);
        j["mse"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let (one, many) = (mse("1"), mse("10"));
    // Never higher (up to rounding: channels that converge in one step stay put), clearly lower somewhere.
    assert!(one.iter().zip(&many).all(|(a, b)| *b <= *a * (1.0 + 1e-9)), "{one:?} -> {many:?}");
    assert!(one.iter().zip(&many).any(|(a, b)| *b < 0.9 * *a), "{one:?} -> {many:?}");
    let o = fit(&["--kind", "activation", "--method", "hwgq"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["thresholds"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_input_gives_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.npy");
    std::fs::write(&p, b"not numpy").unwrap();
    let o = lqnets(&["fit", "--input", p.to_str().unwrap(), "--bits", "2", "--kind", "weight"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.npy"));
    let o = lqnets(&["train", "--set", "optim.lrr=1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("lrr"));
}

/// train → eval → export → infer --check → resume rules → summary, as a user runs them.
#[test]
fn train_export_infer_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    cifar_folder(&data, 20);
    let run = d.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    let sets =
        ["model.depth=8", "optim.batch=20", "optim.epochs=1", "data.workers=1", "quant.w_bits=2", "quant.a_bits=2"];
    let dir_set = format!("data.dir=\"{data_s}\"");
    let mut args = vec!["train", "--out", run_s, "--set", &dir_set];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = lqnets(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = run.join("last.safetensors");
    let ck_s = ck.to_str().unwrap();

    // eval needs only the test split: remove the training files.
    (1..=5).for_each(|i| std::fs::remove_file(data.join(format!("data_batch_{i}.bin"))).unwrap());
    let o = lqnets(&["eval", "--checkpoint", ck_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("20 images"), "{}", String::from_utf8_lossy(&o.stdout));

    let model = d.path().join("m.lqm");
    let o = lqnets(&["export", "--checkpoint", ck_s, "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = lqnets(&["infer", "--model", model.to_str().unwrap(), "--data", data_s, "--check", ck_s]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("top-1 identical on"), "{out}{}", String::from_utf8_lossy(&o.stderr));

    // Resume: a changed training setting is refused by name; --config is refused.
    let o = lqnets(&["train", "--resume", run_s, "--set", "optim.lr=0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("optim.lr cannot change"));
    let o = lqnets(&["train", "--resume", run_s, "--config", "x.toml"]);
    assert!(!o.status.success());

    // Figure I and the report of the run.
    let stats = run.join("stats");
    let o = lqnets(&["stats", "--checkpoint", ck_s, "--batches", "1", "--out", stats.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["stats.json", "figure-1.png", "figure-1.svg"] {
        assert!(stats.join(f).is_file(), "{f} missing");
    }
    let o = lqnets(&["report", run_s, "--format", "md"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("W2/A2"), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let page = d.path().join("r.html");
    let o = lqnets(&["report", run_s, "--format", "html", "--out", page.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&page).unwrap().contains("<svg"));

    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/imagenet/resnet18-w2a2.toml");
    let o = lqnets(&["summary", "--config", cfg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("group3.block1.conv2") && out.contains("W2A2") && out.contains("total:"), "{out}");
}
