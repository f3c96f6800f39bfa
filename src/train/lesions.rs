//! Lesion maps for training cases computed by a lesion segmenter (`ctgrade train
//! --lesion-model DIR --lesion-labels 1,2`), exactly as `ctgrade run` computes the lesion channel
//! of a job without a lesion map, so that training sees what grading sees.
//!
//! The segmenter is copied, in compact form, into the run's folder (`lesion/`) before any case
//! is read: that copy computes the maps, the recipe records its digest (a resumed run or another
//! member task with another model is refused), and the gathered manifest names it, so the
//! ensemble ships with the model its members learnt from. Preprocessed inputs with computed maps
//! are cached under a key that includes the digest and the labels: a changed model recomputes
//! them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::ensemble::{self, LesionModel};
use crate::segment::compact;
use crate::volume::Volume;

/// The folder of the run's lesion segmenter, inside the output folder.
pub const LESION_DIR: &str = "lesion";

/// The lesion segmenter a run was asked to use (`--lesion-model`, `--lesion-labels`).
#[derive(Debug, Clone, PartialEq)]
pub struct LesionSource {
    /// An nnU-Net v2 trained-model folder or its compact form.
    pub dir: PathBuf,
    /// The labels whose union is the lesion map.
    pub lesion_labels: Vec<i64>,
}

/// The recipe's record of the lesion segmenter (in [`super::Recipe`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeLesionModel {
    /// [`compact::digest`] of the run's `lesion/` folder.
    pub digest: String,
    /// The labels whose union is the lesion map.
    pub lesion_labels: Vec<i64>,
}

/// A lesion segmenter written to a hidden folder of the run, not yet in place: [`Staged::install`]
/// puts it there once the recipe is known to fit; dropped, it is removed.
pub(super) struct Staged {
    dir: PathBuf,
    /// What the recipe records.
    pub entry: RecipeLesionModel,
}

impl Staged {
    /// Writes `src`'s compact form into a hidden folder of `out` and digests it.
    pub fn new(src: &LesionSource, out: &Path) -> Result<Self, TrainError> {
        let dir = ctgrade_fsio::temp_path(out, "-lesion");
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Removed on every path out of here, error or not.
        let mut staged = Self {
            dir,
            entry: RecipeLesionModel {
                digest: String::new(),
                lesion_labels: src.lesion_labels.clone(),
            },
        };
        ensemble::copy_segmenter(&src.dir, out, &name, "lesion")?;
        staged.entry.digest =
            compact::digest(&staged.dir).map_err(|e| segmenter_error(&src.dir, e))?;
        Ok(staged)
    }

    /// Puts the segmenter at `out/lesion` (unless an identical one is there: the member tasks
    /// of a cluster run share the folder) and loads it.
    pub fn install(self, out: &Path) -> Result<LesionMaps, TrainError> {
        let target = out.join(LESION_DIR);
        let ours = |dir: &Path| compact::digest(dir).is_ok_and(|d| d == self.entry.digest);
        if !ours(&target) {
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(|error| TrainError::Write {
                    path: target.clone(),
                    error,
                })?;
            }
            // Another task of the run may have put the same model there meanwhile.
            if let Err(error) = std::fs::rename(&self.dir, &target) {
                if !ours(&target) {
                    return Err(TrainError::Write {
                        path: target.clone(),
                        error,
                    });
                }
            }
        }
        let model = LesionModel::open(&target, self.entry.lesion_labels.clone())?;
        Ok(LesionMaps {
            model,
            entry: self.entry.clone(),
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Already renamed into place, or never written: nothing to remove.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn segmenter_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    ensemble::EnsembleError::Segmenter {
        role: "lesion",
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
    .into()
}

/// The run's lesion segmenter, in place and loaded.
pub struct LesionMaps {
    model: LesionModel,
    entry: RecipeLesionModel,
}

impl LesionMaps {
    /// The lesion map (0/1 on `ct`'s grid) of the CT read from `path`.
    pub fn compute(&self, ct: &Volume, path: &Path) -> Result<Volume, TrainError> {
        let labels = self.model.segment(ct).map_err(|e| TrainError::Data {
            path: path.to_path_buf(),
            msg: format!("the lesion model failed: {e}"),
        })?;
        Ok(self.model.lesion_map(&labels))
    }

    /// What identifies the maps in a cache key: the model's digest and the labels.
    pub fn cache_identity(&self) -> String {
        format!("{}:{:?}", self.entry.digest, self.entry.lesion_labels)
    }
}

/// Checks, when gathering, that the run's `lesion/` folder is the segmenter the members learnt
/// with, and names it for the manifest.
pub(super) fn check_installed(
    out: &Path,
    entry: &RecipeLesionModel,
) -> Result<ensemble::LesionModelSpec, String> {
    let dir = out.join(LESION_DIR);
    match compact::digest(&dir) {
        Ok(d) if d == entry.digest => Ok(ensemble::LesionModelSpec {
            path: LESION_DIR.into(),
            lesion_labels: entry.lesion_labels.clone(),
        }),
        Ok(_) => Err(format!(
            "{} is not the lesion model the members were trained with (its digest changed); \
             retrain, or put that model back",
            dir.display()
        )),
        Err(e) => Err(format!(
            "the members were trained with the lesion model in {}, which cannot be read: {e}",
            dir.display()
        )),
    }
}
