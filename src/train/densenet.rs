//! The DenseNets in training form, with MONAI's layout and parameter names: 3-D, and 2-D on every
//! axial slice with the paper's slice reduction (see [`crate::model::densenet`] and
//! [`crate::model::slice2d`] for the inference forms).
//!
//! As in the engine, a transition's average pool runs before its 1x1 convolution (both are
//! linear: same result, a quarter of the cost). Segments: the stem, each dense layer, each
//! transition, the head.

use candle_core::Tensor;

use super::body::{slice_max, stem_weight, BatchStats, Layers, TrainBody};
use crate::model::densenet::DenseNetConfig;
use crate::model::layers::{conv3d_train, Conv3dConfig, Pool3d, Pool3dConfig};
use crate::model::Spatial;

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

/// The forward pass of a DenseNet.
pub(crate) struct DenseNetBody {
    dc: DenseNetConfig,
    spatial: Spatial,
    segments: Vec<Segment>,
}

impl DenseNetBody {
    /// The body of the DenseNet `dc` describes, with 3-D kernels or 2-D ones on every slice.
    pub(crate) fn new(dc: DenseNetConfig, spatial: Spatial) -> Self {
        let blocks = dc.block_config.len();
        let mut segments = vec![Segment::Stem];
        for (i, &layers) in dc.block_config.iter().enumerate() {
            segments.extend((0..layers).map(|l| Segment::DenseLayer(i, l)));
            if i + 1 < blocks {
                segments.push(Segment::Transition(i));
            }
        }
        segments.push(Segment::Head);
        Self {
            dc,
            spatial,
            segments,
        }
    }

    /// A convolution weight as a 3-D kernel (2-D checkpoints store `(C_out, C_in, k, k)`).
    fn weight(&self, net: &dyn Layers, name: &str) -> candle_core::Result<Tensor> {
        let w = net.param(name)?;
        match self.spatial {
            Spatial::D3 => Ok(w),
            Spatial::D2 => w.unsqueeze(2),
        }
    }
}

impl TrainBody for DenseNetBody {
    fn segments(&self) -> usize {
        self.segments.len()
    }

    fn run_segment(
        &self,
        net: &dyn Layers,
        k: usize,
        h: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        let Some(&seg) = self.segments.get(k) else {
            candle_core::bail!("densenet: no segment {k}");
        };
        let sp = self.spatial;
        match seg {
            Segment::Stem => {
                let w0 = stem_weight(
                    self.weight(net, "features.conv0.weight")?,
                    h.dim(1)?,
                    self.dc.in_channels,
                    "densenet",
                )?;
                let h = conv3d_train(h, &w0, &sp.conv(2, 3))?;
                let h = net.bn_relu(&h, "features.norm0", updates)?;
                let pool = Pool3dConfig {
                    kernel: sp.cube(3),
                    stride: sp.cube(2),
                    padding: sp.pad([1, 1]),
                    ceil_mode: false,
                };
                Pool3d::max(pool).forward_train(&h)
            }
            Segment::DenseLayer(i, l) => {
                let p = format!("features.denseblock{}.denselayer{}.layers", i + 1, l + 1);
                let y = net.bn_relu(h, &format!("{p}.norm1"), updates)?;
                let y = conv3d_train(
                    &y,
                    &self.weight(net, &format!("{p}.conv1.weight"))?,
                    &Conv3dConfig::default(),
                )?;
                let y = net.bn_relu(&y, &format!("{p}.norm2"), updates)?;
                let y = conv3d_train(
                    &y,
                    &self.weight(net, &format!("{p}.conv2.weight"))?,
                    &sp.conv(1, 1),
                )?;
                Tensor::cat(&[h, &y], 1)
            }
            Segment::Transition(i) => {
                let p = format!("features.transition{}", i + 1);
                let y = net.bn_relu(h, &format!("{p}.norm"), updates)?;
                let pool = Pool3dConfig {
                    kernel: sp.cube(2),
                    stride: sp.cube(2),
                    padding: sp.pad([0, 0]),
                    ceil_mode: false,
                };
                let y = Pool3d::avg(pool, true).forward_train(&y)?;
                conv3d_train(
                    &y,
                    &self.weight(net, &format!("{p}.conv.weight"))?,
                    &Conv3dConfig::default(),
                )
            }
            Segment::Head => {
                let h = net.bn_relu(h, "features.norm5", updates)?;
                let (n, cf, ..) = h.dims5()?;
                let pooled = match sp {
                    Spatial::D3 => h.reshape((n, cf, ()))?.mean(2)?,
                    Spatial::D2 => slice_max(&h)?,
                };
                let w = net.param("class_layers.out.weight")?;
                let b = net.param("class_layers.out.bias")?;
                pooled.matmul(&w.t()?)?.broadcast_add(&b)
            }
        }
    }
}
