//! The `ctgrade` command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// COVID-19 grading on chest CT (grand-challenge.org algorithm).
#[derive(Parser)]
#[command(name = "ctgrade", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print size, spacing, origin, direction, element type and min/max/mean of a volume
    /// (.mha, .mhd, .nii, .nii.gz) as one JSON object.
    Info {
        /// The volume file.
        file: PathBuf,
    },
    /// Run one network on an input tensor and print its raw outputs as JSON.
    Forward(ctgrade::model::cli::ForwardArgs),
    /// Time a network's forward pass on a random input and report peak memory, as JSON.
    Bench(ctgrade::model::cli::BenchArgs),
    /// Draw a synthetic chest CT phantom (int16 HU) with a chosen CO-RADS lesion burden.
    Synth(ctgrade::synth::SynthArgs),
    /// Preprocess a CT as the paper does; writes input.mha, lung_mask.mha, preprocess.json.
    Preprocess(ctgrade::preprocess::cli::PreprocessArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { file } => ctgrade::cmd_info::run(&file)?,
        Command::Forward(args) => println!("{}", ctgrade::model::cli::forward(&args)?),
        Command::Synth(args) => ctgrade::synth::run(&args)?,
        Command::Preprocess(args) => {
            let report = ctgrade::preprocess::cli::run(&args)?;
            println!("{}", serde_json::to_string(&report)?)
        }
        Command::Bench(args) => {
            println!(
                "{}",
                serde_json::to_string(&ctgrade::model::cli::bench(&args)?)?
            )
        }
    }
    Ok(())
}
