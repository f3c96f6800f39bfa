//! DenseNet (Huang et al. 2017): 3-D, fully inflated as MONAI's `DenseNet(spatial_dims=3)`, and 2-D
//! on every slice.
//!
//! [`DenseNet`] is the definition (3-D, and 2-D on every slice); [`FoldedDenseNet`] the inference
//! form folded from it.
//!
//! Inference form: norm0 folds into conv0 and norm2 into conv1; the pre-activation norms that act
//! on concatenated features (norm1, the transition norms, norm5) are a per-channel scale + shift
//! fused with their ReLU. In a transition the average pool runs before the 1x1x1 convolution:
//! both are linear, so the result is the same, at a quarter of the cost.

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::fused;
use super::layers::{
    global_avg_pool, BatchNorm3d, Conv3d, Conv3dConfig, Pool3d, Pool3dConfig, ScaleShiftRelu,
};
use super::network::{stem_conv, Network};
use super::{
    load_bn, load_conv, load_linear, Arch, CamFeatures, Classifier, ModelError, Naming,
    NetworkConfig, Spatial,
};

/// BatchNorm eps of torchvision's and MONAI's DenseNets (PyTorch's default).
const BN_EPS: f64 = BatchNorm3d::EPS;

/// Hyper-parameters of a 3-D DenseNet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Outputs of the linear head.
    pub num_outputs: usize,
    /// Stem width.
    pub init_features: usize,
    /// Channels each dense layer adds.
    pub growth_rate: usize,
    /// Dense layers per block.
    pub block_config: Vec<usize>,
    /// Bottleneck width factor: conv1 has `bn_size * growth_rate` outputs.
    pub bn_size: usize,
}

impl DenseNetConfig {
    /// Published block sizes of the registered DenseNets (3-D, and 2-D ones in `slice2d`).
    pub fn blocks(arch: Arch) -> Option<Vec<usize>> {
        match arch {
            Arch::DenseNet121_3d | Arch::DenseNet121_2d => Some(vec![6, 12, 24, 16]),
            Arch::DenseNet169_3d | Arch::DenseNet169_2d => Some(vec![6, 12, 32, 32]),
            Arch::DenseNet201_3d | Arch::DenseNet201_2d => Some(vec![6, 12, 48, 32]),
            _ => None,
        }
    }

    /// The configuration of `cfg`: the architecture's defaults with its overrides applied.
    pub fn from_network(cfg: &NetworkConfig) -> Result<Self, ModelError> {
        let Some(blocks) = Self::blocks(cfg.arch) else {
            return Err(ModelError::InvalidConfig(format!(
                "{} is not a DenseNet",
                cfg.arch
            )));
        };
        let c = Self {
            in_channels: cfg.in_channels,
            num_outputs: cfg.num_outputs,
            init_features: cfg.init_features.unwrap_or(64),
            growth_rate: cfg.growth_rate.unwrap_or(32),
            block_config: cfg.block_config.clone().unwrap_or(blocks),
            bn_size: cfg.bn_size.unwrap_or(4),
        };
        let positive = [
            ("in_channels", c.in_channels),
            ("num_outputs", c.num_outputs),
            ("init_features", c.init_features),
            ("growth_rate", c.growth_rate),
            ("bn_size", c.bn_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::InvalidConfig(format!(
                    "{name} must be positive"
                )));
            }
        }
        if c.block_config.is_empty() || c.block_config.contains(&0) {
            return Err(ModelError::InvalidConfig(format!(
                "block_config {:?} must list positive layer counts",
                c.block_config
            )));
        }
        Ok(c)
    }

    /// Channels entering each block, and the final feature width.
    fn widths(&self) -> (Vec<usize>, usize) {
        let mut c = self.init_features;
        let mut ins = Vec::with_capacity(self.block_config.len());
        for (i, &layers) in self.block_config.iter().enumerate() {
            ins.push(c);
            c += layers * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c /= 2;
            }
        }
        (ins, c)
    }
}

fn layer_prefix(naming: Naming, block: usize, layer: usize) -> String {
    let base = format!("features.denseblock{}.denselayer{}", block + 1, layer + 1);
    match naming {
        Naming::Monai => format!("{base}.layers"),
        Naming::Torchvision => base,
    }
}

fn head_prefix(naming: Naming) -> &'static str {
    match naming {
        Naming::Monai => "class_layers.out",
        Naming::Torchvision => "classifier",
    }
}

/// `vb` reading old torchvision names (`norm.1` for `norm1`, see [`legacy_name`]) when the
/// checkpoint uses them; unchanged otherwise.
fn with_legacy_names(vb: VarBuilder, naming: Naming) -> VarBuilder {
    if naming == Naming::Torchvision
        && !vb.contains_tensor("features.denseblock1.denselayer1.norm1.weight")
        && vb.contains_tensor("features.denseblock1.denselayer1.norm.1.weight")
    {
        vb.rename_f(legacy_name)
    } else {
        vb
    }
}

/// Old torchvision checkpoints spell `denselayer1.norm.1.weight` for `denselayer1.norm1.weight`.
fn legacy_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    if n >= 3 && parts[n - 3].starts_with("denselayer") {
        if let Some(m @ ("norm1" | "norm2" | "conv1" | "conv2")) = parts.get(n - 2).copied() {
            let (stem, digit) = m.split_at(4);
            let mut v: Vec<String> = parts[..n - 2].iter().map(|s| s.to_string()).collect();
            v.push(format!("{stem}.{digit}"));
            v.push(parts[n - 1].to_string());
            return v.join(".");
        }
    }
    name.to_string()
}

/// A piece of the forward pass between two kept activations.
#[derive(Clone, Copy, Debug)]
enum Segment {
    /// Convolution, BatchNorm, ReLU and max pool.
    Stem,
    /// Dense layer `l` of block `i`: its output is its input with the new features appended.
    DenseLayer(usize, usize),
    /// The transition after block `i`.
    Transition(usize),
    /// The last BatchNorm, the global pooling (3-D) or slice reduction (2-D), the linear head.
    Head,
}

/// norm1 -> relu -> conv1 1x1 -> norm2 -> relu -> conv2 3x3.
#[derive(Debug)]
struct DenseLayerDef {
    norm1: BatchNorm3d,
    conv1: Conv3d,
    norm2: BatchNorm3d,
    conv2: Conv3d,
}

/// norm -> relu -> average pool 2 -> conv 1x1 (pool first: see the module docs).
#[derive(Debug)]
struct TransitionDef {
    norm: BatchNorm3d,
    pool: Pool3d,
    conv: Conv3d,
}

/// A DenseNet, 3-D (MONAI's `DenseNet(spatial_dims=3)`) or 2-D on every slice (torchvision's or
/// MONAI's `spatial_dims=2`, with the paper's slice reduction): the definition that training runs
/// and [`Network::fold`] turns into [`FoldedDenseNet`].
#[derive(Debug)]
pub struct DenseNet {
    spatial: Spatial,
    in_channels: usize,
    conv0: Conv3d,
    norm0: BatchNorm3d,
    pool0: Pool3d,
    blocks: Vec<Vec<DenseLayerDef>>,
    transitions: Vec<TransitionDef>,
    norm5: BatchNorm3d,
    head: Linear,
    segments: Vec<Segment>,
}

impl DenseNet {
    /// The network `cfg` describes, with 3-D kernels or 2-D ones on every slice, from `vb` with
    /// the given parameter names (old torchvision checkpoints' `norm.1`, `conv.1`, ... accepted).
    pub fn new(
        cfg: &DenseNetConfig,
        spatial: Spatial,
        vb: VarBuilder,
        naming: Naming,
    ) -> Result<Self, ModelError> {
        let vb = with_legacy_names(vb, naming);
        let sp = spatial;
        let f = cfg.init_features;
        let conv0 = load_conv(
            &vb.pp("features.conv0"),
            sp,
            (f, cfg.in_channels, 7),
            sp.conv(2, 3),
            false,
        )?;
        let norm0 = load_bn(&vb.pp("features.norm0"), f, BN_EPS)?;
        let pool0 = Pool3d::max(Pool3dConfig {
            kernel: sp.cube(3),
            stride: sp.cube(2),
            padding: sp.pad([1, 1]),
            ceil_mode: false,
        });
        let (ins, last) = cfg.widths();
        let inner = cfg.bn_size * cfg.growth_rate;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        let mut segments = vec![Segment::Stem];
        for (i, (&layers, &c0)) in cfg.block_config.iter().zip(&ins).enumerate() {
            let mut block = Vec::with_capacity(layers);
            for l in 0..layers {
                let c = c0 + l * cfg.growth_rate;
                let vl = vb.pp(layer_prefix(naming, i, l));
                block.push(DenseLayerDef {
                    norm1: load_bn(&vl.pp("norm1"), c, BN_EPS)?,
                    conv1: load_conv(
                        &vl.pp("conv1"),
                        sp,
                        (inner, c, 1),
                        Conv3dConfig::default(),
                        false,
                    )?,
                    norm2: load_bn(&vl.pp("norm2"), inner, BN_EPS)?,
                    conv2: load_conv(
                        &vl.pp("conv2"),
                        sp,
                        (cfg.growth_rate, inner, 3),
                        sp.conv(1, 1),
                        false,
                    )?,
                });
                segments.push(Segment::DenseLayer(i, l));
            }
            blocks.push(block);
            if i + 1 < cfg.block_config.len() {
                let c = c0 + layers * cfg.growth_rate;
                let vt = vb.pp(format!("features.transition{}", i + 1));
                transitions.push(TransitionDef {
                    norm: load_bn(&vt.pp("norm"), c, BN_EPS)?,
                    pool: Pool3d::avg(
                        Pool3dConfig {
                            kernel: sp.cube(2),
                            stride: sp.cube(2),
                            padding: [[0; 2]; 3],
                            ceil_mode: false,
                        },
                        true,
                    ),
                    conv: load_conv(
                        &vt.pp("conv"),
                        sp,
                        (c / 2, c, 1),
                        Conv3dConfig::default(),
                        false,
                    )?,
                });
                segments.push(Segment::Transition(i));
            }
        }
        segments.push(Segment::Head);
        let norm5 = load_bn(&vb.pp("features.norm5"), last, BN_EPS)?;
        let head = load_linear(
            &vb.pp(head_prefix(naming)),
            cfg.num_outputs,
            last,
            &[cfg.num_outputs, last],
        )?;
        Ok(Self {
            spatial,
            in_channels: cfg.in_channels,
            conv0,
            norm0,
            pool0,
            blocks,
            transitions,
            norm5,
            head,
            segments,
        })
    }
}

impl Network for DenseNet {
    fn segments(&self) -> usize {
        self.segments.len()
    }

    fn forward_segment(&self, k: usize, h: &Tensor, train: bool) -> CResult<Tensor> {
        let Some(&seg) = self.segments.get(k) else {
            candle_core::bail!("densenet: no segment {k}");
        };
        match seg {
            Segment::Stem => {
                let y = stem_conv(&self.conv0, h, self.in_channels, train, "densenet")?;
                let y = self.norm0.forward_t(&y, train, true)?;
                self.pool0.forward_t(&y, train)
            }
            Segment::DenseLayer(i, l) => {
                let Some(layer) = self.blocks.get(i).and_then(|b| b.get(l)) else {
                    candle_core::bail!("densenet: no dense layer {l} in block {i}");
                };
                let y = layer.norm1.forward_t(h, train, true)?;
                let y = layer.conv1.forward_t(&y, train)?;
                let y = layer.norm2.forward_t(&y, train, true)?;
                let y = layer.conv2.forward_t(&y, train)?;
                Tensor::cat(&[h, &y], 1)
            }
            Segment::Transition(i) => {
                let Some(t) = self.transitions.get(i) else {
                    candle_core::bail!("densenet: no transition {i}");
                };
                let y = t.norm.forward_t(h, train, true)?;
                let y = t.pool.forward_t(&y, train)?;
                t.conv.forward_t(&y, train)
            }
            Segment::Head => {
                let y = self.norm5.forward_t(h, train, true)?;
                self.head.forward(&self.spatial.pool_maps(&y)?)
            }
        }
    }

    fn batch_norms(&self) -> Vec<&BatchNorm3d> {
        let mut out = vec![&self.norm0];
        for (i, block) in self.blocks.iter().enumerate() {
            for l in block {
                out.extend([&l.norm1, &l.norm2]);
            }
            if let Some(t) = self.transitions.get(i) {
                out.push(&t.norm);
            }
        }
        out.push(&self.norm5);
        out
    }

    fn fold(&self) -> Result<Box<dyn Classifier>, ModelError> {
        Ok(Box::new(FoldedDenseNet::fold(self)?))
    }
}

/// norm1 -> relu -> conv1 (norm2 folded) -> relu -> conv2; output concatenated onto the input.
#[derive(Clone, Debug)]
struct DenseLayer {
    norm1: ScaleShiftRelu,
    conv1: Conv3d,
    conv2: Conv3d,
}

impl DenseLayer {
    fn fold(def: &DenseLayerDef) -> CResult<Self> {
        Ok(Self {
            norm1: ScaleShiftRelu::from_batch_norm(&def.norm1)?,
            conv1: def.norm2.fold_into(&def.conv1)?,
            conv2: def.conv2.clone(),
        })
    }

    /// The new features (not yet concatenated).
    fn new_features(&self, x: &Tensor) -> CResult<Tensor> {
        let h = self.conv1.forward_act(&self.norm1.forward(x)?, true)?;
        self.conv2.forward(&h)
    }
}

/// norm -> relu -> avg pool 2 -> conv 1x1x1 (pool first: see the module docs).
#[derive(Clone, Debug)]
struct Transition {
    norm: ScaleShiftRelu,
    pool: Pool3d,
    conv: Conv3d,
}

/// A DenseNet in inference form ([`DenseNet`] folded): 3-D with global average pooling, or 2-D
/// on every slice with the slice reduction.
#[derive(Clone, Debug)]
pub struct FoldedDenseNet {
    spatial: Spatial,
    conv0: Conv3d,
    pool0: Pool3d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: ScaleShiftRelu,
    head: Linear,
    in_channels: usize,
    /// The 3-D network's dense blocks in the fused CPU form, when every weight suits the CPU
    /// kernels.
    fused: Option<Vec<Vec<fused::DenseLayerCpu>>>,
}

impl FoldedDenseNet {
    /// Loads the network from `vb` with the given parameter names: the [`DenseNet`] folded.
    pub fn new(
        cfg: &DenseNetConfig,
        spatial: Spatial,
        vb: VarBuilder,
        naming: Naming,
    ) -> Result<Self, ModelError> {
        Self::fold(&DenseNet::new(cfg, spatial, vb, naming)?)
    }

    /// The inference form of `def`: norm0 into conv0, norm2 into conv1, the other norms as a
    /// scale + shift fused with their ReLU, and (3-D) the dense blocks in the fused CPU form.
    pub fn fold(def: &DenseNet) -> Result<Self, ModelError> {
        let blocks = def
            .blocks
            .iter()
            .map(|b| b.iter().map(DenseLayer::fold).collect::<CResult<Vec<_>>>())
            .collect::<CResult<Vec<_>>>()?;
        let transitions = def
            .transitions
            .iter()
            .map(|t| {
                Ok(Transition {
                    norm: ScaleShiftRelu::from_batch_norm(&t.norm)?,
                    pool: t.pool,
                    conv: t.conv.clone(),
                })
            })
            .collect::<CResult<Vec<_>>>()?;
        // The fused kernels are written for the 3-D network's geometry.
        let fused = match def.spatial {
            Spatial::D2 => None,
            Spatial::D3 => blocks
                .iter()
                .map(|block| {
                    block
                        .iter()
                        .map(|l: &DenseLayer| {
                            fused::DenseLayerCpu::new(
                                l.norm1.scale(),
                                l.norm1.shift(),
                                l.conv1.params(),
                                l.conv2.params(),
                            )
                        })
                        .collect::<CResult<Option<Vec<_>>>>()
                })
                .collect::<CResult<Option<Vec<_>>>>()?,
        };
        Ok(Self {
            spatial: def.spatial,
            conv0: def.norm0.fold_into(&def.conv0)?,
            pool0: def.pool0,
            blocks,
            transitions,
            norm5: ScaleShiftRelu::from_batch_norm(&def.norm5)?,
            head: def.head.clone(),
            in_channels: def.in_channels,
            fused,
        })
    }

    /// The feature extractor up to the global pool: `(N, C, D, H, W) -> (N, features)`.
    ///
    /// On the CPU, without gradients, the dense blocks run fused (`model::kernels::dense`); elsewhere layer by layer.
    pub fn features(&self, x: &Tensor) -> CResult<Tensor> {
        global_avg_pool(&self.features_impl(x, true)?)
    }

    /// [`FoldedDenseNet::features`] layer by layer, through each layer's own `forward` (the CPU kernels
    /// or the composed candle ops), never the fused blocks.
    pub fn features_layered(&self, x: &Tensor) -> CResult<Tensor> {
        global_avg_pool(&self.features_impl(x, false)?)
    }

    /// Raw outputs via [`FoldedDenseNet::features_layered`].
    pub fn forward_layered(&self, x: &Tensor) -> CResult<Tensor> {
        self.head.forward(&self.features_layered(x)?)
    }

    /// The activated feature maps of the last block (before the global pool).
    fn features_impl(&self, x: &Tensor, allow_fused: bool) -> CResult<Tensor> {
        let (_, c, ..) = x.dims5()?;
        if c != self.in_channels {
            candle_core::bail!(
                "densenet: input has {c} channels, the network takes {}",
                self.in_channels
            );
        }
        let fused = self
            .fused
            .as_ref()
            .filter(|_| allow_fused && fused::eligible(&[x]));
        let c0 = &self.conv0;
        let mut h = match (fused, c0.bias()) {
            (Some(_), Some(b)) if fused::eligible(&[c0.weight(), b]) => {
                let p = &self.pool0;
                fused::conv3d_relu_pool(x, c0.weight(), Some(b), c0.config(), &p.cfg, p.kind)?
            }
            _ => self.pool0.forward(&c0.forward_act(x, true)?)?,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            match fused.and_then(|f| f.get(i)) {
                Some(layers) => h = fused::dense_block(&h, layers)?,
                None => {
                    for layer in block {
                        let new = layer.new_features(&h)?;
                        h = Tensor::cat(&[&h, &new], 1)?;
                    }
                }
            }
            if let Some(t) = self.transitions.get(i) {
                let (sc, sh) = (t.norm.scale(), t.norm.shift());
                let y = if fused.is_some() && fused::eligible(&[&h, sc, sh]) {
                    fused::pool3d_pre(&h, &t.pool.cfg, t.pool.kind, Some((sc, sh)))?
                } else {
                    t.pool.forward(&t.norm.forward(&h)?)?
                };
                h = t.conv.forward(&y)?;
            }
        }
        self.norm5.forward(&h)
    }
}

impl Classifier for FoldedDenseNet {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let f = self
            .spatial
            .pooled_features(x, |s| self.features_impl(s, true))?;
        self.head.forward(&f)
    }

    fn cam_features(&self, x: &Tensor) -> Option<CResult<CamFeatures>> {
        // The 2-D networks reduce over slices with a maximum: not a linear head on a mean.
        if self.spatial != Spatial::D3 {
            return None;
        }
        // The last dense block after norm5 and its ReLU: what the global pool averages.
        let parts = || {
            let maps = self.features_impl(x, true)?;
            let logits = self.head.forward(&global_avg_pool(&maps)?)?;
            Ok(CamFeatures {
                maps,
                weight: self.head.weight().clone(),
                logits,
            })
        };
        Some(parts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_map_dense_layer_parts_only() {
        assert_eq!(
            legacy_name("features.denseblock2.denselayer11.norm1.running_var"),
            "features.denseblock2.denselayer11.norm.1.running_var"
        );
        assert_eq!(
            legacy_name("features.denseblock1.denselayer1.conv2.weight"),
            "features.denseblock1.denselayer1.conv.2.weight"
        );
        assert_eq!(
            legacy_name("features.norm0.weight"),
            "features.norm0.weight"
        );
        assert_eq!(
            legacy_name("features.transition1.conv.weight"),
            "features.transition1.conv.weight"
        );
    }

    #[test]
    fn published_sizes() {
        for (arch, params, width) in [
            (Arch::DenseNet121_3d, 11_287_553, 1024),
            (Arch::DenseNet201_3d, 25_376_641, 1920),
        ] {
            let nc = NetworkConfig::new(arch, 3, 1);
            let cfg = DenseNetConfig::from_network(&nc).unwrap();
            let ts = crate::model::expected_tensors_named(&nc, Naming::Monai).unwrap();
            // Learnable parameters only (BatchNorm running statistics are buffers).
            let n: usize = ts
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            // As counted by MONAI's DenseNet(3, 3, 1, block_config=...).
            assert_eq!(n, params, "{arch}");
            assert_eq!(cfg.widths().1, width);
        }
    }
}
