//! Content checks of a CT before preprocessing: what the readers cannot know about a file that
//! is well-formed but is not a chest CT in Hounsfield units.
//!
//! [`check_ct`] rejects, with a reason, volumes that cannot be graded (mostly NaN or infinite,
//! one value everywhere, too thin along an axis, unusable spacing or direction), makes
//! infinite voxels NaN, and returns warnings for what is suspicious but may still work (some
//! NaN voxels, an intensity range that does not look like HU). Behaviours and messages are
//! listed in `docs/robustness.md`.
//!
//! NaN voxels are "no data", as points outside the scan are: never air for the lung mask and
//! -1100 HU (the padding) in the network input. Infinite voxels are treated the same way,
//! because interpolating an infinity would spread NaN (0 * inf) to its neighbours anyway.

use rayon::prelude::*;

use super::orient::Orientation;
use super::PreprocessError;
use crate::volume::Volume;

/// A CT must span at least this much (mm) along each axis: less is a slab, not a chest.
pub const MIN_EXTENT_MM: f64 = 50.0;

/// A CT must have at least this many voxels along each axis.
pub const MIN_VOXELS_PER_AXIS: usize = 3;

/// An origin farther than this (mm) from the scanner's centre is rejected: at 1e7 mm, f64
/// coordinates still resolve a nanometre, far past such an origin they would not.
pub const MAX_ORIGIN_MM: f64 = 1e7;

/// Above this fraction of NaN or infinite voxels, a CT is rejected.
pub const MAX_NON_FINITE_FRACTION: f64 = 0.5;

/// Finite values beyond this magnitude are not Hounsfield units (CT scanners store at most
/// about -1024..31743).
const HU_MAGNITUDE: f32 = 1e5;

/// What [`check_ct`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CtCheck {
    /// Voxels that were NaN or infinite (now NaN).
    pub non_finite: usize,
    /// Smallest finite value.
    pub min: f32,
    /// Largest finite value.
    pub max: f32,
    /// Suspicious but gradable: one sentence each.
    pub warnings: Vec<String>,
}

/// World axis names after orientation (LPS).
const AXIS_NAMES: [&str; 3] = [
    "x (right-left)",
    "y (anterior-posterior)",
    "z (inferior-superior)",
];

/// Checks `ct` before preprocessing (see the module documentation); infinite voxels become NaN.
pub fn check_ct(ct: &mut Volume) -> Result<CtCheck, PreprocessError> {
    if ct.is_empty() || ct.data.len() != ct.len() {
        return Err(PreprocessError::EmptyVolume);
    }
    if ct.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(PreprocessError::Spacing(ct.spacing));
    }
    if ct
        .origin
        .iter()
        .any(|o| !o.is_finite() || o.abs() > MAX_ORIGIN_MM)
    {
        return Err(PreprocessError::Origin(ct.origin));
    }
    let orientation = Orientation::of(&ct.direction)?;
    for (i, name) in AXIS_NAMES.iter().enumerate() {
        let j = orientation.axes[i];
        let extent = ct.size[j] as f64 * ct.spacing[j];
        if ct.size[j] < MIN_VOXELS_PER_AXIS || extent < MIN_EXTENT_MM {
            return Err(PreprocessError::TooThin {
                axis: name,
                voxels: ct.size[j],
                spacing_mm: ct.spacing[j],
            });
        }
    }

    // One pass: non-finite count (made NaN), finite range.
    let (non_finite, min, max) = ct
        .data
        .par_chunks_mut(1 << 16)
        .map(|chunk| {
            let (mut n, mut lo, mut hi) = (0usize, f32::INFINITY, f32::NEG_INFINITY);
            for v in chunk {
                if v.is_finite() {
                    lo = lo.min(*v);
                    hi = hi.max(*v);
                } else {
                    *v = f32::NAN;
                    n += 1;
                }
            }
            (n, lo, hi)
        })
        .reduce(
            || (0, f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0 + b.0, a.1.min(b.1), a.2.max(b.2)),
        );
    let total = ct.data.len();
    if non_finite as f64 > MAX_NON_FINITE_FRACTION * total as f64 {
        return Err(PreprocessError::NonFinite { non_finite, total });
    }
    if min == max {
        return Err(PreprocessError::Constant(min));
    }

    let mut warnings = Vec::new();
    if non_finite > 0 {
        warnings.push(format!(
            "{non_finite} of {total} voxels ({:.2}%) are NaN or infinite; they are treated as \
             missing data (not air; -1100 HU in the network input)",
            100.0 * non_finite as f64 / total as f64
        ));
    }
    if let Some(w) = intensity_warning(min, max) {
        warnings.push(w);
    }
    Ok(CtCheck {
        non_finite,
        min,
        max,
        warnings,
    })
}

/// A warning when the finite range `[min, max]` does not look like Hounsfield units.
pub fn intensity_warning(min: f32, max: f32) -> Option<String> {
    let range = format!("values range from {min} to {max}");
    if min >= -1.0 && max <= 1.0 {
        Some(format!(
            "{range}: the image looks normalised, not in Hounsfield units (air is about -1000 HU, \
             water 0 HU)"
        ))
    } else if min >= 0.0 && max > 1000.0 {
        Some(format!(
            "{range}, none below 0: these look like stored CT numbers without the rescale \
             intercept (usually -1024); in Hounsfield units air is about -1000"
        ))
    } else if min > -500.0 {
        Some(format!(
            "{range}: nothing is air-like (below -500 HU), which a chest CT in Hounsfield units \
             always has"
        ))
    } else if min < -HU_MAGNITUDE || max > HU_MAGNITUDE {
        Some(format!(
            "{range}: beyond any Hounsfield range (CT stores about -1024 to 31743)"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(size: [usize; 3], spacing: [f64; 3]) -> Volume {
        let mut v = Volume::filled(size, spacing, [0.0; 3], 0.0);
        for (i, x) in v.data.iter_mut().enumerate() {
            *x = (i % 2000) as f32 - 1000.0;
        }
        v
    }

    #[test]
    fn intensity_ranges() {
        assert!(intensity_warning(-1024.0, 3071.0).is_none());
        assert!(intensity_warning(0.0, 1.0).unwrap().contains("normalised"));
        assert!(intensity_warning(0.0, 4095.0)
            .unwrap()
            .contains("intercept"));
        assert!(intensity_warning(-100.0, 200.0)
            .unwrap()
            .contains("air-like"));
        assert!(intensity_warning(-1000.0, 3e6).unwrap().contains("beyond"));
    }

    #[test]
    fn infinities_become_nan_and_are_counted() {
        let mut v = ramp([20, 20, 20], [5.0; 3]);
        v.data[3] = f32::INFINITY;
        v.data[4] = f32::NEG_INFINITY;
        v.data[5] = f32::NAN;
        let c = check_ct(&mut v).unwrap();
        assert_eq!(c.non_finite, 3);
        assert!(v.data[3].is_nan() && v.data[4].is_nan());
        assert_eq!((c.min, c.max), (-1000.0, 999.0));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn thin_axis_named_after_orientation() {
        // Input axis 0 runs along world z.
        let mut v = ramp([2, 40, 40], [5.0, 2.0, 2.0]);
        v.direction = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let err = check_ct(&mut v).unwrap_err();
        assert!(err.to_string().contains("z (inferior-superior)"), "{err}");
    }
}
