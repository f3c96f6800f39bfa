//! `ctgrade inflate`: 2-D weights to the 3-D network (I3D).

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::model::inflate::{self, DepthMode, InflateOptions};
use ctgrade::model::Arch;

use super::convert::{DTypeChoice, NamingChoice};

/// Arguments of `ctgrade inflate`.
#[derive(clap::Args, Debug)]
pub struct InflateArgs {
    /// 2-D weights: safetensors or a torch.save checkpoint, e.g. torchvision's densenet121.
    #[arg(long)]
    from: PathBuf,
    /// The 3-D architecture, e.g. densenet121-3d for a 2-D DenseNet-121.
    #[arg(long)]
    arch: Arch,
    /// JSON object overriding NetworkConfig fields (growth_rate, block_config, bn_size,
    /// init_features, in_channels); in_channels defaults to the 2-D stem's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How 2-D kernels are spread over depth.
    #[arg(long, value_enum, default_value = "repeat")]
    depth_mode: DepthChoice,
    /// Outputs of the 3-D network's head (1: continuous, 5: categorical). The 2-D head is kept if it
    /// has this many outputs, else the head starts at zero.
    #[arg(long)]
    num_outputs: usize,
    /// Parameter names in the 2-D weights.
    #[arg(long, value_enum, default_value = "auto")]
    naming: NamingChoice,
    /// Entry of a PyTorch checkpoint holding the state dict (default: found automatically).
    #[arg(long)]
    key: Option<String>,
    /// Leave out 2-D tensors the network does not use (by default they are an error).
    #[arg(long)]
    drop_unexpected: bool,
    /// Element type of the written file.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeChoice,
    /// The safetensors file to write (MONAI names).
    #[arg(long)]
    out: PathBuf,
}

/// Inflates the weights and prints the report as JSON.
pub fn inflate(args: InflateArgs) -> Result<()> {
    let report = inflate::inflate(&InflateOptions {
        from: args.from,
        arch: args.arch,
        config: args.config,
        depth_mode: args.depth_mode.into(),
        num_outputs: args.num_outputs,
        naming: args.naming.into(),
        key: args.key,
        drop_unexpected: args.drop_unexpected,
        dtype: args.dtype.into(),
        out: args.out,
    })?;
    super::emit(&serde_json::to_string_pretty(&report)?)
}

/// `--depth-mode`: how a 2-D kernel is spread over the depth taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DepthChoice {
    /// `w2d / kd` at every depth tap (I3D).
    Repeat,
    /// `w2d` at the centre tap, zeros elsewhere.
    Center,
}

impl From<DepthChoice> for DepthMode {
    fn from(d: DepthChoice) -> Self {
        match d {
            DepthChoice::Repeat => DepthMode::Repeat,
            DepthChoice::Center => DepthMode::Center,
        }
    }
}
