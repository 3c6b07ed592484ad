//! Run reports: reading run directories, the paper-matching rule, damaged metrics, the three formats.
mod common;

use lq_report::run::parse_metrics;
use lq_report::{compare, render, Format, Match, Run, RunConfig, Summary};
use std::path::Path;

fn config(text: &str) -> RunConfig {
    RunConfig::from_table(&text.parse().unwrap(), Path::new("config.toml")).unwrap()
}

const R20_W3A3: &str = r#"
[model]
arch = "resnet_cifar"
depth = 20
[quant]
method = "lq"
w_bits = 3
a_bits = 3
[data]
dataset = "cifar10"
dir = "data/cifar10"
[optim]
epochs = 200
"#;

fn with(base: &str, section: &str, line: &str) -> String {
    base.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"))
}

#[test]
fn a_full_cifar_run_matches_its_paper_row() {
    match compare(&config(R20_W3A3)) {
        Match::Row(r) => assert_eq!((r.top1, r.epochs, r.verified), (91.6, 200, false)),
        m => panic!("{m:?}"),
    }
    // Defaults are the trainer's: a config without [model] is ResNet-20.
    let no_model = R20_W3A3.replace("[model]\narch = \"resnet_cifar\"\ndepth = 20\n", "");
    assert!(matches!(compare(&config(&no_model)), Match::Row(r) if r.top1 == 91.6));
    // Full precision rows match whatever the method key says.
    let fp = R20_W3A3.replace("w_bits = 3", "w_bits = 32").replace("a_bits = 3", "a_bits = 32");
    assert!(matches!(compare(&config(&fp)), Match::Row(r) if r.top1 == 92.1));
}

#[test]
fn cut_schedules_limits_other_methods_and_stand_ins_are_never_compared() {
    let cases = [
        (R20_W3A3.replace("epochs = 200", "epochs = 8"), "8 epochs"),
        (with(R20_W3A3, "data", "train_limit = 20000"), "data.train_limit = 20000"),
        (with(R20_W3A3, "data", "test_limit = 5000"), "data.test_limit = 5000"),
        (format!("{R20_W3A3}[run]\nmax_steps_per_epoch = 10\n"), "run.max_steps_per_epoch = 10"),
        (R20_W3A3.replace("method = \"lq\"", "method = \"uniform\""), "method uniform"),
        (R20_W3A3.replace("data/cifar10", "data/fashion-as-cifar"), "Fashion-MNIST stand-in"),
    ];
    for (text, why) in cases {
        match compare(&config(&text)) {
            Match::NotComparable(w) => assert!(w.contains(why), "{w} lacks {why}"),
            m => panic!("{why}: {m:?}"),
        }
    }
    let other = R20_W3A3.replace("dataset = \"cifar10\"", "dataset = \"fashion\"");
    assert!(matches!(compare(&config(&other)), Match::NoRow(_)));
    let bits = R20_W3A3.replace("w_bits = 3", "w_bits = 4");
    assert!(matches!(compare(&config(&bits)), Match::NoRow(_)));
}

#[test]
fn imagenet_rows_need_their_own_schedule() {
    let r18 = |w: i64, a: i64, epochs: i64| {
        config(&format!(
            "[model]\narch = \"resnet\"\ndepth = 18\n[quant]\nw_bits = {w}\na_bits = {a}\n[data]\ndataset = \"imagenet\"\n\
             [optim]\nepochs = {epochs}\n"
        ))
    };
    assert!(matches!(compare(&r18(3, 3, 120)), Match::Row(r) if r.top1 == 68.2 && r.top5 == Some(87.9)));
    assert!(matches!(compare(&r18(1, 2, 64)), Match::Row(r) if r.top1 == 62.6));
    assert!(matches!(compare(&r18(1, 2, 120)), Match::NotComparable(_)));
    assert!(matches!(compare(&r18(2, 32, 120)), Match::Row(r) if r.top1 == 68.0));
    // ResNet-34 3/3 exists, ResNet-34 4/4 does not.
    let mut c = r18(4, 4, 120);
    c.depth = Some(34);
    assert!(matches!(compare(&c), Match::NoRow(_)));
}

#[test]
fn config_type_errors_name_file_and_key() {
    let e = RunConfig::from_table(&"[quant]\nw_bits = \"two\"\n".parse().unwrap(), Path::new("runs/x/config.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("runs/x/config.toml") && e.contains("quant.w_bits"), "{e}");
}

fn line(epoch: u64, acc: f64) -> String {
    format!(
        r#"{{"epoch":{epoch},"train_loss":1.0,"train_acc":0.5,"test_loss":0.9,"test_acc":{acc},"lr":0.1,"seconds":10.0,"quantizers":[{{"name":"s1.w","basis":[0.1,0.2,0.3,0.4],"mse":0.01}},{{"name":"s1.act","basis":[0.5,1.0],"mse":0.02}}]}}"#
    )
}

#[test]
fn damaged_metrics_lines_are_reported_not_fatal() {
    let text = [
        line(1, 0.5),
        "{\"epoch\": 2, \"train_loss\": ".into(), // torn in the middle of the file (a crash, then a resume)
        "[1, 2]".into(),
        r#"{"train_loss": 1.0}"#.into(),
        r#"{"epoch": 3, "train_loss": null, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.6, "lr": 0.1}"#.into(),
        line(4, 0.7),
        line(5, 0.8)[..40].to_string(), // torn last line: being written
    ]
    .join("\n");
    let mut problems = Vec::new();
    let epochs = parse_metrics(&text, &mut problems);
    assert_eq!(epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(epochs[1].train_loss, None);
    assert_eq!(epochs[0].quantizers.len(), 2);
    let all = problems.join("\n");
    for want in [
        "line 2: not valid JSON",
        "line 3: not a JSON object",
        "line 4: no integer `epoch`",
        "line 5: `train_loss` is null",
        "line 5: `seconds` missing",
        "line 7: torn last line",
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }
    // test_acc5 absent (older runs) is not a problem.
    assert!(!all.contains("test_acc5"), "{all}");
    assert_eq!(problems.len(), 6, "{all}");
}

/// Writes a run directory.
pub fn write_run(dir: &Path, config: &str, lines: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn summary_rows_compare_only_comparable_runs() {
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("r20-w3a3");
    write_run(&full, &R20_W3A3.replace("epochs = 200", "epochs = 3"), &[line(1, 0.5), line(2, 0.9), line(3, 0.8)]);
    let s = Summary::of(&Run::read(&full).unwrap());
    assert_eq!((s.epochs_done, s.epochs_planned, s.best_top1, s.final_top1), (3, 3, Some(90.0), Some(80.0)));
    assert_eq!(s.paper_diff(), None);
    assert!(s.note().contains("not comparable"));
    assert_eq!(s.images_per_second, Some(3.0 * 49_920.0 / 30.0)); // 390 batches of 128 per 10 s epoch

    // Comparable but unfinished: the paper's number, no difference yet.
    write_run(&full, R20_W3A3, &[line(1, 0.5)]);
    let s = Summary::of(&Run::read(&full).unwrap());
    assert_eq!(s.paper_diff(), Some((91.6, None)));
    assert!(s.note().contains("in progress"), "{}", s.note());

    write_run(&full, R20_W3A3, &[line(200, 0.9)]);
    let s = Summary::of(&Run::read(&full).unwrap());
    let (paper, diff) = s.paper_diff().unwrap();
    assert_eq!(paper, 91.6);
    assert!((diff.unwrap() - (90.0 - 91.6)).abs() < 1e-9);
    let md = render(&[Run::read(&full).unwrap()], Format::Markdown);
    assert!(md.contains("| 91.6 | -1.60 |"), "{md}");
    let csv = render(&[Run::read(&full).unwrap()], Format::Csv);
    assert_eq!(csv.lines().count(), 2);
    assert!(csv.lines().nth(1).unwrap().contains(",91.6,-1.60,"), "{csv}");
}

#[test]
fn a_run_without_config_is_an_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let e = Run::read(root.path()).unwrap_err().to_string();
    assert!(e.contains("config.toml"), "{e}");
    std::fs::write(root.path().join("config.toml"), "[model\n").unwrap();
    let e = Run::read(root.path()).unwrap_err().to_string();
    assert!(e.contains("config.toml"), "{e}");
    // A config but no metrics yet: a run with no epochs and a note.
    std::fs::write(root.path().join("config.toml"), R20_W3A3).unwrap();
    let r = Run::read(root.path()).unwrap();
    assert!(r.epochs.is_empty() && r.problems[0].contains("not written yet"));
    let html = render(&[r], Format::Html);
    parse_html(&html).unwrap();
}

/// The page parses as XML (it is written polyglot: void elements closed, only XML entities).
fn parse_html(html: &str) -> Result<roxmltree::Document<'_>, roxmltree::Error> {
    let opt = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    roxmltree::Document::parse_with_options(html, opt)
}

#[test]
fn html_is_well_formed_and_inlines_figure_one() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("fashion <w3a3> & co");
    let cfg = R20_W3A3.replace("data/cifar10", "data/fashion-as-cifar").replace("epochs = 200", "epochs = 8");
    write_run(&a, &cfg, &(1..=4).map(|e| line(e, 0.5 + e as f64 / 10.0)).collect::<Vec<_>>());
    let stats = figure_stats();
    lq_report::write_figures(&stats, &a.join("stats"), &Default::default()).unwrap();
    stats.write(&a.join("stats")).unwrap();
    let b = root.path().join("r20-full");
    write_run(&b, R20_W3A3, &[line(1, 0.3)]);
    let runs = [Run::read(&a).unwrap(), Run::read(&b).unwrap()];
    let html = render(&runs, Format::Html);
    let doc = parse_html(&html).unwrap_or_else(|e| panic!("{e}"));
    let svgs = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
    // 4 curve charts, per run one MSE chart and 2 basis charts, and Figure I.
    assert_eq!(svgs, 4 + 2 * 3 + 1, "svg count");
    assert!(html.contains("fashion &lt;w3a3&gt; &amp; co"));
    assert!(html.contains("not comparable: Fashion-MNIST stand-in"));
    assert!(!html.contains("<script"));
    assert!(doc.descendants().all(|n| n.attribute("src").is_none() && n.attribute("href").is_none()));
}

fn figure_stats() -> lq_report::StatsFile {
    use common::{act_layer, weight_layer};
    use lq_report::{ActivationCollector, LayerStats, Options, Range};
    let (w, st) = weight_layer();
    let (x, ast) = act_layer(5000);
    let mut c = ActivationCollector::new("s1.act", &ast, Range::of(&x), &Options::default()).unwrap();
    c.push(&x);
    lq_report::StatsFile {
        model: "ResNet-20".into(),
        w_bits: 3,
        a_bits: 3,
        source: "test".into(),
        layers: vec![LayerStats::weights("s1.w", &st, 9, &w, &Options::default()).unwrap(), c.finish().unwrap()],
    }
}
