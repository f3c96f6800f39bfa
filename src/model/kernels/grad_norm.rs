//! BatchNorm in training mode, alone or fused with the ReLU that usually follows it, for the CPU:
//! one custom op with the textbook backward pass, per channel in a fixed order (deterministic).
//! The composed version (candle ops) serves other devices and the tests.
//!
//! With `M` values per channel, `xhat = (x - mean) / sqrt(var + eps)` (biased variance),
//! `z = gamma * xhat + beta`, `y = relu(z)` (or `y = z` without the ReLU):
//! `dz = dy * [z > 0]` (or `dz = dy`), `dbeta = sum dz`, `dgamma = sum dz * xhat`,
//! `dx = gamma / sqrt(var + eps) * (dz - dbeta / M - xhat * dgamma / M)`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Batch statistics of `x` (N, C, ...): per-channel mean and biased variance, in f64.
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let dims = x.dims();
    let (n, c) = match dims {
        [n, c, ..] => (*n, *c),
        _ => candle_core::bail!("batch norm: input of rank {} has no channels", dims.len()),
    };
    let vol: usize = dims[2..].iter().product();
    let xs = x.detach().flatten_all()?.to_vec1::<f32>()?;
    let m = (n * vol).max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut sum = 0.0f64;
            for b in 0..n {
                sum += xs[(b * c + ch) * vol..][..vol]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            let mean = sum / m;
            let mut ss = 0.0f64;
            for b in 0..n {
                ss += xs[(b * c + ch) * vol..][..vol]
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>();
            }
            (mean, ss / m)
        })
        .collect();
    Ok(stats.into_iter().unzip())
}

/// `gamma * (x - mean) / sqrt(var + eps) + beta` per channel with the given batch statistics
/// (those of `x`: see [`batch_stats`]), then a ReLU if `relu`; differentiable in `x`, `gamma` and
/// `beta`.
pub(crate) fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &[f64],
    var: &[f64],
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = BnRelu {
            mean: mean.to_vec(),
            inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
            relu,
        };
        return x.contiguous()?.apply_op3(gamma, beta, op);
    }
    batch_norm_composed(x, gamma, beta, eps, relu)
}

/// [`batch_norm`] from candle ops (other devices), the statistics computed from `x` by autograd
/// so that gradients flow through them.
fn batch_norm_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let rank = x.rank();
    let mut shape = vec![1usize; rank];
    shape[1] = gamma.elem_count();
    let axes: Vec<usize> = (0..rank).filter(|&a| a != 1).collect();
    let mu = x.mean_keepdim(axes.as_slice())?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(axes.as_slice())?;
    let scale = (var + eps)?
        .sqrt()?
        .recip()?
        .broadcast_mul(&gamma.reshape(shape.as_slice())?)?;
    let z = xc
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape(shape.as_slice())?)?;
    if relu {
        z.relu()
    } else {
        Ok(z)
    }
}

struct BnRelu {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    /// Whether a ReLU follows (fused: the backward pass masks with the output).
    relu: bool,
}

fn geometry(shape: &Shape, c: usize) -> Result<(usize, usize)> {
    match shape.dims() {
        [n, ch, rest @ ..] if *ch == c => Ok((*n, rest.iter().product())),
        d => candle_core::bail!("batch norm: input {d:?} does not have {c} channels"),
    }
}

impl CustomOp3 for BnRelu {
    fn name(&self) -> &'static str {
        "train-bn-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = self.mean.len();
        let (_, vol) = geometry(l1.shape(), c)?;
        let xs = contiguous_f32(s1, l1, "batch norm: the input")?;
        let g = contiguous_f32(s2, l2, "batch norm: gamma")?;
        let b = contiguous_f32(s3, l3, "batch norm: beta")?;
        if g.len() != c || b.len() != c {
            candle_core::bail!(
                "batch norm: {c} channels, gamma/beta of {}/{}",
                g.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; xs.len()];
        let relu = self.relu;
        out.par_chunks_mut(vol.max(1))
            .zip(xs.par_chunks(vol.max(1)))
            .enumerate()
            .for_each(|(i, (o, x))| {
                let ch = i % c;
                let a = (g[ch] as f64 * self.inv_std[ch]) as f32;
                let sh = (b[ch] as f64 - self.mean[ch] * g[ch] as f64 * self.inv_std[ch]) as f32;
                if relu {
                    o.iter_mut()
                        .zip(x)
                        .for_each(|(o, &v)| *o = (v * a + sh).max(0.0));
                } else {
                    o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * a + sh);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.mean.len();
        let (n, vol) = geometry(x.shape(), c)?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ys = res.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        let gm = gamma.to_vec1::<f32>()?;
        let m = (n * vol).max(1) as f64;
        // Without the ReLU every value passes its gradient on.
        let pass = |i: usize| !self.relu || ys[i] > 0.0;
        // Per channel: (sum dz, sum dz * xhat).
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for b in 0..n {
                    let off = (b * c + ch) * vol;
                    for i in off..off + vol {
                        if pass(i) {
                            let g = gs[i] as f64;
                            s1 += g;
                            s2 += g * (xs[i] as f64 - self.mean[ch]) * self.inv_std[ch];
                        }
                    }
                }
                (s1, s2)
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(vol.max(1))
            .enumerate()
            .for_each(|(p, d)| {
                let ch = p % c;
                let (s1, s2) = sums[ch];
                let k = gm[ch] as f64 * self.inv_std[ch];
                let off = p * vol;
                for (j, v) in d.iter_mut().enumerate() {
                    let i = off + j;
                    let dz = if pass(i) { gs[i] as f64 } else { 0.0 };
                    let xhat = (xs[i] as f64 - self.mean[ch]) * self.inv_std[ch];
                    *v = (k * (dz - s1 / m - xhat * s2 / m)) as f32;
                }
            });
        let dev = x.device();
        let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64, scale: f64, shift: f64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (r.normal() * scale + shift) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(name: &str, a: &Tensor, b: &Tensor) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!(
                (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "{name}[{i}]: {u} vs {v}"
            );
        }
    }

    /// The fused op against the composed candle version (autograd through the statistics), with
    /// and without the ReLU.
    #[test]
    fn fused_matches_composed() {
        let x = Var::from_tensor(&rand(&[2, 3, 4, 5, 3], 1, 2.0, 0.5)).unwrap();
        let g = Var::from_tensor(&rand(&[3], 2, 0.3, 1.0)).unwrap();
        let b = Var::from_tensor(&rand(&[3], 3, 0.3, 0.1)).unwrap();
        let (mean, var) = batch_stats(x.as_tensor()).unwrap();
        for relu in [true, false] {
            let fused = batch_norm(
                x.as_tensor(),
                g.as_tensor(),
                b.as_tensor(),
                &mean,
                &var,
                1e-5,
                relu,
            )
            .unwrap();
            let composed =
                batch_norm_composed(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, relu)
                    .unwrap();
            close("forward", &fused, &composed);
            let r = rand(fused.dims(), 4, 1.0, 0.0);
            let g1 = (&fused * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&composed * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
                close(
                    &format!("{name} (relu {relu})"),
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
            }
        }
    }
}
