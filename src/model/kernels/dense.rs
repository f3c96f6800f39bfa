//! The DenseNet's dense blocks fused on the CPU: every layer reads a channel prefix of one
//! preallocated buffer and writes its new features right after it, with norm1 + ReLU applied
//! while packing conv1's input and norm2 folded into conv1. Built on the generic kernels of
//! [`super::cpu`].

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::*;
#[cfg(target_arch = "x86_64")]
use super::direct::{self, Isa};
use super::geometry::Conv3dConfig;
use super::prof::{self, Kind};

/// One DenseNet layer in the form the fused CPU block runs: norm1 as scale + shift, conv1 with
/// norm2 folded in (bias), conv2.
#[derive(Clone, Debug)]
pub(crate) struct DenseLayerCpu {
    c_in: usize,
    inner: usize,
    growth: usize,
    scale1: Vec<f32>,
    shift1: Vec<f32>,
    b1: Vec<f32>,
    weights: LayerWeights,
}

/// conv1 and conv2 weights in the form their engine reads.
#[derive(Clone, Debug)]
enum LayerWeights {
    /// Row-major `(C_out, C_in * taps)`.
    Gemm { w1: Vec<f32>, w2: Vec<f32> },
    /// Packed into micro-kernel panels, for the direct kernels of `isa`.
    #[cfg(target_arch = "x86_64")]
    Direct {
        isa: Isa,
        w1: direct::PackedWeights,
        w2: direct::PackedWeights,
    },
}

impl DenseLayerCpu {
    /// Copies the layer's parameters for this CPU's engine; `None` unless they all suit the CPU
    /// kernels.
    pub(crate) fn new(
        scale1: &Tensor,
        shift1: &Tensor,
        conv1: ConvParams<'_>,
        conv2: ConvParams<'_>,
    ) -> Result<Option<Self>> {
        Self::with_engine(Engine::detect(), scale1, shift1, conv1, conv2)
    }

    /// [`DenseLayerCpu::new`] for the given engine.
    pub(crate) fn with_engine(
        engine: Engine,
        scale1: &Tensor,
        shift1: &Tensor,
        conv1: ConvParams<'_>,
        conv2: ConvParams<'_>,
    ) -> Result<Option<Self>> {
        let b1 = match conv1.bias {
            Some(b) => b,
            None => return Ok(None),
        };
        if !eligible(&[scale1, shift1, conv1.weight, b1, conv2.weight])
            || conv2.bias.is_some()
            || *conv2.cfg != Conv3dConfig::symmetric(1, 1)
            || *conv1.cfg != Conv3dConfig::default()
        {
            return Ok(None);
        }
        let (inner, c_in, k1d, k1h, k1w) = conv1.weight.dims5()?;
        let (growth, inner2, k2d, k2h, k2w) = conv2.weight.dims5()?;
        if (k1d, k1h, k1w) != (1, 1, 1) || (k2d, k2h, k2w) != (3, 3, 3) || inner2 != inner {
            return Ok(None);
        }
        let (w1, w2) = (vec_f32(conv1.weight)?, vec_f32(conv2.weight)?);
        let weights = match engine {
            Engine::Gemm => LayerWeights::Gemm { w1, w2 },
            #[cfg(target_arch = "x86_64")]
            Engine::Direct(isa) => LayerWeights::Direct {
                isa,
                w1: direct::PackedWeights::new(&w1, inner, c_in),
                w2: direct::PackedWeights::new(&w2, growth, inner * 27),
            },
        };
        let layer = Self {
            c_in,
            inner,
            growth,
            scale1: vec_f32(scale1)?,
            shift1: vec_f32(shift1)?,
            b1: vec_f32(b1)?,
            weights,
        };
        if layer.scale1.len() != c_in || layer.shift1.len() != c_in || layer.b1.len() != inner {
            candle_core::bail!(
                "dense layer: norm1 has {} channels and conv1 {c_in} inputs",
                layer.scale1.len()
            );
        }
        Ok(Some(layer))
    }
}

/// A whole dense block on the CPU: every layer reads a channel prefix of one preallocated buffer
/// and writes its new features right after it, so nothing is concatenated; norm1 + ReLU are
/// applied while packing conv1's input tiles instead of in a separate pass.
pub(crate) fn dense_block(x: &Tensor, layers: &[DenseLayerCpu]) -> Result<Tensor> {
    let (n, c0, d, h, w) = x.dims5()?;
    let vol = d * h * w;
    let mut c_total = c0;
    for l in layers {
        if l.c_in != c_total {
            candle_core::bail!(
                "dense block: layer expects {} channels, has {c_total}",
                l.c_in
            );
        }
        c_total += l.growth;
    }
    let bs = c_total * vol;
    let t_copy = prof::span(Kind::Concat);
    let mut buf = zeroed(n * bs);
    let x = x.contiguous()?;
    with_f32(&x, |xs| {
        for (b, item) in xs.chunks_exact(c0 * vol).enumerate() {
            buf[b * bs..b * bs + c0 * vol].copy_from_slice(item);
        }
        Ok(())
    })?;
    drop(t_copy);
    drop(x);
    #[cfg(target_arch = "x86_64")]
    if layers
        .iter()
        .all(|l| matches!(l.weights, LayerWeights::Direct { .. }))
    {
        dense_block_direct(&mut buf, bs, [d, h, w], layers)?;
        return Tensor::from_vec(buf, (n, c_total, d, h, w), &Device::Cpu);
    }
    let inner_max = layers.iter().map(|l| l.inner).max().unwrap_or(0);
    let mut mid = zeroed(n * inner_max * vol);
    for l in layers {
        #[allow(irrefutable_let_patterns)]
        let LayerWeights::Gemm { w1, w2 } = &l.weights
        else {
            candle_core::bail!("dense block: layers packed for different engines");
        };
        let t1 = prof::span(Kind::Bottleneck);
        bottleneck(&buf, bs, n, vol, l, w1, &mut mid);
        drop(t1);
        let _t3 = prof::span(Kind::Conv3x3);
        let g = ConvGeom {
            n,
            c_in: l.inner,
            c_out: l.growth,
            input: [d, h, w],
            kernel: [3, 3, 3],
            out: [d, h, w],
            cfg: Conv3dConfig::symmetric(1, 1),
        };
        // SAFETY: channels c_in..c_in+growth of every batch item lie inside buf, and only this call
        // touches buf meanwhile (it reads mid).
        unsafe {
            conv_im2col_into(
                &g,
                &mid,
                l.inner * vol,
                w2,
                OutPtr(buf.as_mut_ptr().add(l.c_in * vol)),
                bs,
            );
        }
    }
    Tensor::from_vec(buf, (n, c_total, d, h, w), &Device::Cpu)
}

/// [`dense_block`] on the direct kernels: `buf` holds `bs` floats per batch item, the block's
/// input in its first channels. The bottleneck writes straight into the zero-padded input of the
/// 3x3x3 convolution, whose borders stay zero for all layers.
#[cfg(target_arch = "x86_64")]
fn dense_block_direct(
    buf: &mut [f32],
    bs: usize,
    dims: [usize; 3],
    layers: &[DenseLayerCpu],
) -> Result<()> {
    let vol = dims.iter().product::<usize>();
    let inner_max = layers.iter().map(|l| l.inner).max().unwrap_or(0);
    let geom = |inner| direct::DirectGeom::new(inner, dims, [3; 3], [1; 3], [1; 3], dims);
    let mut mid = zeroed(geom(inner_max).prepared_len());
    for b in 0..buf.len() / bs.max(1) {
        for l in layers {
            #[allow(irrefutable_let_patterns)]
            let LayerWeights::Direct { isa, w1, w2 } = &l.weights
            else {
                continue;
            };
            let g = geom(l.inner);
            {
                let _t = prof::span(Kind::Bottleneck);
                let to = direct::PointwiseDst::Padded {
                    ptr: direct::Dst(mid.as_mut_ptr()),
                    geom: &g,
                    dims,
                };
                let epi = direct::Epilogue {
                    bias: Some(&l.b1),
                    relu: true,
                };
                let pre = Some((l.scale1.as_slice(), l.shift1.as_slice()));
                // SAFETY: the CPU runs `isa` (the weights were packed for it); `mid` holds the
                // padded planes of l.inner <= inner_max channels; item b's first c_in channels
                // are read.
                unsafe {
                    let item = &buf[b * bs..(b + 1) * bs];
                    direct::conv_pointwise(*isa, item, vol, vol, pre, w1, epi, to)?
                };
            }
            let _t = prof::span(Kind::Conv3x3);
            let epi = direct::Epilogue {
                bias: None,
                relu: false,
            };
            // SAFETY: channels c_in..c_in + growth of item b lie inside buf (checked by the caller)
            // and nothing else accesses buf meanwhile.
            unsafe {
                let out = direct::Dst(buf.as_mut_ptr().add(b * bs + l.c_in * vol));
                direct::conv_direct(*isa, &g, &mid, w2, epi, out, vol)?;
            }
        }
    }
    Ok(())
}

/// `mid = relu(W1 * relu(x * scale1 + shift1) + b1)` over the first `l.c_in` channels of `buf`.
fn bottleneck(
    buf: &[f32],
    bs: usize,
    n: usize,
    vol: usize,
    l: &DenseLayerCpu,
    w1: &[f32],
    mid: &mut [f32],
) {
    let tile = (COL_TILE_ELEMS / l.c_in.max(1)).clamp(256, POINTWISE_TILE);
    let per_item = vol.div_ceil(tile);
    let tiles = n * per_item;
    let (outer, par) = split(tiles);
    let out = OutPtr(mid.as_mut_ptr());
    let run = |pack: &mut Vec<f32>, t: usize| {
        let (b, i) = (t / per_item, t % per_item);
        let p0 = i * tile;
        let np = tile.min(vol - p0);
        pack.clear();
        pack.resize(l.c_in * np, 0.0);
        for (ci, row) in pack.chunks_exact_mut(np).enumerate() {
            let src = &buf[b * bs + ci * vol + p0..][..np];
            let (a, s) = (l.scale1[ci], l.shift1[ci]);
            row.iter_mut()
                .zip(src)
                .for_each(|(o, &v)| *o = (v * a + s).max(0.0));
        }
        let dst = out.get();
        // SAFETY: tile t writes columns p0..p0+np of every bottleneck channel of item b only.
        unsafe {
            let base = dst.add(b * l.inner * vol + p0);
            sgemm(
                l.inner,
                np,
                l.c_in,
                base,
                vol,
                w1.as_ptr(),
                l.c_in,
                pack.as_ptr(),
                np,
                par,
            );
            for (co, &bias) in l.b1.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(base.add(co * vol), np);
                row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
            }
        }
    };
    if outer {
        (0..tiles)
            .into_par_iter()
            .for_each_init(Vec::new, |p, t| run(p, t));
    } else {
        let mut p = Vec::new();
        (0..tiles).for_each(|t| run(&mut p, t));
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::tests::{engines, max_diff, naive_conv, randn};
    use super::*;

    #[test]
    fn dense_block_engines_match_layer_by_layer() {
        // Two layers, growth 3, bottleneck 10 (neither a multiple of the micro-tile), batch 2.
        let (n, c0, growth, inner, dims) = (2, 5, 3, 10, [3, 4, 19]);
        let x = randn(&[n, c0, dims[0], dims[1], dims[2]]);
        let mut params = Vec::new();
        for l in 0..2 {
            let c = c0 + l * growth;
            let scale = randn(&[c]).abs().unwrap().affine(0.5, 0.5).unwrap();
            let shift = (randn(&[c]) * 0.1).unwrap();
            // He-scaled weights keep the activations near 1, as in a trained network.
            let w1 = (randn(&[inner, c, 1, 1, 1]) * (2.0 / c as f64).sqrt()).unwrap();
            let b1 = randn(&[inner]);
            let w2 =
                (randn(&[growth, inner, 3, 3, 3]) * (2.0 / (27 * inner) as f64).sqrt()).unwrap();
            params.push((scale, shift, w1, b1, w2));
        }
        // Reference: the same layers through the naive convolution and a concatenation.
        let mut h = x.clone();
        let (cfg1, cfg2) = (Conv3dConfig::default(), Conv3dConfig::symmetric(1, 1));
        for (scale, shift, w1, b1, w2) in &params {
            let a = scale_shift_relu(&h, scale, shift).unwrap();
            let mid = naive_conv(&a, w1, Some(b1), &cfg1, true);
            let mid =
                Tensor::from_vec(mid, (n, inner, dims[0], dims[1], dims[2]), &Device::Cpu).unwrap();
            let new = naive_conv(&mid, w2, None, &cfg2, false);
            let new = Tensor::from_vec(new, (n, growth, dims[0], dims[1], dims[2]), &Device::Cpu)
                .unwrap();
            h = Tensor::cat(&[&h, &new], 1).unwrap();
        }
        let want = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for e in engines() {
            let layers: Vec<DenseLayerCpu> = params
                .iter()
                .map(|(s, t, w1, b1, w2)| {
                    let c1 = ConvParams {
                        weight: w1,
                        bias: Some(b1),
                        cfg: &cfg1,
                    };
                    let c2 = ConvParams {
                        weight: w2,
                        bias: None,
                        cfg: &cfg2,
                    };
                    DenseLayerCpu::with_engine(e, s, t, c1, c2)
                        .unwrap()
                        .unwrap()
                })
                .collect();
            let got = dense_block(&x, &layers).unwrap();
            assert_eq!(got.dims(), h.dims());
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "{e:?}: differs by {d}");
        }
    }
}
