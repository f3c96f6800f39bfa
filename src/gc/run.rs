//! `ctgrade run`: the algorithm as grand-challenge runs it. Reads every case in the input folder,
//! preprocesses it as the ensemble's manifest asks, runs the members, grades, and writes the answers.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::case::{grade_case, log, CaseError};
pub use super::options::RunOptions;
use super::outputs::{self, CaseResult};
use super::shard;
use super::{discover, Case, Layout};
use crate::ensemble::Ensemble;
use crate::report::{self, CaseFigures};
use crate::volume::{self, ElementType, Volume, Voxel};

/// Why the run as a whole could not proceed (a failing case is not one: it is recorded).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The inputs cannot be found.
    #[error(transparent)]
    Inputs(#[from] super::GcError),
    /// An output cannot be written.
    #[error(transparent)]
    Write(#[from] outputs::WriteError),
    /// The output location cannot take the answers; checked before any case is graded.
    #[error("output folder {}: {reason}", path.display())]
    Output {
        /// The output folder.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Makes sure `dir` is a folder ctgrade can write into (creating it when missing), so that a
/// wrong `--output` fails at once rather than after every case has been graded.
fn check_output(dir: &Path) -> Result<(), RunError> {
    let fail = |reason: String| RunError::Output {
        path: dir.to_path_buf(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(fail("exists and is not a folder".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot be created: {e}")))?;
    let probe = dir.join(format!(".ctgrade-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fail(format!("is not writable: {e}")))?;
    // A probe that cannot be removed is harmless: it is hidden and empty.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes one of a case's optional images, its folder created if needed.
fn write_image<T: Voxel>(
    image: Option<Volume<T>>,
    path: &Path,
    ty: ElementType,
) -> Result<(), CaseError> {
    let Some(image) = image else {
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| write_err(dir, &e))?;
    }
    volume::write(path, &image, ty).map_err(|e| write_err(path, &e))
}

/// A case's output `path` could not be written.
fn write_err(path: &Path, e: &dyn std::fmt::Display) -> CaseError {
    CaseError::Write {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// The failure reason as the submitter reads it: the platform stores an upload under an internal
/// name (`images/ct/<uuid>.mha`), so the file the user uploaded is named first.
fn with_upload_name(case: &Case, error: String) -> String {
    let Some(upload) = &case.upload_name else {
        return error;
    };
    let stored = case.image.display().to_string();
    match error.strip_prefix(&stored) {
        Some(rest) => format!("{upload} (stored as {stored}){rest}"),
        None => format!("{upload}: {error}"),
    }
}

/// What happened in a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// One entry per case, in input order.
    pub results: Vec<CaseResult>,
    /// The report's figures of each case (`--report`; `None` for failed and skipped cases).
    pub figures: Vec<Option<CaseFigures>>,
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

/// Runs the ensemble on every case of `opts.input`.
pub fn run(opts: &RunOptions, ensemble: &Ensemble, device: &Device) -> Result<RunReport, RunError> {
    check_output(&opts.output)?;
    let mut inputs = discover(&opts.input)?;
    let total = inputs.cases.len();
    // One rule for images directly in the input folder, one or many: each case gets its own
    // folder (sockets, spread) and the summary, beside the legacy results.json.
    let batch = total > 1 || opts.shard.is_some() || inputs.layout == Layout::Legacy;
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
    if ensemble.manifest.demonstration {
        log(&bar, format!("ctgrade: {}", report::DEMONSTRATION_NOTICE));
    }
    let mut results = Vec::with_capacity(inputs.cases.len());
    let mut figures = Vec::with_capacity(inputs.cases.len());
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
        let heat_path = opts
            .output
            .join(outputs::HEAT_MAP_DIR)
            .join(format!("{}.mha", case.name));
        let lesion_path = opts
            .output
            .join(super::LESION_SOCKET_DIR)
            .join(format!("{}.mha", case.name));
        if let Some((p, c)) = opts
            .skip_done
            .then(|| shard::finished(&case_dir))
            .flatten()
            .filter(|_| !opts.lung_mask || mask_path.is_file())
            .filter(|_| !opts.heat_map || heat_path.is_file())
            .filter(|_| !opts.spread || case_dir.join(outputs::SPREAD_FILE).is_file())
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
                member_probabilities: Vec::new(),
                spread: None,
                lesions: None,
                error: None,
                warnings: Vec::new(),
                skipped: true,
                seconds: 0.0,
            });
            figures.push(None);
            continue;
        }
        let mut warnings = Vec::new();
        let outcome =
            grade_case(case, opts, ensemble, device, &bar, &mut warnings).and_then(|mut graded| {
                write_image(graded.mask.take(), &mask_path, ElementType::UChar)?;
                write_image(graded.heat.take(), &heat_path, ElementType::Float)?;
                write_image(graded.segmentation.take(), &lesion_path, ElementType::UChar)?;
                // The answers last: a case whose other outputs failed leaves no answer behind.
                if opts.spread {
                    outputs::write_spread(&case_dir, graded.spread)
                        .map_err(|e| write_err(&case_dir, &e))?;
                }
                if let Some(b) = &graded.burden {
                    outputs::write_burden(&case_dir, b).map_err(|e| write_err(&case_dir, &e))?;
                }
                outputs::write_sockets(&case_dir, &graded.grade)
                    .map_err(|e| write_err(&case_dir, &e))?;
                Ok(graded)
            });
        let seconds = start.elapsed().as_secs_f64();
        let result = match outcome {
            Ok(graded) => {
                let grade = graded.grade;
                let members: Vec<String> =
                    graded.members.iter().map(|p| format!("{p:.4}")).collect();
                log(
                    &bar,
                    format!(
                        "{}: probability {:.4}, CO-RADS {} (members {}, spread {:.4}; {seconds:.2} s)",
                        case.name,
                        grade.probability,
                        grade.co_rads,
                        members.join(" "),
                        graded.spread,
                    ),
                );
                figures.push(graded.figures);
                CaseResult {
                    case: case.name.clone(),
                    file,
                    probability: Some(grade.probability),
                    co_rads: Some(grade.co_rads),
                    member_probabilities: graded.members,
                    spread: Some(graded.spread),
                    lesions: graded.burden,
                    error: None,
                    warnings,
                    skipped: false,
                    seconds,
                }
            }
            Err(error) => {
                let error = with_upload_name(case, error.to_string());
                log(&bar, format!("{}: FAILED: {error}", case.name));
                figures.push(None);
                CaseResult {
                    case: case.name.clone(),
                    file,
                    probability: None,
                    co_rads: None,
                    member_probabilities: Vec::new(),
                    spread: None,
                    lesions: None,
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
    if opts.report {
        let info = report::RunInfo::of(ensemble, &opts.input);
        outputs::write_atomic(
            &opts.output.join(outputs::REPORT_FILE),
            report::render_html(&info, &results, &figures).as_bytes(),
        )?;
    }
    Ok(RunReport { results, figures })
}
