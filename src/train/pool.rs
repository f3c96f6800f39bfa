//! Trainable 3-D max and average pooling for the CPU, as a candle custom op with direct loops
//! for both passes (the composed pooling's backward through strided views and `maximum` cost
//! more than the rest of a small network's step). Other devices use the composed pooling.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::layers::{avg_divisors, Pool3d, Pool3dConfig, PoolKind};

/// `pool(x)`, differentiable in `x`.
pub fn pool3d(x: &Tensor, pool: Pool3d) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(PoolOp { pool })
    } else {
        pool.forward_composed(x)
    }
}

struct PoolOp {
    pool: Pool3d,
}

/// Per-axis input windows `[lo, hi)` clipped to the input, for each output position.
fn windows(cfg: &Pool3dConfig, a: usize, len: usize, o: usize) -> Vec<(usize, usize)> {
    (0..o)
        .map(|i| {
            let start = i * cfg.stride[a];
            let lo = start.saturating_sub(cfg.padding[a][0]).min(len);
            let hi = (start + cfg.kernel[a])
                .saturating_sub(cfg.padding[a][0])
                .min(len);
            (lo, hi)
        })
        .collect()
}

struct Plan {
    input: [usize; 3],
    out: [usize; 3],
    win: [Vec<(usize, usize)>; 3],
    /// Reciprocal divisors per axis (average pooling).
    inv: Option<[Vec<f32>; 3]>,
}

impl Plan {
    fn new(pool: &Pool3d, input: [usize; 3]) -> Result<Self> {
        let cfg = &pool.cfg;
        let out = cfg.output_size(input)?;
        let win = [0, 1, 2].map(|a| windows(cfg, a, input[a], out[a]));
        let inv = match pool.kind {
            PoolKind::Max => None,
            PoolKind::Avg { count_include_pad } => Some([0, 1, 2].map(|a| {
                avg_divisors(
                    input[a],
                    cfg.kernel[a],
                    cfg.stride[a],
                    cfg.padding[a],
                    out[a],
                    count_include_pad,
                )
                .into_iter()
                .map(|d| 1.0 / d.max(1) as f32)
                .collect()
            })),
        };
        Ok(Self {
            input,
            out,
            win,
            inv,
        })
    }

    /// Calls `f(output index, z range, y range, x range, 1/divisor)` for every output voxel.
    fn each(&self, mut f: impl FnMut(usize, (usize, usize), (usize, usize), (usize, usize), f32)) {
        let mut o = 0;
        for (zi, &wz) in self.win[0].iter().enumerate() {
            for (yi, &wy) in self.win[1].iter().enumerate() {
                for (xi, &wx) in self.win[2].iter().enumerate() {
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
        let [_, h, w] = self.input;
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
        let plan = Plan::new(&self.pool, input)?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("pool3d: non-contiguous input");
        };
        let Some(xs) = s.as_slice::<f32>()?.get(a..b) else {
            candle_core::bail!("pool3d: layout outside storage");
        };
        let vin: usize = input.iter().product();
        let vout: usize = plan.out.iter().product();
        let mut dst = vec![0f32; planes * vout];
        let max = matches!(self.pool.kind, PoolKind::Max);
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
        let [od, oh, ow] = plan.out;
        let dims = l.shape().dims();
        Ok((
            CpuStorage::F32(dst),
            Shape::from((dims[0], dims[1], od, oh, ow)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (planes, input) = dims5(arg.shape())?;
        let plan = Plan::new(&self.pool, input)?;
        let xs = arg.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        let vin: usize = input.iter().product();
        let vout: usize = plan.out.iter().product();
        let mut gx = vec![0f32; planes * vin];
        let max = matches!(self.pool.kind, PoolKind::Max);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and gradients equal the composed pooling's (distinct values: no ties).
    #[test]
    fn matches_the_composed_pooling() {
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
            let a = pool3d(x.as_tensor(), pool).unwrap();
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
