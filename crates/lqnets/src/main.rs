//! The `lqnets` command line.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod fit;

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
    }
}
