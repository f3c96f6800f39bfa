//! `--report`: a self-contained HTML page holding the numbers of metrics.json.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(args: &[&Path], extra: &[&str]) -> (String, Value, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.json");
    let html = tmp.path().join("out/report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade-eval"))
        .arg("-p")
        .arg(args[0])
        .arg("-g")
        .arg(args[1])
        .arg("-o")
        .arg(&metrics)
        .arg("--report")
        .arg(&html)
        .args(extra)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("json");
    (std::fs::read_to_string(&html).expect("report"), m, stderr)
}

fn fmt4(v: &Value) -> String {
    format!("{:.4}", v.as_f64().expect("number"))
}

fn assert_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    for bad in ["http://", "https://", "<script", "src=\"", "<link"] {
        // The SVG namespace is an identifier, not a fetched resource.
        let n = html.matches(bad).count()
            - html.matches("http://www.w3.org/2000/svg").count() * usize::from(bad == "http://");
        assert_eq!(n, 0, "report refers to {bad}");
    }
}

#[test]
fn platform_report_holds_the_metrics() {
    let fx = fixtures().join("platform");
    let (html, m, _) = run(
        &[&fx.join("input/predictions.json"), &fx.join("ground_truth")],
        &["--bootstrap", "100"],
    );
    assert_self_contained(&html);
    let a = &m["aggregates"];
    for key in ["auc", "brier", "ece_uniform_10"] {
        assert!(html.contains(&fmt4(&a[key])), "{key} missing");
    }
    for k in 0..2 {
        assert!(html.contains(&format!("{:.4}", a["auc_95ci"][k].as_f64().expect("ci"))));
    }
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "ROC, reliability and decision curve"
    );
    assert!(html.contains("Slowest jobs"));
    assert!(html.contains("Failed predictions"));
    if let Some(f) = a["failed_predictions"].as_array().and_then(|f| f.first()) {
        let reason = f["reason"].as_str().expect("reason");
        assert!(html.contains(&ctgrade_eval::report::escape(reason)));
    }
}

#[test]
fn report_with_strata_and_escaping() {
    let d = fixtures().join("strata");
    let (html, m, _) = run(
        &[&d.join("predictions.csv"), &d.join("ground_truth.csv")],
        &[
            "--bootstrap",
            "50",
            "--strata",
            d.join("strata.csv").to_str().expect("utf-8"),
        ],
    );
    assert_self_contained(&html);
    let cols = &m["aggregates"]["strata_by_column"]["columns"];
    let site_a = &cols[0]["strata"][0];
    assert!(html.contains(&fmt4(&site_a["auc"])));
    assert!(html.contains("column &#39;sex&#39; has fewer than two values"));
    assert!(html.contains("No job times"));
    assert_eq!(
        ctgrade_eval::report::escape("<a href='x'>&\"</a>"),
        "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
    );
}
