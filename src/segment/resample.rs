//! nnU-Net's resampling (`preprocessing/resampling/default_resampling.py`,
//! `resample_data_or_seg_to_shape` for data and probabilities), on (z, y, x)-ordered arrays.
//!
//! nnU-Net resizes with skimage's `resize(mode='edge', anti_aliasing=False)`, which is
//! `scipy.ndimage.zoom(order, mode='nearest', grid_mode=True)` followed by a clip to the input's
//! range. zoom is separable: along each axis the output voxel `k` reads the input at
//! `(k + 0.5) * in / out - 0.5`; order 3 interpolates a cubic B-spline whose coefficients come from
//! scipy's prefilter on the input padded by 12 edge values (mirror boundary beyond), order 1 is
//! linear and order 0 rounds half up, both clamping the coordinate to the input. Applying the
//! axes one after another gives the same sums as scipy's tensor-product evaluation, reordered.
//!
//! When the spacing is anisotropic beyond [`ANISO_THRESHOLD`] (the old or, failing that, the new
//! spacing), nnU-Net resamples each slice across the low-resolution axis in 2-D (clipped per
//! slice) and that axis apart with `order_z` (0: nearest), as here.

/// nnU-Net's `ANISO_THRESHOLD`: a spacing ratio above it resamples the low-resolution axis apart.
pub const ANISO_THRESHOLD: f64 = 3.0;

/// Edge padding before scipy's spline prefilter for `mode='nearest'` (`_prepad_for_spline_filter`).
const NPAD: usize = 12;

/// A 3-D array of f64, C order (axis 0 slowest).
#[derive(Clone, Debug, PartialEq)]
pub struct Array3 {
    /// Values, axis 2 fastest.
    pub data: Vec<f64>,
    /// Sizes along axes 0, 1, 2.
    pub shape: [usize; 3],
}

impl Array3 {
    /// An array of zeros.
    pub fn zeros(shape: [usize; 3]) -> Self {
        Self {
            data: vec![0.0; shape[0] * shape[1] * shape[2]],
            shape,
        }
    }

    fn strides(&self) -> [usize; 3] {
        [self.shape[1] * self.shape[2], self.shape[2], 1]
    }

    fn min_max(&self) -> (f64, f64) {
        self.data
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }
}

/// `compute_new_shape`: `round(old_spacing / new_spacing * shape)` per axis (half to even, as
/// Python's `round`).
pub fn new_shape(shape: [usize; 3], old_spacing: [f64; 3], new_spacing: [f64; 3]) -> [usize; 3] {
    let mut out = [0; 3];
    for a in 0..3 {
        out[a] = (old_spacing[a] / new_spacing[a] * shape[a] as f64).round_ties_even() as usize;
    }
    out
}

/// `determine_do_sep_z_and_axis`: the axis to resample apart, if any. A tie for the coarsest
/// spacing (two or three axes) resamples in 3-D.
pub fn separate_z_axis(
    force_separate_z: Option<bool>,
    current_spacing: [f64; 3],
    new_spacing: [f64; 3],
) -> Option<usize> {
    let aniso = |s: &[f64; 3]| {
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = s.iter().copied().fold(f64::INFINITY, f64::min);
        max / min > ANISO_THRESHOLD
    };
    let lowres = |s: &[f64; 3]| -> Option<usize> {
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let axes: Vec<usize> = (0..3).filter(|&a| max / s[a] == 1.0).collect();
        (axes.len() == 1).then(|| axes[0])
    };
    match force_separate_z {
        Some(false) => None,
        Some(true) => lowres(&current_spacing),
        None if aniso(&current_spacing) => lowres(&current_spacing),
        None if aniso(&new_spacing) => lowres(&new_spacing),
        None => None,
    }
}

/// `resample_data_or_seg(data, new_shape, is_seg=False, axis, order, do_separate_z, order_z)` for
/// one channel.
pub fn resample(
    input: &Array3,
    new_shape: [usize; 3],
    order: usize,
    separate_axis: Option<usize>,
    order_z: usize,
) -> Array3 {
    if input.shape == new_shape {
        return input.clone();
    }
    match separate_axis {
        Some(axis) => {
            // In-plane per slice, clipped to each slice's own range, as skimage's resize of a
            // 2-D slice does.
            let plane: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
            let mut mid_shape = new_shape;
            mid_shape[axis] = input.shape[axis];
            let mut mid = Array3::zeros(mid_shape);
            for s in 0..input.shape[axis] {
                let slice = take_slice(input, axis, s);
                let (lo, hi) = slice.min_max();
                let mut r = zoom_axis(&slice, plane[0], new_shape[plane[0]], order);
                r = zoom_axis(&r, plane[1], new_shape[plane[1]], order);
                for v in &mut r.data {
                    *v = v.clamp(lo, hi);
                }
                put_slice(&mut mid, axis, s, &r);
            }
            if mid.shape[axis] == new_shape[axis] {
                mid
            } else {
                // map_coordinates(order=order_z, mode='nearest') with the same grid-centred
                // coordinates as zoom; no clip (scipy's, not skimage's).
                zoom_axis(&mid, axis, new_shape[axis], order_z)
            }
        }
        None => {
            let (lo, hi) = input.min_max();
            let mut r = input.clone();
            for (a, &len) in new_shape.iter().enumerate() {
                r = zoom_axis(&r, a, len, order);
            }
            for v in &mut r.data {
                *v = v.clamp(lo, hi);
            }
            r
        }
    }
}

/// The slice `index` across `axis`, as an array with size 1 along it.
fn take_slice(a: &Array3, axis: usize, index: usize) -> Array3 {
    let mut shape = a.shape;
    shape[axis] = 1;
    let mut out = Array3::zeros(shape);
    let st = a.strides();
    let mut o = 0;
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let mut idx = [i, j, k];
                idx[axis] = index;
                out.data[o] = a.data[idx[0] * st[0] + idx[1] * st[1] + idx[2] * st[2]];
                o += 1;
            }
        }
    }
    out
}

fn put_slice(a: &mut Array3, axis: usize, index: usize, s: &Array3) {
    let st = a.strides();
    let mut o = 0;
    for i in 0..s.shape[0] {
        for j in 0..s.shape[1] {
            for k in 0..s.shape[2] {
                let mut idx = [i, j, k];
                idx[axis] = index;
                a.data[idx[0] * st[0] + idx[1] * st[1] + idx[2] * st[2]] = s.data[o];
                o += 1;
            }
        }
    }
}

/// One axis of `scipy.ndimage.zoom(grid_mode=True, mode='nearest')` to `out_len`.
pub fn zoom_axis(a: &Array3, axis: usize, out_len: usize, order: usize) -> Array3 {
    let n = a.shape[axis];
    let mut shape = a.shape;
    shape[axis] = out_len;
    let mut out = Array3::zeros(shape);
    if n == 0 || out_len == 0 {
        return out;
    }
    let taps = line_taps(n, out_len, order);
    let st_in = a.strides();
    let st_out = out.strides();
    let others: Vec<usize> = (0..3).filter(|&x| x != axis).collect();
    let (o0, o1) = (others[0], others[1]);
    let mut line = vec![0.0; n];
    let mut coef = Vec::new();
    for i in 0..a.shape[o0] {
        for j in 0..a.shape[o1] {
            let base_in = i * st_in[o0] + j * st_in[o1];
            let base_out = i * st_out[o0] + j * st_out[o1];
            for (t, v) in line.iter_mut().enumerate() {
                *v = a.data[base_in + t * st_in[axis]];
            }
            let src: &[f64] = if order > 1 {
                spline_coefficients(&line, &mut coef);
                &coef
            } else {
                &line
            };
            for (k, tap) in taps.iter().enumerate() {
                let mut acc = 0.0;
                for (&idx, &w) in tap.index.iter().zip(&tap.weight) {
                    acc += w * src[idx];
                }
                out.data[base_out + k * st_out[axis]] = acc;
            }
        }
    }
    out
}

/// The input positions and weights of one output voxel along a line.
struct Tap {
    index: Vec<usize>,
    weight: Vec<f64>,
}

/// Taps of every output voxel of a line of `n` inputs zoomed to `out_len`. For order 3 the
/// indices point into the padded coefficient line (`n + 2 * NPAD`).
fn line_taps(n: usize, out_len: usize, order: usize) -> Vec<Tap> {
    let zoom = n as f64 / out_len as f64;
    (0..out_len)
        .map(|k| {
            let c = (k as f64 + 0.5) * zoom - 0.5;
            match order {
                0 => {
                    // Even orders start at floor(c + 0.5); 'nearest' clamps into the line.
                    let i = (c + 0.5).floor().clamp(0.0, (n - 1) as f64) as usize;
                    Tap {
                        index: vec![i],
                        weight: vec![1.0],
                    }
                }
                1 => {
                    let c = c.clamp(0.0, (n - 1) as f64);
                    let i = c.floor() as usize;
                    let t = c - i as f64;
                    let j = (i + 1).min(n - 1);
                    Tap {
                        index: vec![i, j],
                        weight: vec![1.0 - t, t],
                    }
                }
                _ => {
                    // Cubic B-spline on the padded line: coordinate shifted by NPAD, always
                    // inside, so the four coefficients exist.
                    let c = (c + NPAD as f64).clamp(0.0, (n + 2 * NPAD - 1) as f64);
                    let f = c.floor();
                    let t = c - f;
                    let i = f as isize;
                    let len = (n + 2 * NPAD) as isize;
                    let w = [
                        (1.0 - t).powi(3) / 6.0,
                        (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0,
                        (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
                        t * t * t / 6.0,
                    ];
                    let index = (0..4).map(|d| mirror(i - 1 + d, len)).collect();
                    Tap {
                        index,
                        weight: w.to_vec(),
                    }
                }
            }
        })
        .collect()
}

/// scipy's mirror boundary for a spline index (`-1 -> 1`, `len -> len - 2`).
fn mirror(i: isize, len: isize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let mut i = i.rem_euclid(period);
    if i >= len {
        i = period - i;
    }
    i as usize
}

/// Cubic B-spline coefficients of `line` padded by [`NPAD`] edge values on each side, with
/// scipy's mirror-boundary initialisation (`spline_filter1d(order=3, mode='mirror')`).
fn spline_coefficients(line: &[f64], c: &mut Vec<f64>) {
    let n = line.len();
    c.clear();
    c.extend(std::iter::repeat_n(line[0], NPAD));
    c.extend_from_slice(line);
    c.extend(std::iter::repeat_n(line[n - 1], NPAD));
    let m = c.len();
    if m == 1 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    let lambda = (1.0 - z) * (1.0 - 1.0 / z);
    for v in c.iter_mut() {
        *v *= lambda;
    }
    // Causal initialisation (mirror): the sum over the mirrored signal, in closed form.
    let z_n_1 = z.powi(m as i32 - 1);
    let mut z_i = z;
    let mut c0 = c[0] + z_n_1 * c[m - 1];
    for i in 1..m - 1 {
        c0 += z_i * (c[i] + z_n_1 * c[m - 1 - i]);
        z_i *= z;
    }
    c[0] = c0 / (1.0 - z_n_1 * z_n_1);
    for i in 1..m {
        c[i] += z * c[i - 1];
    }
    // Anti-causal initialisation (mirror).
    c[m - 1] = (z * c[m - 2] + c[m - 1]) * z / (z * z - 1.0);
    for i in (0..m - 1).rev() {
        c[i] = z * (c[i + 1] - c[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spline_reproduces_samples_and_linear_ramps() {
        // A cubic B-spline interpolates: at the input's own grid the values come back; a ramp
        // stays a ramp away from the edge padding.
        let line: Vec<f64> = (0..20).map(|i| (i as f64 * 0.7).sin() * 3.0).collect();
        let a = Array3 {
            data: line.clone(),
            shape: [1, 1, 20],
        };
        let same = zoom_axis(&a, 2, 20, 3);
        for (x, y) in same.data.iter().zip(&line) {
            assert!((x - y).abs() < 1e-9, "{x} vs {y}");
        }
    }

    #[test]
    fn separate_z_rule() {
        assert_eq!(
            separate_z_axis(None, [5.0, 1.0, 1.0], [4.0, 1.25, 1.25]),
            Some(0)
        );
        assert_eq!(
            separate_z_axis(None, [2.0, 1.0, 1.0], [4.0, 1.0, 1.0]),
            Some(0)
        );
        assert_eq!(
            separate_z_axis(None, [2.0, 1.0, 1.0], [2.0, 1.0, 1.0]),
            None
        );
        // Two coarsest axes tie: 3-D.
        assert_eq!(
            separate_z_axis(None, [5.0, 5.0, 1.0], [5.0, 5.0, 1.0]),
            None
        );
        assert_eq!(
            separate_z_axis(Some(false), [5.0, 1.0, 1.0], [5.0, 1.0, 1.0]),
            None
        );
    }

    #[test]
    fn new_shape_rounds_half_to_even() {
        assert_eq!(
            new_shape([5, 3, 10], [1.0, 1.0, 1.0], [2.0, 2.0, 1.0]),
            [2, 2, 10]
        );
    }
}
