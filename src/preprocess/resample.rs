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

/// One output index's view of one source axis: ITK's inside test, the two linear taps (as
/// linear offsets into the source) and the weight of the second, and the nearest tap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    pub inside: bool,
    pub o0: usize,
    pub o1: usize,
    pub f: f64,
    pub on: usize,
}

/// Per-axis taps when the map is a scaled permutation (the usual case after orientation): each
/// output axis then walks a single source axis, and a voxel's taps are sums of per-axis
/// offsets. `None` for oblique maps.
pub(crate) fn separable_taps(
    map: &IndexMap,
    out_size: [usize; 3],
    src_size: [usize; 3],
) -> Option<[Vec<Tap>; 3]> {
    let scale = map.m.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let mut src_axis = [usize::MAX; 3];
    for (c, axis) in src_axis.iter_mut().enumerate() {
        for r in 0..3 {
            if map.m[3 * r + c].abs() > 1e-9 * scale {
                if *axis != usize::MAX {
                    return None;
                }
                *axis = r;
            }
        }
    }
    let mut used = [false; 3];
    for &r in &src_axis {
        if r > 2 || used[r] {
            return None;
        }
        used[r] = true;
    }
    let stride = [1, src_size[0], src_size[0] * src_size[1]];
    let taps = |c: usize| -> Vec<Tap> {
        let r = src_axis[c];
        let n = src_size[r];
        (0..out_size[c])
            .map(|i| {
                let x = map.t[r] + map.m[3 * r + c] * i as f64;
                let cc = x.clamp(0.0, (n - 1) as f64);
                let i0 = (cc.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                let nearest = ((x + 0.5).floor().max(0.0) as usize).min(n - 1);
                Tap {
                    inside: x >= -0.5 && x < n as f64 - 0.5,
                    o0: i0 * stride[r],
                    o1: i1 * stride[r],
                    f: cc - i0 as f64,
                    on: nearest * stride[r],
                }
            })
            .collect()
    };
    Some([taps(0), taps(1), taps(2)])
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
    if nx == 0 || ny == 0 {
        return Err(PreprocessError::EmptyVolume);
    }
    if let Some([tx, ty, tz]) = separable_taps(&map, grid.size, src.size) {
        let d = &src.data;
        data.par_chunks_mut(nx).enumerate().for_each(|(row, out)| {
            let (y, z) = (&ty[row % ny], &tz[row / ny]);
            if !(y.inside && z.inside) {
                out.fill(default);
                return;
            }
            let (fy, fz) = (y.f, z.f);
            for (o, x) in out.iter_mut().zip(tx.iter()) {
                if !x.inside {
                    *o = default;
                    continue;
                }
                *o = match interp {
                    Interpolation::Nearest => d[x.on + y.on + z.on],
                    Interpolation::Linear => {
                        let v = |a: usize, b: usize, c: usize| d[a + b + c] as f64;
                        let fx = x.f;
                        let c00 = v(x.o0, y.o0, z.o0) * (1.0 - fx) + v(x.o1, y.o0, z.o0) * fx;
                        let c10 = v(x.o0, y.o1, z.o0) * (1.0 - fx) + v(x.o1, y.o1, z.o0) * fx;
                        let c01 = v(x.o0, y.o0, z.o1) * (1.0 - fx) + v(x.o1, y.o0, z.o1) * fx;
                        let c11 = v(x.o0, y.o1, z.o1) * (1.0 - fx) + v(x.o1, y.o1, z.o1) * fx;
                        let c0 = c00 * (1.0 - fy) + c10 * fy;
                        let c1 = c01 * (1.0 - fy) + c11 * fy;
                        (c0 * (1.0 - fz) + c1 * fz) as f32
                    }
                };
            }
        });
    } else {
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
    fn separable_and_general_paths_agree() {
        // A flipped axis keeps the map separable; a small rotation does not.
        let mut v = Volume::filled([9, 7, 5], [0.8, 1.2, 2.0], [5.0, -3.0, 1.0], 0.0);
        for (i, x) in v.data.iter_mut().enumerate() {
            *x = ((i * 7919) % 311) as f32;
        }
        v.direction = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0];
        let g = Grid::of(&v).with_isotropic_spacing(1.1);
        let map = IndexMap::between(&g, &Grid::of(&v)).expect("map");
        assert!(separable_taps(&map, g.size, v.size).is_some());
        for interp in [Interpolation::Linear, Interpolation::Nearest] {
            let fast = resample(&v, &g, interp, -7.0).expect("fast");
            for z in 0..g.size[2] {
                for y in 0..g.size[1] {
                    let (start, step) = map.row(y, z);
                    for x in 0..g.size[0] {
                        let c = [0, 1, 2].map(|k| start[k] + step[k] * x as f64);
                        let want = if !inside(c, v.size) {
                            -7.0
                        } else if interp == Interpolation::Linear {
                            trilinear(&v.data, v.size, c)
                        } else {
                            nearest(&v.data, v.size, c)
                        };
                        assert!(
                            (fast.at(x, y, z) - want).abs() < 1e-3,
                            "{interp:?} at {x} {y} {z}"
                        );
                    }
                }
            }
        }
        let a = 0.3f64.to_radians();
        v.direction = [a.cos(), -a.sin(), 0.0, a.sin(), a.cos(), 0.0, 0.0, 0.0, 1.0];
        let map = IndexMap::between(&g, &Grid::of(&v)).expect("map");
        assert!(separable_taps(&map, g.size, v.size).is_none());
    }

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
