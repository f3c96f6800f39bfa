//! `ctgrade run`: the algorithm as grand-challenge runs it. Reads every case in the input folder,
//! preprocesses it as the ensemble's manifest asks, runs the members, grades, and writes the answers.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::memory::BYTES_PER_GRID_VOXEL;
use super::outputs::{self, CaseResult};
use super::shard::{self, Shard};
use super::{discover, Case, Layout};
use crate::device::Precision;
use crate::ensemble::{self, Ensemble};
use crate::grading::{self, Grade};
use crate::heatmap;
use crate::preprocess::resample::{self, Grid, Interpolation};
use crate::preprocess::{self, checks, PreprocessError};
use crate::report::{self, CaseFigures, CaseImages, Timings};
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
    /// Also write the members' spread to `probability-covid-19-spread.json` (`--spread`).
    pub spread: bool,
    /// Also write a Grad-CAM heat map of each case to `images/covid-19-heat-map/<case>.mha`.
    pub heat_map: bool,
    /// Also write `report.html` into the output folder (`--report`).
    pub report: bool,
    /// Also write the lesion model's segmentation (its labels) of each case to
    /// `images/covid-19-lesion-segmentation/<case>.mha`, when the model ran
    /// (`--lesion-segmentation`).
    pub lesion_segmentation: bool,
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

/// A one-line reason naming the case's file.
fn reason(case: &Case, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", case.image.display())
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
                let images = [
                    (graded.mask.take(), &mask_path, ElementType::UChar),
                    (graded.heat.take(), &heat_path, ElementType::Float),
                    (graded.segmentation.take(), &lesion_path, ElementType::UChar),
                ];
                for (image, path, element) in images {
                    let Some(image) = image else { continue };
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    }
                    volume::write(path, &image, element).map_err(|e| e.to_string())?;
                }
                // The answers last: a case whose other outputs failed leaves no answer behind.
                if opts.spread {
                    outputs::write_spread(&case_dir, graded.spread).map_err(|e| e.to_string())?;
                }
                if let Some(p) = graded.lung_affected {
                    outputs::write_json(&case_dir.join(outputs::LUNG_AFFECTED_FILE), &p)
                        .map_err(|e| e.to_string())?;
                }
                outputs::write_sockets(&case_dir, &graded.grade).map_err(|e| e.to_string())?;
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
                    error: None,
                    warnings,
                    skipped: false,
                    seconds,
                }
            }
            Err(error) => {
                let error = with_upload_name(case, error);
                log(&bar, format!("{}: FAILED: {error}", case.name));
                figures.push(None);
                CaseResult {
                    case: case.name.clone(),
                    file,
                    probability: None,
                    co_rads: None,
                    member_probabilities: Vec::new(),
                    spread: None,
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

/// What grading one case produced.
struct Graded {
    grade: Grade,
    /// Each member's probability.
    members: Vec<f64>,
    /// Their population standard deviation.
    spread: f64,
    /// The lung mask on the CT's grid, when `--lung-mask` asks for it.
    mask: Option<volume::Volume>,
    /// The heat map on the CT's grid, when `--heat-map` asks for it.
    heat: Option<volume::Volume>,
    /// The lesion model's segmentation on the CT's grid, when it ran and
    /// `--lesion-segmentation` asks for it.
    segmentation: Option<volume::Volume>,
    /// Lesion volume inside the lungs over lung volume, in percent, when a lesion map was used.
    lung_affected: Option<f64>,
    /// The report's figures, when `--report` asks for them.
    figures: Option<CaseFigures>,
}

/// Reads, checks, preprocesses, runs and grades one case. Errors are one-line reasons naming
/// the file; what looked wrong without stopping the case goes to `warnings` (and the log).
/// The lung mask, heat map and figures are made only when `opts` asks for them.
fn grade_case(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    device: &Device,
    bar: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<Graded, String> {
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
    // The lesion channel: the job's lesion map when it gives one, else the ensemble's lesion
    // model on the CT (after the checks above, so a bad scan fails before the segmenter runs).
    let mut segmentation = None;
    let lesion = match (lesion, &ensemble.lesion_model) {
        (Some(given), Some(_)) => {
            log(
                bar,
                format!(
                    "{}: lesion map given; the ensemble's lesion model is not run",
                    case.name
                ),
            );
            Some(given)
        }
        (None, Some(model)) => {
            let t = Instant::now();
            let labels = model.segment(&ct).map_err(|e| reason(case, e))?;
            let map = model.lesion_map(&labels);
            let lesion_voxels = map.data.iter().filter(|&&v| v > 0.0).count();
            log(
                bar,
                format!(
                    "{}: lesion map computed by {} in {:.2} s ({lesion_voxels} voxels, {:.2}% of \
                     the scan)",
                    case.name,
                    model.spec.path,
                    t.elapsed().as_secs_f64(),
                    100.0 * lesion_voxels as f64 / map.data.len().max(1) as f64
                ),
            );
            segmentation = opts.lesion_segmentation.then_some(labels);
            Some(map)
        }
        (given, None) => given,
    };
    let ct_grid = Grid::of(&ct);
    // The report's pictures are drawn on a display grid; the CT is resampled onto it before
    // preprocessing takes it.
    let display = if opts.report {
        let g = report::display_grid(&grid);
        let v = resample::resample(&ct, &g, Interpolation::Linear, preprocess::PAD_HU)
            .map_err(|e| in_context(e, warnings))?;
        Some((g, v))
    } else {
        None
    };
    let t = Instant::now();
    // By value: the CT's voxels are freed once resampled (see `preprocess_owned`).
    let prep = preprocess::preprocess_owned(ct, lesion.as_ref(), spec)
        .map_err(|e| in_context(e, warnings))?;
    let prep_s = t.elapsed().as_secs_f64();
    let lung_affected = lesion
        .as_ref()
        .and_then(|l| percentage_affected(l, &prep.lung_mask));
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
    let lungs_display = match &display {
        Some((g, _)) => Some(
            resample::resample(&prep.lung_mask, g, Interpolation::Nearest, 0.0)
                .map_err(|e| reason(case, e))?,
        ),
        None => None,
    };
    let mask = opts.lung_mask.then_some(prep.lung_mask);
    // The report shows the network input: keep it (it is small) before the tensor takes it.
    let kept_input = opts.report.then(|| prep.input.clone());
    let shape: Vec<usize> = std::iter::once(1).chain(prep.shape).collect();
    let input = Tensor::from_vec(prep.input, shape, &Device::Cpu).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let n = ensemble.len();
    let progress = |i: usize, s: f64| {
        bar.inc(1);
        if bar.is_hidden() {
            eprintln!("{}: member {}/{n} in {s:.2} s", case.name, i + 1);
        }
    };
    let (outputs, cam) = if opts.heat_map {
        let (outputs, cam) = ensemble
            .predict_members_with_cam(&input, device, opts.precision, progress)
            .map_err(|e| e.to_string())?;
        (outputs, Some(cam))
    } else {
        let outputs = ensemble
            .predict_members(&input, device, opts.precision, progress)
            .map_err(|e| e.to_string())?;
        (outputs, None)
    };
    let infer_s = t.elapsed().as_secs_f64();
    let head = ensemble.manifest.head;
    let grade =
        grading::grade(head, &ensemble::mean_output(&outputs)).map_err(|e| reason(case, e))?;
    let (members, spread) = grading::member_spread(head, &outputs).map_err(|e| reason(case, e))?;
    if cam
        .as_ref()
        .is_some_and(|c| c.data.iter().all(|&v| v == 0.0))
    {
        let w = "the heat map is zero everywhere: no region of the last block raises the score";
        log(bar, format!("{}: warning: {w}", case.name));
        warnings.push(w.to_string());
    }
    let t = Instant::now();
    let (heat, heat_display) = match &cam {
        Some(cam) => {
            let heat =
                heatmap::to_grid(cam, &prep.report, &ct_grid).map_err(|e| reason(case, e))?;
            let shown = match &display {
                Some((g, _)) => {
                    Some(heatmap::to_grid(cam, &prep.report, g).map_err(|e| reason(case, e))?)
                }
                None => None,
            };
            (Some(heat), shown)
        }
        None => (None, None),
    };
    let heat_s = cam.is_some().then(|| t.elapsed().as_secs_f64());
    log(
        bar,
        format!(
            "{label}: read {read_s:.2} s, preprocess {prep_s:.2} s, ensemble {infer_s:.2} s{}",
            heat_s.map_or(String::new(), |s| format!(", heat map {s:.2} s"))
        ),
    );
    let figures = match (display, lungs_display, kept_input) {
        (Some((_, ct_display)), Some(lungs), Some(input)) => Some(
            report::render_case(&CaseImages {
                ct_grid: &ct_grid,
                ct: &ct_display,
                lungs: &lungs,
                heat: heat_display.as_ref(),
                heat_cells: cam.as_ref().map(|c| c.size),
                preprocess: &prep.report,
                input: &input,
                input_shape: prep.shape,
                timings: Timings {
                    read_s,
                    preprocess_s: prep_s,
                    ensemble_s: infer_s,
                    heat_map_s: heat_s,
                },
            })
            .map_err(|e| reason(case, e))?,
        ),
        _ => None,
    };
    Ok(Graded {
        grade,
        members,
        spread,
        mask,
        heat,
        segmentation,
        lung_affected,
        figures,
    })
}

/// The share of the lung mask's voxels that the lesion map marks, in percent; `None` when the
/// two are not on one grid or the mask is empty.
fn percentage_affected(lesion: &volume::Volume, lungs: &volume::Volume) -> Option<f64> {
    if lesion.size != lungs.size {
        return None;
    }
    let (lung, affected) = lungs
        .data
        .iter()
        .zip(&lesion.data)
        .filter(|(&m, _)| m > 0.5)
        .fold((0usize, 0usize), |(n, a), (_, &l)| {
            (n + 1, a + usize::from(l > 0.5))
        });
    (lung > 0).then(|| 100.0 * affected as f64 / lung as f64)
}
