//! `ctgrade-eval simulate`: the whole leaderboard on one machine, through the `docker` command
//! line, doing what grand-challenge.org does with a submission:
//!
//! 1. the algorithm image runs once per case: in invoke mode (the image carries
//!    `LABEL org.grand-challenge.api-method=invoke`) one container is started, `/health` is polled
//!    and `POST /invoke` is called per case from a "tester" container on an internal network; in
//!    exec mode one container runs per case. `/input` (a read-only bind mount) is re-provisioned
//!    with the case as the socket `images/ct` plus `inputs.json`, `/output` is emptied;
//! 2. the successful jobs are listed in `predictions.json` in the platform's job shape, with
//!    their outputs under `<pk>/output/`;
//! 3. the evaluation image runs (invoke or exec, by its label) on them and the ground truth.
//!
//! Failed jobs are reported; the platform would not start an evaluation then, but the
//! simulation still evaluates the successful jobs, against the ground truth without the failed
//! cases' rows, so that the user sees a score (see [`SimulationReport::failed`]).
//! Containers and the network are removed at the end, also on error.

mod cases;
mod docker;
mod jobs;

pub use cases::*;
pub use docker::*;
pub use jobs::*;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::atomic::write_atomic;
use crate::case::match_key;
use crate::error::EvalError;
use crate::platform::{format_duration, format_time, ImageRef, Job, Socket, SocketValue};
use crate::predictions::{CO_RADS_SLUG, PROBABILITY_SLUG};
use crate::truth::{load_ground_truth, write_only_cases};

/// The label that makes the platform use the invoke API.
pub const API_METHOD_LABEL: &str = "org.grand-challenge.api-method";
/// The port the platform calls in invoke mode.
pub const INVOKE_PORT: u16 = 4743;
/// Case file extensions the simulation can provision (others are refused up front).
pub const CASE_EXTENSIONS: [&str; 3] = [".mha", ".nii.gz", ".nii"];

/// Why a simulation could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Reading the ground truth, writing a result file.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A file or folder of the simulation.
    #[error("cannot access {path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A `docker` command failed.
    #[error("`docker {command}` failed: {reason}")]
    Docker {
        /// The subcommand and its first arguments.
        command: String,
        /// The last non-empty stderr line, or why it could not run.
        reason: String,
    },
    /// The cases folder holds something the simulation cannot provision.
    #[error("{path}: {reason}")]
    Case {
        /// The offending entry.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Bad settings (empty folders, a non-empty output folder, a case without ground truth).
    #[error("{0}")]
    Usage(String),
    /// A container in invoke mode never answered 200 on `/health`, or exited.
    #[error("the {what} container never became healthy: {reason}")]
    Unhealthy {
        /// "algorithm" or "evaluation".
        what: &'static str,
        /// The last answer, or the container's last log line.
        reason: String,
    },
    /// The algorithm container exited, or stopped answering, in the middle of the cases.
    #[error("the algorithm container stopped during the job for {case}: {reason}")]
    AlgorithmStopped {
        /// The case being processed.
        case: String,
        /// Its last log line.
        reason: String,
    },
    /// Every job failed: there is nothing to evaluate.
    #[error("all {0} algorithm job(s) failed; nothing to evaluate (see failed-jobs.json)")]
    NothingSucceeded(usize),
    /// The evaluation container failed.
    #[error("the evaluation failed: {0}")]
    Evaluation(String),
    /// SIGINT or SIGTERM arrived; what was started has been removed.
    #[error("interrupted; the containers and the network were removed")]
    Interrupted,
}

type Result<T> = std::result::Result<T, SimulateError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimulateError + '_ {
    move |cause| SimulateError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// How the platform talks to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiMethod {
    /// An HTTP server: `/health`, then `POST /invoke` per job.
    Invoke,
    /// One container run per job.
    Exec,
}

impl ApiMethod {
    /// The method of an image's label value (`invoke`; anything else, or none, is exec).
    pub fn from_label(label: &str) -> Self {
        if label.trim() == "invoke" {
            ApiMethod::Invoke
        } else {
            ApiMethod::Exec
        }
    }
}

/// How long to wait for a container in invoke mode (the platform template's local test: 30
/// attempts 5 s apart, 10 s each).
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Attempts.
    pub tries: u32,
    /// Pause between attempts.
    pub interval: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            tries: 30,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The algorithm image.
    pub algorithm_image: String,
    /// The evaluation image.
    pub evaluation_image: String,
    /// An image with `curl` and `sleep`, run on the internal network to make the HTTP calls.
    pub tester_image: String,
    /// Folder of cases (`.mha`, `.nii.gz`, `.nii` files).
    pub cases: PathBuf,
    /// Ground-truth CSV (or a folder holding one), in a format the evaluator reads; it may hold
    /// more cases than the cases folder (only the rows of successful jobs are evaluated).
    pub ground_truth: PathBuf,
    /// Optional model tarball, extracted read-only to `/opt/ml/model`.
    pub model: Option<PathBuf>,
    /// Pass `--gpus all` to the algorithm container.
    pub gpus: bool,
    /// Memory limit of the containers (`docker --memory`, also the swap limit).
    pub memory: String,
    /// Results folder (created; must be empty).
    pub output: PathBuf,
    /// Time limit of one algorithm job (invoke call or exec run) and of the evaluation.
    pub job_timeout: Duration,
    /// Start-up wait in invoke mode.
    pub health: HealthPolicy,
}

/// A job that did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedJob {
    /// The job's id.
    pub pk: String,
    /// The case file name.
    pub case: String,
    /// What the platform would show: the last non-empty stderr line, or the 500 body.
    pub reason: String,
    /// How long the job ran.
    pub duration: String,
}

/// The sentence on failed jobs, in `failed-jobs.json` and on stderr.
pub const FAILED_JOBS_NOTE: &str = "On grand-challenge.org a submission with failed algorithm \
    jobs gets no evaluation (the platform does not start one); this simulation still evaluates \
    the successful jobs, against the ground-truth rows of their cases only, so that you see a \
    score. Fix the failures before submitting.";

/// The outcome of a simulation.
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// How the algorithm ran.
    pub algorithm_api: ApiMethod,
    /// How the evaluation ran.
    pub evaluation_api: ApiMethod,
    /// The successful jobs (as in `predictions.json`).
    pub jobs: Vec<Job>,
    /// The failed jobs (as in `failed-jobs.json`).
    pub failed: Vec<FailedJob>,
    /// `metrics.json` as written by the evaluation container.
    pub metrics: Value,
    /// The results folder.
    pub output: PathBuf,
}

/// Writes `jobs` as the platform's `predictions.json` (pretty, atomically).
pub fn write_predictions(path: &Path, jobs: &[Job]) -> Result<()> {
    let text = serde_json::to_string_pretty(jobs).map_err(|e| SimulateError::Io {
        path: path.to_path_buf(),
        cause: e.into(),
    })? + "\n";
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The headline aggregates of a `metrics.json`, one per line (AUC, QWK, sensitivity...).
pub fn summarize_metrics(metrics: &Value) -> Vec<String> {
    let a = &metrics["aggregates"];
    let num = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.4}"));
    let ci = |v: &Value| match v.as_array().map(Vec::as_slice) {
        Some([l, h]) => format!(" (95% CI {} to {})", num(l), num(h)),
        _ => String::new(),
    };
    let mut lines = vec![
        format!(
            "cases {}, positive {}, negative {}",
            a["n_cases"], a["n_positive"], a["n_negative"]
        ),
        format!("AUC {}{}", num(&a["auc"]), ci(&a["auc_95ci"])),
        format!(
            "QWK {}{} over {} case(s)",
            num(&a["qwk"]),
            ci(&a["qwk_95ci"]),
            a["qwk_n_cases"]
        ),
        format!(
            "sensitivity {}, specificity {} (at 0.5)",
            num(&a["sensitivity"]),
            num(&a["specificity"])
        ),
    ];
    // Keys of newer evaluators; an older evaluation image leaves them out.
    if a.get("brier").is_some() {
        lines.push(format!(
            "Brier {}{}, ECE {} (10 equal-width bins)",
            num(&a["brier"]),
            ci(&a["brier_95ci"]),
            num(&a["ece_uniform_10"])
        ));
    }
    let d = &a["runtime"]["duration"];
    if d.is_object() {
        lines.push(format!(
            "run time per job ({}): median {} s, 95th percentile {} s, maximum {} s",
            d["source"].as_str().unwrap_or("?"),
            num(&d["median_s"]),
            num(&d["p95_s"]),
            num(&d["max_s"])
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictions::{load_predictions, PredictionFormat};

    fn job(pk: &str, name: &str, probability: f64, co_rads: i64) -> Job {
        let outputs = output_sockets()
            .into_iter()
            .zip([serde_json::json!(probability), serde_json::json!(co_rads)])
            .enumerate()
            .map(|(k, (socket, value))| SocketValue {
                pk: 10 + k as u64,
                socket,
                value,
                file: None,
                image: None,
            })
            .collect();
        Job {
            pk: pk.into(),
            inputs: vec![ct_input(1, "img-1", name, CaseKind::Image(".mha"))],
            outputs,
            status: "Succeeded".into(),
            started_at: Some("2026-11-30T09:00:00.000000Z".into()),
            completed_at: Some("2026-11-30T09:00:05.250000Z".into()),
            exec_duration: None,
            invoke_duration: Some("00:00:05.250000".into()),
        }
    }

    #[test]
    fn predictions_json_has_the_platform_job_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.json");
        write_predictions(&path, &[job("job-a", "case_1.mha", 0.25, 2)]).unwrap();
        let doc: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let j = &doc[0];
        let mut keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "completed_at",
                "exec_duration",
                "inputs",
                "invoke_duration",
                "outputs",
                "pk",
                "started_at",
                "status"
            ]
        );
        assert_eq!(j["pk"], "job-a");
        assert_eq!(j["status"], "Succeeded");
        assert_eq!(j["started_at"], "2026-11-30T09:00:00.000000Z");
        assert_eq!(j["completed_at"], "2026-11-30T09:00:05.250000Z");
        assert!(j["exec_duration"].is_null());
        assert_eq!(j["invoke_duration"], "00:00:05.250000");
        let input = &j["inputs"][0];
        assert_eq!(j["inputs"].as_array().unwrap().len(), 1);
        assert_eq!(input["pk"], 1);
        assert_eq!(
            input["socket"],
            serde_json::json!({"slug": "ct-image", "kind": "Image", "super_kind": "Image",
                               "relative_path": "images/ct", "title": "CT Image"})
        );
        assert!(input.get("interface").is_none());
        assert!(input["value"].is_null() && input["file"].is_null());
        assert_eq!(
            input["image"],
            serde_json::json!({"pk": "img-1", "name": "case_1.mha"})
        );
        let outputs = j["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(
            outputs[0],
            serde_json::json!({"pk": 10, "socket": {"slug": "probability-covid-19", "kind": "Float",
                "super_kind": "Value", "relative_path": "probability-covid-19.json"},
                "value": 0.25, "file": null, "image": null})
        );
        assert_eq!(
            outputs[1],
            serde_json::json!({"pk": 11, "socket": {"slug": "co-rads-score", "kind": "Integer",
                "super_kind": "Value", "relative_path": "co-rads-score.json"},
                "value": 2, "file": null, "image": null})
        );
    }

    #[test]
    fn the_evaluator_reads_written_jobs_in_both_key_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.json");
        let jobs = [
            job("job-a", "case_1.mha", 0.25, 2),
            job("job-b", "Case 2.nii.gz", 0.75, 4),
        ];
        write_predictions(&path, &jobs).unwrap();
        let check = |path: &Path| {
            let set = load_predictions(path).unwrap();
            assert_eq!(set.format, PredictionFormat::Platform);
            let got: Vec<(String, f64, Option<u8>)> = set
                .predictions
                .iter()
                .map(|p| (p.case.clone(), p.probability, p.co_rads))
                .collect();
            assert_eq!(
                got,
                [
                    ("case_1".to_string(), 0.25, Some(2)),
                    ("Case 2".to_string(), 0.75, Some(4))
                ]
            );
        };
        check(&path);
        // The older spelling: the same jobs with "interface" for "socket".
        let old = fs::read_to_string(&path)
            .unwrap()
            .replace("\"socket\":", "\"interface\":");
        assert!(!old.contains("\"socket\""));
        let old_path = dir.path().join("old.json");
        fs::write(&old_path, old).unwrap();
        check(&old_path);
        // And the typed reader takes the old spelling back to the same jobs.
        let back: Vec<Job> = serde_json::from_str(&fs::read_to_string(&old_path).unwrap()).unwrap();
        assert_eq!(back, jobs);
    }

    #[test]
    fn outputs_are_validated_as_the_platform_does() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_outputs(dir.path(), 1).unwrap_err();
        assert_eq!(
            err,
            "Output file probability-covid-19.json was not produced"
        );
        fs::write(dir.path().join("probability-covid-19.json"), "0.5").unwrap();
        fs::write(dir.path().join("co-rads-score.json"), "3.5").unwrap();
        let err = read_outputs(dir.path(), 1).unwrap_err();
        assert!(
            err.contains("co-rads-score.json") && err.contains("integer"),
            "{err}"
        );
        fs::write(dir.path().join("co-rads-score.json"), "3").unwrap();
        let values = read_outputs(dir.path(), 7).unwrap();
        assert_eq!(values[0].value, serde_json::json!(0.5));
        assert_eq!(values[1].value, serde_json::json!(3));
        assert_eq!((values[0].pk, values[1].pk), (7, 8));
    }

    #[test]
    fn cases_folder_takes_images_and_names_what_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            list_cases(dir.path()),
            Err(SimulateError::Usage(_))
        ));
        for name in ["b.nii.gz", "a.mha", ".hidden", "c.NII"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let cases = list_cases(dir.path()).unwrap();
        let names: Vec<(&str, CaseKind)> =
            cases.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            names,
            [
                ("a.mha", CaseKind::Image(".mha")),
                ("b.nii.gz", CaseKind::Image(".nii.gz")),
                ("c.NII", CaseKind::Image(".nii"))
            ]
        );
        fs::write(dir.path().join("d.mhd"), b"x").unwrap();
        let err = list_cases(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("d.mhd") && err.contains("convert it to .mha"),
            "{err}"
        );
        fs::remove_file(dir.path().join("d.mhd")).unwrap();
        let series = dir.path().join("series");
        fs::create_dir(&series).unwrap();
        fs::write(series.join("notes.txt"), b"x").unwrap();
        let err = list_cases(dir.path()).unwrap_err().to_string();
        assert!(err.contains("series") && err.contains("DICOM"), "{err}");
        // A DICOM file: 128 bytes of preamble, then the marker.
        let mut dcm = vec![0u8; 128];
        dcm.extend_from_slice(b"DICM\x02\x00");
        fs::write(series.join("1.2.3"), &dcm).unwrap();
        let cases = list_cases(dir.path()).unwrap();
        assert_eq!(cases[3].name, "series");
        assert_eq!(cases[3].kind, CaseKind::DicomSeries);
        assert_eq!(
            ct_input(1, "u", "series", CaseKind::DicomSeries)
                .socket
                .kind,
            "DICOM Image Set"
        );
    }

    fn options(dir: &Path) -> SimulateOptions {
        SimulateOptions {
            algorithm_image: "no-such-image:never-pulled".into(),
            evaluation_image: "no-such-image:never-pulled".into(),
            tester_image: "no-such-image:never-pulled".into(),
            cases: dir.join("cases"),
            ground_truth: dir.join("truth.csv"),
            model: None,
            gpus: false,
            memory: "1g".into(),
            output: dir.join("out"),
            job_timeout: Duration::from_secs(1),
            health: HealthPolicy::default(),
        }
    }

    #[test]
    fn settings_are_refused_before_any_container_starts() {
        // Each error comes before docker is asked anything (the images do not exist).
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("cases")).unwrap();
        fs::write(dir.path().join("cases/patient_1.mha"), b"x").unwrap();
        fs::write(dir.path().join("cases/patient_2.mha"), b"x").unwrap();
        fs::write(
            dir.path().join("truth.csv"),
            "case,label\nPatient 1,1\nPatient 3,0\n",
        )
        .unwrap();
        let opts = options(dir.path());
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("patient_2.mha") && err.contains("no row in the ground truth"),
            "{err}"
        );
        fs::write(
            dir.path().join("truth.csv"),
            "case,label\npatient 1,1\npatient_2,0\n",
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("out/old")).unwrap();
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
        let opts = SimulateOptions {
            model: Some(dir.path().join("model.tar.gz")),
            ..opts
        };
        let err = simulate(&opts, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("model.tar.gz") && err.contains("no such file"),
            "{err}"
        );
    }

    #[test]
    fn label_values_select_the_api() {
        assert_eq!(ApiMethod::from_label("invoke"), ApiMethod::Invoke);
        assert_eq!(ApiMethod::from_label("invoke\n"), ApiMethod::Invoke);
        assert_eq!(ApiMethod::from_label("<no value>"), ApiMethod::Exec);
        assert_eq!(ApiMethod::from_label(""), ApiMethod::Exec);
    }

    #[test]
    fn metrics_summary_names_auc_and_qwk() {
        let m = serde_json::json!({"aggregates": {"n_cases": 5, "n_positive": 3, "n_negative": 2,
            "auc": 0.8333333, "auc_95ci": [0.5, 1.0], "qwk": 0.7, "qwk_95ci": null,
            "qwk_n_cases": 5, "sensitivity": 1.0, "specificity": 0.5}});
        let lines = summarize_metrics(&m);
        assert_eq!(lines[1], "AUC 0.8333 (95% CI 0.5000 to 1.0000)");
        assert_eq!(lines[2], "QWK 0.7000 over 5 case(s)");
        assert_eq!(lines.len(), 4);
        let m = serde_json::json!({"aggregates": {"brier": 0.125, "brier_95ci": [0.1, 0.15],
            "ece_uniform_10": 0.05, "runtime": {"duration": {"source": "invoke_duration",
            "median_s": 4.0, "p95_s": 5.5, "max_s": 6.0}}}});
        let lines = summarize_metrics(&m);
        assert_eq!(
            lines[4],
            "Brier 0.1250 (95% CI 0.1000 to 0.1500), ECE 0.0500 (10 equal-width bins)"
        );
        assert_eq!(
            lines[5],
            "run time per job (invoke_duration): median 4.0000 s, 95th percentile 5.5000 s, \
             maximum 6.0000 s"
        );
    }
}
