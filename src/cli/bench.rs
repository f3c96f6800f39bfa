//! `ctgrade bench`: time per forward and peak memory of a network with random weights.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::device::DeviceChoice;
use ctgrade::model::probe::{self, BenchOptions};
use ctgrade::model::Arch;

use super::PrecisionArg;

/// Arguments of `ctgrade bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Architecture, e.g. densenet201-3d.
    #[arg(long)]
    arch: Arch,
    /// JSON object overriding NetworkConfig fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Input size C,D,H,W (batch 1) or N,C,D,H,W.
    #[arg(long, default_value = "3,128,240,240")]
    input: String,
    /// Timed forwards (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Worker threads (default: RAYON_NUM_THREADS or all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Outputs of the head.
    #[arg(long, default_value_t = 1)]
    num_outputs: usize,
    /// Device: cpu, auto, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub(super) device: DeviceChoice,
    /// Compute precision (weights and activations).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
}

/// Prints the report as one JSON line.
pub fn bench(args: BenchArgs) -> Result<()> {
    let report = probe::bench(&BenchOptions {
        arch: args.arch,
        config: args.config,
        input: args.input,
        repeat: args.repeat,
        threads: args.threads,
        num_outputs: args.num_outputs,
        device: args.device,
        precision: args.precision.into(),
    })?;
    super::emit(&serde_json::to_string(&report)?)
}
