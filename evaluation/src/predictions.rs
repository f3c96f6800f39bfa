//! Reading predictions: the platform's `predictions.json`, a `ctgrade run` output folder (its
//! `summary.json`, the legacy evalutils `results.json`, or `<case>/` folders), or a CSV
//! `case,probability[,co_rads]`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::case::case_name;
use crate::csvrows::CsvTable;
use crate::error::{EvalError, Result};
use crate::platform::socket_field;
use crate::runtime::JobTiming;

/// Slug (and file stem) of the probability output socket.
pub const PROBABILITY_SLUG: &str = "probability-covid-19";
/// Slug (and file stem) of the CO-RADS output socket.
pub const CO_RADS_SLUG: &str = "co-rads-score";

/// One case's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Case name (input image file name without extension).
    pub case: String,
    /// Probability of COVID-19, finite, in [0, 1].
    pub probability: f64,
    /// Predicted CO-RADS score (1..=5), if given.
    pub co_rads: Option<u8>,
    /// Where it came from (job, file, row), for error messages.
    pub origin: String,
}

impl Prediction {
    /// A prediction from JSON values, each checked (a probability in [0, 1], a CO-RADS of 1-5;
    /// a missing or null CO-RADS is none).
    fn from_json(
        case: String,
        probability: &Value,
        co_rads: Option<&Value>,
        origin: String,
    ) -> Result<Self> {
        let probability = probability_from_json(probability, &case, &origin)?;
        let co_rads = match co_rads.filter(|v| !v.is_null()) {
            Some(v) => Some(co_rads_from_json(v, &case, &origin)?),
            None => None,
        };
        Ok(Self {
            case,
            probability,
            co_rads,
            origin,
        })
    }
}

/// A case (or job) for which no prediction was produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failed {
    /// Case name where it is known.
    pub case: Option<String>,
    /// Where it came from.
    pub origin: String,
    /// Why there is no prediction.
    pub reason: String,
}

/// How a prediction source was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionFormat {
    /// grand-challenge `predictions.json` with `/input/<pk>/output/` files.
    Platform,
    /// `summary.json` of a `ctgrade run` batch.
    RunSummary,
    /// The legacy evalutils `results.json` (`[{"outputs", "inputs", "error_messages"}]`).
    LegacyResults,
    /// `<dir>/<case>/probability-covid-19.json` folders.
    RunFolder,
    /// CSV `case,probability[,co_rads]`.
    Csv,
}

/// All predictions from one source.
#[derive(Debug, Clone)]
pub struct PredictionSet {
    /// The file or folder read.
    pub source: PathBuf,
    /// Its format.
    pub format: PredictionFormat,
    /// Predictions, unique by case.
    pub predictions: Vec<Prediction>,
    /// Jobs or cases without a prediction (failed jobs, error entries).
    pub failed: Vec<Failed>,
    /// Timing fields of the platform's jobs that gave a prediction (empty for other formats).
    pub timings: Vec<JobTiming>,
}

impl PredictionSet {
    /// The set, refused when two predictions name one case.
    fn checked(
        source: PathBuf,
        format: PredictionFormat,
        predictions: Vec<Prediction>,
        failed: Vec<Failed>,
    ) -> Result<Self> {
        check_unique(&predictions)?;
        Ok(Self {
            source,
            format,
            predictions,
            failed,
            timings: Vec::new(),
        })
    }

    /// Whether any prediction carries a CO-RADS score.
    pub fn has_co_rads(&self) -> bool {
        self.predictions.iter().any(|p| p.co_rads.is_some())
    }
}

/// Reads predictions from `path`: a `.csv` file, a `.json` file (the platform's job list, a
/// `ctgrade run` summary, or the legacy evalutils `results.json`), or a folder (holding
/// `predictions.json`, `summary.json`, `results.json`, or one sub-folder per case).
pub fn load_predictions(path: &Path) -> Result<PredictionSet> {
    let meta = fs::metadata(path).map_err(|e| EvalError::io(path, e))?;
    if meta.is_dir() {
        return load_folder(path);
    }
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if lower.ends_with(".csv") {
        return load_csv(path);
    }
    let doc = read_json(path)?;
    load_json(path, &doc)
}

/// Reads a parsed JSON prediction file, telling its kind by its shape.
fn load_json(path: &Path, doc: &Value) -> Result<PredictionSet> {
    match doc {
        Value::Array(entries) if entries.iter().any(is_legacy_entry) => load_legacy(path, doc),
        Value::Array(_) => load_platform(path, doc),
        Value::Object(o) if o.contains_key("cases") => load_summary(path, doc),
        _ => Err(EvalError::format(
            path,
            "expected the platform's job list (a JSON array of jobs with \"pk\"), a ctgrade run \
             summary ({\"cases\": [...]}) or a legacy results.json (a JSON array of \
             {\"outputs\", \"inputs\", \"error_messages\"})",
        )),
    }
}

/// An entry of the legacy evalutils `results.json`: it has `error_messages` and no job `pk`.
fn is_legacy_entry(entry: &Value) -> bool {
    entry.get("error_messages").is_some() && entry.get("pk").is_none()
}

/// Reads the legacy evalutils `results.json`: one entry per case, its input file in
/// `inputs[].filename`, its answers in `outputs[]` (`{"name", "value"}`), failures in
/// `error_messages`.
fn load_legacy(path: &Path, doc: &Value) -> Result<PredictionSet> {
    let entries = doc.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut predictions = Vec::new();
    let mut failed = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let origin = format!("{}, [{k}]", path.display());
        let file = e
            .get("inputs")
            .and_then(Value::as_array)
            .and_then(|inputs| inputs.iter().find_map(|i| i.get("filename")?.as_str()))
            .ok_or_else(|| {
                EvalError::format(
                    path,
                    format!("[{k}] has no input file name (inputs[].filename) to name the case by"),
                )
            })?;
        let case = case_name(file);
        let errors: Vec<String> = e
            .get("error_messages")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !errors.is_empty() {
            failed.push(Failed {
                case: Some(case),
                origin,
                reason: errors.join("; "),
            });
            continue;
        }
        let outputs = e.get("outputs").and_then(Value::as_array);
        let output = |name: &str| {
            outputs?
                .iter()
                .find(|o| o.get("name").and_then(Value::as_str) == Some(name))?
                .get("value")
        };
        let probability = output(PROBABILITY_SLUG).ok_or_else(|| {
            EvalError::format(
                path,
                format!("[{k}] ({file}): no output named '{PROBABILITY_SLUG}'"),
            )
        })?;
        predictions.push(Prediction::from_json(
            case,
            probability,
            output(CO_RADS_SLUG),
            origin,
        )?);
    }
    PredictionSet::checked(
        path.to_path_buf(),
        PredictionFormat::LegacyResults,
        predictions,
        failed,
    )
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|cause| EvalError::Json {
        path: path.to_path_buf(),
        cause,
    })
}

/// Checks a probability value from JSON.
pub fn probability_from_json(v: &Value, case: &str, origin: &str) -> Result<f64> {
    match v.as_f64() {
        Some(p) if p.is_finite() && (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(EvalError::BadProbability {
            case: case.into(),
            origin: origin.into(),
            value: v.to_string(),
        }),
    }
}

/// Checks a CO-RADS value from JSON (an integer 1..=5; `3.0` is accepted, `3.5` is not).
pub fn co_rads_from_json(v: &Value, case: &str, origin: &str) -> Result<u8> {
    let ok = v
        .as_f64()
        .filter(|f| f.fract() == 0.0 && (1.0..=5.0).contains(f))
        .map(|f| f as u8);
    ok.ok_or_else(|| EvalError::BadCoRads {
        case: case.into(),
        origin: origin.into(),
        value: v.to_string(),
    })
}

/// Parses a probability from text (CSV cell).
pub fn probability_from_str(s: &str, case: &str, origin: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(EvalError::BadProbability {
            case: case.into(),
            origin: origin.into(),
            value: format!("'{s}'"),
        }),
    }
}

/// Parses a CO-RADS score from text (CSV cell).
pub fn co_rads_from_str(s: &str, case: &str, origin: &str) -> Result<u8> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && (1.0..=5.0).contains(&f) => Ok(f as u8),
        _ => Err(EvalError::BadCoRads {
            case: case.into(),
            origin: origin.into(),
            value: format!("'{s}'"),
        }),
    }
}

/// Rejects duplicate cases (by match key), naming both origins.
fn check_unique(items: &[Prediction]) -> Result<()> {
    crate::case::check_unique(items, |x| &x.case, |x| &x.origin)
}

fn job_pk(job: &Value) -> Option<String> {
    match job.get("pk")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The socket value of an output with slug `slug` (or relative path `<slug>.json`).
fn find_output<'a>(outputs: &'a [Value], slug: &str) -> Option<&'a Value> {
    outputs.iter().find(|sv| {
        socket_field(sv, "slug") == Some(slug)
            || socket_field(sv, "relative_path") == Some(&format!("{slug}.json"))
    })
}

/// A relative path that stays inside its root (no `..`, not absolute).
fn is_contained(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The value of an output socket: inline `value` when present, else the file
/// `<root>/<pk>/output/<relative_path>`.
fn socket_value(root: &Path, pk: &str, sv: &Value, what: &str) -> Result<(Value, String)> {
    if let Some(v) = sv.get("value").filter(|v| !v.is_null()) {
        return Ok((v.clone(), format!("job {pk}, inline value of '{what}'")));
    }
    let rel = socket_field(sv, "relative_path").unwrap_or_default();
    if !is_contained(pk) || !is_contained(rel) {
        return Err(EvalError::format(
            root.join("predictions.json"),
            format!("job {pk}: output '{what}' has no inline value and no usable relative_path ('{rel}')"),
        ));
    }
    let file = root.join(pk).join("output").join(rel);
    if !file.is_file() {
        return Err(EvalError::format(
            &file,
            format!("job {pk}: output '{what}' has no inline value and its file is missing"),
        ));
    }
    let value = read_json(&file)?;
    Ok((value, file.display().to_string()))
}

/// The input image name of a job (`inputs[].image.name`).
fn image_name(path: &Path, pk: &str, inputs: &[Value]) -> Result<String> {
    let images: Vec<(&str, Option<&str>)> = inputs
        .iter()
        .filter_map(|sv| {
            let name = sv.get("image")?.get("name")?.as_str()?;
            Some((name, socket_field(sv, "slug")))
        })
        .collect();
    match images.as_slice() {
        [(name, _)] => Ok((*name).to_string()),
        [] => Err(EvalError::format(
            path,
            format!("job {pk}: no input image (inputs[].image.name) to name the case by"),
        )),
        many => {
            let slugs: Vec<String> = many
                .iter()
                .map(|(n, s)| format!("{} ({n})", s.unwrap_or("?")))
                .collect();
            Err(EvalError::format(
                path,
                format!(
                    "job {pk}: {} input images ({}); cannot tell which one names the case",
                    many.len(),
                    slugs.join(", ")
                ),
            ))
        }
    }
}

/// Reads the platform's `predictions.json` (already parsed as `doc`).
fn load_platform(path: &Path, doc: &Value) -> Result<PredictionSet> {
    let root = path.parent().unwrap_or(Path::new("."));
    let jobs = doc.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut predictions = Vec::new();
    let mut failed = Vec::new();
    let mut timings = Vec::new();
    for (k, job) in jobs.iter().enumerate() {
        let pk = job_pk(job)
            .ok_or_else(|| EvalError::format(path, format!("job [{k}] has no \"pk\"")))?;
        let inputs = job
            .get("inputs")
            .and_then(Value::as_array)
            .ok_or_else(|| EvalError::format(path, format!("job {pk} has no \"inputs\" list")))?;
        let name = image_name(path, &pk, inputs)?;
        let case = case_name(&name);
        let status = job.get("status").and_then(Value::as_str);
        if let Some(s) = status.filter(|s| !s.eq_ignore_ascii_case("succeeded")) {
            failed.push(Failed {
                case: Some(case),
                origin: format!("job {pk} (image {name})"),
                reason: format!("job status is '{s}'"),
            });
            continue;
        }
        let outputs = job
            .get("outputs")
            .and_then(Value::as_array)
            .ok_or_else(|| EvalError::format(path, format!("job {pk} has no \"outputs\" list")))?;
        let sv = find_output(outputs, PROBABILITY_SLUG).ok_or_else(|| {
            EvalError::format(
                path,
                format!("job {pk} (image {name}): no output '{PROBABILITY_SLUG}'"),
            )
        })?;
        let (value, origin) = socket_value(root, &pk, sv, PROBABILITY_SLUG)?;
        let probability = probability_from_json(&value, &case, &origin)?;
        let co_rads = match find_output(outputs, CO_RADS_SLUG) {
            Some(sv) => {
                let (value, origin) = socket_value(root, &pk, sv, CO_RADS_SLUG)?;
                Some(co_rads_from_json(&value, &case, &origin)?)
            }
            None => None,
        };
        timings.push(JobTiming::from_job(job, &pk, &case));
        predictions.push(Prediction {
            case,
            probability,
            co_rads,
            origin: format!("job {pk} (image {name})"),
        });
    }
    let mut set = PredictionSet::checked(
        path.to_path_buf(),
        PredictionFormat::Platform,
        predictions,
        failed,
    )?;
    set.timings = timings;
    Ok(set)
}

/// Reads a `ctgrade run` batch summary `{"cases": [{"case", "probability", "co_rads", "error"}]}`.
fn load_summary(path: &Path, doc: &Value) -> Result<PredictionSet> {
    let entries = doc
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| EvalError::format(path, "\"cases\" is not a list"))?;
    let mut predictions = Vec::new();
    let mut failed = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let case = e
            .get("case")
            .and_then(Value::as_str)
            .map(case_name)
            .ok_or_else(|| EvalError::format(path, format!("cases[{k}] has no \"case\" name")))?;
        let origin = format!("{}, cases[{k}]", path.display());
        if let Some(err) = e.get("error").filter(|v| !v.is_null()) {
            failed.push(Failed {
                case: Some(case),
                origin,
                reason: err.as_str().map_or_else(|| err.to_string(), str::to_string),
            });
            continue;
        }
        predictions.push(Prediction::from_json(
            case,
            e.get("probability").unwrap_or(&Value::Null),
            e.get("co_rads"),
            origin,
        )?);
    }
    PredictionSet::checked(
        path.to_path_buf(),
        PredictionFormat::RunSummary,
        predictions,
        failed,
    )
}

/// Reads a folder: `predictions.json`, `summary.json`, `results.json`, or
/// `<case>/probability-covid-19.json`, the first found.
fn load_folder(dir: &Path) -> Result<PredictionSet> {
    for file in ["predictions.json", "summary.json", "results.json"] {
        let p = dir.join(file);
        if p.is_file() {
            return load_json(&p, &read_json(&p)?);
        }
    }
    let prob_file = format!("{PROBABILITY_SLUG}.json");
    let co_rads_file = format!("{CO_RADS_SLUG}.json");
    if dir.join(&prob_file).is_file() {
        return Err(EvalError::format(
            dir,
            format!(
                "{prob_file} lies directly in the folder: a single-case output does not say which \
                 case it is; use a batch folder (<dir>/<case>/{prob_file} or summary.json) or a CSV"
            ),
        ));
    }
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| EvalError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut predictions = Vec::new();
    let mut failed = Vec::new();
    for sub in subdirs {
        let case = sub
            .file_name()
            .map(|n| case_name(&n.to_string_lossy()))
            .unwrap_or_default();
        let pf = sub.join(&prob_file);
        if !pf.is_file() {
            failed.push(Failed {
                case: Some(case),
                origin: sub.display().to_string(),
                reason: format!("no {prob_file}"),
            });
            continue;
        }
        let origin = pf.display().to_string();
        let probability = probability_from_json(&read_json(&pf)?, &case, &origin)?;
        let cf = sub.join(&co_rads_file);
        let co_rads = if cf.is_file() {
            Some(co_rads_from_json(
                &read_json(&cf)?,
                &case,
                &cf.display().to_string(),
            )?)
        } else {
            None
        };
        predictions.push(Prediction {
            case,
            probability,
            co_rads,
            origin,
        });
    }
    if predictions.is_empty() && failed.is_empty() {
        return Err(EvalError::format(
            dir,
            format!(
                "no predictions: expected predictions.json, summary.json, results.json or \
                 <case>/{prob_file}"
            ),
        ));
    }
    PredictionSet::checked(
        dir.to_path_buf(),
        PredictionFormat::RunFolder,
        predictions,
        failed,
    )
}

/// Reads `case,probability[,co_rads]` (header required; extra columns are ignored).
fn load_csv(path: &Path) -> Result<PredictionSet> {
    let table = CsvTable::open(path)?;
    let (Some(case_col), Some(prob_col)) = (
        table.column(&["case", "case_id", "image"]),
        table.column(&["probability", PROBABILITY_SLUG, "probability_covid_19"]),
    ) else {
        return Err(EvalError::format(
            path,
            format!(
                "expected a header with 'case' and 'probability' columns, found: {}",
                table.headers().iter().collect::<Vec<_>>().join(",")
            ),
        ));
    };
    let co_rads_col = table.column(&["co_rads", CO_RADS_SLUG, "corads", "co-rads"]);
    let mut predictions = Vec::new();
    table.for_each_row(|row| {
        let case = case_name(row.get(case_col));
        if case.is_empty() {
            return Err(row.error("empty case name"));
        }
        let origin = row.origin();
        let probability = probability_from_str(row.get(prob_col), &case, &origin)?;
        let co_rads = match row.cell(co_rads_col) {
            Some(s) => Some(co_rads_from_str(s, &case, &origin)?),
            None => None,
        };
        predictions.push(Prediction {
            case,
            probability,
            co_rads,
            origin,
        });
        Ok(())
    })?;
    PredictionSet::checked(
        path.to_path_buf(),
        PredictionFormat::Csv,
        predictions,
        Vec::new(),
    )
}
