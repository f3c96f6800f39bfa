//! The U-Nets of dynamic_network_architectures that nnU-Net v2 plans build: `PlainConvUNet` and
//! `ResidualEncoderUNet` (with `BasicBlockD`), in inference form, under the checkpoint's tensor
//! names.
//!
//! A convolution block is conv (bias per `conv_bias`, padding `(k - 1) / 2`) -> InstanceNorm
//! (affine, eps from the plans) -> nonlinearity; the first convolution of each stage is strided.
//! The decoder upsamples with a transposed convolution whose kernel is its stride, concatenates the
//! skip, runs its blocks; only the last 1x1 segmentation layer is used (no deep supervision at
//! inference). 2-D configurations run as 3-D ones with depth-1 kernels on `(N, C, 1, H, W)`.
//!
//! Names: `encoder.stages.{s}.0.convs.{i}.conv|norm` (plain), `encoder.stem.convs.0`,
//! `encoder.stages.{s}.blocks.{b}.conv1|conv2|skip` (residual), `decoder.transpconvs.{s}`,
//! `decoder.stages.{s}.convs.{i}`, `decoder.seg_layers.{s}`. The state dict also holds aliases
//! (`all_modules.N`, `decoder.encoder.*`) of the same tensors; they are not read.

use std::path::Path;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use crate::model::kernels::cpu;
use crate::model::layers::{Conv3d, Conv3dConfig, Pool3d, Pool3dConfig};

use super::plans::Configuration;
use super::SegmentError;

/// Which U-Net.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UNetKind {
    /// `PlainConvUNet`: stages of plain convolution blocks.
    Plain,
    /// `ResidualEncoderUNet`: a stem, then stages of `BasicBlockD` residual blocks.
    ResidualEncoder,
}

/// The nonlinearity after a normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlin {
    /// `LeakyReLU(negative_slope)`.
    LeakyRelu(f64),
    /// `ReLU`.
    Relu,
}

impl Nonlin {
    fn forward(self, x: &Tensor) -> Result<Tensor> {
        if fused_eligible(x) {
            let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            match self {
                Nonlin::Relu => v.iter_mut().for_each(|a| *a = a.max(0.0)),
                Nonlin::LeakyRelu(slope) => {
                    let slope = slope as f32;
                    v.iter_mut()
                        .for_each(|a| *a = if *a > 0.0 { *a } else { *a * slope });
                }
            }
            return Tensor::from_vec(v, x.shape(), x.device());
        }
        match self {
            Nonlin::LeakyRelu(slope) => candle_nn::ops::leaky_relu(x, slope),
            Nonlin::Relu => x.relu(),
        }
    }
}

/// The sum of `f(x)` over `p` in f64, in eight interleaved partial sums (independent chains the
/// CPU can overlap; the order differs from a plain sum by f64 rounding only).
fn sum_f64(p: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = p.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(f64::from(x));
        }
    }
    let tail: f64 = rest.iter().map(|&x| f(f64::from(x))).sum();
    acc.iter().sum::<f64>() + tail
}

/// Whether the fused CPU forms (one pass per plane instead of a chain of candle ops) apply: f32
/// on the CPU, no gradients (inference only).
fn fused_eligible(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && !x.track_op()
}

/// The network of a configuration: `arch_kwargs` typed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Plain or residual encoder.
    pub kind: UNetKind,
    /// 2 or 3 spatial axes (`conv_op` Conv2d / Conv3d).
    pub dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (segmentation heads).
    pub num_classes: usize,
    /// Features per stage.
    pub features: Vec<usize>,
    /// Kernel per stage, as 3-D (a 2-D kernel gets depth 1).
    pub kernels: Vec<[usize; 3]>,
    /// Stride per stage, as 3-D.
    pub strides: Vec<[usize; 3]>,
    /// Kernel per decoder stage, as 3-D, from the one nearest the bottleneck: the kernel of the
    /// skip's encoder stage in dynamic_network_architectures, of the stage below it in nnU-Net
    /// v1's `Generic_UNet`.
    pub decoder_kernels: Vec<[usize; 3]>,
    /// Convolutions (plain) or residual blocks per encoder stage.
    pub per_stage: Vec<usize>,
    /// Convolutions per decoder stage.
    pub per_stage_decoder: Vec<usize>,
    /// Whether convolutions (and transposed convolutions) have a bias.
    pub conv_bias: bool,
    /// InstanceNorm's eps; `None` without a norm.
    pub norm_eps: Option<f64>,
    /// Whether the InstanceNorm has affine parameters.
    pub norm_affine: bool,
    /// The nonlinearity; `None` for none.
    pub nonlin: Option<Nonlin>,
    /// The residual encoder's stem width (its first stage's features by default).
    pub stem_channels: Option<usize>,
}

fn class_tail(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

impl UNetConfig {
    /// The network of `configuration` (`architecture.network_class_name` and `arch_kwargs`), with
    /// `in_channels` inputs and `num_classes` outputs; `path` and `name` for errors.
    pub fn from_plans(
        path: &Path,
        name: &str,
        configuration: &Configuration,
        in_channels: usize,
        num_classes: usize,
    ) -> std::result::Result<Self, SegmentError> {
        let arch = &configuration.architecture;
        let base = format!("configurations.{name}.architecture");
        let bad = |field: &str, msg: String| SegmentError::Field {
            path: path.into(),
            field: format!("{base}.{field}"),
            msg,
        };
        let kind = match class_tail(&arch.network_class_name) {
            "PlainConvUNet" => UNetKind::Plain,
            "ResidualEncoderUNet" => UNetKind::ResidualEncoder,
            other => {
                return Err(bad(
                    "network_class_name",
                    format!("{other:?} is not supported (PlainConvUNet, ResidualEncoderUNet)"),
                ))
            }
        };
        let kw = Kwargs {
            map: &arch.arch_kwargs,
            bad: &bad,
        };
        let n_stages = kw.usize("n_stages")?;
        if n_stages < 2 {
            return Err(bad(
                "arch_kwargs.n_stages",
                format!("{n_stages}: a U-Net has at least 2"),
            ));
        }
        let dims = match class_tail(kw.str("conv_op")?) {
            "Conv3d" => 3,
            "Conv2d" => 2,
            other => {
                return Err(bad(
                    "arch_kwargs.conv_op",
                    format!("{other:?} is not supported (Conv2d, Conv3d)"),
                ))
            }
        };
        if dims != configuration.patch_size.len() {
            return Err(bad(
                "arch_kwargs.conv_op",
                format!(
                    "{dims}-D convolutions for a {}-D patch_size",
                    configuration.patch_size.len()
                ),
            ));
        }
        let features = kw.per_stage("features_per_stage", n_stages)?;
        let kernels = kw.per_stage_axes("kernel_sizes", n_stages, dims)?;
        let strides = kw.per_stage_axes("strides", n_stages, dims)?;
        let per_stage = match kind {
            UNetKind::Plain => kw.per_stage("n_conv_per_stage", n_stages)?,
            UNetKind::ResidualEncoder => kw.per_stage("n_blocks_per_stage", n_stages)?,
        };
        let per_stage_decoder = kw.per_stage("n_conv_per_stage_decoder", n_stages - 1)?;
        let conv_bias = match kw.map.get("conv_bias") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad("arch_kwargs.conv_bias", format!("{v} is not a bool"))),
        };
        let (norm_eps, norm_affine) = match kw.optional_class("norm_op")? {
            None => (None, false),
            Some("InstanceNorm3d" | "InstanceNorm2d") => {
                let nk = kw.map.get("norm_op_kwargs").and_then(Value::as_object);
                let eps = nk
                    .and_then(|m| m.get("eps"))
                    .and_then(Value::as_f64)
                    .unwrap_or(1e-5);
                let affine = nk
                    .and_then(|m| m.get("affine"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                (Some(eps), affine)
            }
            Some(other) => {
                return Err(bad(
                    "arch_kwargs.norm_op",
                    format!("{other:?} is not supported (InstanceNorm2d, InstanceNorm3d)"),
                ))
            }
        };
        let nonlin = match kw.optional_class("nonlin")? {
            None => None,
            Some("LeakyReLU") => {
                let slope = kw
                    .map
                    .get("nonlin_kwargs")
                    .and_then(Value::as_object)
                    .and_then(|m| m.get("negative_slope"))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.01);
                Some(Nonlin::LeakyRelu(slope))
            }
            Some("ReLU") => Some(Nonlin::Relu),
            Some(other) => {
                return Err(bad(
                    "arch_kwargs.nonlin",
                    format!("{other:?} is not supported (LeakyReLU, ReLU)"),
                ))
            }
        };
        // Dropout is the identity at inference: any dropout_op is accepted.
        let stem_channels = match kw.map.get("stem_channels") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        bad("arch_kwargs.stem_channels", format!("{v} is not a count"))
                    })?,
            ),
        };
        if kind == UNetKind::ResidualEncoder {
            match kw.map.get("block").and_then(Value::as_str).map(class_tail) {
                None | Some("BasicBlockD") => {}
                Some(other) => {
                    return Err(bad(
                        "arch_kwargs.block",
                        format!("{other:?} is not supported (BasicBlockD)"),
                    ))
                }
            }
        }
        for (field, v) in [("pool", "conv"), ("pool_type", "conv")] {
            if let Some(p) = kw.map.get(field).and_then(Value::as_str) {
                if p != v {
                    return Err(bad(
                        &format!("arch_kwargs.{field}"),
                        format!("{p:?} is not supported (strided convolutions only)"),
                    ));
                }
            }
        }
        if kw.map.get("nonlin_first").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "arch_kwargs.nonlin_first",
                "true is not supported".into(),
            ));
        }
        if features.contains(&0) || per_stage.contains(&0) || in_channels == 0 || num_classes == 0 {
            return Err(bad("arch_kwargs", "a zero width or count".into()));
        }
        let decoder_kernels = (1..n_stages).map(|s| kernels[n_stages - s - 1]).collect();
        Ok(Self {
            kind,
            dims,
            in_channels,
            num_classes,
            features,
            kernels,
            strides,
            decoder_kernels,
            per_stage,
            per_stage_decoder,
            conv_bias,
            norm_eps,
            norm_affine,
            nonlin,
            stem_channels,
        })
    }

    /// The product of the strides per axis: a patch's size must be a multiple of it.
    pub fn total_stride(&self) -> [usize; 3] {
        let mut t = [1; 3];
        for s in &self.strides {
            for a in 0..3 {
                t[a] *= s[a];
            }
        }
        t
    }
}

/// Typed access to `arch_kwargs`, errors naming the field.
struct Kwargs<'a, F: Fn(&str, String) -> SegmentError> {
    map: &'a Map<String, Value>,
    bad: &'a F,
}

impl<F: Fn(&str, String) -> SegmentError> Kwargs<'_, F> {
    fn get(&self, key: &str) -> std::result::Result<&Value, SegmentError> {
        self.map
            .get(key)
            .ok_or_else(|| (self.bad)(&format!("arch_kwargs.{key}"), "missing".into()))
    }

    fn str(&self, key: &str) -> std::result::Result<&str, SegmentError> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| {
            (self.bad)(
                &format!("arch_kwargs.{key}"),
                format!("{v} is not a string"),
            )
        })
    }

    fn count(&self, key: &str, v: &Value) -> std::result::Result<usize, SegmentError> {
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| (self.bad)(&format!("arch_kwargs.{key}"), format!("{v} is not a count")))
    }

    /// The class name (its last dotted part) of an optional `*_op` field: `None` when absent or
    /// null.
    fn optional_class(&self, key: &str) -> std::result::Result<Option<&str>, SegmentError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(op)) => Ok(Some(class_tail(op))),
            Some(v) => Err((self.bad)(
                &format!("arch_kwargs.{key}"),
                format!("{v} is not a class name"),
            )),
        }
    }

    fn usize(&self, key: &str) -> std::result::Result<usize, SegmentError> {
        self.count(key, self.get(key)?)
    }

    /// `n` per-stage values of `key`: a list of `n`, or one value for every stage (as the
    /// constructors accept), each read by `item`.
    fn per_stage_of<T: Clone>(
        &self,
        key: &str,
        n: usize,
        item: impl Fn(&Value) -> std::result::Result<T, SegmentError>,
    ) -> std::result::Result<Vec<T>, SegmentError> {
        let v = self.get(key)?;
        let out = match v {
            Value::Array(a) => a
                .iter()
                .map(item)
                .collect::<std::result::Result<Vec<_>, _>>()?,
            _ => vec![item(v)?; n],
        };
        if out.len() != n {
            return Err((self.bad)(
                &format!("arch_kwargs.{key}"),
                format!("{} entries, expected {n}", out.len()),
            ));
        }
        Ok(out)
    }

    /// A per-stage list of counts, or one count for every stage.
    fn per_stage(&self, key: &str, n: usize) -> std::result::Result<Vec<usize>, SegmentError> {
        self.per_stage_of(key, n, |x| self.count(key, x))
    }

    /// Per-stage kernel sizes or strides: a list of per-axis lists, a list of scalars or one
    /// scalar; as 3-D (depth 1 first for 2-D).
    fn per_stage_axes(
        &self,
        key: &str,
        n: usize,
        dims: usize,
    ) -> std::result::Result<Vec<[usize; 3]>, SegmentError> {
        let one = |x: &Value| -> std::result::Result<[usize; 3], SegmentError> {
            let axes: Vec<usize> = match x {
                Value::Array(a) => a
                    .iter()
                    .map(|e| self.count(key, e))
                    .collect::<std::result::Result<_, _>>()?,
                _ => vec![self.count(key, x)?; dims],
            };
            if axes.len() != dims || axes.contains(&0) {
                return Err((self.bad)(
                    &format!("arch_kwargs.{key}"),
                    format!("{x} is not {dims} positive sizes"),
                ));
            }
            Ok(if dims == 2 {
                [1, axes[0], axes[1]]
            } else {
                [axes[0], axes[1], axes[2]]
            })
        };
        self.per_stage_of(key, n, one)
    }
}

/// A convolution weight `(C_out, C_in, k...)` under `vb`, as 5-D (2-D kernels get depth 1).
fn conv_weight(
    vb: &VarBuilder,
    dims: usize,
    c_out: usize,
    c_in: usize,
    k: [usize; 3],
) -> Result<Tensor> {
    if dims == 2 {
        vb.get((c_out, c_in, k[1], k[2]), "weight")?.unsqueeze(2)
    } else {
        vb.get((c_out, c_in, k[0], k[1], k[2]), "weight")
    }
}

/// InstanceNorm over the spatial axes of each (sample, channel), PyTorch's `InstanceNormNd`
/// in eval mode without running statistics (nnU-Net's): biased variance, eps inside the root.
#[derive(Clone, Debug)]
struct InstanceNorm {
    affine: Option<(Tensor, Tensor)>,
    eps: f64,
}

impl InstanceNorm {
    fn new(vb: VarBuilder, c: usize, eps: f64, affine: bool) -> Result<Self> {
        let affine = if affine {
            Some((vb.get(c, "weight")?, vb.get(c, "bias")?))
        } else {
            None
        };
        Ok(Self { affine, eps })
    }

    /// The norm, then `nonlin`: in one pass per (sample, channel) plane on the CPU.
    fn forward_act(&self, x: &Tensor, nonlin: Option<Nonlin>) -> Result<Tensor> {
        if !fused_eligible(x) {
            let y = self.forward(x)?;
            return match nonlin {
                Some(f) => f.forward(&y),
                None => Ok(y),
            };
        }
        let (n, c, d, h, w) = x.dims5()?;
        let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        self.apply(&mut v, c, d * h * w, nonlin)?;
        Tensor::from_vec(v, (n, c, d, h, w), x.device())
    }

    /// The norm, then `nonlin`, in place on `v`: `(N, C, plane)` values in f32 (the CPU form).
    fn apply(&self, v: &mut [f32], c: usize, plane: usize, nonlin: Option<Nonlin>) -> Result<()> {
        let (gamma, beta) = match &self.affine {
            Some((g, b)) => (Some(g.to_vec1::<f32>()?), Some(b.to_vec1::<f32>()?)),
            None => (None, None),
        };
        let eps = self.eps;
        use rayon::prelude::*;
        v.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, p)| {
                let ch = i % c;
                let len = p.len() as f64;
                let mean = sum_f64(p, |a| a) / len;
                let var = sum_f64(p, |a| (a - mean) * (a - mean)) / len;
                let inv = 1.0 / (var + eps).sqrt();
                let g = gamma.as_ref().map_or(1.0, |g| f64::from(g[ch]));
                let b = beta.as_ref().map_or(0.0, |b| f64::from(b[ch]));
                // y = (x - mean) * inv * g + b, as one scale and shift in f32.
                let scale = (inv * g) as f32;
                let shift = (b - mean * inv * g) as f32;
                // One branch-free loop per case, so that each vectorises.
                match nonlin {
                    None => p.iter_mut().for_each(|a| *a = *a * scale + shift),
                    Some(Nonlin::Relu) => p
                        .iter_mut()
                        .for_each(|a| *a = (*a * scale + shift).max(0.0)),
                    Some(Nonlin::LeakyRelu(slope)) => {
                        let slope = slope as f32;
                        p.iter_mut().for_each(|a| {
                            let y = *a * scale + shift;
                            *a = if y > 0.0 { y } else { y * slope };
                        })
                    }
                }
            });
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, d, h, w) = x.dims5()?;
        let flat = x.reshape((n, c, d * h * w))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let (scale, shift) = match &self.affine {
            Some((g, b)) => (
                inv.broadcast_mul(&g.reshape((1, c, 1))?)?,
                Some(b.reshape((1, c, 1))?),
            ),
            None => (inv, None),
        };
        let y = centred.broadcast_mul(&scale)?;
        let y = match shift {
            Some(b) => y.broadcast_add(&b)?,
            None => y,
        };
        y.reshape((n, c, d, h, w))
    }
}

/// `ConvDropoutNormReLU`: conv -> InstanceNorm -> nonlinearity (each optional but the conv).
#[derive(Clone, Debug)]
struct ConvBlock {
    conv: Conv3d,
    norm: Option<InstanceNorm>,
    nonlin: Option<Nonlin>,
}

impl ConvBlock {
    /// The block under `vb` (`conv.*`, `norm.*`); `nonlin` overrides the config's (`BasicBlockD`
    /// runs its second convolution and its projection without one).
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &UNetConfig,
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        bias: bool,
        nonlin: Option<Nonlin>,
    ) -> Result<Self> {
        let vc = vb.pp("conv");
        let weight = conv_weight(&vc, cfg.dims, c_out, c_in, kernel)?;
        let b = if bias {
            Some(vc.get(c_out, "bias")?)
        } else {
            None
        };
        let pad = |a: usize| (kernel[a] - 1) / 2;
        let conv = Conv3d::new(
            weight,
            b,
            Conv3dConfig {
                stride,
                padding: [[pad(0); 2], [pad(1); 2], [pad(2); 2]],
            },
        )?;
        let norm = match cfg.norm_eps {
            Some(eps) => Some(InstanceNorm::new(
                vb.pp("norm"),
                c_out,
                eps,
                cfg.norm_affine,
            )?),
            None => None,
        };
        Ok(Self { conv, norm, nonlin })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(norm) = &self.norm {
            let params = [self.conv.weight()];
            if fused_eligible(x) && cpu::eligible(&params) {
                // The norm runs in place on the convolution's output buffer: one full-size
                // buffer per block instead of two (fewer fresh pages, one copy less).
                let (mut v, shape) = cpu::conv3d_values(
                    x,
                    self.conv.weight(),
                    self.conv.bias(),
                    self.conv.config(),
                    false,
                )?;
                let [_, c, d, h, w] = shape;
                norm.apply(&mut v, c, d * h * w, self.nonlin)?;
                return Tensor::from_vec(v, shape.as_slice(), x.device());
            }
        }
        let y = self.conv.forward(x)?;
        match (&self.norm, self.nonlin) {
            (Some(n), act) => n.forward_act(&y, act),
            (None, Some(f)) => f.forward(&y),
            (None, None) => Ok(y),
        }
    }
}

/// `StackedConvBlocks`: `convs.{i}`, the first strided.
#[derive(Clone, Debug)]
struct Stacked(Vec<ConvBlock>);

impl Stacked {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &UNetConfig,
        vb: VarBuilder,
        n: usize,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
    ) -> Result<Self> {
        let vb = vb.pp("convs");
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let (ci, s) = if i == 0 {
                (c_in, stride)
            } else {
                (c_out, [1; 3])
            };
            blocks.push(ConvBlock::new(
                cfg,
                vb.pp(i),
                ci,
                c_out,
                kernel,
                s,
                cfg.conv_bias,
                cfg.nonlin,
            )?);
        }
        Ok(Self(blocks))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for b in &self.0 {
            y = b.forward(&y)?;
        }
        Ok(y)
    }
}

/// `BasicBlockD`: conv1 (strided) -> conv2 (no nonlinearity), plus the skip (average pool over the
/// stride, then a 1x1 projection without bias when the width changes), then the nonlinearity.
#[derive(Clone, Debug)]
struct BasicBlockD {
    conv1: ConvBlock,
    conv2: ConvBlock,
    pool: Option<Pool3d>,
    projection: Option<ConvBlock>,
    nonlin: Option<Nonlin>,
}

impl BasicBlockD {
    fn new(
        cfg: &UNetConfig,
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
    ) -> Result<Self> {
        let conv1 = ConvBlock::new(
            cfg,
            vb.pp("conv1"),
            c_in,
            c_out,
            kernel,
            stride,
            cfg.conv_bias,
            cfg.nonlin,
        )?;
        let conv2 = ConvBlock::new(
            cfg,
            vb.pp("conv2"),
            c_out,
            c_out,
            kernel,
            [1; 3],
            cfg.conv_bias,
            None,
        )?;
        let strided = stride != [1; 3];
        let pool = strided.then(|| {
            Pool3d::avg(
                Pool3dConfig {
                    kernel: stride,
                    stride,
                    padding: [[0; 2]; 3],
                    ceil_mode: false,
                },
                true,
            )
        });
        // The projection is the skip's first module without a pool, its second with one.
        let projection = if c_in != c_out {
            let idx = usize::from(strided);
            Some(ConvBlock::new(
                cfg,
                vb.pp("skip").pp(idx),
                c_in,
                c_out,
                [1; 3],
                [1; 3],
                false,
                None,
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1,
            conv2,
            pool,
            projection,
            nonlin: cfg.nonlin,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut residual = match &self.pool {
            Some(p) => p.forward(x)?,
            None => x.clone(),
        };
        if let Some(p) = &self.projection {
            residual = p.forward(&residual)?;
        }
        let y = (self.conv2.forward(&self.conv1.forward(x)?)? + residual)?;
        match self.nonlin {
            Some(f) => f.forward(&y),
            None => Ok(y),
        }
    }
}

/// One encoder stage.
#[derive(Clone, Debug)]
enum Stage {
    Plain(Stacked),
    Residual(Vec<BasicBlockD>),
}

impl Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Stage::Plain(s) => s.forward(x),
            Stage::Residual(blocks) => {
                let mut y = x.clone();
                for b in blocks {
                    y = b.forward(&y)?;
                }
                Ok(y)
            }
        }
    }
}

/// A transposed convolution whose kernel equals its stride (the decoder's upsampling): every
/// input voxel spreads to its own output block, so it is one matrix product and a reshuffle.
#[derive(Clone, Debug)]
struct TransposedConv {
    /// `(C_out * sd * sh * sw, C_in)`.
    weight: Tensor,
    bias: Option<Tensor>,
    c_out: usize,
    stride: [usize; 3],
    /// The weight as an f32 tensor and the bias as f32 values, for the CPU form, when they live
    /// on the CPU.
    cpu: Option<(Tensor, Vec<f32>)>,
}

impl TransposedConv {
    fn new(
        cfg: &UNetConfig,
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        stride: [usize; 3],
    ) -> Result<Self> {
        let w = if cfg.dims == 2 {
            vb.get((c_in, c_out, stride[1], stride[2]), "weight")?
        } else {
            vb.get((c_in, c_out, stride[0], stride[1], stride[2]), "weight")?
        };
        let k = stride[0] * stride[1] * stride[2];
        let weight = w.reshape((c_in, c_out * k))?.t()?.contiguous()?;
        let bias = if cfg.conv_bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        let cpu = if weight.device().is_cpu() {
            let w = weight.to_dtype(candle_core::DType::F32)?;
            let b: Vec<f32> = match &bias {
                Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1()?,
                None => vec![0.0; c_out],
            };
            Some((w, b))
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            c_out,
            stride,
            cpu,
        })
    }

    /// The upsampled `x` concatenated with `skip` along the channels (the decoder's next input).
    /// On the CPU both are written into one buffer; elsewhere candle ops and `cat`.
    fn forward_cat(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        let (n, c_in, d, h, w) = x.dims5()?;
        let [sd, sh, sw] = self.stride;
        let out_sp = [d * sd, h * sh, w * sw];
        let (sn, c_skip, od, oh, ow) = skip.dims5()?;
        let fits = sn == n && [od, oh, ow] == out_sp;
        let Some((wt, bias)) = self
            .cpu
            .as_ref()
            .filter(|_| fits && fused_eligible(x) && fused_eligible(skip))
        else {
            return Tensor::cat(&[&self.forward(x)?, skip], 1);
        };
        let k = sd * sh * sw;
        let c_out = self.c_out;
        let c_all = c_out + c_skip;
        let op = od * oh * ow;
        let ip = d * h * w;
        let mut out = cpu::zeroed(n * c_all * op);
        let skip = skip.contiguous()?;
        use rayon::prelude::*;
        for (b, item) in out.chunks_exact_mut(c_all * op.max(1)).enumerate() {
            // One matrix product (C_out*k, C_in) x (C_in, DHW) gives every tap of every input
            // voxel (the GEMM's packed kernels, several times faster than a scalar loop over the
            // taps); each output voxel then takes exactly one of them, since the kernel is the
            // stride.
            let xb = x.get(b)?.reshape((c_in, ip))?;
            let taps = wt.matmul(&xb)?;
            let (up, rest) = item.split_at_mut(c_out * op);
            cpu::with_f32(&taps, |ys| {
                up.par_chunks_mut(op.max(1))
                    .enumerate()
                    .for_each(|(c, plane)| {
                        // Output row by output row, so that the writes run sequentially: tap
                        // (i, j, kk) fills every sw-th voxel of the rows (z*sd + i, y*sh + j).
                        for (r, orow) in plane.chunks_exact_mut(ow.max(1)).enumerate() {
                            let (oz, oy) = (r / oh, r % oh);
                            let (z, i, y, j) = (oz / sd, oz % sd, oy / sh, oy % sh);
                            for kk in 0..sw {
                                let t = (i * sh + j) * sw + kk;
                                let src = &ys[(c * k + t) * ip + (z * h + y) * w..][..w];
                                for (o, &v) in orow[kk..].iter_mut().step_by(sw).zip(src) {
                                    *o = v + bias[c];
                                }
                            }
                        }
                    });
                Ok(())
            })?;
            cpu::with_f32(&skip.get(b)?, |ss| {
                rest.par_chunks_mut(op.max(1))
                    .zip(ss.par_chunks(op.max(1)))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })?;
        }
        Tensor::from_vec(out, (n, c_all, od, oh, ow), x.device())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c_in, d, h, w) = x.dims5()?;
        let [sd, sh, sw] = self.stride;
        let k = sd * sh * sw;
        let flat = x.reshape((n, c_in, d * h * w))?;
        // (C_out*k, C_in) x (N, C_in, DHW) -> (N, C_out*k, DHW)
        let y = self
            .weight
            .unsqueeze(0)?
            .broadcast_as((n, self.c_out * k, c_in))?
            .matmul(&flat)?;
        let y = y
            .reshape(vec![n, self.c_out, sd, sh, sw, d, h, w])?
            .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
            .reshape((n, self.c_out, d * sd, h * sh, w * sw))?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, self.c_out, 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// A `PlainConvUNet` or `ResidualEncoderUNet` for inference.
#[derive(Clone, Debug)]
pub struct UNet {
    cfg: UNetConfig,
    stem: Option<Stacked>,
    stages: Vec<Stage>,
    transpconvs: Vec<TransposedConv>,
    decoder: Vec<Stacked>,
    seg: Conv3d,
}

impl UNet {
    /// The network of `cfg` from `vb`, whose paths are the checkpoint's state-dict names.
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let n = cfg.features.len();
        let ve = vb.pp("encoder");
        let mut c_in = cfg.in_channels;
        let stem = match cfg.kind {
            UNetKind::Plain => None,
            UNetKind::ResidualEncoder => {
                let c = cfg.stem_channels.unwrap_or(cfg.features[0]);
                let s = Stacked::new(cfg, ve.pp("stem"), 1, c_in, c, cfg.kernels[0], [1; 3])?;
                c_in = c;
                Some(s)
            }
        };
        let mut stages = Vec::with_capacity(n);
        for s in 0..n {
            let vs = ve.pp("stages").pp(s);
            let c_out = cfg.features[s];
            let stage = match cfg.kind {
                UNetKind::Plain => Stage::Plain(Stacked::new(
                    cfg,
                    vs.pp(0),
                    cfg.per_stage[s],
                    c_in,
                    c_out,
                    cfg.kernels[s],
                    cfg.strides[s],
                )?),
                UNetKind::ResidualEncoder => {
                    let vb = vs.pp("blocks");
                    let mut blocks = Vec::with_capacity(cfg.per_stage[s]);
                    for b in 0..cfg.per_stage[s] {
                        let (ci, st) = if b == 0 {
                            (c_in, cfg.strides[s])
                        } else {
                            (c_out, [1; 3])
                        };
                        blocks.push(BasicBlockD::new(
                            cfg,
                            vb.pp(b),
                            ci,
                            c_out,
                            cfg.kernels[s],
                            st,
                        )?);
                    }
                    Stage::Residual(blocks)
                }
            };
            stages.push(stage);
            c_in = c_out;
        }
        let vd = vb.pp("decoder");
        let mut transpconvs = Vec::with_capacity(n - 1);
        let mut decoder = Vec::with_capacity(n - 1);
        for s in 1..n {
            let below = cfg.features[n - s];
            let skip = cfg.features[n - s - 1];
            transpconvs.push(TransposedConv::new(
                cfg,
                vd.pp("transpconvs").pp(s - 1),
                below,
                skip,
                cfg.strides[n - s],
            )?);
            decoder.push(Stacked::new(
                cfg,
                vd.pp("stages").pp(s - 1),
                cfg.per_stage_decoder[s - 1],
                2 * skip,
                skip,
                cfg.decoder_kernels[s - 1],
                [1; 3],
            )?);
        }
        // Only the last segmentation layer runs at inference; the others stay unread.
        let vs = vd.pp("seg_layers").pp(n.saturating_sub(2));
        let c_last = cfg.features[0];
        let seg = Conv3d::new(
            conv_weight(&vs, cfg.dims, cfg.num_classes, c_last, [1; 3])?,
            Some(vs.get(cfg.num_classes, "bias")?),
            Conv3dConfig::default(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
            transpconvs,
            decoder,
            seg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The logits `(N, classes, spatial...)` of `x` `(N, C, spatial...)`: 3 spatial axes, or 2
    /// for a 2-D network. Each spatial size must be a multiple of the total stride.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.cfg.dims == 2 {
            x.unsqueeze(2)?
        } else {
            x.clone()
        };
        let (_, _, d, h, w) = x.dims5()?;
        let t = self.cfg.total_stride();
        if d % t[0] != 0 || h % t[1] != 0 || w % t[2] != 0 {
            candle_core::bail!(
                "input {:?} is not a multiple of the network's total stride {t:?}",
                [d, h, w]
            );
        }
        let mut y = match &self.stem {
            Some(s) => s.forward(&x)?,
            None => x,
        };
        let mut skips = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            y = s.forward(&y)?;
            skips.push(y.clone());
        }
        let n = skips.len();
        for (s, (up, stage)) in self.transpconvs.iter().zip(&self.decoder).enumerate() {
            y = stage.forward(&up.forward_cat(&y, &skips[n - s - 2])?)?;
        }
        let out = self.seg.forward(&y)?;
        if self.cfg.dims == 2 {
            out.squeeze(2)
        } else {
            Ok(out)
        }
    }
}
