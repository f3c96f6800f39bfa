//! `ctgrade convert`: a PyTorch checkpoint or safetensors file to the engine's names, or an
//! nnU-Net model folder to ctgrade's compact form.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::model::convert::{self, ConvertOptions, NamingArg, OutDType};
use ctgrade::model::Arch;
use ctgrade::segment::compact;

/// Arguments of `ctgrade convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint: a torch.save zip file (.pth, .pt, .bin) or a safetensors file.
    #[arg(long, required_unless_present = "from_nnunet", requires = "arch")]
    from: Option<PathBuf>,
    /// An nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_N/checkpoint_final.pth)
    /// to write in ctgrade's compact form into the folder --out: each fold's weights as
    /// safetensors with their sha256 in ctgrade-nnunet.json, the plans' one configuration, no
    /// optimizer state. `segment` and an ensemble's lesion_model take either form. An nnU-Net v1
    /// folder (plans.pkl, fold_N/model_final_checkpoint.model) converts alike and keeps running
    /// as v1 does.
    #[arg(long, conflicts_with_all = ["from", "arch", "config", "naming", "key", "num_outputs", "drop_unexpected", "dtype"])]
    from_nnunet: Option<PathBuf>,
    /// With --from-nnunet: the folds to keep, comma-separated (default: every fold_N).
    #[arg(long, value_delimiter = ',', requires = "from_nnunet")]
    folds: Option<Vec<String>>,
    /// Architecture, e.g. densenet201-3d.
    #[arg(long)]
    arch: Option<Arch>,
    /// JSON object overriding NetworkConfig fields (growth_rate, block_config, bn_size,
    /// init_features, width_divisor, conv1_t_stride, no_max_pool, i3d_head, in_channels,
    /// num_outputs, ...); in_channels and num_outputs default to the checkpoint's, i3d_head to
    /// the form its names show, the rest to the reference implementation's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Parameter names in the checkpoint.
    #[arg(long, value_enum, default_value = "auto")]
    naming: NamingChoice,
    /// Entry of the checkpoint holding the state dict (default: the top level, then state_dict,
    /// model_state_dict, model, state_dict_ema, model_ema, net, network, module, weights).
    #[arg(long)]
    key: Option<String>,
    /// Outputs the network must have (the grading head's: 1 continuous, 5 categorical). Without
    /// it (or num_outputs in --config) the checkpoint's head decides, and must be one of those.
    #[arg(long)]
    num_outputs: Option<usize>,
    /// Leave out checkpoint tensors the network does not use (by default they are an error).
    #[arg(long)]
    drop_unexpected: bool,
    /// Element type of the written file.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeChoice,
    /// The safetensors file to write (with --from-nnunet: the folder).
    #[arg(long)]
    out: PathBuf,
}

/// Converts the checkpoint (or model folder) and prints the report (the compact form's
/// manifest) as JSON.
pub fn convert(args: ConvertArgs) -> Result<()> {
    let (Some(from), Some(arch)) = (args.from, args.arch) else {
        let Some(src) = args.from_nnunet else {
            anyhow::bail!("give --from and --arch, or --from-nnunet");
        };
        let manifest = compact::write(&src, args.folds.as_deref(), &args.out)?;
        eprintln!(
            "wrote {} ({} fold(s), configuration {})",
            args.out.display(),
            manifest.folds.len(),
            manifest.configuration
        );
        return super::emit(&serde_json::to_string_pretty(&manifest)?);
    };
    let report = convert::convert(&ConvertOptions {
        from,
        arch,
        config: args.config,
        naming: args.naming.into(),
        key: args.key,
        num_outputs: args.num_outputs,
        drop_unexpected: args.drop_unexpected,
        dtype: args.dtype.into(),
        out: args.out,
    })?;
    super::emit(&serde_json::to_string_pretty(&report)?)
}

/// `--naming`: which parameter names a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum NamingChoice {
    /// Whichever convention matches more of the checkpoint's names.
    Auto,
    /// MONAI (`...denselayer1.layers.norm1.weight`, `class_layers.out.weight`).
    Monai,
    /// torchvision (`...denselayer1.norm1.weight`, `classifier.weight`; also the old `norm.1`).
    Torchvision,
}

impl From<NamingChoice> for NamingArg {
    fn from(n: NamingChoice) -> Self {
        match n {
            NamingChoice::Auto => NamingArg::Auto,
            NamingChoice::Monai => NamingArg::Monai,
            NamingChoice::Torchvision => NamingArg::Torchvision,
        }
    }
}

/// `--dtype`: element type of the written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum DTypeChoice {
    /// 32-bit float (exact).
    F32,
    /// IEEE half precision (half the size; the engine computes in f32 after loading).
    F16,
    /// bfloat16.
    Bf16,
}

impl From<DTypeChoice> for OutDType {
    fn from(d: DTypeChoice) -> Self {
        match d {
            DTypeChoice::F32 => OutDType::F32,
            DTypeChoice::F16 => OutDType::F16,
            DTypeChoice::Bf16 => OutDType::Bf16,
        }
    }
}
