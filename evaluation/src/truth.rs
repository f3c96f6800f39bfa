//! Reading ground truth: the iCTCF patient table, or a generic
//! `case,label[,co_rads][,patient][,slice_thickness_mm]` CSV.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::write_atomic;
use crate::case::{case_name, match_key};
use crate::csvrows::CsvTable;
use crate::error::{EvalError, Result};
use crate::predictions::co_rads_from_str;

/// How a ground-truth file was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TruthFormat {
    /// iCTCF patient table (`Patient ID`, `Morbidity outcome`).
    Ictcf,
    /// `case,label[,co_rads][,patient][,slice_thickness_mm]`.
    Generic,
}

/// One ground-truth case.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthCase {
    /// Case name.
    pub case: String,
    /// COVID-19 label; `None` for excluded cases.
    pub label: Option<bool>,
    /// Why the case is excluded (the iCTCF class), when it is.
    pub excluded: Option<String>,
    /// CO-RADS truth (1..=5), if given.
    pub co_rads: Option<u8>,
    /// Patient id for clustered resampling, if given (iCTCF: the patient id).
    pub patient: Option<String>,
    /// Slice thickness in mm, if given.
    pub slice_thickness_mm: Option<f64>,
    /// Where it came from (file and line).
    pub origin: String,
}

/// A ground-truth table.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    /// The file read.
    pub path: PathBuf,
    /// Its format.
    pub format: TruthFormat,
    /// All rows, in file order, excluded ones included.
    pub cases: Vec<TruthCase>,
}

impl GroundTruth {
    /// Number of excluded cases per reason.
    pub fn excluded_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.cases {
            if let Some(r) = &c.excluded {
                *m.entry(r.clone()).or_insert(0) += 1;
            }
        }
        m
    }
}

/// iCTCF `Morbidity outcome` mapping of the paper: controls negative, mild to critically ill
/// positive, suspected excluded. Keys are lowercase with single spaces.
fn ictcf_label(outcome: &str) -> Option<Option<bool>> {
    let norm = outcome
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    match norm.as_str() {
        "control" | "control (community-acquired pneumonia)" => Some(Some(false)),
        "mild" | "regular" | "severe" | "critically ill" => Some(Some(true)),
        "suspected" | "suspected (covid-19-confirmed later)" => Some(None),
        _ => None,
    }
}

/// Reads ground truth from a CSV file, or from the single CSV file in a folder (looked for
/// directly in it, then one level down, as a tarball may hold one top folder).
pub fn load_ground_truth(path: &Path) -> Result<GroundTruth> {
    let file = if path.is_dir() {
        find_csv(path)?
    } else {
        path.to_path_buf()
    };
    let table = CsvTable::open(&file)?;
    if table.column(&["patient id"]).is_some() && table.column(&["morbidity outcome"]).is_some() {
        load_ictcf(table)
    } else if table.column(&["case"]).is_some() && table.column(&["label"]).is_some() {
        load_generic(table)
    } else {
        let headers = table.headers();
        Err(EvalError::format(
            &file,
            format!(
                "unknown ground-truth table: expected iCTCF columns 'Patient ID' and 'Morbidity \
                 outcome', or 'case' and 'label'; found: {}",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        ))
    }
}

/// Writes a copy of the ground-truth table `truth` (as loaded by [`load_ground_truth`]) to
/// `dest` with only the rows whose case matches (by [`match_key`]) one of `keep_keys`; returns
/// how many rows were left out. Used to evaluate a subset of the cases (those with a
/// prediction) with the evaluator's strict matching. Fields are written trimmed, as they are
/// read.
pub fn write_only_cases(
    truth: &GroundTruth,
    keep_keys: &HashSet<String>,
    dest: &Path,
) -> Result<usize> {
    let path = truth.path.as_path();
    let table = CsvTable::open(path)?;
    let case_col = match truth.format {
        TruthFormat::Ictcf => table.column(&["patient id"]),
        TruthFormat::Generic => table.column(&["case"]),
    }
    .unwrap_or(0);
    let csv_err = |cause| EvalError::Csv {
        path: path.to_path_buf(),
        cause,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(table.headers()).map_err(csv_err)?;
    let mut dropped = 0;
    table.for_each_row(|row| {
        if keep_keys.contains(&match_key(row.get(case_col))) {
            writer.write_record(row.record()).map_err(csv_err)?;
        } else {
            dropped += 1;
        }
        Ok(())
    })?;
    let bytes = writer
        .into_inner()
        .map_err(|e| EvalError::io(dest, e.into_error()))?;
    write_atomic(dest, &bytes)?;
    Ok(dropped)
}

fn csv_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| EvalError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        .collect();
    v.sort();
    Ok(v)
}

fn find_csv(dir: &Path) -> Result<PathBuf> {
    let mut files = csv_files_in(dir)?;
    if files.is_empty() {
        let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| EvalError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        for s in subdirs {
            files.extend(csv_files_in(&s)?);
        }
    }
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(EvalError::format(dir, "no ground-truth .csv file found")),
        _ => Err(EvalError::format(
            dir,
            format!(
                "{} .csv files found ({}); pass --ground-truth FILE",
                files.len(),
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Rejects duplicate cases (by match key), naming both origins.
fn check_unique(items: &[TruthCase]) -> Result<()> {
    crate::case::check_unique(items, |x| &x.case, |x| &x.origin)
}

fn load_ictcf(table: CsvTable) -> Result<GroundTruth> {
    let path = table.path().to_path_buf();
    let id_col = table.column(&["patient id"]).unwrap_or(0);
    let outcome_col = table.column(&["morbidity outcome"]).unwrap_or(0);
    let mut cases = Vec::new();
    table.for_each_row(|row| {
        let id = row.get(id_col);
        if id.is_empty() {
            return Err(row.error("empty 'Patient ID'"));
        }
        let outcome = row.get(outcome_col);
        let label = ictcf_label(outcome).ok_or_else(|| {
            row.error(format!(
                "unknown 'Morbidity outcome' '{outcome}' for patient '{id}' (expected Control, \
                 Control (Community-acquired pneumonia), Suspected, Suspected (COVID-19-confirmed \
                 later), Mild, Regular, Severe or Critically ill)"
            ))
        })?;
        cases.push(TruthCase {
            case: case_name(id),
            label,
            excluded: label.is_none().then(|| outcome.to_string()),
            co_rads: None,
            patient: Some(id.to_string()),
            slice_thickness_mm: None,
            origin: row.origin(),
        });
        Ok(())
    })?;
    check_unique(&cases)?;
    Ok(GroundTruth {
        path,
        format: TruthFormat::Ictcf,
        cases,
    })
}

fn parse_label(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "positive" | "pos" | "covid" | "covid-19" => Some(true),
        "0" | "0.0" | "false" | "negative" | "neg" => Some(false),
        _ => None,
    }
}

fn load_generic(table: CsvTable) -> Result<GroundTruth> {
    let path = table.path().to_path_buf();
    let case_col = table.column(&["case"]).unwrap_or(0);
    let label_col = table.column(&["label"]).unwrap_or(0);
    let co_rads_col = table.column(&["co_rads", "co-rads", "corads", "co-rads-score"]);
    let patient_col = table.column(&["patient", "patient_id", "patient id"]);
    let thick_col = table.column(&["slice_thickness_mm", "slice_thickness"]);
    let mut cases = Vec::new();
    table.for_each_row(|row| {
        let case = case_name(row.get(case_col));
        if case.is_empty() {
            return Err(row.error("empty case name"));
        }
        let raw_label = row.get(label_col);
        let label = parse_label(raw_label).ok_or_else(|| {
            row.error(format!(
                "case '{case}': label '{raw_label}' is not 0/1, true/false or positive/negative"
            ))
        })?;
        let origin = row.origin();
        let co_rads = match row.cell(co_rads_col) {
            Some(s) => Some(co_rads_from_str(s, &case, &origin)?),
            None => None,
        };
        let slice_thickness_mm = match row.cell(thick_col) {
            Some(s) => Some(
                s.parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .ok_or_else(|| {
                        row.error(format!(
                            "case '{case}': slice thickness '{s}' is not a positive number of mm"
                        ))
                    })?,
            ),
            None => None,
        };
        cases.push(TruthCase {
            case,
            label: Some(label),
            excluded: None,
            co_rads,
            patient: row.cell(patient_col).map(str::to_string),
            slice_thickness_mm,
            origin,
        });
        Ok(())
    })?;
    check_unique(&cases)?;
    Ok(GroundTruth {
        path,
        format: TruthFormat::Generic,
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ictcf_mapping_follows_the_paper() {
        assert_eq!(ictcf_label("Control"), Some(Some(false)));
        assert_eq!(
            ictcf_label(" control  (Community-acquired pneumonia) "),
            Some(Some(false))
        );
        for s in ["Mild", "Regular", "Severe", "Critically ill"] {
            assert_eq!(ictcf_label(s), Some(Some(true)), "{s}");
        }
        assert_eq!(ictcf_label("Suspected"), Some(None));
        assert_eq!(
            ictcf_label("Suspected (COVID-19-confirmed later)"),
            Some(None)
        );
        assert_eq!(ictcf_label("Unknown"), None);
        assert_eq!(ictcf_label(""), None);
    }

    #[test]
    fn a_copy_keeps_only_the_chosen_cases() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("truth.csv");
        fs::write(
            &src,
            "Patient ID,Morbidity outcome\nPatient 1,Mild\n Patient 2 ,Control\nPatient 3,Severe\n",
        )
        .unwrap();
        let truth = load_ground_truth(&src).unwrap();
        let keep: HashSet<String> = ["patient_1.mha", "Patient 3", "patient_9"]
            .iter()
            .map(|c| match_key(c))
            .collect();
        let dest = dir.path().join("out/truth.csv");
        assert_eq!(write_only_cases(&truth, &keep, &dest).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(&dest).unwrap(),
            "Patient ID,Morbidity outcome\nPatient 1,Mild\nPatient 3,Severe\n"
        );
        let generic = dir.path().join("generic.csv");
        fs::write(&generic, "label,case\n1,a\n0,b\n").unwrap();
        let truth = load_ground_truth(&generic).unwrap();
        let keep: HashSet<String> = [match_key("b")].into_iter().collect();
        assert_eq!(write_only_cases(&truth, &keep, &dest).unwrap(), 1);
        assert_eq!(fs::read_to_string(&dest).unwrap(), "label,case\n0,b\n");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("1"), Some(true));
        assert_eq!(parse_label("Negative"), Some(false));
        assert_eq!(parse_label("maybe"), None);
    }
}
