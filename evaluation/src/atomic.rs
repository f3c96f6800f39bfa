//! Writing result files atomically, so that a reader (the platform collecting `/output`, a
//! second evaluation in serve mode) never sees a half-written `metrics.json`.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{EvalError, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder (so the rename stays
/// on one file system), flushed to disk, made 0644, then renamed over `path`. Parent folders are
/// created. On failure the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| EvalError::Usage(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))?;
        // The rename is durable once the folder is synced; not every file system lets a folder
        // be opened for that, and the data itself is already on disk, so a failure is ignored.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::File::create(tmp).map_err(|e| EvalError::io(tmp, e))?;
    file.write_all(bytes).map_err(|e| EvalError::io(tmp, e))?;
    // Readable by the platform's (or another container's) user whatever our umask is.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| EvalError::io(tmp, e))?;
    }
    file.sync_all().map_err(|e| EvalError::io(tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/metrics.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("metrics.json")]);
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
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("metrics.json")]);
        assert!(path.join("keep").is_file());
    }
}
