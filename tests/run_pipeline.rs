//! End to end: phantoms in the grand-challenge layouts -> `ctgrade run` -> the platform's outputs,
//! with a small random-weight ensemble (the pipeline is under test here, not the weights).

mod common;

use std::path::Path;

use common::{ctgrade, make_ensemble, run_args, s};
use ctgrade::ensemble::Manifest;
use ctgrade::grading::Head;
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType};

fn write_phantom(path: &Path, seed: u64, co_rads: u8) {
    let cfg = PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed,
        co_rads,
    };
    let (ct, _) = phantom(&cfg).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    volume::write(path, &ct, ElementType::Short).unwrap();
}

/// `ctgrade run` on the CPU with the given folders, plus extra arguments.
fn run(input: &Path, output: &Path, weights: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = run_args(input, output, weights);
    args.extend_from_slice(extra);
    ctgrade(&args, &[])
}

#[test]
fn socket_layout_single_case() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 2);
    let input = dir.path().join("input");
    write_phantom(&input.join("images/ct/case-1.mha"), 1, 4);
    let output = dir.path().join("output");
    let out = run(&input, &output, &weights, &["--lung-mask"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let p: f64 = std::fs::read_to_string(output.join("probability-covid-19.json"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&p));
    let c: u8 = std::fs::read_to_string(output.join("co-rads-score.json"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(c, (4.0 * p).round() as u8 + 1);
    let mask = volume::read(&output.join("images/lung-segmentation/case-1.mha")).unwrap();
    assert_eq!(mask.size, [96, 96, 48]);
    assert!(mask.data.iter().any(|&v| v > 0.0));
    assert!(stderr.contains("member 2/2"), "{stderr}");

    // Deterministic: a second run writes byte-identical answers.
    let again = dir.path().join("again");
    let out2 = run(&input, &again, &weights, &[]);
    assert!(out2.status.success());
    for f in ["probability-covid-19.json", "co-rads-score.json"] {
        assert_eq!(
            std::fs::read(output.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap()
        );
    }
}

#[test]
fn legacy_batch_with_a_failing_case() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Categorical, 1);
    let input = dir.path().join("input");
    write_phantom(&input.join("a.mha"), 2, 1);
    write_phantom(&input.join("c.mha"), 3, 5);
    std::fs::write(input.join("b.mha"), b"ObjectType = Image\nNDims = 3\n").unwrap();
    let output = dir.path().join("output");
    let out = run(&input, &output, &weights, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed case must fail the run");
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains("1 of 3 cases failed") && last.contains("b.mha"),
        "{last}"
    );

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.as_array().unwrap().len(), 3);
    assert_eq!(results[1]["outputs"].as_array().unwrap().len(), 0);
    assert!(results[1]["error_messages"][0]
        .as_str()
        .unwrap()
        .contains("b.mha"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap();
    let cases = summary["cases"].as_array().unwrap();
    assert!(cases[0]["probability"].is_number() && cases[2]["co_rads"].is_number());
    assert!(cases[1]["error"].is_string());
    // The good cases still have their own socket files; the failed one has none.
    assert!(output.join("a/probability-covid-19.json").is_file());
    assert!(output.join("c/co-rads-score.json").is_file());
    assert!(!output.join("b").exists());
}

#[test]
fn single_failing_case_writes_nothing_and_says_why_last() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    let input = dir.path().join("input");
    std::fs::create_dir_all(input.join("images/ct")).unwrap();
    // A volume of air: no lungs.
    let air = volume::Volume::filled([64, 64, 32], [5.0, 5.0, 8.0], [0.0; 3], -1000.0);
    volume::write(&input.join("images/ct/air.mha"), &air, ElementType::Short).unwrap();
    let output = dir.path().join("output");
    let out = run(&input, &output, &weights, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains("air.mha") && last.to_lowercase().contains("lung"),
        "{last}"
    );
    assert!(!output.join("probability-covid-19.json").exists());
    assert!(!output.join("co-rads-score.json").exists());
}

#[test]
fn ensemble_errors_are_caught_before_compute() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    // A corrupted member: the hash no longer matches.
    let member = weights.join("member-00.safetensors");
    let mut bytes = std::fs::read(&member).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&member, bytes).unwrap();
    let out = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sha256") && stderr.contains("member-00.safetensors"),
        "{stderr}"
    );

    // Members of another architecture: every misfit tensor is named with both shapes.
    let sub = dir.path().join("x");
    std::fs::create_dir_all(&sub).unwrap();
    let other = make_ensemble(&sub, Head::Continuous, 1);
    let mut manifest: Manifest =
        serde_json::from_slice(&std::fs::read(other.join("ensemble.json")).unwrap()).unwrap();
    manifest.network.growth_rate = Some(6);
    std::fs::write(
        other.join("ensemble.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = ctgrade(&["ensemble", "check", s(&other)], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has shape") && stderr.contains("expected"),
        "{stderr}"
    );
}
