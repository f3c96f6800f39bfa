//! The paper's 2-D networks: a 2-D backbone runs on every axial slice, its globally average-pooled
//! features are max-pooled across slices, then one linear layer (Li et al.'s COVNet reduction,
//! which the paper uses for all seven 2-D architectures).
//!
//! A 2-D network on every slice is the same computation as a network of (1, k, k) kernels over
//! the volume, so the backbones are the 3-D engine's layers with depth-1 kernels ([`Spatial::D2`]):
//! the ResNets ([`super::resnet`]), GoogLeNet ([`super::inception`]) and the DenseNets
//! ([`super::densenet::DenseNet`]) take that as a mode; the 2-D DenseNet's inference form is here. Weights are 2-D checkpoints'
//! (`(C_out, C_in, k, k)` convolutions) with torchvision's names (MONAI's too for DenseNets).

use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::Linear;

use super::densenet::DenseNet;
use super::layers::{Pool3d, ScaleShiftRelu};
use super::{Classifier, ConvUnit, ModelError, Spatial};

/// Slices per backbone call. Bounds the activations' memory (a 2-D DenseNet on all 128 slices of
/// 240 x 240 would hold several GB at once) while each call still has work for every core.
pub const SLICE_CHUNK: usize = 16;

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

/// A 2-D DenseNet (torchvision / MONAI `spatial_dims=2`) on every slice, in inference form
/// ([`DenseNet`] folded).
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
    /// The inference form of `def` (2-D): norm0 into conv0, norm2 into conv1, the other norms as
    /// a scale + shift fused with their ReLU.
    pub fn fold(def: &DenseNet) -> Result<Self, ModelError> {
        if def.spatial != Spatial::D2 {
            return Err(ModelError::InvalidConfig(
                "a 3-D DenseNet folds into DenseNet3d".into(),
            ));
        }
        let blocks = def
            .blocks
            .iter()
            .map(|block| {
                block
                    .iter()
                    .map(|l| {
                        Ok(DenseLayer {
                            norm1: ScaleShiftRelu::from_batch_norm(&l.norm1)?,
                            conv1: ConvUnit::new(&l.conv1, Some(&l.norm2), true)?,
                            conv2: ConvUnit::new(&l.conv2, None, false)?,
                        })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let transitions = def
            .transitions
            .iter()
            .map(|t| {
                Ok(Transition {
                    norm: ScaleShiftRelu::from_batch_norm(&t.norm)?,
                    pool: t.pool,
                    conv: ConvUnit::new(&t.conv, None, false)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            conv0: ConvUnit::new(&def.conv0, Some(&def.norm0), true)?,
            pool0: def.pool0,
            blocks,
            transitions,
            norm5: ScaleShiftRelu::from_batch_norm(&def.norm5)?,
            head: def.head.clone(),
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
    use crate::model::{expected_tensors_named, Arch, Naming, NetworkConfig};

    #[test]
    fn published_sizes() {
        // torchvision densenet121/169/201(num_classes=1000).
        for (arch, want) in [
            (Arch::DenseNet121_2d, 7_978_856),
            (Arch::DenseNet169_2d, 14_149_480),
            (Arch::DenseNet201_2d, 20_013_928),
        ] {
            let cfg = NetworkConfig::new(arch, 3, 1000);
            let n: usize = expected_tensors_named(&cfg, Naming::Torchvision)
                .unwrap()
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
