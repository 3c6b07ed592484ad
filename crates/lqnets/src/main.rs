//! The `lqnets` command line.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod data;
mod deploy;
mod fit;
mod report;
mod summary;
mod train;

/// LQ-Nets: learned quantization for low-bit CNNs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fit a quantizer to one tensor (.npy) and print basis, levels, thresholds and MSE.
    Fit(fit::FitArgs),
    /// Train a (quantized) network: `lqnets train --config configs/cifar10/resnet20-w2a2.toml`.
    Train(train::TrainArgs),
    /// Test accuracy of a checkpoint.
    Eval(train::EvalArgs),
    /// Export a checkpoint to the bit-op engine's model file.
    Export(deploy::ExportArgs),
    /// Run the bit-op engine on a CIFAR-format folder or a PNG image.
    Infer(deploy::InferArgs),
    /// Quantizer statistics and the supplement's Figure I from a checkpoint.
    Stats(report::StatsArgs),
    /// Table (md, csv) or HTML dashboard of run folders, compared with the paper where comparable.
    Report(report::ReportArgs),
    /// The network of a config layer by layer: shapes, bits, parameters, MACs, deployed bytes.
    Summary(summary::SummaryArgs),
    /// Image-folder datasets.
    #[command(subcommand)]
    Data(DataCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum DataCmd {
    /// Walk both splits: class count, image count, size histogram, every bad file.
    Check(data::DataArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Training step time per W/A setting vs full precision (ResNet-20, batch 128, synthetic data).
    Train(train::BenchArgs),
    /// Decoded + augmented images/s and per-stage times of an image-folder dataset.
    Data(data::DataArgs),
    /// Engine inference latency vs libtorch fp32 (same architecture, same threads).
    Infer(deploy::BenchInferArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Fit(a) => fit::run(&a),
        Cmd::Train(a) => train::run(&a),
        Cmd::Eval(a) => train::eval(&a),
        Cmd::Summary(a) => summary::run(&a),
        Cmd::Stats(a) => report::stats(&a),
        Cmd::Report(a) => report::report(&a),
        Cmd::Bench(BenchCmd::Train(a)) => train::bench(&a),
        Cmd::Export(a) => deploy::export(&a),
        Cmd::Infer(a) => deploy::infer(&a),
        Cmd::Bench(BenchCmd::Infer(a)) => deploy::bench_infer(&a),
        Cmd::Bench(BenchCmd::Data(a)) => data::bench(&a),
        Cmd::Data(DataCmd::Check(a)) => data::check(&a),
    }
}
