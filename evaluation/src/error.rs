//! Errors of the evaluator. Each names the case, file, row or job it is about, because the
//! platform shows only the last line of stderr to the challenge participant.

use std::path::PathBuf;

/// Everything that can go wrong while reading inputs or computing metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or folder could not be read or written.
    #[error("cannot access {path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (kept in the message, not as a `source`, so that printing the
        /// error chain does not repeat it).
        cause: std::io::Error,
    },
    /// A JSON document could not be parsed.
    #[error("{path} is not valid JSON: {cause}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        cause: serde_json::Error,
    },
    /// A file is readable but does not have the expected structure.
    #[error("{path}: {message}")]
    Format {
        /// The file (or folder).
        path: PathBuf,
        /// What is wrong, naming the job or entry.
        message: String,
    },
    /// One row of a CSV file is invalid.
    #[error("{path}, line {line}: {message}")]
    Row {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number in the file (the header is line 1).
        line: u64,
        /// What is wrong with the row.
        message: String,
    },
    /// A CSV file could not be parsed at all (bad quoting, unequal row lengths).
    #[error("{path}: {cause}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The parser's error (it carries the line).
        cause: csv::Error,
    },
    /// Two predictions (or two ground-truth rows) name the same case.
    #[error("duplicate case '{case}': {first} and {second}")]
    DuplicateCase {
        /// The case name.
        case: String,
        /// Where the first occurrence came from.
        first: String,
        /// Where the second occurrence came from.
        second: String,
    },
    /// A probability is NaN, infinite or outside [0, 1].
    #[error("case '{case}' ({origin}): probability {value} is not a finite number in [0, 1]")]
    BadProbability {
        /// The case name.
        case: String,
        /// Where the value came from.
        origin: String,
        /// The offending value as written.
        value: String,
    },
    /// A CO-RADS score is not an integer in 1..=5.
    #[error("case '{case}' ({origin}): CO-RADS {value} is not an integer in 1..5")]
    BadCoRads {
        /// The case name.
        case: String,
        /// Where the value came from.
        origin: String,
        /// The offending value as written.
        value: String,
    },
    /// Ground-truth cases without a prediction.
    #[error("no prediction for {count} ground-truth case(s): {cases}")]
    MissingPredictions {
        /// How many cases are missing.
        count: usize,
        /// The first few names, comma-separated.
        cases: String,
    },
    /// Predictions for cases that the ground truth does not know.
    #[error(
        "{count} prediction(s) match no ground-truth case: {cases} \
         (pass --ignore-extra-predictions to list and skip them)"
    )]
    ExtraPredictions {
        /// How many predictions are unmatched.
        count: usize,
        /// The first few names, comma-separated.
        cases: String,
    },
    /// Some cases have a CO-RADS prediction and others do not.
    #[error("case '{case}' has CO-RADS ground truth but no CO-RADS prediction, while other cases have one")]
    MissingCoRads {
        /// The first case lacking a CO-RADS prediction.
        case: String,
    },
    /// The labels hold one class only, so AUC and ROC are undefined.
    #[error("{what}: all {n} case(s) are {class}; AUC and ROC need positive and negative cases")]
    OneClass {
        /// Which set of cases (e.g. "ground truth").
        what: String,
        /// The number of cases.
        n: usize,
        /// "positive" or "negative" (or "absent" when there are no cases).
        class: &'static str,
    },
    /// Two score lists or label lists that must be parallel are not.
    #[error("{what}: {a} scores but {b} labels")]
    LengthMismatch {
        /// Which computation.
        what: &'static str,
        /// First length.
        a: usize,
        /// Second length.
        b: usize,
    },
    /// A score passed to a metric is NaN.
    #[error("{what}: score at index {index} is NaN")]
    NanScore {
        /// Which computation.
        what: &'static str,
        /// Index of the NaN.
        index: usize,
    },
    /// The bootstrap could not draw resamples with both classes.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// Invalid command-line settings.
    #[error("{0}")]
    Usage(String),
}

/// Result alias for the evaluator.
pub type Result<T> = std::result::Result<T, EvalError>;

impl EvalError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// A structural problem in a file.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EvalError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Joins up to `max` names for an error message, noting how many were left out.
pub fn name_list(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}
