//! The options of a run (`ctgrade run`, `serve`): what is read, where the answers go, and what
//! grading each case (`super::case`) makes beside them.

use std::path::PathBuf;

use super::shard::Shard;
use crate::device::Precision;
use crate::volume::ReadLimits;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Input folder (`/input`).
    pub input: PathBuf,
    /// Output folder (`/output`).
    pub output: PathBuf,
    /// Also write the lung mask of each case to `images/lung-segmentation/<case>.mha`.
    pub lung_mask: bool,
    /// Limits on the input files (a larger scan fails before anything is allocated for it).
    pub limits: ReadLimits,
    /// Compute precision of the networks (f32, the reference, unless asked otherwise).
    pub precision: Precision,
    /// Largest resampled grid (voxels) preprocessing may make: [`crate::preprocess::MAX_GRID_VOXELS`],
    /// or less when the memory budget could not hold the lung mask of a larger one
    /// ([`super::memory::max_grid_voxels`]).
    pub max_grid_voxels: usize,
    /// Bytes a case may use (the budget less the members kept loaded), when a limit applies:
    /// the segmenters' estimate ([`crate::segment::ModelFolder::peak_bytes`]) is held to it
    /// before they run.
    pub case_bytes: Option<u64>,
    /// Grade only the cases of this shard (`--shard`); the batch layout is used whatever the
    /// number of cases, and the summary is `summary-shard-I-of-N.json`.
    pub shard: Option<Shard>,
    /// Skip a case whose answers an earlier run left complete and valid (`--skip-done`).
    pub skip_done: bool,
    /// Also write the members' spread to `probability-covid-19-spread.json` (`--spread`).
    pub spread: bool,
    /// Also write a Grad-CAM heat map of each case to `images/covid-19-heat-map/<case>.mha`.
    pub heat_map: bool,
    /// Also write `report.html` into the output folder (`--report`).
    pub report: bool,
    /// Also write the lesion model's segmentation (its labels) of each case to
    /// `images/covid-19-lesion-segmentation/<case>.mha`, when the model ran
    /// (`--lesion-segmentation`).
    pub lesion_segmentation: bool,
}
