//! `ctgrade-eval`: leaderboard evaluation for the COVID-19 CT classification challenge.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use ctgrade_eval::atomic::write_atomic;
use ctgrade_eval::calibration::N_BINS;
use ctgrade_eval::evaluate::{other_curves, TargetPoint};
use ctgrade_eval::figures::{
    decision_svg, reliability_svg, write_decision_curve, write_reliability, DecisionSeries,
    ReliabilitySeries,
};
use ctgrade_eval::plot::{render_svg, write_plot, RocSeries};
use ctgrade_eval::report::{render_html, ReportFigures};
use ctgrade_eval::simulate::{summarize_metrics, HealthPolicy, SimulateOptions, FAILED_JOBS_NOTE};
use ctgrade_eval::strata::{load_strata_table, strata_by_column};
use ctgrade_eval::{evaluate, load_ground_truth, load_predictions, EvalOptions, Report};

/// Ground-truth folder of the platform (the phase's ground-truth tarball is extracted here).
const GROUND_TRUTH_DIR: &str = "/opt/ml/input/data/ground_truth/";
/// Older evaluation templates baked the ground truth into the image here.
const LEGACY_GROUND_TRUTH_DIR: &str = "/opt/app/ground-truth/";

/// Evaluate ctgrade predictions against iCTCF (or generic) ground truth: AUC, ROC, QWK,
/// bootstrap confidence intervals and paired tests. Writes metrics.json.
///
/// Without a subcommand it evaluates once and exits (the platform's "exec" mode); `serve` runs
/// the same evaluation on each POST /invoke (the "invoke" mode); `simulate` runs an algorithm
/// image and an evaluation image over a folder of cases as the leaderboard would.
#[derive(Parser, Debug)]
#[command(
    name = "ctgrade-eval",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the platform's invoke API: GET /health, and POST /invoke runs the evaluation with
    /// the options below (201 when metrics.json is written, 500 with the reason otherwise).
    Serve(ServeArgs),
    /// Run the whole leaderboard locally through docker: the algorithm image on each case (invoke
    /// or exec mode, by its label), then the evaluation image on the successful jobs. Exit
    /// status 0 when every job succeeded and the evaluation ran, 2 when some jobs failed (the
    /// successful ones are still evaluated), 1 on any other error.
    Simulate(SimulateArgs),
}

/// Options of `simulate`.
#[derive(Args, Debug)]
struct SimulateArgs {
    /// The algorithm image (invoke mode if it carries LABEL org.grand-challenge.api-method=invoke).
    #[arg(long, value_name = "IMAGE")]
    algorithm_image: String,
    /// Folder of cases: .mha, .nii.gz or .nii files, one job each.
    #[arg(long, value_name = "DIR")]
    cases: PathBuf,
    /// Ground truth of the cases (a CSV the evaluator reads, or a folder holding one).
    #[arg(long, value_name = "CSV")]
    ground_truth: PathBuf,
    /// The evaluation image (invoke mode if labelled, as above).
    #[arg(long, value_name = "IMAGE")]
    evaluation_image: String,
    /// Model tarball, extracted read-only to /opt/ml/model as the platform does.
    #[arg(long, value_name = "TAR_GZ")]
    model: Option<PathBuf>,
    /// Give the algorithm container the GPUs (docker --gpus all).
    #[arg(long)]
    gpus: bool,
    /// Memory limit of the containers (and swap limit, so no swap), as docker --memory.
    #[arg(long, default_value = "8g")]
    memory: String,
    /// Results folder (created; must be empty): predictions.json, <pk>/output/, metrics.json,
    /// failed-jobs.json, ground-truth.csv (the rows evaluated).
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
    /// Image with curl, run on the internal network to call /health and /invoke.
    #[arg(long, value_name = "IMAGE", default_value = "ctgrade-base:bookworm")]
    tester_image: String,
    /// Time limit of one algorithm job and of the evaluation, in seconds (the platform's
    /// default job limit is one hour).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    job_timeout: u64,
}

/// Options of `serve`.
#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    listen: gc_invoke::Listen,
    #[command(flatten)]
    eval: EvalArgs,
}

/// The evaluation's options (plain `ctgrade-eval` and `serve`).
#[derive(Args, Debug, Clone)]
struct EvalArgs {
    /// Predictions: the platform's predictions.json, a `ctgrade run` output folder
    /// (summary.json or <case>/probability-covid-19.json), or a CSV case,probability[,co_rads].
    #[arg(long, short, default_value = "/input/predictions.json")]
    predictions: PathBuf,
    /// Ground truth: a CSV file (iCTCF patient table, or case,label[,co_rads][,patient]
    /// [,slice_thickness_mm]) or a folder holding one. Default: /opt/ml/input/data/ground_truth/
    /// (or /opt/app/ground-truth/ when only that exists).
    #[arg(long, short)]
    ground_truth: Option<PathBuf>,
    /// Where to write the metrics.
    #[arg(long, short, default_value = "/output/metrics.json")]
    output: PathBuf,
    /// Bootstrap iterations for confidence intervals and paired tests (0: none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap's random generator.
    #[arg(long, default_value_t = 2021)]
    seed: u64,
    /// Other predictions (same formats) to compare with: paired bootstrap and DeLong tests.
    #[arg(long, value_name = "OTHER_PREDICTIONS")]
    compare: Option<PathBuf>,
    /// Draw the ROC curve to this .svg or .png file (may be repeated).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,
    /// Draw the reliability diagram (10 equal-width bins, each bin's case count shown) to this
    /// .svg or .png file (may be repeated).
    #[arg(long, value_name = "FILE")]
    plot_reliability: Vec<PathBuf>,
    /// Draw the decision curve (net benefit by threshold probability) to this .svg or .png file
    /// (may be repeated).
    #[arg(long, value_name = "FILE")]
    plot_decision_curve: Vec<PathBuf>,
    /// List and skip predictions that match no ground-truth case instead of failing.
    #[arg(long)]
    ignore_extra_predictions: bool,
    /// Strata by any column: a CSV `case,<column>,...` (site, vendor, sex, age band...); AUC
    /// and QWK per value with intervals, and a test of the AUC difference between values.
    #[arg(long, value_name = "FILE.csv")]
    strata: Option<PathBuf>,
    /// Write a self-contained HTML report (numbers with intervals, ROC, reliability diagram,
    /// decision curve, strata, slowest and failed jobs) to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

fn ground_truth_path(cli: &EvalArgs) -> PathBuf {
    if let Some(p) = &cli.ground_truth {
        return p.clone();
    }
    let platform = Path::new(GROUND_TRUTH_DIR);
    let legacy = Path::new(LEGACY_GROUND_TRUTH_DIR);
    if !platform.exists() && legacy.exists() {
        legacy.to_path_buf()
    } else {
        platform.to_path_buf()
    }
}

/// A short name for a prediction source in the plot legend.
fn source_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == "predictions" {
        return stem;
    }
    if stem == "summary" || path.is_dir() {
        let dir = if path.is_dir() {
            Some(path)
        } else {
            path.parent()
        };
        if let Some(name) = dir.and_then(Path::file_name) {
            return name.to_string_lossy().into_owned();
        }
    }
    stem
}

fn fmt_ci(ci: Option<[f64; 2]>) -> String {
    ci.map_or(String::new(), |[l, h]| {
        format!(" (95% CI {l:.3} to {h:.3})")
    })
}

/// Shorter interval text for the plot legend (AUC bounds are never negative).
fn legend_ci(ci: Option<[f64; 2]>) -> String {
    ci.map_or(String::new(), |[l, h]| format!(" (95% CI {l:.3}-{h:.3})"))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

/// A p-value for the summary: a bootstrap p of 0 only says "below 1/N".
fn fmt_p(p: Option<f64>, iterations: Option<usize>) -> String {
    match (p, iterations) {
        (Some(p), Some(n)) if p == 0.0 && n > 0 => format!("< {}", 1.0 / n as f64),
        (Some(p), _) if p > 0.0 && p < 0.001 => format!("{p:.2e}"),
        (p, _) => fmt_opt(p),
    }
}

/// "0.812 (95% CI ...)" of a sensitivity or specificity at a target.
fn fmt_target(t: &TargetPoint) -> String {
    format!("{:.3}{}", t.value, fmt_ci(t.value_95ci))
}

fn summary(report: &Report) -> String {
    let a = &report.aggregates;
    let m = &a.metrics;
    let mut lines = vec![format!(
        "{} cases ({} positive, {} negative; {} excluded), {} patients",
        m.n_cases, m.n_positive, m.n_negative, a.n_excluded, m.n_patients
    )];
    lines.push(format!("AUC {:.3}{}", m.auc, fmt_ci(m.auc_95ci)));
    if let Some(q) = m.qwk {
        lines.push(format!(
            "QWK {q:.3}{} over {} cases",
            fmt_ci(m.qwk_95ci),
            m.qwk_n_cases
        ));
    }
    lines.push(format!(
        "at 0.5: sensitivity {}, specificity {}; Youden point {}: sensitivity {}, specificity {}",
        fmt_opt(m.sensitivity),
        fmt_opt(m.specificity),
        m.youden
            .point
            .threshold
            .map_or("inf".into(), |t| format!("{t:.4}")),
        fmt_opt(m.youden.point.sensitivity),
        fmt_opt(m.youden.point.specificity),
    ));
    lines.push(format!(
        "Brier {:.3}{}; ECE {:.3} (10 equal-width bins), {:.3} (10 equal-count bins); \
         calibration intercept {}, slope {}",
        m.brier,
        fmt_ci(m.brier_95ci),
        m.ece_uniform_10,
        m.ece_quantile_10,
        fmt_opt(m.calibration_intercept),
        fmt_opt(m.calibration_slope),
    ));
    lines.push(format!(
        "sensitivity at specificity 0.90: {}, 0.95: {}; specificity at sensitivity 0.90: {}, \
         0.95: {}",
        fmt_target(&m.sensitivity_at_specificity_0_90),
        fmt_target(&m.sensitivity_at_specificity_0_95),
        fmt_target(&m.specificity_at_sensitivity_0_90),
        fmt_target(&m.specificity_at_sensitivity_0_95),
    ));
    if let Some(pv) = &m.predictive_values_co_rads {
        let cells: Vec<String> = pv
            .iter()
            .map(|p| {
                format!(
                    "CO-RADS >= {}: PPV {}, NPV {}",
                    p.cutoff,
                    fmt_opt(p.ppv),
                    fmt_opt(p.npv)
                )
            })
            .collect();
        lines.push(cells.join("; "));
    }
    if let Some(r) = &a.runtime {
        let stats = |what: &str, d: &ctgrade_eval::runtime::RuntimeStats| {
            format!(
                "{what} per job ({}, {} of {} jobs): median {:.1} s, 95th percentile {:.1} s, \
                 maximum {:.1} s",
                d.source, d.n_jobs, r.n_jobs, d.median_s, d.p95_s, d.max_s
            )
        };
        lines.push(match &r.duration {
            Some(d) => stats("run time", d),
            None => format!(
                "run time per job: not available (no job of {} has exec_duration or \
                 invoke_duration)",
                r.n_jobs
            ),
        });
        if let Some(w) = &r.wall {
            lines.push(stats("wall time", w));
        }
    }
    if let Some(c) = &a.compare {
        lines.push(format!(
            "vs {}: Brier {:.3}, difference {:+.3}{}, bootstrap p {}",
            c.other,
            c.brier_other,
            c.brier_difference,
            fmt_ci(c.brier_difference_95ci),
            fmt_p(c.brier_p_value, m.bootstrap.as_ref().map(|b| b.iterations)),
        ));
        lines.push(format!(
            "vs {}: AUC {:.3}, difference {:+.3}{}, bootstrap p {}, DeLong p {}",
            c.other,
            c.auc_other,
            c.auc_difference,
            fmt_ci(c.auc_difference_95ci),
            fmt_p(c.auc_p_value, m.bootstrap.as_ref().map(|b| b.iterations)),
            fmt_p(c.delong.map(|d| d.p_value), None),
        ));
    }
    lines.join("\n")
}

fn run(cli: &EvalArgs) -> Result<()> {
    let truth_path = ground_truth_path(cli);
    let truth = load_ground_truth(&truth_path)?;
    let preds = load_predictions(&cli.predictions)?;
    let other = cli.compare.as_deref().map(load_predictions).transpose()?;
    for f in &preds.failed {
        eprintln!("warning: no prediction from {}: {}", f.origin, f.reason);
    }
    if !preds.has_co_rads() {
        eprintln!("note: the predictions carry no CO-RADS scores; QWK is not computed");
    }
    let opts = EvalOptions {
        bootstrap: cli.bootstrap,
        seed: cli.seed,
        ignore_extra_predictions: cli.ignore_extra_predictions,
        ..EvalOptions::default()
    };
    let mut report = evaluate(&truth, &preds, other.as_ref(), &opts)?;
    if let Some(path) = &cli.strata {
        // A bad strata file costs its table, not the evaluation.
        match load_strata_table(path).and_then(|t| strata_by_column(&t, &truth, &preds, &opts)) {
            Ok(s) => {
                for w in &s.warnings {
                    eprintln!("warning: strata: {w}");
                }
                report.aggregates.strata_by_column = Some(s);
            }
            Err(e) => eprintln!("warning: strata: {e}; no strata table"),
        }
    }
    for case in &report.aggregates.ignored_predictions {
        eprintln!("warning: prediction for '{case}' matches no ground-truth case; skipped");
    }
    for p in report.aggregates.runtime.iter().flat_map(|r| &r.problems) {
        eprintln!("warning: run time: {p}");
    }

    let json = serde_json::to_string_pretty(&report)? + "\n";
    write_atomic(&cli.output, json.as_bytes())?;

    let want_report = cli.report.is_some();
    let any_plot = want_report
        || !(cli.plot.is_empty()
            && cli.plot_reliability.is_empty()
            && cli.plot_decision_curve.is_empty());
    // The other predictions' curves, computed once for the plots and the report.
    let other_curves = match (&report.aggregates.compare, &other) {
        (Some(_), Some(o)) if any_plot => Some((o, other_curves(&truth, o, &opts)?)),
        _ => None,
    };
    let m = &report.aggregates.metrics;
    let counts_text = format!(
        "n = {} ({} positive, {} negative)",
        m.n_cases, m.n_positive, m.n_negative
    );
    let mut roc_series = vec![RocSeries {
        label: format!(
            "{}: AUC {:.3}{}",
            source_name(&cli.predictions),
            m.auc,
            legend_ci(m.auc_95ci)
        ),
        fpr: m.roc.fpr.clone(),
        tpr: m.roc.tpr.clone(),
    }];
    let mut reliability_series = vec![ReliabilitySeries {
        label: format!(
            "{}: Brier {:.3}, ECE {:.3}",
            source_name(&cli.predictions),
            m.brier,
            m.ece_uniform_10
        ),
        curve: m.calibration_curve_uniform_10.clone(),
    }];
    let mut decision_series = vec![DecisionSeries {
        label: source_name(&cli.predictions),
        curve: m.decision_curve.clone(),
    }];
    if let (Some(c), Some((o, curves))) = (&report.aggregates.compare, &other_curves) {
        roc_series.push(RocSeries {
            label: format!(
                "{}: AUC {:.3}{}",
                source_name(&o.source),
                c.auc_other,
                legend_ci(c.auc_other_95ci)
            ),
            fpr: curves.roc.fpr.clone(),
            tpr: curves.roc.tpr.clone(),
        });
        reliability_series.push(ReliabilitySeries {
            label: format!(
                "{}: Brier {:.3}, ECE {:.3}",
                source_name(&o.source),
                c.brier_other,
                curves.reliability.ece
            ),
            curve: curves.reliability.clone(),
        });
        decision_series.push(DecisionSeries {
            label: source_name(&o.source),
            curve: curves.decision.clone(),
        });
    }
    let roc_title = format!("ROC, {counts_text}");
    let reliability_title = format!("Reliability, {counts_text}, {N_BINS} equal-width bins");
    let decision_title = format!("Decision curve, {counts_text}");
    for p in &cli.plot {
        write_plot(p, &roc_title, &roc_series)?;
        println!("wrote {}", p.display());
    }
    for p in &cli.plot_reliability {
        write_reliability(p, &reliability_title, &reliability_series)?;
        println!("wrote {}", p.display());
    }
    for p in &cli.plot_decision_curve {
        write_decision_curve(p, &decision_title, &decision_series)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &cli.report {
        let figures = ReportFigures {
            roc_svg: render_svg(&roc_title, &roc_series),
            reliability_svg: reliability_svg(&reliability_title, &reliability_series),
            decision_svg: decision_svg(&decision_title, &decision_series),
        };
        let title = format!("ctgrade-eval: {}", source_name(&cli.predictions));
        let html = render_html(&title, &report, &figures, &preds.timings);
        write_atomic(p, html.as_bytes())?;
        println!("wrote {}", p.display());
    }
    println!("{}", summary(&report));
    println!("wrote {}", cli.output.display());
    Ok(())
}

/// Checks what can be checked before any input exists (serve's start-up): the plot formats and
/// that the output names a file.
fn check_options(cli: &EvalArgs) -> Result<()> {
    if cli.output.file_name().is_none() {
        bail!("--output {} names no file", cli.output.display());
    }
    for (option, p) in cli
        .plot
        .iter()
        .map(|p| ("--plot", p))
        .chain(
            cli.plot_reliability
                .iter()
                .map(|p| ("--plot-reliability", p)),
        )
        .chain(
            cli.plot_decision_curve
                .iter()
                .map(|p| ("--plot-decision-curve", p)),
        )
    {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            bail!(
                "{option} {}: the file name must end in .svg or .png",
                p.display()
            );
        }
    }
    Ok(())
}

/// `serve`: the evaluation behind the platform's invoke API.
fn serve(args: ServeArgs) -> Result<()> {
    let listener = args.listen.bind()?;
    let eval = args.eval;
    gc_invoke::serve(listener, "ctgrade-eval", move || {
        check_options(&eval).map_err(|e| format!("{e:#}"))?;
        Ok(move || {
            // The platform hands each call an empty /output; when run by hand, a metrics.json
            // left by an earlier call must not pass for this call's result if this one fails.
            match std::fs::remove_file(&eval.output) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "cannot remove the old {}: {e}",
                        eval.output.display()
                    ))
                }
            }
            run(&eval).map_err(|e| format!("ctgrade-eval: error: {e:#}"))
        })
    })?;
    Ok(())
}

/// `simulate`: prints progress and the aggregates; `Ok(false)` when some jobs failed.
fn simulate(args: SimulateArgs) -> Result<bool> {
    let opts = SimulateOptions {
        algorithm_image: args.algorithm_image,
        evaluation_image: args.evaluation_image,
        tester_image: args.tester_image,
        cases: args.cases,
        ground_truth: args.ground_truth,
        model: args.model,
        gpus: args.gpus,
        memory: args.memory,
        output: args.output,
        job_timeout: Duration::from_secs(args.job_timeout),
        health: HealthPolicy::default(),
    };
    let report = ctgrade_eval::simulate::simulate(&opts, &mut |line| println!("simulate: {line}"))?;
    println!(
        "{} job(s) succeeded, {} failed; evaluation in {:?} mode",
        report.jobs.len(),
        report.failed.len(),
        report.evaluation_api
    );
    for line in summarize_metrics(&report.metrics) {
        println!("{line}");
    }
    println!("wrote {}", report.output.join("metrics.json").display());
    if report.failed.is_empty() {
        return Ok(true);
    }
    for f in &report.failed {
        eprintln!("failed job {} ({}): {}", f.pk, f.case, f.reason);
    }
    eprintln!("{FAILED_JOBS_NOTE}");
    eprintln!(
        "ctgrade-eval simulate: {} of {} job(s) failed (listed in {}); the platform would not \
         evaluate this submission",
        report.failed.len(),
        report.failed.len() + report.jobs.len(),
        report.output.join("failed-jobs.json").display()
    );
    Ok(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.eval).map(|()| ExitCode::SUCCESS),
        Some(Command::Serve(args)) => serve(args).map(|()| ExitCode::SUCCESS),
        Some(Command::Simulate(args)) => simulate(args).map(|all_succeeded| {
            if all_succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The platform shows the last stderr line: make it one sentence with the cause.
            eprintln!("ctgrade-eval: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
