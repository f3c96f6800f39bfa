//! Step 1: orientation. Reorders and flips the voxel axes so that the direction matrix is the
//! axis-aligned one closest to identity (ITK/LPS: x to the patient's left, y posterior,
//! z superior), like SimpleITK's `DICOMOrient(image, "LPS")`.
//!
//! Only the geometry is needed by the pipeline: resampling works in physical space, so it reads
//! the original voxels through the oriented grid without copying them. [`orient`] copies the
//! voxels too, for the lesion map and for tests.

use serde::Serialize;

use super::resample::Grid;
use super::PreprocessError;
use crate::volume::Volume;

/// How the oriented axes map to the input's axes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orientation {
    /// For each oriented axis (x, y, z), the input axis it reads.
    pub axes: [usize; 3],
    /// For each oriented axis, whether the input axis runs backwards.
    pub flipped: [bool; 3],
    /// Largest angle (degrees) between an oriented axis and its world axis.
    pub obliquity_deg: f64,
}

impl Orientation {
    /// The permutation and flips that bring `direction` closest to identity.
    pub fn of(direction: &[f64; 9]) -> Result<Self, PreprocessError> {
        let col = |j: usize| [direction[j], direction[3 + j], direction[6 + j]];
        if direction.iter().any(|v| !v.is_finite()) {
            return Err(PreprocessError::Direction(*direction));
        }
        let mut axes = [usize::MAX; 3];
        let mut flipped = [false; 3];
        // Each input axis goes to the world axis it is most aligned with.
        for j in 0..3 {
            let c = col(j);
            let norm = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
            if norm < 1e-6 {
                return Err(PreprocessError::Direction(*direction));
            }
            let (mut best, mut best_abs) = (0, -1.0);
            for (i, v) in c.iter().enumerate() {
                if v.abs() > best_abs {
                    best = i;
                    best_abs = v.abs();
                }
            }
            if axes[best] != usize::MAX {
                // Two axes claim the same world axis: a 45-degree (or degenerate) direction.
                return Err(PreprocessError::Direction(*direction));
            }
            axes[best] = j;
            flipped[best] = c[best] < 0.0;
        }
        let mut obliquity_deg = 0.0f64;
        for (i, &j) in axes.iter().enumerate() {
            let c = col(j);
            let norm = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
            let cos = (c[i].abs() / norm).clamp(-1.0, 1.0);
            obliquity_deg = obliquity_deg.max(cos.acos().to_degrees());
        }
        Ok(Self {
            axes,
            flipped,
            obliquity_deg,
        })
    }

    /// True when nothing moves.
    pub fn is_identity(&self) -> bool {
        self.axes == [0, 1, 2] && self.flipped == [false; 3]
    }

    /// The oriented grid of an input grid: same voxels and physical space, new index order.
    pub fn apply(&self, g: &Grid) -> Grid {
        let mut out = g.clone();
        let mut first = [0.0f64; 3]; // input index of the oriented grid's voxel (0, 0, 0)
        for i in 0..3 {
            let j = self.axes[i];
            out.size[i] = g.size[j];
            out.spacing[i] = g.spacing[j];
            let sign = if self.flipped[i] { -1.0 } else { 1.0 };
            for r in 0..3 {
                out.direction[3 * r + i] = sign * g.direction[3 * r + j];
            }
            if self.flipped[i] {
                first[j] = g.size[j].saturating_sub(1) as f64;
            }
        }
        out.origin = g.index_to_physical(first);
        out
    }

    /// Input linear index of oriented voxel (x, y, z) of an input of size `in_size`.
    #[inline]
    fn source_index(&self, in_size: [usize; 3], o: [usize; 3]) -> usize {
        let mut s = [0usize; 3];
        for (i, &oi) in o.iter().enumerate() {
            let j = self.axes[i];
            s[j] = if self.flipped[i] {
                in_size[j] - 1 - oi
            } else {
                oi
            };
        }
        s[0] + in_size[0] * (s[1] + in_size[1] * s[2])
    }
}

/// Reorders and flips the voxels of `vol` to the closest-to-identity axis order (exact: no
/// interpolation). Obliquity is kept in the direction matrix, as `DICOMOrient` does.
pub fn orient(vol: &Volume) -> Result<Volume, PreprocessError> {
    let o = Orientation::of(&vol.direction)?;
    let g = o.apply(&Grid::of(vol));
    if o.is_identity() {
        return Ok(vol.clone());
    }
    let [nx, ny, nz] = g.size;
    let mut data = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                data.push(vol.data[o.source_index(vol.size, [x, y, z])]);
            }
        }
    }
    Ok(Volume {
        data,
        size: g.size,
        spacing: g.spacing,
        origin: g.origin,
        direction: g.direction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_and_flip() {
        // x axis points to -z, y to +x, z to -y.
        let d = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0];
        let o = Orientation::of(&d).expect("axis aligned");
        assert_eq!(o.axes, [1, 2, 0]);
        assert_eq!(o.flipped, [false, true, true]);
        assert!(o.obliquity_deg < 1e-9);
        let mut v = Volume::filled([2, 3, 4], [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], 0.0);
        v.direction = d;
        for (i, x) in v.data.iter_mut().enumerate() {
            *x = i as f32;
        }
        let r = orient(&v).expect("orient");
        assert_eq!(r.size, [3, 4, 2]);
        assert_eq!(r.spacing, [2.0, 3.0, 1.0]);
        for (a, b) in r.direction.iter().zip(crate::volume::IDENTITY.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
        // Every voxel keeps its physical position.
        for z in 0..2 {
            for y in 0..4 {
                for x in 0..3 {
                    let p = r.index_to_physical([x as f64, y as f64, z as f64]);
                    let c = v.physical_to_index(p);
                    let ci = c.map(|t| t.round() as usize);
                    assert!(c
                        .iter()
                        .zip(ci.iter())
                        .all(|(a, b)| (a - *b as f64).abs() < 1e-9));
                    assert_eq!(r.at(x, y, z), v.at(ci[0], ci[1], ci[2]));
                }
            }
        }
    }

    #[test]
    fn obliquity_is_measured_and_degenerate_directions_rejected() {
        let a = 10f64.to_radians();
        let d = [1.0, 0.0, 0.0, 0.0, a.cos(), -a.sin(), 0.0, a.sin(), a.cos()];
        let o = Orientation::of(&d).expect("tilted");
        assert!(o.is_identity());
        assert!((o.obliquity_deg - 10.0).abs() < 1e-9);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let bad = [h, h, 0.0, h, h, 0.0, 0.0, 0.0, 1.0];
        assert!(Orientation::of(&bad).is_err());
        assert!(Orientation::of(&[0.0; 9]).is_err());
    }
}
