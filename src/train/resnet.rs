//! The ResNets in training form: MONAI's `ResNet(spatial_dims=3)` with the hyper-parameters of
//! [`ResNetConfig`] (MONAI's defaults unless overridden), and the same layers with (1, k, k)
//! kernels on every slice for the 2-D variants. The parameter names and the layer order are those
//! of [`crate::model::resnet`], the inference form.
//!
//! Segments: the stem (convolution, BatchNorm, ReLU, max pool), each residual block, the head
//! (global average pooling, or the 2-D networks' slice reduction, and the linear layer).

use candle_core::Tensor;

use super::body::{slice_max, stem_weight, BatchStats, Layers, TrainBody};
use crate::model::layers::{conv3d_train, take_strided, Pool3d, Pool3dConfig};
use crate::model::resnet::{ResNetConfig, ShortcutType};
use crate::model::Spatial;

/// The forward pass of a ResNet.
pub(crate) struct ResNetBody {
    rc: ResNetConfig,
    /// The residual blocks: (stage, index, input width, stride).
    blocks: Vec<(usize, usize, usize, usize)>,
}

impl ResNetBody {
    /// The body of the ResNet `rc` describes.
    pub(crate) fn new(rc: ResNetConfig) -> Self {
        let blocks = rc.blocks();
        Self { rc, blocks }
    }

    /// A convolution weight as a 3-D kernel (2-D checkpoints store `(C_out, C_in, k, k)`).
    fn weight(&self, net: &dyn Layers, name: &str) -> candle_core::Result<Tensor> {
        let w = net.param(name)?;
        match self.rc.spatial {
            Spatial::D3 => Ok(w),
            Spatial::D2 => w.unsqueeze(2),
        }
    }

    fn stem(
        &self,
        net: &dyn Layers,
        x: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        let rc = &self.rc;
        let w = stem_weight(
            self.weight(net, "conv1.weight")?,
            x.dim(1)?,
            rc.in_channels,
            "resnet",
        )?;
        let cfg = rc.spatial.conv(rc.stem_stride, rc.stem_kernel / 2);
        let h = conv3d_train(x, &w, &cfg)?;
        let h = net.bn_relu(&h, "bn1", updates)?;
        if !rc.max_pool {
            return Ok(h);
        }
        let pool = Pool3dConfig {
            kernel: rc.spatial.cube(3),
            stride: rc.spatial.cube(2),
            padding: rc.spatial.pad([1, 1]),
            ceil_mode: false,
        };
        Pool3d::max(pool).forward_train(&h)
    }

    fn block(
        &self,
        net: &dyn Layers,
        j: usize,
        x: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        let rc = &self.rc;
        let sp = rc.spatial;
        let Some(&(s, b, c_in, stride)) = self.blocks.get(j) else {
            candle_core::bail!("resnet: no block {j}");
        };
        let p = format!("layer{}.{b}", s + 1);
        let convs = rc.block_convs(s, c_in, stride);
        let last = convs.len() - 1;
        let mut h = x.clone();
        for (i, (_, _, k, st)) in convs.into_iter().enumerate() {
            let w = self.weight(net, &format!("{p}.conv{}.weight", i + 1))?;
            h = conv3d_train(&h, &w, &sp.conv(st, k / 2))?;
            let bn = format!("{p}.bn{}", i + 1);
            // The last BatchNorm's ReLU comes after the residual sum.
            h = if i == last {
                net.bn(&h, &bn, updates)?
            } else {
                net.bn_relu(&h, &bn, updates)?
            };
        }
        let c_out = rc.widths[s] * rc.expansion();
        let shortcut = if !rc.projects(c_in, s, stride) {
            x.clone()
        } else if rc.shortcut == ShortcutType::A {
            // Strided subsampling, the new channels zero.
            let mut y = x.clone();
            for (a, &st) in sp.cube(stride).iter().enumerate() {
                if st > 1 {
                    let len = y.dim(2 + a)?;
                    y = take_strided(&y, 2 + a, 0, st, len.div_ceil(st))?;
                }
            }
            let c = y.dim(1)?;
            if c_out > c {
                y = y.pad_with_zeros(1, 0, c_out - c)?;
            }
            y
        } else {
            let w = self.weight(net, &format!("{p}.downsample.0.weight"))?;
            let mut y = conv3d_train(x, &w, &sp.conv(stride, 0))?;
            if rc.downsample_bias {
                let bias = net.param(&format!("{p}.downsample.0.bias"))?;
                y = y.broadcast_add(&bias.reshape((1, c_out, 1, 1, 1))?)?;
            }
            net.bn(&y, &format!("{p}.downsample.1"), updates)?
        };
        (h + shortcut)?.relu()
    }

    fn head(&self, net: &dyn Layers, h: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, ..) = h.dims5()?;
        let pooled = match self.rc.spatial {
            Spatial::D3 => h.reshape((n, c, ()))?.mean(2)?,
            Spatial::D2 => slice_max(h)?,
        };
        let w = net.param("fc.weight")?;
        let b = net.param("fc.bias")?;
        pooled.matmul(&w.t()?)?.broadcast_add(&b)
    }
}

impl TrainBody for ResNetBody {
    fn segments(&self) -> usize {
        self.blocks.len() + 2
    }

    fn run_segment(
        &self,
        net: &dyn Layers,
        k: usize,
        h: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        if k == 0 {
            self.stem(net, h, updates)
        } else if k <= self.blocks.len() {
            self.block(net, k - 1, h, updates)
        } else if k == self.blocks.len() + 1 {
            self.head(net, h)
        } else {
            candle_core::bail!("resnet: no segment {k}")
        }
    }
}
