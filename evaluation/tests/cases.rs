//! Whole evaluations (readers, join, bootstrap, strata, comparison) against the expectations that
//! tools/make_eval_fixtures.py recomputed with scikit-learn and a mirror of the bootstrap.

mod common;

use std::path::{Path, PathBuf};

use ctgrade_eval::evaluate::{Metrics, Stratum};
use ctgrade_eval::{evaluate, load_ground_truth, load_predictions, EvalOptions};
use serde_json::Value;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cases")
        .join(name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn assert_close(what: &str, got: Option<f64>, expected: &Value) {
    match (got, expected.as_f64()) {
        (Some(g), Some(e)) => assert!((g - e).abs() <= 1e-9, "{what}: {g} vs {e}"),
        (None, None) => {}
        (g, _) => panic!("{what}: got {g:?}, expected {expected}"),
    }
}

fn assert_ci(what: &str, got: Option<[f64; 2]>, expected: &Value) {
    match (got, expected.as_array()) {
        (Some([lo, hi]), Some(e)) => {
            assert_close(&format!("{what} low"), Some(lo), &e[0]);
            assert_close(&format!("{what} high"), Some(hi), &e[1]);
        }
        (None, None) => {}
        (g, _) => panic!("{what}: got {g:?}, expected {expected}"),
    }
}

/// [`common::assert_subset`] with one tolerance for every number.
fn assert_subset(what: &str, got: &Value, expected: &Value, tol: f64) {
    common::assert_subset(what, got, expected, &|_| tol);
}

/// The calibration and operating-point keys, against scikit-learn and statsmodels.
fn check_new_metrics(what: &str, m: &Metrics, e: &Value) {
    let got = serde_json::to_value(m).unwrap();
    let mut n = 0;
    for (key, tol) in [
        ("brier", 1e-9),
        ("brier_95ci", 1e-9),
        ("ece_uniform_10", 1e-9),
        ("ece_quantile_10", 1e-9),
        // Iterative fits: statsmodels' IRLS against this Newton iteration.
        ("calibration_intercept", 1e-6),
        ("calibration_slope", 1e-6),
        ("calibration_curve_uniform_10", 1e-9),
        ("calibration_curve_quantile_10", 1e-9),
        ("sensitivity_at_specificity_0_90", 1e-9),
        ("sensitivity_at_specificity_0_95", 1e-9),
        ("specificity_at_sensitivity_0_90", 1e-9),
        ("specificity_at_sensitivity_0_95", 1e-9),
        ("youden_threshold_95ci", 1e-9),
        ("predictive_values_co_rads", 1e-9),
        ("decision_curve", 1e-9),
    ] {
        if let Some(x) = e.get(key) {
            assert_subset(&format!("{what} {key}"), &got[key], x, tol);
            n += 1;
        }
    }
    assert!(n >= 11, "{what}: the fixture lacks the calibration keys");
    if let Some(x) = e["bootstrap"].get("youden_threshold_undefined_resamples") {
        assert_eq!(
            &got["bootstrap"]["youden_threshold_undefined_resamples"], x,
            "{what}"
        );
    }
}

/// Compares the metrics of one set with the oracle's.
pub fn check_metrics(what: &str, m: &Metrics, e: &Value) {
    check_new_metrics(what, m, e);
    assert_eq!(m.n_cases as u64, e["n_cases"].as_u64().unwrap(), "{what}");
    assert_eq!(
        m.n_positive as u64,
        e["n_positive"].as_u64().unwrap(),
        "{what}"
    );
    assert_eq!(
        m.n_negative as u64,
        e["n_negative"].as_u64().unwrap(),
        "{what}"
    );
    assert_close(&format!("{what} auc"), Some(m.auc), &e["auc"]);
    assert_close(&format!("{what} qwk"), m.qwk, &e["qwk"]);
    assert_eq!(m.qwk_n_cases as u64, e["qwk_n_cases"].as_u64().unwrap());
    assert_close(
        &format!("{what} sensitivity"),
        m.sensitivity,
        &e["sensitivity"],
    );
    assert_close(
        &format!("{what} specificity"),
        m.specificity,
        &e["specificity"],
    );
    let roc = serde_json::to_value(&m.roc).unwrap();
    for k in ["fpr", "tpr", "thresholds"] {
        let (g, x) = (roc[k].as_array().unwrap(), e["roc"][k].as_array().unwrap());
        assert_eq!(g.len(), x.len(), "{what} roc {k} length");
        for (i, (g, x)) in g.iter().zip(x).enumerate() {
            // JSON null stands for the first threshold, +inf.
            assert_close(&format!("{what} roc {k}[{i}]"), g.as_f64(), x);
        }
    }
    let y = serde_json::to_value(m.youden).unwrap();
    assert_close(
        &format!("{what} youden"),
        y["threshold"].as_f64(),
        &e["youden"]["threshold"],
    );
    for k in ["tp", "fp", "tn", "fn"] {
        assert_eq!(y[k], e["youden"][k], "{what} youden {k}");
    }
    let half = serde_json::to_value(m.at_threshold_0_5).unwrap();
    for k in ["tp", "fp", "tn", "fn"] {
        assert_eq!(half[k], e["at_threshold_0_5"][k], "{what} at 0.5 {k}");
    }
    if let Some(cm) = e.get("co_rads_confusion") {
        let got = serde_json::to_value(&m.co_rads_confusion.as_ref().unwrap().matrix).unwrap();
        assert_eq!(&got, cm, "{what} CO-RADS confusion");
    }
    if let Some(b) = e.get("bootstrap") {
        let info = serde_json::to_value(m.bootstrap.as_ref().unwrap()).unwrap();
        for k in [
            "iterations",
            "seed",
            "unit",
            "n_units",
            "rejected_resamples",
            "qwk_undefined_resamples",
        ] {
            assert_eq!(info[k], b[k], "{what} bootstrap {k}");
        }
        assert_ci(&format!("{what} auc_95ci"), m.auc_95ci, &e["auc_95ci"]);
        assert_ci(&format!("{what} qwk_95ci"), m.qwk_95ci, &e["qwk_95ci"]);
    }
}

fn run_case(name: &str) {
    let dir = case_dir(name);
    let expected = read_json(&dir.join("expected.json"));
    let truth = load_ground_truth(&dir.join("ground_truth.csv")).unwrap();
    let preds = load_predictions(&dir.join("predictions.csv")).unwrap();
    let other = load_predictions(&dir.join("other.csv")).unwrap();
    let opts = EvalOptions {
        bootstrap: expected["iterations"].as_u64().unwrap() as usize,
        seed: expected["seed"].as_u64().unwrap(),
        ..EvalOptions::default()
    };
    let report = evaluate(&truth, &preds, Some(&other), &opts).unwrap();
    let a = &report.aggregates;
    check_metrics(name, &a.metrics, &expected["all"]);

    let c = a.compare.as_ref().unwrap();
    let ec = &expected["all"]["compare"];
    assert_close("auc_other", Some(c.auc_other), &ec["auc_other"]);
    assert_ci("auc_other_95ci", c.auc_other_95ci, &ec["auc_other_95ci"]);
    assert_close(
        "auc_difference",
        Some(c.auc_difference),
        &ec["auc_difference"],
    );
    assert_ci(
        "auc_difference_95ci",
        c.auc_difference_95ci,
        &ec["auc_difference_95ci"],
    );
    assert_close("auc_p_value", c.auc_p_value, &ec["auc_p_value"]);
    assert_close(
        "auc_p_value_one_sided",
        c.auc_p_value_one_sided,
        &ec["auc_p_value_one_sided"],
    );
    let d = c.delong.unwrap();
    assert_close("delong p", Some(d.p_value), &ec["delong"]["p_value"]);
    assert_close(
        "delong variance",
        Some(d.variance),
        &ec["delong"]["variance"],
    );
    assert_close("qwk_other", c.qwk_other, &ec["qwk_other"]);
    assert_ci("qwk_other_95ci", c.qwk_other_95ci, &ec["qwk_other_95ci"]);
    assert_close("qwk_difference", c.qwk_difference, &ec["qwk_difference"]);
    assert_ci(
        "qwk_difference_95ci",
        c.qwk_difference_95ci,
        &ec["qwk_difference_95ci"],
    );
    assert_close("qwk_p_value", c.qwk_p_value, &ec["qwk_p_value"]);
    let got = serde_json::to_value(c).unwrap();
    for key in [
        "brier_other",
        "brier_other_95ci",
        "brier_difference",
        "brier_difference_95ci",
        "brier_p_value",
        "brier_p_value_one_sided",
    ] {
        assert_subset(&format!("{name} compare {key}"), &got[key], &ec[key], 1e-9);
    }

    match (&a.strata, expected.get("le")) {
        (Some(s), Some(le)) => {
            for (key, stratum, e) in [
                ("le", &s.slice_thickness_le_1_5mm, le),
                ("gt", &s.slice_thickness_gt_1_5mm, &expected["gt"]),
            ] {
                match stratum {
                    Stratum::Metrics(m) => check_metrics(&format!("{name} {key}"), m, e),
                    Stratum::Undefined { error, .. } => panic!("{name} {key}: {error}"),
                }
            }
            assert_eq!(
                s.n_unknown_slice_thickness as u64,
                expected["n_unknown_slice_thickness"].as_u64().unwrap()
            );
        }
        (None, None) => {}
        (s, _) => panic!("{name}: strata {s:?}"),
    }
}

#[test]
fn multi_scan_patients_with_strata_and_comparison() {
    run_case("multiscan");
}

#[test]
fn scan_level_bootstrap_without_patients() {
    run_case("scans");
}

#[test]
fn rare_positives_redraw_single_class_resamples() {
    run_case("rare");
}
