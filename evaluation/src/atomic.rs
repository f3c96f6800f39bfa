//! Writing result files atomically and durably (through [`ctgrade_fsio`]), so that a reader (the
//! platform collecting `/output`, a second evaluation in serve mode) never sees a half-written
//! `metrics.json`.

use std::path::Path;

use crate::error::{EvalError, Result};

/// Writes `bytes` to `path` atomically and durably, creating parent folders; on failure `path`
/// is left as it was. See [`ctgrade_fsio::write_atomic`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    ctgrade_fsio::write_atomic(path, bytes).map_err(|e| EvalError::io(path, e))
}
