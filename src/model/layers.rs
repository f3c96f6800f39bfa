//! 3-D layers on top of candle 0.11, which has no conv3d and no 3-D pooling.
//!
//! Every layer has a *composed* form built only from candle tensor ops (depth taps over `conv2d`,
//! 1x1x1 convolutions as matrix products, separable pooling from strided views), so gradients flow
//! through it and the CUDA backend runs it unchanged. On the CPU, when nothing asks for gradients,
//! [`Conv3d`], the pools and [`ScaleShiftRelu`] switch to the hand-written kernels in
//! `model::kernels`, which are several times faster than candle's CPU `conv2d`; in training
//! (`forward_t` with `train`), the convolution, the pools and [`BatchNorm3d`] run the kernels'
//! trainable forms, with hand-written gradients. Every form is tested against PyTorch.
//!
//! Tensors are NCDHW throughout.

use std::sync::Mutex;

use candle_core::{DType, Module, Result, Tensor, Var};

pub(crate) use super::kernels::geometry::{avg_divisors, pool_len};
pub use super::kernels::geometry::{Conv3dConfig, Padding3d, Pool3dConfig, PoolKind};
use super::kernels::{cpu, grad_conv, grad_norm, grad_pool};

/// The fused CPU forms a network may run in place of its layers when nothing tracks gradients
/// ([`fused::eligible`]): the DenseNet's stem (convolution + ReLU + pool), its dense blocks, and
/// a pool reading `relu(x * scale + shift)`.
pub(crate) mod fused {
    pub(crate) use crate::model::kernels::cpu::{conv3d_relu_pool, eligible, pool3d_pre};
    pub(crate) use crate::model::kernels::dense::{dense_block, DenseLayerCpu};
}

/// A 3-D convolution (no dilation, no groups) with an optional bias.
#[derive(Clone, Debug)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv3dConfig,
}

impl Conv3d {
    /// A convolution with weight `(C_out, C_in, kd, kh, kw)` and optional bias `(C_out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv3dConfig) -> Result<Self> {
        let (c_out, ..) = weight.dims5()?;
        if let Some(b) = &bias {
            if b.dims() != [c_out] {
                candle_core::bail!("conv3d: bias shape {:?}, expected [{c_out}]", b.dims());
            }
        }
        if cfg.stride.contains(&0) {
            candle_core::bail!("conv3d: zero stride {:?}", cfg.stride);
        }
        Ok(Self { weight, bias, cfg })
    }

    /// The parameters as the CPU kernels take them.
    pub(crate) fn params(&self) -> cpu::ConvParams<'_> {
        cpu::ConvParams {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            cfg: &self.cfg,
        }
    }

    /// The weight `(C_out, C_in, kd, kh, kw)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride and padding.
    pub fn config(&self) -> &Conv3dConfig {
        &self.cfg
    }

    /// The convolution; with `train`, in its trainable form ([`conv3d_train`]: the kernel with
    /// hand-written gradients on the CPU), else on the fastest path ([`Conv3d::forward_act`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return self.forward_act(x, false);
        }
        let y = conv3d_train(x, &self.weight, &self.cfg)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The convolution from candle ops only (autograd, any backend), whatever the device.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        conv3d(x, &self.weight, self.bias.as_ref(), &self.cfg)
    }
}

/// A 16-bit (bf16, f16) convolution on the CPU: candle has no CPU kernel for bf16 and a slow one
/// for f16, so it runs in f32 on the 16-bit values and rounds the output to 16 bits, as a GPU's
/// tensor cores do (16-bit operands, f32 accumulation). `None` when `x` is not such a case.
pub(crate) fn half_conv3d_on_cpu(x: &Tensor, conv: &Conv3d, relu: bool) -> Option<Result<Tensor>> {
    let half = matches!(x.dtype(), DType::BF16 | DType::F16);
    if !half || !x.device().is_cpu() || x.track_op() || conv.weight.track_op() {
        return None;
    }
    let run = || {
        let w = conv.weight.to_dtype(DType::F32)?;
        let b = conv
            .bias
            .as_ref()
            .map(|b| b.to_dtype(DType::F32))
            .transpose()?;
        let y = cpu::conv3d_act(&x.to_dtype(DType::F32)?, &w, b.as_ref(), &conv.cfg, relu)?;
        y.to_dtype(x.dtype())
    };
    Some(run())
}

impl Conv3d {
    /// The convolution, then a ReLU if `relu`, on the fastest path for `x`: cuDNN's native 3-D
    /// convolution when enabled, the CPU kernels (16-bit inputs widened to f32), or candle ops.
    pub fn forward_act(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        #[cfg(feature = "cudnn")]
        if let Some(y) =
            super::kernels::cudnn3d::conv3d(x, &self.weight, self.bias.as_ref(), &self.cfg, relu)
        {
            return y;
        }
        if let Some(y) = half_conv3d_on_cpu(x, self, relu) {
            return y;
        }
        if cpu::eligible(&[x, &self.weight]) && self.bias.as_ref().is_none_or(|b| !b.track_op()) {
            return cpu::conv3d_act(x, &self.weight, self.bias.as_ref(), &self.cfg, relu);
        }
        let y = self.forward_composed(x)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }
}

/// `count` elements along `dim`, starting at `start`, `step` apart (a strided slice).
pub(crate) fn take_strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    step: usize,
    count: usize,
) -> Result<Tensor> {
    if step == 1 || count == 1 {
        return x.narrow(dim, start, count);
    }
    // Split the axis into (count, step) and keep the first of every `step`; a zero tail makes
    // the last group complete (its filler is never selected).
    let need = start + step * count;
    let len = x.dim(dim)?;
    let x = if need > len {
        x.pad_with_zeros(dim, 0, need - len)?
    } else {
        x.clone()
    };
    let v = x.narrow(dim, start, step * count)?;
    let mut shape = v.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, step);
    v.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// `conv3d(x, w)` without bias for training: on the CPU in f32, the inference kernel with
/// hand-written gradients (`kernels::grad_conv`); elsewhere the composed form ([`conv3d`]),
/// whose gradients candle derives.
pub fn conv3d_train(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        grad_conv::conv3d(x, w, cfg)
    } else {
        conv3d(x, w, None, cfg)
    }
}

/// Composed 3-D convolution: `y[:, :, d] = sum_k conv2d(x[:, :, s*d + k], W[:, :, k])` with depth
/// folded into the batch, and 1x1x1 kernels as one matrix product.
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: &Conv3dConfig) -> Result<Tensor> {
    let (n, c_in, d, h, wd) = x.dims5()?;
    let (c_out, c_in_w, kd, kh, kw) = w.dims5()?;
    if c_in != c_in_w {
        candle_core::bail!("conv3d: input has {c_in} channels, weight expects {c_in_w}");
    }
    let [od, oh, ow] = cfg.output_size([d, h, wd], [kd, kh, kw])?;
    let [sd, sh, sw] = cfg.stride;
    let [[pd0, pd1], [ph0, ph1], [pw0, pw1]] = cfg.padding;
    let unpadded = cfg.padding == [[0; 2]; 3];
    let y = if (kd, kh, kw) == (1, 1, 1) && unpadded {
        // Pointwise: subsample, then one (C_out, C_in) x (C_in, voxels) product per batch item.
        let mut xs = x.clone();
        for (axis, (s, o)) in [(sd, od), (sh, oh), (sw, ow)].into_iter().enumerate() {
            if s > 1 {
                xs = take_strided(&xs, 2 + axis, 0, s, o)?;
            }
        }
        let xs = xs.contiguous()?.reshape((n, c_in, od * oh * ow))?;
        w.reshape((c_out, c_in))?
            .broadcast_matmul(&xs)?
            .reshape((n, c_out, od, oh, ow))?
    } else {
        // candle's conv2d takes one symmetric padding and one stride for both axes; pad explicitly
        // and subsample afterwards where the configuration needs more.
        let stride2 = if sh == sw { sh } else { 1 };
        let sym = ph0 == ph1 && pw0 == pw1 && ph0 == pw0;
        let (x, pad2) = if sym && stride2 == 1 {
            (x.clone(), ph0)
        } else {
            let x = x.pad_with_zeros(3, ph0, ph1)?.pad_with_zeros(4, pw0, pw1)?;
            // With a stride, cut the rows and columns no window reaches: candle's conv2d backward
            // derives one output padding from the height and applies it to the width too, which
            // is wrong unless both leave no remainder.
            let x = if stride2 > 1 {
                x.narrow(3, 0, (oh - 1) * sh + kh)?
                    .narrow(4, 0, (ow - 1) * sw + kw)?
            } else {
                x
            };
            (x, 0)
        };
        let x = x.pad_with_zeros(2, pd0, pd1)?;
        let (_, _, _, h2, w2) = x.dims5()?;
        // (N, D, C, H, W): each depth tap is then a slice of whole (C, H, W) planes.
        let xt = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
        let mut acc: Option<Tensor> = None;
        for k in 0..kd {
            let xs =
                take_strided(&xt, 1, k, sd, od)?
                    .contiguous()?
                    .reshape((n * od, c_in, h2, w2))?;
            let wk = w.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let y = xs.conv2d(&wk, pad2, stride2, 1, 1)?;
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
        let mut y = match acc {
            Some(y) => y,
            None => candle_core::bail!("conv3d: empty kernel"),
        };
        if sh != sw {
            y = take_strided(&y, 2, 0, sh, oh)?;
            y = take_strided(&y, 3, 0, sw, ow)?;
        }
        y.reshape((n, od, c_out, oh, ow))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// 3-D max or average pooling.
#[derive(Clone, Copy, Debug)]
pub struct Pool3d {
    /// Geometry.
    pub cfg: Pool3dConfig,
    /// Reduction.
    pub kind: PoolKind,
}

impl Pool3d {
    /// Max pooling (PyTorch `MaxPool3d`).
    pub fn max(cfg: Pool3dConfig) -> Self {
        Self {
            cfg,
            kind: PoolKind::Max,
        }
    }

    /// Average pooling (PyTorch `AvgPool3d`).
    pub fn avg(cfg: Pool3dConfig, count_include_pad: bool) -> Self {
        Self {
            cfg,
            kind: PoolKind::Avg { count_include_pad },
        }
    }

    /// The pooling from candle ops only (autograd, any backend): separable, one axis at a time.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, d, h, w) = x.dims5()?;
        // Validates the geometry before any work.
        self.cfg.output_size([d, h, w])?;
        let mut y = x.clone();
        for a in 0..3 {
            y = pool_axis(
                &y,
                2 + a,
                self.cfg.kernel[a],
                self.cfg.stride[a],
                self.cfg.padding[a],
                self.cfg.ceil_mode,
                self.kind,
            )?;
        }
        Ok(y)
    }
}

impl Pool3d {
    /// The pooling for training: on the CPU in f32, the direct loops with their hand-written
    /// gradient (`kernels::grad_pool`); elsewhere the composed form, whose gradient candle
    /// derives.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            grad_pool::pool3d(x, self.cfg, self.kind)
        } else {
            self.forward_composed(x)
        }
    }

    /// The pooling in its trainable form with `train` ([`Pool3d::forward_train`]), else on the
    /// fastest path.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train(x)
        } else {
            self.forward(x)
        }
    }
}

impl Module for Pool3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu::eligible(&[x]) {
            cpu::pool3d(x, &self.cfg, self.kind)
        } else {
            self.forward_composed(x)
        }
    }
}

/// One axis of a separable pool: the max or mean over `k` strided views.
fn pool_axis(
    x: &Tensor,
    dim: usize,
    k: usize,
    s: usize,
    pad: [usize; 2],
    ceil: bool,
    kind: PoolKind,
) -> Result<Tensor> {
    let len = x.dim(dim)?;
    let o = pool_len(len, k, s, pad, ceil)?;
    if k == 1 && s == 1 && pad == [0, 0] {
        return Ok(x.clone());
    }
    // Window i covers [i*s, i*s + k) of the padded axis; pad (or cut) it to exactly that span.
    let span = (o - 1) * s + k;
    let x = if pad[0] + len > span {
        x.narrow(dim, 0, span - pad[0])?
    } else {
        x.clone()
    };
    let right = span.saturating_sub(pad[0] + len);
    let xp = match kind {
        PoolKind::Avg { .. } => x.pad_with_zeros(dim, pad[0], right)?,
        PoolKind::Max => {
            let mut parts = Vec::with_capacity(3);
            let mut shape = x.dims().to_vec();
            if pad[0] > 0 {
                shape[dim] = pad[0];
                parts.push(neg_inf(&shape, &x)?);
            }
            parts.push(x.clone());
            if right > 0 {
                shape[dim] = right;
                parts.push(neg_inf(&shape, &x)?);
            }
            Tensor::cat(&parts, dim)?
        }
    };
    let mut acc: Option<Tensor> = None;
    for j in 0..k {
        let v = take_strided(&xp, dim, j, s, o)?;
        acc = Some(match (acc, kind) {
            (None, _) => v,
            (Some(a), PoolKind::Max) => a.maximum(&v)?,
            (Some(a), PoolKind::Avg { .. }) => (a + v)?,
        });
    }
    let y = match acc {
        Some(y) => y,
        None => candle_core::bail!("pool3d: empty window"),
    };
    match kind {
        PoolKind::Max => Ok(y),
        PoolKind::Avg { count_include_pad } => {
            let inv = avg_divisors(len, k, s, pad, o, count_include_pad)
                .into_iter()
                .map(|d| 1.0 / d as f64)
                .collect::<Vec<_>>();
            let mut shape = vec![1; y.rank()];
            shape[dim] = o;
            let inv = Tensor::from_vec(inv, shape, y.device())?.to_dtype(y.dtype())?;
            y.broadcast_mul(&inv)
        }
    }
}

fn neg_inf(shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::full(f32::NEG_INFINITY, shape, like.device())?.to_dtype(like.dtype())
}

/// Global average pooling: `(N, C, D, H, W)` to `(N, C)`, on the fastest path.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if cpu::eligible(&[x]) {
        return cpu::global_avg_pool(x);
    }
    global_avg_pool_composed(x)
}

/// Global average pooling from candle ops only: differentiable, and the same sums whether or not
/// `x` tracks a graph, so a segment recomputed by gradient checkpointing reproduces its first
/// pass bit for bit.
pub fn global_avg_pool_composed(x: &Tensor) -> Result<Tensor> {
    let (n, c, ..) = x.dims5()?;
    x.reshape((n, c, ()))?.mean(2)
}

/// The batch statistics of one BatchNorm in one training-mode forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel biased variance.
    pub var: Vec<f64>,
    /// Values per channel.
    pub count: usize,
}

/// BatchNorm over the channels of an NCDHW tensor, as PyTorch's (`BatchNorm2d` on slices is the
/// same): affine parameters and running statistics, variables when the network trains.
///
/// [`forward_t`](Self::forward_t) switches on the train flag: with it, the batch statistics
/// (recorded for [`update_running_stats`](Self::update_running_stats)); without, the running
/// ones. The running statistics change only when the trainer blends a recorded batch in, so that
/// gradient checkpointing, which runs a segment twice, counts each batch once. For inference the
/// norm folds into the convolution before it ([`fold_into`](Self::fold_into)) or becomes a
/// per-channel scale and shift ([`ScaleShiftRelu::from_batch_norm`]).
#[derive(Debug)]
pub struct BatchNorm3d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
    /// The statistics of the last training-mode batch, until taken.
    batch: Mutex<Option<BatchStats>>,
}

impl BatchNorm3d {
    /// PyTorch's BatchNorm eps.
    pub const EPS: f64 = 1e-5;

    /// A BatchNorm with gamma `weight`, beta `bias` and running statistics (all `(C)`). Built over
    /// a `VarMap` (training), all four are its variables; from a file, constants.
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
    ) -> Result<Self> {
        let c = weight.dims1()?;
        for (name, t) in [
            ("bias", &bias),
            ("running_mean", &running_mean),
            ("running_var", &running_var),
        ] {
            if t.dims() != [c] {
                candle_core::bail!("batchnorm: {name} has shape {:?}, expected [{c}]", t.dims());
            }
        }
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            batch: Mutex::default(),
        })
    }

    /// Normalises `x` (then a ReLU if `relu`): with the batch statistics when `train` (recorded),
    /// else with the running ones. Differentiable either way.
    pub fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            let (scale, shift) = self.scale_shift()?;
            let c = scale.dim(0)?;
            let mut shape = vec![1; x.rank()];
            if let Some(s) = shape.get_mut(1) {
                *s = c;
            }
            let y = x
                .broadcast_mul(&scale.reshape(shape.as_slice())?)?
                .broadcast_add(&shift.reshape(shape.as_slice())?)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let (mean, var) = grad_norm::batch_stats(x)?;
        let y = grad_norm::batch_norm(x, &self.weight, &self.bias, &mean, &var, self.eps, relu)?;
        let dims = x.dims();
        *self.recorded() = Some(BatchStats {
            mean,
            var,
            count: dims[0] * dims[2..].iter().product::<usize>(),
        });
        Ok(y)
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Option<BatchStats>> {
        // A panic elsewhere cannot leave the statistics half-written: keep them.
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics of the last training-mode forward pass, if not taken yet.
    pub fn take_batch_stats(&self) -> Option<BatchStats> {
        self.recorded().take()
    }

    /// Blends the last training-mode batch into the running statistics as PyTorch does (weight
    /// `momentum`, unbiased variance); nothing when no batch was recorded.
    pub fn update_running_stats(&self, momentum: f64) -> Result<()> {
        if let Some(s) = self.take_batch_stats() {
            let unbiased = s.count as f64 / (s.count.max(2) - 1) as f64;
            let var: Vec<f64> = s.var.iter().map(|v| v * unbiased).collect();
            self.blend_running_stats(&s.mean, &var, momentum)?;
        }
        Ok(())
    }

    /// Sets the running statistics to `(1 - w) * old + w * new` (`w = 1`: replaces them).
    pub fn blend_running_stats(&self, mean: &[f64], var: &[f64], w: f64) -> Result<()> {
        for (stat, new) in [(&self.running_mean, mean), (&self.running_var, var)] {
            if !stat.is_variable() {
                candle_core::bail!(
                    "batchnorm: the running statistics are constants, not variables"
                );
            }
            let old = stat.to_vec1::<f32>()?;
            if old.len() != new.len() {
                candle_core::bail!(
                    "batchnorm: {} statistics for {} channels",
                    new.len(),
                    old.len()
                );
            }
            let blended: Vec<f32> = old
                .iter()
                .zip(new)
                .map(|(&o, &v)| ((1.0 - w) * o as f64 + w * v) as f32)
                .collect();
            let t = Tensor::from_vec(blended, new.len(), stat.device())?.to_dtype(stat.dtype())?;
            Var::from_tensor(stat)?.set(&t)?;
        }
        Ok(())
    }

    /// Per-channel `(scale, shift)` with `bn(x) = x * scale + shift` on the running statistics.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let scale = self
            .weight
            .broadcast_div(&(&self.running_var + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - self.running_mean.mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Folds this norm, applied after `conv`, into the convolution's weight and bias.
    pub fn fold_into(&self, conv: &Conv3d) -> Result<Conv3d> {
        let (scale, shift) = self.scale_shift()?;
        let (c_out, ..) = conv.weight.dims5()?;
        if scale.dims() != [c_out] {
            candle_core::bail!(
                "batchnorm with {:?} channels cannot fold into a conv with {c_out} outputs",
                scale.dims()
            );
        }
        let weight = conv
            .weight
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1, 1))?)?;
        let bias = match &conv.bias {
            Some(b) => (b.mul(&scale)? + shift)?,
            None => shift,
        };
        Conv3d::new(weight, Some(bias), conv.cfg)
    }
}

/// A BatchNorm that cannot fold (it acts on concatenated features), fused with the ReLU after it:
/// `relu(x * scale + shift)` per channel.
#[derive(Clone, Debug)]
pub struct ScaleShiftRelu {
    scale: Tensor,
    shift: Tensor,
}

impl ScaleShiftRelu {
    /// The inference form of `bn` (on its running statistics).
    pub fn from_batch_norm(bn: &BatchNorm3d) -> Result<Self> {
        let (scale, shift) = bn.scale_shift()?;
        Ok(Self { scale, shift })
    }

    /// Per-channel scale.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// Per-channel shift.
    pub fn shift(&self) -> &Tensor {
        &self.shift
    }

    /// The operation from candle ops only (autograd, any backend).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.scale.dim(0)?;
        let mut shape = vec![1; x.rank()];
        if let Some(s) = shape.get_mut(1) {
            *s = c;
        }
        x.broadcast_mul(&self.scale.reshape(shape.as_slice())?)?
            .broadcast_add(&self.shift.reshape(shape.as_slice())?)?
            .relu()
    }
}

impl Module for ScaleShiftRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu::eligible(&[x, &self.scale, &self.shift]) && x.dtype() == DType::F32 {
            cpu::scale_shift_relu(x, &self.scale, &self.shift)
        } else {
            self.forward_composed(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The trainable pooling's values and gradients equal the composed pooling's (distinct
    /// values: no ties).
    #[test]
    fn trainable_pooling_matches_the_composed_pooling() {
        let shape = (2, 3, 5, 6, 7);
        let n = 2 * 3 * 5 * 6 * 7;
        let mut r = crate::rng::Rng::new(5);
        let v: Vec<f32> = (0..n)
            .map(|i| i as f32 * 0.01 + r.uniform() as f32)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap();
        for pool in [
            Pool3d::max(Pool3dConfig::cubic(3, 2, 1)),
            Pool3d::avg(Pool3dConfig::cubic(2, 2, 0), true),
        ] {
            let a = pool.forward_train(x.as_tensor()).unwrap();
            let b = pool.forward_composed(x.as_tensor()).unwrap();
            let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{pool:?} forward");
            let wts = Tensor::from_vec(
                (0..a.elem_count())
                    .map(|i| (i % 7) as f32 - 3.0)
                    .collect::<Vec<_>>(),
                a.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let ga = (&a * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&b * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let ga = ga.get(x.as_tensor()).unwrap();
            let gb = gb.get(x.as_tensor()).unwrap();
            let d = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{pool:?} backward");
        }
    }
}
