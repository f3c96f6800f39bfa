//! ResNet-18/34/50 (He et al. 2016): 3-D as MONAI's `ResNet(spatial_dims=3)`, and 2-D as
//! torchvision's `resnet18/34/50` for the slice-wise variants ([`super::slice2d`]). Both use the
//! same parameter names (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`).
//!
//! Inference form: every BatchNorm folds into the convolution before it, and the ReLUs after
//! `conv1`/`conv2` run inside the CPU convolution kernel.

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layers::{self, Pool3d, Pool3dConfig};
use super::{
    load_bn, load_conv, load_linear, push_bn, Arch, CamFeatures, Classifier, ConvUnit, ModelError,
    NetworkConfig, Spatial,
};

/// PyTorch's BatchNorm eps, used by MONAI and torchvision ResNets.
const BN_EPS: f64 = 1e-5;

/// MONAI's `ResNet` default stem kernel (`conv1_t_size`), which `resnet18/34/50` keep.
pub const DEFAULT_CONV1_T_SIZE: usize = 7;

/// MONAI's `ResNet` default stem stride (`conv1_t_stride`), which `resnet18/34/50` keep: the
/// stem does not subsample; only its max pool does.
pub const DEFAULT_CONV1_T_STRIDE: usize = 1;

/// How a downsampling block's shortcut matches the new shape (MONAI `shortcut_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShortcutType {
    /// Strided subsampling, with the new channels zero (no parameters).
    A,
    /// Strided 1x1 convolution + BatchNorm (`downsample.0`, `downsample.1`).
    B,
}

/// Hyper-parameters of a ResNet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// 3-D kernels, or 2-D ones on every slice.
    pub spatial: Spatial,
    /// Input channels.
    pub in_channels: usize,
    /// Outputs of the linear head.
    pub num_outputs: usize,
    /// Bottleneck blocks (ResNet-50) instead of basic ones (ResNet-18/34).
    pub bottleneck: bool,
    /// Residual blocks per stage.
    pub layers: Vec<usize>,
    /// Block width per stage (the bottleneck's output is 4 times wider); the stem has the first.
    pub widths: Vec<usize>,
    /// Stem kernel size.
    pub stem_kernel: usize,
    /// Stem stride.
    pub stem_stride: usize,
    /// Max pool (3, stride 2, padding 1) after the stem.
    pub max_pool: bool,
    /// Shortcut of the downsampling blocks.
    pub shortcut: ShortcutType,
    /// Whether type-B shortcut convolutions have a bias.
    pub downsample_bias: bool,
}

impl ResNetConfig {
    /// Published depth: (bottleneck, blocks per stage).
    pub fn depth(arch: Arch) -> Option<(bool, Vec<usize>)> {
        match arch {
            Arch::ResNet18_3d | Arch::ResNet18_2d => Some((false, vec![2, 2, 2, 2])),
            Arch::ResNet34_3d | Arch::ResNet34_2d => Some((false, vec![3, 4, 6, 3])),
            Arch::ResNet50_3d | Arch::ResNet50_2d | Arch::CovNet => Some((true, vec![3, 4, 6, 3])),
            _ => None,
        }
    }

    /// The configuration of `cfg`: MONAI's defaults for the 3-D ResNets (those of
    /// `resnet18/34/50(spatial_dims=3)`: stem kernel 7 and stride 1, max pool, type-B shortcuts
    /// with bias), torchvision's design for the 2-D ones (stem stride 2, no shortcut bias).
    pub fn from_network(cfg: &NetworkConfig) -> Result<Self, ModelError> {
        let Some((bottleneck, blocks)) = Self::depth(cfg.arch) else {
            return Err(ModelError::InvalidConfig(format!(
                "{} is not a ResNet",
                cfg.arch
            )));
        };
        let spatial = match cfg.arch {
            Arch::ResNet18_3d | Arch::ResNet34_3d | Arch::ResNet50_3d => Spatial::D3,
            _ => Spatial::D2,
        };
        let divisor = cfg.width_divisor.unwrap_or(1);
        if divisor == 0 || 64 % divisor != 0 {
            return Err(ModelError::InvalidConfig(format!(
                "width_divisor {divisor} must divide 64"
            )));
        }
        let layers = cfg.block_config.clone().unwrap_or(blocks);
        if layers.len() != 4 || layers.contains(&0) {
            return Err(ModelError::InvalidConfig(format!(
                "block_config {layers:?} must list 4 positive block counts"
            )));
        }
        let c = Self {
            spatial,
            in_channels: cfg.in_channels,
            num_outputs: cfg.num_outputs,
            bottleneck,
            layers,
            widths: [64, 128, 256, 512].map(|w| w / divisor).to_vec(),
            stem_kernel: cfg.conv1_t_size.unwrap_or(DEFAULT_CONV1_T_SIZE),
            // torchvision's 2-D stem always has stride 2 (conv1_t_stride applies to 3-D only).
            stem_stride: match spatial {
                Spatial::D3 => cfg.conv1_t_stride.unwrap_or(DEFAULT_CONV1_T_STRIDE),
                Spatial::D2 => 2,
            },
            max_pool: !cfg.no_max_pool.unwrap_or(false),
            shortcut: cfg.shortcut_type.unwrap_or(ShortcutType::B),
            downsample_bias: spatial == Spatial::D3 && cfg.bias_downsample.unwrap_or(true),
        };
        if c.stem_kernel == 0 || c.stem_stride == 0 {
            return Err(ModelError::InvalidConfig(
                "conv1_t_size and conv1_t_stride must be positive".into(),
            ));
        }
        Ok(c)
    }

    /// How many times wider a block's output is than its width (4 for bottlenecks).
    pub(crate) fn expansion(&self) -> usize {
        if self.bottleneck {
            4
        } else {
            1
        }
    }

    /// Width of the pooled features the head sees.
    pub fn feature_width(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) * self.expansion()
    }

    /// The blocks in order: (stage, index, input width, stride).
    pub(crate) fn blocks(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut c = self.widths.first().copied().unwrap_or(0);
        for (s, (&n, &w)) in self.layers.iter().zip(&self.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                out.push((s, b, c, stride));
                c = w * self.expansion();
            }
        }
        out
    }

    /// A block's convolutions in order: (input width, output width, kernel, stride); each is
    /// followed by BatchNorm `bn<i>` and, except the last, a ReLU.
    pub(crate) fn block_convs(
        &self,
        stage: usize,
        c_in: usize,
        stride: usize,
    ) -> Vec<(usize, usize, usize, usize)> {
        let w = self.widths[stage];
        if self.bottleneck {
            vec![(c_in, w, 1, 1), (w, w, 3, stride), (w, 4 * w, 1, 1)]
        } else {
            vec![(c_in, w, 3, stride), (w, w, 3, 1)]
        }
    }

    /// Whether a block gets a shortcut projection (PyTorch's rule).
    pub(crate) fn projects(&self, c_in: usize, stage: usize, stride: usize) -> bool {
        stride != 1 || c_in != self.widths[stage] * self.expansion()
    }

    /// Every parameter (name, shape) in state-dict order, BatchNorm statistics included.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let sp = self.spatial;
        let w0 = self.widths.first().copied().unwrap_or(0);
        let mut out = vec![(
            "conv1.weight".to_string(),
            sp.weight_shape(w0, self.in_channels, self.stem_kernel),
        )];
        push_bn(&mut out, "bn1", w0);
        for (s, b, c_in, stride) in self.blocks() {
            let p = format!("layer{}.{b}", s + 1);
            let w = self.widths[s];
            for (i, (ci, co, k, _)) in self.block_convs(s, c_in, stride).into_iter().enumerate() {
                out.push((
                    format!("{p}.conv{}.weight", i + 1),
                    sp.weight_shape(co, ci, k),
                ));
                push_bn(&mut out, &format!("{p}.bn{}", i + 1), co);
            }
            if self.shortcut == ShortcutType::B && self.projects(c_in, s, stride) {
                let co = w * self.expansion();
                out.push((
                    format!("{p}.downsample.0.weight"),
                    sp.weight_shape(co, c_in, 1),
                ));
                if self.downsample_bias {
                    out.push((format!("{p}.downsample.0.bias"), vec![co]));
                }
                push_bn(&mut out, &format!("{p}.downsample.1"), co);
            }
        }
        let f = self.feature_width();
        out.push(("fc.weight".into(), vec![self.num_outputs, f]));
        out.push(("fc.bias".into(), vec![self.num_outputs]));
        out
    }
}

/// How a block's input reaches its output.
#[derive(Clone, Debug)]
enum Shortcut {
    Identity,
    /// Strided subsampling, zero-padded to `c_out` channels.
    Subsample {
        stride: [usize; 3],
        c_out: usize,
    },
    Projection(ConvUnit),
}

impl Shortcut {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        match self {
            Shortcut::Identity => Ok(x.clone()),
            Shortcut::Projection(p) => p.forward(x),
            Shortcut::Subsample { stride, c_out } => {
                let mut y = x.clone();
                for (a, &s) in stride.iter().enumerate() {
                    if s > 1 {
                        let len = y.dim(2 + a)?;
                        y = super::layers::take_strided(&y, 2 + a, 0, s, len.div_ceil(s))?;
                    }
                }
                let c = y.dim(1)?;
                if *c_out > c {
                    y = y.pad_with_zeros(1, 0, c_out - c)?;
                }
                y.contiguous()
            }
        }
    }
}

/// A basic block (two 3x3 convolutions) or a bottleneck (1x1, 3x3, 1x1), with its shortcut.
#[derive(Clone, Debug)]
struct Block {
    convs: Vec<ConvUnit>,
    shortcut: Shortcut,
}

impl Block {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h)?;
        }
        (h + self.shortcut.forward(x)?)?.relu()
    }
}

/// A ResNet in inference form: 3-D with global average pooling, or 2-D on every slice with the
/// slice reduction.
#[derive(Clone, Debug)]
pub struct ResNet {
    spatial: Spatial,
    stem: ConvUnit,
    pool: Option<Pool3d>,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    /// Loads the network from `vb` (MONAI / torchvision names).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        let sp = cfg.spatial;
        let w0 = cfg.widths.first().copied().unwrap_or(0);
        let k = cfg.stem_kernel;
        let conv1 = load_conv(
            &vb.pp("conv1"),
            sp,
            (w0, cfg.in_channels, k),
            sp.conv(cfg.stem_stride, k / 2),
            false,
        )?;
        let stem = ConvUnit::new(&conv1, Some(&load_bn(&vb.pp("bn1"), w0, BN_EPS)?), true)?;
        let pool = cfg.max_pool.then(|| {
            Pool3d::max(Pool3dConfig {
                kernel: sp.cube(3),
                stride: sp.cube(2),
                padding: sp.pad([1, 1]),
                ceil_mode: false,
            })
        });
        let mut blocks = Vec::new();
        for (s, b, c_in, stride) in cfg.blocks() {
            let vb = vb.pp(format!("layer{}.{b}", s + 1));
            let geometry = cfg.block_convs(s, c_in, stride);
            let last = geometry.len() - 1;
            let mut convs = Vec::with_capacity(geometry.len());
            for (i, (ci, co, k, st)) in geometry.into_iter().enumerate() {
                let conv = load_conv(
                    &vb.pp(format!("conv{}", i + 1)),
                    sp,
                    (co, ci, k),
                    sp.conv(st, k / 2),
                    false,
                )?;
                let bn = load_bn(&vb.pp(format!("bn{}", i + 1)), co, BN_EPS)?;
                // The last convolution's ReLU comes after the residual sum.
                convs.push(ConvUnit::new(&conv, Some(&bn), i != last)?);
            }
            let c_out = cfg.widths[s] * cfg.expansion();
            let shortcut = if !cfg.projects(c_in, s, stride) {
                Shortcut::Identity
            } else if cfg.shortcut == ShortcutType::A {
                Shortcut::Subsample {
                    stride: sp.cube(stride),
                    c_out,
                }
            } else {
                let conv = load_conv(
                    &vb.pp("downsample.0"),
                    sp,
                    (c_out, c_in, 1),
                    sp.conv(stride, 0),
                    cfg.downsample_bias,
                )?;
                let bn = load_bn(&vb.pp("downsample.1"), c_out, BN_EPS)?;
                Shortcut::Projection(ConvUnit::new(&conv, Some(&bn), false)?)
            };
            blocks.push(Block { convs, shortcut });
        }
        let f = cfg.feature_width();
        let fc = load_linear(&vb.pp("fc"), cfg.num_outputs, f, &[cfg.num_outputs, f])?;
        Ok(Self {
            spatial: sp,
            stem,
            pool,
            blocks,
            fc,
        })
    }

    /// The last stage's feature map, `(N, C, D', H', W')` (2-D: `D' = D`, one map per slice).
    pub fn feature_map(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = self.stem.forward(x)?;
        if let Some(p) = &self.pool {
            h = p.forward(&h)?;
        }
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(h)
    }
}

impl Classifier for ResNet {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let f = self.spatial.pooled_features(x, |s| self.feature_map(s))?;
        self.fc.forward(&f)
    }

    fn cam_features(&self, x: &Tensor) -> Option<CResult<CamFeatures>> {
        // The 2-D ResNets reduce over slices with a maximum: not a linear head on a mean.
        if self.spatial != Spatial::D3 {
            return None;
        }
        let parts = || {
            let maps = self.feature_map(x)?;
            let logits = self.fc.forward(&layers::global_avg_pool(&maps)?)?;
            Ok(CamFeatures {
                maps,
                weight: self.fc.weight().clone(),
                logits,
            })
        };
        Some(parts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cfg: &ResNetConfig) -> usize {
        cfg.expected_tensors()
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn published_sizes() {
        // torchvision resnet18/34/50(num_classes=1000) and MONAI resnet*(spatial_dims=3,
        // n_input_channels=3, num_classes=1) parameter counts.
        for (arch, outputs, want) in [
            (Arch::ResNet18_2d, 1000, 11_689_512),
            (Arch::ResNet34_2d, 1000, 21_797_672),
            (Arch::ResNet50_2d, 1000, 25_557_032),
            (Arch::CovNet, 1000, 25_557_032),
            (Arch::ResNet18_3d, 1, 33_205_313),
            (Arch::ResNet34_3d, 1, 63_514_945),
            (Arch::ResNet50_3d, 1, 46_204_865),
        ] {
            let cfg = ResNetConfig::from_network(&NetworkConfig::new(arch, 3, outputs)).unwrap();
            assert_eq!(params(&cfg), want, "{arch}");
        }
    }

    #[test]
    fn shortcut_a_has_no_projection() {
        let mut nc = NetworkConfig::new(Arch::ResNet18_3d, 1, 1);
        nc.shortcut_type = Some(ShortcutType::A);
        let cfg = ResNetConfig::from_network(&nc).unwrap();
        assert!(!cfg
            .expected_tensors()
            .iter()
            .any(|(n, _)| n.contains("downsample")));
    }
}
