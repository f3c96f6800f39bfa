//! Writing files so that nobody ever sees half of one, and a finished write survives a crash.
//!
//! Every writer here follows the same steps: write a temporary file in the target's folder (so
//! the rename stays on one file system), make it readable by everyone (0644: outputs, weights
//! and metrics are read by other users, e.g. a container's non-root user, whatever our umask),
//! sync it to disk, rename it over the target, and sync the folder so that the rename itself is
//! durable. On any error the temporary file is removed and the target is left as it was.
//!
//! Three entry points share that sequence: [`write_atomic`] for bytes in memory (results,
//! manifests, metrics; it also creates missing parent folders), [`write_atomic_with`] for content
//! streamed through a buffered writer (large volumes), and [`write_atomic_by_path`] for libraries
//! that insist on writing to a path themselves. The last two need the folder to exist.
//!
//! [`sha256_file`] (and [`sha256_hex`] for bytes in memory) is the digest ctgrade's manifests
//! record for every weights file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Buffer size of the streaming writer.
const BUFFER: usize = 1 << 20;

/// Writes `bytes` to `path` atomically and durably, creating missing parent folders (see the
/// crate documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(folder_of(path))?;
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically and durably with the content `fill` writes to a buffered writer
/// over the temporary file (see the crate documentation).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    write_atomic_by_path(path, "", |tmp| {
        let file = File::options().write(true).create_new(true).open(tmp)?;
        let mut w = BufWriter::with_capacity(BUFFER, file);
        fill(&mut w)?;
        w.flush()
    })
    .map_err(ByPathError::into_io)
}

/// A failure of [`write_atomic_by_path`]: either the caller's writer failed, or the file system
/// did (creating the folder, syncing, renaming).
#[derive(Debug, thiserror::Error)]
pub enum ByPathError<E> {
    /// Preparing, syncing or renaming failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The caller's `fill` failed.
    #[error(transparent)]
    Fill(E),
}

impl ByPathError<io::Error> {
    /// The underlying I/O error, whichever step failed.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) | Self::Fill(e) => e,
        }
    }
}

/// Writes `path` atomically and durably through `fill`, which is given the path of a
/// temporary file (not yet existing) in the same folder, ending in `suffix` (for writers that
/// choose the encoding by extension, such as `.nii.gz`), and must create and write it.
pub fn write_atomic_by_path<E>(
    path: &Path,
    suffix: &str,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), ByPathError<E>> {
    let dir = folder_of(path);
    let tmp = temp_path(dir, suffix);
    let result = fill(&tmp)
        .map_err(ByPathError::Fill)
        .and_then(|()| finish(&tmp, path).map_err(ByPathError::Io));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_folder(dir);
    Ok(())
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A hidden temporary path in `dir` ending in `suffix`, unique per process and call, so
/// concurrent writers never collide. (Only the suffix is taken from the target: writers such as
/// the NIfTI one read the whole name.)
pub fn temp_path(dir: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}{suffix}", process_token()))
}

/// This process's part of temporary names. The process id alone does not tell writers apart
/// when several containers share a folder (the tasks of a Kubernetes Indexed Job or a Slurm
/// array on one volume): each is often process 1. A digest of the host name, the process id and
/// the start time does.
fn process_token() -> &'static str {
    use sha2::{Digest, Sha256};
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = Sha256::new();
        h.update(host.trim().as_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(nanos.to_le_bytes());
        hex(&h.finalize()[..6])
    })
}

/// Lower-case hex sha256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex sha256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of bytes (digests, keys).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the written temporary file readable by everyone, syncs it and renames it over `path`.
fn finish(tmp: &Path, path: &Path) -> io::Result<()> {
    let file = File::options().write(true).open(tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
}

/// Syncs a folder, so that a rename in it is durable. Not every file system lets a folder be
/// opened for that, and the data itself is already on disk, so a failure is ignored.
fn sync_folder(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn replaces_the_file_readable_by_everyone_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/metrics.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names(path.parent().unwrap()), vec!["metrics.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the rename fails, the temporary file must go.
        let path = dir.path().join("metrics.json");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(names(dir.path()), vec!["metrics.json"]);
        assert!(path.join("keep").is_file());
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.raw");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["a.raw"]);
    }

    #[test]
    fn only_the_bytes_writer_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir.raw");
        assert!(write_atomic_with(&path, |w| w.write_all(b"x")).is_err());
        assert!(!dir.path().join("no").exists());
        write_atomic(&path, b"x").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn by_path_gives_the_suffix_and_keeps_the_callers_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii.gz");
        write_atomic_by_path(&path, ".nii.gz", |tmp| {
            assert!(tmp.to_string_lossy().ends_with(".nii.gz"));
            assert!(!tmp.exists());
            fs::write(tmp, b"x")
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
        let err = write_atomic_by_path(&path, ".nii.gz", |tmp| {
            fs::write(tmp, b"y").unwrap();
            Err::<(), _>("encoder failed")
        })
        .unwrap_err();
        assert!(matches!(err, ByPathError::Fill("encoder failed")));
        assert_eq!(fs::read(&path).unwrap(), b"x");
        assert_eq!(names(dir.path()), vec!["v.nii.gz"]);
    }
}
