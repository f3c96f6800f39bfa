//! The `ctgrade` command line.

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
enum Command {}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
