//! Synthetic chest CT phantoms with a known lung mask and a chosen CO-RADS lesion burden.
//!
//! [`phantom`] draws a deterministic chest-like CT in Hounsfield units from a seed: air outside,
//! a carbon-fibre table, subcutaneous fat, chest-wall muscle, vertebrae with discs, ribs with
//! costal cartilage, sternum, heart, aorta, oesophagus, gastric air below the diaphragm, and two
//! lungs (about -850 HU, denser posteriorly, with smooth texture) holding branching vessels, the
//! trachea with both main bronchi, and lesions whose burden follows the CO-RADS category:
//!
//! | CO-RADS | ground-glass opacities (-700..-450 HU) | consolidations (-100..50 HU) |
//! |---|---|---|
//! | 1 | none | none |
//! | 2 | 1 % of the lung volume | none |
//! | 3 | 4 % | none |
//! | 4 | 10 % | none |
//! | 5 | 15 % | 8 % |
//!
//! (burdens are nominal: the sum of the lesion ellipsoids' volumes before clipping to the lungs).
//! Lesions are placed bilaterally with a peripheral and posterior preference, as COVID-19
//! lesions are, so some consolidations touch the pleura.
//!
//! The anatomy is fixed in millimetres and centred on the physical origin; the default grid
//! (256 x 256 x 160 voxels of 1.4 x 1.4 x 2.0 mm, a 358 x 358 x 320 mm field of view) holds all
//! of it with about 45 mm above and below the lungs. Smaller fields of view cut the body.
//! Identity direction; noise is white, 10 HU; values are rounded to whole HU in [-1024, 3071];
//! outside the reconstruction circle (the largest axial circle in the grid) every voxel is
//! -1024 HU, as scanners write it.
//!
//! The second volume returned is the true lung mask (1 inside the lungs, vessels and lesions
//! included, trachea and main bronchi outside the lungs excluded), for testing segmentation;
//! [`phantom_with_lesions`] also returns the lesion labels (where a lesion sets at least half of
//! a lung voxel's value: 1 ground glass, 2 consolidation, which wins where they overlap), for
//! testing where a heat map looks and for training lesion segmenters.
//!
//! Same seed, same configuration: the same voxels on every machine and thread count (per-voxel
//! noise is a hash of the seed and the voxel index, not a shared random stream).

mod anatomy;

use std::path::PathBuf;

use rayon::prelude::*;
use thiserror::Error;

use crate::rng::{fast_normal, hash2, Rng};
use crate::volume::Volume;
use anatomy::{normalize, sub, Anatomy, Ellipsoid, Lung, Tube};

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomConfig {
    /// Voxels along x, y, z.
    pub size: [usize; 3],
    /// Voxel spacing (mm) along x, y, z.
    pub spacing: [f64; 3],
    /// Seed of every random choice (anatomy jitter, vessels, lesions, noise).
    pub seed: u64,
    /// CO-RADS category 1-5: the lesion burden (see the module docs).
    pub co_rads: u8,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            size: [256, 256, 160],
            spacing: [1.4, 1.4, 2.0],
            seed: 0,
            co_rads: 1,
        }
    }
}

/// Errors of phantom generation and of the `synth` command.
#[derive(Debug, Error)]
pub enum SynthError {
    /// CO-RADS outside 1-5.
    #[error("CO-RADS category must be 1 to 5, got {0}")]
    CoRads(u8),
    /// A zero or absurdly large size.
    #[error("phantom size must be 1 to 4096 voxels per axis, got {0:?}")]
    Size([usize; 3]),
    /// A non-positive or non-finite spacing.
    #[error("phantom spacing must be positive and finite, got {0:?}")]
    Spacing([f64; 3]),
    /// Writing an output file failed (the error names the file).
    #[error(transparent)]
    Write(#[from] crate::volume::VolumeError),
}

/// Lesion kinds and their HU ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LesionKind {
    GroundGlass,
    Consolidation,
}

/// Label of ground-glass voxels in [`Phantom::lesions`].
pub const GROUND_GLASS: f32 = 1.0;
/// Label of consolidation voxels in [`Phantom::lesions`].
pub const CONSOLIDATION: f32 = 2.0;

#[derive(Debug, Clone, Copy)]
struct Lesion {
    shape: Ellipsoid,
    hu: f32,
    kind: LesionKind,
}

/// A smooth random field: N(0, 1) values on a coarse lattice, trilinearly interpolated.
struct NoiseField {
    origin: [f64; 3],
    step: f64,
    dims: [usize; 3],
    values: Vec<f32>,
}

impl NoiseField {
    fn new(key: u64, lo: [f64; 3], hi: [f64; 3], step: f64) -> Self {
        let dims = [0, 1, 2].map(|k| ((hi[k] - lo[k]) / step).ceil().max(0.0) as usize + 2);
        let n = dims[0] * dims[1] * dims[2];
        let values = (0..n as u64).map(|i| fast_normal(hash2(key, i))).collect();
        Self {
            origin: lo,
            step,
            dims,
            values,
        }
    }

    #[inline]
    fn sample(&self, p: [f64; 3]) -> f32 {
        let mut i0 = [0usize; 3];
        let mut f = [0f32; 3];
        for k in 0..3 {
            let c = ((p[k] - self.origin[k]) / self.step).clamp(0.0, (self.dims[k] - 2) as f64);
            let fl = c.floor();
            i0[k] = (fl as usize).min(self.dims[k] - 2);
            f[k] = (c - i0[k] as f64) as f32;
        }
        let idx = |x: usize, y: usize, z: usize| x + self.dims[0] * (y + self.dims[1] * z);
        let mut acc = 0.0f32;
        for (dz, wz) in [(0, 1.0 - f[2]), (1, f[2])] {
            for (dy, wy) in [(0, 1.0 - f[1]), (1, f[1])] {
                for (dx, wx) in [(0, 1.0 - f[0]), (1, f[0])] {
                    acc += wx * wy * wz * self.values[idx(i0[0] + dx, i0[1] + dy, i0[2] + dz)];
                }
            }
        }
        acc
    }
}

/// Everything random about one phantom.
struct Scene {
    anatomy: Anatomy,
    vessels: Vec<Tube>,
    lesions: Vec<Lesion>,
    lung_texture: NoiseField,
    lesion_texture: NoiseField,
    lesion_edge: NoiseField,
    voxel_key: u64,
}

/// Nominal lesion burden (fraction of lung volume): ground glass, consolidation.
fn burden(co_rads: u8) -> (f64, f64) {
    match co_rads {
        2 => (0.01, 0.0),
        3 => (0.04, 0.0),
        4 => (0.10, 0.0),
        5 => (0.15, 0.08),
        _ => (0.0, 0.0),
    }
}

impl Scene {
    fn new(seed: u64, co_rads: u8, lo: [f64; 3], hi: [f64; 3]) -> Self {
        let mut rng = Rng::new(seed);
        let anatomy = Anatomy::new(&mut rng);
        let mut vessels = Vec::new();
        for lung in &anatomy.lungs {
            vessel_tree(&mut rng, &anatomy, lung, &mut vessels);
        }
        let lesions = place_lesions(&mut rng, &anatomy, co_rads);
        Self {
            lung_texture: NoiseField::new(rng.stream_key(), lo, hi, 5.0),
            lesion_texture: NoiseField::new(rng.stream_key(), lo, hi, 4.0),
            lesion_edge: NoiseField::new(rng.stream_key(), lo, hi, 6.0),
            voxel_key: rng.stream_key(),
            anatomy,
            vessels,
            lesions,
        }
    }
}

/// Pulmonary vessels: binary trees from each hilum, thinning towards the periphery.
fn vessel_tree(rng: &mut Rng, anat: &Anatomy, lung: &Lung, out: &mut Vec<Tube>) {
    let s = lung.side;
    let hilum = [
        lung.c[0] - s * 0.7 * lung.r[0],
        lung.c[1],
        lung.c[2] + 0.2 * lung.r[2],
    ];
    let roots = [
        [s, 0.0, 0.0],
        [0.4 * s, 0.0, 1.0],
        [0.4 * s, 0.0, -1.0],
        [0.3 * s, -1.0, -0.3],
        [0.3 * s, 1.0, -0.3],
        [0.5 * s, 0.5, 0.6],
    ];
    for d in roots {
        let jitter = rng.unit_vector();
        let d = normalize(
            [
                d[0] + 0.3 * jitter[0],
                d[1] + 0.3 * jitter[1],
                d[2] + 0.3 * jitter[2],
            ],
            [s, 0.0, 0.0],
        );
        grow_vessel(rng, anat, hilum, hilum, d, 4.5, 0, out);
    }
}

#[allow(clippy::too_many_arguments)]
fn grow_vessel(
    rng: &mut Rng,
    anat: &Anatomy,
    hilum: [f64; 3],
    p: [f64; 3],
    d: [f64; 3],
    r: f64,
    depth: u32,
    out: &mut Vec<Tube>,
) {
    let len = rng.range(3.0 * r + 8.0, 5.0 * r + 16.0).min(40.0);
    let q = [p[0] + d[0] * len, p[1] + d[1] * len, p[2] + d[2] * len];
    out.push(Tube { a: p, b: q, r });
    if r * 0.8 < 0.8 || depth >= 7 || anat.in_lung(q).is_none() {
        return;
    }
    let away = normalize(sub(q, hilum), d);
    for _ in 0..2 {
        let j = rng.unit_vector();
        let nd = normalize(
            [
                d[0] + 0.6 * away[0] + 0.8 * j[0],
                d[1] + 0.6 * away[1] + 0.8 * j[1],
                d[2] + 0.6 * away[2] + 0.8 * j[2],
            ],
            d,
        );
        let nr = r * rng.range(0.68, 0.8);
        grow_vessel(rng, anat, hilum, q, nd, nr, depth + 1, out);
    }
}

/// Lesions up to the nominal burden, bilateral, preferring the periphery and the posterior lung.
fn place_lesions(rng: &mut Rng, anat: &Anatomy, co_rads: u8) -> Vec<Lesion> {
    let (ggo, cons) = burden(co_rads);
    if ggo + cons <= 0.0 {
        return Vec::new();
    }
    let lung_ml = anat.lung_volume_ml();
    let mut lesions = Vec::new();
    for (kind, fraction) in [
        (LesionKind::GroundGlass, ggo),
        (LesionKind::Consolidation, cons),
    ] {
        let target_mm3 = fraction * lung_ml * 1000.0;
        let mut placed = 0.0;
        let mut tries = 0;
        while placed < target_mm3 && tries < 100_000 {
            tries += 1;
            let lung = &anat.lungs[lesions.len() % 2];
            let (lo, hi) = lung.bbox();
            let p = [0, 1, 2].map(|k| rng.range(lo[k], hi[k]));
            if anat.in_lung(p).is_none() {
                continue;
            }
            let rho = lung.radial_fraction(p);
            let posterior = p[1] > lung.c[1];
            let accept = rho.powi(2) * if posterior { 1.0 } else { 0.6 };
            if rng.uniform() > accept {
                continue;
            }
            let (base, hu) = match kind {
                LesionKind::GroundGlass => (rng.range(8.0, 22.0), rng.range(-700.0, -450.0)),
                LesionKind::Consolidation => (rng.range(6.0, 16.0), rng.range(-100.0, 50.0)),
            };
            let r = [
                base * rng.range(0.8, 1.2),
                base * rng.range(0.8, 1.2),
                base * rng.range(0.8, 1.3),
            ];
            placed += 4.0 / 3.0 * std::f64::consts::PI * r[0] * r[1] * r[2];
            lesions.push(Lesion {
                shape: Ellipsoid { c: p, r },
                hu: hu as f32,
                kind,
            });
        }
    }
    lesions
}

/// Draws the phantom: the CT (HU) and the true lung mask (0/1), on the configured grid.
pub fn phantom(cfg: &PhantomConfig) -> Result<(Volume, Volume), SynthError> {
    let p = phantom_with_lesions(cfg)?;
    Ok((p.ct, p.lungs))
}

/// A phantom with its true masks.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// The CT (HU).
    pub ct: Volume,
    /// The lung mask (0/1).
    pub lungs: Volume,
    /// The lesion labels: lung voxels at least half lesion are [`GROUND_GLASS`] or
    /// [`CONSOLIDATION`], the rest 0.
    pub lesions: Volume,
}

impl Phantom {
    /// The lesion mask: 1 where [`Phantom::lesions`] has any lesion, 0 elsewhere.
    pub fn lesion_mask(&self) -> Volume {
        let mut mask = self.lesions.clone();
        for v in &mut mask.data {
            *v = f32::from(*v > 0.0);
        }
        mask
    }
}

/// [`phantom`] with the lesion labels.
pub fn phantom_with_lesions(cfg: &PhantomConfig) -> Result<Phantom, SynthError> {
    if !(1..=5).contains(&cfg.co_rads) {
        return Err(SynthError::CoRads(cfg.co_rads));
    }
    if cfg.size.iter().any(|&n| n == 0 || n > 4096) {
        return Err(SynthError::Size(cfg.size));
    }
    if cfg.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(SynthError::Spacing(cfg.spacing));
    }
    let [nx, ny, nz] = cfg.size;
    let origin = [0, 1, 2].map(|k| -((cfg.size[k] - 1) as f64) * cfg.spacing[k] / 2.0);
    let mut ct = Volume::filled(cfg.size, cfg.spacing, origin, 0.0);
    let mut mask = Volume::filled(cfg.size, cfg.spacing, origin, 0.0);
    let mut lesions = Volume::filled(cfg.size, cfg.spacing, origin, 0.0);
    let hi = [0, 1, 2].map(|k| -origin[k]);
    let scene = Scene::new(cfg.seed, cfg.co_rads, origin, hi);
    let plane = nx * ny;
    ct.data
        .par_chunks_mut(plane)
        .zip(mask.data.par_chunks_mut(plane))
        .zip(lesions.data.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, ((ct_slice, mask_slice), lesion_slice))| {
            draw_slice(&scene, cfg, origin, k, ct_slice, mask_slice, lesion_slice);
        });
    debug_assert_eq!(ct.data.len(), nx * ny * nz);
    Ok(Phantom {
        ct,
        lungs: mask,
        lesions,
    })
}

/// Voxel-index range [lo, hi] along axis `k` covering physical [a, b], clipped to the grid.
fn index_range(
    cfg: &PhantomConfig,
    origin: [f64; 3],
    k: usize,
    a: f64,
    b: f64,
) -> Option<(usize, usize)> {
    let lo = ((a - origin[k]) / cfg.spacing[k]).ceil().max(0.0);
    let hi = ((b - origin[k]) / cfg.spacing[k]).floor();
    let n = cfg.size[k] as f64;
    if hi < 0.0 || lo >= n || lo > hi {
        return None;
    }
    Some((lo as usize, hi.min(n - 1.0) as usize))
}

/// Draws axial slice `k`: base tissue, lungs, vessels, lesions, airways, noise.
fn draw_slice(
    scene: &Scene,
    cfg: &PhantomConfig,
    origin: [f64; 3],
    k: usize,
    ct: &mut [f32],
    mask: &mut [f32],
    lesion_mask: &mut [f32],
) {
    let [nx, ny, _] = cfg.size;
    let sp = cfg.spacing;
    let anat = &scene.anatomy;
    let z = origin[2] + k as f64 * sp[2];
    let pos = |i: usize, j: usize| {
        [
            origin[0] + i as f64 * sp[0],
            origin[1] + j as f64 * sp[1],
            z,
        ]
    };
    for j in 0..ny {
        for i in 0..nx {
            let p = pos(i, j);
            let idx = i + nx * j;
            if let Some(side) = anat.in_lung(p) {
                let lung = &anat.lungs[side];
                let v = (p[1] - lung.c[1]) / lung.r[1];
                // Dependent (posterior) lung is denser, as in supine patients.
                ct[idx] = -860.0 + 25.0 * v as f32 + 18.0 * scene.lung_texture.sample(p);
                mask[idx] = 1.0;
            } else {
                ct[idx] = anat.base_hu(p);
                mask[idx] = 0.0;
            }
        }
    }
    // Partial-volume width for the tubes: about one in-plane voxel.
    let h = 0.5 * (sp[0] + sp[1]);
    let paint_tube = |t: &Tube, extra: f64, f: &mut dyn FnMut(usize, f64)| {
        let (lo, hi) = t.bbox(extra);
        if z < lo[2] || z > hi[2] {
            return;
        }
        let (Some((i0, i1)), Some((j0, j1))) = (
            index_range(cfg, origin, 0, lo[0], hi[0]),
            index_range(cfg, origin, 1, lo[1], hi[1]),
        ) else {
            return;
        };
        for j in j0..=j1 {
            for i in i0..=i1 {
                f(i + nx * j, t.axis_distance(pos(i, j)));
            }
        }
    };
    for t in &scene.vessels {
        paint_tube(t, h, &mut |idx, d| {
            if mask[idx] > 0.0 {
                let w = ((t.r - d) / h + 0.5).clamp(0.0, 1.0) as f32;
                ct[idx] += w * (40.0 - ct[idx]);
            }
        });
    }
    for lesion in &scene.lesions {
        let (lo, hi) = lesion.shape.bbox();
        if z < lo[2] || z > hi[2] {
            continue;
        }
        let (Some((i0, i1)), Some((j0, j1))) = (
            index_range(cfg, origin, 0, lo[0], hi[0]),
            index_range(cfg, origin, 1, lo[1], hi[1]),
        ) else {
            continue;
        };
        let (amp, edge, label) = match lesion.kind {
            LesionKind::GroundGlass => (35.0, 0.35, GROUND_GLASS),
            LesionKind::Consolidation => (20.0, 0.2, CONSOLIDATION),
        };
        for j in j0..=j1 {
            for i in i0..=i1 {
                let idx = i + nx * j;
                if mask[idx] == 0.0 {
                    continue;
                }
                let p = pos(i, j);
                // An irregular outline: the normalised radius wobbles with a smooth field.
                let q = lesion.shape.q(p) * (1.0 + 0.25 * scene.lesion_edge.sample(p) as f64);
                let w = ((1.0 - q) / edge).clamp(0.0, 1.0) as f32;
                if w >= 0.5 {
                    lesion_mask[idx] = lesion_mask[idx].max(label);
                }
                if w > 0.0 {
                    let target = lesion.hu + amp * scene.lesion_texture.sample(p);
                    ct[idx] += w * (target - ct[idx]);
                }
            }
        }
    }
    for (tube, wall) in &anat.airways {
        let outer = tube.r + wall;
        paint_tube(tube, *wall, &mut |idx, d| {
            if d <= tube.r {
                ct[idx] = -1000.0;
            } else if d <= outer {
                ct[idx] = 40.0;
            }
        });
    }
    // Airway lumens are painted after the walls of the other segments so they connect.
    for (tube, _) in &anat.airways {
        paint_tube(tube, 0.0, &mut |idx, d| {
            if d <= tube.r {
                ct[idx] = -1000.0;
            }
        });
    }
    // Reconstruction circle: scanners write -1024 HU without noise outside it.
    let fov_r2 = (0.5 * (nx as f64 * sp[0]).min(ny as f64 * sp[1])).powi(2);
    let base = (k * nx * ny) as u64;
    for (n, v) in ct.iter_mut().enumerate() {
        let p = pos(n % nx, n / nx);
        if p[0] * p[0] + p[1] * p[1] > fov_r2 {
            *v = -1024.0;
            mask[n] = 0.0;
            lesion_mask[n] = 0.0;
            continue;
        }
        let noise = 10.0 * fast_normal(hash2(scene.voxel_key, base + n as u64));
        *v = (*v + noise).round().clamp(-1024.0, 3071.0);
    }
}

/// A 64-bit hash of (seed, counter), for tests elsewhere in the crate that need noise.
#[cfg(test)]
pub(crate) fn test_hash(seed: u64, i: u64) -> u64 {
    hash2(seed, i)
}

/// What [`run`] draws and where it writes it.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Output CT (.mha, int16 HU).
    pub out: PathBuf,
    /// Random seed: the same seed gives a byte-identical file.
    pub seed: u64,
    /// CO-RADS category 1-5 (lesion burden).
    pub co_rads: u8,
    /// Grid size X,Y,Z in voxels.
    pub size: [usize; 3],
    /// Voxel spacing SX,SY,SZ in mm.
    pub spacing: [f64; 3],
    /// Also write the true lung mask here (.mha, uint8 0/1).
    pub lung_mask: Option<PathBuf>,
    /// Also write the true lesion mask here (.mha, uint8 0/1: lung voxels at least half lesion).
    pub lesion_mask: Option<PathBuf>,
    /// Also write the lesion labels here (.mha, uint8: 1 ground glass, 2 consolidation).
    pub lesion_labels: Option<PathBuf>,
}

/// Runs `ctgrade synth`: draws the phantom and writes the CT (int16) and optionally the mask.
pub fn run(args: &SynthOptions) -> Result<(), SynthError> {
    use crate::volume::{write_with_options, ElementType, WriteOptions};
    let cfg = PhantomConfig {
        size: args.size,
        spacing: args.spacing,
        seed: args.seed,
        co_rads: args.co_rads,
    };
    let p = phantom_with_lesions(&cfg)?;
    // Phantoms are small and get committed as test inputs: favour size over speed.
    let options = WriteOptions {
        compress: true,
        compression_level: 9,
    };
    let save = |path: &PathBuf, vol: &Volume, ty| {
        write_with_options(path, vol, ty, &options).map_err(SynthError::Write)
    };
    save(&args.out, &p.ct, ElementType::Short)?;
    if let Some(path) = &args.lung_mask {
        save(path, &p.lungs, ElementType::UChar)?;
    }
    if let Some(path) = &args.lesion_mask {
        save(path, &p.lesion_mask(), ElementType::UChar)?;
    }
    if let Some(path) = &args.lesion_labels {
        save(path, &p.lesions, ElementType::UChar)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lesion_mask_lies_in_the_lungs_and_grows_with_co_rads() {
        let fraction = |co_rads| {
            let cfg = PhantomConfig {
                size: [96, 96, 64],
                spacing: [3.75, 3.75, 5.0],
                seed: 3,
                co_rads,
            };
            let p = phantom_with_lesions(&cfg).unwrap();
            let (mut lesion, mut lung, mut consolidation) = (0usize, 0usize, 0usize);
            for (l, m) in p.lesions.data.iter().zip(&p.lungs.data) {
                assert!(*l == 0.0 || *m == 1.0, "lesion voxel outside the lungs");
                assert!([0.0, GROUND_GLASS, CONSOLIDATION].contains(l), "label {l}");
                lesion += usize::from(*l > 0.0);
                consolidation += usize::from(*l == CONSOLIDATION);
                lung += usize::from(*m == 1.0);
            }
            // Only CO-RADS 5 has consolidations.
            assert_eq!(consolidation > 0, co_rads == 5, "CO-RADS {co_rads}");
            lesion as f64 / lung as f64
        };
        let f: Vec<f64> = (1..=5).map(fraction).collect();
        assert_eq!(f[0], 0.0);
        assert!(f.windows(2).all(|w| w[0] < w[1]), "{f:?}");
        assert!(f[4] > 0.05 && f[4] < 0.5, "{f:?}");
    }
}
