//! How volume files are written: encoding options, and atomic replacement (a reader never sees
//! half a file).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::VolumeError;

/// How [`super::write_with_options`] encodes the data.
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
