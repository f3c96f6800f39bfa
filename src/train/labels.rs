//! The training label file: CSV with a header naming the columns `case`, `co_rads` (1..5) and
//! optionally `patient` (cases of one patient stay on one side of the train/validation split) and
//! `lesion` (a lesion map, for models with a lesion input channel; relative to the data folder).
//! Columns may come in any order; other columns are ignored. Fields are separated by commas
//! (no quoting of commas); surrounding spaces and double quotes are removed; blank lines and
//! lines starting with `#` are skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::TrainError;

/// One labelled case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    /// Case name: the scan's file name without extension.
    pub case: String,
    /// CO-RADS 1..5.
    pub co_rads: u8,
    /// Patient identifier (the case itself when absent).
    pub patient: Option<String>,
    /// Lesion map file, as written in the CSV.
    pub lesion: Option<PathBuf>,
}

impl LabelRow {
    /// The patient, or the case when no patient is given.
    pub fn group(&self) -> &str {
        self.patient.as_deref().unwrap_or(&self.case)
    }
}

fn field(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .trim()
}

/// Reads and checks a label file.
pub fn read_labels(path: &Path) -> Result<Vec<LabelRow>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Labels {
        path: path.to_path_buf(),
        msg: format!("cannot read it: {e}"),
    })?;
    parse_labels(&text).map_err(|msg| TrainError::Labels {
        path: path.to_path_buf(),
        msg,
    })
}

/// Parses label CSV text; the error names the line and the problem.
pub fn parse_labels(text: &str) -> Result<Vec<LabelRow>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        return Err(
            "the file is empty (expected a header `case,co_rads[,patient][,lesion]`)".into(),
        );
    };
    let names: Vec<String> = header
        .split(',')
        .map(|h| field(h).to_ascii_lowercase().replace(['-', ' '], "_"))
        .collect();
    let col = |want: &str| names.iter().position(|n| n == want);
    let (Some(case_col), Some(co_rads_col)) = (col("case"), col("co_rads")) else {
        return Err(format!(
            "line {header_line}: the header {header:?} must name the columns `case` and `co_rads` \
             (optional: `patient`, `lesion`)"
        ));
    };
    let (patient_col, lesion_col) = (col("patient"), col("lesion"));
    let mut rows = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, l) in lines {
        let fields: Vec<&str> = l.split(',').map(field).collect();
        if fields.len() != names.len() {
            return Err(format!(
                "line {line}: {} field(s), the header has {}",
                fields.len(),
                names.len()
            ));
        }
        let case = fields[case_col].to_string();
        if case.is_empty() {
            return Err(format!("line {line}: empty case name"));
        }
        let raw = fields[co_rads_col];
        let co_rads = match raw.parse::<u8>() {
            Ok(c @ 1..=5) => c,
            _ => {
                return Err(format!(
                    "line {line}: case {case}: CO-RADS must be an integer 1 to 5, got {raw:?}"
                ))
            }
        };
        if let Some(first) = seen.insert(case.clone(), line) {
            return Err(format!(
                "line {line}: case {case} appears twice (first on line {first})"
            ));
        }
        let opt = |c: Option<usize>| {
            c.map(|c| fields[c].to_string())
                .filter(|s: &String| !s.is_empty())
        };
        rows.push(LabelRow {
            case,
            co_rads,
            patient: opt(patient_col),
            lesion: opt(lesion_col).map(PathBuf::from),
        });
    }
    if rows.is_empty() {
        return Err("no cases after the header".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_columns_in_any_order() {
        let rows = parse_labels(
            "\u{feff}patient, CO-RADS ,case,extra\r\n# comment\n\np1,3,a,x\n,5,\"b\",y\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].case, "a");
        assert_eq!(rows[0].co_rads, 3);
        assert_eq!(rows[0].group(), "p1");
        assert_eq!(rows[1].group(), "b");
        assert_eq!(rows[1].lesion, None);
    }
}
