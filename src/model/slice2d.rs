//! The paper's 2-D networks: a 2-D backbone runs on every axial slice, its globally average-pooled
//! features are max-pooled across slices, then one linear layer (Li et al.'s COVNet reduction,
//! which the paper uses for all seven 2-D architectures).
//!
//! A 2-D network on every slice is the same computation as a network of (1, k, k) kernels over
//! the volume, so the backbones are the 3-D engine's layers with depth-1 kernels
//! ([`super::Spatial::D2`]), which every family ([`super::densenet`], [`super::resnet`],
//! [`super::inception`]) takes as a mode. Weights are 2-D checkpoints' (`(C_out, C_in, k, k)`
//! convolutions) with torchvision's names (MONAI's too for DenseNets).
//!
//! The reduction has two forms with the same value: [`slice_max_features`] for inference (a
//! chunk of slices at a time) and `slice_max` for training (the gradient of tied maxima shared).

use candle_core::{Result as CResult, Tensor};

/// Slices per backbone call. Bounds the activations' memory (a 2-D DenseNet on all 128 slices of
/// 240 x 240 would hold several GB at once) while each call still has work for every core.
pub const SLICE_CHUNK: usize = 16;

/// The slice reduction: `features` maps a `(N, C, d, H, W)` stack of slices to its per-slice
/// feature maps `(N, F, d, h, w)`; they are averaged over `(h, w)` and max-pooled over all `D`
/// slices of `x`, giving `(N, F)`. The slices go through `features` [`SLICE_CHUNK`] at a time.
pub fn slice_max_features(
    x: &Tensor,
    features: impl Fn(&Tensor) -> CResult<Tensor>,
) -> CResult<Tensor> {
    let (n, _, d, _, _) = x.dims5()?;
    let mut acc: Option<Tensor> = None;
    let mut start = 0;
    while start < d {
        let len = SLICE_CHUNK.min(d - start);
        let f = features(&x.narrow(2, start, len)?)?;
        let (_, c, fd, h, w) = f.dims5()?;
        if fd != len {
            candle_core::bail!("slice reduction: the backbone turned {len} slices into {fd}");
        }
        let pooled = f.reshape((n, c, fd, h * w))?.mean(3)?.max(2)?;
        acc = Some(match acc {
            None => pooled,
            Some(a) => a.maximum(&pooled)?,
        });
        start += len;
    }
    match acc {
        Some(f) => Ok(f),
        None => candle_core::bail!("slice reduction: the input has no slices"),
    }
}

/// The paper's 2-D reduction of per-slice feature maps `(N, C, D, h, w)` to `(N, C)`: each
/// slice's average, then the maximum over slices. The gradient of tied maxima is shared evenly
/// among them, as PyTorch's `amax` shares it (ties do happen: slices whose features a narrow
/// layer zeroed end up equal).
pub(crate) fn slice_max(h: &Tensor) -> CResult<Tensor> {
    let (n, c, d, ..) = h.dims5()?;
    let means = h.reshape((n, c, d, ()))?.mean(3)?;
    let fixed = means.detach();
    let top = fixed.max_keepdim(2)?;
    let tied = fixed.broadcast_eq(&top)?.to_dtype(means.dtype())?;
    let share = tied.broadcast_div(&tied.sum_keepdim(2)?)?;
    (means * share)?.sum(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{expected_tensors_named, Arch, Naming, NetworkConfig};

    #[test]
    fn published_sizes() {
        // torchvision densenet121/169/201(num_classes=1000).
        for (arch, want) in [
            (Arch::DenseNet121_2d, 7_978_856),
            (Arch::DenseNet169_2d, 14_149_480),
            (Arch::DenseNet201_2d, 20_013_928),
        ] {
            let cfg = NetworkConfig::new(arch, 3, 1000);
            let n: usize = expected_tensors_named(&cfg, Naming::Torchvision)
                .unwrap()
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(n, want, "{arch}");
        }
    }

    #[test]
    fn reduction_is_a_max_over_slices_of_means() {
        let dev = candle_core::Device::Cpu;
        // (N=1, C=1, D=40, H=1, W=2): slice d holds (d, -d) except slice 33 (beyond one chunk).
        let mut v: Vec<f32> = (0..40).flat_map(|d| [d as f32, -(d as f32)]).collect();
        v[66] = 100.0;
        v[67] = 0.0;
        let x = Tensor::from_vec(v, (1, 1, 40, 1, 2), &dev).unwrap();
        let f = slice_max_features(&x, |s| Ok(s.clone())).unwrap();
        assert_eq!(f.to_vec2::<f32>().unwrap(), vec![vec![50.0]]);
        let two = slice_max_features(&x, |s| Tensor::cat(&[s, &s.neg()?], 1)).unwrap();
        assert_eq!(two.to_vec2::<f32>().unwrap(), vec![vec![50.0, 0.0]]);
    }
}
