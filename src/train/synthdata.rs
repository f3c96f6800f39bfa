//! A labelled data set of synthetic phantoms ([`crate::synth`]) for demonstrations and tests:
//! `per_class` scans of each CO-RADS category 1..5 with distinct seeds, a training label file and
//! an evaluator ground truth.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::TrainError;
use crate::synth::{phantom_with_lesions, PhantomConfig};
use crate::volume::{self, ElementType};

/// What to generate.
#[derive(Debug, Clone)]
pub struct PhantomSet {
    /// Output folder (created).
    pub out: PathBuf,
    /// Scans per CO-RADS category.
    pub per_class: usize,
    /// Seed of the first scan; scan `j` uses `seed + j`.
    pub seed: u64,
    /// Grid size (x, y, z).
    pub size: [usize; 3],
    /// Voxel spacing (mm).
    pub spacing: [f64; 3],
    /// Case names are `<prefix>-<j>` (`j` zero-padded).
    pub prefix: String,
    /// Also write each scan's true lesion labels here (`<case>.mha`, uint8: 1 ground glass, 2
    /// consolidation), for measuring a lesion segmenter.
    pub lesion_labels: Option<PathBuf>,
}

/// CO-RADS categories counted as COVID-19 positive in `truth.csv` (4: high, 5: very high
/// suspicion).
pub const POSITIVE_FROM: u8 = 4;

/// Writes the scans (`<case>.mha`, int16 HU), `labels.csv` (`case,co_rads`, for training) and
/// `truth.csv` (`case,label,co_rads` with label = CO-RADS >= 4, for `ctgrade-eval`). Categories
/// interleave (1, 2, 3, 4, 5, 1, ...) so any prefix of the set is balanced. Returns the cases.
pub fn write_phantom_set(
    set: &PhantomSet,
    mut log: impl FnMut(String),
) -> Result<Vec<(String, u8)>, TrainError> {
    std::fs::create_dir_all(&set.out).map_err(|error| TrainError::Write {
        path: set.out.clone(),
        error,
    })?;
    let n = set.per_class * 5;
    let width = n.saturating_sub(1).to_string().len().max(3);
    let mut cases = Vec::with_capacity(n);
    for j in 0..n {
        let co_rads = (j % 5) as u8 + 1;
        let case = format!("{}-{j:0width$}", set.prefix);
        let cfg = PhantomConfig {
            size: set.size,
            spacing: set.spacing,
            seed: set.seed.wrapping_add(j as u64),
            co_rads,
        };
        let p = phantom_with_lesions(&cfg).map_err(|e| TrainError::Options(e.to_string()))?;
        let write = |path: PathBuf, vol, ty| {
            volume::write(&path, vol, ty).map_err(|e| TrainError::Data {
                path: path.clone(),
                msg: e.to_string(),
            })
        };
        write(
            set.out.join(format!("{case}.mha")),
            &p.ct,
            ElementType::Short,
        )?;
        if let Some(dir) = &set.lesion_labels {
            std::fs::create_dir_all(dir).map_err(|error| TrainError::Write {
                path: dir.clone(),
                error,
            })?;
            write(
                dir.join(format!("{case}.mha")),
                &p.lesions,
                ElementType::UChar,
            )?;
        }
        cases.push((case, co_rads));
        if (j + 1) % 25 == 0 || j + 1 == n {
            log(format!("{}: {}/{n} phantoms", set.out.display(), j + 1));
        }
    }
    write_label_files(&set.out, &cases)?;
    Ok(cases)
}

/// `labels.csv` and `truth.csv` for `cases` in `dir`.
pub fn write_label_files(dir: &Path, cases: &[(String, u8)]) -> Result<(), TrainError> {
    let mut labels = String::from("case,co_rads\n");
    let mut truth = String::from("case,label,co_rads\n");
    for (case, c) in cases {
        let _ = writeln!(labels, "{case},{c}");
        let _ = writeln!(truth, "{case},{},{c}", u8::from(*c >= POSITIVE_FROM));
    }
    super::write_file(&dir.join("labels.csv"), labels.as_bytes())?;
    super::write_file(&dir.join("truth.csv"), truth.as_bytes())
}
