//! ResNet-18/34/50 (He et al. 2016): 3-D as MONAI's `ResNet(spatial_dims=3)`, and 2-D as
//! torchvision's `resnet18/34/50` for the slice-wise variants ([`super::slice2d`]). Both use the
//! same parameter names (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`).
//!
//! [`ResNet`] is the definition; [`FoldedResNet`] the inference form folded from it: every
//! BatchNorm folds into the convolution before it, and the ReLUs after
//! `conv1`/`conv2` run inside the CPU convolution kernel.

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layers::{self, BatchNorm3d, Conv3d, Pool3d, Pool3dConfig};
use super::network::{stem_conv, Network};
use super::{
    load_bn, load_conv, load_linear, Arch, CamFeatures, Classifier, ConvUnit, ModelError,
    NetworkConfig, Spatial,
};

/// PyTorch's BatchNorm eps, used by MONAI and torchvision ResNets.
const BN_EPS: f64 = BatchNorm3d::EPS;

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
    fn expansion(&self) -> usize {
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
    fn blocks(&self) -> Vec<(usize, usize, usize, usize)> {
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
    fn block_convs(
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
    fn projects(&self, c_in: usize, stage: usize, stride: usize) -> bool {
        stride != 1 || c_in != self.widths[stage] * self.expansion()
    }
}

/// Strided subsampling of `x`, the new channels up to `c_out` zero (the type-A shortcut).
fn subsample(x: &Tensor, stride: [usize; 3], c_out: usize) -> CResult<Tensor> {
    let mut y = x.clone();
    for (a, &s) in stride.iter().enumerate() {
        if s > 1 {
            let len = y.dim(2 + a)?;
            y = layers::take_strided(&y, 2 + a, 0, s, len.div_ceil(s))?;
        }
    }
    let c = y.dim(1)?;
    if c_out > c {
        y = y.pad_with_zeros(1, 0, c_out - c)?;
    }
    y.contiguous()
}

/// How a block's input reaches its output, with the projection's layers of type `P`.
#[derive(Clone, Debug)]
enum Shortcut<P> {
    Identity,
    /// Strided subsampling, zero-padded to `c_out` channels.
    Subsample {
        stride: [usize; 3],
        c_out: usize,
    },
    Projection(P),
}

/// A basic block (two 3x3 convolutions) or a bottleneck (1x1, 3x3, 1x1), each convolution
/// followed by its BatchNorm, with its shortcut (a strided 1x1 convolution and a BatchNorm for
/// type B).
#[derive(Debug)]
struct BlockDef {
    convs: Vec<(Conv3d, BatchNorm3d)>,
    shortcut: Shortcut<(Conv3d, BatchNorm3d)>,
}

/// A ResNet, 3-D (MONAI's `ResNet(spatial_dims=3)`) or 2-D on every slice (torchvision's, with the
/// paper's slice reduction): the definition that training runs and [`Network::fold`] turns into
/// [`FoldedResNet`].
#[derive(Debug)]
pub struct ResNet {
    spatial: Spatial,
    in_channels: usize,
    conv1: Conv3d,
    bn1: BatchNorm3d,
    pool: Option<Pool3d>,
    blocks: Vec<BlockDef>,
    fc: Linear,
}

impl ResNet {
    /// The network `cfg` describes, from `vb` (MONAI / torchvision names).
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
        let bn1 = load_bn(&vb.pp("bn1"), w0, BN_EPS)?;
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
            let mut convs = Vec::new();
            for (i, (ci, co, k, st)) in cfg.block_convs(s, c_in, stride).into_iter().enumerate() {
                let conv = load_conv(
                    &vb.pp(format!("conv{}", i + 1)),
                    sp,
                    (co, ci, k),
                    sp.conv(st, k / 2),
                    false,
                )?;
                convs.push((conv, load_bn(&vb.pp(format!("bn{}", i + 1)), co, BN_EPS)?));
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
                Shortcut::Projection((conv, load_bn(&vb.pp("downsample.1"), c_out, BN_EPS)?))
            };
            blocks.push(BlockDef { convs, shortcut });
        }
        let f = cfg.feature_width();
        let fc = load_linear(&vb.pp("fc"), cfg.num_outputs, f, &[cfg.num_outputs, f])?;
        Ok(Self {
            spatial: sp,
            in_channels: cfg.in_channels,
            conv1,
            bn1,
            pool,
            blocks,
            fc,
        })
    }

    fn block(&self, block: &BlockDef, x: &Tensor, train: bool) -> CResult<Tensor> {
        let mut h = x.clone();
        let last = block.convs.len().saturating_sub(1);
        for (i, (conv, bn)) in block.convs.iter().enumerate() {
            // The last BatchNorm's ReLU comes after the residual sum.
            h = bn.forward_t(&conv.forward_t(&h, train)?, train, i != last)?;
        }
        let shortcut = match &block.shortcut {
            Shortcut::Identity => x.clone(),
            Shortcut::Subsample { stride, c_out } => subsample(x, *stride, *c_out)?,
            Shortcut::Projection((conv, bn)) => {
                bn.forward_t(&conv.forward_t(x, train)?, train, false)?
            }
        };
        (h + shortcut)?.relu()
    }
}

impl Network for ResNet {
    /// The stem (convolution, BatchNorm, ReLU, max pool), each residual block, the head (global
    /// average pooling or the slice reduction, and the linear layer).
    fn segments(&self) -> usize {
        self.blocks.len() + 2
    }

    fn forward_segment(&self, k: usize, h: &Tensor, train: bool) -> CResult<Tensor> {
        if k == 0 {
            let y = stem_conv(&self.conv1, h, self.in_channels, train, "resnet")?;
            let y = self.bn1.forward_t(&y, train, true)?;
            match &self.pool {
                Some(p) => p.forward_t(&y, train),
                None => Ok(y),
            }
        } else if let Some(block) = self.blocks.get(k - 1) {
            self.block(block, h, train)
        } else if k == self.blocks.len() + 1 {
            self.fc.forward(&self.spatial.pool_maps(h)?)
        } else {
            candle_core::bail!("resnet: no segment {k}")
        }
    }

    fn batch_norms(&self) -> Vec<&BatchNorm3d> {
        let mut out = vec![&self.bn1];
        for b in &self.blocks {
            out.extend(b.convs.iter().map(|(_, bn)| bn));
            if let Shortcut::Projection((_, bn)) = &b.shortcut {
                out.push(bn);
            }
        }
        out
    }

    fn fold(&self) -> Result<Box<dyn Classifier>, ModelError> {
        Ok(Box::new(FoldedResNet::fold(self)?))
    }
}

/// A block in inference form: every BatchNorm folded into its convolution.
#[derive(Clone, Debug)]
struct Block {
    convs: Vec<ConvUnit>,
    shortcut: Shortcut<ConvUnit>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h)?;
        }
        let shortcut = match &self.shortcut {
            Shortcut::Identity => x.clone(),
            Shortcut::Subsample { stride, c_out } => subsample(x, *stride, *c_out)?,
            Shortcut::Projection(p) => p.forward(x)?,
        };
        (h + shortcut)?.relu()
    }
}

/// A ResNet in inference form ([`ResNet`] folded): 3-D with global average pooling, or 2-D on
/// every slice with the slice reduction.
#[derive(Clone, Debug)]
pub struct FoldedResNet {
    spatial: Spatial,
    stem: ConvUnit,
    pool: Option<Pool3d>,
    blocks: Vec<Block>,
    fc: Linear,
}

impl FoldedResNet {
    /// The inference form of `def`: every BatchNorm folded into the convolution before it.
    pub fn fold(def: &ResNet) -> Result<Self, ModelError> {
        let mut blocks = Vec::with_capacity(def.blocks.len());
        for b in &def.blocks {
            let last = b.convs.len().saturating_sub(1);
            let convs = b
                .convs
                .iter()
                .enumerate()
                .map(|(i, (conv, bn))| ConvUnit::new(conv, Some(bn), i != last))
                .collect::<Result<Vec<_>, _>>()?;
            let shortcut = match &b.shortcut {
                Shortcut::Identity => Shortcut::Identity,
                Shortcut::Subsample { stride, c_out } => Shortcut::Subsample {
                    stride: *stride,
                    c_out: *c_out,
                },
                Shortcut::Projection((conv, bn)) => {
                    Shortcut::Projection(ConvUnit::new(conv, Some(bn), false)?)
                }
            };
            blocks.push(Block { convs, shortcut });
        }
        Ok(Self {
            spatial: def.spatial,
            stem: ConvUnit::new(&def.conv1, Some(&def.bn1), true)?,
            pool: def.pool,
            blocks,
            fc: def.fc.clone(),
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

impl Classifier for FoldedResNet {
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

    fn params(cfg: &NetworkConfig) -> usize {
        crate::model::expected_tensors(cfg)
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
            let cfg = NetworkConfig::new(arch, 3, outputs);
            assert_eq!(params(&cfg), want, "{arch}");
        }
    }

    #[test]
    fn shortcut_a_has_no_projection() {
        let mut nc = NetworkConfig::new(Arch::ResNet18_3d, 1, 1);
        nc.shortcut_type = Some(ShortcutType::A);
        assert!(!crate::model::expected_tensors(&nc)
            .iter()
            .any(|(n, _)| n.contains("downsample")));
    }
}
