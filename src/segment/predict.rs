//! nnU-Net's sliding-window prediction (`nnUNetPredictor.predict_logits_from_preprocessed_data`
//! and `inference/sliding_window_prediction.py`) and its export
//! (`inference/export_prediction.py`).
//!
//! nnU-Net accumulates the tiles' logits, the Gaussian weights and the average over folds in
//! float16, on the CPU as on the GPU; each of those sums is rounded to float16 here too, since it
//! changes the probabilities by up to about 1e-3 and can flip labels where two classes are close.
//!
//! nnU-Net v1 (`SegmentationNetwork._internal_predict_3D_3Dconv_tiled`, `predict_cases`,
//! `save_segmentation_nifti_from_softmax`) averages softmax probabilities instead, in float32,
//! weights with a Gaussian of maximum 1 only when there is more than one tile, and resamples the
//! probabilities back after `transpose_backward`; [`Version::V1`] follows it.

use candle_core::{DType, Device, Tensor};
use half::f16;

use super::preprocess::Preprocessed;
use super::resample::{self, Array3};
use super::{ModelFolder, SegmentError, Version};

/// How to predict (nnUNetPredictor's arguments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictOptions {
    /// Tile overlap: steps are at most `tile_step_size` of the patch (nnU-Net's default 0.5).
    pub tile_step_size: f64,
    /// Weight tiles with the Gaussian importance map (default) rather than uniformly.
    pub use_gaussian: bool,
    /// Average over the mirrored inputs along the checkpoint's allowed axes (default).
    pub use_mirroring: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            tile_step_size: 0.5,
            use_gaussian: true,
            use_mirroring: true,
        }
    }
}

fn round16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// A sum as the model's nnU-Net keeps it: float16 in v2, float32 in v1.
fn kept(version: Version, v: f32) -> f32 {
    match version {
        Version::V1 => v,
        Version::V2 => round16(v),
    }
}

/// Labels are written as uint8: at most 256 classes.
fn check_label_count(model: &ModelFolder, classes: usize) -> Result<(), SegmentError> {
    if classes > usize::from(u8::MAX) + 1 {
        return Err(SegmentError::Folder {
            path: model.path.clone(),
            msg: format!("{classes} classes do not fit 8-bit labels"),
        });
    }
    Ok(())
}

/// `compute_steps_for_sliding_window` along one axis.
pub fn steps(image: usize, tile: usize, step_size: f64) -> Vec<usize> {
    let target = tile as f64 * step_size;
    let n = ((image - tile) as f64 / target).ceil() as usize + 1;
    if n <= 1 {
        return vec![0];
    }
    let actual = (image - tile) as f64 / (n - 1) as f64;
    // np.round: half to even.
    (0..n)
        .map(|i| (actual * i as f64).round_ties_even() as usize)
        .collect()
}

/// A delta at the patch centre blurred by scipy's `gaussian_filter` (sigma 1/8 of the patch,
/// truncated at 4 sigma), and its maximum; C-ordered over the patch's 2 or 3 axes.
fn blurred_delta(patch: &[usize]) -> (Vec<f64>, f64) {
    let mut g = vec![1f64];
    for &p in patch {
        let sigma = p as f64 / 8.0;
        let radius = (4.0 * sigma + 0.5) as isize;
        let w: Vec<f64> = (-radius..=radius)
            .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
            .collect();
        let sum: f64 = w.iter().sum();
        let centre = (p / 2) as isize;
        let k: Vec<f64> = (0..p as isize)
            .map(|i| {
                let o = i - centre;
                if o.abs() <= radius {
                    w[(o + radius) as usize] / sum
                } else {
                    0.0
                }
            })
            .collect();
        g = g
            .iter()
            .flat_map(|a| k.iter().map(move |b| a * b))
            .collect();
    }
    let max = g.iter().copied().fold(0.0, f64::max);
    (g, max)
}

/// Zeros replaced by the smallest non-zero value.
fn no_zeros(mut g: Vec<f32>) -> Vec<f32> {
    let min_nonzero = g
        .iter()
        .copied()
        .filter(|&v| v != 0.0)
        .fold(f32::INFINITY, f32::min);
    for v in &mut g {
        if *v == 0.0 {
            *v = min_nonzero;
        }
    }
    g
}

/// `compute_gaussian(patch, sigma_scale=1/8, value_scaling_factor=10)` as float16 values: the
/// blurred delta scaled to a maximum of 10, rounded to float16, zeros replaced by the smallest
/// non-zero value.
pub fn gaussian(patch: &[usize]) -> Vec<f32> {
    let (g, max) = blurred_delta(patch);
    no_zeros(
        g.iter()
            .map(|v| round16((v / (max / 10.0)) as f32))
            .collect(),
    )
}

/// nnU-Net v1's `_get_gaussian(patch, sigma_scale=1/8)`: the blurred delta with maximum 1 as
/// float32, zeros replaced by the smallest non-zero value.
pub fn gaussian_v1(patch: &[usize]) -> Vec<f32> {
    let (g, max) = blurred_delta(patch);
    no_zeros(g.iter().map(|v| (v / max) as f32).collect())
}

/// The mirrored passes: every non-empty combination of the allowed axes, by size then order
/// (`itertools.combinations`), as tensor dimensions of a batch (spatial axes from dimension 2).
fn mirror_combinations(axes: &[usize]) -> Vec<Vec<usize>> {
    let dims: Vec<usize> = axes.iter().map(|a| a + 2).collect();
    let mut out = Vec::new();
    for size in 1..=dims.len() {
        let mut idx: Vec<usize> = (0..size).collect();
        loop {
            out.push(idx.iter().map(|&i| dims[i]).collect());
            // Next combination in lexicographic order.
            let mut i = size;
            while i > 0 && idx[i - 1] == dims.len() - size + i - 1 {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            idx[i - 1] += 1;
            for j in i..size {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    out
}

/// nnU-Net v1's mirrored passes (`_internal_maybe_mirror_and_pred_3D`/`_2D`): pass `m` flips the
/// axes of its set bits, bit 0 the last spatial axis; a pass runs only where all its axes are
/// allowed. `n_axes` is the network's spatial dimensionality.
fn mirror_combinations_v1(axes: &[usize], n_axes: usize) -> Vec<Vec<usize>> {
    (1..1usize << n_axes)
        .filter_map(|m| {
            let flips: Vec<usize> = (0..n_axes)
                .filter(|b| m & (1 << b) != 0)
                .map(|b| n_axes - 1 - b)
                .collect();
            flips
                .iter()
                .all(|a| axes.contains(a))
                .then(|| flips.iter().map(|a| a + 2).collect())
        })
        .collect()
}

/// v1's pass over one tile: per pass the softmax, weighted by one over the number of passes and
/// summed (f32).
fn mirrored_softmax_v1(
    net: &super::UNet,
    x: &Tensor,
    combos: &[Vec<usize>],
) -> candle_core::Result<Tensor> {
    let w = 1.0 / (combos.len() + 1) as f64;
    let mut y = (candle_nn::ops::softmax(&net.forward(x)?, 1)? * w)?;
    for dims in combos {
        let p = candle_nn::ops::softmax(&net.forward(&x.flip(dims)?)?, 1)?.flip(dims)?;
        y = (y + (p * w)?)?;
    }
    Ok(y)
}

/// One network on one tile with mirroring: the identity pass plus every mirrored pass, summed in
/// that order and divided by their number, in f32 (`_internal_maybe_mirror_and_predict`).
fn mirrored_forward(
    net: &super::UNet,
    x: &Tensor,
    combos: &[Vec<usize>],
) -> candle_core::Result<Tensor> {
    let mut y = net.forward(x)?;
    for dims in combos {
        y = (y + net.forward(&x.flip(dims)?)?.flip(dims)?)?;
    }
    if combos.is_empty() {
        Ok(y)
    } else {
        y / (combos.len() + 1) as f64
    }
}

/// The sliding-window logits of one network over the preprocessed data, float16-rounded as
/// nnU-Net keeps them (v1: the probabilities, in f32): `(classes, Z, Y, X)` flattened per
/// class. `patch` is 3-D; a 2-D network (`two_d`) has patch depth 1 and runs on every slice.
#[allow(clippy::too_many_arguments)]
fn sliding_window(
    net: &super::UNet,
    data: &[Array3],
    patch: [usize; 3],
    two_d: bool,
    combos: &[Vec<usize>],
    opts: &PredictOptions,
    version: Version,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let v1 = version == Version::V1;
    let round = |v: f32| kept(version, v);
    let shape = data[0].shape;
    let classes = net.config().num_classes;
    // pad_nd_image: constant 0 up to the patch, the odd voxel after.
    let padded: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let below: [usize; 3] = std::array::from_fn(|a| (padded[a] - shape[a]) / 2);
    let n_pad = padded[0] * padded[1] * padded[2];
    let mut input = vec![0f32; data.len() * n_pad];
    for (c, a) in data.iter().enumerate() {
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                let src = (i * shape[1] + j) * shape[2];
                let dst =
                    c * n_pad + ((i + below[0]) * padded[1] + j + below[1]) * padded[2] + below[2];
                for k in 0..shape[2] {
                    input[dst + k] = a.data[src + k] as f32;
                }
            }
        }
    }
    let input = Tensor::from_vec(
        input,
        (1, data.len(), padded[0], padded[1], padded[2]),
        device,
    )?;
    let st: [Vec<usize>; 3] = std::array::from_fn(|a| {
        if two_d && a == 0 {
            // 2-D: every slice, in order.
            (0..padded[0]).collect()
        } else {
            steps(padded[a], patch[a], opts.tile_step_size)
        }
    });
    let spatial = if two_d { &patch[1..] } else { &patch[..] };
    // v1 counts the tiles of one slice in 2-D, and weights uniformly when there is one.
    let tiles = st[1].len() * st[2].len() * if two_d { 1 } else { st[0].len() };
    let g = match (opts.use_gaussian, v1) {
        (true, false) => gaussian(spatial),
        (true, true) if tiles > 1 => gaussian_v1(spatial),
        _ => vec![1.0; patch[0] * patch[1] * patch[2]],
    };
    let mut acc = vec![0f32; classes * n_pad];
    let mut weight = vec![0f32; n_pad];
    let n_patch = patch[0] * patch[1] * patch[2];
    for &sz in &st[0] {
        for &sy in &st[1] {
            for &sx in &st[2] {
                let x = input
                    .narrow(2, sz, patch[0])?
                    .narrow(3, sy, patch[1])?
                    .narrow(4, sx, patch[2])?
                    .contiguous()?;
                let x = if two_d { x.squeeze(2)? } else { x };
                let y = if v1 {
                    mirrored_softmax_v1(net, &x, combos)?
                } else {
                    mirrored_forward(net, &x, combos)?
                };
                let y: Vec<f32> = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                for i in 0..patch[0] {
                    for j in 0..patch[1] {
                        let row = ((sz + i) * padded[1] + sy + j) * padded[2] + sx;
                        let prow = (i * patch[1] + j) * patch[2];
                        for k in 0..patch[2] {
                            let gw = g[prow + k];
                            for c in 0..classes {
                                let p = y[c * n_patch + prow + k] * gw;
                                let a = &mut acc[c * n_pad + row + k];
                                *a = round(*a + p);
                            }
                            let w = &mut weight[row + k];
                            *w = round(*w + gw);
                        }
                    }
                }
            }
        }
    }
    // Divide, round, and cut the padding off.
    let mut out = vec![vec![0f32; shape[0] * shape[1] * shape[2]]; classes];
    for (c, o) in out.iter_mut().enumerate() {
        let mut q = 0;
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                let row = ((i + below[0]) * padded[1] + j + below[1]) * padded[2] + below[2];
                for k in 0..shape[2] {
                    o[q] = round(acc[c * n_pad + row + k] / weight[row + k]);
                    q += 1;
                }
            }
        }
    }
    Ok(out)
}

/// While it lives, freed memory stays in the process for reuse (glibc only).
///
/// glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mapping and
/// unmaps it on free; a full-resolution tile's activations are 64 to 128 MiB, so each of the
/// thousands of network passes of a case would fault in and zero them again (about a fifth of
/// the run). From the heap, the same blocks are reused from pass to pass: the peak RSS stays
/// that of one pass, since every pass allocates the same sizes in the same order. Dropping the
/// guard hands the free heap back and leaves glibc where its own adaptive thresholds settle once
/// large blocks have been freed (mmap above 32 MiB, trim above 64 MiB): setting any threshold
/// with `mallopt` switches the adaptation off for good, and glibc's initial fixed values (128
/// KiB) would then map and unmap every larger block for the rest of the process, which made
/// training after an in-process segmentation six times slower, nearly all in the kernel. Cases
/// are graded one at a time, so no other thread depends on the setting meanwhile.
pub struct KeepFreedMemory;

impl KeepFreedMemory {
    /// Keeps freed memory in the process until the guard is dropped.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters. A failure leaves glibc's defaults,
        // which are correct, only slower: its result is not needed.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
        Self
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as above; glibc's default M_MMAP_MAX (65536) and the largest thresholds its
        // adaptation reaches on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX, twice that for the
        // trim threshold), then malloc_trim returns the free top of the heap to the system.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 65536);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            libc::malloc_trim(0);
        }
    }
}

/// The logits of every fold on the preprocessed data, averaged (float16, as nnU-Net; v1: the
/// probabilities, averaged in float32): `(classes, Z, Y, X)` as one [`Array3`] per class.
pub fn predict_logits(
    model: &ModelFolder,
    pre: &Preprocessed,
    opts: &PredictOptions,
    device: &Device,
) -> Result<Vec<Array3>, SegmentError> {
    let (patch, two_d) = match model.configuration.patch_size.as_slice() {
        &[a, b, c] => ([a, b, c], false),
        &[b, c] => ([1, b, c], true),
        other => {
            return Err(SegmentError::Field {
                path: model.plans_file.clone(),
                field: format!("configurations.{}.patch_size", model.configuration_name),
                msg: format!("{other:?}: not 2 or 3 axes"),
            })
        }
    };
    let combos = match (&model.mirroring_axes, opts.use_mirroring) {
        (Some(axes), true) => {
            let n_axes = if two_d { 2 } else { 3 };
            if axes.iter().any(|&a| a >= n_axes) {
                return Err(SegmentError::Field {
                    path: model.mirroring_source.clone(),
                    field: "inference_allowed_mirroring_axes".into(),
                    msg: format!("{axes:?} do not fit a {n_axes}-D network"),
                });
            }
            match model.version {
                Version::V1 => mirror_combinations_v1(axes, n_axes),
                Version::V2 => mirror_combinations(axes),
            }
        }
        _ => Vec::new(),
    };
    let round = |v: f32| kept(model.version, v);
    let _keep = KeepFreedMemory::new();
    let shape = pre.data[0].shape;
    let mut sum: Option<Vec<Vec<f32>>> = None;
    for (f, net) in model.nets.iter().enumerate() {
        let logits = sliding_window(
            net,
            &pre.data,
            patch,
            two_d,
            &combos,
            opts,
            model.version,
            device,
        )
        .map_err(|e| SegmentError::Folder {
            path: model.path.join(format!("fold_{}", model.folds[f])),
            msg: format!("prediction failed: {e}"),
        })?;
        sum = Some(match sum {
            None => logits,
            Some(mut s) => {
                for (a, b) in s.iter_mut().zip(&logits) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x = round(*x + *y);
                    }
                }
                s
            }
        });
    }
    let n = model.nets.len() as f32;
    let sum = sum.unwrap_or_default();
    Ok(sum
        .into_iter()
        .map(|v| Array3 {
            data: v
                .into_iter()
                .map(|x| f64::from(if n > 1.0 { round(x / n) } else { x }))
                .collect(),
            shape,
        })
        .collect())
}

/// A prediction on the input's (z, y, x) grid.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The label (class index) per voxel.
    pub labels: Vec<u8>,
    /// Per class, the probability per voxel.
    pub probabilities: Vec<Vec<f32>>,
    /// (z, y, x) shape.
    pub shape: [usize; 3],
}

/// `convert_predicted_logits_to_segmentation_with_correct_shape(return_probabilities=True)`:
/// logits resampled back to the cropped shape (order 1, separate-z rule), softmax, argmax,
/// pasted into the crop box (background probability 1 outside), `transpose_backward`.
pub fn export(
    model: &ModelFolder,
    pre: &Preprocessed,
    logits: &[Array3],
) -> Result<Exported, SegmentError> {
    let kw = model.configuration.resampling_fn_probabilities_kwargs;
    let axis = resample::separate_z_axis(kw.force_separate_z, pre.target_spacing, pre.spacing);
    let target = pre.shape_after_cropping;
    // Resampled channel by channel and kept as f32 (the values are float16): a full-size CT's
    // logits at f64 would double the peak memory.
    let resampled: Vec<Vec<f32>> = logits
        .iter()
        .map(|l| {
            if l.shape == target {
                l.data.iter().map(|&v| v as f32).collect()
            } else {
                // The output array keeps the logits' dtype: float16.
                let r = resample::resample(l, target, kw.order, axis, kw.order_z);
                r.data.iter().map(|&v| round16(v as f32)).collect()
            }
        })
        .collect();
    let classes = resampled.len();
    check_label_count(model, classes)?;
    let full = pre.shape_before_cropping;
    let back: [usize; 3] = match model.plans.transpose_backward.as_slice() {
        &[a, b, c] => [a, b, c],
        _ => [0, 1, 2],
    };
    let forward: [usize; 3] =
        std::array::from_fn(|a| back.iter().position(|&b| b == a).unwrap_or(a));
    // The input's own (untransposed) shape and, per transposed axis, its stride there: the
    // outputs are written straight into the input's order (transpose_backward).
    let shape: [usize; 3] = std::array::from_fn(|a| full[back[a]]);
    let orig_strides = [shape[1] * shape[2], shape[2], 1];
    let st: [usize; 3] = std::array::from_fn(|a| orig_strides[forward[a]]);
    let n_full = full[0] * full[1] * full[2];
    let mut labels = vec![0u8; n_full];
    let mut probs: Vec<Vec<f32>> = (0..classes)
        .map(|c| vec![if c == 0 { 1.0 } else { 0.0 }; n_full])
        .collect();
    let b = pre.bbox;
    let mut q = 0;
    let mut z = vec![0f32; classes];
    for i in b[0][0]..b[0][1] {
        for j in b[1][0]..b[1][1] {
            for k in b[2][0]..b[2][1] {
                // torch.softmax in f32 on the float16 logits.
                for (c, zc) in z.iter_mut().enumerate() {
                    *zc = resampled[c][q];
                }
                let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for zc in z.iter_mut() {
                    *zc = (*zc - m).exp();
                    s += *zc;
                }
                let p = i * st[0] + j * st[1] + k * st[2];
                let mut best = 0;
                let mut best_v = f32::NEG_INFINITY;
                for c in 0..classes {
                    let v = z[c] / s;
                    probs[c][p] = v;
                    // argmax of the probabilities: the first maximum.
                    if v > best_v {
                        best = c;
                        best_v = v;
                    }
                }
                labels[p] = best as u8;
                q += 1;
            }
        }
    }
    Ok(Exported {
        labels,
        probabilities: probs,
        shape,
    })
}

/// nnU-Net v1's export (`save_segmentation_nifti_from_softmax` after `predict_cases`' transpose):
/// the averaged probabilities transposed back, resampled to the cropped shape (order 1 and 0
/// along a separate axis by default; float32), argmax, pasted into the crop box (background
/// probability 1 outside).
///
/// v1 chooses the separate axis from the input's spacing and, failing that, from the spacing it
/// resampled to, the latter in the transposed order although the probabilities are already back
/// in the input's order; with a non-identity `transpose_forward` this can pick another axis than
/// v2 would, and ctgrade picks the one v1 does.
pub fn export_v1(
    model: &ModelFolder,
    pre: &Preprocessed,
    probabilities: &[Array3],
) -> Result<Exported, SegmentError> {
    let kw = model.configuration.resampling_fn_probabilities_kwargs;
    let perm: [usize; 3] = match model.plans.transpose_forward.as_slice() {
        &[a, b, c] => [a, b, c],
        _ => [0, 1, 2],
    };
    // Transposed axis i is the input's axis perm[i].
    let mut inverse = [0; 3];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let orig = |a: [usize; 3]| -> [usize; 3] { std::array::from_fn(|k| a[inverse[k]]) };
    let spacing: [f64; 3] = std::array::from_fn(|k| pre.spacing[inverse[k]]);
    let target = orig(pre.shape_after_cropping);
    let full = orig(pre.shape_before_cropping);
    let bbox: [[usize; 2]; 3] = std::array::from_fn(|k| pre.bbox[inverse[k]]);
    let axis = resample::separate_z_axis(kw.force_separate_z, spacing, pre.target_spacing);
    let classes = probabilities.len();
    check_label_count(model, classes)?;
    let resampled: Vec<Vec<f32>> = probabilities
        .iter()
        .map(|p| {
            let p = super::preprocess::transpose(p, inverse);
            if p.shape == target {
                p.data.iter().map(|&v| v as f32).collect()
            } else {
                let r = resample::resample(&p, target, kw.order, axis, kw.order_z);
                r.data.iter().map(|&v| v as f32).collect()
            }
        })
        .collect();
    let n_full = full[0] * full[1] * full[2];
    let mut labels = vec![0u8; n_full];
    let mut probs: Vec<Vec<f32>> = (0..classes)
        .map(|c| vec![if c == 0 { 1.0 } else { 0.0 }; n_full])
        .collect();
    let mut q = 0;
    for i in bbox[0][0]..bbox[0][1] {
        for j in bbox[1][0]..bbox[1][1] {
            let row = (i * full[1] + j) * full[2];
            for k in bbox[2][0]..bbox[2][1] {
                let mut best = 0;
                let mut best_v = f32::NEG_INFINITY;
                for (c, r) in resampled.iter().enumerate() {
                    let v = r[q];
                    probs[c][row + k] = v;
                    if v > best_v {
                        best = c;
                        best_v = v;
                    }
                }
                labels[row + k] = best as u8;
                q += 1;
            }
        }
    }
    Ok(Exported {
        labels,
        probabilities: probs,
        shape: full,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_as_nnunet() {
        // The example in nnU-Net's comment: 110 voxels, patch 64, step 0.5 -> 0, 23, 46.
        assert_eq!(steps(110, 64, 0.5), [0, 23, 46]);
        assert_eq!(steps(64, 64, 0.5), [0]);
        assert_eq!(steps(71, 64, 0.5), [0, 7]);
    }

    #[test]
    fn mirror_combinations_in_itertools_order() {
        let c = mirror_combinations(&[0, 1, 2]);
        assert_eq!(
            c,
            vec![
                vec![2],
                vec![3],
                vec![4],
                vec![2, 3],
                vec![2, 4],
                vec![3, 4],
                vec![2, 3, 4]
            ]
        );
        assert_eq!(mirror_combinations(&[1]), vec![vec![3]]);
    }

    #[test]
    fn v1_mirrors_in_its_pass_order() {
        // m = 1..7: x, y, xy, z, xz, yz, xyz (batch dimensions 4, 3, 2).
        let c = mirror_combinations_v1(&[0, 1, 2], 3);
        assert_eq!(
            c,
            vec![
                vec![4],
                vec![3],
                vec![4, 3],
                vec![2],
                vec![4, 2],
                vec![3, 2],
                vec![4, 3, 2]
            ]
        );
        assert_eq!(
            mirror_combinations_v1(&[1, 2], 3),
            vec![vec![4], vec![3], vec![4, 3]]
        );
        assert_eq!(
            mirror_combinations_v1(&[0, 1], 2),
            vec![vec![3], vec![2], vec![3, 2]]
        );
    }

    #[test]
    fn v1_gaussian_peaks_at_one() {
        let g = gaussian_v1(&[4, 8, 8]);
        assert_eq!(g[(2 * 8 + 4) * 8 + 4], 1.0);
        assert!(g.iter().all(|&v| v > 0.0 && v <= 1.0));
    }

    #[test]
    fn gaussian_peaks_at_ten_in_the_centre() {
        let g = gaussian(&[4, 8, 8]);
        assert_eq!(g[(2 * 8 + 4) * 8 + 4], 10.0);
        assert!(g.iter().all(|&v| v > 0.0));
    }
}
