//! Dice of a lesion segmenter's "any lesion" against true lesion labels: for each case in
//! `--truth` (`<case>.mha`, any value above 0 is lesion, e.g. `phantom_set --lesion-labels`), the
//! segmentation `--predicted/<case>.mha` (`ctgrade run --lesion-segmentation` or `ctgrade
//! segment`), where the labels `--labels` are lesion.
//!
//! `cargo run --release --example lesion_dice -- --truth DIR --predicted DIR --labels 1,2`
//!
//! Prints JSON: per case the true and predicted lesion voxels and the Dice (none when neither has
//! a lesion); the mean Dice over the cases with a true lesion; the pooled Dice (all voxels of all
//! cases); and the cases without a true lesion where a lesion was predicted.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use ctgrade::volume;

#[derive(Parser)]
struct Args {
    /// Folder of the true lesion labels, `<case>.mha`.
    #[arg(long)]
    truth: PathBuf,
    /// Folder of the segmentations, `<case>.mha`.
    #[arg(long)]
    predicted: PathBuf,
    /// The segmentation's labels whose union is "any lesion".
    #[arg(long, value_delimiter = ',', required = true)]
    labels: Vec<i64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&a.truth)
        .with_context(|| format!("cannot list {}", a.truth.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "mha"))
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!("{}: no <case>.mha files", a.truth.display());
    }
    let (mut rows, mut dices, mut false_positive_cases) = (Vec::new(), Vec::new(), Vec::new());
    let (mut inter_all, mut sum_all) = (0u64, 0u64);
    for truth_path in &cases {
        let name = truth_path.file_name().unwrap_or_default();
        let case = truth_path.file_stem().unwrap_or_default().to_string_lossy();
        let pred_path = a.predicted.join(name);
        let truth = volume::read(truth_path)?;
        let pred = volume::read(&pred_path)?;
        if truth.size != pred.size {
            bail!(
                "{}: size {:?} differs from the truth's {:?}",
                pred_path.display(),
                pred.size,
                truth.size
            );
        }
        let (mut t, mut p, mut both) = (0u64, 0u64, 0u64);
        for (&tv, &pv) in truth.data.iter().zip(&pred.data) {
            let is_t = tv > 0.0;
            let is_p = a.labels.contains(&(pv.round() as i64));
            t += u64::from(is_t);
            p += u64::from(is_p);
            both += u64::from(is_t && is_p);
        }
        inter_all += both;
        sum_all += t + p;
        let dice = (t + p > 0).then(|| 2.0 * both as f64 / (t + p) as f64);
        if t > 0 {
            dices.push(dice.unwrap_or(0.0));
        } else if p > 0 {
            false_positive_cases.push(case.to_string());
        }
        rows.push(serde_json::json!({
            "case": case, "truth_voxels": t, "predicted_voxels": p, "dice": dice,
        }));
    }
    let mean = dices.iter().sum::<f64>() / dices.len().max(1) as f64;
    let out = serde_json::json!({
        "cases": rows.len(),
        "cases_with_lesions": dices.len(),
        "mean_dice_cases_with_lesions": mean,
        "min_dice_cases_with_lesions": dices.iter().copied().fold(f64::INFINITY, f64::min),
        "pooled_dice": 2.0 * inter_all as f64 / sum_all.max(1) as f64,
        "lesion_free_cases_with_predicted_lesions": false_positive_cases,
        "per_case": rows,
    });
    println!("{out:#}");
    Ok(())
}
