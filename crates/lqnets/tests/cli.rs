//! The `lqnets` binary end to end on small generated files.
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
