//! The phantom's anatomy: analytic shapes in physical space (mm, LPS, centred on the origin).
//!
//! Sizes are those of an adult chest: body 330 x 240 mm, lungs about 230 mm tall and 3-4 L
//! together. Every seed jitters the scale a little so that phantoms differ.

use crate::rng::Rng;

/// An ellipse in the axial plane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ellipse {
    pub cx: f64,
    pub cy: f64,
    pub a: f64,
    pub b: f64,
}

impl Ellipse {
    /// Squared normalised radius: below 1 inside.
    #[inline]
    pub fn q(&self, x: f64, y: f64) -> f64 {
        let u = (x - self.cx) / self.a;
        let v = (y - self.cy) / self.b;
        u * u + v * v
    }

    /// Approximate signed distance (mm) to the outline, negative inside.
    #[inline]
    pub fn signed_distance(&self, x: f64, y: f64) -> f64 {
        let r = self.q(x, y).sqrt();
        let (dx, dy) = (x - self.cx, y - self.cy);
        let d = (dx * dx + dy * dy).sqrt();
        if r < 1e-9 {
            return -self.a.min(self.b);
        }
        // Distance along the ray from the centre: exact on circles, close on mild ellipses.
        d - d / r
    }
}

/// An axis-aligned ellipsoid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ellipsoid {
    pub c: [f64; 3],
    pub r: [f64; 3],
}

impl Ellipsoid {
    /// Squared normalised radius: below 1 inside.
    #[inline]
    pub fn q(&self, p: [f64; 3]) -> f64 {
        let u = (p[0] - self.c[0]) / self.r[0];
        let v = (p[1] - self.c[1]) / self.r[1];
        let w = (p[2] - self.c[2]) / self.r[2];
        u * u + v * v + w * w
    }

    /// Inside after growing every semi-axis by `grow` mm.
    #[inline]
    pub fn contains_grown(&self, p: [f64; 3], grow: f64) -> bool {
        let u = (p[0] - self.c[0]) / (self.r[0] + grow);
        let v = (p[1] - self.c[1]) / (self.r[1] + grow);
        let w = (p[2] - self.c[2]) / (self.r[2] + grow);
        u * u + v * v + w * w <= 1.0
    }

    /// Bounding box (min, max corners).
    pub fn bbox(&self) -> ([f64; 3], [f64; 3]) {
        (
            [
                self.c[0] - self.r[0],
                self.c[1] - self.r[1],
                self.c[2] - self.r[2],
            ],
            [
                self.c[0] + self.r[0],
                self.c[1] + self.r[1],
                self.c[2] + self.r[2],
            ],
        )
    }
}

/// A capsule: all points within `r` of the segment `a`-`b`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tube {
    pub a: [f64; 3],
    pub b: [f64; 3],
    pub r: f64,
}

impl Tube {
    /// Distance from `p` to the axis segment.
    #[inline]
    pub fn axis_distance(&self, p: [f64; 3]) -> f64 {
        let ab = sub(self.b, self.a);
        let ap = sub(p, self.a);
        let len2 = dot(ab, ab);
        let t = if len2 > 0.0 {
            (dot(ap, ab) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let c = [
            self.a[0] + t * ab[0],
            self.a[1] + t * ab[1],
            self.a[2] + t * ab[2],
        ];
        let d = sub(p, c);
        dot(d, d).sqrt()
    }

    /// Bounding box grown by `extra` mm.
    pub fn bbox(&self, extra: f64) -> ([f64; 3], [f64; 3]) {
        let r = self.r + extra;
        let mut lo = [0.0; 3];
        let mut hi = [0.0; 3];
        for k in 0..3 {
            lo[k] = self.a[k].min(self.b[k]) - r;
            hi[k] = self.a[k].max(self.b[k]) + r;
        }
        (lo, hi)
    }
}

/// One lung: a vertical ellipse-based body with a rounded apex and a diaphragm dome at the base.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lung {
    /// +1 for the patient's left lung (+x in LPS), -1 for the right.
    pub side: f64,
    pub c: [f64; 3],
    pub r: [f64; 3],
}

impl Lung {
    /// Inside the lung's outer shape, before organs carve it.
    #[inline]
    pub fn shape_contains(&self, p: [f64; 3]) -> bool {
        let w = (p[2] - self.c[2]) / self.r[2];
        if !(-1.0..=1.0).contains(&w) {
            return false;
        }
        let u = (p[0] - self.c[0]) / self.r[0];
        let v = (p[1] - self.c[1]) / self.r[1];
        let r2 = u * u + v * v;
        // Squared cross-section radius: a half-ellipsoid apex, slightly narrowing towards the base.
        let f = if w > 0.0 {
            1.0 - w * w
        } else {
            1.0 - 0.1 * w * w
        };
        if r2 > f {
            return false;
        }
        // The diaphragm dome: the base is highest at the centre and lowest at the lateral,
        // anterior and posterior rim (the costophrenic recesses); medially it stays high.
        let medial = (-u * self.side).max(0.0);
        let base = -1.0 + 0.45 * (1.0 - r2).max(0.0) + 0.4 * medial * medial;
        w >= base
    }

    /// Radial position in the cross-section: 0 at the axis, 1 at the outline.
    pub fn radial_fraction(&self, p: [f64; 3]) -> f64 {
        let w = ((p[2] - self.c[2]) / self.r[2]).clamp(-1.0, 1.0);
        let u = (p[0] - self.c[0]) / self.r[0];
        let v = (p[1] - self.c[1]) / self.r[1];
        let f = if w > 0.0 {
            1.0 - w * w
        } else {
            1.0 - 0.1 * w * w
        };
        ((u * u + v * v) / f.max(1e-6)).sqrt()
    }

    /// Physical z of the dome's top (the base at the lung's axis).
    pub fn dome_top_z(&self) -> f64 {
        self.c[2] - 0.55 * self.r[2]
    }

    /// Bounding box.
    pub fn bbox(&self) -> ([f64; 3], [f64; 3]) {
        (
            [
                self.c[0] - self.r[0],
                self.c[1] - self.r[1],
                self.c[2] - self.r[2],
            ],
            [
                self.c[0] + self.r[0],
                self.c[1] + self.r[1],
                self.c[2] + self.r[2],
            ],
        )
    }
}

/// A rib: a band that follows the inner chest wall, descending anteriorly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rib {
    pub z: f64,
}

/// Everything that is not random per voxel.
#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    pub body: Ellipse,
    pub fat_inner: Ellipse,
    pub cavity: Ellipse,
    pub rib_path: Ellipse,
    pub rib_radius: [f64; 2],
    pub ribs: Vec<Rib>,
    pub table_y: [f64; 2],
    pub table_half_width: f64,
    pub lungs: [Lung; 2],
    pub heart: Ellipsoid,
    pub aorta: Ellipse,
    pub vertebra: Ellipse,
    pub disc_period: f64,
    pub canal: Ellipse,
    pub spinous: Ellipse,
    pub transverse: [Ellipse; 2],
    pub sternum: Ellipse,
    pub sternum_z: [f64; 2],
    pub esophagus: Ellipse,
    pub esophagus_lumen: Ellipse,
    pub stomach: Ellipsoid,
    /// Trachea and main bronchi: (lumen, wall thickness).
    pub airways: Vec<(Tube, f64)>,
}

/// Pleura and intercostal tissue between the inner rib outline and the lungs (mm).
const PLEURA_MM: f64 = 2.0;

impl Anatomy {
    /// A randomly jittered adult chest.
    pub fn new(rng: &mut Rng) -> Self {
        let s = rng.range(0.93, 1.07); // axial scale
        let sz = rng.range(0.92, 1.08); // craniocaudal scale
        let e = |cx: f64, cy: f64, a: f64, b: f64| Ellipse {
            cx: cx * s,
            cy: cy * s,
            a: a * s,
            b: b * s,
        };
        let body = e(0.0, 0.0, 165.0, 120.0);
        let lung_r = [56.0 * s * rng.range(0.95, 1.05), 80.0 * s, 115.0 * sz];
        let lung = |side: f64, jitter: f64| Lung {
            side,
            c: [side * 80.0 * s, 5.0 * s, 3.0 * sz * jitter],
            r: [
                lung_r[0] * (1.0 + 0.03 * jitter),
                lung_r[1],
                lung_r[2] * (1.0 - 0.04 * jitter),
            ],
        };
        let right = lung(-1.0, rng.range(-1.0, 1.0));
        let left = lung(1.0, rng.range(-1.0, 1.0));
        let heart = Ellipsoid {
            c: [15.0 * s, -25.0 * s, -45.0 * sz + rng.range(-5.0, 5.0)],
            r: [60.0 * s, 52.0 * s, 55.0 * sz],
        };
        let carina_z = 50.0 * sz;
        let top = 400.0; // beyond any field of view: the trachea leaves through the top
        let trachea_c = [0.0, -5.0 * s];
        let mut airways = vec![(
            Tube {
                a: [trachea_c[0], trachea_c[1], top],
                b: [trachea_c[0], trachea_c[1], carina_z],
                r: 8.5 * s,
            },
            2.0,
        )];
        for side in [-1.0, 1.0] {
            let hilum = [side * 36.0 * s, 0.0, carina_z - 30.0 * sz];
            airways.push((
                Tube {
                    a: [trachea_c[0], trachea_c[1], carina_z],
                    b: hilum,
                    r: 6.0 * s,
                },
                1.5,
            ));
            airways.push((
                Tube {
                    a: hilum,
                    b: [side * 55.0 * s, 8.0 * s, carina_z - 50.0 * sz],
                    r: 4.5 * s,
                },
                1.0,
            ));
        }
        let ribs = (0..11)
            .map(|k| Rib {
                z: (95.0 - 22.0 * k as f64) * sz,
            })
            .collect();
        let stomach_z = left.dome_top_z() - 36.0 * sz;
        Self {
            body,
            fat_inner: e(0.0, -2.0, 150.0, 106.0),
            cavity: e(0.0, 0.0, 133.0, 92.0),
            rib_path: e(0.0, 0.0, 141.0, 100.0),
            rib_radius: [5.5 * s, 4.5 * sz],
            ribs,
            table_y: [body.cy + body.b + 2.0, body.cy + body.b + 10.0],
            table_half_width: 215.0,
            lungs: [right, left],
            heart,
            aorta: e(22.0, 42.0, 12.0, 12.0),
            vertebra: e(0.0, 70.0, 18.0, 17.0),
            disc_period: 28.0 * sz,
            canal: e(0.0, 96.0, 8.0, 8.0),
            spinous: e(0.0, 110.0, 7.0, 12.0),
            transverse: [e(-24.0, 92.0, 12.0, 6.0), e(24.0, 92.0, 12.0, 6.0)],
            sternum: e(0.0, -98.0, 14.0, 7.0),
            sternum_z: [-90.0 * sz, 80.0 * sz],
            esophagus: e(-6.0, 34.0, 8.0, 7.0),
            esophagus_lumen: e(-6.0, 34.0, 3.0, 2.5),
            stomach: Ellipsoid {
                c: [58.0 * s, -15.0 * s, stomach_z],
                r: [32.0 * s, 28.0 * s, 16.0 * sz],
            },
            airways,
        }
    }

    /// The true lung mask: a lung's shape minus the organs that indent it, inside the pleura.
    #[inline]
    pub fn in_lung(&self, p: [f64; 3]) -> Option<usize> {
        let side = if p[0] < 0.0 { 0 } else { 1 };
        let lung = &self.lungs[side];
        if !lung.shape_contains(p) {
            return None;
        }
        if self.cavity.signed_distance(p[0], p[1]) > -PLEURA_MM
            || self.heart.contains_grown(p, 4.0)
            || self.aorta.signed_distance(p[0], p[1]) < 3.0
            || self.vertebra.signed_distance(p[0], p[1]) < 4.0
        {
            return None;
        }
        Some(side)
    }

    /// Hounsfield units of the tissue at `p` outside the lungs, vessels, lesions and airways
    /// (before noise).
    pub fn base_hu(&self, p: [f64; 3]) -> f32 {
        let [x, y, z] = p;
        if y >= self.table_y[0] && y <= self.table_y[1] && x.abs() <= self.table_half_width {
            return 250.0; // carbon-fibre table top
        }
        if self.body.q(x, y) > 1.0 {
            return -1000.0;
        }
        // Bone first: it crosses the tissue layers.
        if let Some(hu) = self.bone_hu(p) {
            return hu;
        }
        if self.fat_inner.q(x, y) > 1.0 {
            return -100.0; // subcutaneous fat
        }
        if self.cavity.q(x, y) > 1.0 {
            return 45.0; // chest-wall muscle
        }
        if self.stomach.q(p) <= 1.0 {
            return -1000.0; // gastric air below the left hemidiaphragm
        }
        if self.esophagus.q(x, y) <= 1.0 {
            let lumen = self.esophagus_lumen.q(x, y) <= 1.0 && (z - 20.0).abs() < 60.0;
            return if lumen { -1000.0 } else { 40.0 };
        }
        if self.aorta.q(x, y) <= 1.0 {
            return 50.0;
        }
        if self.heart.q(p) <= 1.0 {
            return 40.0;
        }
        if self.canal.q(x, y) <= 1.0 {
            return 15.0;
        }
        let below_diaphragm = z < self.lungs[0].dome_top_z().min(self.lungs[1].dome_top_z()) + 5.0;
        if below_diaphragm {
            55.0 // liver and upper abdomen
        } else {
            -60.0 // mediastinal fat
        }
    }

    fn bone_hu(&self, p: [f64; 3]) -> Option<f32> {
        let [x, y, z] = p;
        // Vertebral body with cortex, intervertebral discs every `disc_period` mm.
        let dv = self.vertebra.signed_distance(x, y);
        if dv <= 0.0 {
            let phase = z.rem_euclid(self.disc_period);
            if phase < 5.0 {
                return Some(85.0);
            }
            return Some(if dv > -1.5 { 700.0 } else { 230.0 });
        }
        if self.spinous.q(x, y) <= 1.0 || self.transverse.iter().any(|t| t.q(x, y) <= 1.0) {
            return Some(550.0);
        }
        if self.sternum.q(x, y) <= 1.0 && z >= self.sternum_z[0] && z <= self.sternum_z[1] {
            return Some(450.0);
        }
        // Ribs: a band around `rib_path`, descending anteriorly; costal cartilage in front.
        let d = self.rib_path.signed_distance(x, y);
        if d.abs() <= self.rib_radius[0] && !(y > 0.0 && x.abs() < 30.0) {
            for rib in &self.ribs {
                let zc = rib.z + 0.3 * y;
                let dz = z - zc;
                let q = (d / self.rib_radius[0]).powi(2) + (dz / self.rib_radius[1]).powi(2);
                if q <= 1.0 {
                    if y < -55.0 && x.abs() < 45.0 {
                        return Some(110.0); // cartilage
                    }
                    return Some(if q > 0.45 { 750.0 } else { 260.0 });
                }
            }
        }
        None
    }

    /// Lung volume (mL) estimated on a 3 mm lattice.
    pub fn lung_volume_ml(&self) -> f64 {
        let h = 3.0;
        let mut n = 0usize;
        for lung in &self.lungs {
            let (lo, hi) = lung.bbox();
            let steps = |k: usize| ((hi[k] - lo[k]) / h).ceil() as usize;
            for k in 0..steps(2) {
                for j in 0..steps(1) {
                    for i in 0..steps(0) {
                        let p = [
                            lo[0] + (i as f64 + 0.5) * h,
                            lo[1] + (j as f64 + 0.5) * h,
                            lo[2] + (k as f64 + 0.5) * h,
                        ];
                        if self.in_lung(p).is_some() {
                            n += 1;
                        }
                    }
                }
            }
        }
        n as f64 * h * h * h / 1000.0
    }
}

#[inline]
pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

#[inline]
pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// `v / |v|`, or `fallback` for a zero vector.
pub(crate) fn normalize(v: [f64; 3], fallback: [f64; 3]) -> [f64; 3] {
    let n = dot(v, v).sqrt();
    if n > 1e-12 {
        [v[0] / n, v[1] / n, v[2] / n]
    } else {
        fallback
    }
}
