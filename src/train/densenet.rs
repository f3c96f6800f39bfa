//! The 3-D DenseNet in training form (MONAI's layout and parameter names; see
//! [`crate::model::densenet`] for the inference form).
//!
//! As in the engine, a transition's average pool runs before its 1x1x1 convolution (both are
//! linear: same result, a quarter of the cost). Segments: the stem, each dense layer, each
//! transition, the head.

use candle_core::Tensor;

use super::conv::conv3d;
use super::net::{stem_weight, BatchStats, TrainBody, TrainNet};
use super::pool::pool3d;
use crate::model::densenet::DenseNetConfig;
use crate::model::layers::{Conv3dConfig, Pool3d, Pool3dConfig};

/// A piece of the forward pass between two kept activations.
#[derive(Clone, Copy, Debug)]
enum Segment {
    /// Convolution, BatchNorm, ReLU and max pool.
    Stem,
    /// Dense layer `l` of block `i`: its output is its input with the new features appended.
    DenseLayer(usize, usize),
    /// The transition after block `i`.
    Transition(usize),
    /// The last BatchNorm, global average pooling and the linear output layer.
    Head,
}

/// The forward pass of a 3-D DenseNet.
pub(crate) struct DenseNetBody {
    dc: DenseNetConfig,
    segments: Vec<Segment>,
}

impl DenseNetBody {
    /// The body of the DenseNet `dc` describes.
    pub(crate) fn new(dc: DenseNetConfig) -> Self {
        let blocks = dc.block_config.len();
        let mut segments = vec![Segment::Stem];
        for (i, &layers) in dc.block_config.iter().enumerate() {
            segments.extend((0..layers).map(|l| Segment::DenseLayer(i, l)));
            if i + 1 < blocks {
                segments.push(Segment::Transition(i));
            }
        }
        segments.push(Segment::Head);
        Self { dc, segments }
    }
}

impl TrainBody for DenseNetBody {
    fn segments(&self) -> usize {
        self.segments.len()
    }

    fn run_segment(
        &self,
        net: &TrainNet,
        k: usize,
        h: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        let Some(&seg) = self.segments.get(k) else {
            candle_core::bail!("densenet: no segment {k}");
        };
        match seg {
            Segment::Stem => {
                let w0 = stem_weight(
                    net.param("features.conv0.weight")?,
                    h.dim(1)?,
                    self.dc.in_channels,
                    "densenet",
                )?;
                let h = conv3d(h, &w0, &Conv3dConfig::symmetric(2, 3))?;
                let h = net.bn_relu(&h, "features.norm0", updates)?;
                pool3d(&h, Pool3d::max(Pool3dConfig::cubic(3, 2, 1)))
            }
            Segment::DenseLayer(i, l) => {
                let p = format!("features.denseblock{}.denselayer{}.layers", i + 1, l + 1);
                let y = net.bn_relu(h, &format!("{p}.norm1"), updates)?;
                let y = conv3d(
                    &y,
                    &net.param(&format!("{p}.conv1.weight"))?,
                    &Conv3dConfig::default(),
                )?;
                let y = net.bn_relu(&y, &format!("{p}.norm2"), updates)?;
                let y = conv3d(
                    &y,
                    &net.param(&format!("{p}.conv2.weight"))?,
                    &Conv3dConfig::symmetric(1, 1),
                )?;
                Tensor::cat(&[h, &y], 1)
            }
            Segment::Transition(i) => {
                let p = format!("features.transition{}", i + 1);
                let y = net.bn_relu(h, &format!("{p}.norm"), updates)?;
                let y = pool3d(&y, Pool3d::avg(Pool3dConfig::cubic(2, 2, 0), true))?;
                conv3d(
                    &y,
                    &net.param(&format!("{p}.conv.weight"))?,
                    &Conv3dConfig::default(),
                )
            }
            Segment::Head => {
                let n = h.dim(0)?;
                let h = net.bn_relu(h, "features.norm5", updates)?;
                let (_, cf, ..) = h.dims5()?;
                let pooled = h.reshape((n, cf, ()))?.mean(2)?;
                let w = net.param("class_layers.out.weight")?;
                let b = net.param("class_layers.out.bias")?;
                pooled.matmul(&w.t()?)?.broadcast_add(&b)
            }
        }
    }
}
