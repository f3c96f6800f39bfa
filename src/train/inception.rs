//! Inception-v1 in training form: 3-D as I3D and 2-D as GoogLeNet on every slice, with the layout,
//! geometry and parameter names of [`crate::model::inception`] (the inference form; it stacks a
//! block's three 1x1 convolutions into one, which training keeps apart).
//!
//! Segments: each stem unit, each pool between stages, each mixed block, the head (the I3D port's
//! windowed mean, or the slice reduction, and the affine head).

use candle_core::Tensor;

use super::body::{slice_max, stem_weight, BatchStats, Layers, TrainBody};
use crate::model::inception::{windowed_mean, InceptionConfig, LayoutStep, UnitSpec, I3D_POOL};
use crate::model::layers::conv3d_train;
use crate::model::Spatial;

/// The forward pass of an Inception-v1.
pub(crate) struct InceptionBody {
    ic: InceptionConfig,
    steps: Vec<LayoutStep>,
}

impl InceptionBody {
    /// The body of the network `ic` describes.
    pub(crate) fn new(ic: InceptionConfig) -> Self {
        let steps = ic.layout();
        Self { ic, steps }
    }

    /// Convolution, BatchNorm (batch statistics) and ReLU; `input` for the unit that reads the
    /// network input.
    fn unit(
        &self,
        net: &dyn Layers,
        (name, _, _, k): &UnitSpec,
        (stride, input): (usize, bool),
        x: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        let w = net.param(&format!("{}.weight", self.ic.conv_name(name)))?;
        let w = match self.ic.spatial() {
            Spatial::D3 => w,
            Spatial::D2 => w.unsqueeze(2)?,
        };
        let w = if input {
            stem_weight(w, x.dim(1)?, self.ic.in_channels, "inception")?
        } else {
            w
        };
        let h = conv3d_train(x, &w, &self.ic.conv_cfg(*k, stride))?;
        net.bn_relu(&h, &self.ic.bn_name(name), updates)
    }

    fn head(&self, net: &dyn Layers, h: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = match self.ic.spatial() {
            Spatial::D3 => windowed_mean(h, I3D_POOL)?,
            Spatial::D2 => slice_max(h)?,
        };
        let prefix = self.ic.head_name();
        let w = net.param(&format!("{prefix}.weight"))?;
        // The Kinetics head stores a 1x1x1 convolution.
        let w = w.reshape((self.ic.num_outputs, ()))?;
        let b = net.param(&format!("{prefix}.bias"))?;
        pooled.matmul(&w.t()?)?.broadcast_add(&b)
    }
}

impl TrainBody for InceptionBody {
    fn segments(&self) -> usize {
        self.steps.len() + 1
    }

    fn bn_eps(&self) -> f64 {
        self.ic.bn_eps()
    }

    fn run_segment(
        &self,
        net: &dyn Layers,
        k: usize,
        h: &Tensor,
        updates: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor> {
        if k == self.steps.len() {
            return self.head(net, h);
        }
        let Some(step) = self.steps.get(k) else {
            candle_core::bail!("inception: no segment {k}");
        };
        match step {
            LayoutStep::Unit(unit, stride) => self.unit(net, unit, (*stride, k == 0), h, updates),
            LayoutStep::Pool(pool) => pool.forward_train(h),
            LayoutStep::Mixed(units, pool) => {
                let [u0, u1, u2, u3, u4, u5] = &**units;
                let inner = (1, false);
                let y0 = self.unit(net, u0, inner, h, updates)?;
                let y1 = self.unit(net, u1, inner, h, updates)?;
                let y1 = self.unit(net, u2, inner, &y1, updates)?;
                let y2 = self.unit(net, u3, inner, h, updates)?;
                let y2 = self.unit(net, u4, inner, &y2, updates)?;
                let y3 = self.unit(net, u5, inner, &pool.forward_train(h)?, updates)?;
                Tensor::cat(&[&y0, &y1, &y2, &y3], 1)
            }
        }
    }
}
