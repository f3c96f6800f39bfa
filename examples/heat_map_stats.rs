//! Where the heat of `ctgrade run --heat-map` lies on phantoms with known lesions: for each case,
//! the share of the heat inside the lungs that falls on lesions, against the lesions' share of the
//! lung volume (and the share of all heat inside the lungs, against the lungs' share of the scan).
//!
//! `cargo run --release --example heat_map_stats -- --masks DIR --heat DIR` where `DIR/<case>-lesions.mha`
//! and `DIR/<case>-lungs.mha` are `ctgrade synth`'s masks and `heat/<case>.mha` the heat maps.
//! Prints a Markdown table and the means; used by `scripts/heat-map-check.sh`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use ctgrade::volume;

#[derive(Parser)]
struct Args {
    /// Folder of `<case>-lesions.mha` and `<case>-lungs.mha`.
    #[arg(long)]
    masks: PathBuf,
    /// Folder of the heat maps `<case>.mha`.
    #[arg(long)]
    heat: PathBuf,
}

/// One case's sums.
struct Row {
    case: String,
    /// Lesion voxels / lung voxels.
    lesion_volume: f64,
    /// Heat on lesions / heat in the lungs.
    lesion_heat: f64,
    /// Lung voxels / all voxels.
    lung_volume: f64,
    /// Heat in the lungs / all heat.
    lung_heat: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut names: Vec<String> = std::fs::read_dir(&a.heat)
        .with_context(|| format!("cannot list {}", a.heat.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".mha").map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no heat maps in {}", a.heat.display());
    }
    let mut rows = Vec::new();
    for case in names {
        let read = |p: PathBuf| volume::read(&p).with_context(|| format!("{}", p.display()));
        let heat = read(a.heat.join(format!("{case}.mha")))?;
        let lesions = read(a.masks.join(format!("{case}-lesions.mha")))?;
        let lungs = read(a.masks.join(format!("{case}-lungs.mha")))?;
        if heat.size != lesions.size || heat.size != lungs.size {
            bail!("{case}: the heat map and the masks are not on one grid");
        }
        let (mut h_all, mut h_lung, mut h_lesion) = (0f64, 0f64, 0f64);
        let (mut n_lung, mut n_lesion) = (0usize, 0usize);
        for ((&h, &l), &m) in heat.data.iter().zip(&lesions.data).zip(&lungs.data) {
            let h = f64::from(h);
            h_all += h;
            if m > 0.5 {
                h_lung += h;
                n_lung += 1;
                if l > 0.5 {
                    h_lesion += h;
                    n_lesion += 1;
                }
            }
        }
        rows.push(Row {
            case,
            lesion_volume: n_lesion as f64 / n_lung.max(1) as f64,
            lesion_heat: h_lesion / h_lung.max(f64::MIN_POSITIVE),
            lung_volume: n_lung as f64 / heat.data.len() as f64,
            lung_heat: h_lung / h_all.max(f64::MIN_POSITIVE),
        });
    }
    println!(
        "| case | lesions / lung volume | heat on lesions / heat in lungs | ratio | lungs / scan volume | heat in lungs / all heat |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} |",
            r.case,
            r.lesion_volume,
            r.lesion_heat,
            r.lesion_heat / r.lesion_volume.max(f64::MIN_POSITIVE),
            r.lung_volume,
            r.lung_heat
        );
    }
    let n = rows.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let above = rows
        .iter()
        .filter(|r| r.lesion_heat > r.lesion_volume)
        .count();
    println!(
        "\nmean over {} cases: lesions {:.3} of the lung volume, {:.3} of the heat in the lungs \
         (ratio of means {:.2}); lungs {:.3} of the scan, {:.3} of all heat; heat on lesions above \
         their volume share in {above} of {} cases",
        rows.len(),
        mean(&|r| r.lesion_volume),
        mean(&|r| r.lesion_heat),
        mean(&|r| r.lesion_heat) / mean(&|r| r.lesion_volume).max(f64::MIN_POSITIVE),
        mean(&|r| r.lung_volume),
        mean(&|r| r.lung_heat),
        rows.len()
    );
    Ok(())
}
