//! Shared helpers of the fuzz targets: each target writes the fuzzer's bytes to a file and
//! reads it back with ctgrade's volume reader, which must return a volume or an error, never
//! panic, hang or allocate what a header merely claims.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ctgrade::volume::{self, ReadLimits, Volume, VolumeError};

/// A private folder for this process's files (in /dev/shm when it exists: no disk I/O).
pub fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("ctgrade-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz work folder");
        dir
    })
}

/// Writes `bytes` to `name` in the work folder; returns the path.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let path = work_dir().join(name);
    std::fs::write(&path, bytes).expect("write the fuzz input");
    path
}

/// Reads `path` with the default limits (those of `ctgrade run`) and checks what a reader
/// promises about a volume it returns.
pub fn read_and_check(path: &Path) -> Result<Volume, VolumeError> {
    let result = volume::read_with_limits(path, &ReadLimits::default());
    if let Ok(v) = &result {
        assert!(!v.size.contains(&0), "size {:?} contains 0", v.size);
        assert_eq!(v.data.len(), v.len(), "data length vs size {:?}", v.size);
        assert!(
            v.spacing.iter().all(|s| s.is_finite() && *s > 0.0),
            "spacing {:?}",
            v.spacing
        );
        assert!(
            v.origin.iter().chain(&v.direction).all(|x| x.is_finite()),
            "origin {:?} direction {:?}",
            v.origin,
            v.direction
        );
    }
    if let Err(e) = &result {
        // Every message names the file.
        let msg = e.to_string();
        assert!(msg.contains("case"), "message without the file name: {msg}");
    }
    result
}
