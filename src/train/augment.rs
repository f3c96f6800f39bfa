//! Data augmentation of the paper on a preprocessed input, on the CPU.
//!
//! One random spatial transform per sample maps every output voxel `p = (z, y, x)` to the input
//! position `A (p - c) + c + t + e(y, x)` (c the volume centre), read with trilinear
//! interpolation (outside the volume: the padding value of the channel):
//! - `A`: zoom `s` in `[1 - zoom, 1 + zoom]` (isotropic), then in the axial plane a rotation in
//!   `±rotation_deg` about the z axis and a shear with both coefficients in `±shear`;
//! - `t`: translation, uniform in `±translate_z` slices and `±translate_xy` voxels in x and y;
//! - `e`: elastic deformation in the axial plane (the same for every slice): a displacement field
//!   with `N(0, elastic_sigma)` values on a coarse `elastic_grid x elastic_grid` lattice,
//!   interpolated with cubic B-splines (smooth);
//!
//! then additive Gaussian noise with a standard deviation drawn in `[0, noise_max]`, on the CT
//! channel only (per voxel, the Irwin-Hall approximation of a normal variate).
//!
//! Distances are given, as in the paper, for its 128 x 240 x 240 input, and scaled to the actual
//! input size ([`AugmentConfig::scaled`]). Everything is a function of the seed: the noise of each
//! voxel is a hash of the seed and its index, so results do not depend on the thread count.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::{fast_normal, hash2, Rng};

/// The paper's input size (D, H, W), to which the distances of [`AugmentConfig`] refer.
pub const REFERENCE_SIZE: [usize; 3] = [128, 240, 240];

/// Ranges of the random augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Zoom: factor uniform in `[1 - zoom, 1 + zoom]`.
    pub zoom: f64,
    /// Rotation about the z axis, uniform in `±rotation_deg`.
    pub rotation_deg: f64,
    /// Shear coefficients in the axial plane, uniform in `±shear`.
    pub shear: f64,
    /// Translation in z (slices at the reference size).
    pub translate_z: f64,
    /// Translation in x and y (voxels at the reference size).
    pub translate_xy: f64,
    /// Elastic displacement standard deviation (voxels at the reference size).
    pub elastic_sigma: f64,
    /// Control points per axis of the elastic lattice.
    pub elastic_grid: usize,
    /// Noise standard deviation drawn uniform in `[0, noise_max]` (input intensity units).
    pub noise_max: f64,
}

impl Default for AugmentConfig {
    /// The paper's ranges; the elastic deformation (which the paper names without parameters)
    /// moves points by about 4 voxels at 240 x 240 on a 5 x 5 lattice.
    fn default() -> Self {
        Self {
            zoom: 0.2,
            rotation_deg: 15.0,
            shear: 0.1,
            translate_z: 2.0,
            translate_xy: 20.0,
            elastic_sigma: 4.0,
            elastic_grid: 5,
            noise_max: 0.01,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            zoom: 0.0,
            rotation_deg: 0.0,
            shear: 0.0,
            translate_z: 0.0,
            translate_xy: 0.0,
            elastic_sigma: 0.0,
            elastic_grid: 5,
            noise_max: 0.0,
        }
    }

    /// Distances converted from the reference size to an input of `dims` (D, H, W): z by
    /// `D / 128`, x and y by `W / 240` (the mean of H and W scales).
    pub fn scaled(&self, dims: [usize; 3]) -> Self {
        let sz = dims[0] as f64 / REFERENCE_SIZE[0] as f64;
        let sxy = (dims[1] as f64 / REFERENCE_SIZE[1] as f64
            + dims[2] as f64 / REFERENCE_SIZE[2] as f64)
            / 2.0;
        Self {
            translate_z: self.translate_z * sz,
            translate_xy: self.translate_xy * sxy,
            elastic_sigma: self.elastic_sigma * sxy,
            ..*self
        }
    }
}

/// The random draws of one augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Input position = `m (p - c) + c + t` (rows z, y, x).
    pub m: [[f64; 3]; 3],
    /// Translation (z, y, x).
    pub t: [f64; 3],
    /// Elastic lattice: (dy, dx) per control point, row-major `grid x grid`.
    pub elastic: Vec<[f64; 2]>,
    /// Lattice size.
    pub grid: usize,
    /// Noise standard deviation.
    pub noise_sigma: f64,
    /// Key of the per-voxel noise.
    pub noise_key: u64,
}

impl Transform {
    /// Draws a transform from `cfg` (already scaled to the input) with `seed`.
    pub fn draw(cfg: &AugmentConfig, seed: u64) -> Self {
        let mut r = Rng::stream(seed, 0xA06);
        let zoom = r.range(1.0 - cfg.zoom, 1.0 + cfg.zoom);
        let theta = r.range(-cfg.rotation_deg, cfg.rotation_deg).to_radians();
        let (shy, shx) = (
            r.range(-cfg.shear, cfg.shear),
            r.range(-cfg.shear, cfg.shear),
        );
        let t = [
            r.range(-cfg.translate_z, cfg.translate_z),
            r.range(-cfg.translate_xy, cfg.translate_xy),
            r.range(-cfg.translate_xy, cfg.translate_xy),
        ];
        // Sampling the input at p / zoom shows the content zoomed by `zoom`.
        let inv = 1.0 / zoom;
        let (c, s) = (theta.cos(), theta.sin());
        // In-plane (y, x): rotation * shear, scaled.
        let rot = [[c, -s], [s, c]];
        let shear = [[1.0, shy], [shx, 1.0]];
        let mut a = [[0.0; 2]; 2];
        for (i, row) in a.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = inv * (rot[i][0] * shear[0][j] + rot[i][1] * shear[1][j]);
            }
        }
        let m = [
            [inv, 0.0, 0.0],
            [0.0, a[0][0], a[0][1]],
            [0.0, a[1][0], a[1][1]],
        ];
        let grid = cfg.elastic_grid.max(2);
        let elastic = (0..grid * grid)
            .map(|_| {
                [
                    r.normal() * cfg.elastic_sigma,
                    r.normal() * cfg.elastic_sigma,
                ]
            })
            .collect();
        let noise_sigma = r.range(0.0, cfg.noise_max);
        Self {
            m,
            t,
            elastic,
            grid,
            noise_sigma,
            noise_key: r.next_u64(),
        }
    }

    /// The elastic displacement (dy, dx) at pixel (y, x) of an `h x w` plane: cubic B-spline
    /// interpolation of the lattice spread over the plane (clamped at the borders).
    fn elastic_at(&self, y: f64, x: f64, h: usize, w: usize) -> [f64; 2] {
        let g = self.grid;
        let gy = y / (h.max(2) - 1) as f64 * (g - 1) as f64;
        let gx = x / (w.max(2) - 1) as f64 * (g - 1) as f64;
        let (iy, ix) = (gy.floor() as i64, gx.floor() as i64);
        let (fy, fx) = (gy - iy as f64, gx - ix as f64);
        let (wy, wx) = (bspline(fy), bspline(fx));
        let mut out = [0.0; 2];
        for (a, wa) in wy.iter().enumerate() {
            let ry = (iy + a as i64 - 1).clamp(0, g as i64 - 1) as usize;
            for (b, wb) in wx.iter().enumerate() {
                let rx = (ix + b as i64 - 1).clamp(0, g as i64 - 1) as usize;
                let v = self.elastic[ry * g + rx];
                out[0] += wa * wb * v[0];
                out[1] += wa * wb * v[1];
            }
        }
        out
    }
}

/// Cubic B-spline weights of the four neighbours at fraction `t`.
fn bspline(t: f64) -> [f64; 4] {
    let t2 = t * t;
    let t3 = t2 * t;
    [
        (1.0 - t).powi(3) / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]
}

/// Augments `src`, `channels` volumes of `dims` (D, H, W) each, channel-major, x fastest.
/// `pad[c]` is the value outside the volume for channel `c`; noise goes to channel 0 only.
pub fn augment(
    src: &[f32],
    channels: usize,
    dims: [usize; 3],
    pad: &[f32],
    tf: &Transform,
) -> Vec<f32> {
    let [d, h, w] = dims;
    let vol = d * h * w;
    let plane = h * w;
    let mut out = vec![0f32; channels * vol];
    if vol == 0 || src.len() < channels * vol {
        return out;
    }
    let c = [0, 1, 2].map(|k| (dims[k] as f64 - 1.0) / 2.0);
    // The elastic field is the same for every slice: compute it once.
    let field: Vec<[f64; 2]> = if tf.elastic.iter().any(|v| v[0] != 0.0 || v[1] != 0.0) {
        (0..plane)
            .into_par_iter()
            .map(|i| tf.elastic_at((i / w) as f64, (i % w) as f64, h, w))
            .collect()
    } else {
        vec![[0.0; 2]; plane]
    };
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(slab, dst)| {
            let (ch, z) = (slab / d, slab % d);
            let data = &src[ch * vol..(ch + 1) * vol];
            let pad = pad.get(ch).copied().unwrap_or(0.0);
            let dz = z as f64 - c[0];
            for y in 0..h {
                let dy = y as f64 - c[1];
                for x in 0..w {
                    let dx = x as f64 - c[2];
                    let e = field[y * w + x];
                    let m = &tf.m;
                    let pz = m[0][0] * dz + m[0][1] * dy + m[0][2] * dx + c[0] + tf.t[0];
                    let py = m[1][0] * dz + m[1][1] * dy + m[1][2] * dx + c[1] + tf.t[1] + e[0];
                    let px = m[2][0] * dz + m[2][1] * dy + m[2][2] * dx + c[2] + tf.t[2] + e[1];
                    let mut v = trilinear(data, dims, [pz, py, px], pad);
                    if ch == 0 && tf.noise_sigma > 0.0 {
                        let i = (z * plane + y * w + x) as u64;
                        v += fast_normal(hash2(tf.noise_key, i)) * tf.noise_sigma as f32;
                    }
                    dst[y * w + x] = v;
                }
            }
        });
    out
}

/// Trilinear interpolation at `p` (z, y, x); neighbours outside the volume read `pad`.
fn trilinear(data: &[f32], dims: [usize; 3], p: [f64; 3], pad: f32) -> f32 {
    let [d, h, w] = dims;
    let f = p.map(f64::floor);
    // Entirely outside (with a one-voxel margin): the padding.
    if f[0] < -1.0
        || f[1] < -1.0
        || f[2] < -1.0
        || f[0] >= d as f64
        || f[1] >= h as f64
        || f[2] >= w as f64
    {
        return pad;
    }
    let i0 = [f[0] as i64, f[1] as i64, f[2] as i64];
    let t = [p[0] - f[0], p[1] - f[1], p[2] - f[2]];
    let at = |z: i64, y: i64, x: i64| -> f64 {
        if z < 0 || y < 0 || x < 0 || z >= d as i64 || y >= h as i64 || x >= w as i64 {
            pad as f64
        } else {
            data[(z as usize * h + y as usize) * w + x as usize] as f64
        }
    };
    let mut acc = 0.0;
    for (a, wz) in [(0, 1.0 - t[0]), (1, t[0])] {
        for (b, wy) in [(0, 1.0 - t[1]), (1, t[1])] {
            for (e, wx) in [(0, 1.0 - t[2]), (1, t[2])] {
                let wgt = wz * wy * wx;
                if wgt != 0.0 {
                    acc += wgt * at(i0[0] + a, i0[1] + b, i0[2] + e);
                }
            }
        }
    }
    acc as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_transform_is_exact() {
        let dims = [3, 4, 5];
        let src: Vec<f32> = (0..60).map(|i| i as f32).collect();
        let tf = Transform::draw(&AugmentConfig::none(), 1);
        assert_eq!(augment(&src, 1, dims, &[0.0], &tf), src);
    }

    #[test]
    fn translation_moves_content() {
        let dims = [1, 1, 6];
        let src: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut tf = Transform::draw(&AugmentConfig::none(), 1);
        tf.t = [0.0, 0.0, 1.5];
        let out = augment(&src, 1, dims, &[-1.0], &tf);
        assert_eq!(out, vec![1.5, 2.5, 3.5, 4.5, 2.0, -1.0]);
    }
}
