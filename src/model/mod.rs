//! 3-D CNNs on candle: the layers candle lacks ([`layers`]), fast CPU kernels for them (`cpu`),
//! the paper's networks ([`densenet`]) and a registry that builds them by name from safetensors
//! weights with MONAI or torchvision-style parameter names.

pub mod cli;
pub mod convert;
pub(crate) mod cpu;
#[cfg(target_arch = "x86_64")]
pub(crate) mod cpu_avx512;
pub mod densenet;
pub mod inflate;
pub mod layers;
pub(crate) mod prof;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The architectures this crate can build, by their command-line names.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 3-D DenseNet-121, blocks (6, 12, 24, 16).
    #[serde(rename = "densenet121-3d")]
    DenseNet121_3d,
    /// 3-D DenseNet-169, blocks (6, 12, 32, 32).
    #[serde(rename = "densenet169-3d")]
    DenseNet169_3d,
    /// 3-D DenseNet-201, blocks (6, 12, 48, 32): the paper's best model.
    #[serde(rename = "densenet201-3d")]
    DenseNet201_3d,
}

impl Arch {
    /// Every architecture, in registry order.
    pub const ALL: [Arch; 3] = [
        Arch::DenseNet121_3d,
        Arch::DenseNet169_3d,
        Arch::DenseNet201_3d,
    ];

    /// The command-line name, e.g. `densenet201-3d`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::DenseNet121_3d => "densenet121-3d",
            Arch::DenseNet169_3d => "densenet169-3d",
            Arch::DenseNet201_3d => "densenet201-3d",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ModelError::UnknownArch(s.to_string()))
    }
}

/// A network: architecture, input channels, outputs, and optional hyper-parameter overrides
/// (unset ones take the architecture's published values).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Architecture.
    pub arch: Arch,
    /// Input channels (3 in the paper: the CT in three intensity windows, or lesion masks added).
    pub in_channels: usize,
    /// Outputs: 1 for the continuous head, 5 for the categorical one.
    pub num_outputs: usize,
    /// DenseNet growth rate (32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_rate: Option<usize>,
    /// DenseNet layers per block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_config: Option<Vec<usize>>,
    /// DenseNet bottleneck width factor (4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_size: Option<usize>,
    /// DenseNet stem width (64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_features: Option<usize>,
}

impl NetworkConfig {
    /// The architecture as published, with the given input channels and outputs.
    pub fn new(arch: Arch, in_channels: usize, num_outputs: usize) -> Self {
        Self {
            arch,
            in_channels,
            num_outputs,
            growth_rate: None,
            block_config: None,
            bn_size: None,
            init_features: None,
        }
    }
}

/// A network that maps a batch of volumes to raw scores.
pub trait Classifier: Send + Sync {
    /// Raw outputs (N, num_outputs), before sigmoid/softmax. Input NCDHW f32.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

/// Parameter-name conventions of checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// MONAI: `features.denseblock1.denselayer1.layers.norm1.weight`, `class_layers.out.weight`.
    Monai,
    /// torchvision: `features.denseblock1.denselayer1.norm1.weight`, `classifier.weight`
    /// (old checkpoints' `norm.1`, `conv.1`, ... are accepted too).
    Torchvision,
}

/// Errors while configuring, loading or running a network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not a registered architecture name.
    #[error("unknown architecture {0:?} (known: densenet121-3d, densenet169-3d, densenet201-3d)")]
    UnknownArch(String),
    /// Inconsistent hyper-parameters.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// A parameter the network needs is absent from the weights.
    #[error("weights lack tensor {name:?}")]
    MissingTensor {
        /// Full parameter name.
        name: String,
    },
    /// A parameter has the wrong shape.
    #[error("tensor {name:?} has shape {found:?}, the network expects {expected:?}")]
    ShapeMismatch {
        /// Full parameter name.
        name: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
        /// Shape in the weights.
        found: Vec<usize>,
    },
    /// A file could not be read or parsed.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Builds the network `cfg` describes from `vb`, detecting the parameter names.
///
/// With a safetensors-backed `vb` every parameter must be present with the right shape; with a
/// `VarMap`-backed one missing parameters are created (convolutions He-initialised, BatchNorm as
/// identity). BatchNorm is folded into the preceding convolution where the graph allows.
pub fn build(cfg: &NetworkConfig, vb: VarBuilder) -> Result<Box<dyn Classifier>, ModelError> {
    let naming = detect_naming(cfg, &vb);
    build_with_naming(cfg, vb, naming)
}

/// [`build`] with the parameter names given.
pub fn build_with_naming(
    cfg: &NetworkConfig,
    vb: VarBuilder,
    naming: Naming,
) -> Result<Box<dyn Classifier>, ModelError> {
    match cfg.arch {
        Arch::DenseNet121_3d | Arch::DenseNet169_3d | Arch::DenseNet201_3d => {
            let dc = densenet::DenseNetConfig::from_network(cfg)?;
            Ok(Box::new(densenet::DenseNet3d::new(&dc, vb, naming)?))
        }
    }
}

/// The naming convention of the tensors in `vb` (MONAI when undecidable, e.g. an empty `VarMap`).
pub fn detect_naming(cfg: &NetworkConfig, vb: &VarBuilder) -> Naming {
    let names = |naming| expected_tensors_named(cfg, naming).unwrap_or_default();
    let (monai, tv) = (names(Naming::Monai), names(Naming::Torchvision));
    // Only the names that differ between the conventions tell them apart.
    let hits = |own: &[(String, Vec<usize>)], other: &[(String, Vec<usize>)]| {
        own.iter()
            .filter(|(n, _)| !other.iter().any(|(o, _)| o == n))
            .filter(|(n, _)| vb.contains_tensor(n))
            .count()
    };
    // Old torchvision checkpoints (`norm.1`) match neither list; their classifier still says so.
    if hits(&tv, &monai) > hits(&monai, &tv) {
        Naming::Torchvision
    } else {
        Naming::Monai
    }
}

/// Names and shapes every parameter the network expects (for manifest checks before compute),
/// with MONAI's names. Empty for an invalid configuration.
pub fn expected_tensors(cfg: &NetworkConfig) -> Vec<(String, Vec<usize>)> {
    expected_tensors_named(cfg, Naming::Monai).unwrap_or_default()
}

/// [`expected_tensors`] under a naming convention, with configuration errors reported.
pub fn expected_tensors_named(
    cfg: &NetworkConfig,
    naming: Naming,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    match cfg.arch {
        Arch::DenseNet121_3d | Arch::DenseNet169_3d | Arch::DenseNet201_3d => {
            let dc = densenet::DenseNetConfig::from_network(cfg)?;
            Ok(dc.expected_tensors(naming))
        }
    }
}

/// Loads a parameter, creating it with `init` when `vb` is a `VarMap` that lacks it, and turns
/// candle's errors into [`ModelError::MissingTensor`] / [`ModelError::ShapeMismatch`].
pub(crate) fn get_param(
    vb: &VarBuilder,
    shape: &[usize],
    name: &str,
    init: candle_nn::Init,
) -> Result<Tensor, ModelError> {
    let full = if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    match vb.get_with_hints(shape, name, init) {
        Ok(t) => Ok(t),
        Err(e) => {
            if !vb.contains_tensor(name) {
                Err(ModelError::MissingTensor { name: full })
            } else {
                match vb.get_unchecked(name) {
                    Ok(t) if t.dims() != shape => Err(ModelError::ShapeMismatch {
                        name: full,
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    }),
                    _ => Err(ModelError::Candle(e)),
                }
            }
        }
    }
}
