//! The paper's 2-D networks: a 2-D backbone runs on every axial slice, its globally average-pooled
//! features are max-pooled across slices, then one linear layer (Li et al.'s COVNet reduction,
//! which the paper uses for all seven 2-D architectures).
//!
//! A 2-D network on every slice is the same computation as a network of (1, k, k) kernels over
//! the volume, so the backbones are the 3-D engine's layers with depth-1 kernels ([`Spatial::D2`]):
//! the ResNets ([`super::resnet`]) and GoogLeNet ([`super::inception`]) take that as a mode, the
//! DenseNets are here, sized and named by [`DenseNetConfig`]. Weights are 2-D checkpoints'
//! (`(C_out, C_in, k, k)` convolutions) with torchvision's names (MONAI's too for DenseNets).

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::densenet::{head_prefix, layer_prefix, with_legacy_names, DenseNetConfig};
use super::layers::{Conv3dConfig, Pool3d, Pool3dConfig, ScaleShiftRelu};
use super::{load_bn, load_conv, load_linear, Classifier, ConvUnit, ModelError, Naming, Spatial};

/// Slices per backbone call. Bounds the activations' memory (a 2-D DenseNet on all 128 slices of
/// 240 x 240 would hold several GB at once) while each call still has work for every core.
pub const SLICE_CHUNK: usize = 16;

/// BatchNorm eps of torchvision's and MONAI's DenseNets.
const BN_EPS: f64 = 1e-5;

/// The slice reduction: `features` maps a `(N, C, d, H, W)` stack of slices to its per-slice
/// feature maps `(N, F, d, h, w)`; they are averaged over `(h, w)` and max-pooled over all `D`
/// slices of `x`, giving `(N, F)`. The slices go through `features` [`SLICE_CHUNK`] at a time.
pub fn slice_max_features(
    x: &Tensor,
    features: impl Fn(&Tensor) -> CResult<Tensor>,
) -> CResult<Tensor> {
    let (n, _, d, _, _) = x.dims5()?;
    let mut acc: Option<Tensor> = None;
    let mut start = 0;
    while start < d {
        let len = SLICE_CHUNK.min(d - start);
        let f = features(&x.narrow(2, start, len)?)?;
        let (_, c, fd, h, w) = f.dims5()?;
        if fd != len {
            candle_core::bail!("slice reduction: the backbone turned {len} slices into {fd}");
        }
        let pooled = f.reshape((n, c, fd, h * w))?.mean(3)?.max(2)?;
        acc = Some(match acc {
            None => pooled,
            Some(a) => a.maximum(&pooled)?,
        });
        start += len;
    }
    match acc {
        Some(f) => Ok(f),
        None => candle_core::bail!("slice reduction: the input has no slices"),
    }
}

/// Parameters of a 2-D DenseNet: [`DenseNetConfig::expected_tensors`] with 2-D convolution shapes.
pub fn densenet_expected_tensors(
    cfg: &DenseNetConfig,
    naming: Naming,
) -> Vec<(String, Vec<usize>)> {
    cfg.expected_tensors(naming)
        .into_iter()
        .map(|(name, shape)| match shape.as_slice() {
            // (C_out, C_in, k, k, k) -> (C_out, C_in, k, k).
            &[co, ci, _, kh, kw] => (name, vec![co, ci, kh, kw]),
            _ => (name, shape),
        })
        .collect()
}

/// Dense layer: norm1 -> relu -> conv1 (norm2 folded, relu) -> conv2 3x3.
#[derive(Clone, Debug)]
struct DenseLayer {
    norm1: ScaleShiftRelu,
    conv1: ConvUnit,
    conv2: ConvUnit,
}

/// Transition: norm -> relu -> avg pool 2 -> conv 1x1 (pooling first: both are linear, so the
/// result is the same at a quarter of the cost).
#[derive(Clone, Debug)]
struct Transition {
    norm: ScaleShiftRelu,
    pool: Pool3d,
    conv: ConvUnit,
}

/// A 2-D DenseNet (torchvision / MONAI `spatial_dims=2`) on every slice, in inference form.
#[derive(Clone, Debug)]
pub struct DenseNet2d {
    conv0: ConvUnit,
    pool0: Pool3d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: ScaleShiftRelu,
    head: Linear,
}

impl DenseNet2d {
    /// Loads the network from `vb` with the given parameter names (old torchvision checkpoints'
    /// `norm.1`, `conv.1`, ... accepted).
    pub fn new(cfg: &DenseNetConfig, vb: VarBuilder, naming: Naming) -> Result<Self, ModelError> {
        let vb = with_legacy_names(vb, naming);
        let sp = Spatial::D2;
        let f = cfg.init_features;
        let conv0 = load_conv(
            &vb.pp("features.conv0"),
            sp,
            (f, cfg.in_channels, 7),
            sp.conv(2, 3),
            false,
        )?;
        let norm0 = load_bn(&vb.pp("features.norm0"), f, BN_EPS)?;
        let conv0 = ConvUnit::new(&conv0, Some(&norm0), true)?;
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
        for (i, (&layers, &c0)) in cfg.block_config.iter().zip(&ins).enumerate() {
            let mut block = Vec::with_capacity(layers);
            for l in 0..layers {
                let c = c0 + l * cfg.growth_rate;
                let vl = vb.pp(layer_prefix(naming, i, l));
                let norm1 = ScaleShiftRelu::from_batch_norm(&load_bn(&vl.pp("norm1"), c, BN_EPS)?)?;
                let conv1 = load_conv(
                    &vl.pp("conv1"),
                    sp,
                    (inner, c, 1),
                    Conv3dConfig::default(),
                    false,
                )?;
                let norm2 = load_bn(&vl.pp("norm2"), inner, BN_EPS)?;
                let conv2 = load_conv(
                    &vl.pp("conv2"),
                    sp,
                    (cfg.growth_rate, inner, 3),
                    sp.conv(1, 1),
                    false,
                )?;
                block.push(DenseLayer {
                    norm1,
                    conv1: ConvUnit::new(&conv1, Some(&norm2), true)?,
                    conv2: ConvUnit::new(&conv2, None, false)?,
                });
            }
            blocks.push(block);
            if i + 1 < cfg.block_config.len() {
                let c = c0 + layers * cfg.growth_rate;
                let vt = vb.pp(format!("features.transition{}", i + 1));
                let norm = ScaleShiftRelu::from_batch_norm(&load_bn(&vt.pp("norm"), c, BN_EPS)?)?;
                let conv = load_conv(
                    &vt.pp("conv"),
                    sp,
                    (c / 2, c, 1),
                    Conv3dConfig::default(),
                    false,
                )?;
                transitions.push(Transition {
                    norm,
                    pool: Pool3d::avg(
                        Pool3dConfig {
                            kernel: sp.cube(2),
                            stride: sp.cube(2),
                            padding: [[0; 2]; 3],
                            ceil_mode: false,
                        },
                        true,
                    ),
                    conv: ConvUnit::new(&conv, None, false)?,
                });
            }
        }
        let norm5 =
            ScaleShiftRelu::from_batch_norm(&load_bn(&vb.pp("features.norm5"), last, BN_EPS)?)?;
        let head = load_linear(
            &vb.pp(head_prefix(naming)),
            cfg.num_outputs,
            last,
            &[cfg.num_outputs, last],
        )?;
        Ok(Self {
            conv0,
            pool0,
            blocks,
            transitions,
            norm5,
            head,
        })
    }

    /// Per-slice feature maps after norm5 and its ReLU, `(N, C, D, h, w)`.
    pub fn feature_map(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = self.pool0.forward(&self.conv0.forward(x)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                let y = layer.norm1.forward(&h)?;
                let new = layer.conv2.forward(&layer.conv1.forward(&y)?)?;
                h = Tensor::cat(&[&h, &new], 1)?;
            }
            if let Some(t) = self.transitions.get(i) {
                h = t.conv.forward(&t.pool.forward(&t.norm.forward(&h)?)?)?;
            }
        }
        self.norm5.forward(&h)
    }
}

impl Classifier for DenseNet2d {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.head
            .forward(&slice_max_features(x, |s| self.feature_map(s))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, NetworkConfig};

    #[test]
    fn published_sizes() {
        // torchvision densenet121/169/201(num_classes=1000).
        for (arch, want) in [
            (Arch::DenseNet121_2d, 7_978_856),
            (Arch::DenseNet169_2d, 14_149_480),
            (Arch::DenseNet201_2d, 20_013_928),
        ] {
            let cfg = DenseNetConfig::from_network(&NetworkConfig::new(arch, 3, 1000)).unwrap();
            let n: usize = densenet_expected_tensors(&cfg, Naming::Torchvision)
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(n, want, "{arch}");
        }
    }

    #[test]
    fn reduction_is_a_max_over_slices_of_means() {
        let dev = candle_core::Device::Cpu;
        // (N=1, C=1, D=40, H=1, W=2): slice d holds (d, -d) except slice 33 (beyond one chunk).
        let mut v: Vec<f32> = (0..40).flat_map(|d| [d as f32, -(d as f32)]).collect();
        v[66] = 100.0;
        v[67] = 0.0;
        let x = Tensor::from_vec(v, (1, 1, 40, 1, 2), &dev).unwrap();
        let f = slice_max_features(&x, |s| Ok(s.clone())).unwrap();
        assert_eq!(f.to_vec2::<f32>().unwrap(), vec![vec![50.0]]);
        let two = slice_max_features(&x, |s| Tensor::cat(&[s, &s.neg()?], 1)).unwrap();
        assert_eq!(two.to_vec2::<f32>().unwrap(), vec![vec![50.0, 0.0]]);
    }
}
