//! Format dispatch, read limits and atomic writing for volume files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::element::ElementType;
use super::error::VolumeError;
use super::{metaimage, nifti, Volume};

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

/// How [`write_with_options`] encodes the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// zlib-compress MetaImage data (`.mha`, `.mhd` + `.zraw`); otherwise raw (`.mhd` + `.raw`).
    /// NIfTI compression follows the extension (`.nii.gz`) instead.
    pub compress: bool,
    /// zlib level 0..=9. The default 2 is 3-4x faster than 6 on CT for a 5% larger file
    /// (level 1 is faster again but about 40% larger).
    pub compression_level: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            compress: true,
            compression_level: 2,
        }
    }
}

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
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return super::dicom::read(path, limits);
    }
    let format = format_of(path)?;
    check_regular_file(path, path)?;
    match format {
        Format::Mha | Format::Mhd => metaimage::read(path, limits),
        Format::Nii | Format::NiiGz => nifti::read(path, limits),
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

/// Writes `vol` as `ty` (format by extension) with default [`WriteOptions`]: `.mha` is
/// zlib-compressed like panimg's files, `.mhd` gets its data in `<stem>.zraw`.
/// Values are rounded and saturated to `ty`. The file appears atomically or not at all.
pub fn write(path: &Path, vol: &Volume, ty: ElementType) -> Result<(), VolumeError> {
    write_with_options(path, vol, ty, &WriteOptions::default())
}

/// Like [`write()`], with explicit compression options.
pub fn write_with_options(
    path: &Path,
    vol: &Volume,
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
fn check_writable(path: &Path, vol: &Volume) -> Result<(), VolumeError> {
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

/// A temporary path in the directory of `path`, ending in `suffix`.
fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Unique per process and call, so concurrent writers never collide.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}{suffix}", std::process::id()))
}

/// Writes a file atomically: `fill` writes a temporary file in the same directory (given its
/// path), which is then renamed over `path`. On any error the temporary file is removed and
/// `path` is untouched. (Atomic for readers and on errors; no fsync, so not across power loss.)
pub(crate) fn write_atomic_with(
    path: &Path,
    suffix: &str,
    fill: impl FnOnce(&Path) -> Result<(), VolumeError>,
) -> Result<(), VolumeError> {
    let tmp = temp_path(path, suffix);
    let result = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| VolumeError::io(path, "cannot write", e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_with`] for content produced through a buffered writer.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), VolumeError> {
    write_atomic_with(path, ".tmp", |tmp| {
        (|| {
            let file = File::options().write(true).create_new(true).open(tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            fill(&mut w)?;
            w.flush()
        })()
        .map_err(|e| VolumeError::io(path, "cannot write", e))
    })
}
