//! Reduced precision (`--precision bf16|f16`) against f32: the same random DenseNet-201 3-D and
//! input in the three formats, on the CPU (convolutions in f32 on the 16-bit values, the other
//! ops in candle's 16-bit kernels; a GPU computes the same formats with its own accumulation
//! order). The measured differences are printed (run with `--nocapture`) and bounded; the
//! ensemble-level effect on CO-RADS is measured by `scripts/precision-check.sh`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ctgrade::device::Precision;
use ctgrade::model::{self, probe::random_weights, Arch, NetworkConfig};

/// Sigmoid outputs of `arch` (random weights and input, shared by the three) in each precision.
fn outputs(arch: Arch, shape: &[usize]) -> Vec<(Precision, Vec<f32>)> {
    let dev = Device::Cpu;
    let cfg = NetworkConfig::new(arch, 3, 4);
    let weights = random_weights(&cfg, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
    [Precision::F32, Precision::Bf16, Precision::F16]
        .into_iter()
        .map(|p| {
            let vb = VarBuilder::from_tensors(weights.clone(), p.dtype(), &dev);
            let net = model::build(&cfg, vb).unwrap();
            let y = net
                .forward(&x.to_dtype(p.dtype()).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let y = candle_nn::ops::sigmoid(&y).unwrap();
            (p, y.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn densenet201_in_bf16_and_f16_stays_close_to_f32() {
    // Two cases of a reduced input, to keep the test fast: still 201 layers of rounding.
    let outs = outputs(Arch::DenseNet201_3d, &[2, 3, 32, 32, 32]);
    let f32_out = &outs[0].1;
    assert!(f32_out.iter().all(|v| v.is_finite()));
    let (lo, hi) = f32_out
        .iter()
        .fold((1f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    println!("densenet201-3d f32: sigmoid outputs in [{lo:.3}, {hi:.3}]");
    for (p, out) in &outs[1..] {
        let d = max_abs_diff(out, f32_out);
        println!(
            "densenet201-3d {p}: max |sigmoid - f32 sigmoid| = {d:.2e} over {} outputs",
            out.len()
        );
        // bf16 keeps 8 significant bits (relative 2^-9 per rounding), f16 11.
        let bound = match p {
            Precision::Bf16 => 5e-2,
            _ => 1e-2,
        };
        assert!(d <= bound, "{p}: {d} > {bound}");
        assert!(d > 0.0, "{p}: identical to f32, so it did not run in {p}");
    }
}
