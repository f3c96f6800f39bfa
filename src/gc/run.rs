//! `ctgrade run`: the algorithm as grand-challenge runs it. Reads every case in the input folder,
//! preprocesses it as the ensemble's manifest asks, runs the members, grades, and writes the answers.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::memory::BYTES_PER_GRID_VOXEL;
use super::outputs::{self, CaseResult};
use super::shard::{self, Shard};
use super::{discover, Case, Layout};
use crate::device::Precision;
use crate::ensemble::Ensemble;
use crate::grading::{self, Grade};
use crate::preprocess::resample::Grid;
use crate::preprocess::{self, checks, PreprocessError};
use crate::volume::{self, ElementType, ReadLimits};

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Input folder (`/input`).
    pub input: PathBuf,
    /// Output folder (`/output`).
    pub output: PathBuf,
    /// Also write the lung mask of each case to `images/lung-segmentation/<case>.mha`.
    pub lung_mask: bool,
    /// Limits on the input files (a larger scan fails before anything is allocated for it).
    pub limits: ReadLimits,
    /// Compute precision of the networks (f32, the reference, unless asked otherwise).
    pub precision: Precision,
    /// Largest resampled grid (voxels) preprocessing may make: [`preprocess::MAX_GRID_VOXELS`],
    /// or less when the memory budget could not hold the lung mask of a larger one
    /// ([`super::memory::max_grid_voxels`]).
    pub max_grid_voxels: usize,
    /// Grade only the cases of this shard (`--shard`); the batch layout is used whatever the
    /// number of cases, and the summary is `summary-shard-I-of-N.json`.
    pub shard: Option<Shard>,
    /// Skip a case whose answers an earlier run left complete and valid (`--skip-done`).
    pub skip_done: bool,
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

    /// The one line that tells a user why the run failed (the platform shows the last stderr
    /// line), or `None` when every case was graded.
    pub fn failure_line(&self) -> Option<String> {
        let failures: Vec<_> = self.failures().collect();
        let first = failures.first()?;
        let reason = first.error.as_deref().unwrap_or("the case failed");
        Some(if self.results.len() == 1 {
            reason.to_string()
        } else {
            format!(
                "{} of {} cases failed (see summary.json): first, {}: {reason}",
                failures.len(),
                self.results.len(),
                first.case,
            )
        })
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
    let mut inputs = discover(&opts.input)?;
    let total = inputs.cases.len();
    let batch = total > 1 || opts.shard.is_some();
    if let Some(shard) = opts.shard {
        inputs.cases.retain(|c| shard.owns(&c.name));
    }
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
    if let Some(shard) = opts.shard {
        log(
            &bar,
            format!(
                "ctgrade: shard {shard} owns {} of the {total} case(s)",
                inputs.cases.len()
            ),
        );
    }
    for w in &inputs.warnings {
        log(&bar, format!("ctgrade: warning: {w}"));
    }
    let mut results = Vec::with_capacity(inputs.cases.len());
    for case in &inputs.cases {
        let start = Instant::now();
        let case_dir = if batch {
            opts.output.join(&case.name)
        } else {
            opts.output.clone()
        };
        let file = case
            .image
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mask_path = opts
            .output
            .join(outputs::LUNG_MASK_DIR)
            .join(format!("{}.mha", case.name));
        if let Some((p, c)) = opts
            .skip_done
            .then(|| shard::finished(&case_dir))
            .flatten()
            .filter(|_| !opts.lung_mask || mask_path.is_file())
        {
            log(
                &bar,
                format!(
                    "{}: already graded (probability {p:.4}, CO-RADS {c}); skipped",
                    case.name
                ),
            );
            bar.inc(ensemble.len() as u64);
            results.push(CaseResult {
                case: case.name.clone(),
                file,
                probability: Some(p),
                co_rads: Some(c),
                error: None,
                warnings: Vec::new(),
                skipped: true,
                seconds: 0.0,
            });
            continue;
        }
        let mut warnings = Vec::new();
        let outcome = grade_case(case, opts, ensemble, device, &bar, &mut warnings).and_then(
            |(grade, mask)| {
                if let (true, Some(mask)) = (opts.lung_mask, mask) {
                    let path = &mask_path;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    }
                    volume::write(path, &mask, ElementType::UChar).map_err(|e| e.to_string())?;
                }
                // The answers last: a case whose other outputs failed leaves no answer behind.
                if inputs.layout == Layout::Sockets || batch {
                    outputs::write_sockets(&case_dir, &grade).map_err(|e| e.to_string())?;
                }
                Ok(grade)
            },
        );
        let seconds = start.elapsed().as_secs_f64();
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
                    warnings,
                    skipped: false,
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
                    warnings,
                    skipped: false,
                    seconds,
                }
            }
        };
        results.push(result);
    }
    bar.finish_and_clear();
    match opts.shard {
        // Shards share an output folder: each writes its own summary, and `ctgrade merge`
        // combines them (a shared results.json would be overwritten by each).
        Some(shard) => outputs::write_summary_named(&opts.output, &shard.summary_stem(), &results)?,
        None => {
            if inputs.layout == Layout::Legacy {
                outputs::write_results_json(&opts.output, &results)?;
            }
            if batch {
                outputs::write_summary(&opts.output, &results)?;
            }
        }
    }
    Ok(RunReport { results })
}

/// Reads, checks, preprocesses, runs and grades one case. Errors are one-line reasons naming
/// the file; what looked wrong without stopping the case goes to `warnings` (and the log).
/// The lung mask is returned only when `opts.lung_mask` asks for it.
fn grade_case(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    device: &Device,
    bar: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<(Grade, Option<volume::Volume>), String> {
    let label = match &case.upload_name {
        Some(upload) => format!("{} (uploaded as {upload})", case.name),
        None => case.name.clone(),
    };
    let t = Instant::now();
    let mut ct = volume::read_with_limits(&case.image, &opts.limits).map_err(|e| e.to_string())?;
    let lesion = match &case.lesion {
        Some(path) => {
            Some(volume::read_with_limits(path, &opts.limits).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let read_s = t.elapsed().as_secs_f64();
    let in_context = |e: PreprocessError, warnings: &[String]| {
        // A failure often follows from a warning (no lungs in an image that is not in HU):
        // the one line a user sees says both.
        let mut msg = format!("{}: {e}", case.image.display());
        if !warnings.is_empty() {
            msg.push_str(&format!(" (warning: {})", warnings.join("; ")));
        }
        msg
    };
    let check = checks::check_ct(&mut ct).map_err(|e| in_context(e, warnings))?;
    for w in &check.warnings {
        log(bar, format!("{}: warning: {w}", case.name));
    }
    warnings.extend(check.warnings);
    let spec = &ensemble.manifest.input;
    let (_, grid, _) = preprocess::target_grid(&Grid::of(&ct), spec.spacing_mm)
        .map_err(|e| in_context(e, warnings))?;
    if grid.len() > opts.max_grid_voxels {
        return Err(format!(
            "{}: resampling to {} mm would give a {:?} grid ({} voxels); its lung mask would need \
             about {} MB, more than the container's memory allows (at most {} voxels); the \
             scan's geometry is implausible (spacing {:?} mm)",
            case.image.display(),
            spec.spacing_mm,
            grid.size,
            grid.len(),
            grid.len() as u64 * BYTES_PER_GRID_VOXEL / 1_000_000,
            opts.max_grid_voxels,
            ct.spacing,
        ));
    }
    let t = Instant::now();
    // By value: the CT's voxels are freed once resampled (see `preprocess_owned`).
    let prep = preprocess::preprocess_owned(ct, lesion.as_ref(), spec)
        .map_err(|e| in_context(e, warnings))?;
    let prep_s = t.elapsed().as_secs_f64();
    drop(lesion);
    let o = &prep.report.orientation;
    if prep.report.oblique_resampled {
        log(
            bar,
            format!(
                "{}: the scan is tilted by {:.1} degrees; resampled onto an axis-aligned grid",
                case.name, o.obliquity_deg
            ),
        );
    } else if !o.is_identity() {
        log(
            bar,
            format!(
                "{}: axes reordered to LPS (input axes {:?} as x, y, z; flipped {:?})",
                case.name, o.axes, o.flipped
            ),
        );
    }
    let mask = opts.lung_mask.then_some(prep.lung_mask);
    let shape: Vec<usize> = std::iter::once(1).chain(prep.shape).collect();
    let input = Tensor::from_vec(prep.input, shape, &Device::Cpu).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let n = ensemble.len();
    let mean = ensemble
        .predict(&input, device, opts.precision, |i, s| {
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
    Ok((grade, mask))
}
