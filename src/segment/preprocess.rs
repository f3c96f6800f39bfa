//! nnU-Net's `DefaultPreprocessor.run_case` for inference: transpose, crop to the non-zero
//! region, normalise, resample to the configuration's spacing. nnU-Net v1's
//! `GenericPreprocessor` normalises after resampling instead.
//!
//! Arrays are (z, y, x) as SimpleITK hands them to nnU-Net (a [`Volume`]'s data is already in
//! that order: x fastest), then permuted by `transpose_forward`.

use std::collections::VecDeque;
use std::path::Path;

use super::plans::{Configuration, Normalization, Plans};
use super::resample::{self, Array3};
use super::{SegmentError, Version};
use crate::volume::Volume;

/// A case after preprocessing, with what export needs to undo it.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// One array per input channel, at the configuration's spacing (transposed axes).
    pub data: Vec<Array3>,
    /// The transposed shape before cropping.
    pub shape_before_cropping: [usize; 3],
    /// The crop box in the transposed array: `[start, end)` per axis.
    pub bbox: [[usize; 2]; 3],
    /// The cropped shape, before resampling.
    pub shape_after_cropping: [usize; 3],
    /// The input's spacing in the transposed order.
    pub spacing: [f64; 3],
    /// The spacing the data was resampled to.
    pub target_spacing: [f64; 3],
}

/// The (z, y, x) array of a volume and its spacing in that order.
pub fn zyx(vol: &Volume) -> (Array3, [f64; 3]) {
    let [sx, sy, sz] = vol.size;
    (
        Array3 {
            data: vol.data.iter().map(|&v| f64::from(v)).collect(),
            shape: [sz, sy, sx],
        },
        [vol.spacing[2], vol.spacing[1], vol.spacing[0]],
    )
}

/// `a.transpose(perm)`: output axis `i` is input axis `perm[i]`.
pub fn transpose(a: &Array3, perm: [usize; 3]) -> Array3 {
    let shape = [a.shape[perm[0]], a.shape[perm[1]], a.shape[perm[2]]];
    let st_in = [a.shape[1] * a.shape[2], a.shape[2], 1];
    let st = [st_in[perm[0]], st_in[perm[1]], st_in[perm[2]]];
    let mut data = Vec::with_capacity(a.data.len());
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                data.push(a.data[i * st[0] + j * st[1] + k * st[2]]);
            }
        }
    }
    Array3 { data, shape }
}

/// `create_nonzero_mask`: voxels non-zero in any channel, holes filled as
/// `scipy.ndimage.binary_fill_holes` does (background not 6-connected to the array's border).
pub fn nonzero_mask(channels: &[Array3]) -> Vec<bool> {
    let shape = channels[0].shape;
    let n = shape[0] * shape[1] * shape[2];
    let mut mask = vec![false; n];
    for c in channels {
        for (m, &v) in mask.iter_mut().zip(&c.data) {
            *m |= v != 0.0;
        }
    }
    // Flood the background from the border; whatever background stays unreached is a hole.
    let mut outside = vec![false; n];
    let mut queue = VecDeque::new();
    let idx = |i: usize, j: usize, k: usize| (i * shape[1] + j) * shape[2] + k;
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let border = i == 0
                    || j == 0
                    || k == 0
                    || i + 1 == shape[0]
                    || j + 1 == shape[1]
                    || k + 1 == shape[2];
                let p = idx(i, j, k);
                if border && !mask[p] {
                    outside[p] = true;
                    queue.push_back([i, j, k]);
                }
            }
        }
    }
    while let Some(v) = queue.pop_front() {
        for a in 0..3 {
            for up in [false, true] {
                let mut w = v;
                if up {
                    if w[a] + 1 >= shape[a] {
                        continue;
                    }
                    w[a] += 1;
                } else {
                    if w[a] == 0 {
                        continue;
                    }
                    w[a] -= 1;
                }
                let p = idx(w[0], w[1], w[2]);
                if !mask[p] && !outside[p] {
                    outside[p] = true;
                    queue.push_back(w);
                }
            }
        }
    }
    outside.iter().map(|o| !o).collect()
}

/// `get_bbox_from_mask`: `[min, max + 1)` of the mask per axis; the whole array when it is empty.
fn bbox(mask: &[bool], shape: [usize; 3]) -> [[usize; 2]; 3] {
    let mut lo = shape;
    let mut hi = [0; 3];
    let mut p = 0;
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                if mask[p] {
                    for (a, v) in [i, j, k].into_iter().enumerate() {
                        lo[a] = lo[a].min(v);
                        hi[a] = hi[a].max(v + 1);
                    }
                }
                p += 1;
            }
        }
    }
    if hi.contains(&0) {
        return [[0, shape[0]], [0, shape[1]], [0, shape[2]]];
    }
    [[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]]
}

fn crop(a: &Array3, b: &[[usize; 2]; 3]) -> Array3 {
    let shape = [b[0][1] - b[0][0], b[1][1] - b[1][0], b[2][1] - b[2][0]];
    let mut data = Vec::with_capacity(shape[0] * shape[1] * shape[2]);
    for i in b[0][0]..b[0][1] {
        for j in b[1][0]..b[1][1] {
            let row = (i * a.shape[1] + j) * a.shape[2];
            data.extend_from_slice(&a.data[row + b[2][0]..row + b[2][1]]);
        }
    }
    Array3 { data, shape }
}

fn crop_mask(mask: &[bool], shape: [usize; 3], b: &[[usize; 2]; 3]) -> Vec<bool> {
    let mut out = Vec::new();
    for i in b[0][0]..b[0][1] {
        for j in b[1][0]..b[1][1] {
            let row = (i * shape[1] + j) * shape[2];
            out.extend_from_slice(&mask[row + b[2][0]..row + b[2][1]]);
        }
    }
    out
}

/// Normalises one channel in f32 as nnU-Net does (its `target_dtype`), in place.
fn normalize(
    a: &mut Array3,
    mask: &[bool],
    scheme: Normalization,
    use_mask: bool,
    plans: &Plans,
    plans_path: &Path,
    channel: usize,
) -> Result<(), SegmentError> {
    // nnU-Net computes on float32 arrays; Python floats meet them as float32 (NumPy 2's weak
    // scalars), so each step rounds to f32 as here.
    let mut v: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
    match scheme {
        Normalization::CTNormalization => {
            let p = plans.intensity_properties(plans_path, channel)?;
            let (lo, hi) = (p.percentile_00_5 as f32, p.percentile_99_5 as f32);
            let mean = p.mean as f32;
            let std = (p.std.max(1e-8)) as f32;
            for x in &mut v {
                *x = (x.clamp(lo, hi) - mean) / std;
            }
        }
        Normalization::ZScoreNormalization => {
            let sel: Vec<usize> = if use_mask {
                (0..v.len()).filter(|&i| mask[i]).collect()
            } else {
                (0..v.len()).collect()
            };
            let n = sel.len().max(1) as f64;
            let mean = sel.iter().map(|&i| f64::from(v[i])).sum::<f64>() / n;
            let var = sel
                .iter()
                .map(|&i| (f64::from(v[i]) - mean).powi(2))
                .sum::<f64>()
                / n;
            let (mean, std) = (mean as f32, (var.sqrt() as f32).max(1e-8));
            for &i in &sel {
                v[i] = (v[i] - mean) / std;
            }
        }
        Normalization::NoNormalization => {}
        Normalization::RescaleTo01Normalization => {
            let min = v.iter().copied().fold(f32::INFINITY, f32::min);
            for x in &mut v {
                *x -= min;
            }
            let max = v
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
                .max(1e-8);
            for x in &mut v {
                *x /= max;
            }
        }
        Normalization::RGBTo01Normalization => {
            for x in &mut v {
                *x /= 255.0;
            }
        }
    }
    a.data = v.into_iter().map(f64::from).collect();
    Ok(())
}

/// Preprocesses the channels of one case (all on one grid) for `cfg`, as the nnU-Net `version`
/// does.
pub fn preprocess(
    channels: &[Volume],
    plans: &Plans,
    plans_path: &Path,
    cfg: &Configuration,
    cfg_name: &str,
    version: Version,
) -> Result<Preprocessed, SegmentError> {
    let field = |f: &str, msg: String| SegmentError::Field {
        path: plans_path.into(),
        field: format!("configurations.{cfg_name}.{f}"),
        msg,
    };
    if cfg.normalization_schemes.len() != channels.len() {
        return Err(field(
            "normalization_schemes",
            format!(
                "{} schemes for {} input channels",
                cfg.normalization_schemes.len(),
                channels.len()
            ),
        ));
    }
    let perm: [usize; 3] = match plans.transpose_forward.as_slice() {
        &[a, b, c] => [a, b, c],
        other => {
            return Err(SegmentError::Field {
                path: plans_path.into(),
                field: "transpose_forward".into(),
                msg: format!("{other:?} is not a permutation of 3 axes"),
            })
        }
    };
    let mut arrays = Vec::with_capacity(channels.len());
    let mut spacing_zyx = [0.0; 3];
    for v in channels {
        let (a, s) = zyx(v);
        spacing_zyx = s;
        arrays.push(if perm == [0, 1, 2] {
            a
        } else {
            transpose(&a, perm)
        });
    }
    let spacing = [
        spacing_zyx[perm[0]],
        spacing_zyx[perm[1]],
        spacing_zyx[perm[2]],
    ];
    let shape_before_cropping = arrays[0].shape;
    let mask = nonzero_mask(&arrays);
    let bbox = bbox(&mask, shape_before_cropping);
    let mask = crop_mask(&mask, shape_before_cropping, &bbox);
    let mut arrays: Vec<Array3> = arrays.into_iter().map(|a| crop(&a, &bbox)).collect();
    let shape_after_cropping = arrays[0].shape;
    let target_spacing = match cfg.spacing.as_slice() {
        &[a, b, c] => [a, b, c],
        // A 2-D configuration keeps the spacing of the first axis (slices).
        &[b, c] => [spacing[0], b, c],
        other => return Err(field("spacing", format!("{other:?}: not 2 or 3 axes"))),
    };
    let new_shape = resample::new_shape(shape_after_cropping, spacing, target_spacing);
    let kw = cfg.resampling_fn_data_kwargs;
    let axis = resample::separate_z_axis(kw.force_separate_z, spacing, target_spacing);
    for (c, a) in arrays.iter_mut().enumerate() {
        let use_mask = cfg.use_mask_for_norm.get(c).copied().unwrap_or(false);
        let scheme = cfg.normalization_schemes[c];
        if version == Version::V2 {
            normalize(a, &mask, scheme, use_mask, plans, plans_path, c)?;
        } else {
            for x in &mut a.data {
                if x.is_nan() {
                    *x = 0.0;
                }
            }
        }
        let r = resample::resample(a, new_shape, kw.order, axis, kw.order_z);
        // The preprocessed array is float32.
        *a = Array3 {
            data: r.data.iter().map(|&x| f64::from(x as f32)).collect(),
            shape: r.shape,
        };
        if version == Version::V1 {
            // v1 has no mask-restricted normalisation here (refused at load), so the mask's
            // grid does not matter.
            normalize(a, &mask, scheme, false, plans, plans_path, c)?;
        }
    }
    Ok(Preprocessed {
        data: arrays,
        shape_before_cropping,
        bbox,
        shape_after_cropping,
        spacing,
        target_spacing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_filled_and_the_border_is_not() {
        // A 1 x 5 x 5 ring of non-zero around a zero centre, zero border outside it.
        let mut a = Array3::zeros([3, 5, 5]);
        for i in 0..3 {
            for j in 1..4 {
                for k in 1..4 {
                    a.data[(i * 5 + j) * 5 + k] = 1.0;
                }
            }
        }
        a.data[(5 + 2) * 5 + 2] = 0.0; // enclosed in the middle slice
        let m = nonzero_mask(&[a]);
        assert!(m[(5 + 2) * 5 + 2], "hole filled");
        assert!(!m[0], "border background stays out");
        assert_eq!(bbox(&m, [3, 5, 5]), [[0, 3], [1, 4], [1, 4]]);
    }

    #[test]
    fn transpose_moves_axes() {
        let a = Array3 {
            data: (0..6).map(f64::from).collect(),
            shape: [1, 2, 3],
        };
        let t = transpose(&a, [0, 2, 1]);
        assert_eq!(t.shape, [1, 3, 2]);
        assert_eq!(t.data, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
