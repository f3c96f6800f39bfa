//! `ctgrade info`: a volume's geometry and value range as JSON.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `ctgrade info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// The CT: a .mha, .mhd, .nii or .nii.gz file, or a folder holding one DICOM series.
    #[arg(value_name = "FILE|DIR")]
    file: PathBuf,
}

/// Prints the volume's description as one JSON line.
pub fn info(args: &InfoArgs) -> Result<()> {
    super::emit(&serde_json::to_string(&ctgrade::volume::info::info(
        &args.file,
    )?)?)
}
