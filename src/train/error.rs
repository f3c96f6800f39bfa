//! What can go wrong in training, and the atomic writes of its files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::ensemble;
use crate::gc::shard::BadIndexVariable;
use crate::model::ModelError;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The label file is unreadable or malformed.
    #[error("label file {path}: {msg}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        msg: String,
    },
    /// A scan or folder of the data set cannot be used.
    #[error("{path}: {msg}")]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Inconsistent options.
    #[error("invalid training options: {0}")]
    Options(String),
    /// The initial weights cannot be used.
    #[error("initial weights {path}: {msg}")]
    Init {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint cannot be read or does not fit.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// `--member` cannot be used.
    #[error(transparent)]
    Member(#[from] MemberError),
    /// The member runs in an output folder cannot be gathered into an ensemble.
    #[error("cannot gather the ensemble in {out}: {msg}")]
    Gather {
        /// The shared output folder.
        out: PathBuf,
        /// What is missing or inconsistent, naming the member.
        msg: String,
    },
    /// An output cannot be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// The network cannot be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the ensemble failed (boxed: the error is large and rare).
    #[error(transparent)]
    Ensemble(Box<ensemble::EnsembleError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<ensemble::EnsembleError> for TrainError {
    fn from(e: ensemble::EnsembleError) -> Self {
        Self::Ensemble(Box::new(e))
    }
}

/// Writes a file atomically (temporary file, then rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::gc::outputs::write_atomic(path, bytes).map_err(|e| TrainError::Write {
        path: e.path,
        error: e.error,
    })
}

/// Writes tensors as safetensors atomically and durably.
pub(super) fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    ctgrade_fsio::write_atomic_by_path(path, "", |tmp| candle_core::safetensors::save(tensors, tmp))
        .map_err(|e| match e {
            ctgrade_fsio::ByPathError::Fill(e) => TrainError::Candle(e),
            ctgrade_fsio::ByPathError::Io(error) => TrainError::Write {
                path: path.to_path_buf(),
                error,
            },
        })
}

/// Why `--member` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// Neither a number nor `auto`.
    #[error("--member {0:?}: expected a member index (0 <= I < --members) or auto")]
    Syntax(String),
    /// `auto` without a task index in the environment.
    #[error("--member auto: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set")]
    NoIndex,
    /// A task index variable that is not a number.
    #[error("--member auto: {0}")]
    BadVariable(#[from] BadIndexVariable),
    /// I is not below K.
    #[error("--member {index}: the index must be below --members {members} (members are numbered from 0)")]
    OutOfRange {
        /// I.
        index: usize,
        /// K.
        members: usize,
    },
}
