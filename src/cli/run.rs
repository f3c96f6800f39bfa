//! `ctgrade run`: grade every scan of the input folder (the grand-challenge algorithm, exec
//! mode).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use candle_core::Device;

use ctgrade::device::{self, DeviceChoice, Precision};
use ctgrade::ensemble::{self, Ensemble};
use ctgrade::gc::memory;
use ctgrade::gc::run::{self as gc_run, RunOptions};
use ctgrade::gc::shard::ShardArg;
use ctgrade::heatmap;

use super::PrecisionArg;

/// Arguments of `ctgrade run` (and of `ctgrade serve`, which grades the same way).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Input folder: the grand-challenge layout (images/ct/<uuid>.mha or a DICOM image set in
    /// images/ct/, with inputs.json), or scans directly in it (.mha, .mhd, .nii, .nii.gz files and
    /// sub-folders holding a DICOM series, each a case), or one DICOM series folder.
    #[arg(long, default_value = "/input")]
    input: PathBuf,
    /// Output folder (created if missing; checked before any case is graded).
    #[arg(long, default_value = "/output")]
    output: PathBuf,
    /// Ensemble folder (with ensemble.json); default: /opt/ml/model, then the built-in weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the networks run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub(super) device: DeviceChoice,
    /// Compute precision of the networks: f32 (the reference), or bf16/f16 on a GPU (see the
    /// README for their measured accuracy).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Also write each case's lung mask to images/lung-segmentation/<case>.mha (uint8: 1 right
    /// lung, 2 left lung).
    #[arg(long)]
    lung_mask: bool,
    /// Also write the standard deviation of the members' probabilities to
    /// probability-covid-19-spread.json.
    #[arg(long)]
    spread: bool,
    /// Also write a Grad-CAM heat map of each case (float32 in [0, 1], on the CT's grid) to
    /// images/covid-19-heat-map/<case>.mha.
    #[arg(long)]
    heat_map: bool,
    /// Also write report.html: every case's answers, members, pictures and preprocessing facts.
    #[arg(long)]
    report: bool,
    /// Also write the ensemble's lesion model's segmentation (its labels, uint8, on the CT's
    /// grid) to images/covid-19-lesion-segmentation/<case>.mha, for cases where it ran.
    #[arg(long)]
    lesion_segmentation: bool,
    /// Largest scan accepted, in voxels; a larger one fails before it is read. Default: 2000 Mi
    /// (e.g. 1024 x 1024 x 2000, which fits a 16 GiB machine), lowered to fit the memory budget:
    /// the smallest of GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB, RLIMIT_DATA, RLIMIT_AS and the
    /// cgroup's memory limit (see docs/robustness.md).
    #[arg(long, env = "CTGRADE_MAX_VOXELS")]
    max_voxels: Option<usize>,
    /// Grade only shard I of N (0 <= I < N) of the cases, split by a stable hash of their names;
    /// auto/N takes I from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID.
    /// Writes summary-shard-I-of-N.json; `ctgrade merge` combines the shards.
    #[arg(long, value_name = "I/N")]
    shard: Option<ShardArg>,
    /// Skip cases whose answers an earlier run left complete and valid in the output folder, so a
    /// restarted task continues where it stopped.
    #[arg(long)]
    skip_done: bool,
}

/// Opens the ensemble and the device and derives the run's options and limits; with
/// `keep_loaded` the members are built once and kept (`serve`), and their weights count against
/// the memory budget.
pub(super) fn prepare(args: &RunArgs, keep_loaded: bool) -> Result<(Ensemble, Device, RunOptions)> {
    let dir = ensemble::resolve_weights(args.weights.as_deref())?;
    let mut ensemble = Ensemble::open(&dir)?;
    eprintln!("ctgrade: weights from {}", dir.display());
    // Refused before any case: a heat map asked for cannot be made for these networks.
    let arch = ensemble.manifest.network.arch;
    if args.heat_map && !heatmap::supported(arch) {
        return Err(heatmap::HeatMapError::Unsupported(arch.to_string()).into());
    }
    let precision = Precision::from(args.precision);
    let device = args.device.open()?;
    eprintln!(
        "ctgrade: running on {} in {}",
        device::describe(&device),
        precision
    );
    if keep_loaded {
        ensemble.load_members(&device, precision)?;
        eprintln!(
            "ctgrade: {} member(s) loaded ({} MiB of weights)",
            ensemble.len(),
            ensemble.loaded_bytes() >> 20
        );
    }
    let budget = memory::budget();
    // What a case may use: the budget less the weights held for the whole run.
    let case_bytes = budget.as_ref().map(|b| {
        b.bytes
            .saturating_sub(ensemble.loaded_bytes() + ensemble.segmenter_bytes())
    });
    let opts = RunOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        lung_mask: args.lung_mask,
        limits: memory::read_limits(args.max_voxels, case_bytes),
        max_grid_voxels: memory::max_grid_voxels(case_bytes),
        case_bytes,
        precision,
        shard: args
            .shard
            .map(|s| s.resolve(|name| std::env::var(name).ok()))
            .transpose()?,
        skip_done: args.skip_done,
        spread: args.spread,
        heat_map: args.heat_map,
        report: args.report,
        lesion_segmentation: args.lesion_segmentation,
    };
    match &budget {
        Some(limit) => eprintln!(
            "ctgrade: memory budget {limit}; scans of up to {} voxels and resampled grids of up \
             to {} voxels accepted",
            opts.limits.max_voxels, opts.max_grid_voxels
        ),
        None => eprintln!(
            "ctgrade: no memory limit found; scans of up to {} voxels accepted",
            opts.limits.max_voxels
        ),
    }
    Ok((ensemble, device, opts))
}

/// Grades the input folder; fails (exit status 1) when a case failed.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let (ensemble, device, opts) = prepare(&args, false)?;
    let report = gc_run::run(&opts, &ensemble, &device)?;
    match report.failure_line() {
        None => Ok(ExitCode::SUCCESS),
        Some(line) => {
            // The platform shows the last stderr line: make it the reason.
            eprintln!("{line}");
            Ok(ExitCode::FAILURE)
        }
    }
}
