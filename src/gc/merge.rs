//! `ctgrade merge`: one `summary.json` / `summary.csv` from the summaries of shards
//! (`summary-shard-I-of-N.json`, see [`super::shard`]) or of separate batch runs (`summary.json`).
//!
//! A folder that holds shard summaries is read for those alone (its `summary.json`, if any, is an
//! earlier merge). Every shard 0..N of a set must be found exactly once, and every case exactly
//! once: a gap or an overlap is an error naming it, never a silently partial leaderboard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::outputs::{self, CaseResult, SUMMARY_FILE};

/// Why summaries cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A folder without any summary.
    #[error(
        "{0} holds no summary.json or summary-shard-I-of-N.json: not a finished batch run or shard"
    )]
    NoSummary(PathBuf),
    /// A folder or summary that cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A case in two summaries.
    #[error("case {case:?} is in both {first} and {second}")]
    DuplicateCase {
        /// The case.
        case: String,
        /// One summary.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The same shard twice.
    #[error("shard {index}/{count} has two summaries: {first} and {second}")]
    DuplicateShard {
        /// I.
        index: usize,
        /// N.
        count: usize,
        /// One summary.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// Shards of different partitions.
    #[error("shard summaries of different shard counts cannot be merged: {first} and {second}")]
    MixedCounts {
        /// One summary.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A shard without a summary.
    #[error("shard {index}/{count} has no summary (summary-shard-{index}-of-{count}.json) in {dirs}: it has not finished")]
    MissingShard {
        /// I.
        index: usize,
        /// N.
        count: usize,
        /// The folders searched.
        dirs: String,
    },
    /// The merged summary cannot be written.
    #[error(transparent)]
    Write(#[from] outputs::WriteError),
}

/// What was merged.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Every case, sorted by name.
    pub cases: Vec<CaseResult>,
    /// The summaries read.
    pub sources: Vec<PathBuf>,
}

/// `(I, N)` of a `summary-shard-I-of-N.json` file name.
fn shard_of_file(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("summary-shard-")?.strip_suffix(".json")?;
    let (i, n) = rest.split_once("-of-")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// A summary file and, for a shard's, its `(I, N)`.
type SummaryFile = (PathBuf, Option<(usize, usize)>);

/// The summaries in `dir`: its shard summaries, or else its `summary.json`.
fn summaries_in(dir: &Path) -> Result<Vec<SummaryFile>, MergeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| MergeError::Read {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut shards: Vec<SummaryFile> = entries
        .flatten()
        .filter_map(|e| {
            let shard = shard_of_file(e.file_name().to_str()?)?;
            Some((e.path(), Some(shard)))
        })
        .collect();
    shards.sort();
    if !shards.is_empty() {
        return Ok(shards);
    }
    let plain = dir.join(SUMMARY_FILE);
    if plain.is_file() {
        Ok(vec![(plain, None)])
    } else {
        Err(MergeError::NoSummary(dir.to_path_buf()))
    }
}

#[derive(serde::Deserialize)]
struct Summary {
    cases: Vec<CaseResult>,
}

/// Merges the summaries in `dirs` and writes `summary.json` and `summary.csv` into `output`.
pub fn merge(dirs: &[PathBuf], output: &Path) -> Result<Merged, MergeError> {
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(summaries_in(dir)?);
    }
    // The shards found must form one complete partition.
    let mut shards: BTreeMap<usize, &PathBuf> = BTreeMap::new();
    let mut count: Option<(usize, &PathBuf)> = None;
    for (path, shard) in &files {
        let Some((index, n)) = *shard else { continue };
        match count {
            Some((c, first)) if c != n => {
                return Err(MergeError::MixedCounts {
                    first: first.clone(),
                    second: path.clone(),
                })
            }
            _ => count = Some((n, path)),
        }
        if let Some(first) = shards.insert(index, path) {
            return Err(MergeError::DuplicateShard {
                index,
                count: n,
                first: first.clone(),
                second: path.clone(),
            });
        }
    }
    if let Some((n, _)) = count {
        if let Some(index) = (0..n).find(|i| !shards.contains_key(i)) {
            let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(MergeError::MissingShard {
                index,
                count: n,
                dirs: dirs.join(", "),
            });
        }
    }
    let mut cases: BTreeMap<String, (CaseResult, PathBuf)> = BTreeMap::new();
    for (path, _) in &files {
        let read = |reason: String| MergeError::Read {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let summary: Summary = serde_json::from_str(&text)
            .map_err(|e| read(format!("not a ctgrade run summary ({e})")))?;
        for case in summary.cases {
            if let Some((_, first)) = cases.get(&case.case) {
                return Err(MergeError::DuplicateCase {
                    case: case.case,
                    first: first.clone(),
                    second: path.clone(),
                });
            }
            cases.insert(case.case.clone(), (case, path.clone()));
        }
    }
    let cases: Vec<CaseResult> = cases.into_values().map(|(c, _)| c).collect();
    outputs::write_summary(output, &cases)?;
    Ok(Merged {
        cases,
        sources: files.into_iter().map(|(p, _)| p).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: &str, p: f64) -> CaseResult {
        CaseResult {
            case: case.into(),
            file: format!("{case}.mha"),
            probability: Some(p),
            co_rads: Some(grading_of(p)),
            member_probabilities: vec![p],
            spread: Some(0.0),
            lesions: None,
            error: None,
            warnings: Vec::new(),
            skipped: false,
            seconds: 1.0,
        }
    }

    fn grading_of(p: f64) -> u8 {
        (4.0 * p).round() as u8 + 1
    }

    fn write(dir: &Path, file: &str, cases: &[CaseResult]) {
        std::fs::create_dir_all(dir).unwrap();
        let text = serde_json::json!({ "cases": cases }).to_string();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn shards_in_one_folder_and_in_several() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        write(&shared, "summary-shard-0-of-2.json", &[result("b", 0.1)]);
        write(
            &shared,
            "summary-shard-1-of-2.json",
            &[result("a", 0.9), result("c", 0.5)],
        );
        // An earlier merge in the same folder is not read again.
        write(&shared, "summary.json", &[result("a", 0.9)]);
        let out = root.path().join("merged");
        let merged = merge(std::slice::from_ref(&shared), &out).unwrap();
        let names: Vec<_> = merged.cases.iter().map(|c| c.case.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(out.join("summary.csv").is_file());

        // Plain batch summaries from separate folders.
        let (x, y) = (root.path().join("x"), root.path().join("y"));
        write(&x, "summary.json", &[result("p", 0.2)]);
        write(&y, "summary.json", &[result("q", 0.3)]);
        let merged = merge(&[x, y], &root.path().join("m2")).unwrap();
        assert_eq!(merged.cases.len(), 2);
    }

    #[test]
    fn gaps_and_overlaps_are_errors_naming_them() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let out = r.join("out");
        let empty = r.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = merge(std::slice::from_ref(&empty), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty") && err.contains("no summary"), "{err}");

        let d = r.join("d");
        write(&d, "summary-shard-0-of-3.json", &[result("a", 0.1)]);
        write(&d, "summary-shard-2-of-3.json", &[result("b", 0.1)]);
        let err = merge(std::slice::from_ref(&d), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard 1/3 has no summary"), "{err}");

        write(&d, "summary-shard-1-of-3.json", &[result("a", 0.2)]);
        let err = merge(std::slice::from_ref(&d), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("case \"a\" is in both"), "{err}");

        let e = r.join("e");
        write(&e, "summary-shard-1-of-3.json", &[result("z", 0.2)]);
        let err = merge(&[d.clone(), e], &out).unwrap_err().to_string();
        assert!(err.contains("shard 1/3 has two summaries"), "{err}");

        let f = r.join("f");
        write(&f, "summary-shard-0-of-2.json", &[result("y", 0.2)]);
        let err = merge(&[d, f], &out).unwrap_err().to_string();
        assert!(err.contains("different shard counts"), "{err}");

        let g = r.join("g");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("summary.json"), "{\"x\": 1}").unwrap();
        let err = merge(&[g], &out).unwrap_err().to_string();
        assert!(err.contains("not a ctgrade run summary"), "{err}");
        assert!(!out.join("summary.json").exists());
    }
}
