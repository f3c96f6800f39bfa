//! Volume I/O: the in-memory CT [`Volume`] and its file formats (MetaImage, NIfTI; DICOM series
//! folders for reading).
//!
//! Geometry follows ITK / SimpleITK in LPS physical space, the convention of MetaImage and of
//! grand-challenge.org: the physical point of voxel index `i` is `origin + direction * (spacing ∘ i)`,
//! where the columns of `direction` are the directions of the x, y and z axes.

use serde::Serialize;

/// A 3-D scalar image with ITK geometry. Voxels are stored x fastest, then y, then z. Images
/// hold `f32` (CT volumes in Hounsfield units); label maps such as the lung mask hold `u8`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T = f32> {
    /// Voxel values (x fastest).
    pub data: Vec<T>,
    /// Number of voxels along x, y, z.
    pub size: [usize; 3],
    /// Voxel spacing in mm along x, y, z.
    pub spacing: [f64; 3],
    /// Physical position (mm, LPS) of the centre of voxel (0, 0, 0).
    pub origin: [f64; 3],
    /// Direction cosines, row-major 3x3; column j is the direction of axis j.
    pub direction: [f64; 9],
}

/// The identity direction matrix.
pub const IDENTITY: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

impl Volume {
    /// A volume filled with `value`, identity direction.
    pub fn filled(size: [usize; 3], spacing: [f64; 3], origin: [f64; 3], value: f32) -> Self {
        Self {
            data: vec![value; size[0] * size[1] * size[2]],
            size,
            spacing,
            origin,
            direction: IDENTITY,
        }
    }

    /// Summary statistics of the voxel values (NaN voxels are skipped).
    pub fn stats(&self) -> Stats {
        let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0usize);
        for &v in &self.data {
            if v.is_nan() {
                continue;
            }
            let v = v as f64;
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
        let mean = if n > 0 { sum / n as f64 } else { f64::NAN };
        Stats { min, max, mean }
    }
}

impl<T> Volume<T> {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.size[0] * self.size[1] * self.size[2]
    }

    /// True when the volume has no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear index of voxel (x, y, z).
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.size[0] * (y + self.size[1] * z)
    }

    /// Value of voxel (x, y, z).
    #[inline]
    pub fn at(&self, x: usize, y: usize, z: usize) -> T
    where
        T: Copy,
    {
        self.data[self.index(x, y, z)]
    }

    /// Physical point (mm, LPS) of a continuous voxel index.
    pub fn index_to_physical(&self, idx: [f64; 3]) -> [f64; 3] {
        let s = [
            idx[0] * self.spacing[0],
            idx[1] * self.spacing[1],
            idx[2] * self.spacing[2],
        ];
        let d = &self.direction;
        [
            self.origin[0] + d[0] * s[0] + d[1] * s[1] + d[2] * s[2],
            self.origin[1] + d[3] * s[0] + d[4] * s[1] + d[5] * s[2],
            self.origin[2] + d[6] * s[0] + d[7] * s[1] + d[8] * s[2],
        ]
    }

    /// Continuous voxel index of a physical point. Assumes an orthonormal direction matrix,
    /// whose inverse is its transpose.
    pub fn physical_to_index(&self, p: [f64; 3]) -> [f64; 3] {
        let v = [
            p[0] - self.origin[0],
            p[1] - self.origin[1],
            p[2] - self.origin[2],
        ];
        let d = &self.direction;
        [
            (d[0] * v[0] + d[3] * v[1] + d[6] * v[2]) / self.spacing[0],
            (d[1] * v[0] + d[4] * v[1] + d[7] * v[2]) / self.spacing[1],
            (d[2] * v[0] + d[5] * v[1] + d[8] * v[2]) / self.spacing[2],
        ]
    }

    /// The same geometry with every value converted by `f`.
    pub fn map<U: Send>(&self, f: impl Fn(T) -> U + Sync) -> Volume<U>
    where
        T: Copy + Sync,
    {
        use rayon::prelude::*;
        Volume {
            data: self.data.par_iter().map(|&v| f(v)).collect(),
            size: self.size,
            spacing: self.spacing,
            origin: self.origin,
            direction: self.direction,
        }
    }
}

/// Minimum, maximum and mean voxel value.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub mean: f64,
}

pub mod dicom;
mod element;
mod error;
pub mod info;
mod io;
mod limits;
mod metaimage;
mod nifti;
mod output;

pub use element::{ElementType, Voxel};
pub use error::VolumeError;
pub use io::{
    read, read_with_limits, read_with_type, read_with_type_and_limits, write, write_mha_channels,
    write_with_options,
};
pub use limits::ReadLimits;
pub use output::WriteOptions;
