//! Limits and checks every volume reader applies before it allocates or opens anything, so that
//! a small, hostile or corrupt file cannot make it allocate gigabytes or block.

use std::path::Path;

use super::error::VolumeError;

/// Upper bounds a reader enforces before allocating anything, so that a small, hostile or
/// corrupt header cannot make it allocate gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest accepted number of voxels (x * y * z).
    pub max_voxels: usize,
    /// Largest accepted MetaImage header, in bytes.
    pub max_header_bytes: usize,
}

impl Default for ReadLimits {
    /// 2000 Mi voxels (8 GB as `f32`, far above any CT) and a 64 KiB header.
    fn default() -> Self {
        Self {
            max_voxels: 1024 * 1024 * 2000,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Refuses anything but a regular file (after symbolic links) before it is opened: opening a
/// FIFO blocks until someone writes to it, and a device or folder has no length to check.
/// `path` is the volume named in errors, `file` the file checked (a MetaImage data file).
pub(crate) fn check_regular_file(path: &Path, file: &Path) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(file).map_err(|e| VolumeError::io(file, "cannot open", e))?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file (a pipe, socket or device)"
    };
    let error = std::io::Error::other(format!("{} is {what}", file.display()));
    Err(if path == file {
        VolumeError::io(path, "cannot read", error)
    } else {
        VolumeError::DataFile {
            path: path.into(),
            data: file.into(),
            error,
        }
    })
}

/// Checks the voxel count of `size` against `limits`; returns it.
pub(crate) fn check_voxels(
    path: &Path,
    size: &[usize],
    limits: &ReadLimits,
) -> Result<usize, VolumeError> {
    let n = size.iter().try_fold(1u64, |a, &s| a.checked_mul(s as u64));
    match n {
        Some(n) if n <= limits.max_voxels as u64 => Ok(n as usize),
        _ => Err(VolumeError::TooLarge {
            path: path.into(),
            size: size.iter().map(|&s| s as u64).collect(),
            voxels: n.unwrap_or(u64::MAX),
            limit: limits.max_voxels,
        }),
    }
}

/// The output buffer, zero-filled (lazily by the OS for large sizes). Call only after the
/// size was checked against the limits and the data length.
pub(crate) fn alloc_voxels(voxels: usize) -> Vec<f32> {
    vec![0.0f32; voxels]
}
