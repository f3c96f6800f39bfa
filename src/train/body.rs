//! What a trainable network's architecture supplies ([`TrainBody`]) and what it may use: the
//! network's parameters and training-mode BatchNorm ([`Layers`], which the network in training,
//! `TrainNet`, implements) and the pieces the families share.

use candle_core::Tensor;

/// PyTorch's BatchNorm eps, the default of every family but GoogLeNet.
pub(crate) const BN_EPS: f64 = crate::model::layers::BatchNorm3d::EPS;

/// The architecture-specific part of a trainable network: its forward pass as a chain of
/// segments, each a function of the previous one's output (the network input for the first, the raw
/// outputs `(N, num_outputs)` from the last). Parameters are looked up on the network by their
/// checkpoint names; BatchNorm goes through [`Layers::bn_relu`] and [`Layers::bn`], which
/// record the batch statistics.
pub(crate) trait TrainBody: Send + Sync {
    /// The number of segments.
    fn segments(&self) -> usize;

    /// BatchNorm's eps in the reference implementation.
    fn bn_eps(&self) -> f64 {
        BN_EPS
    }

    /// Segment `k` on its input `h`.
    fn run_segment(
        &self,
        net: &dyn Layers,
        k: usize,
        h: &Tensor,
        stats: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor>;
}

/// The parameters and BatchNorms of a network in training, by checkpoint name.
pub(crate) trait Layers {
    /// The parameter `name`, as a tensor that tracks gradients.
    fn param(&self, name: &str) -> candle_core::Result<Tensor>;

    /// BatchNorm `name` with batch statistics, then ReLU; records the statistics.
    fn bn_relu(
        &self,
        x: &Tensor,
        name: &str,
        stats: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor>;

    /// BatchNorm `name` with batch statistics, no activation; records the statistics.
    fn bn(
        &self,
        x: &Tensor,
        name: &str,
        stats: &mut Vec<BatchStats>,
    ) -> candle_core::Result<Tensor>;
}

/// Batch statistics of one BatchNorm in one forward pass.
pub(crate) struct BatchStats {
    /// The BatchNorm.
    pub(crate) name: String,
    /// Per-channel mean.
    pub(crate) mean: Vec<f64>,
    /// Biased variance.
    pub(crate) var: Vec<f64>,
    /// Values per channel.
    pub(crate) count: usize,
}

/// The paper's 2-D reduction of per-slice feature maps `(N, C, D, h, w)` to `(N, C)`: each
/// slice's average, then the maximum over slices. The gradient of tied maxima is shared evenly
/// among them, as PyTorch's `amax` shares it (ties do happen: slices whose features a narrow
/// layer zeroed end up equal).
pub(crate) fn slice_max(h: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, d, ..) = h.dims5()?;
    let means = h.reshape((n, c, d, ()))?.mean(3)?;
    let fixed = means.detach();
    let top = fixed.max_keepdim(2)?;
    let tied = fixed.broadcast_eq(&top)?.to_dtype(means.dtype())?;
    let share = tied.broadcast_div(&tied.sum_keepdim(2)?)?;
    (means * share)?.sum(2)
}

/// The stem convolution's weight for an input of `c` channels: the weight itself, or, for one
/// channel standing for the CT repeated in all `in_channels` (`ct_x3`), the weight summed over
/// its input channels (the same function at a fraction of the cost).
pub(crate) fn stem_weight(
    w: Tensor,
    c: usize,
    in_channels: usize,
    what: &str,
) -> candle_core::Result<Tensor> {
    if c == 1 && in_channels == 3 {
        w.sum_keepdim(1)
    } else if c == in_channels {
        Ok(w)
    } else {
        candle_core::bail!("{what}: input has {c} channels, the network takes {in_channels}")
    }
}
