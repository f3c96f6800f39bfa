//! Trainable 3-D max and average pooling for the CPU, as a candle custom op with direct loops
//! for both passes (the composed pooling's backward through strided views and `maximum` cost
//! more than the rest of a small network's step). It walks the inference kernels' pooling plan;
//! the layers use it on the CPU in f32 (`Pool3d::forward_train`), other devices the composed
//! pooling.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::PoolPlan;
use super::geometry::{Pool3dConfig, PoolKind};

/// `pool(x)`, differentiable in `x`; f32 CPU tensors.
pub(crate) fn pool3d(x: &Tensor, cfg: Pool3dConfig, kind: PoolKind) -> Result<Tensor> {
    x.contiguous()?.apply_op1(PoolOp { cfg, kind })
}

struct PoolOp {
    cfg: Pool3dConfig,
    kind: PoolKind,
}

/// The pooling plan with the reciprocal average divisors per axis.
struct Plan {
    base: PoolPlan,
    /// Reciprocal divisors per axis (average pooling).
    inv: Option<[Vec<f32>; 3]>,
}

impl Plan {
    fn new(op: &PoolOp, input: [usize; 3]) -> Result<Self> {
        let base = PoolPlan::new(&op.cfg, op.kind, input)?;
        let inv = base.divisors.as_ref().map(|d| {
            d.clone()
                .map(|axis| axis.iter().map(|&v| 1.0 / v.max(1) as f32).collect())
        });
        Ok(Self { base, inv })
    }

    /// Calls `f(output index, z range, y range, x range, 1/divisor)` for every output voxel.
    fn each(&self, mut f: impl FnMut(usize, (usize, usize), (usize, usize), (usize, usize), f32)) {
        let mut o = 0;
        let win = &self.base.windows;
        for (zi, &wz) in win[0].iter().enumerate() {
            for (yi, &wy) in win[1].iter().enumerate() {
                for (xi, &wx) in win[2].iter().enumerate() {
                    let inv = match &self.inv {
                        Some([a, b, c]) => a[zi] * b[yi] * c[xi],
                        None => 1.0,
                    };
                    f(o, wz, wy, wx, inv);
                    o += 1;
                }
            }
        }
    }

    /// The first maximum of a window (input index), or None for an empty window.
    fn argmax(
        &self,
        inp: &[f32],
        wz: (usize, usize),
        wy: (usize, usize),
        wx: (usize, usize),
    ) -> Option<usize> {
        let [_, h, w] = self.base.input;
        let mut best: Option<(usize, f32)> = None;
        for z in wz.0..wz.1 {
            for y in wy.0..wy.1 {
                for x in wx.0..wx.1 {
                    let i = (z * h + y) * w + x;
                    let v = inp[i];
                    if best.is_none_or(|(_, b)| v > b) {
                        best = Some((i, v));
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

fn dims5(shape: &Shape) -> Result<(usize, [usize; 3])> {
    match shape.dims() {
        [n, c, d, h, w] => Ok((n * c, [*d, *h, *w])),
        d => candle_core::bail!("pool3d: expected a 5-D input, got {d:?}"),
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "train-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, input) = dims5(l.shape())?;
        let plan = Plan::new(self, input)?;
        let xs = super::contiguous_f32(s, l, "pool3d: the input")?;
        let vin: usize = input.iter().product();
        let vout: usize = plan.base.out.iter().product();
        let mut dst = vec![0f32; planes * vout];
        let max = matches!(self.kind, PoolKind::Max);
        let [_, h, w] = input;
        dst.par_chunks_mut(vout.max(1))
            .zip(xs.par_chunks(vin.max(1)))
            .for_each(|(out, inp)| {
                plan.each(|o, wz, wy, wx, inv| {
                    out[o] = if max {
                        plan.argmax(inp, wz, wy, wx)
                            .map_or(f32::NEG_INFINITY, |i| inp[i])
                    } else {
                        let mut acc = 0.0f32;
                        for z in wz.0..wz.1 {
                            for y in wy.0..wy.1 {
                                acc += inp[(z * h + y) * w..][wx.0..wx.1].iter().sum::<f32>();
                            }
                        }
                        acc * inv
                    };
                });
            });
        let [od, oh, ow] = plan.base.out;
        let dims = l.shape().dims();
        Ok((
            CpuStorage::F32(dst),
            Shape::from((dims[0], dims[1], od, oh, ow)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (planes, input) = dims5(arg.shape())?;
        let plan = Plan::new(self, input)?;
        let xs = arg.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        let vin: usize = input.iter().product();
        let vout: usize = plan.base.out.iter().product();
        let mut gx = vec![0f32; planes * vin];
        let max = matches!(self.kind, PoolKind::Max);
        let [_, h, w] = input;
        gx.par_chunks_mut(vin.max(1))
            .zip(xs.par_chunks(vin.max(1)))
            .zip(gs.par_chunks(vout.max(1)))
            .for_each(|((gin, inp), gout)| {
                plan.each(|o, wz, wy, wx, inv| {
                    let g = gout[o];
                    if max {
                        if let Some(i) = plan.argmax(inp, wz, wy, wx) {
                            gin[i] += g;
                        }
                    } else {
                        let g = g * inv;
                        for z in wz.0..wz.1 {
                            for y in wy.0..wy.1 {
                                gin[(z * h + y) * w..][wx.0..wx.1]
                                    .iter_mut()
                                    .for_each(|v| *v += g);
                            }
                        }
                    }
                });
            });
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}
