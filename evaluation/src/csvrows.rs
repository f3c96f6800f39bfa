//! The one CSV row reader of the evaluator: ground truth, prediction CSVs and strata files all
//! read their rows here, so that header matching, trimming and the line numbers in error
//! messages are the same for every table.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};

/// A CSV file with a header row, opened for reading; fields are trimmed.
pub struct CsvTable {
    path: PathBuf,
    reader: csv::Reader<fs::File>,
    headers: csv::StringRecord,
}

/// One data row with its 1-based line number (the header is line 1).
pub struct CsvRow<'a> {
    path: &'a Path,
    record: csv::StringRecord,
    /// 1-based line number of the row in the file.
    pub line: u64,
}

impl CsvTable {
    /// Opens `path` and reads its header row. Rows must all have the header's length.
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(file);
        let headers = reader
            .headers()
            .map_err(|cause| EvalError::Csv {
                path: path.to_path_buf(),
                cause,
            })?
            .clone();
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            headers,
        })
    }

    /// The header row.
    pub fn headers(&self) -> &csv::StringRecord {
        &self.headers
    }

    /// The header fields, without a leading byte-order mark.
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect()
    }

    /// Index of the first column whose header (case-insensitive, trimmed, BOM removed) is one
    /// of `names`.
    pub fn column(&self, names: &[&str]) -> Option<usize> {
        find_column(&self.headers, names)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `f` on every data row in order; the first error (a parse error of the file or one
    /// returned by `f`) stops the reading.
    pub fn for_each_row(mut self, mut f: impl FnMut(&CsvRow) -> Result<()>) -> Result<()> {
        for record in self.reader.records() {
            let record = record.map_err(|cause| EvalError::Csv {
                path: self.path.clone(),
                cause,
            })?;
            let line = record.position().map_or(0, |p| p.line());
            f(&CsvRow {
                path: &self.path,
                record,
                line,
            })?;
        }
        Ok(())
    }
}

impl CsvRow<'_> {
    /// The field in column `col` ("" when the column does not exist).
    pub fn get(&self, col: usize) -> &str {
        self.record.get(col).unwrap_or_default()
    }

    /// The non-empty field of an optional column.
    pub fn cell(&self, col: Option<usize>) -> Option<&str> {
        col.and_then(|c| self.record.get(c))
            .filter(|s| !s.is_empty())
    }

    /// The whole record (fields trimmed).
    pub fn record(&self) -> &csv::StringRecord {
        &self.record
    }

    /// An error about this row.
    pub fn error(&self, message: impl Into<String>) -> EvalError {
        EvalError::Row {
            path: self.path.to_path_buf(),
            line: self.line,
            message: message.into(),
        }
    }

    /// "FILE, line N", the origin recorded for values read from this row.
    pub fn origin(&self) -> String {
        format!("{}, line {}", self.path.display(), self.line)
    }
}

/// Index of the first header (case-insensitive, trimmed, BOM removed) that is one of `names`.
pub fn find_column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers.iter().position(|h| {
        let h = h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
        names.iter().any(|n| h == *n)
    })
}
