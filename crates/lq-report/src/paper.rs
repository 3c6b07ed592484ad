//! The paper's result tables (spec §4) and the rule that decides whether a run may be compared with a row.
//!
//! A run is compared only when it trains the same network on the same data set at the same bit widths with the
//! LQ method (any method for a full-precision row) on the paper's full schedule: the planned epochs equal the
//! paper's, and no `train_limit`, `test_limit` or `max_steps_per_epoch` cuts the data. The Fashion-MNIST stand-in
//! in the CIFAR-10 layout is never CIFAR-10.

use crate::run::RunConfig;

/// One cell of the paper's tables.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperRow {
    /// `model.arch` of the run that reproduces it.
    pub arch: &'static str,
    /// `model.depth` (ResNets only).
    pub depth: Option<i64>,
    /// `data.dataset`.
    pub dataset: &'static str,
    /// Weight bits (32 = full precision).
    pub w_bits: i64,
    /// Activation bits (32 = full precision).
    pub a_bits: i64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent (ImageNet).
    pub top5: Option<f64>,
    /// Epochs of the paper's schedule (supplement §2).
    pub epochs: i64,
    /// False for numbers spec §4.2 marks UNVERIFIED (CIFAR-10 Table 1).
    pub verified: bool,
}

const fn imagenet(arch: &'static str, depth: Option<i64>, w: i64, a: i64, top1: f64, top5: f64) -> PaperRow {
    // Supplement §2.2: the 1/2 rows of ResNet, AlexNet, VGG-Variant and GoogLeNet use HWGQ's 64-epoch schedule.
    let hwgq_setting = w == 1 && a == 2;
    let epochs = if hwgq_setting { 64 } else { 120 };
    PaperRow { arch, depth, dataset: "imagenet", w_bits: w, a_bits: a, top1, top5: Some(top5), epochs, verified: true }
}

const fn cifar(arch: &'static str, depth: Option<i64>, w: i64, a: i64, top1: f64) -> PaperRow {
    PaperRow { arch, depth, dataset: "cifar10", w_bits: w, a_bits: a, top1, top5: None, epochs: 200, verified: false }
}

const R18: Option<i64> = Some(18);
const R34: Option<i64> = Some(34);
const R50: Option<i64> = Some(50);
const R20: Option<i64> = Some(20);

/// Spec §4.1 (ImageNet, verified against the official README) and §4.2 (CIFAR-10 Table 1, unverified).
pub static ROWS: &[PaperRow] = &[
    imagenet("resnet", R18, 1, 2, 62.6, 84.3),
    imagenet("resnet", R18, 2, 2, 64.9, 85.9),
    imagenet("resnet", R18, 3, 3, 68.2, 87.9),
    imagenet("resnet", R18, 4, 4, 69.3, 88.8),
    imagenet("resnet", R34, 1, 2, 66.6, 86.9),
    imagenet("resnet", R34, 2, 2, 69.8, 89.1),
    imagenet("resnet", R34, 3, 3, 71.9, 90.2),
    imagenet("resnet", R50, 1, 2, 68.7, 88.4),
    imagenet("resnet", R50, 2, 2, 71.5, 90.3),
    imagenet("resnet", R50, 3, 3, 74.2, 91.6),
    imagenet("resnet", R50, 4, 4, 75.1, 92.4),
    imagenet("alexnet", None, 1, 2, 55.7, 78.8),
    imagenet("alexnet", None, 2, 2, 57.4, 80.1),
    imagenet("densenet121", None, 2, 2, 69.6, 89.1),
    imagenet("vgg_variant", None, 1, 2, 67.1, 87.6),
    imagenet("vgg_variant", None, 2, 2, 68.8, 88.6),
    imagenet("googlenet", None, 1, 2, 65.6, 86.4),
    imagenet("googlenet", None, 2, 2, 68.2, 88.1),
    imagenet("resnet", R18, 2, 32, 68.0, 88.0),
    imagenet("resnet", R18, 3, 32, 69.3, 88.8),
    imagenet("resnet", R18, 4, 32, 70.0, 89.1),
    imagenet("resnet", R50, 2, 32, 75.1, 92.3),
    imagenet("resnet", R50, 4, 32, 76.4, 93.1),
    imagenet("alexnet", None, 2, 32, 60.5, 82.7),
    cifar("resnet_cifar", R20, 32, 32, 92.1),
    cifar("resnet_cifar", R20, 1, 32, 90.1),
    cifar("resnet_cifar", R20, 2, 32, 91.8),
    cifar("resnet_cifar", R20, 3, 32, 92.0),
    cifar("resnet_cifar", R20, 1, 2, 88.4),
    cifar("resnet_cifar", R20, 2, 2, 90.2),
    cifar("resnet_cifar", R20, 2, 3, 91.1),
    cifar("resnet_cifar", R20, 3, 3, 91.6),
    cifar("vgg_small", None, 32, 32, 93.8),
    cifar("vgg_small", None, 1, 32, 93.5),
    cifar("vgg_small", None, 2, 32, 93.8),
    cifar("vgg_small", None, 3, 32, 93.8),
    cifar("vgg_small", None, 1, 2, 93.4),
    cifar("vgg_small", None, 2, 2, 93.5),
    cifar("vgg_small", None, 2, 3, 93.8),
    cifar("vgg_small", None, 3, 3, 93.8),
];

/// Whether a run can be set beside a paper number.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// Same data set, network, bits, method and full schedule: compare with this row.
    Row(&'static PaperRow),
    /// The paper has a row for this setting, but the run differs from it (the reason says how).
    NotComparable(String),
    /// The paper has no number for this setting (the reason says which).
    NoRow(String),
}

/// Decides whether `cfg` may be compared with a paper row.
pub fn compare(cfg: &RunConfig) -> Match {
    if cfg.is_fashion_stand_in() {
        return Match::NotComparable(format!("Fashion-MNIST stand-in ({}), not CIFAR-10", cfg.data_dir));
    }
    let same_net = |r: &&PaperRow| r.arch == cfg.arch && (r.depth.is_none() || r.depth == cfg.depth);
    let row = ROWS
        .iter()
        .filter(same_net)
        .find(|r| r.dataset == cfg.dataset && r.w_bits == cfg.w_bits && r.a_bits == cfg.a_bits);
    let Some(row) = row else {
        return Match::NoRow(format!(
            "no paper number for {} {} on {}",
            cfg.model_name(),
            cfg.bits_label(),
            cfg.dataset
        ));
    };
    let full_precision = cfg.w_bits == 32 && cfg.a_bits == 32;
    let cuts = [
        ("data.train_limit", cfg.train_limit),
        ("data.test_limit", cfg.test_limit),
        ("run.max_steps_per_epoch", cfg.max_steps_per_epoch),
    ];
    if let Some((key, v)) = cuts.iter().find(|(_, v)| *v > 0) {
        Match::NotComparable(format!("{key} = {v}"))
    } else if !full_precision && cfg.method != "lq" {
        Match::NotComparable(format!("method {} (the paper's number is LQ-Nets)", cfg.method))
    } else if cfg.epochs != row.epochs {
        Match::NotComparable(format!("schedule of {} epochs, the paper's is {}", cfg.epochs, row.epochs))
    } else {
        Match::Row(row)
    }
}
