//! `ctgrade info FILE`: the geometry, element type and value range of a volume file, as JSON.

use std::path::Path;

use serde::Serialize;

use crate::volume::{self, ElementType, VolumeError};

/// What `ctgrade info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Voxels along x, y, z.
    pub size: [usize; 3],
    /// Spacing in mm along x, y, z.
    pub spacing: [f64; 3],
    /// Physical position (mm, LPS) of voxel (0, 0, 0).
    pub origin: [f64; 3],
    /// Direction cosines, row-major; column j is the direction of axis j.
    pub direction: [f64; 9],
    /// Element type stored in the file (as SimpleITK would report it).
    pub element_type: ElementType,
    /// Smallest voxel value.
    pub min: f64,
    /// Largest voxel value.
    pub max: f64,
    /// Mean voxel value.
    pub mean: f64,
}

/// Reads `path` and summarises it.
pub fn info(path: &Path) -> Result<Info, VolumeError> {
    let (vol, element_type) = volume::read_with_type(path)?;
    let stats = vol.stats();
    Ok(Info {
        size: vol.size,
        spacing: vol.spacing,
        origin: vol.origin,
        direction: vol.direction,
        element_type,
        min: stats.min,
        max: stats.max,
        mean: stats.mean,
    })
}

/// The body of `ctgrade info FILE`: prints one JSON object on stdout.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let info = info(path)?;
    println!("{}", serde_json::to_string(&info)?);
    Ok(())
}
