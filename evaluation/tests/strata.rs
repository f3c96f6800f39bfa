//! `--strata`: per-stratum AUC, QWK, bootstrap intervals, DeLong variances and the difference
//! test against scikit-learn / scipy and the Python mirror of the bootstrap
//! (tools/make_eval_fixtures.py, fixtures/strata/).

use std::path::{Path, PathBuf};
use std::process::Command;

use ctgrade_eval::strata::{load_strata_table, strata_by_column};
use ctgrade_eval::{load_ground_truth, load_predictions, EvalOptions};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/strata")
}

fn close(got: Option<f64>, want: &Value, what: &str) {
    match (got, want.as_f64()) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{what}: {g} != {w}"),
        _ => panic!("{what}: {got:?} vs {want}"),
    }
}

fn close_ci(got: Option<[f64; 2]>, want: &Value, what: &str) {
    let want: Option<Vec<f64>> = serde_json::from_value(want.clone()).expect("ci");
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            for k in 0..2 {
                assert!(
                    (g[k] - w[k]).abs() < 1e-9,
                    "{what}[{k}]: {} != {}",
                    g[k],
                    w[k]
                );
            }
        }
        (g, w) => panic!("{what}: {g:?} vs {w:?}"),
    }
}

#[test]
fn strata_match_sklearn_and_the_bootstrap_mirror() {
    let d = dir();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).expect("read"))
            .expect("json");
    let truth = load_ground_truth(&d.join("ground_truth.csv")).expect("truth");
    let preds = load_predictions(&d.join("predictions.csv")).expect("preds");
    let table = load_strata_table(&d.join("strata.csv")).expect("strata table");
    let opts = EvalOptions {
        bootstrap: expected["iterations"].as_u64().expect("iterations") as usize,
        seed: expected["seed"].as_u64().expect("seed"),
        ..EvalOptions::default()
    };
    let got = strata_by_column(&table, &truth, &preds, &opts).expect("strata");
    assert_eq!(got.unknown_cases, vec!["ghost_1", "ghost_2"]);
    assert_eq!(
        got.n_cases_without_row as u64,
        expected["n_cases_without_row"].as_u64().expect("n")
    );
    assert_eq!(
        got.min_cases as u64,
        expected["min_cases"].as_u64().expect("min")
    );
    let want_cols = expected["columns"].as_array().expect("columns");
    assert_eq!(got.columns.len(), want_cols.len());
    for (g, w) in got.columns.iter().zip(want_cols) {
        let name = g.column.as_str();
        assert_eq!(name, w["column"]);
        assert_eq!(
            g.n_missing as u64,
            w["n_missing"].as_u64().expect("missing"),
            "{name}"
        );
        if w.get("skipped").is_some() {
            assert!(g
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("fewer than two values")));
            assert!(g.strata.is_empty());
            continue;
        }
        let ws = w["strata"].as_array().expect("strata");
        assert_eq!(g.strata.len(), ws.len(), "{name}");
        for (s, e) in g.strata.iter().zip(ws) {
            let what = format!("{name}={}", s.value);
            assert_eq!(s.value, e["value"].as_str().expect("value"));
            assert_eq!(
                s.n_cases as u64,
                e["n_cases"].as_u64().expect("n"),
                "{what}"
            );
            assert_eq!(
                s.n_positive as u64,
                e["n_positive"].as_u64().expect("n"),
                "{what}"
            );
            assert_eq!(
                s.n_negative as u64,
                e["n_negative"].as_u64().expect("n"),
                "{what}"
            );
            assert_eq!(
                s.n_patients as u64,
                e["n_patients"].as_u64().expect("n"),
                "{what}"
            );
            assert_eq!(s.scored, e["scored"].as_bool().expect("scored"), "{what}");
            if !s.scored {
                assert!(
                    s.reason.is_some(),
                    "{what}: unscored stratum without a reason"
                );
            }
            close(s.auc, &e["auc"], &format!("{what} auc"));
            close(
                s.auc_variance_delong,
                &e["auc_variance_delong"],
                &format!("{what} var"),
            );
            close(s.qwk, &e["qwk"], &format!("{what} qwk"));
            close_ci(s.auc_95ci, &e["auc_95ci"], &format!("{what} auc_95ci"));
            close_ci(s.qwk_95ci, &e["qwk_95ci"], &format!("{what} qwk_95ci"));
        }
        match (&g.difference_test, &w["difference_test"]) {
            (None, Value::Null) => assert!(g.note.is_some(), "{name}: no test and no note"),
            (Some(t), e) if !e.is_null() => {
                let strata: Vec<String> = serde_json::from_value(e["strata"].clone()).expect("s");
                assert_eq!(t.strata, strata);
                assert_eq!(t.df as u64, e["df"].as_u64().expect("df"));
                close(Some(t.chi2), &e["chi2"], &format!("{name} chi2"));
                close(Some(t.p_value), &e["p_value"], &format!("{name} p"));
                close(t.z, &e["z"], &format!("{name} z"));
            }
            (g, e) => panic!("{name}: test {g:?} vs {e}"),
        }
    }
}

/// `ctgrade-eval` on the fixture with `--strata <strata file>`: its stderr (after asserting
/// success) and the metrics written.
fn eval_with_strata(strata: &Path, bootstrap: &str) -> (String, Value) {
    let d = dir();
    let out = tempfile::tempdir().expect("tempdir");
    let metrics = out.path().join("metrics.json");
    let run = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .arg("-p")
        .arg(d.join("predictions.csv"))
        .arg("-g")
        .arg(d.join("ground_truth.csv"))
        .arg("-o")
        .arg(&metrics)
        .args(["--bootstrap", bootstrap, "--strata"])
        .arg(strata)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let m =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("json");
    (stderr, m)
}

#[test]
fn cli_with_strata_warns_and_completes() {
    let d = dir();
    let (stderr, m) = eval_with_strata(&d.join("strata.csv"), "50");
    assert!(stderr.contains("'ghost_1'"), "{stderr}");
    assert!(
        stderr.contains("column 'sex' has fewer than two values"),
        "{stderr}"
    );
    let s = &m["aggregates"]["strata_by_column"];
    assert_eq!(s["columns"][0]["column"], "site");
    assert_eq!(s["unknown_cases"][1], "ghost_2");
    assert!(m["aggregates"]["auc"].is_number());

    // A strata file that cannot be read costs only the strata table.
    let (stderr, m) = eval_with_strata(&d.join("missing.csv"), "0");
    assert!(stderr.contains("missing.csv"), "{stderr}");
    assert!(m["aggregates"].get("strata_by_column").is_none());
}
