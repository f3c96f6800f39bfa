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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { file } => ctgrade::cmd_info::run(&file),
    }
}
