//! Inception-v1 (Szegedy et al. 2015): 3-D as I3D (Carreira & Zisserman 2017), with the parameter
//! names of its PyTorch port used by the STOIC 2021 baseline, and 2-D as torchvision's GoogLeNet
//! (no auxiliary heads, `transform_input=False`) for the slice-wise variant ([`super::slice2d`]).
//!
//! Both have the same stem, the same nine mixed blocks (1x1; 1x1 -> 3x3; 1x1 -> 3x3; max pool ->
//! 1x1 branches, concatenated) and the same pools between them. They differ in geometry:
//! - I3D: cubic kernels with TensorFlow "SAME" padding as the port computes it from kernel and
//!   stride (`max(k - s, 0)` split with the extra tap after: the 7x7x7 stride-2 stem pads (2, 3));
//!   max pools with that padding and ceil mode; BatchNorm eps 1e-5. The port (hassony2's
//!   `kinetics_i3d_pytorch`, which the STOIC 2021 baseline's `i3dpt.py` alters) pools the last
//!   feature map with `AvgPool3d((2, 7, 7), stride 1)` and averages what is left; its head is
//!   either the Kinetics one, a 1x1x1 convolution with bias (`conv3d_0c_1x1.conv3d`), or the
//!   STOIC baseline's `linear` (whose checkpoints still carry the unused 400-class
//!   `conv3d_0c_1x1`). See [`I3dHead`] and [`windowed_mean`].
//! - GoogLeNet: (1, k, k) kernels with symmetric padding, unpadded ceil-mode max pools, BatchNorm
//!   eps 1e-3, head `fc`.
//!
//! [`Inception`] is the definition; [`FoldedInception`] the inference form folded from it, where
//! the three 1x1 convolutions that read a block's input run as one stacked convolution.

use candle_core::{DType, Module, Result as CResult, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::layers::{BatchNorm3d, Conv3d, Conv3dConfig, Pool3d, Pool3dConfig};
use super::network::{stem_conv, Network};
use super::{
    load_bn, load_conv, load_linear, Arch, Classifier, ConvUnit, ModelError, NetworkConfig, Spatial,
};

/// Which Inception-v1 flavour: geometry and parameter names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// 3-D I3D, PyTorch-port names (`mixed_4b.branch_1.1.conv3d.weight`).
    I3d,
    /// 2-D torchvision GoogLeNet names (`inception4a.branch2.1.conv.weight`), on every slice.
    GoogLeNet,
}

/// The head of a 3-D Inception-v1 (I3D) checkpoint. Both forms pool the last feature map the
/// port's way ([`windowed_mean`] with [`I3D_POOL`]) and then apply one affine map; they differ in
/// its parameter names and shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum I3dHead {
    /// The port's Kinetics head: `conv3d_0c_1x1.conv3d.{weight,bias}`, a 1x1x1 convolution
    /// (weight `(n, 1024, 1, 1, 1)`).
    #[default]
    Kinetics,
    /// The STOIC 2021 baseline's head: `linear.{weight,bias}`, a `Linear(1024, n)`. Its
    /// checkpoints also hold the Kinetics head `conv3d_0c_1x1`, which its forward never uses.
    Stoic,
}

impl I3dHead {
    /// The name in configurations (`kinetics`, `stoic`).
    pub fn name(self) -> &'static str {
        match self {
            I3dHead::Kinetics => "kinetics",
            I3dHead::Stoic => "stoic",
        }
    }

    /// The parameter-name prefix of the head.
    pub fn prefix(self) -> &'static str {
        match self {
            I3dHead::Kinetics => "conv3d_0c_1x1.conv3d",
            I3dHead::Stoic => "linear",
        }
    }

    /// The form a checkpoint has, from whether it holds the STOIC head's weight (`linear.weight`,
    /// under any prefix such as DataParallel's `module.`).
    pub fn detect<'a>(mut names: impl Iterator<Item = &'a str>) -> Self {
        if names.any(|n| n == "linear.weight" || n.ends_with(".linear.weight")) {
            I3dHead::Stoic
        } else {
            I3dHead::Kinetics
        }
    }
}

/// The port's average pool before the I3D head: window (2, 7, 7) over (D, H, W), stride 1.
pub const I3D_POOL: [usize; 3] = [2, 7, 7];

/// `AvgPool3d(window, stride 1)` without padding followed by the mean over every position left,
/// as the I3D port computes its pooled features: `(N, C, D, H, W)` -> `(N, C)`.
///
/// Computed as one weighted sum (a voxel counts as often as windows cover it). Where the map is
/// smaller than the window along an axis (PyTorch refuses such inputs) the window shrinks to the
/// map there, i.e. a plain mean along that axis; a map no larger than the window anywhere gets
/// the global average. Sums run in f32 (f64 for f64 inputs) and the result has `x`'s dtype.
pub fn windowed_mean(x: &Tensor, window: [usize; 3]) -> CResult<Tensor> {
    let (_, _, d, h, w) = x.dims5()?;
    let acc = if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let axis = |len: usize, k: usize, shape: (usize, usize, usize)| -> CResult<Tensor> {
        let k = k.clamp(1, len.max(1));
        let starts = len + 1 - k;
        let weights: Vec<f64> = (0..len)
            .map(|i| {
                // Windows starting at s cover i when s <= i <= s + k - 1.
                let first = (i + 1).saturating_sub(k);
                let last = i.min(len - k);
                (last + 1 - first) as f64 / (k * starts) as f64
            })
            .collect();
        Tensor::from_vec(weights, shape, x.device())?.to_dtype(acc)
    };
    let wd = axis(d, window[0], (d, 1, 1))?;
    let wh = axis(h, window[1], (1, h, 1))?;
    let ww = axis(w, window[2], (1, 1, w))?;
    let weight = wd.broadcast_mul(&wh)?.broadcast_mul(&ww)?;
    x.to_dtype(acc)?
        .broadcast_mul(&weight)?
        .sum((2, 3, 4))?
        .to_dtype(x.dtype())
}

/// Mixed blocks: I3D name, GoogLeNet name, widths (1x1, 3x3 reduce, 3x3, second 3x3 reduce,
/// second 3x3, pool projection). The second branch is 3x3 in both (5x5 in the paper).
const MIXED: [(&str, &str, [usize; 6]); 9] = [
    ("mixed_3b", "inception3a", [64, 96, 128, 16, 32, 32]),
    ("mixed_3c", "inception3b", [128, 128, 192, 32, 96, 64]),
    ("mixed_4b", "inception4a", [192, 96, 208, 16, 48, 64]),
    ("mixed_4c", "inception4b", [160, 112, 224, 24, 64, 64]),
    ("mixed_4d", "inception4c", [128, 128, 256, 24, 64, 64]),
    ("mixed_4e", "inception4d", [112, 144, 288, 32, 64, 64]),
    ("mixed_4f", "inception4e", [256, 160, 320, 32, 128, 128]),
    ("mixed_5b", "inception5a", [256, 160, 320, 32, 128, 128]),
    ("mixed_5c", "inception5b", [384, 192, 384, 48, 128, 128]),
];

/// Stem convolutions: I3D name, GoogLeNet name, width, kernel, stride.
const STEM: [(&str, &str, usize, usize, usize); 3] = [
    ("conv3d_1a_7x7", "conv1", 64, 7, 2),
    ("conv3d_2b_1x1", "conv2", 64, 1, 1),
    ("conv3d_2c_3x3", "conv3", 192, 3, 1),
];

/// Hyper-parameters of an Inception-v1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InceptionConfig {
    /// Flavour.
    pub style: Style,
    /// Input channels.
    pub in_channels: usize,
    /// Outputs of the head.
    pub num_outputs: usize,
    /// Every channel count divided by this, rounded down but at least 1 (1 as published).
    pub width_divisor: usize,
    /// The I3D head form (GoogLeNet: unused).
    pub head: I3dHead,
}

/// One convolution + BatchNorm + ReLU unit: name prefix, output and input channels, kernel.
type UnitSpec = (String, usize, usize, usize);

/// One step of the network body, in order ([`InceptionConfig::layout`]).
#[derive(Clone, Debug)]
enum LayoutStep {
    /// A unit with its stride.
    Unit(UnitSpec, usize),
    /// A max pool.
    Pool(Pool3d),
    /// A mixed block: its units (1x1, 3x3 reduce, 3x3, reduce, 3x3, pool projection) and the
    /// pool of its fourth branch.
    Mixed(Box<[UnitSpec; 6]>, Pool3d),
}

impl InceptionConfig {
    /// The configuration of `cfg` (`inception-v1-3d` or `inception-v1-2d`).
    pub fn from_network(cfg: &NetworkConfig) -> Result<Self, ModelError> {
        let style = match cfg.arch {
            Arch::InceptionV1_3d => Style::I3d,
            Arch::InceptionV1_2d => Style::GoogLeNet,
            other => {
                return Err(ModelError::InvalidConfig(format!(
                    "{other} is not an Inception-v1"
                )))
            }
        };
        let width_divisor = cfg.width_divisor.unwrap_or(1);
        if width_divisor == 0 {
            return Err(ModelError::InvalidConfig(
                "width_divisor must be positive".into(),
            ));
        }
        Ok(Self {
            style,
            in_channels: cfg.in_channels,
            num_outputs: cfg.num_outputs,
            width_divisor,
            head: cfg.i3d_head.unwrap_or_default(),
        })
    }

    /// 3-D (I3D) or 2-D on every slice (GoogLeNet).
    fn spatial(&self) -> Spatial {
        match self.style {
            Style::I3d => Spatial::D3,
            Style::GoogLeNet => Spatial::D2,
        }
    }

    fn w(&self, c: usize) -> usize {
        (c / self.width_divisor).max(1)
    }

    /// BatchNorm eps of the reference implementation.
    fn bn_eps(&self) -> f64 {
        match self.style {
            Style::I3d => 1e-5,
            Style::GoogLeNet => 1e-3,
        }
    }

    /// The convolution of a unit.
    fn conv_name(&self, unit: &str) -> String {
        match self.style {
            Style::I3d => format!("{unit}.conv3d"),
            Style::GoogLeNet => format!("{unit}.conv"),
        }
    }

    /// The BatchNorm of a unit.
    fn bn_name(&self, unit: &str) -> String {
        match self.style {
            Style::I3d => format!("{unit}.batch3d"),
            Style::GoogLeNet => format!("{unit}.bn"),
        }
    }

    /// The head's parameter prefix.
    fn head_name(&self) -> &'static str {
        match self.style {
            Style::I3d => self.head.prefix(),
            Style::GoogLeNet => "fc",
        }
    }

    /// The stem units in order.
    fn stem(&self) -> Vec<UnitSpec> {
        let mut c = self.in_channels;
        STEM.iter()
            .map(|&(i3d, tv, width, k, _)| {
                let name = match self.style {
                    Style::I3d => i3d,
                    Style::GoogLeNet => tv,
                };
                let spec = (name.to_string(), self.w(width), c, k);
                c = self.w(width);
                spec
            })
            .collect()
    }

    /// Each mixed block's units (1x1, 3x3 reduce, 3x3, reduce, 3x3, pool projection) and its
    /// output width.
    fn mixed(&self) -> Vec<([UnitSpec; 6], usize)> {
        let mut c = self.w(STEM[2].2);
        MIXED
            .iter()
            .map(|&(i3d, tv, widths)| {
                let [a, br, b, cr, cc, p] = widths.map(|x| self.w(x));
                let (block, branches) = match self.style {
                    Style::I3d => (
                        i3d,
                        [
                            "branch_0",
                            "branch_1.0",
                            "branch_1.1",
                            "branch_2.0",
                            "branch_2.1",
                            "branch_3.1",
                        ],
                    ),
                    Style::GoogLeNet => (
                        tv,
                        [
                            "branch1",
                            "branch2.0",
                            "branch2.1",
                            "branch3.0",
                            "branch3.1",
                            "branch4.1",
                        ],
                    ),
                };
                let n = |i: usize| format!("{block}.{}", branches[i]);
                let units = [
                    (n(0), a, c, 1),
                    (n(1), br, c, 1),
                    (n(2), b, br, 3),
                    (n(3), cr, c, 1),
                    (n(4), cc, cr, 3),
                    (n(5), p, c, 1),
                ];
                c = a + b + cc + p;
                (units, c)
            })
            .collect()
    }

    /// Width of the pooled features the head sees (1024 as published).
    pub fn feature_width(&self) -> usize {
        self.mixed().last().map_or(0, |m| m.1)
    }

    /// The head weight's shape as checkpoints store it.
    fn head_shape(&self) -> Vec<usize> {
        let f = self.feature_width();
        match (self.style, self.head) {
            (Style::I3d, I3dHead::Kinetics) => vec![self.num_outputs, f, 1, 1, 1],
            _ => vec![self.num_outputs, f],
        }
    }

    /// Per-side padding of a convolution or pool along one axis.
    fn pad(&self, k: usize, s: usize, pool: bool) -> [usize; 2] {
        match self.style {
            Style::I3d => {
                let along = k.saturating_sub(s);
                [along / 2, along - along / 2]
            }
            // torchvision pads convolutions by k/2 and pools not at all (ceil mode instead),
            // except the stride-1 branch pool.
            Style::GoogLeNet if pool && s > 1 => [0, 0],
            Style::GoogLeNet => [k / 2, k / 2],
        }
    }

    /// Stride and padding of a convolution of kernel `k` and stride `s`.
    fn conv_cfg(&self, k: usize, s: usize) -> Conv3dConfig {
        let sp = self.spatial();
        Conv3dConfig {
            stride: sp.cube(s),
            padding: sp.pad(self.pad(k, s, false)),
        }
    }

    /// Ceil-mode max pool of window `k` (1 x k x k for the stem pools) and stride `s`.
    fn pool(&self, k: [usize; 3], s: [usize; 3]) -> Pool3d {
        let k = match self.spatial() {
            Spatial::D3 => k,
            Spatial::D2 => [1, k[1], k[2]],
        };
        let s = match self.spatial() {
            Spatial::D3 => s,
            Spatial::D2 => [1, s[1], s[2]],
        };
        Pool3d::max(Pool3dConfig {
            kernel: k,
            stride: s,
            padding: [0, 1, 2].map(|a| self.pad(k[a], s[a], true)),
            ceil_mode: true,
        })
    }

    /// The body in order: the stem units with the pools after the first and the last, then the
    /// mixed blocks with the pools after mixed_3c / inception3b and mixed_4f / inception4e.
    fn layout(&self) -> Vec<LayoutStep> {
        let mut steps = Vec::new();
        let stem_pool = self.pool([1, 3, 3], [1, 2, 2]);
        for (i, unit) in self.stem().into_iter().enumerate() {
            steps.push(LayoutStep::Unit(unit, STEM[i].4));
            if i == 0 || i + 1 == STEM.len() {
                steps.push(LayoutStep::Pool(stem_pool));
            }
        }
        for (i, (units, _)) in self.mixed().into_iter().enumerate() {
            steps.push(LayoutStep::Mixed(
                Box::new(units),
                self.pool([3; 3], [1; 3]),
            ));
            if i == 1 {
                steps.push(LayoutStep::Pool(self.pool([3; 3], [2; 3])));
            } else if i == 6 {
                steps.push(LayoutStep::Pool(self.pool([2; 3], [2; 3])));
            }
        }
        steps
    }

    fn load_unit(
        &self,
        vb: &VarBuilder,
        (name, co, ci, k): &UnitSpec,
        s: usize,
    ) -> Result<UnitDef, ModelError> {
        Ok(UnitDef {
            conv: load_conv(
                &vb.pp(self.conv_name(name)),
                self.spatial(),
                (*co, *ci, *k),
                self.conv_cfg(*k, s),
                false,
            )?,
            bn: load_bn(&vb.pp(self.bn_name(name)), *co, self.bn_eps())?,
        })
    }
}

/// Convolution, BatchNorm and ReLU.
#[derive(Debug)]
struct UnitDef {
    conv: Conv3d,
    bn: BatchNorm3d,
}

impl UnitDef {
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        self.bn
            .forward_t(&self.conv.forward_t(x, train)?, train, true)
    }

    fn fold(&self) -> Result<ConvUnit, ModelError> {
        ConvUnit::new(&self.conv, Some(&self.bn), true)
    }
}

/// A step of the definition's body.
#[derive(Debug)]
enum StageDef {
    Unit(UnitDef),
    Pool(Pool3d),
    /// The units (1x1, 3x3 reduce, 3x3, reduce, 3x3, pool projection) and the fourth branch's
    /// pool.
    Mixed(Box<[UnitDef; 6]>, Pool3d),
}

/// An Inception-v1, 3-D as I3D or 2-D on every slice as GoogLeNet: the definition that training
/// runs and [`Network::fold`] turns into [`FoldedInception`].
#[derive(Debug)]
pub struct Inception {
    spatial: Spatial,
    in_channels: usize,
    /// I3D head form (GoogLeNet: unused).
    form: I3dHead,
    stages: Vec<StageDef>,
    head: Linear,
}

impl Inception {
    /// The network `cfg` describes, from `vb`.
    pub fn new(cfg: &InceptionConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        let mut stages = Vec::new();
        for step in cfg.layout() {
            stages.push(match step {
                LayoutStep::Unit(unit, stride) => {
                    StageDef::Unit(cfg.load_unit(&vb, &unit, stride)?)
                }
                LayoutStep::Pool(pool) => StageDef::Pool(pool),
                LayoutStep::Mixed(units, pool) => {
                    let [u0, u1, u2, u3, u4, u5] = &*units;
                    let l = |u: &UnitSpec| cfg.load_unit(&vb, u, 1);
                    StageDef::Mixed(
                        Box::new([l(u0)?, l(u1)?, l(u2)?, l(u3)?, l(u4)?, l(u5)?]),
                        pool,
                    )
                }
            });
        }
        // The Kinetics head stores a 1x1x1 convolution: a linear layer all the same.
        let head = load_linear(
            &vb.pp(cfg.head_name()),
            cfg.num_outputs,
            cfg.feature_width(),
            &cfg.head_shape(),
        )?;
        Ok(Self {
            spatial: cfg.spatial(),
            in_channels: cfg.in_channels,
            form: cfg.head,
            stages,
            head,
        })
    }
}

impl Network for Inception {
    /// Each stem unit, each pool between stages, each mixed block, the head (the I3D port's
    /// windowed mean, or the slice reduction, and the affine head).
    fn segments(&self) -> usize {
        self.stages.len() + 1
    }

    fn forward_segment(&self, k: usize, h: &Tensor, train: bool) -> CResult<Tensor> {
        if k == self.stages.len() {
            let pooled = match self.spatial {
                Spatial::D3 => windowed_mean(h, I3D_POOL)?,
                Spatial::D2 => self.spatial.pool_maps(h)?,
            };
            return self.head.forward(&pooled);
        }
        let Some(stage) = self.stages.get(k) else {
            candle_core::bail!("inception: no segment {k}");
        };
        match stage {
            StageDef::Unit(u) if k == 0 => {
                let y = stem_conv(&u.conv, h, self.in_channels, train, "inception")?;
                u.bn.forward_t(&y, train, true)
            }
            StageDef::Unit(u) => u.forward_t(h, train),
            StageDef::Pool(pool) => pool.forward_t(h, train),
            StageDef::Mixed(units, pool) => {
                let [u0, u1, u2, u3, u4, u5] = &**units;
                let y0 = u0.forward_t(h, train)?;
                let y1 = u2.forward_t(&u1.forward_t(h, train)?, train)?;
                let y2 = u4.forward_t(&u3.forward_t(h, train)?, train)?;
                let y3 = u5.forward_t(&pool.forward_t(h, train)?, train)?;
                Tensor::cat(&[&y0, &y1, &y2, &y3], 1)
            }
        }
    }

    fn batch_norms(&self) -> Vec<&BatchNorm3d> {
        let mut out = Vec::new();
        for stage in &self.stages {
            match stage {
                StageDef::Unit(u) => out.push(&u.bn),
                StageDef::Pool(_) => {}
                StageDef::Mixed(units, _) => out.extend(units.iter().map(|u| &u.bn)),
            }
        }
        out
    }

    fn fold(&self) -> Result<Box<dyn Classifier>, ModelError> {
        Ok(Box::new(FoldedInception::fold(self)?))
    }
}

/// A mixed block: the stacked 1x1 convolutions (branch 0 output and both reductions), the two
/// 3x3 convolutions, and the pool branch.
#[derive(Clone, Debug)]
struct Mixed {
    pointwise: ConvUnit,
    /// Channels of branch 0, reduction 1, reduction 2 in the stacked output.
    split: [usize; 3],
    conv_b: ConvUnit,
    conv_c: ConvUnit,
    pool: Pool3d,
    pool_proj: ConvUnit,
}

impl Mixed {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let r = self.pointwise.forward(x)?;
        let [a, b, c] = self.split;
        let y0 = r.narrow(1, 0, a)?;
        let y1 = self.conv_b.forward(&r.narrow(1, a, b)?)?;
        let y2 = self.conv_c.forward(&r.narrow(1, a + b, c)?)?;
        let y3 = self.pool_proj.forward(&self.pool.forward(x)?)?;
        Tensor::cat(&[&y0, &y1, &y2, &y3], 1)
    }
}

/// Ops of the network body in order.
#[derive(Clone, Debug)]
enum Stage {
    Unit(ConvUnit),
    Pool(Pool3d),
    Mixed(Box<Mixed>),
}

/// An Inception-v1 in inference form ([`Inception`] folded): I3D with the port's pooling, or
/// GoogLeNet on every slice with the slice reduction.
#[derive(Clone, Debug)]
pub struct FoldedInception {
    spatial: Spatial,
    /// Input channels the weights expect.
    in_channels: usize,
    /// I3D head form (GoogLeNet: unused).
    form: I3dHead,
    stages: Vec<Stage>,
    head: Linear,
}

impl FoldedInception {
    /// Loads the network from `vb`: the [`Inception`] definition folded.
    pub fn new(cfg: &InceptionConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        Self::fold(&Inception::new(cfg, vb)?)
    }

    /// The inference form: every BatchNorm folded, and a block's three 1x1 convolutions that
    /// read its input stacked into one.
    pub fn fold(def: &Inception) -> Result<Self, ModelError> {
        let mut stages = Vec::with_capacity(def.stages.len());
        for stage in &def.stages {
            stages.push(match stage {
                StageDef::Unit(u) => Stage::Unit(u.fold()?),
                StageDef::Pool(p) => Stage::Pool(*p),
                StageDef::Mixed(units, pool) => {
                    let [u0, u1, u2, u3, u4, u5] = &**units;
                    let (a, b, c) = (u0.fold()?, u1.fold()?, u3.fold()?);
                    Stage::Mixed(Box::new(Mixed {
                        pointwise: ConvUnit::stack(&[&a, &b, &c])?,
                        split: [a.c_out()?, b.c_out()?, c.c_out()?],
                        conv_b: u2.fold()?,
                        conv_c: u4.fold()?,
                        pool: *pool,
                        pool_proj: u5.fold()?,
                    }))
                }
            });
        }
        Ok(Self {
            spatial: def.spatial,
            in_channels: def.in_channels,
            form: def.form,
            stages,
            head: def.head.clone(),
        })
    }

    /// The last mixed block's output, `(N, C, D', H', W')` (2-D: `D' = D`).
    pub fn feature_map(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = x.clone();
        for s in &self.stages {
            h = match s {
                Stage::Unit(u) => u.forward(&h)?,
                Stage::Pool(p) => p.forward(&h)?,
                Stage::Mixed(m) => m.forward(&h)?,
            };
        }
        Ok(h)
    }
}

impl Classifier for FoldedInception {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let f = match self.spatial {
            Spatial::D3 => {
                // The STOIC baseline repeats a one-channel CT over its three input channels.
                let x = if self.form == I3dHead::Stoic && self.in_channels == 3 && x.dim(1)? == 1 {
                    let (n, _, d, h, w) = x.dims5()?;
                    x.broadcast_as((n, 3, d, h, w))?.contiguous()?
                } else {
                    x.clone()
                };
                windowed_mean(&self.feature_map(&x)?, I3D_POOL)?
            }
            Spatial::D2 => self.spatial.pooled_features(x, |s| self.feature_map(s))?,
        };
        self.head.forward(&f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(arch: Arch, outputs: usize) -> usize {
        crate::model::expected_tensors(&NetworkConfig::new(arch, 3, outputs))
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn published_sizes() {
        // torchvision googlenet(aux_logits=False, num_classes=1000).
        assert_eq!(params(Arch::InceptionV1_2d, 1000), 6_624_904);
        // I3D: 400 Kinetics classes, no bias in the convolutions but the last.
        assert_eq!(params(Arch::InceptionV1_3d, 400), 12_697_264);
    }

    /// The port's pooling written out: every (2, 7, 7) window's mean, then their mean.
    fn pool_then_mean(x: &Tensor, k: [usize; 3]) -> f64 {
        let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (_, _, d, h, w) = x.dims5().unwrap();
        let k = [k[0].min(d), k[1].min(h), k[2].min(w)];
        let mut sum = 0.0;
        let mut windows = 0.0;
        for a in 0..=d - k[0] {
            for b in 0..=h - k[1] {
                for c in 0..=w - k[2] {
                    let mut s = 0.0;
                    for i in a..a + k[0] {
                        for j in b..b + k[1] {
                            for l in c..c + k[2] {
                                s += v[(i * h + j) * w + l];
                            }
                        }
                    }
                    sum += s / (k[0] * k[1] * k[2]) as f64;
                    windows += 1.0;
                }
            }
        }
        sum / windows
    }

    #[test]
    fn windowed_mean_is_the_ports_pool_then_mean() {
        let dev = candle_core::Device::Cpu;
        // Larger than the window along every axis, equal along one, smaller along others.
        for shape in [(4, 9, 8), (2, 7, 7), (3, 7, 10), (1, 3, 2), (5, 1, 12)] {
            let n = shape.0 * shape.1 * shape.2;
            let x = Tensor::arange(0u32, n as u32, &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .affine(0.37, 0.0)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((1, 1, shape.0, shape.1, shape.2))
                .unwrap();
            let got = windowed_mean(&x, I3D_POOL)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()[0];
            let want = pool_then_mean(&x, I3D_POOL);
            assert!((got - want).abs() < 1e-12, "{shape:?}: {got} vs {want}");
        }
    }

    #[test]
    fn head_forms_name_their_parameters() {
        let mut nc = NetworkConfig::new(Arch::InceptionV1_3d, 3, 2);
        nc.i3d_head = Some(I3dHead::Stoic);
        let t = crate::model::expected_tensors(&nc);
        let n = t.len();
        assert_eq!(t[n - 2], ("linear.weight".to_string(), vec![2, 1024]));
        assert_eq!(t[n - 1], ("linear.bias".to_string(), vec![2]));
        assert!(!t.iter().any(|(name, _)| name.starts_with("conv3d_0c_1x1")));
        assert_eq!(
            I3dHead::detect(["module.linear.weight", "x"].into_iter()),
            I3dHead::Stoic
        );
        assert_eq!(
            I3dHead::detect(["conv3d_0c_1x1.conv3d.weight", "mylinear.weight"].into_iter()),
            I3dHead::Kinetics
        );
    }

    #[test]
    fn same_padding_of_the_port() {
        let cfg =
            InceptionConfig::from_network(&NetworkConfig::new(Arch::InceptionV1_3d, 3, 1)).unwrap();
        assert_eq!(cfg.pad(7, 2, false), [2, 3]);
        assert_eq!(cfg.pad(3, 1, false), [1, 1]);
        assert_eq!(cfg.pad(3, 2, true), [0, 1]);
        assert_eq!(cfg.pad(2, 2, true), [0, 0]);
        assert_eq!(cfg.pad(1, 1, true), [0, 0]);
    }
}
