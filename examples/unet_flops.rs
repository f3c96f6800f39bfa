//! The nnU-Net forward's arithmetic rate on the CPU, to quote beside the DenseNet-201's share of
//! the FMA peak (`examples/fma_peak.rs`):
//!
//!   cargo run --release --example unet_flops [-- REPEATS]
//!
//! The network is the benchmark model of `tools/bench_nnunet.py` (`scripts/bench-segment.sh`): a
//! 3-D `PlainConvUNet` with features 16, 32, 64, 128, 256, kernels [1,3,3] twice then [3,3,3],
//! strides [1,1,1], [1,2,2], [1,2,2], [2,2,2], [2,2,2], two convolutions per stage, InstanceNorm
//! and LeakyReLU, three classes, on one patch of 1 x 1 x 40 x 160 x 160 (what the sliding window
//! runs thousands of times). The weights are drawn at random: the kernels do the same work for any
//! values. Counted are the multiply-adds of the convolutions and transposed convolutions (2 FLOPs
//! each); InstanceNorm, LeakyReLU and the copies are extra time at no counted FLOPs. The passes
//! run under the prediction's allocator setting (`KeepFreedMemory`). Prints the median forward
//! time and GFLOP/s.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ctgrade::segment::predict::KeepFreedMemory;
use ctgrade::segment::unet::{Nonlin, UNet, UNetConfig, UNetKind};

fn main() -> anyhow::Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let features = vec![16, 32, 64, 128, 256];
    let kernels = vec![[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]];
    let strides = vec![[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]];
    let n = features.len();
    let cfg = UNetConfig {
        kind: UNetKind::Plain,
        dims: 3,
        in_channels: 1,
        num_classes: 3,
        features: features.clone(),
        decoder_kernels: (1..n).map(|s| kernels[n - s - 1]).collect(),
        kernels: kernels.clone(),
        strides: strides.clone(),
        per_stage: vec![2; n],
        per_stage_decoder: vec![2; n - 1],
        conv_bias: true,
        norm_eps: Some(1e-5),
        norm_affine: true,
        nonlin: Some(Nonlin::LeakyRelu(0.01)),
        stem_channels: None,
    };
    let dev = Device::Cpu;
    // The names and shapes from a first build; the network then gets plain (untracked) tensors,
    // as from a checkpoint: variables would take candle's autograd path instead of the fused one.
    let vars = VarMap::new();
    UNet::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev))?;
    let mut weights = HashMap::new();
    for (name, var) in vars
        .data()
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
    {
        weights.insert(name.clone(), Tensor::randn(0f32, 0.05, var.shape(), &dev)?);
    }
    let net = UNet::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
    let patch = [40usize, 160, 160];
    let x = Tensor::randn(0f32, 1.0, (1, 1, patch[0], patch[1], patch[2]), &dev)?;

    // Multiply-adds per convolution: in x out channels x kernel volume x output voxels.
    let vox = |s: [usize; 3]| (s[0] * s[1] * s[2]) as f64;
    let kvol = |k: [usize; 3]| (k[0] * k[1] * k[2]) as f64;
    let mut shapes = Vec::with_capacity(n);
    let mut s = patch;
    let mut macs = 0f64;
    let mut c_in = 1;
    for i in 0..n {
        s = std::array::from_fn(|a| s[a] / strides[i][a]);
        shapes.push(s);
        macs += (c_in * features[i]) as f64 * kvol(kernels[i]) * vox(s);
        macs += (features[i] * features[i]) as f64 * kvol(kernels[i]) * vox(s);
        c_in = features[i];
    }
    for u in 1..n {
        let (below, skip) = (features[n - u], features[n - u - 1]);
        let out = shapes[n - u - 1];
        // Transposed convolution: every output voxel takes one kernel tap per input channel.
        macs += (below * skip) as f64 * vox(out);
        let k = kvol(cfg.decoder_kernels[u - 1]);
        macs += (2 * skip * skip) as f64 * k * vox(out);
        macs += (skip * skip) as f64 * k * vox(out);
    }
    macs += (features[0] * 3) as f64 * vox(patch);
    let gflop = 2.0 * macs / 1e9;

    // As the prediction runs its passes: freed activations reused, not faulted in again.
    let _keep = KeepFreedMemory::new();
    net.forward(&x)?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let y = net.forward(&x)?;
        y.sum_all()?.to_scalar::<f32>()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "PlainConvUNet forward on 1x1x40x160x160: {gflop:.1} GFLOP, median {median:.3} s of {repeats} ({:.3}..{:.3}), {:.1} GFLOP/s, {} threads",
        times[0],
        times[times.len() - 1],
        gflop / median,
        rayon::current_num_threads()
    );
    Ok(())
}
