//! `ctgrade preprocess`: the paper's preprocessing of one CT, written to files.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::preprocess::files::{self, PreprocessOptions};

/// Arguments of `ctgrade preprocess`.
#[derive(Debug, clap::Args)]
pub struct PreprocessArgs {
    /// Input CT in Hounsfield units: a .mha, .mhd, .nii or .nii.gz file, or a folder holding one
    /// DICOM series.
    #[arg(value_name = "FILE|DIR")]
    input: PathBuf,
    /// Output folder (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Lesion map on the CT's grid; selects the CT / lesion / zeros channel layout.
    #[arg(long)]
    lesion: Option<PathBuf>,
    /// Model input specification (JSON with fields of `InputSpec`; missing fields take the
    /// paper's values).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Write the .mha files uncompressed (as SimpleITK's WriteImage does by default): faster to
    /// write and read, about 3 times larger.
    #[arg(long)]
    no_compress: bool,
}

/// Preprocesses the CT, writes the files and prints the report as one JSON line.
pub fn preprocess(args: PreprocessArgs) -> Result<()> {
    let report = files::run(&PreprocessOptions {
        input: args.input,
        out: args.out,
        lesion: args.lesion,
        spec: args.spec,
        compress: !args.no_compress,
    })?;
    super::emit(&serde_json::to_string(&report)?)
}
