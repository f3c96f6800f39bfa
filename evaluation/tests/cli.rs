//! End-to-end runs of the `ctgrade-eval` binary: the platform's input format, `ctgrade run`
//! folders, plots, and every input error the evaluator must report by name.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn last_err_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .args(args)
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
        _ => a == b,
    }
}

/// [`common::assert_subset`] at 1e-9, the calibration intercept and slope (statsmodels' fit)
/// at 1e-6.
fn assert_subset(what: &str, got: &Value, expected: &Value) {
    common::assert_subset(what, got, expected, &|what| {
        if what.contains("calibration_") && !what.contains("curve") {
            1e-6
        } else {
            1e-9
        }
    });
}

/// The platform fixture's metrics (bootstrap 200, seed 11) from `file` in its input folder equal
/// the scikit-learn goldens.
fn check_platform_fixture(file: &str) {
    let fx = fixtures().join("platform");
    let expected: Value =
        serde_json::from_str(&fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let metrics = tmp.path().join("out/metrics.json");
    let (svg, png) = (tmp.path().join("roc.svg"), tmp.path().join("plots/roc.png"));
    let (rel_svg, rel_png) = (tmp.path().join("rel.svg"), tmp.path().join("rel.png"));
    let (dca_svg, dca_png) = (tmp.path().join("dca.svg"), tmp.path().join("dca.png"));
    let r = run(&[
        "--predictions",
        s(&fx.join("input").join(file)),
        "--ground-truth",
        s(&fx.join("ground_truth")),
        "--output",
        s(&metrics),
        "--bootstrap",
        "200",
        "--seed",
        "11",
        "--plot",
        s(&svg),
        "--plot",
        s(&png),
        "--plot-reliability",
        s(&rel_svg),
        "--plot-reliability",
        s(&rel_png),
        "--plot-decision-curve",
        s(&dca_svg),
        "--plot-decision-curve",
        s(&dca_png),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("AUC "), "{}", r.stdout);
    assert!(r.stdout.contains("Brier "), "{}", r.stdout);
    assert!(
        r.stdout.contains("sensitivity at specificity 0.90: "),
        "{}",
        r.stdout
    );
    let m: Value = serde_json::from_str(&fs::read_to_string(&metrics).unwrap()).unwrap();
    let (a, e) = (&m["aggregates"], &expected["all"]);
    for k in [
        "n_cases",
        "n_positive",
        "n_negative",
        "auc",
        "sensitivity",
        "specificity",
        "qwk",
    ] {
        assert!(close(&a[k], &e[k]), "{k}: {} vs {}", a[k], e[k]);
    }
    for k in ["auc_95ci", "qwk_95ci"] {
        match (a[k].as_array(), e[k].as_array()) {
            (Some(g), Some(x)) => assert!(close(&g[0], &x[0]) && close(&g[1], &x[1]), "{k}"),
            (g, x) => assert_eq!(g.is_none(), x.is_none(), "{k}"),
        }
    }
    for k in ["fpr", "tpr", "thresholds"] {
        let (g, x) = (
            a["roc"][k].as_array().unwrap(),
            e["roc"][k].as_array().unwrap(),
        );
        assert_eq!(g.len(), x.len());
        assert!(g.iter().zip(x).all(|(g, x)| close(g, x)), "roc {k}");
    }
    assert!(close(&a["youden"]["threshold"], &e["youden"]["threshold"]));
    assert_eq!(a["at_threshold_0_5"]["tp"], e["at_threshold_0_5"]["tp"]);
    assert_eq!(a["co_rads_by_label"]["matrix"], e["co_rads_by_label"]);
    // Calibration and operating points against scikit-learn / statsmodels.
    for k in [
        "brier",
        "brier_95ci",
        "ece_uniform_10",
        "ece_quantile_10",
        "calibration_intercept",
        "calibration_slope",
        "calibration_curve_uniform_10",
        "calibration_curve_quantile_10",
        "sensitivity_at_specificity_0_90",
        "sensitivity_at_specificity_0_95",
        "specificity_at_sensitivity_0_90",
        "specificity_at_sensitivity_0_95",
        "youden_threshold_95ci",
        "predictive_values_co_rads",
        "decision_curve",
    ] {
        assert!(e.get(k).is_some(), "fixture lacks {k}");
        assert_subset(k, &a[k], &e[k]);
    }
    // The fixture's jobs have started_at and completed_at (3 minutes each) but no durations:
    // the run time is reported missing, the evaluation still completes.
    let rt = &a["runtime"];
    assert_eq!(rt["n_jobs"], 15);
    assert!(rt["duration"].is_null());
    assert_eq!(rt["wall"]["median_s"], 180.0);
    assert!(rt["problems"][0]
        .as_str()
        .unwrap()
        .starts_with("15 of 15 job(s) have no readable exec_duration or invoke_duration"));
    assert!(r.stderr.contains("warning: run time: 15 of 15 job(s)"));
    assert!(r.stdout.contains("run time per job: not available"));
    assert_eq!(a["n_excluded"], expected["n_excluded"]);
    assert_eq!(a["excluded"], expected["excluded"]);
    assert_eq!(a["bootstrap"]["unit"], "patient");
    assert_eq!(a["ground_truth"]["format"], "ictcf");
    assert_eq!(a["predictions"]["format"], "platform");
    // Case names come from the ground truth; image "patient_4.mha" matched "Patient 4".
    let case = &m["case"];
    assert_eq!(case["Patient 4"]["probability"], 0.5);
    assert_eq!(case["Patient 4"]["label"], 1);
    assert_eq!(case["Patient 12"]["excluded"], "Suspected");
    assert!(case["Patient 12"]["probability"].is_number());
    assert!(case["Patient 13"]["probability"].is_null());
    assert_eq!(case.as_object().unwrap().len(), 16);

    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<polyline") && svg_text.contains("AUC"));
    let png_bytes = fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    let rel = fs::read_to_string(&rel_svg).unwrap();
    assert!(rel.contains("Perfectly calibrated") && rel.contains("Brier"));
    let dca = fs::read_to_string(&dca_svg).unwrap();
    assert!(dca.contains("Treat all") && dca.contains("Net benefit"));
    for p in [&rel_png, &dca_png] {
        assert_eq!(&fs::read(p).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    }
}

#[test]
fn platform_predictions_json_with_ictcf_truth() {
    // Today's shape: socket values keyed "socket".
    check_platform_fixture("predictions.json");
}

#[test]
fn platform_predictions_json_in_the_older_interface_shape() {
    // The same jobs keyed "interface", as older platform versions wrote them.
    check_platform_fixture("predictions-interface.json");
}

#[test]
fn comparison_and_strata_through_the_binary() {
    let fx = fixtures().join("cases/multiscan");
    let tmp = tempfile::tempdir().unwrap();
    let metrics = tmp.path().join("metrics.json");
    let r = run(&[
        "-p",
        s(&fx.join("predictions.csv")),
        "-g",
        s(&fx.join("ground_truth.csv")),
        "-o",
        s(&metrics),
        "--bootstrap",
        "50",
        "--compare",
        s(&fx.join("other.csv")),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("DeLong p"), "{}", r.stdout);
    let m: Value = serde_json::from_str(&fs::read_to_string(&metrics).unwrap()).unwrap();
    let a = &m["aggregates"];
    assert!(a["compare"]["delong"]["p_value"].is_number());
    assert!(a["compare"]["auc_p_value"].is_number());
    assert!(a["strata"]["slice_thickness_le_1_5mm"]["auc"].is_number());
    assert!(a["strata"]["slice_thickness_gt_1_5mm"]["auc_95ci"].is_array());
    assert_eq!(a["strata"]["n_unknown_slice_thickness"], 1);
    assert!(a["co_rads_confusion"]["matrix"].is_array());
    assert_eq!(a["bootstrap"]["iterations"], 50);
}

/// Writes a small generic ground truth and returns its path.
fn write_truth(dir: &Path, rows: &str) -> PathBuf {
    let p = dir.join("truth.csv");
    fs::write(&p, format!("case,label,co_rads\n{rows}")).unwrap();
    p
}

const TRUTH: &str = "a,1,5\nb,0,1\nc,1,4\nd,0,2\n";

fn eval_csv(dir: &Path, truth: &str, preds: &str, extra: &[&str]) -> Run {
    let t = write_truth(dir, truth);
    let p = dir.join("preds.csv");
    fs::write(&p, preds).unwrap();
    let out = dir.join("metrics.json");
    let mut args = vec!["-p", s(&p), "-g", s(&t), "-o", s(&out), "--bootstrap", "20"];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn csv_predictions_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let r = eval_csv(
        tmp.path(),
        TRUTH,
        "case,probability,co_rads\na.mha,0.9,5\nb,0.2,1\nc,0.6,4\nd,0.4,2\n",
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("AUC 1.000"), "{}", r.stdout);
    assert!(r.stdout.contains("QWK 1.000"), "{}", r.stdout);
}

#[test]
fn input_errors_name_the_case_file_or_row() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "case,probability\na,0.9\nb,0.2\nc,0.6\n",
            "no prediction for 1 ground-truth case(s): 'd'",
            &[],
        ),
        (
            "case,probability\na,0.9\nb,0.2\nc,0.6\nd,0.1\nA.mha,0.3\n",
            "duplicate case 'A'",
            &["line 2", "line 6"],
        ),
        (
            "case,probability\na,1.2\nb,0.2\nc,0.6\nd,0.1\n",
            "case 'a'",
            &[
                "probability '1.2' is not a finite number in [0, 1]",
                "line 2",
            ],
        ),
        (
            "case,probability\na,NaN\nb,0.2\nc,0.6\nd,0.1\n",
            "case 'a'",
            &["probability 'NaN'"],
        ),
        (
            "case,probability\na,0.9\nb,inf\nc,0.6\nd,0.1\n",
            "case 'b'",
            &["probability 'inf'"],
        ),
        (
            "case,probability,co_rads\na,0.9,6\nb,0.2,1\nc,0.6,3\nd,0.1,1\n",
            "case 'a'",
            &["CO-RADS '6' is not an integer in 1..5", "line 2"],
        ),
        (
            "case,probability,co_rads\na,0.9,5\nb,0.2,\nc,0.6,3\nd,0.1,1\n",
            "case 'b' has CO-RADS ground truth but no CO-RADS prediction",
            &[],
        ),
        (
            "case,probability\na,0.9\nb,0.2\nc,0.6\nd,0.1\ne,0.5\n",
            "1 prediction(s) match no ground-truth case: 'e'",
            &["--ignore-extra-predictions"],
        ),
        (
            "case,prob\na,0.9\n",
            "expected a header with 'case' and 'probability' columns",
            &[],
        ),
    ];
    for (preds, needle, also) in cases {
        let r = eval_csv(d, TRUTH, preds, &[]);
        assert!(!r.ok, "should fail: {preds}");
        let line = r.last_err_line();
        assert!(line.starts_with("ctgrade-eval: error:"), "{line}");
        assert!(line.contains(needle), "expected '{needle}' in: {line}");
        for a in also {
            assert!(line.contains(a), "expected '{a}' in: {line}");
        }
    }
    // Extra predictions are accepted, and listed, when asked for.
    let r = eval_csv(
        d,
        TRUTH,
        "case,probability\na,0.9\nb,0.2\nc,0.6\nd,0.1\ne,0.5\n",
        &["--ignore-extra-predictions"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("'e' matches no ground-truth case"));
    let m: Value =
        serde_json::from_str(&fs::read_to_string(d.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["aggregates"]["ignored_predictions"][0], "e");
}

#[test]
fn ground_truth_errors_name_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let preds = "case,probability\na,0.9\nb,0.2\nc,0.6\nd,0.1\n";
    let r = eval_csv(d, "a,1,\nb,1,\nc,1,\nd,1,\n", preds, &[]);
    assert!(
        r.last_err_line().contains("all 4 case(s) are positive"),
        "{}",
        r.stderr
    );
    let r = eval_csv(d, "a,1,\nb,maybe,\nc,1,\nd,0,\n", preds, &[]);
    assert!(
        r.last_err_line().contains("line 3") && r.last_err_line().contains("label 'maybe'"),
        "{}",
        r.stderr
    );
    let r = eval_csv(d, "a,1,\nb,0,\nc,1,\nd,0,\nb,1,\n", preds, &[]);
    assert!(
        r.last_err_line().contains("duplicate case 'b'"),
        "{}",
        r.stderr
    );

    let ictcf = d.join("ictcf.csv");
    fs::write(
        &ictcf,
        "Patient ID,Hospital,Morbidity outcome\nPatient 1,Union,Mild\nPatient 2,Union,Recovered\n",
    )
    .unwrap();
    let p = d.join("p.csv");
    fs::write(&p, "case,probability\nPatient 1,0.9\nPatient 2,0.1\n").unwrap();
    let r = run(&["-p", s(&p), "-g", s(&ictcf), "-o", s(&d.join("m.json"))]);
    let line = r.last_err_line();
    assert!(
        line.contains("line 3") && line.contains("unknown 'Morbidity outcome' 'Recovered'"),
        "{line}"
    );
}

#[test]
fn platform_job_without_output_names_job_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    fs::create_dir_all(input.join("job-1/output")).unwrap();
    let job = |pk: &str, name: &str, value: Value| {
        serde_json::json!({
            "pk": pk,
            "inputs": [{"image": {"pk": "i", "name": name}, "value": null, "file": null,
                        "socket": {"slug": "ct-image", "kind": "Image", "super_kind": "Image",
                                      "relative_path": "images/ct"}}],
            "outputs": [{"image": null, "value": value, "file": null,
                         "socket": {"slug": "probability-covid-19", "kind": "Float",
                                       "super_kind": "Value",
                                       "relative_path": "probability-covid-19.json"}}],
            "status": "Succeeded"
        })
    };
    let jobs = Value::Array(vec![
        job("job-0", "a.mha", serde_json::json!(0.8)),
        job("job-1", "b.mha", Value::Null),
    ]);
    fs::write(input.join("predictions.json"), jobs.to_string()).unwrap();
    let truth = write_truth(tmp.path(), "a,1,\nb,0,\n");
    let r = run(&[
        "-p",
        s(&input.join("predictions.json")),
        "-g",
        s(&truth),
        "-o",
        s(&tmp.path().join("m.json")),
    ]);
    let line = r.last_err_line();
    assert!(
        line.contains("job job-1")
            && line.contains("probability-covid-19.json")
            && line.contains("missing"),
        "{line}"
    );
    // With the file in place the same input evaluates.
    fs::write(input.join("job-1/output/probability-covid-19.json"), "0.3").unwrap();
    let r = run(&[
        "-p",
        s(&input),
        "-g",
        s(&truth),
        "-o",
        s(&tmp.path().join("m.json")),
        "--bootstrap",
        "0",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("AUC 1.000"), "{}", r.stdout);
}

#[test]
fn ctgrade_run_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let truth = write_truth(d, TRUTH);
    let out = d.join("m.json");
    // Batch layout: <dir>/<case>/probability-covid-19.json (+ co-rads-score.json).
    let batch = d.join("batch");
    for (case, p, c) in [("a", 0.9, 5), ("b", 0.2, 1), ("c", 0.6, 4), ("d", 0.4, 2)] {
        fs::create_dir_all(batch.join(case)).unwrap();
        fs::write(
            batch.join(case).join("probability-covid-19.json"),
            p.to_string(),
        )
        .unwrap();
        fs::write(batch.join(case).join("co-rads-score.json"), c.to_string()).unwrap();
    }
    let r = run(&[
        "-p",
        s(&batch),
        "-g",
        s(&truth),
        "-o",
        s(&out),
        "--bootstrap",
        "0",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("QWK 1.000"), "{}", r.stdout);

    // summary.json takes precedence and its error entries are failed cases.
    let summary = serde_json::json!({"cases": [
        {"case": "a.mha", "probability": 0.9, "co_rads": 5, "error": null},
        {"case": "b", "probability": 0.2, "co_rads": 1, "error": null},
        {"case": "c", "probability": 0.6, "co_rads": 4, "error": null},
        {"case": "d", "probability": null, "co_rads": null, "error": "unreadable image"}
    ]});
    fs::write(batch.join("summary.json"), summary.to_string()).unwrap();
    let r = run(&["-p", s(&batch), "-g", s(&truth), "-o", s(&out)]);
    assert!(
        r.last_err_line().contains("'d (unreadable image)'"),
        "{}",
        r.stderr
    );

    // The legacy evalutils results.json (what `ctgrade run` writes for images directly in
    // /input): read as a file, and from a folder without summary.json; error_messages are
    // failed cases.
    let entry = |file: &str, p: f64, c: u8| {
        serde_json::json!({
            "outputs": [
                {"type": "float", "name": "probability-covid-19", "value": p},
                {"type": "int", "name": "co-rads-score", "value": c},
            ],
            "inputs": [{"type": "metaio_image", "filename": file}],
            "error_messages": [],
        })
    };
    let legacy = d.join("legacy");
    fs::create_dir_all(&legacy).unwrap();
    let results = serde_json::json!([
        entry("a.mha", 0.9, 5),
        entry("b.nii.gz", 0.2, 1),
        entry("c.mha", 0.6, 4),
        {"outputs": [], "inputs": [{"type": "metaio_image", "filename": "d.mha"}],
         "error_messages": ["d.mha: unreadable image"]},
    ]);
    fs::write(legacy.join("results.json"), results.to_string()).unwrap();
    for p in [legacy.clone(), legacy.join("results.json")] {
        let r = run(&["-p", s(&p), "-g", s(&truth), "-o", s(&out)]);
        assert!(
            r.last_err_line().contains("'d (d.mha: unreadable image)'"),
            "{}",
            r.stderr
        );
    }
    fs::write(
        legacy.join("results.json"),
        serde_json::json!([
            entry("a.mha", 0.9, 5),
            entry("b.mha", 0.2, 1),
            entry("c.mha", 0.6, 4),
            entry("d.mha", 0.4, 2)
        ])
        .to_string(),
    )
    .unwrap();
    let r = run(&[
        "-p",
        s(&legacy),
        "-g",
        s(&truth),
        "-o",
        s(&out),
        "--bootstrap",
        "0",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("QWK 1.000"), "{}", r.stdout);
    // A JSON file of none of these shapes: the message says what was expected.
    fs::write(legacy.join("results.json"), r#"{"probability": 0.5}"#).unwrap();
    let r = run(&["-p", s(&legacy), "-g", s(&truth), "-o", s(&out)]);
    assert!(
        r.last_err_line().contains("legacy results.json"),
        "{}",
        r.stderr
    );

    // A single-case output folder cannot name its case.
    let single = d.join("single");
    fs::create_dir_all(&single).unwrap();
    fs::write(single.join("probability-covid-19.json"), "0.5").unwrap();
    let r = run(&["-p", s(&single), "-g", s(&truth), "-o", s(&out)]);
    assert!(
        r.last_err_line().contains("single-case output"),
        "{}",
        r.stderr
    );
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn run_time_per_job_from_predictions_json() {
    let fx = fixtures().join("platform");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    copy_tree(&fx.join("input"), &input);
    let file = input.join("predictions.json");
    let mut jobs: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let jobs_list = jobs.as_array_mut().unwrap();
    assert_eq!(jobs_list.len(), 15);
    // Durations 1..14 s (exec mode, the platform's text format), one job without any and one
    // with an unreadable value; one job in invoke mode.
    for (k, job) in jobs_list.iter_mut().enumerate() {
        let o = job.as_object_mut().unwrap();
        match k {
            0 => {}
            1 => {
                o.insert("exec_duration".into(), "soon".into());
            }
            2 => {
                o.insert("invoke_duration".into(), "00:00:02.000000".into());
                o.insert("exec_duration".into(), Value::Null);
            }
            _ => {
                o.insert(
                    "exec_duration".into(),
                    format!("00:00:{k:02}.000000").into(),
                );
            }
        }
    }
    fs::write(&file, serde_json::to_string(&jobs).unwrap()).unwrap();
    let metrics = tmp.path().join("metrics.json");
    let r = run(&[
        "-p",
        s(&file),
        "-g",
        s(&fx.join("ground_truth")),
        "-o",
        s(&metrics),
        "--bootstrap",
        "0",
    ]);
    assert!(r.ok, "{}", r.stderr);
    let m: Value = serde_json::from_str(&fs::read_to_string(&metrics).unwrap()).unwrap();
    let d = &m["aggregates"]["runtime"]["duration"];
    // Seconds 2, 3, ..., 14: numpy.percentile(range(2, 15), [50, 95]) = [8.0, 13.4].
    assert_eq!(d["n_jobs"], 13);
    assert_eq!(d["source"], "exec_duration, invoke_duration");
    assert_eq!(d["median_s"], 8.0);
    assert!((d["p95_s"].as_f64().unwrap() - 13.4).abs() < 1e-12);
    assert_eq!(d["max_s"], 14.0);
    let problems = m["aggregates"]["runtime"]["problems"].as_array().unwrap();
    assert!(problems[0]
        .as_str()
        .unwrap()
        .starts_with("2 of 15 job(s) have no readable exec_duration or invoke_duration"));
    assert!(problems.iter().any(|p| p
        .as_str()
        .unwrap()
        .contains("exec_duration \"soon\" is not a duration")));
    assert!(r.stdout.contains("run time per job (exec_duration, invoke_duration, 13 of 15 jobs): median 8.0 s, 95th percentile 13.4 s, maximum 14.0 s"), "{}", r.stdout);
    // Everything else is still evaluated.
    assert!(m["aggregates"]["auc"].is_number() && m["aggregates"]["brier"].is_number());
}
