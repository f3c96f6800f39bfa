//! 3-D CNNs on candle: the layers candle lacks ([`layers`]) over their [`kernels`],
//! the paper's networks ([`densenet`], [`resnet`], [`inception`], each 3-D and 2-D with the
//! slice reduction in [`slice2d`]), each defined once ([`Network`]) and folded for inference, and
//! a registry that builds them by name from safetensors weights with MONAI, torchvision or
//! I3D-port parameter names.

pub mod convert;
pub mod densenet;
pub mod fewer_inputs;
pub mod inception;
pub mod inflate;
pub mod kernels;
pub mod layers;
pub mod network;
pub mod probe;
pub mod resnet;
pub mod slice2d;

use std::fmt;
use std::str::FromStr;

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use layers::{BatchNorm3d, Conv3d, Conv3dConfig, Padding3d};
pub use network::Network;

/// Defines [`Arch`], [`Arch::ALL`], [`Arch::name`] and [`Arch::family`] from one table: an
/// architecture of an existing family is one row (what its family builds, converts, trains and
/// explains follows from [`Family`]).
macro_rules! architectures {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $family:ident;)*) => {
        /// The architectures this crate can build, by their command-line names.
        ///
        /// The `-3d` networks convolve the volume; the `-2d` ones (and `covnet`) run a 2-D
        /// network on every axial slice, max-pool its globally pooled features across slices and
        /// apply one linear layer (Li et al.'s reduction, used by the paper for every 2-D
        /// network).
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Arch {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)*
        }

        impl Arch {
            /// Every architecture, in registry order.
            pub const ALL: [Arch; [$($name),*].len()] = [$(Arch::$variant),*];

            /// The command-line name, e.g. `densenet201-3d`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Arch::$variant => $name,)*
                }
            }

            /// The family, which decides how the network is built and which hyper-parameters
            /// apply.
            pub fn family(self) -> Family {
                match self {
                    $(Arch::$variant => Family::$family,)*
                }
            }
        }
    };
}

architectures! {
    /// 3-D DenseNet-121, blocks (6, 12, 24, 16).
    DenseNet121_3d = "densenet121-3d", DenseNet3d;
    /// 3-D DenseNet-169, blocks (6, 12, 32, 32).
    DenseNet169_3d = "densenet169-3d", DenseNet3d;
    /// 3-D DenseNet-201, blocks (6, 12, 48, 32): the paper's best model.
    DenseNet201_3d = "densenet201-3d", DenseNet3d;
    /// 3-D ResNet-18 (basic blocks 2, 2, 2, 2), as MONAI's `ResNet(spatial_dims=3)`.
    ResNet18_3d = "resnet18-3d", ResNet3d;
    /// 3-D ResNet-34 (basic blocks 3, 4, 6, 3), as MONAI's `ResNet(spatial_dims=3)`.
    ResNet34_3d = "resnet34-3d", ResNet3d;
    /// 3-D ResNet-50 (bottlenecks 3, 4, 6, 3), as MONAI's `ResNet(spatial_dims=3)`.
    ResNet50_3d = "resnet50-3d", ResNet3d;
    /// 3-D Inception-v1 (I3D, Carreira & Zisserman), TensorFlow "SAME" padding.
    InceptionV1_3d = "inception-v1-3d", Inception;
    /// 2-D DenseNet-121 on every slice (torchvision or MONAI names).
    DenseNet121_2d = "densenet121-2d", DenseNet2d;
    /// 2-D DenseNet-169 on every slice.
    DenseNet169_2d = "densenet169-2d", DenseNet2d;
    /// 2-D DenseNet-201 on every slice.
    DenseNet201_2d = "densenet201-2d", DenseNet2d;
    /// 2-D Inception-v1 (torchvision GoogLeNet without auxiliary heads) on every slice.
    InceptionV1_2d = "inception-v1-2d", Inception;
    /// 2-D ResNet-18 (torchvision) on every slice.
    ResNet18_2d = "resnet18-2d", ResNet2d;
    /// 2-D ResNet-34 (torchvision) on every slice.
    ResNet34_2d = "resnet34-2d", ResNet2d;
    /// 2-D ResNet-50 (torchvision) on every slice.
    ResNet50_2d = "resnet50-2d", ResNet2d;
    /// COVNet (Li et al., Radiology 2020), the paper's baseline: a torchvision ResNet-50 on every
    /// slice with the same reduction (the same network as `resnet50-2d`).
    CovNet = "covnet", ResNet2d;
}

impl Arch {
    /// All names, comma-separated (for error messages and help).
    pub fn known_names() -> String {
        Arch::ALL.map(Arch::name).join(", ")
    }
}

/// Architecture families: which [`NetworkConfig`] overrides each accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// 3-D DenseNets (MONAI).
    DenseNet3d,
    /// 2-D DenseNets on slices (torchvision or MONAI).
    DenseNet2d,
    /// 3-D ResNets (MONAI).
    ResNet3d,
    /// 2-D ResNets on slices (torchvision), COVNet.
    ResNet2d,
    /// Inception-v1: I3D (3-D) and GoogLeNet (2-D on slices).
    Inception,
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
    /// Layers per block: DenseNet dense layers, or ResNet residual blocks per stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_config: Option<Vec<usize>>,
    /// DenseNet bottleneck width factor (4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_size: Option<usize>,
    /// DenseNet stem width (64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_features: Option<usize>,
    /// ResNet and Inception: every published channel count divided by this (1); for small test
    /// networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width_divisor: Option<usize>,
    /// 3-D ResNet stem kernel size (MONAI `conv1_t_size`, 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv1_t_size: Option<usize>,
    /// 3-D ResNet stem stride along every axis (MONAI `conv1_t_stride`, 1: MONAI's `ResNet` and
    /// `resnet18/34/50` default). A checkpoint cannot reveal it; MedicalNet-style networks trained
    /// with 2 (8 times cheaper) need it set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv1_t_stride: Option<usize>,
    /// 3-D ResNet shortcut on downsampling blocks (MONAI `shortcut_type`, "B").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut_type: Option<resnet::ShortcutType>,
    /// 3-D ResNet: whether type-B shortcut convolutions have a bias (MONAI `bias_downsample`, true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_downsample: Option<bool>,
    /// 3-D ResNet: skip the stem's max pool (MONAI `no_max_pool`, false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_max_pool: Option<bool>,
    /// 3-D Inception-v1 (I3D): which head the checkpoint has (the Kinetics-style
    /// `conv3d_0c_1x1` unless set; `ctgrade convert` and [`build`] tell them apart by the
    /// checkpoint's names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i3d_head: Option<inception::I3dHead>,
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
            width_divisor: None,
            conv1_t_size: None,
            conv1_t_stride: None,
            shortcut_type: None,
            bias_downsample: None,
            no_max_pool: None,
            i3d_head: None,
        }
    }

    /// This configuration with every hyper-parameter that a checkpoint cannot reveal (or that
    /// the reference implementation sets without storing it) filled in with the value the
    /// network is built with, so that manifests and converted files state them: for the 3-D
    /// ResNets MONAI's `ResNet` arguments (`conv1_t_size` 7, `conv1_t_stride` 1,
    /// `shortcut_type` B, `bias_downsample` true, `no_max_pool` false), for the I3D its head
    /// form. Values already set are kept.
    pub fn resolved(&self) -> NetworkConfig {
        let mut c = self.clone();
        if self.arch.family() == Family::ResNet3d {
            c.conv1_t_size.get_or_insert(resnet::DEFAULT_CONV1_T_SIZE);
            c.conv1_t_stride
                .get_or_insert(resnet::DEFAULT_CONV1_T_STRIDE);
            c.shortcut_type.get_or_insert(resnet::ShortcutType::B);
            c.bias_downsample.get_or_insert(true);
            c.no_max_pool.get_or_insert(false);
        }
        if self.arch == Arch::InceptionV1_3d {
            c.i3d_head.get_or_insert(inception::I3dHead::default());
        }
        c
    }

    /// The hyper-parameters that a checkpoint cannot reveal and this configuration leaves unset,
    /// as (name, the value [`resolved`](Self::resolved) gives them): what `ctgrade convert`
    /// reports it assumed. (Kernel sizes, shortcut kinds, biases and head forms show in the
    /// checkpoint's names and shapes.)
    pub fn assumed_defaults(&self) -> Vec<(&'static str, String)> {
        let r = self.resolved();
        let mut out = Vec::new();
        if let (None, Some(v)) = (self.conv1_t_stride, r.conv1_t_stride) {
            out.push(("conv1_t_stride", v.to_string()));
        }
        if let (None, Some(v)) = (self.no_max_pool, r.no_max_pool) {
            out.push(("no_max_pool", v.to_string()));
        }
        out
    }

    /// Rejects overrides the architecture has no use for (they would be silently ignored), and
    /// zero input channels or outputs.
    pub fn check_overrides(&self) -> Result<(), ModelError> {
        use Family::*;
        let family = self.arch.family();
        if self.i3d_head.is_some() && self.arch != Arch::InceptionV1_3d {
            return Err(ModelError::InvalidConfig(format!(
                "i3d_head does not apply to {}",
                self.arch
            )));
        }
        let fields: [(&str, bool, &[Family]); 10] = [
            (
                "growth_rate",
                self.growth_rate.is_some(),
                &[DenseNet3d, DenseNet2d],
            ),
            ("bn_size", self.bn_size.is_some(), &[DenseNet3d, DenseNet2d]),
            (
                "init_features",
                self.init_features.is_some(),
                &[DenseNet3d, DenseNet2d],
            ),
            (
                "block_config",
                self.block_config.is_some(),
                &[DenseNet3d, DenseNet2d, ResNet3d, ResNet2d],
            ),
            (
                "width_divisor",
                self.width_divisor.is_some(),
                &[ResNet3d, ResNet2d, Inception],
            ),
            ("conv1_t_size", self.conv1_t_size.is_some(), &[ResNet3d]),
            ("conv1_t_stride", self.conv1_t_stride.is_some(), &[ResNet3d]),
            ("shortcut_type", self.shortcut_type.is_some(), &[ResNet3d]),
            (
                "bias_downsample",
                self.bias_downsample.is_some(),
                &[ResNet3d],
            ),
            ("no_max_pool", self.no_max_pool.is_some(), &[ResNet3d]),
        ];
        for (name, set, families) in fields {
            if set && !families.contains(&family) {
                return Err(ModelError::InvalidConfig(format!(
                    "{name} does not apply to {}",
                    self.arch
                )));
            }
        }
        if self.in_channels == 0 || self.num_outputs == 0 {
            return Err(ModelError::InvalidConfig(
                "in_channels and num_outputs must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// A network that maps a batch of volumes to raw scores.
pub trait Classifier: Send + Sync {
    /// Raw outputs (N, num_outputs), before sigmoid/softmax. Input NCDHW, in the dtype of the
    /// weights (f32 unless a reduced [`Precision`](crate::device::Precision) was asked for).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// For Grad-CAM ([`crate::heatmap`]): the last block's activated feature maps and the linear
    /// head on their global average, for networks whose output is exactly that; `None` for the
    /// others.
    fn cam_features(&self, _x: &Tensor) -> Option<candle_core::Result<CamFeatures>> {
        None
    }
}

/// What Grad-CAM needs of a network whose output is `weight * mean(maps) + bias`.
#[derive(Debug, Clone)]
pub struct CamFeatures {
    /// The last block's activated feature maps `(N, C, d, h, w)`.
    pub maps: Tensor,
    /// The head's weight `(num_outputs, C)`.
    pub weight: Tensor,
    /// Raw outputs `(N, num_outputs)`: the head on the maps' global average, as `forward` gives.
    pub logits: Tensor,
}

/// Parameter-name conventions of checkpoints. They differ only for DenseNets (3-D and 2-D); every
/// other architecture has one convention, which both values name: MONAI's for the 3-D ResNets
/// (`layer1.0.conv1.weight`, `fc.weight`), the I3D port's for the 3-D Inception
/// (`mixed_4b.branch_1.1.conv3d.weight`), torchvision's for the 2-D ResNets and GoogLeNet.
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
    #[error("unknown architecture {0:?} (known: {known})", known = Arch::known_names())]
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
    /// The requested device cannot be opened.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
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

/// `cfg` with the I3D head form read off `vb` where `cfg` leaves it unset (the STOIC head when
/// `vb` holds `linear.weight`), so that unconverted STOIC checkpoints build with their own head.
pub fn with_detected_head(cfg: &NetworkConfig, vb: &VarBuilder) -> NetworkConfig {
    let mut c = cfg.clone();
    if c.arch == Arch::InceptionV1_3d && c.i3d_head.is_none() {
        let stoic = inception::I3dHead::Stoic;
        if vb.contains_tensor(&format!("{}.weight", stoic.prefix())) {
            c.i3d_head = Some(stoic);
        }
    }
    c
}

/// [`build`] with the parameter names given: the definition ([`define`]) folded into its
/// inference form.
pub fn build_with_naming(
    cfg: &NetworkConfig,
    vb: VarBuilder,
    naming: Naming,
) -> Result<Box<dyn Classifier>, ModelError> {
    define(cfg, vb, naming)?.fold()
}

/// The definition of the network `cfg` describes ([`Network`]: what training runs and inference
/// folds), its parameters from `vb` under the given names.
pub fn define(
    cfg: &NetworkConfig,
    vb: VarBuilder,
    naming: Naming,
) -> Result<Box<dyn Network>, ModelError> {
    cfg.check_overrides()?;
    let cfg = &with_detected_head(cfg, &vb);
    match cfg.arch.family() {
        Family::DenseNet3d | Family::DenseNet2d => {
            let dc = densenet::DenseNetConfig::from_network(cfg)?;
            let spatial = match cfg.arch.family() {
                Family::DenseNet3d => Spatial::D3,
                _ => Spatial::D2,
            };
            Ok(Box::new(densenet::DenseNet::new(&dc, spatial, vb, naming)?))
        }
        Family::ResNet3d | Family::ResNet2d => {
            let rc = resnet::ResNetConfig::from_network(cfg)?;
            Ok(Box::new(resnet::ResNet::new(&rc, vb)?))
        }
        Family::Inception => {
            let ic = inception::InceptionConfig::from_network(cfg)?;
            Ok(Box::new(inception::Inception::new(&ic, vb)?))
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
/// with MONAI's names (the architecture's only names where it has one convention). The stem
/// convolution comes first, the head's weight and bias last. Empty for an invalid configuration.
pub fn expected_tensors(cfg: &NetworkConfig) -> Vec<(String, Vec<usize>)> {
    expected_tensors_named(cfg, Naming::Monai).unwrap_or_default()
}

/// [`expected_tensors`] under a naming convention, with configuration errors reported: what the
/// definition's constructor asks for, in its order.
pub fn expected_tensors_named(
    cfg: &NetworkConfig,
    naming: Naming,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    Ok(tensors_to_create(cfg, naming)?
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect())
}

/// [`expected_tensors_named`] with the initialisation the constructor gives each tensor of a
/// network created from scratch ([`network::record_tensors`]).
pub(crate) fn tensors_to_create(
    cfg: &NetworkConfig,
    naming: Naming,
) -> Result<network::Asked, ModelError> {
    network::record_tensors(|vb| define(cfg, vb, naming))
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

/// Whether kernels span depth (3-D networks) or act on each axial slice alone. A 2-D network run
/// on every slice is a network of depth-1 kernels over the volume: the same computation, on the
/// same NCDHW tensors and 3-D layers, with no reshaping between slices and batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spatial {
    /// Cubic kernels over (D, H, W).
    D3,
    /// (1, k, k) kernels: each slice on its own.
    D2,
}

impl Spatial {
    /// The `(N, F)` features a backbone's `feature_map` gives for `x`: its global average for 3-D
    /// networks, the slice reduction of the paper's 2-D networks
    /// ([`slice2d::slice_max_features`]) for 2-D ones.
    pub fn pooled_features(
        self,
        x: &Tensor,
        feature_map: impl Fn(&Tensor) -> CResult<Tensor>,
    ) -> CResult<Tensor> {
        match self {
            Spatial::D3 => layers::global_avg_pool(&feature_map(x)?),
            Spatial::D2 => slice2d::slice_max_features(x, feature_map),
        }
    }

    /// The `(N, F)` features of whole feature maps `(N, F, D, h, w)`, differentiably: their global
    /// average for 3-D networks, the slice reduction (`slice2d::slice_max`: ties share the
    /// gradient) for 2-D ones. The training form of [`Spatial::pooled_features`].
    pub fn pool_maps(self, maps: &Tensor) -> CResult<Tensor> {
        match self {
            Spatial::D3 => layers::global_avg_pool_composed(maps),
            Spatial::D2 => slice2d::slice_max(maps),
        }
    }

    /// A kernel, window or stride of `k` along every spanned axis (1 along depth for 2-D).
    pub fn cube(self, k: usize) -> [usize; 3] {
        match self {
            Spatial::D3 => [k; 3],
            Spatial::D2 => [1, k, k],
        }
    }

    /// Per-side padding `p` on every spanned axis.
    pub fn pad(self, p: [usize; 2]) -> Padding3d {
        match self {
            Spatial::D3 => [p; 3],
            Spatial::D2 => [[0, 0], p, p],
        }
    }

    /// Stride `s` and symmetric padding `p` on every spanned axis.
    pub fn conv(self, stride: usize, p: usize) -> Conv3dConfig {
        Conv3dConfig {
            stride: self.cube(stride),
            padding: self.pad([p, p]),
        }
    }

    /// A convolution weight's shape as checkpoints store it: (C_out, C_in, k, k, k) or
    /// (C_out, C_in, k, k).
    pub fn weight_shape(self, c_out: usize, c_in: usize, k: usize) -> Vec<usize> {
        match self {
            Spatial::D3 => vec![c_out, c_in, k, k, k],
            Spatial::D2 => vec![c_out, c_in, k, k],
        }
    }
}

/// Loads a BatchNorm (running statistics as variables shared with a `VarMap`-backed `vb`).
pub(crate) fn load_bn(vb: &VarBuilder, c: usize, eps: f64) -> Result<BatchNorm3d, ModelError> {
    Ok(BatchNorm3d::new(
        get_param(vb, &[c], "weight", Init::Const(1.0))?,
        get_param(vb, &[c], "bias", Init::Const(0.0))?,
        get_param(vb, &[c], "running_mean", Init::Const(0.0))?,
        get_param(vb, &[c], "running_var", Init::Const(1.0))?,
        eps,
    )?)
}

/// Loads a `k`-sized convolution (a 2-D weight becomes a depth-1 3-D one), with a bias if asked.
pub(crate) fn load_conv(
    vb: &VarBuilder,
    spatial: Spatial,
    (c_out, c_in, k): (usize, usize, usize),
    cfg: Conv3dConfig,
    bias: bool,
) -> Result<Conv3d, ModelError> {
    let shape = spatial.weight_shape(c_out, c_in, k);
    let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
    // He (Kaiming) normal for networks created from scratch.
    let init = Init::Randn {
        mean: 0.0,
        stdev: (2.0 / fan_in).sqrt(),
    };
    let mut w = get_param(vb, &shape, "weight", init)?;
    if spatial == Spatial::D2 {
        w = w.unsqueeze(2)?;
    }
    let b = if bias {
        let bound = 1.0 / fan_in.sqrt();
        Some(get_param(
            vb,
            &[c_out],
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(Conv3d::new(w, b, cfg)?)
}

/// Loads a linear layer `(n_out, n_in)` with a bias, stored under `shape` (a 1x1x1 convolution's
/// weight for the I3D head).
pub(crate) fn load_linear(
    vb: &VarBuilder,
    n_out: usize,
    n_in: usize,
    shape: &[usize],
) -> Result<candle_nn::Linear, ModelError> {
    let bound = 1.0 / (n_in as f64).sqrt();
    let w = get_param(
        vb,
        shape,
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?
    .reshape((n_out, n_in))?;
    let b = get_param(vb, &[n_out], "bias", Init::Const(0.0))?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

/// A convolution with the BatchNorm after it folded in, and optionally the ReLU after that
/// (fused into the CPU kernel when it runs).
#[derive(Clone, Debug)]
pub(crate) struct ConvUnit {
    conv: Conv3d,
    relu: bool,
}

impl ConvUnit {
    /// `conv` followed by `bn` (folded) and, if `relu`, a ReLU.
    pub(crate) fn new(
        conv: &Conv3d,
        bn: Option<&BatchNorm3d>,
        relu: bool,
    ) -> Result<Self, ModelError> {
        let conv = match bn {
            Some(bn) => bn.fold_into(conv)?,
            None => conv.clone(),
        };
        Ok(Self { conv, relu })
    }

    /// Output channels.
    pub(crate) fn c_out(&self) -> CResult<usize> {
        self.conv.weight().dim(0)
    }

    /// The unit concatenated with others along output channels: one pass over a shared input.
    pub(crate) fn stack(units: &[&ConvUnit]) -> Result<Self, ModelError> {
        let Some(first) = units.first() else {
            return Err(ModelError::InvalidConfig("no convolutions to stack".into()));
        };
        let same = units
            .iter()
            .all(|u| u.relu == first.relu && u.conv.config() == first.conv.config());
        if !same {
            return Err(ModelError::InvalidConfig(
                "stacked convolutions differ in geometry or activation".into(),
            ));
        }
        let ws: Vec<&Tensor> = units.iter().map(|u| u.conv.weight()).collect();
        let bias = units
            .iter()
            .map(|u| match u.conv.bias() {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(
                    u.c_out()?,
                    u.conv.weight().dtype(),
                    u.conv.weight().device(),
                ),
            })
            .collect::<CResult<Vec<_>>>()?;
        let conv = Conv3d::new(
            Tensor::cat(&ws, 0)?,
            Some(Tensor::cat(&bias, 0)?),
            *first.conv.config(),
        )?;
        Ok(Self {
            conv,
            relu: first.relu,
        })
    }
}

impl Module for ConvUnit {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.conv.forward_act(x, self.relu)
    }
}
