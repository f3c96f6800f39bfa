//! Format dispatch for volume files: the format by extension (a folder: a DICOM series).

use std::path::Path;

use super::element::{ElementType, Voxel};
use super::error::VolumeError;
use super::limits::{check_regular_file, ReadLimits};
use super::output::WriteOptions;
use super::{metaimage, nifti, Volume};

/// File formats known by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Mha,
    Mhd,
    Nii,
    NiiGz,
}

fn format_of(path: &Path) -> Result<Format, VolumeError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".mha") {
        Ok(Format::Mha)
    } else if name.ends_with(".mhd") {
        Ok(Format::Mhd)
    } else if name.ends_with(".nii") {
        Ok(Format::Nii)
    } else if name.ends_with(".nii.gz") {
        Ok(Format::NiiGz)
    } else {
        Err(VolumeError::UnknownExtension { path: path.into() })
    }
}

/// Reads a volume (`.mha`, `.mhd`, `.nii`, `.nii.gz`, chosen by extension; a folder is read as a
/// DICOM series, see [`super::dicom`]) with default limits.
pub fn read(path: &Path) -> Result<Volume, VolumeError> {
    read_with_limits(path, &ReadLimits::default())
}

/// Like [`read`], also returning the element type the file stores (for NIfTI with
/// `scl_slope`/`scl_inter` scaling of integers: `Float`, as SimpleITK reports it).
pub fn read_with_type(path: &Path) -> Result<(Volume, ElementType), VolumeError> {
    read_with_type_and_limits(path, &ReadLimits::default())
}

/// Like [`read`], enforcing `limits` instead of the default ones.
pub fn read_with_limits(path: &Path, limits: &ReadLimits) -> Result<Volume, VolumeError> {
    read_with_type_and_limits(path, limits).map(|(v, _)| v)
}

/// Reads a volume and its element type (see [`read_with_type`]), enforcing `limits`.
pub fn read_with_type_and_limits(
    path: &Path,
    limits: &ReadLimits,
) -> Result<(Volume, ElementType), VolumeError> {
    // A path that is not there is said so, whatever its extension.
    let meta = std::fs::metadata(path).map_err(|e| VolumeError::io(path, "cannot open", e))?;
    if meta.is_dir() {
        return super::dicom::read(path, limits);
    }
    let format = format_of(path)?;
    check_regular_file(path, path)?;
    match format {
        Format::Mha | Format::Mhd => metaimage::read(path, limits),
        Format::Nii | Format::NiiGz => nifti::read(path, limits),
    }
}

/// Writes `vol` as `ty` (format by extension) with default [`WriteOptions`]: `.mha` is
/// zlib-compressed like panimg's files, `.mhd` gets its data in `<stem>.zraw`.
/// Values are rounded and saturated to `ty`. The file appears atomically or not at all.
pub fn write<T: Voxel>(path: &Path, vol: &Volume<T>, ty: ElementType) -> Result<(), VolumeError> {
    write_with_options(path, vol, ty, &WriteOptions::default())
}

/// Like [`write()`], with explicit compression options.
pub fn write_with_options<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    ty: ElementType,
    opts: &WriteOptions,
) -> Result<(), VolumeError> {
    let format = format_of(path)?;
    check_writable(path, vol)?;
    match format {
        Format::Mha => metaimage::write(path, vol, ty, opts, false),
        Format::Mhd => metaimage::write(path, vol, ty, opts, true),
        Format::Nii => nifti::write(path, vol, ty, false, opts.compression_level),
        Format::NiiGz => nifti::write(path, vol, ty, true, opts.compression_level),
    }
}

/// Rejects volumes whose fields disagree or whose geometry no reader could use.
fn check_writable<T>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    let bad = |reason: String| VolumeError::Unwritable {
        path: path.into(),
        reason,
    };
    let n = vol.size.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
    if n != Some(vol.data.len()) {
        return Err(bad(format!(
            "size {:?} does not match {} voxel values",
            vol.size,
            vol.data.len()
        )));
    }
    if vol.size.contains(&0) {
        return Err(bad(format!("size {:?} contains 0", vol.size)));
    }
    if vol.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(bad(format!("spacing {:?} is not positive", vol.spacing)));
    }
    if vol
        .origin
        .iter()
        .chain(&vol.direction)
        .any(|x| !x.is_finite())
    {
        return Err(bad("origin or direction is not finite".into()));
    }
    Ok(())
}

/// Writes `channels` on `geometry`'s grid (its size, spacing, origin and direction; its voxels are
/// not written) as one multi-component `.mha` (`ElementNumberOfChannels`), zlib-compressed, e.g.
/// one probability per class. Atomic like [`write()`].
pub fn write_mha_channels(
    path: &Path,
    geometry: &Volume,
    channels: &[&[f32]],
    ty: ElementType,
) -> Result<(), VolumeError> {
    if !matches!(format_of(path)?, Format::Mha) {
        return Err(VolumeError::Unwritable {
            path: path.into(),
            reason: "multi-component images are written as .mha only".into(),
        });
    }
    check_writable(path, geometry)?;
    metaimage::write_channels(path, geometry, channels, ty, &WriteOptions::default())
}
