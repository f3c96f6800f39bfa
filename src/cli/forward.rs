//! `ctgrade forward`: one network's raw outputs on one input tensor.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::device::DeviceChoice;
use ctgrade::model::probe::{self, ForwardOptions};
use ctgrade::model::Arch;

use super::PrecisionArg;

/// Arguments of `ctgrade forward`.
#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Architecture, e.g. densenet201-3d.
    #[arg(long)]
    arch: Arch,
    /// JSON object overriding NetworkConfig fields (in_channels, num_outputs, growth_rate,
    /// block_config, bn_size, init_features). in_channels and num_outputs default to the weights'.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Weights (safetensors, MONAI or torchvision-style names).
    #[arg(long)]
    weights: PathBuf,
    /// Input (safetensors with an NCDHW tensor named `input`).
    #[arg(long)]
    input: PathBuf,
    /// Device: cpu, auto, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub(super) device: DeviceChoice,
    /// Compute precision (weights and activations); the outputs are printed as f32.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
}

/// Prints the outputs as one JSON line.
pub fn forward(args: ForwardArgs) -> Result<()> {
    super::emit(&probe::forward(&ForwardOptions {
        arch: args.arch,
        config: args.config,
        weights: args.weights,
        input: args.input,
        device: args.device,
        precision: args.precision.into(),
    })?)
}
