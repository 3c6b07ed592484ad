//! The HTML report in a real browser: headless Chromium (Debian package `chromium`) renders `report.html` to a
//! screenshot at laptop width, and the page logs nothing to the console. Where Chromium is absent the test prints
//! a SKIP line and passes. `LQ_REPORT_KEEP=DIR` keeps the page and screenshot for a person to look at.
mod common;

use common::{act_layer, weight_layer};
use lq_report::{ActivationCollector, Format, LayerStats, Options, Range, Run, StatsFile};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let ok = Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        ok.then(|| PathBuf::from(name))
    })
}

/// Renders `page` to `png` at `width`×`height`; returns Chromium's console lines.
fn screenshot(chrome: &Path, page: &Path, png: &Path, (width, height): (u32, u32)) -> Vec<String> {
    let out = Command::new(chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect()
}

fn png_size(path: &Path) -> (u32, u32) {
    let reader = png::Decoder::new(std::fs::File::open(path).unwrap()).read_info().unwrap();
    (reader.info().width, reader.info().height)
}

fn epoch_line(e: u64, acc: f64, names: &[&str]) -> String {
    let q: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let basis = if n.ends_with(".w") { "[0.02,0.05,0.1,0.021,0.052,0.11]" } else { "[0.3,0.6,1.1]" };
            format!(r#"{{"name":"{n}","basis":{basis},"mse":{}}}"#, 0.01 / (e as f64 + i as f64))
        })
        .collect();
    format!(
        r#"{{"epoch":{e},"train_loss":{},"train_acc":{acc},"test_loss":{},"test_acc":{acc},"test_acc5":0.99,"lr":{},"seconds":61.5,"quantizers":[{}]}}"#,
        2.0 / e as f64,
        2.2 / e as f64,
        if e < 5 { 0.1 } else { 0.01 },
        q.join(",")
    )
}

fn write_runs(root: &Path) -> Vec<PathBuf> {
    let names = ["stage1.0.conv1.w", "stage1.0.act1", "stage2.0.conv1.w", "stage2.0.act1", "stage3.0.conv1.w"];
    let cfg = |dir: &str, epochs: u32, limit: u32| {
        format!(
            "[model]\narch = \"resnet_cifar\"\ndepth = 20\n[quant]\nmethod = \"lq\"\nw_bits = 3\na_bits = 3\n[data]\n\
             dataset = \"cifar10\"\ndir = \"{dir}\"\ntrain_limit = {limit}\n[optim]\nepochs = {epochs}\nbatch = 128\n"
        )
    };
    let runs = [
        ("resnet20-w3a3-fashion", cfg("data/fashion-as-cifar", 8, 20000), 8, 0.80),
        ("resnet20-w3a3-cifar", cfg("data/cifar10", 200, 0), 6, 0.70),
    ];
    let mut dirs = Vec::new();
    for (name, config, epochs, top) in runs {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let lines: Vec<String> = (1..=epochs).map(|e| epoch_line(e, top - 0.3 / e as f64, &names)).collect::<Vec<_>>();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n{\"epoch\": 9, \"tra").unwrap();
        dirs.push(dir);
    }
    // Figure I for the first run.
    let (w, st) = weight_layer();
    let mut layers: Vec<LayerStats> = ["stage1.0.conv1.w", "stage2.0.conv1.w", "stage3.0.conv1.w"]
        .iter()
        .enumerate()
        .map(|(i, n)| LayerStats::weights(n, &st, 9, &w, &Options { channel: i, ..Options::default() }).unwrap())
        .collect();
    for n in ["stage1.0.act1", "stage2.0.act1", "stage3.0.act1"] {
        let (x, st) = act_layer(20_000);
        let mut c = ActivationCollector::new(n, &st, Range::of(&x), &Options::default()).unwrap();
        c.push(&x);
        layers.push(c.finish().unwrap());
    }
    let stats = StatsFile { model: "ResNet-20".into(), w_bits: 3, a_bits: 3, source: "synthetic".into(), layers };
    lq_report::write_figures(&stats, &dirs[0].join("stats"), &Default::default()).unwrap();
    stats.write(&dirs[0].join("stats")).unwrap();
    dirs
}

#[test]
fn report_renders_in_headless_chromium_without_console_messages() {
    let Some(chrome) = chromium() else {
        println!("SKIP: chromium not found (Debian: apt-get install -y chromium); report.html not browser-tested");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("LQ_REPORT_KEEP").map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out).unwrap();
    let runs: Vec<Run> = write_runs(&out.join("runs")).iter().map(|d| Run::read(d).unwrap()).collect();
    let page = out.join("report.html");
    lq_report::write_report(&runs, Format::Html, &page).unwrap();

    // The console check is not vacuous: a page that logs an error is caught.
    let bad = out.join("bad.html");
    std::fs::write(&bad, "<!DOCTYPE html><html><body><script>console.error('lq-report-probe')</script></body></html>")
        .unwrap();
    let logged = screenshot(&chrome, &bad, &out.join("bad.png"), (400, 300));
    assert!(logged.iter().any(|l| l.contains("lq-report-probe")), "console capture broken: {logged:?}");

    for (size, name) in [((1366, 2400), "report-1366.png"), ((800, 1600), "report-800.png")] {
        let png = out.join(name);
        let logged = screenshot(&chrome, &page, &png, size);
        assert!(logged.is_empty(), "console messages at {size:?}: {logged:?}");
        assert_eq!(png_size(&png), size);
    }
}
