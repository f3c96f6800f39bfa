//! Preprocessing of the paper (de Vente et al., IEEE TAI 2021, section III): from a CT
//! [`Volume`] in HU to the network input.
//!
//! Steps, each parameter read from the model's [`InputSpec`]:
//!
//! 0. [`checks::check_ct`] (called by `ctgrade run` and `ctgrade preprocess` before this
//!    module's [`preprocess`]): what cannot be graded is refused with a reason, infinite
//!    voxels become NaN, suspicious intensities give warnings.
//! 1. [`orient`]: permute and flip the axes to the closest-to-identity direction (LPS). An
//!    input tilted more than [`MAX_OBLIQUITY_DEG`] is resampled onto an identity-direction grid
//!    covering it instead (gantry tilt), and the report says so.
//! 2. [`resample`]: trilinear resampling to `spacing_mm` isotropic in physical space, on
//!    SimpleITK's `Resample` grid (same origin and direction, size `round(size * spacing /
//!    spacing_mm)`); points outside the scan read -1100 HU.
//! 3. Intensity: clip to `hu_window` and scale to [0, 1] (applied when the input is assembled).
//! 4. [`lung_mask`]: the classical lung mask documented in that module; no lungs, no input.
//! 5. Slice selection: axial slices `z_margin_mm` or more from the mask are dropped.
//! 6. Crop `crop_xy` around the centre of the mask's bounding box, padding with -1100 HU.
//! 7. `slices` axial slices sampled uniformly along z: slice `i` of the output is kept slice
//!    `floor(i * (n - 1) / (slices - 1) + 0.5)` of the `n` kept slices (so fewer than `slices` kept
//!    slices are repeated by the same rule).
//! 8. Channels: the CT three times ([`ChannelLayout::CtX3`]), or CT, lesion map, zeros
//!    ([`ChannelLayout::CtLesionZeros`]); the lesion map (same grid as the CT) goes through the
//!    same geometry with nearest-neighbour sampling and is padded with 0.
//!
//! Layout of [`Preprocessed::input`]: `(channel, z, y, x)` row-major, x fastest, i.e. NCDHW
//! without N. Axis 1 (D) runs from inferior to superior, axis 2 (H) from anterior to posterior,
//! axis 3 (W) from the patient's right to left: the LPS axes after orientation.

pub mod checks;
pub mod files;
pub mod lung_mask;
pub(crate) mod morph;
pub mod orient;
pub mod resample;

use std::borrow::Cow;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::volume::Volume;
use lung_mask::LungMaskParams;
use orient::Orientation;
use resample::{Grid, IndexMap, Interpolation};

/// HU of padding: outside the scan and outside the image when cropping.
pub const PAD_HU: f32 = -1100.0;

/// Inputs tilted more than this (degrees) are resampled onto an axis-aligned grid.
pub const MAX_OBLIQUITY_DEG: f64 = 1.0;

/// Largest resampled grid (voxels). The lung mask holds up to about 18 bytes per voxel of it
/// (HU, labels, masks; measured on noise, 9 on a chest), so this bounds that working memory
/// to about 4.8 GB whatever the header claims; 2^28 voxels is, at 1.5 mm, for example
/// 400 x 400 x 1600 (600 x 600 x 2400 mm).
pub const MAX_GRID_VOXELS: usize = 1 << 28;

/// The network input a model expects (read from each model's manifest; the default is the
/// paper's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputSpec {
    /// Isotropic voxel spacing (mm).
    pub spacing_mm: f64,
    /// Crop size in x and y (voxels).
    pub crop_xy: [usize; 2],
    /// Number of axial slices.
    pub slices: usize,
    /// HU window, scaled to [0, 1].
    pub hu_window: [f32; 2],
    /// Axial slices at least this far (mm) from the lung mask are dropped.
    pub z_margin_mm: f64,
    /// Input channels.
    pub channels: ChannelLayout,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            spacing_mm: 1.5,
            crop_xy: [240, 240],
            slices: 128,
            hu_window: [-1100.0, 300.0],
            z_margin_mm: 10.0,
            channels: ChannelLayout::CtX3,
        }
    }
}

impl InputSpec {
    /// Checks that every field makes sense.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |what: &str| Err(PreprocessError::Spec(what.to_string()));
        if !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0) {
            return bad(&format!(
                "spacing_mm must be positive, got {}",
                self.spacing_mm
            ));
        }
        if self.crop_xy.iter().any(|&c| c == 0 || c > 4096) {
            return bad(&format!(
                "crop_xy must be 1 to 4096, got {:?}",
                self.crop_xy
            ));
        }
        if self.slices == 0 || self.slices > 4096 {
            return bad(&format!("slices must be 1 to 4096, got {}", self.slices));
        }
        let [lo, hi] = self.hu_window;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(&format!(
                "hu_window must be increasing, got {:?}",
                self.hu_window
            ));
        }
        if !(self.z_margin_mm.is_finite() && self.z_margin_mm >= 0.0) {
            return bad(&format!(
                "z_margin_mm must be >= 0, got {}",
                self.z_margin_mm
            ));
        }
        Ok(())
    }

    /// Shape of the input: `[3, slices, crop_y, crop_x]`.
    pub fn shape(&self) -> [usize; 4] {
        [3, self.slices, self.crop_xy[1], self.crop_xy[0]]
    }
}

/// What the three input channels hold.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ChannelLayout {
    /// The CT in all three channels.
    #[serde(rename = "ct_x3")]
    CtX3,
    /// CT, lesion map, zeros (models trained with lesion maps).
    #[serde(rename = "ct_lesion_zeros")]
    CtLesionZeros,
}

impl ChannelLayout {
    /// How many leading channels differ: the CT (`ct_x3`, the rest are copies of it), or the CT
    /// and the lesion map (`ct_lesion_zeros`, the third is zeros).
    pub fn distinct(self) -> usize {
        match self {
            Self::CtX3 => 1,
            Self::CtLesionZeros => 2,
        }
    }
}

/// Errors of preprocessing.
#[derive(Debug, Error)]
pub enum PreprocessError {
    /// The model's input specification is invalid.
    #[error("invalid input specification: {0}")]
    Spec(String),
    /// The CT has no voxels or inconsistent data.
    #[error("the CT volume is empty or its data does not match its size")]
    EmptyVolume,
    /// Spacing not positive.
    #[error("the CT has an invalid voxel spacing {0:?} (must be positive)")]
    Spacing([f64; 3]),
    /// Too few voxels or millimetres along an axis (a single slice, a thin slab).
    #[error(
        "the CT is too thin along {axis}: {voxels} voxel(s) of {spacing_mm} mm; a chest CT \
         covering the lungs is needed (at least {} voxels and {} mm along each axis)",
        checks::MIN_VOXELS_PER_AXIS,
        checks::MIN_EXTENT_MM
    )]
    TooThin {
        /// The world axis.
        axis: &'static str,
        /// Voxels along it.
        voxels: usize,
        /// Spacing along it (mm).
        spacing_mm: f64,
    },
    /// Mostly NaN or infinite voxels.
    #[error(
        "{non_finite} of {total} voxels are NaN or infinite: the image holds too little data \
         to grade"
    )]
    NonFinite {
        /// NaN or infinite voxels.
        non_finite: usize,
        /// All voxels.
        total: usize,
    },
    /// The origin is not finite or absurdly far away (where physical coordinates lose the
    /// precision that resampling needs).
    #[error(
        "the CT's origin {0:?} mm is not finite or implausibly far (over {km} km) from the \
         scanner",
        km = checks::MAX_ORIGIN_MM / 1e6
    )]
    Origin([f64; 3]),
    /// Every (finite) voxel has the same value.
    #[error("every voxel of the CT is {0}: the image is blank, there are no lungs to grade")]
    Constant(f32),
    /// A direction matrix that cannot be oriented.
    #[error(
        "the CT's direction matrix {0:?} is singular or too close to 45 degrees between axes to orient"
    )]
    Direction([f64; 9]),
    /// The resampled grid would be unreasonably large.
    #[error(
        "resampling to {spacing} mm would give a {size:?} grid (at most 4096 per axis and {} \
         voxels); the scan's geometry is implausible",
        MAX_GRID_VOXELS
    )]
    GridTooLarge {
        /// The grid size.
        size: [usize; 3],
        /// The target spacing.
        spacing: f64,
    },
    /// Lung segmentation found nothing lung-sized.
    #[error(
        "no lungs found: the largest air-filled region inside the body holds {largest_ml:.1} mL \
         (at least {min_ml} mL expected); is this a chest CT in Hounsfield units?"
    )]
    NoLungs {
        /// Volume of the largest candidate.
        largest_ml: f64,
        /// The required minimum.
        min_ml: f64,
    },
    /// The model wants a lesion map but none was given.
    #[error("this model expects a lesion map as second input channel, but none was given")]
    MissingLesion,
    /// The lesion map is not on the CT's grid.
    #[error(
        "the lesion map's grid (size {lesion_size:?}, spacing {lesion_spacing:?}) differs from \
         the CT's (size {ct_size:?}, spacing {ct_spacing:?}) or its origin/direction differ"
    )]
    LesionGrid {
        /// CT size.
        ct_size: [usize; 3],
        /// CT spacing.
        ct_spacing: [f64; 3],
        /// Lesion map size.
        lesion_size: [usize; 3],
        /// Lesion map spacing.
        lesion_spacing: [f64; 3],
    },
}

/// The network input and what was learnt on the way.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// `(channels, slices, crop_y, crop_x)` row-major (NCDHW without N); D = z from inferior to
    /// superior, H = y anterior to posterior, W = x right to left. The channels are the
    /// layout's three ([`preprocess`]) or its first ones ([`preprocess_owned`]).
    pub input: Vec<f32>,
    /// `[channels, slices, crop_xy[1], crop_xy[0]]`.
    pub shape: [usize; 4],
    /// The lung mask on the original input grid: 0, [`lung_mask::RIGHT`] or
    /// [`lung_mask::LEFT`].
    pub lung_mask: Volume<u8>,
    /// Measurements and timings.
    pub report: PreprocessReport,
}

/// Crop box on the resampled grid: `[start, end)` per axis, may extend beyond it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CropBox {
    /// x range.
    pub x: [i64; 2],
    /// y range.
    pub y: [i64; 2],
}

/// Wall-clock seconds per stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSeconds {
    /// Orientation and grid set-up.
    pub orient: f64,
    /// Trilinear resampling.
    pub resample: f64,
    /// Lung mask.
    pub lung_mask: f64,
    /// Slice selection, crop, sampling, intensity and channels.
    pub assemble: f64,
    /// Mapping the lung mask back to the input grid.
    pub mask_to_input_grid: f64,
    /// Everything.
    pub total: f64,
}

/// What preprocessing measured (serialised to `preprocess.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessReport {
    /// The specification used.
    pub spec: InputSpec,
    /// Input size (voxels).
    pub input_size: [usize; 3],
    /// Input spacing (mm).
    pub input_spacing: [f64; 3],
    /// Axis permutation and flips.
    pub orientation: Orientation,
    /// True when the input was too oblique and was resampled onto an axis-aligned grid.
    pub oblique_resampled: bool,
    /// Size of the resampled grid.
    pub resampled_size: [usize; 3],
    /// Origin (mm, LPS) of the resampled grid.
    pub resampled_origin: [f64; 3],
    /// Direction of the resampled grid (row-major).
    pub resampled_direction: [f64; 9],
    /// Lung volume (mL) of the mask on the input grid.
    pub lung_volume_ml: f64,
    /// Lung volume (mL) on the patient's right, on the resampled grid.
    pub lung_volume_right_ml: f64,
    /// Lung volume (mL) on the patient's left, on the resampled grid.
    pub lung_volume_left_ml: f64,
    /// Lung components kept by the segmentation.
    pub lung_components: usize,
    /// Axial slices of the resampled grid that hold lung (inclusive).
    pub lung_z_range: [usize; 2],
    /// Axial slices kept (inclusive), on the resampled grid.
    pub kept_z_range: [usize; 2],
    /// Physical z (mm) of the first and last kept slice centres.
    pub kept_z_mm: [f64; 2],
    /// Crop box on the resampled grid.
    pub crop_box: CropBox,
    /// Resampled-grid slice of each output slice.
    pub sampled_slices: Vec<usize>,
    /// Seconds per stage.
    pub seconds: StageSeconds,
}

/// Same grid within a small tolerance.
/// Refuses a lesion map that is not on the CT's grid (size, spacing, origin, direction).
pub fn check_lesion_grid(ct: &Volume, lesion: &Volume) -> Result<(), PreprocessError> {
    if same_grid(ct, lesion) && lesion.data.len() == lesion.len() {
        return Ok(());
    }
    Err(PreprocessError::LesionGrid {
        ct_size: ct.size,
        ct_spacing: ct.spacing,
        lesion_size: lesion.size,
        lesion_spacing: lesion.spacing,
    })
}

fn same_grid(a: &Volume, b: &Volume) -> bool {
    let close = |x: f64, y: f64, tol: f64| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs()));
    a.size == b.size
        && (0..3).all(|k| close(a.spacing[k], b.spacing[k], 1e-4))
        && (0..3).all(|k| close(a.origin[k], b.origin[k], 1e-4))
        && (0..9).all(|k| (a.direction[k] - b.direction[k]).abs() <= 1e-4)
}

/// `floor(i * (n - 1) / (s - 1) + 0.5)` for `i` in `0..s`: `s` indices spread uniformly over
/// `n` (halves round up, as ITK rounds).
pub fn uniform_indices(n: usize, s: usize) -> Vec<usize> {
    if s == 1 || n <= 1 {
        return vec![n.saturating_sub(1) / 2; s];
    }
    (0..s)
        .map(|i| ((i * (n - 1)) as f64 / (s - 1) as f64 + 0.5).floor() as usize)
        .collect()
}

/// Steps 1-2 without the voxels: the orientation of `input` and the grid it is resampled onto
/// (spacing `spacing_mm`), and whether the input was too oblique to keep its direction.
pub fn target_grid(
    input: &Grid,
    spacing_mm: f64,
) -> Result<(Orientation, Grid, bool), PreprocessError> {
    let orientation = Orientation::of(&input.direction)?;
    let oriented = orientation.apply(input);
    let oblique = orientation.obliquity_deg > MAX_OBLIQUITY_DEG;
    let grid = if oblique {
        oriented.axis_aligned_cover(spacing_mm)
    } else {
        oriented.with_isotropic_spacing(spacing_mm)
    };
    if grid.size.iter().any(|&n| n > 4096) || grid.len() > MAX_GRID_VOXELS {
        return Err(PreprocessError::GridTooLarge {
            size: grid.size,
            spacing: spacing_mm,
        });
    }
    Ok((orientation, grid, oblique))
}

/// Runs the whole preprocessing of `ct` (HU) for a model with input `spec`.
pub fn preprocess(
    ct: &Volume,
    lesion: Option<&Volume>,
    spec: &InputSpec,
) -> Result<Preprocessed, PreprocessError> {
    preprocess_cow(Cow::Borrowed(ct), lesion, spec, 3)
}

/// [`preprocess`] taking the CT by value, and assembling only the first `channels` (1 to 3) of
/// the network input's three: those that differ ([`ChannelLayout::distinct`]) are all a
/// network built for them reads (`model::fewer_inputs`) and all `ctgrade preprocess` writes.
/// The CT's voxels are freed as soon as they are resampled, so that the CT and the lung mask on
/// its grid are never in memory together (the peak of a large scan is then about 4 bytes per
/// input voxel instead of 8).
pub fn preprocess_owned(
    ct: Volume,
    lesion: Option<&Volume>,
    spec: &InputSpec,
    channels: usize,
) -> Result<Preprocessed, PreprocessError> {
    preprocess_cow(Cow::Owned(ct), lesion, spec, channels)
}

fn preprocess_cow(
    ct: Cow<'_, Volume>,
    lesion: Option<&Volume>,
    spec: &InputSpec,
    channels: usize,
) -> Result<Preprocessed, PreprocessError> {
    let channels = channels.clamp(1, 3);
    let t_start = Instant::now();
    spec.validate()?;
    if ct.is_empty() || ct.data.len() != ct.len() {
        return Err(PreprocessError::EmptyVolume);
    }
    if ct.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(PreprocessError::Spacing(ct.spacing));
    }
    if let Some(l) = lesion {
        check_lesion_grid(&ct, l)?;
    }
    let lesion = match spec.channels {
        ChannelLayout::CtLesionZeros => Some(lesion.ok_or(PreprocessError::MissingLesion)?),
        ChannelLayout::CtX3 => None,
    };
    let mut seconds = StageSeconds::default();

    // 1. Orientation (geometry only) and the target grid.
    let t = Instant::now();
    let (orientation, grid, oblique_resampled) = target_grid(&Grid::of(&ct), spec.spacing_mm)?;
    seconds.orient = t.elapsed().as_secs_f64();

    // 2. Resampling (in HU; the window comes with the assembly). Points outside the scan are
    // NaN here so that the lung mask does not take them for air; the assembly pads them.
    let t = Instant::now();
    let hu = resample::resample(&ct, &grid, Interpolation::Linear, f32::NAN)?;
    seconds.resample = t.elapsed().as_secs_f64();
    // From here on only the CT's geometry is needed.
    let ct_grid = Grid::of(&ct);
    drop(ct);

    // 4. Lung mask.
    let t = Instant::now();
    let lungs = lung_mask::segment(&hu, &LungMaskParams::default())?;
    seconds.lung_mask = t.elapsed().as_secs_f64();

    // 5-8. Slice selection, crop, sampling, intensity, channels.
    let t = Instant::now();
    let [nx, ny, nz] = grid.size;
    let plane = nx * ny;
    let (lo, hi) = mask_bbox(&lungs.mask, grid.size);
    if lo[0] == usize::MAX {
        return Err(PreprocessError::NoLungs {
            largest_ml: 0.0,
            min_ml: LungMaskParams::default().min_lung_ml,
        });
    }
    let margin = ((spec.z_margin_mm / spec.spacing_mm).ceil() as usize).saturating_sub(1);
    let kept = [lo[2].saturating_sub(margin), (hi[2] + margin).min(nz - 1)];
    let [cw, ch] = spec.crop_xy;
    // Crop start: the bounding box's centre minus half the crop, halves rounded up.
    let start = |k: usize, w: usize| {
        ((lo[k] + hi[k] + 1) as f64 / 2.0 - w as f64 / 2.0 + 0.5).floor() as i64
    };
    let crop_box = CropBox {
        x: [start(0, cw), start(0, cw) + cw as i64],
        y: [start(1, ch), start(1, ch) + ch as i64],
    };
    let sampled: Vec<usize> = uniform_indices(kept[1] - kept[0] + 1, spec.slices)
        .into_iter()
        .map(|i| kept[0] + i)
        .collect();
    let [wlo, whi] = spec.hu_window;
    let scale = 1.0 / (whi - wlo);
    let window = |v: f32| (v.clamp(wlo, whi) - wlo) * scale;
    let channel = spec.slices * ch * cw;
    let mut input = vec![0f32; channels * channel];
    let (ct_channel, rest) = input.split_at_mut(channel);
    ct_channel
        .par_chunks_mut(ch * cw)
        .zip(sampled.par_iter())
        .for_each(|(out, &z)| {
            for y in 0..ch {
                let gy = crop_box.y[0] + y as i64;
                for x in 0..cw {
                    let gx = crop_box.x[0] + x as i64;
                    let inside = gx >= 0 && gy >= 0 && (gx as usize) < nx && (gy as usize) < ny;
                    let v = if inside {
                        hu.data[gx as usize + nx * gy as usize + plane * z]
                    } else {
                        PAD_HU
                    };
                    let v = if v.is_nan() { PAD_HU } else { v };
                    out[x + cw * y] = window(v);
                }
            }
        });
    match (lesion, rest.is_empty()) {
        (_, true) => {}
        (None, false) => {
            for copy in rest.chunks_mut(channel) {
                copy.copy_from_slice(ct_channel);
            }
        }
        (Some(l), false) => {
            // The lesion map in the second channel; the third (if assembled) stays zeros.
            let second = &mut rest[..channel];
            // Nearest-neighbour lesion values at the output voxels' physical positions.
            let map = IndexMap::between(&grid, &Grid::of(l))?;
            second
                .par_chunks_mut(ch * cw)
                .zip(sampled.par_iter())
                .for_each(|(out, &z)| {
                    for y in 0..ch {
                        let gy = crop_box.y[0] + y as i64;
                        for x in 0..cw {
                            let gx = crop_box.x[0] + x as i64;
                            let c = [0, 1, 2].map(|r| {
                                map.t[r]
                                    + map.m[3 * r] * gx as f64
                                    + map.m[3 * r + 1] * gy as f64
                                    + map.m[3 * r + 2] * z as f64
                            });
                            out[x + cw * y] = nearest_or(l, c, 0.0);
                        }
                    }
                });
        }
    }
    seconds.assemble = t.elapsed().as_secs_f64();

    // The lung mask on the input grid (nearest neighbour).
    let t = Instant::now();
    let (lung_mask, count) = mask_to_grid(&lungs.mask, &grid, &ct_grid)?;
    seconds.mask_to_input_grid = t.elapsed().as_secs_f64();
    // Voxel volume: spacing product times |det(direction)| (1 for a proper rotation).
    let voxel_ml =
        ct_grid.spacing.iter().product::<f64>() * determinant(&ct_grid.direction).abs() / 1000.0;
    seconds.total = t_start.elapsed().as_secs_f64();

    let report = PreprocessReport {
        spec: spec.clone(),
        input_size: ct_grid.size,
        input_spacing: ct_grid.spacing,
        orientation,
        oblique_resampled,
        resampled_size: grid.size,
        resampled_origin: grid.origin,
        resampled_direction: grid.direction,
        lung_volume_ml: count as f64 * voxel_ml,
        lung_volume_right_ml: lungs.right_ml,
        lung_volume_left_ml: lungs.left_ml,
        lung_components: lungs.components,
        lung_z_range: [lo[2], hi[2]],
        kept_z_range: kept,
        kept_z_mm: [
            grid.index_to_physical([0.0, 0.0, kept[0] as f64])[2],
            grid.index_to_physical([0.0, 0.0, kept[1] as f64])[2],
        ],
        crop_box,
        sampled_slices: sampled,
        seconds,
    };
    Ok(Preprocessed {
        input,
        shape: [channels, spec.slices, spec.crop_xy[1], spec.crop_xy[0]],
        lung_mask,
        report,
    })
}

fn determinant(m: &[f64; 9]) -> f64 {
    m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
        + m[2] * (m[3] * m[7] - m[4] * m[6])
}

/// Value of `v` at the nearest voxel to continuous index `c`, or `default` outside
/// (ITK's inside test and rounding).
fn nearest_or(v: &Volume, c: [f64; 3], default: f32) -> f32 {
    if (0..3).any(|k| !(c[k] >= -0.5 && c[k] < v.size[k] as f64 - 0.5)) {
        return default;
    }
    let i = [0, 1, 2].map(|k| ((c[k] + 0.5).floor().max(0.0) as usize).min(v.size[k] - 1));
    v.data[i[0] + v.size[0] * (i[1] + v.size[1] * i[2])]
}

/// Inclusive bounding box of a non-empty mask.
fn mask_bbox(mask: &[u8], size: [usize; 3]) -> ([usize; 3], [usize; 3]) {
    let [nx, ny, _] = size;
    mask.par_chunks(nx)
        .enumerate()
        .filter_map(|(row, r)| {
            let first = r.iter().position(|&m| m != 0)?;
            let last = r.iter().rposition(|&m| m != 0)?;
            let (y, z) = (row % ny, row / ny);
            Some(([first, y, z], [last, y, z]))
        })
        .reduce(
            || ([usize::MAX; 3], [0; 3]),
            |a, b| {
                (
                    [0, 1, 2].map(|k| a.0[k].min(b.0[k])),
                    [0, 1, 2].map(|k| a.1[k].max(b.1[k])),
                )
            },
        )
}

/// Maps a label mask on `grid` to the grid of `target` by nearest neighbour; returns the volume
/// and its count of non-zero voxels.
fn mask_to_grid(
    mask: &[u8],
    grid: &Grid,
    target: &Grid,
) -> Result<(Volume<u8>, usize), PreprocessError> {
    let map = IndexMap::between(target, grid)?;
    let [nx, ny, _] = target.size;
    let mut data = vec![0u8; target.len()];
    let count = if let Some([tx, ty, tz]) = resample::separable_taps(&map, target.size, grid.size) {
        data.par_chunks_mut(nx)
            .enumerate()
            .map(|(row, out)| {
                let (y, z) = (&ty[row % ny], &tz[row / ny]);
                if !(y.inside && z.inside) {
                    return 0;
                }
                let mut n = 0usize;
                for (o, x) in out.iter_mut().zip(tx.iter()) {
                    let m = if x.inside {
                        mask[x.on + y.on + z.on]
                    } else {
                        0
                    };
                    if m != 0 {
                        *o = m;
                        n += 1;
                    }
                }
                n
            })
            .sum()
    } else {
        data.par_chunks_mut(nx)
            .enumerate()
            .map(|(row, out)| {
                let (start, step) = map.row(row % ny, row / ny);
                let mut n = 0usize;
                for (x, o) in out.iter_mut().enumerate() {
                    let c = [0, 1, 2].map(|k| start[k] + step[k] * x as f64);
                    if (0..3).all(|k| c[k] >= -0.5 && c[k] < grid.size[k] as f64 - 0.5) {
                        let i = [0, 1, 2].map(|k| {
                            ((c[k] + 0.5).floor().max(0.0) as usize).min(grid.size[k] - 1)
                        });
                        let m = mask[i[0] + grid.size[0] * (i[1] + grid.size[1] * i[2])];
                        if m != 0 {
                            *o = m;
                            n += 1;
                        }
                    }
                }
                n
            })
            .sum()
    };
    Ok((
        Volume {
            data,
            size: target.size,
            spacing: target.spacing,
            origin: target.origin,
            direction: target.direction,
        },
        count,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_indices_cover_and_repeat() {
        assert_eq!(uniform_indices(5, 3), vec![0, 2, 4]);
        assert_eq!(uniform_indices(3, 5), vec![0, 1, 1, 2, 2]);
        assert_eq!(uniform_indices(200, 128).len(), 128);
        assert_eq!(*uniform_indices(200, 128).last().unwrap_or(&0), 199);
        assert_eq!(uniform_indices(7, 1), vec![3]);
    }

    #[test]
    fn spec_serde_names_and_defaults() {
        let s: InputSpec =
            serde_json::from_str(r#"{"spacing_mm": 1.6, "channels": "ct_lesion_zeros"}"#)
                .expect("parses");
        assert_eq!(s.spacing_mm, 1.6);
        assert_eq!(s.channels, ChannelLayout::CtLesionZeros);
        assert_eq!(s.crop_xy, [240, 240]);
        assert_eq!(
            serde_json::to_value(ChannelLayout::CtX3).expect("serialises"),
            serde_json::json!("ct_x3")
        );
        assert!(serde_json::from_str::<InputSpec>(r#"{"spacing": 1.6}"#).is_err());
        let bad = InputSpec {
            hu_window: [300.0, -1100.0],
            ..InputSpec::default()
        };
        assert!(bad.validate().is_err());
    }
}
