//! `ctgrade-eval`: leaderboard evaluation for the COVID-19 CT classification challenge.

use clap::Parser;

/// Evaluate ctgrade predictions against iCTCF ground truth.
#[derive(Parser)]
#[command(name = "ctgrade-eval", version, about)]
struct Cli {}

fn main() {
    Cli::parse();
}
