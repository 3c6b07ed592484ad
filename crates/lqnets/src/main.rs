//! The `lqnets` command line.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod fit;
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
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Training step time per W/A setting vs full precision (ResNet-20, batch 128, synthetic data).
    Train(train::BenchArgs),
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
        Cmd::Bench(BenchCmd::Train(a)) => train::bench(&a),
    }
}
