//! One case through the pipeline, as `ctgrade run` and `serve` grade it: the core steps (read,
//! check, segment, preprocess, predict, grade, lesion burden), each a function with its own
//! error, and apart from them the outputs that options ask for (lung mask, heat map, the
//! segmenters' labels, report figures).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;

use super::memory::{BYTES_PER_GRID_VOXEL, PROGRAM_BYTES};
use super::options::RunOptions;
use super::Case;
use crate::burden::{self, Burden};
use crate::ensemble::{self, Ensemble, EnsembleError};
use crate::grading::{self, Grade, GradingError};
use crate::heatmap::{self, Cam};
use crate::preprocess::resample::{self, Grid, Interpolation};
use crate::preprocess::{self, checks, PreprocessError, Preprocessed};
use crate::report::{self, CaseFigures, CaseImages, Timings};
use crate::segment::SegmentError;
use crate::volume::{self, Volume, VolumeError};

/// Why a case could not be graded. Each displays as one line naming the case's file.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The CT or the lesion map cannot be read.
    #[error(transparent)]
    Read(#[from] VolumeError),
    /// The CT cannot be graded as it is (checks, geometry, preprocessing). `context` holds the
    /// warnings that came before, which often explain the failure (no lungs in an image that
    /// is not in HU).
    #[error("{}: {error}{context}", path.display())]
    Input {
        /// The CT.
        path: PathBuf,
        /// The failure.
        error: Box<PreprocessError>,
        /// ` (warning: ...)`, or empty.
        context: String,
    },
    /// Resampling would make a grid larger than the memory budget allows.
    #[error("{}: resampling to {spacing_mm} mm would give a {size:?} grid ({voxels} voxels); its \
             lung mask would need about {} MB, more than the container's memory allows (at most \
             {max_voxels} voxels); the scan's geometry is implausible (spacing {ct_spacing:?} mm)",
             path.display(), *voxels as u64 * BYTES_PER_GRID_VOXEL / 1_000_000)]
    GridTooLarge {
        /// The CT.
        path: PathBuf,
        /// The ensemble's resampling spacing.
        spacing_mm: f64,
        /// The grid resampling would make.
        size: [usize; 3],
        /// Its voxel count.
        voxels: usize,
        /// The largest grid the budget allows.
        max_voxels: usize,
        /// The CT's own spacing.
        ct_spacing: [f64; 3],
    },
    /// The segmenters would need more memory than the case may use.
    #[error("{}: the ensemble's segmenters would need about {} MB for this scan ({voxels} voxels), \
             more than the container's memory allows ({} MB for a case)",
             path.display(), need_bytes >> 20, budget_bytes >> 20)]
    SegmenterMemory {
        /// The CT.
        path: PathBuf,
        /// The CT's voxel count.
        voxels: usize,
        /// The estimate, program included.
        need_bytes: u64,
        /// What a case may use.
        budget_bytes: u64,
    },
    /// A segmenter of the ensemble failed on the case.
    #[error("{}: {role} model: {error}", path.display())]
    Segment {
        /// The CT.
        path: PathBuf,
        /// `lesion` or `lobe`.
        role: &'static str,
        /// The failure.
        error: Box<SegmentError>,
    },
    /// The ensemble's networks failed.
    #[error("{}: {error}", path.display())]
    Predict {
        /// The CT.
        path: PathBuf,
        /// The failure.
        error: Box<EnsembleError>,
    },
    /// The members' outputs cannot be graded.
    #[error("{}: {error}", path.display())]
    Grade {
        /// The CT.
        path: PathBuf,
        /// The failure.
        error: GradingError,
    },
    /// An output an option asked for (heat map, report figures) cannot be made.
    #[error("{}: {what}: {error}", path.display())]
    Output {
        /// The CT.
        path: PathBuf,
        /// Which output.
        what: &'static str,
        /// The failure.
        error: String,
    },
    /// A result file cannot be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        error: String,
    },
}

/// Logs a line above the progress bar (or plainly when stderr is not a terminal).
pub(super) fn log(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What grading one case produced.
pub(super) struct Graded {
    /// Probability and CO-RADS.
    pub grade: Grade,
    /// Each member's probability.
    pub members: Vec<f64>,
    /// Their population standard deviation.
    pub spread: f64,
    /// Share of the lungs (and lobes) affected, when a lesion map was used.
    pub burden: Option<Burden>,
    /// The lung mask on the CT's grid, when `--lung-mask` asks for it.
    pub mask: Option<Volume<u8>>,
    /// The heat map on the CT's grid, when `--heat-map` asks for it.
    pub heat: Option<Volume>,
    /// The lesion model's segmentation on the CT's grid, when it ran and
    /// `--lesion-segmentation` asks for it.
    pub segmentation: Option<Volume>,
    /// The report's figures, when `--report` asks for them.
    pub figures: Option<CaseFigures>,
}

/// Reads, checks, segments, preprocesses, runs and grades one case. What looked wrong without
/// stopping the case goes to `warnings` (and the log). The optional outputs are made only when
/// `opts` asks for them.
pub(super) fn grade_case(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    device: &Device,
    bar: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<Graded, CaseError> {
    let label = match &case.upload_name {
        Some(upload) => format!("{} (uploaded as {upload})", case.name),
        None => case.name.clone(),
    };
    let t = Instant::now();
    let mut ct = volume::read_with_limits(&case.image, &opts.limits)?;
    let given_lesion = match &case.lesion {
        Some(path) => {
            let lesion = volume::read_with_limits(path, &opts.limits)?;
            // Checked here, so that a mis-shapen map fails before any segmenter runs.
            preprocess::check_lesion_grid(&ct, &lesion).map_err(|e| CaseError::Input {
                path: path.clone(),
                error: Box::new(e),
                context: String::new(),
            })?;
            Some(lesion)
        }
        None => None,
    };
    let read_s = t.elapsed().as_secs_f64();
    let grid = check(case, opts, ensemble, &mut ct, bar, warnings)?;
    check_segmenter_memory(case, opts, ensemble, &ct, given_lesion.is_some())?;
    let seg = segment(case, ensemble, &ct, given_lesion, bar)?;
    let ct_grid = Grid::of(&ct);
    // The report's pictures are drawn on a display grid; the CT is resampled onto it before
    // preprocessing takes it.
    let display = if opts.report {
        let g = report::display_grid(&grid);
        let v = resample::resample(&ct, &g, Interpolation::Linear, preprocess::PAD_HU)
            .map_err(|e| input_error(case, e, warnings))?;
        Some((g, v))
    } else {
        None
    };
    let t = Instant::now();
    // By value: the CT's voxels are freed once resampled; only the channels the members read.
    let mut prep = preprocess::preprocess_owned(
        ct,
        seg.lesion.as_ref(),
        &ensemble.manifest.input,
        ensemble.input_channels(),
    )
    .map_err(|e| input_error(case, e, warnings))?;
    let prep_s = t.elapsed().as_secs_f64();
    log_orientation(case, &prep, bar);
    let burden = seg.lesion.as_ref().and_then(|lesion| {
        let mut b = burden::lung_burden(lesion, &prep.lung_mask, prep.report.lung_components == 2)?;
        if let (Some(lobes), Some(model)) = (&seg.lobes, &ensemble.lobe_model) {
            burden::add_lobes(&mut b, lesion, lobes, &model.labels);
        }
        Some(b)
    });
    let lesion_display = match (&display, &seg.lesion) {
        (Some((g, _)), Some(lesion)) => Some(
            resample::resample(lesion, g, Interpolation::Nearest, 0.0)
                .map_err(|e| output_error(case, "report", e))?,
        ),
        _ => None,
    };
    drop((seg.lesion, seg.lobes));
    let lungs_display = match &display {
        Some((g, _)) => Some(
            resample::resample(
                &prep.lung_mask.map(f32::from),
                g,
                Interpolation::Nearest,
                0.0,
            )
            .map_err(|e| output_error(case, "report", e))?,
        ),
        None => None,
    };

    // The report shows the network input: keep it (it is small) before the tensor takes it.
    let kept_input = opts.report.then(|| prep.input.clone());
    let input = std::mem::take(&mut prep.input);
    let t = Instant::now();
    let predicted = predict(case, opts, ensemble, device, input, prep.shape, bar)?;
    let infer_s = t.elapsed().as_secs_f64();
    let head = ensemble.manifest.head;
    let grade_err = |error| CaseError::Grade {
        path: case.image.clone(),
        error,
    };
    let grade =
        grading::grade(head, &ensemble::mean_output(&predicted.outputs)).map_err(grade_err)?;
    let (members, spread) = grading::member_spread(head, &predicted.outputs).map_err(grade_err)?;

    // The outputs options ask for.
    let cam = predicted.cam;
    if cam
        .as_ref()
        .is_some_and(|c| c.data.iter().all(|&v| v == 0.0))
    {
        let w = "the heat map is zero everywhere: no region of the last block raises the score";
        log(bar, format!("{}: warning: {w}", case.name));
        warnings.push(w.to_string());
    }
    let t = Instant::now();
    let heat_err = |e| output_error(case, "heat map", e);
    let (heat, heat_display) = match &cam {
        Some(cam) => {
            let heat = heatmap::to_grid(cam, &prep.report, &ct_grid).map_err(heat_err)?;
            let shown = match &display {
                Some((g, _)) => Some(heatmap::to_grid(cam, &prep.report, g).map_err(heat_err)?),
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
            "{label}: read {read_s:.2} s, {}preprocess {prep_s:.2} s, ensemble {infer_s:.2} s{}",
            seg.seconds
                .map_or(String::new(), |s| format!("segmenters {s:.2} s, ")),
            heat_s.map_or(String::new(), |s| format!(", heat map {s:.2} s"))
        ),
    );
    let figures = match (display, lungs_display, kept_input) {
        (Some((_, ct_display)), Some(lungs), Some(input)) => Some(
            report::render_case(&CaseImages {
                ct_grid: &ct_grid,
                ct: &ct_display,
                lungs: &lungs,
                lesions: lesion_display.as_ref(),
                heat: heat_display.as_ref(),
                heat_cells: cam.as_ref().map(|c| c.size),
                preprocess: &prep.report,
                input: &input,
                input_shape: prep.shape,
                timings: Timings {
                    read_s,
                    segment_s: seg.seconds,
                    preprocess_s: prep_s,
                    ensemble_s: infer_s,
                    heat_map_s: heat_s,
                },
            })
            .map_err(|e| output_error(case, "report", e))?,
        ),
        _ => None,
    };
    Ok(Graded {
        grade,
        members,
        spread,
        burden,
        mask: opts.lung_mask.then_some(prep.lung_mask),
        heat,
        segmentation: opts.lesion_segmentation.then_some(seg.labels).flatten(),
        figures,
    })
}

fn input_error(case: &Case, error: PreprocessError, warnings: &[String]) -> CaseError {
    CaseError::Input {
        path: case.image.clone(),
        error: Box::new(error),
        context: if warnings.is_empty() {
            String::new()
        } else {
            format!(" (warning: {})", warnings.join("; "))
        },
    }
}

fn output_error(case: &Case, what: &'static str, error: impl std::fmt::Display) -> CaseError {
    CaseError::Output {
        path: case.image.clone(),
        what,
        error: error.to_string(),
    }
}

/// The CT's checks (warnings logged and kept), and the grid resampling will make, refused when
/// the memory budget cannot hold it.
fn check(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    ct: &mut Volume,
    bar: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<Grid, CaseError> {
    let check = checks::check_ct(ct).map_err(|e| input_error(case, e, warnings))?;
    for w in &check.warnings {
        log(bar, format!("{}: warning: {w}", case.name));
    }
    warnings.extend(check.warnings);
    let spacing_mm = ensemble.manifest.input.spacing_mm;
    let (_, grid, _) = preprocess::target_grid(&Grid::of(ct), spacing_mm)
        .map_err(|e| input_error(case, e, warnings))?;
    if grid.len() > opts.max_grid_voxels {
        return Err(CaseError::GridTooLarge {
            path: case.image.clone(),
            spacing_mm,
            size: grid.size,
            voxels: grid.len(),
            max_voxels: opts.max_grid_voxels,
            ct_spacing: ct.spacing,
        });
    }
    Ok(grid)
}

/// Refuses a case whose segmentation would not fit the memory a case may use: the CT, the
/// segmenters that will run (the lobe model only with a lesion map) one after the other, the
/// lesion labels and map kept meanwhile, and the program.
fn check_segmenter_memory(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    ct: &Volume,
    lesion_given: bool,
) -> Result<(), CaseError> {
    let Some(budget_bytes) = opts.case_bytes else {
        return Ok(());
    };
    let lesion = ensemble.lesion_model.as_ref().filter(|_| !lesion_given);
    let has_lesion_map = lesion_given || lesion.is_some();
    let lobes = ensemble.lobe_model.as_ref().filter(|_| has_lesion_map);
    if lesion.is_none() && lobes.is_none() {
        return Ok(());
    }
    let voxels = ct.data.len();
    let kept = if lesion.is_some() {
        8 * voxels as u64
    } else {
        0
    };
    let peak = lesion
        .map_or(0, |m| m.folder.peak_bytes(ct.size, ct.spacing))
        .max(lobes.map_or(0, |m| m.folder.peak_bytes(ct.size, ct.spacing) + kept));
    let need_bytes = 4 * voxels as u64 + peak + PROGRAM_BYTES;
    if need_bytes > budget_bytes {
        return Err(CaseError::SegmenterMemory {
            path: case.image.clone(),
            voxels,
            need_bytes,
            budget_bytes,
        });
    }
    Ok(())
}

/// What the segmenters gave for a case.
struct Segmented {
    /// The lesion map (0/1) on the CT's grid: the job's, or the lesion model's.
    lesion: Option<Volume>,
    /// The lesion model's labels, when it ran.
    labels: Option<Volume>,
    /// The lobe model's labels, when the ensemble has one and there is a lesion map.
    lobes: Option<Volume>,
    /// Time spent in the segmenters, when any ran.
    seconds: Option<f64>,
}

/// The lesion channel and the lobes. The job's lesion map when it gives one, else the
/// ensemble's lesion model on the CT (after the checks, so a bad scan fails before a segmenter
/// runs); the lobe model only where there is a lesion map to measure.
fn segment(
    case: &Case,
    ensemble: &Ensemble,
    ct: &Volume,
    given: Option<Volume>,
    bar: &ProgressBar,
) -> Result<Segmented, CaseError> {
    let seg_err = |role| {
        move |error| CaseError::Segment {
            path: case.image.clone(),
            role,
            error: Box::new(error),
        }
    };
    let t = Instant::now();
    let mut ran = false;
    let (lesion, labels) = match (given, &ensemble.lesion_model) {
        (Some(given), Some(_)) => {
            log(
                bar,
                format!(
                    "{}: lesion map given; the ensemble's lesion model is not run",
                    case.name
                ),
            );
            (Some(given), None)
        }
        (None, Some(model)) => {
            let labels = model.segment(ct).map_err(seg_err("lesion"))?;
            ran = true;
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
            (Some(map), Some(labels))
        }
        (given, None) => (given, None),
    };
    let lobes = match (&lesion, &ensemble.lobe_model) {
        (Some(_), Some(model)) => {
            ran = true;
            Some(model.segment(ct).map_err(seg_err("lobe"))?)
        }
        _ => None,
    };
    Ok(Segmented {
        lesion,
        labels,
        lobes,
        seconds: ran.then(|| t.elapsed().as_secs_f64()),
    })
}

fn log_orientation(case: &Case, prep: &Preprocessed, bar: &ProgressBar) {
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
}

/// The members' outputs, and the Grad-CAM map when the heat map is asked for.
struct Predicted {
    outputs: Vec<Vec<f64>>,
    cam: Option<Cam>,
}

fn predict(
    case: &Case,
    opts: &RunOptions,
    ensemble: &Ensemble,
    device: &Device,
    input: Vec<f32>,
    shape: [usize; 4],
    bar: &ProgressBar,
) -> Result<Predicted, CaseError> {
    let predict_err = |error| CaseError::Predict {
        path: case.image.clone(),
        error: Box::new(error),
    };
    let shape: Vec<usize> = std::iter::once(1).chain(shape).collect();
    let input = Tensor::from_vec(input, shape, &Device::Cpu).map_err(|e| {
        predict_err(EnsembleError::Compute {
            path: ensemble.dir.clone(),
            error: e,
        })
    })?;
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
            .map_err(predict_err)?;
        (outputs, Some(cam))
    } else {
        let outputs = ensemble
            .predict_members(&input, device, opts.precision, progress)
            .map_err(predict_err)?;
        (outputs, None)
    };
    Ok(Predicted { outputs, cam })
}
