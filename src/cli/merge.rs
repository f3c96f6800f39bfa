//! `ctgrade merge`: one summary from the summaries of shards or batch runs.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::gc::{merge, outputs};

/// Arguments of `ctgrade merge`.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// Folders holding the summaries (shards may share one).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write summary.json and summary.csv.
    #[arg(long)]
    output: PathBuf,
}

/// Merges the summaries and says what was written.
pub fn merge(args: &MergeArgs) -> Result<()> {
    let merged = merge::merge(&args.dirs, &args.output)?;
    let failed = merged.cases.iter().filter(|c| c.error.is_some()).count();
    eprintln!(
        "merged {} summaries: {} case(s), {failed} failed; wrote {}",
        merged.sources.len(),
        merged.cases.len(),
        args.output.join(outputs::SUMMARY_FILE).display()
    );
    Ok(())
}
