//! Step 2: resampling in physical space, with the semantics of SimpleITK's `Resample`
//! (ITK `ResampleImageFilter` with `LinearInterpolateImageFunction` or
//! `NearestNeighborInterpolateImageFunction`):
//!
//! * an output voxel maps to the continuous input index `c` of its physical point;
//! * it is inside the input when `-0.5 <= c < size - 0.5` on every axis (ITK's buffer test),
//!   otherwise it gets the default value;
//! * linear: trilinear interpolation of `c` clamped to `[0, size - 1]` (ITK's border handling);
//!   nearest: the voxel at `floor(c + 0.5)`.
//!
//! The index map is affine, so each output row steps the continuous index by a constant vector;
//! rows are computed in parallel.

use rayon::prelude::*;

use super::PreprocessError;
use crate::volume::Volume;

/// Geometry of a voxel grid (ITK conventions, like [`Volume`] without the voxels).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Voxels along x, y, z.
    pub size: [usize; 3],
    /// Spacing (mm) along x, y, z.
    pub spacing: [f64; 3],
    /// Physical point (mm, LPS) of voxel (0, 0, 0).
    pub origin: [f64; 3],
    /// Direction cosines, row-major; column j is axis j.
    pub direction: [f64; 9],
}

impl Grid {
    /// The grid of a volume.
    pub fn of(v: &Volume) -> Self {
        Self {
            size: v.size,
            spacing: v.spacing,
            origin: v.origin,
            direction: v.direction,
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.size[0] * self.size[1] * self.size[2]
    }

    /// True when the grid has no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Physical point of a continuous index.
    pub fn index_to_physical(&self, idx: [f64; 3]) -> [f64; 3] {
        let d = &self.direction;
        let s = [0, 1, 2].map(|k| idx[k] * self.spacing[k]);
        [0, 1, 2]
            .map(|r| self.origin[r] + d[3 * r] * s[0] + d[3 * r + 1] * s[1] + d[3 * r + 2] * s[2])
    }

    /// `direction * diag(spacing)`, row-major: physical offset per unit index step.
    fn index_to_physical_matrix(&self) -> [f64; 9] {
        let mut m = self.direction;
        for r in 0..3 {
            for c in 0..3 {
                m[3 * r + c] *= self.spacing[c];
            }
        }
        m
    }

    /// The grid SimpleITK's `Resample` would use for isotropic spacing `s`: same origin and
    /// direction, size `round(size * spacing / s)`.
    pub fn with_isotropic_spacing(&self, s: f64) -> Self {
        let size = [0, 1, 2]
            .map(|k| ((self.size[k] as f64 * self.spacing[k] / s).round() as usize).max(1));
        Self {
            size,
            spacing: [s; 3],
            origin: self.origin,
            direction: self.direction,
        }
    }

    /// An identity-direction grid of spacing `s` covering the voxel centres of `self`
    /// (used when the input is too oblique to keep its direction).
    pub fn axis_aligned_cover(&self, s: f64) -> Self {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let idx = [0, 1, 2].map(|k| {
                if corner & (1 << k) != 0 {
                    self.size[k].saturating_sub(1) as f64
                } else {
                    0.0
                }
            });
            let p = self.index_to_physical(idx);
            for k in 0..3 {
                lo[k] = lo[k].min(p[k]);
                hi[k] = hi[k].max(p[k]);
            }
        }
        Self {
            size: [0, 1, 2].map(|k| ((hi[k] - lo[k]) / s).round() as usize + 1),
            spacing: [s; 3],
            origin: lo,
            direction: crate::volume::IDENTITY,
        }
    }
}

/// Inverse of a 3x3 row-major matrix, or `None` when it is singular.
pub(crate) fn invert3(m: &[f64; 9]) -> Option<[f64; 9]> {
    let [a, b, c, d, e, f, g, h, i] = *m;
    let co = [e * i - f * h, -(d * i - f * g), d * h - e * g];
    let det = a * co[0] + b * co[1] + c * co[2];
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let inv = [
        co[0],
        -(b * i - c * h),
        b * f - c * e,
        co[1],
        a * i - c * g,
        -(a * f - c * d),
        co[2],
        -(a * h - b * g),
        a * e - b * d,
    ];
    Some(inv.map(|v| v / det))
}

/// The affine map from `to` grid indices to continuous `from` grid indices:
/// `c = m * i + t` (m row-major).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexMap {
    pub m: [f64; 9],
    pub t: [f64; 3],
}

impl IndexMap {
    /// Index map from grid `to` into grid `from`.
    pub fn between(to: &Grid, from: &Grid) -> Result<Self, PreprocessError> {
        let inv = invert3(&from.index_to_physical_matrix())
            .ok_or(PreprocessError::Direction(from.direction))?;
        let a = to.index_to_physical_matrix();
        let mut m = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                m[3 * r + c] = (0..3).map(|k| inv[3 * r + k] * a[3 * k + c]).sum();
            }
        }
        let o = [0, 1, 2].map(|k| to.origin[k] - from.origin[k]);
        let t = [0, 1, 2].map(|r| (0..3).map(|k| inv[3 * r + k] * o[k]).sum());
        Ok(Self { m, t })
    }

    /// Continuous index of the start of row (y, z) and the step per x.
    #[inline]
    pub fn row(&self, y: usize, z: usize) -> ([f64; 3], [f64; 3]) {
        let (y, z) = (y as f64, z as f64);
        let m = &self.m;
        let start = [0, 1, 2].map(|r| self.t[r] + m[3 * r + 1] * y + m[3 * r + 2] * z);
        let step = [m[0], m[3], m[6]];
        (start, step)
    }
}

/// ITK's inside-buffer test for a continuous index.
#[inline]
fn inside(c: [f64; 3], size: [usize; 3]) -> bool {
    (0..3).all(|k| c[k] >= -0.5 && c[k] < size[k] as f64 - 0.5)
}

/// Trilinear interpolation at continuous index `c` (assumed inside), with ITK's clamping.
#[inline]
fn trilinear(data: &[f32], size: [usize; 3], c: [f64; 3]) -> f32 {
    let mut i0 = [0usize; 3];
    let mut i1 = [0usize; 3];
    let mut f = [0f64; 3];
    for k in 0..3 {
        let n1 = size[k] - 1;
        let cc = c[k].clamp(0.0, n1 as f64);
        let fl = (cc.floor() as usize).min(n1);
        i0[k] = fl;
        i1[k] = (fl + 1).min(n1);
        f[k] = cc - fl as f64;
    }
    let (nx, nxy) = (size[0], size[0] * size[1]);
    let at = |x: usize, y: usize, z: usize| data[x + nx * y + nxy * z] as f64;
    let c00 = at(i0[0], i0[1], i0[2]) * (1.0 - f[0]) + at(i1[0], i0[1], i0[2]) * f[0];
    let c10 = at(i0[0], i1[1], i0[2]) * (1.0 - f[0]) + at(i1[0], i1[1], i0[2]) * f[0];
    let c01 = at(i0[0], i0[1], i1[2]) * (1.0 - f[0]) + at(i1[0], i0[1], i1[2]) * f[0];
    let c11 = at(i0[0], i1[1], i1[2]) * (1.0 - f[0]) + at(i1[0], i1[1], i1[2]) * f[0];
    let c0 = c00 * (1.0 - f[1]) + c10 * f[1];
    let c1 = c01 * (1.0 - f[1]) + c11 * f[1];
    (c0 * (1.0 - f[2]) + c1 * f[2]) as f32
}

/// Nearest voxel value at continuous index `c` (assumed inside): ITK rounds half up.
#[inline]
fn nearest(data: &[f32], size: [usize; 3], c: [f64; 3]) -> f32 {
    let idx = [0, 1, 2].map(|k| ((c[k] + 0.5).floor().max(0.0) as usize).min(size[k] - 1));
    data[idx[0] + size[0] * (idx[1] + size[1] * idx[2])]
}

/// Interpolation kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Trilinear.
    Linear,
    /// Nearest neighbour.
    Nearest,
}

/// Resamples `src` onto `grid`; voxels outside `src` get `default`.
pub fn resample(
    src: &Volume,
    grid: &Grid,
    interp: Interpolation,
    default: f32,
) -> Result<Volume, PreprocessError> {
    if src.is_empty() || src.data.len() != src.len() {
        return Err(PreprocessError::EmptyVolume);
    }
    let map = IndexMap::between(grid, &Grid::of(src))?;
    let [nx, ny, _] = grid.size;
    let mut data = vec![0f32; grid.len()];
    if nx > 0 && ny > 0 {
        data.par_chunks_mut(nx).enumerate().for_each(|(row, out)| {
            let (y, z) = (row % ny, row / ny);
            let (start, step) = map.row(y, z);
            for (x, o) in out.iter_mut().enumerate() {
                let xf = x as f64;
                let c = [0, 1, 2].map(|k| start[k] + step[k] * xf);
                *o = if !inside(c, src.size) {
                    default
                } else {
                    match interp {
                        Interpolation::Linear => trilinear(&src.data, src.size, c),
                        Interpolation::Nearest => nearest(&src.data, src.size, c),
                    }
                };
            }
        });
    }
    Ok(Volume {
        data,
        size: grid.size,
        spacing: grid.spacing,
        origin: grid.origin,
        direction: grid.direction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invert_roundtrip() {
        let m = [2.0, 0.5, 0.0, 0.1, 1.5, -0.3, 0.0, 0.2, 3.0];
        let inv = invert3(&m).expect("invertible");
        for r in 0..3 {
            for c in 0..3 {
                let v: f64 = (0..3).map(|k| m[3 * r + k] * inv[3 * k + c]).sum();
                assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(invert3(&[1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 0.0, 0.0, 1.0]).is_none());
    }

    #[test]
    fn linear_ramp_is_reproduced_exactly() {
        // A linear function of the physical position survives trilinear resampling.
        let mut v = Volume::filled([10, 8, 6], [0.7, 1.1, 2.5], [-3.0, 4.0, 10.0], 0.0);
        for z in 0..6 {
            for y in 0..8 {
                for x in 0..10 {
                    let p = v.index_to_physical([x as f64, y as f64, z as f64]);
                    let i = v.index(x, y, z);
                    v.data[i] = (2.0 * p[0] - p[1] + 0.5 * p[2]) as f32;
                }
            }
        }
        let g = Grid::of(&v).with_isotropic_spacing(1.5);
        assert_eq!(g.size, [5, 6, 10]);
        let r = resample(&v, &g, Interpolation::Linear, -5000.0).expect("resample");
        for z in 0..g.size[2] {
            for y in 0..g.size[1] {
                for x in 0..g.size[0] {
                    let p = r.index_to_physical([x as f64, y as f64, z as f64]);
                    let c = v.physical_to_index(p);
                    let val = r.at(x, y, z);
                    if inside(c, v.size) && (0..3).all(|k| c[k] <= (v.size[k] - 1) as f64) {
                        let want = 2.0 * p[0] - p[1] + 0.5 * p[2];
                        assert!((val as f64 - want).abs() < 1e-3, "{val} vs {want}");
                    } else if !inside(c, v.size) {
                        assert_eq!(val, -5000.0);
                    }
                }
            }
        }
    }
}
