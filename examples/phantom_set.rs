//! Writes a labelled set of synthetic phantoms: `<out>/<prefix>-NNN.mha`, `labels.csv`
//! (`case,co_rads`, for `ctgrade train`) and `truth.csv` (`case,label,co_rads` with label =
//! CO-RADS >= 4, for `ctgrade-eval`).
//!
//! `cargo run --release --example phantom_set -- --out DIR --per-class 40 --seed 1000`

use std::path::PathBuf;

use clap::Parser;
use ctgrade::train::synthdata::{write_phantom_set, PhantomSet};

/// A labelled synthetic phantom data set, balanced over CO-RADS 1..5.
#[derive(Parser)]
struct Args {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Scans per CO-RADS category.
    #[arg(long)]
    per_class: usize,
    /// Seed of the first scan (scan j uses seed + j).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Grid size X,Y,Z.
    #[arg(long, value_delimiter = ',', default_value = "128,128,80")]
    size: Vec<usize>,
    /// Voxel spacing X,Y,Z (mm); the default keeps the phantom's full 358 x 358 x 320 mm field.
    #[arg(long, value_delimiter = ',', default_value = "2.8,2.8,4.0")]
    spacing: Vec<f64>,
    /// Case name prefix.
    #[arg(long, default_value = "phantom")]
    prefix: String,
    /// Also write the true lesion labels (1 ground glass, 2 consolidation) to DIR/<case>.mha.
    #[arg(long, value_name = "DIR")]
    lesion_labels: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (Ok(size), Ok(spacing)) = (
        <[usize; 3]>::try_from(a.size.as_slice()),
        <[f64; 3]>::try_from(a.spacing.as_slice()),
    ) else {
        anyhow::bail!("--size and --spacing take three comma-separated numbers");
    };
    let set = PhantomSet {
        out: a.out,
        per_class: a.per_class,
        seed: a.seed,
        size,
        spacing,
        prefix: a.prefix,
        lesion_labels: a.lesion_labels,
    };
    let cases = write_phantom_set(&set, |l| eprintln!("{l}"))?;
    eprintln!("wrote {} phantoms to {}", cases.len(), set.out.display());
    Ok(())
}
