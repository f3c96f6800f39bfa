//! `ctgrade run`: the algorithm as grand-challenge runs it. Reads every case in the input folder,
//! preprocesses it as the ensemble's manifest asks, runs the members, grades, and writes the answers.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::outputs::{self, CaseResult};
use super::{discover, Case, Layout};
use crate::ensemble::Ensemble;
use crate::grading::{self, Grade};
use crate::preprocess;
use crate::volume::{self, ElementType};

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Input folder (`/input`).
    pub input: PathBuf,
    /// Output folder (`/output`).
    pub output: PathBuf,
    /// Also write the lung mask of each case to `images/lung-segmentation/<case>.mha`.
    pub lung_mask: bool,
}

/// Why the run as a whole could not proceed (a failing case is not one: it is recorded).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The inputs cannot be found.
    #[error(transparent)]
    Inputs(#[from] super::GcError),
    /// An output cannot be written.
    #[error(transparent)]
    Write(#[from] outputs::WriteError),
}

/// What happened in a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// One entry per case, in input order.
    pub results: Vec<CaseResult>,
}

impl RunReport {
    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| r.error.is_some())
    }
}

/// Logs a line above the progress bar (or plainly when stderr is not a terminal).
fn log(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Runs the ensemble on every case of `opts.input`.
pub fn run(opts: &RunOptions, ensemble: &Ensemble, device: &Device) -> Result<RunReport, RunError> {
    let inputs = discover(&opts.input)?;
    let batch = inputs.cases.len() > 1;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new((inputs.cases.len() * ensemble.len()) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} member runs, {elapsed} elapsed, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    log(
        &bar,
        format!(
            "ctgrade: {} case(s) in {} ({} layout); ensemble {:?}: {} x {} ({:?} head)",
            inputs.cases.len(),
            opts.input.display(),
            match inputs.layout {
                Layout::Sockets => "grand-challenge socket",
                Layout::Legacy => "legacy",
            },
            ensemble.manifest.name,
            ensemble.len(),
            ensemble.manifest.network.arch,
            ensemble.manifest.head,
        ),
    );
    let mut results = Vec::with_capacity(inputs.cases.len());
    for case in &inputs.cases {
        let start = Instant::now();
        let case_dir = if batch {
            opts.output.join(&case.name)
        } else {
            opts.output.clone()
        };
        let outcome = grade_case(case, ensemble, device, &bar).and_then(|(grade, mask)| {
            if opts.lung_mask {
                let path = opts
                    .output
                    .join(outputs::LUNG_MASK_DIR)
                    .join(format!("{}.mha", case.name));
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                volume::write(&path, &mask, ElementType::UChar).map_err(|e| e.to_string())?;
            }
            // The answers last: a case whose other outputs failed leaves no answer behind.
            if inputs.layout == Layout::Sockets || batch {
                outputs::write_sockets(&case_dir, &grade).map_err(|e| e.to_string())?;
            }
            Ok(grade)
        });
        let seconds = start.elapsed().as_secs_f64();
        let file = case
            .image
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = match outcome {
            Ok(grade) => {
                log(
                    &bar,
                    format!(
                        "{}: probability {:.4}, CO-RADS {} ({seconds:.2} s)",
                        case.name, grade.probability, grade.co_rads
                    ),
                );
                CaseResult {
                    case: case.name.clone(),
                    file,
                    probability: Some(grade.probability),
                    co_rads: Some(grade.co_rads),
                    error: None,
                    seconds,
                }
            }
            Err(error) => {
                log(&bar, format!("{}: FAILED: {error}", case.name));
                CaseResult {
                    case: case.name.clone(),
                    file,
                    probability: None,
                    co_rads: None,
                    error: Some(error),
                    seconds,
                }
            }
        };
        results.push(result);
    }
    bar.finish_and_clear();
    if inputs.layout == Layout::Legacy {
        outputs::write_results_json(&opts.output, &results)?;
    }
    if batch {
        outputs::write_summary(&opts.output, &results)?;
    }
    Ok(RunReport { results })
}

/// Reads, preprocesses, runs and grades one case. Errors are one-line reasons naming the file.
fn grade_case(
    case: &Case,
    ensemble: &Ensemble,
    device: &Device,
    bar: &ProgressBar,
) -> Result<(Grade, volume::Volume), String> {
    let label = match &case.upload_name {
        Some(upload) => format!("{} (uploaded as {upload})", case.name),
        None => case.name.clone(),
    };
    let t = Instant::now();
    let ct = volume::read(&case.image).map_err(|e| e.to_string())?;
    let lesion = match &case.lesion {
        Some(path) => Some(volume::read(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let read_s = t.elapsed().as_secs_f64();
    let spec = &ensemble.manifest.input;
    let t = Instant::now();
    let prep = preprocess::preprocess(&ct, lesion.as_ref(), spec)
        .map_err(|e| format!("{}: {e}", case.image.display()))?;
    let prep_s = t.elapsed().as_secs_f64();
    drop(ct);
    let shape: Vec<usize> = std::iter::once(1).chain(prep.shape).collect();
    let input = Tensor::from_vec(prep.input, shape, &Device::Cpu).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let n = ensemble.len();
    let mean = ensemble
        .predict(&input, device, |i, s| {
            bar.inc(1);
            if bar.is_hidden() {
                eprintln!("{}: member {}/{n} in {s:.2} s", case.name, i + 1);
            }
        })
        .map_err(|e| e.to_string())?;
    let infer_s = t.elapsed().as_secs_f64();
    let grade = grading::grade(ensemble.manifest.head, &mean)
        .map_err(|e| format!("{}: {e}", case.image.display()))?;
    log(
        bar,
        format!("{label}: read {read_s:.2} s, preprocess {prep_s:.2} s, ensemble {infer_s:.2} s"),
    );
    Ok((grade, prep.lung_mask))
}
