//! Saliency heat maps: where the networks looked.
//!
//! Grad-CAM (R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", ICCV 2017) on the last convolutional block: the block's activated
//! feature maps `A_k` are weighted by `alpha_k`, the mean over voxels of the gradient of the score
//! with respect to `A_k`, and the map is `ReLU(sum_k alpha_k A_k)`.
//!
//! The networks supported here (3-D DenseNets and ResNets) end in a global average pool and a
//! linear head, `logits = W mean(A) + b`, so the gradient is exact in closed form:
//! `d score / d A_k(v) = sum_j (d score / d logit_j) W_jk / Z` for every voxel `v` of the `Z`
//! voxels, and `alpha_k` is that value. No backward pass through the network is needed, which
//! keeps the inference kernels (and the GPU path) unchanged; a unit test checks the closed form
//! against candle's autograd. The score is the raw output for the continuous head (Grad-CAM's
//! pre-activation class score) and the COVID-19 probability `sum_c P(c) (c - 1) / 4` for the
//! categorical one.
//!
//! Each member's map is scaled to a maximum of 1, the members' maps are averaged and the mean is
//! scaled to a maximum of 1 again. [`to_grid`] maps the result from the network input back to any
//! grid (the CT's): through the crop, the slice sampling and the resampling, with trilinear
//! interpolation; outside the crop box and the kept slices the heat is 0.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::grading::Head;
use crate::model::{Arch, CamFeatures, Family};
use crate::preprocess::resample::{Grid, IndexMap};
use crate::preprocess::{PreprocessError, PreprocessReport};
use crate::volume::Volume;

/// Why a heat map cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum HeatMapError {
    /// The architecture does not end in a linear head on globally pooled feature maps.
    #[error("heat map not supported for {0} (only 3-D DenseNets and 3-D ResNets)")]
    Unsupported(String),
    /// Maps of different shapes (members of different architectures) or an empty ensemble.
    #[error("Grad-CAM maps cannot be averaged: {0}")]
    Shape(String),
    /// The preprocessing geometry cannot be inverted.
    #[error("cannot map the heat map back to the CT's grid: {0}")]
    Geometry(PreprocessError),
}

/// Whether heat maps can be made for `arch`: its networks end in a global average pool and a
/// linear head ([`crate::model::Classifier::cam_features`]).
pub fn supported(arch: Arch) -> bool {
    matches!(arch.family(), Family::DenseNet3d | Family::ResNet3d)
}

/// A Grad-CAM map on the last block's grid, `(d, h, w)` row-major (w fastest), values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    /// Size `[d, h, w]` (z, y, x of the network input, downsampled).
    pub size: [usize; 3],
    /// Values, `w` fastest.
    pub data: Vec<f32>,
}

impl Cam {
    /// The element-wise mean of `maps`, scaled to a maximum of 1 (all zero when every map is).
    pub fn mean(maps: &[Cam]) -> Result<Cam, HeatMapError> {
        let first = maps
            .first()
            .ok_or_else(|| HeatMapError::Shape("no maps".into()))?;
        let mut data = vec![0f32; first.data.len()];
        for m in maps {
            if m.size != first.size || m.data.len() != data.len() {
                return Err(HeatMapError::Shape(format!(
                    "{:?} and {:?}",
                    first.size, m.size
                )));
            }
            for (d, v) in data.iter_mut().zip(&m.data) {
                *d += v;
            }
        }
        normalise(&mut data);
        Ok(Cam {
            size: first.size,
            data,
        })
    }

    fn at(&self, z: usize, y: usize, x: usize) -> f32 {
        self.data[x + self.size[2] * (y + self.size[1] * z)]
    }

    /// Trilinear value at continuous index `(z, y, x)`, clamped to the map.
    fn sample(&self, c: [f64; 3]) -> f32 {
        let mut i0 = [0usize; 3];
        let mut f = [0f32; 3];
        for k in 0..3 {
            let n = self.size[k];
            let v = c[k].clamp(0.0, (n - 1) as f64);
            i0[k] = (v.floor() as usize).min(n.saturating_sub(2));
            f[k] = (v - i0[k] as f64).clamp(0.0, 1.0) as f32;
        }
        let i1 = [0, 1, 2].map(|k| (i0[k] + 1).min(self.size[k] - 1));
        let mut acc = 0.0;
        for (z, wz) in [(i0[0], 1.0 - f[0]), (i1[0], f[0])] {
            for (y, wy) in [(i0[1], 1.0 - f[1]), (i1[1], f[1])] {
                for (x, wx) in [(i0[2], 1.0 - f[2]), (i1[2], f[2])] {
                    acc += wz * wy * wx * self.at(z, y, x);
                }
            }
        }
        acc.clamp(0.0, 1.0)
    }
}

/// Scales non-negative values to a maximum of 1 (left as they are when all are 0).
fn normalise(data: &mut [f32]) {
    let max = data.iter().copied().fold(0f32, f32::max);
    if max > 0.0 && max.is_finite() {
        data.iter_mut().for_each(|v| *v /= max);
    }
}

/// Gradient of the score with respect to the raw outputs, given the activated `output`.
fn score_gradient(head: Head, output: &[f64]) -> Vec<f32> {
    match head {
        Head::Continuous => vec![1.0; output.len()],
        Head::Categorical => {
            // s = sum_j P_j j/4 with P = softmax(logits): ds/dlogit_j = P_j (j/4 - s).
            let s: f64 = output
                .iter()
                .enumerate()
                .map(|(j, p)| p * j as f64 / 4.0)
                .sum();
            output
                .iter()
                .enumerate()
                .map(|(j, p)| (p * (j as f64 / 4.0 - s)) as f32)
                .collect()
        }
    }
}

/// One member's Grad-CAM map (first item of the batch), scaled to a maximum of 1; `output` is the
/// member's activated output for that item (sigmoid or softmax of `parts.logits`).
pub fn grad_cam(head: Head, parts: &CamFeatures, output: &[f64]) -> candle_core::Result<Cam> {
    let maps = parts.maps.to_dtype(DType::F32)?.get(0)?;
    let (c, d, h, w) = maps.dims4()?;
    let device = maps.device();
    let grad = score_gradient(head, output);
    let k = grad.len();
    let grad = Tensor::from_vec(grad, (1, k), device)?;
    let weight = parts.weight.to_dtype(DType::F32)?;
    let z = (d * h * w) as f64;
    // alpha_k = sum_j g_j W_jk / Z.
    let alpha = (grad.matmul(&weight)? / z)?.reshape((c, 1, 1, 1))?;
    let cam = maps.broadcast_mul(&alpha)?.sum(0)?.relu()?;
    let mut data = cam
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    normalise(&mut data);
    Ok(Cam {
        size: [d, h, w],
        data,
    })
}

/// The resampled grid preprocessing produced (see [`PreprocessReport`]).
pub fn resampled_grid(report: &PreprocessReport) -> Grid {
    Grid {
        size: report.resampled_size,
        spacing: [report.spec.spacing_mm; 3],
        origin: report.resampled_origin,
        direction: report.resampled_direction,
    }
}

/// Maps `cam` (on the network input of a case preprocessed as `report` says) onto `target`, a
/// grid in the same physical space (the CT's): each target voxel's position on the resampled grid,
/// then on the network input (crop box, kept slices sampled uniformly), then on the map
/// (half-voxel aligned), where it is interpolated trilinearly. Values in [0, 1]; 0 outside the
/// crop box and the kept slices.
pub fn to_grid(
    cam: &Cam,
    report: &PreprocessReport,
    target: &Grid,
) -> Result<Volume, HeatMapError> {
    if cam.size.contains(&0) || cam.data.len() != cam.size.iter().product::<usize>() {
        return Err(HeatMapError::Shape(format!("empty map {:?}", cam.size)));
    }
    let map = IndexMap::between(target, &resampled_grid(report)).map_err(HeatMapError::Geometry)?;
    let spec = &report.spec;
    let input = [spec.slices, spec.crop_xy[1], spec.crop_xy[0]];
    let [k0, k1] = report.kept_z_range;
    let kept = (k1 - k0 + 1) as f64;
    let s = spec.slices as f64;
    let x0 = report.crop_box.x[0] as f64;
    let y0 = report.crop_box.y[0] as f64;
    // Input index to map index: the map's voxel centres sit at the centres of the input blocks
    // they summarise.
    let to_cam = |v: f64, k: usize| (v + 0.5) * cam.size[k] as f64 / input[k] as f64 - 0.5;
    let [nx, ny, _] = target.size;
    let mut data = vec![0f32; target.len()];
    data.par_chunks_mut(nx).enumerate().for_each(|(row, out)| {
        let (start, step) = map.row(row % ny, row / ny);
        for (x, o) in out.iter_mut().enumerate() {
            let g = [0, 1, 2].map(|k| start[k] + step[k] * x as f64);
            let (ix, iy) = (g[0] - x0, g[1] - y0);
            let inside = ix >= -0.5
                && ix < input[2] as f64 - 0.5
                && iy >= -0.5
                && iy < input[1] as f64 - 0.5
                && g[2] >= k0 as f64 - 0.5
                && g[2] < k1 as f64 + 0.5;
            if !inside {
                continue;
            }
            // Inverse of the uniform slice sampling (`preprocess::uniform_indices`).
            let iz = if kept > 1.0 && s > 1.0 {
                (g[2] - k0 as f64) * (s - 1.0) / (kept - 1.0)
            } else {
                (s - 1.0) / 2.0
            };
            *o = cam.sample([to_cam(iz, 0), to_cam(iy, 1), to_cam(ix, 2)]);
        }
    });
    Ok(Volume {
        data,
        size: target.size,
        spacing: target.spacing,
        origin: target.origin,
        direction: target.direction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 1000) as f32 / 500.0 - 0.6
            })
            .collect()
    }

    /// The closed-form Grad-CAM weights equal the mean gradients candle's autograd computes.
    #[test]
    fn closed_form_matches_autograd() {
        for head in [Head::Continuous, Head::Categorical] {
            let (c, d, h, w, k) = (6, 2, 3, 4, head.num_outputs());
            let dev = Device::Cpu;
            let maps = Tensor::from_vec(values(c * d * h * w, 7), (1, c, d, h, w), &dev)
                .unwrap()
                .relu()
                .unwrap();
            let maps = Var::from_tensor(&maps).unwrap();
            let weight = Tensor::from_vec(values(k * c, 3), (k, c), &dev).unwrap();
            let bias = Tensor::from_vec(values(k, 5), k, &dev).unwrap();
            let pooled = maps
                .as_tensor()
                .reshape((1, c, ()))
                .unwrap()
                .mean(2)
                .unwrap();
            let logits = pooled
                .matmul(&weight.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let (score, output) = match head {
                Head::Continuous => (
                    logits.sum_all().unwrap(),
                    candle_nn::ops::sigmoid(&logits).unwrap(),
                ),
                Head::Categorical => {
                    let p = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
                    let ramp = Tensor::new(&[0f32, 0.25, 0.5, 0.75, 1.0], &dev).unwrap();
                    (p.broadcast_mul(&ramp).unwrap().sum_all().unwrap(), p)
                }
            };
            let grads = score.backward().unwrap();
            let g = grads.get(maps.as_tensor()).unwrap().get(0).unwrap();
            let alpha = g.reshape((c, ())).unwrap().mean(1).unwrap();
            let mut expected = maps
                .as_tensor()
                .get(0)
                .unwrap()
                .broadcast_mul(&alpha.reshape((c, 1, 1, 1)).unwrap())
                .unwrap()
                .sum(0)
                .unwrap()
                .relu()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            normalise(&mut expected);
            let output: Vec<f64> = output
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let parts = CamFeatures {
                maps: maps.as_tensor().clone(),
                weight,
                logits,
            };
            let cam = grad_cam(head, &parts, &output).unwrap();
            assert_eq!(cam.size, [d, h, w]);
            assert!(
                expected.iter().any(|&v| v > 0.0),
                "{head:?}: degenerate test"
            );
            for (a, b) in cam.data.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{head:?}: {a} vs {b}");
            }
        }
    }

    /// A map at the input's resolution with one hot voxel lands on that voxel's place on the
    /// resampled grid: crop offset, axis order and kept slices undone.
    #[test]
    fn to_grid_inverts_crop_and_slices() {
        use crate::preprocess::orient::Orientation;
        use crate::preprocess::{CropBox, InputSpec, StageSeconds};
        let spec = InputSpec {
            spacing_mm: 2.0,
            crop_xy: [6, 5],
            slices: 4,
            ..InputSpec::default()
        };
        let report = PreprocessReport {
            spec: spec.clone(),
            input_size: [10, 9, 8],
            input_spacing: [2.0; 3],
            orientation: Orientation::of(&crate::volume::IDENTITY).unwrap(),
            oblique_resampled: false,
            resampled_size: [10, 9, 8],
            resampled_origin: [1.0, -3.0, 5.0],
            resampled_direction: crate::volume::IDENTITY,
            lung_volume_ml: 0.0,
            lung_volume_right_ml: 0.0,
            lung_volume_left_ml: 0.0,
            lung_components: 0,
            lung_z_range: [3, 6],
            kept_z_range: [3, 6],
            kept_z_mm: [0.0, 0.0],
            crop_box: CropBox {
                x: [2, 8],
                y: [-1, 4],
            },
            sampled_slices: vec![3, 4, 5, 6],
            seconds: StageSeconds::default(),
        };
        let (z, y, x) = (2, 3, 4);
        let mut cam = Cam {
            size: [4, 5, 6],
            data: vec![0.0; 120],
        };
        cam.data[x + 6 * (y + 5 * z)] = 1.0;
        let grid = resampled_grid(&report);
        let heat = to_grid(&cam, &report, &grid).unwrap();
        let at = |i: usize, j: usize, k: usize| heat.data[i + 10 * (j + 9 * k)];
        assert_eq!(at(2 + x, y - 1, 3 + z), 1.0);
        let total: f32 = heat.data.iter().sum();
        assert_eq!(total, 1.0, "only that voxel is hot");
        // Outside the kept slices and the crop box: nothing.
        assert_eq!(at(2 + x, y - 1, 2), 0.0);
        assert_eq!(at(1, y - 1, 3 + z), 0.0);
    }

    #[test]
    fn supported_architectures() {
        assert!(supported(Arch::DenseNet201_3d));
        assert!(supported(Arch::ResNet18_3d));
        assert!(!supported(Arch::DenseNet121_2d));
        assert!(!supported(Arch::InceptionV1_3d));
    }

    #[test]
    fn mean_rescales_and_checks_shapes() {
        let a = Cam {
            size: [1, 1, 2],
            data: vec![1.0, 0.0],
        };
        let b = Cam {
            size: [1, 1, 2],
            data: vec![0.0, 0.5],
        };
        assert_eq!(Cam::mean(&[a.clone(), b]).unwrap().data, vec![1.0, 0.5]);
        let c = Cam {
            size: [1, 2, 1],
            data: vec![0.0, 1.0],
        };
        assert!(Cam::mean(&[a, c]).is_err());
        assert!(Cam::mean(&[]).is_err());
    }
}
