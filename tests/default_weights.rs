//! The shipped demonstration ensemble (`weights/default`, trained by `scripts/train-demo.sh`) on
//! the shipped inputs (`test_inputs/`): the README's first set-up command, and a guard that a
//! change to preprocessing or the engine does not silently break the weights everyone runs first.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `ctgrade run` from the repository root with no `--weights` (the default ensemble) in
/// `precision`; asserts that it succeeded and returns its stderr.
fn run_default(input: &Path, output: &Path, precision: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .current_dir(root())
        .args([
            "run",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--input",
        ])
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// (case, probability, CO-RADS) of a batch run's summary.json, in case order.
fn summary(dir: &Path) -> Vec<(String, f64, i64)> {
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    summary["cases"]
        .as_array()
        .expect("summary.json has cases")
        .iter()
        .map(|c| {
            (
                c["case"].as_str().unwrap().to_string(),
                c["probability"].as_f64().unwrap(),
                c["co_rads"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn default_weights_pass_their_checks() {
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args(["ensemble", "check"])
        .arg(root().join("weights/default"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The grand-challenge socket layout of `test_inputs/`: both answers, consistent with each
/// other (continuous head: CO-RADS = round(4p) + 1).
#[test]
fn default_weights_grade_the_socket_input() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = run_default(&root().join("test_inputs"), dir.path(), "f32");
    assert!(stderr.contains("weights from"), "{stderr}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let p: f64 = read("probability-covid-19.json").trim().parse().unwrap();
    let c: u8 = read("co-rads-score.json").trim().parse().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(c, ((4.0 * p).round() + 1.0) as u8);
}

/// The four phantoms of `test_inputs/batch/` (true CO-RADS in their names): each graded within
/// one category of the truth, and the probabilities in the order of the lesion burden. (On the
/// held-out test set the ensemble reaches AUC 0.995 and QWK 0.845; see weights/default/README.md.)
#[test]
fn default_weights_grade_the_phantom_batch_plausibly() {
    let dir = tempfile::tempdir().unwrap();
    run_default(&root().join("test_inputs/batch"), dir.path(), "f32");
    let cases = summary(dir.path());
    assert_eq!(cases.len(), 4, "{cases:?}");
    let mut by_truth = Vec::new();
    for (name, p, pred) in cases {
        let truth: i64 = name.rsplit("co-rads").next().unwrap().parse().unwrap();
        assert!((pred - truth).abs() <= 1, "{name}: CO-RADS {pred}, p {p}");
        by_truth.push((truth, p));
    }
    by_truth.sort_by_key(|&(t, _)| t);
    let p: Vec<f64> = by_truth.iter().map(|&(_, p)| p).collect();
    // Truths 1, 2, 4, 5: the positives above both negatives, and 5 above 4.
    assert!(p[3] > p[2] && p[2] > p[0].max(p[1]), "{by_truth:?}");
}

/// `--precision f16` and `bf16` through the whole run: the probabilities stay close to f32's
/// (on the 100-case test set, scripts/precision-check.sh measured at most 9.2e-4 for f16 and
/// 3.8e-2 for bf16).
#[test]
fn reduced_precision_runs_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let input = root().join("test_inputs/batch");
    let mut runs = Vec::new();
    for precision in ["f32", "f16", "bf16"] {
        let output = dir.path().join(precision);
        let stderr = run_default(&input, &output, precision);
        assert!(stderr.contains(&format!(" in {precision}")), "{stderr}");
        runs.push(summary(&output));
    }
    for (run, bound) in runs[1..].iter().zip([3e-3, 6e-2]) {
        for ((case, p32, _), (_, p, _)) in runs[0].iter().zip(run) {
            assert!((p - p32).abs() <= bound, "{case}: {p} vs f32 {p32}");
            assert!(
                p != p32,
                "{case}: identical to f32, so not run in reduced precision"
            );
        }
    }
}

/// The README quotes what its first command prints on `test_inputs/`: the log line of the case
/// (up to its timing) verbatim, and every `probability P, CO-RADS C` it mentions is that case's.
#[test]
fn readme_quotes_what_the_first_command_prints() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = run_default(&root().join("test_inputs"), dir.path(), "f32");
    let line = stderr
        .lines()
        .find(|l| l.contains(": probability "))
        .unwrap_or_else(|| panic!("no case line in {stderr}"));
    // Up to the wall time, which varies from run to run.
    let quoted = &line[..line.rfind(';').unwrap_or(line.len())];
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains(quoted),
        "the README does not quote the first command's line: {quoted}"
    );
    let answer = &line[line.find("probability ").unwrap()..line.find(" (").unwrap()];
    let mut mentions = 0;
    for (at, _) in readme.match_indices("probability ") {
        let rest = &readme[at..];
        let Some(end) = rest.find(", CO-RADS ") else {
            continue;
        };
        let number = &rest["probability ".len()..end];
        if end > 30 || number.parse::<f64>().is_err() {
            continue;
        }
        let mention = &rest[..end + ", CO-RADS ".len() + 1];
        assert_eq!(mention, answer, "the README quotes another answer");
        mentions += 1;
    }
    assert!(
        mentions >= 2,
        "{mentions} mentions of the answer in the README"
    );
}
