//! A trainable 3-D convolution for the CPU: the engine's fast forward kernel with hand-written
//! gradients, as a candle custom op.
//!
//! The composed convolution of the layers has gradients through candle's `conv2d`,
//! whose CPU backward (a naive transposed convolution) made one training step of a small DenseNet
//! take seconds. Here the forward pass is the inference kernel, the input gradient is a
//! convolution of the output gradient with the flipped, transposed kernel (zeros inserted for
//! strides), and the weight gradient is `sum_n dY_n * im2col(X_n)^T` through the `gemm` crate.
//! The weight gradient is summed over a fixed partition of the work, in a fixed order, so results
//! do not depend on thread scheduling (resumed runs repeat uninterrupted ones bit for bit).
//! The layers use it on the CPU in f32 (their `conv3d_train`); other devices
//! use the composed convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu;
use super::geometry::Conv3dConfig;

/// Weight-gradient partial sums: this many, whatever the thread count (determinism).
const GRAD_CHUNKS: usize = 8;

/// `conv3d(x, w)` without bias, differentiable in both arguments; f32 CPU tensors.
pub(crate) fn conv3d(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv3dOp { cfg: *cfg })
}

struct Conv3dOp {
    cfg: Conv3dConfig,
}

fn tensor_of(s: &CpuStorage, l: &Layout, what: &str) -> Result<Tensor> {
    let data = super::contiguous_f32(s, l, what)?;
    Tensor::from_slice(data, l.shape(), &candle_core::Device::Cpu)
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "train-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = tensor_of(s1, l1, "conv3d: the input")?;
        let w = tensor_of(s2, l2, "conv3d: the weight")?;
        let y = cpu::conv3d(&x, &w, None, &self.cfg)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad_input(&grad, w, x.dims(), &self.cfg)?)
        } else {
            None
        };
        let gw = grad_weight(x, &grad, w.dims(), &self.cfg)?;
        Ok((gx, Some(gw)))
    }
}

/// dL/dx: the output gradient, zero-stuffed for strides, convolved with the flipped kernel
/// `W'[ci, co, a, b, c] = W[co, ci, kd-1-a, kh-1-b, kw-1-c]`.
fn grad_input(grad: &Tensor, w: &Tensor, x_dims: &[usize], cfg: &Conv3dConfig) -> Result<Tensor> {
    let (c_out, c_in, kd, kh, kw) = w.dims5()?;
    let k = [kd, kh, kw];
    let (n, _, od, oh, ow) = grad.dims5()?;
    let input = match x_dims {
        [_, _, d, h, wd] => [*d, *h, *wd],
        _ => candle_core::bail!("conv3d backward: input is not 5-D"),
    };
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let mut flipped = vec![0f32; ws.len()];
    let kv = kd * kh * kw;
    for co in 0..c_out {
        for ci in 0..c_in {
            let src = &ws[(co * c_in + ci) * kv..][..kv];
            let dst = &mut flipped[(ci * c_out + co) * kv..][..kv];
            for (i, v) in src.iter().enumerate() {
                dst[kv - 1 - i] = *v;
            }
        }
    }
    let wt = Tensor::from_vec(flipped, (c_in, c_out, kd, kh, kw), grad.device())?;
    let out = [od, oh, ow];
    let s = cfg.stride;
    // Zero-stuffed gradient of size (o - 1) * s + 1 per axis.
    let up = [0, 1, 2].map(|a| (out[a] - 1) * s[a] + 1);
    let g = if s == [1; 3] {
        grad.clone()
    } else {
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut u = vec![0f32; n * c_out * up[0] * up[1] * up[2]];
        for p in 0..n * c_out {
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        u[((p * up[0] + z * s[0]) * up[1] + y * s[1]) * up[2] + x * s[2]] =
                            gs[((p * od + z) * oh + y) * ow + x];
                    }
                }
            }
        }
        Tensor::from_vec(u, (n, c_out, up[0], up[1], up[2]), grad.device())?
    };
    // Output length up + before + after - k + 1 must be the input length.
    let mut padding = [[0usize; 2]; 3];
    for a in 0..3 {
        let p0 = cfg.padding[a][0];
        let (Some(before), Some(after)) = (
            (k[a] - 1).checked_sub(p0),
            (input[a] + p0).checked_sub(up[a]),
        ) else {
            candle_core::bail!(
                "conv3d backward: padding {:?} exceeds kernel {k:?}",
                cfg.padding
            );
        };
        padding[a] = [before, after];
    }
    cpu::conv3d(
        &g,
        &wt,
        None,
        &Conv3dConfig {
            stride: [1; 3],
            padding,
        },
    )
}

/// dL/dW = sum over batch items and output depth slices of `dY_slice (C_out x P) * col^T`.
fn grad_weight(x: &Tensor, grad: &Tensor, w_dims: &[usize], cfg: &Conv3dConfig) -> Result<Tensor> {
    let (n, c_in, d, h, wd) = x.dims5()?;
    let (_, c_out, od, oh, ow) = grad.dims5()?;
    let kernel = match w_dims {
        [_, _, a, b, c] => [*a, *b, *c],
        _ => candle_core::bail!("conv3d backward: weight is not 5-D"),
    };
    let k = c_in * kernel.iter().product::<usize>();
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let gs = grad.flatten_all()?.to_vec1::<f32>()?;
    let g = cpu::ConvGeom {
        n,
        c_in,
        c_out,
        input: [d, h, wd],
        kernel,
        out: [od, oh, ow],
        cfg: *cfg,
    };
    let x_bs = c_in * d * h * wd;
    let tiles = n * od;
    let chunks = GRAD_CHUNKS.min(tiles).max(1);
    let plane = oh * ow;
    let vol_out = od * plane;
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; c_out * k];
            let mut col = vec![0f32; k * plane];
            for t in (c * tiles / chunks)..((c + 1) * tiles / chunks) {
                let (b, z) = (t / od, t % od);
                col.iter_mut().for_each(|v| *v = 0.0);
                cpu::im2col_tile(&g, &xs, b * x_bs, z, 0, oh, &mut col);
                // SAFETY: acc is c_out x k (row stride k); the gradient slice is c_out x plane
                // with row stride vol_out inside gs; col is k x plane, read transposed.
                unsafe {
                    gemm::gemm(
                        c_out,
                        k,
                        plane,
                        acc.as_mut_ptr(),
                        1,
                        k as isize,
                        true,
                        gs.as_ptr().add(b * c_out * vol_out + z * plane),
                        1,
                        vol_out as isize,
                        col.as_ptr(),
                        plane as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f32; c_out * k];
    for p in &partial {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    Tensor::from_vec(total, w_dims, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Direct loops: (y, dL/dx, dL/dw) for L = sum(y * r).
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        cfg: &Conv3dConfig,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, ci_n, d, h, wd) = x.dims5().unwrap();
        let (co_n, _, kd, kh, kw) = w.dims5().unwrap();
        let (_, _, od, oh, ow) = r.dims5().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut y = vec![0f32; rs.len()];
        let mut gx = vec![0f32; xs.len()];
        let mut gw = vec![0f32; ws.len()];
        let [s0, s1, s2] = cfg.stride;
        let [[p0, _], [p1, _], [p2, _]] = cfg.padding;
        for b in 0..n {
            for co in 0..co_n {
                for (oz, oy, ox) in
                    (0..od).flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x))))
                {
                    let yi = (((b * co_n + co) * od + oz) * oh + oy) * ow + ox;
                    for ci in 0..ci_n {
                        for (a, bb, c) in (0..kd).flat_map(|a| {
                            (0..kh).flat_map(move |b| (0..kw).map(move |c| (a, b, c)))
                        }) {
                            let iz = (oz * s0 + a) as i64 - p0 as i64;
                            let iy = (oy * s1 + bb) as i64 - p1 as i64;
                            let ix = (ox * s2 + c) as i64 - p2 as i64;
                            if iz < 0 || iy < 0 || ix < 0 {
                                continue;
                            }
                            let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                            if iz >= d || iy >= h || ix >= wd {
                                continue;
                            }
                            let xi = (((b * ci_n + ci) * d + iz) * h + iy) * wd + ix;
                            let wi = (((co * ci_n + ci) * kd + a) * kh + bb) * kw + c;
                            y[yi] += xs[xi] * ws[wi];
                            gx[xi] += rs[yi] * ws[wi];
                            gw[wi] += rs[yi] * xs[xi];
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    fn close(name: &str, a: &Tensor, b: &[f32]) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{name}: length");
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert!(
                (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "{name}: element {i}: {u} vs {v}"
            );
        }
    }

    /// Values and both gradients of the custom op against direct loops, strides and odd sizes
    /// included.
    #[test]
    fn gradients_match_direct_loops() {
        let cases = [
            (
                [2, 3, 6, 7, 5],
                [4, 3, 3, 3, 3],
                Conv3dConfig::symmetric(1, 1),
            ),
            (
                [1, 2, 9, 8, 7],
                [3, 2, 7, 7, 7],
                Conv3dConfig::symmetric(2, 3),
            ),
            ([2, 5, 4, 4, 4], [3, 5, 1, 1, 1], Conv3dConfig::default()),
            (
                [1, 2, 7, 6, 9],
                [2, 2, 3, 3, 3],
                Conv3dConfig::symmetric(2, 1),
            ),
        ];
        for (i, (xs, ws, cfg)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(&rand(&xs, 1 + i as u64)).unwrap();
            let w = Var::from_tensor(&rand(&ws, 10 + i as u64)).unwrap();
            let y = conv3d(x.as_tensor(), w.as_tensor(), &cfg).unwrap();
            let r = rand(y.dims(), 99);
            let (ry, rgx, rgw) = reference(x.as_tensor(), w.as_tensor(), &r, &cfg);
            close(&format!("case {i} forward"), &y, &ry);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            close(&format!("case {i} dx"), g.get(x.as_tensor()).unwrap(), &rgx);
            close(&format!("case {i} dw"), g.get(w.as_tensor()).unwrap(), &rgw);
        }
    }
}
