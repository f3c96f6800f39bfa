//! Writing the answers: bare JSON values per socket, the legacy `results.json`, and a batch summary.
//! Every file is written to a temporary name in its folder and renamed, so a reader (or the
//! platform, if the job dies) never sees half a file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::burden::{Burden, Lobe};
pub use crate::grading::CaseResult;
use crate::grading::Grade;

/// Output socket file of the COVID-19 probability.
pub const PROBABILITY_FILE: &str = "probability-covid-19.json";
/// Output socket file of the CO-RADS score.
pub const CO_RADS_FILE: &str = "co-rads-score.json";
/// The share of the lungs the lesion map marks, in percent (a bare number), when a lesion map
/// was used.
pub const LUNG_AFFECTED_FILE: &str = "percentage-of-lung-affected.json";
/// The CT severity score (a bare integer 0-25), when the ensemble has a lobe model.
pub const SEVERITY_FILE: &str = "ct-severity-score.json";
/// Legacy (evalutils) result file.
pub const RESULTS_FILE: &str = "results.json";
/// Summary of a local batch.
pub const SUMMARY_FILE: &str = "summary.json";
/// Summary of a local batch, as CSV.
pub const SUMMARY_CSV_FILE: &str = "summary.csv";
/// Folder of the optional lung-segmentation image output.
pub const LUNG_MASK_DIR: &str = "images/lung-segmentation";
/// Output socket file of the ensemble's spread (`--spread`).
pub const SPREAD_FILE: &str = "probability-covid-19-spread.json";
/// Folder of the optional heat-map image output (`--heat-map`).
pub const HEAT_MAP_DIR: &str = "images/covid-19-heat-map";
/// The visual report (`--report`).
pub const REPORT_FILE: &str = "report.html";

/// A failed write, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {error}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The cause (in the message, not `source()`: `{:#}` would print it twice).
    pub error: std::io::Error,
}

/// Writes `bytes` to `path` atomically and durably (see [`ctgrade_fsio`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    ctgrade_fsio::write_atomic(path, bytes).map_err(|error| WriteError {
        path: path.to_path_buf(),
        error,
    })
}

/// Writes a value as JSON atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), WriteError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| WriteError {
        path: path.to_path_buf(),
        error: std::io::Error::other(e),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes the two JSON sockets (bare values) of one graded case into `dir`.
pub fn write_sockets(dir: &Path, grade: &Grade) -> Result<(), WriteError> {
    // `grading::grade` only returns finite probabilities, which serde writes as plain numbers.
    write_json(&dir.join(PROBABILITY_FILE), &grade.probability)?;
    write_json(&dir.join(CO_RADS_FILE), &grade.co_rads)
}

/// Writes the ensemble's spread (a bare number) into `dir`.
pub fn write_spread(dir: &Path, spread: f64) -> Result<(), WriteError> {
    write_json(&dir.join(SPREAD_FILE), &spread)
}

/// Writes the lesion burden's sockets into `dir`: the share of the lungs affected and, with
/// lobes, the CT severity score (bare values).
pub fn write_burden(dir: &Path, burden: &Burden) -> Result<(), WriteError> {
    write_json(&dir.join(LUNG_AFFECTED_FILE), &burden.lung_affected_pct)?;
    match burden.ct_severity_score {
        Some(score) => write_json(&dir.join(SEVERITY_FILE), &score),
        None => Ok(()),
    }
}

/// Writes the legacy evalutils `results.json`: one entry per case with its outputs, inputs and
/// error messages.
pub fn write_results_json(dir: &Path, results: &[CaseResult]) -> Result<(), WriteError> {
    let entries: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let outputs = match (r.probability, r.co_rads) {
                (Some(p), Some(c)) => vec![
                    serde_json::json!({
                        "type": "float", "name": "probability-covid-19", "value": p,
                    }),
                    serde_json::json!({
                        "type": "int", "name": "co-rads-score", "value": c,
                    }),
                ],
                _ => Vec::new(),
            };
            serde_json::json!({
                "outputs": outputs,
                "inputs": [{"type": "metaio_image", "filename": r.file}],
                "error_messages": r.error.iter().collect::<Vec<_>>(),
            })
        })
        .collect();
    write_json(&dir.join(RESULTS_FILE), &entries)
}

/// Writes `summary.json` (`{"cases": [...]}`) and `summary.csv` for a batch.
pub fn write_summary(dir: &Path, results: &[CaseResult]) -> Result<(), WriteError> {
    write_summary_named(dir, "summary", results)
}

/// Writes `<stem>.json` and `<stem>.csv` as [`write_summary`] does (shards name theirs).
pub fn write_summary_named(
    dir: &Path,
    stem: &str,
    results: &[CaseResult],
) -> Result<(), WriteError> {
    write_json(
        &dir.join(format!("{stem}.json")),
        &serde_json::json!({ "cases": results }),
    )?;
    // New columns go last, so that readers of the first six keep working.
    let mut csv = String::from(
        "case,file,probability,co_rads,error,seconds,spread,member_probabilities,\
         lung_affected_pct,right_lung_affected_pct,left_lung_affected_pct,ct_severity_score,\
         lobe_affected_pct\n",
    );
    for r in results {
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let members: Vec<String> = r
            .member_probabilities
            .iter()
            .map(|p| p.to_string())
            .collect();
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let lesions = r.lesions.as_ref();
        // One field: the five lobes in `Lobe::ALL`'s order, separated by semicolons.
        let lobes: Vec<String> = lesions
            .map(|b| {
                Lobe::ALL
                    .iter()
                    .filter_map(|l| b.lobes.iter().find(|x| x.lobe == *l))
                    .map(|x| x.affected_pct.to_string())
                    .collect()
            })
            .unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{},{},{:.3},{},{},{},{},{},{},{}\n",
            field(&r.case),
            field(&r.file),
            r.probability.map(|p| p.to_string()).unwrap_or_default(),
            r.co_rads.map(|c| c.to_string()).unwrap_or_default(),
            field(r.error.as_deref().unwrap_or("")),
            r.seconds,
            r.spread.map(|s| s.to_string()).unwrap_or_default(),
            // One field: the members separated by semicolons.
            members.join(";"),
            opt(lesions.map(|b| b.lung_affected_pct)),
            opt(lesions.and_then(|b| b.right_lung_affected_pct)),
            opt(lesions.and_then(|b| b.left_lung_affected_pct)),
            lesions
                .and_then(|b| b.ct_severity_score)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            lobes.join(";"),
        ));
    }
    write_atomic(&dir.join(format!("{stem}.csv")), csv.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_hold_bare_values() {
        let dir = tempfile::tempdir().unwrap();
        let grade = Grade {
            probability: 0.5522074103355408,
            co_rads: 3,
        };
        write_sockets(dir.path(), &grade).unwrap();
        let p = std::fs::read_to_string(dir.path().join(PROBABILITY_FILE)).unwrap();
        assert_eq!(p.trim(), "0.5522074103355408");
        let c = std::fs::read_to_string(dir.path().join(CO_RADS_FILE)).unwrap();
        assert_eq!(c.trim(), "3");
        // Nothing else (no temporary files) is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn results_and_summary_record_failures() {
        let dir = tempfile::tempdir().unwrap();
        let results = vec![
            CaseResult {
                case: "a".into(),
                file: "a.mha".into(),
                probability: Some(0.9),
                co_rads: Some(5),
                member_probabilities: vec![0.8, 1.0],
                spread: Some(0.1),
                lesions: None,
                error: None,
                warnings: Vec::new(),
                skipped: false,
                seconds: 1.0,
            },
            CaseResult {
                case: "b".into(),
                file: "b.mha".into(),
                probability: None,
                co_rads: None,
                member_probabilities: Vec::new(),
                spread: None,
                lesions: None,
                error: Some("no lungs found, \"b\"".into()),
                warnings: Vec::new(),
                skipped: false,
                seconds: 0.5,
            },
        ];
        write_results_json(dir.path(), &results).unwrap();
        write_summary(dir.path(), &results).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap())
                .unwrap();
        assert_eq!(v[0]["outputs"][1]["value"], 5);
        assert_eq!(v[1]["error_messages"][0], "no lungs found, \"b\"");
        assert_eq!(v[1]["outputs"].as_array().unwrap().len(), 0);
        let csv = std::fs::read_to_string(dir.path().join(SUMMARY_CSV_FILE)).unwrap();
        assert!(
            csv.contains("b,b.mha,,,\"no lungs found, \"\"b\"\"\",0.500,,,,,,,\n"),
            "{csv}"
        );
        assert!(
            csv.contains("a,a.mha,0.9,5,,1.000,0.1,0.8;1,,,,,\n"),
            "{csv}"
        );
    }

    #[test]
    fn unwritable_target_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_json(&blocker.join("x.json"), &1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.json"), "{err}");
    }
}
