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

/// One scan directly in the input folder is graded as any folder of scans: its own folder with
/// the socket files (and the spread), the summaries, and the legacy results.json; the evaluator
/// reads the folder and results.json alike.
#[test]
fn a_single_scan_in_the_folder_is_a_batch_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 2);
    let input = dir.path().join("input");
    write_phantom(&input.join("a.mha"), 4, 3);
    let output = dir.path().join("output");
    let out = run(&input, &output, &weights, &["--spread"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(output.join(f)).unwrap();
    let p: f64 = read("a/probability-covid-19.json").trim().parse().unwrap();
    let spread: f64 = read("a/probability-covid-19-spread.json")
        .trim()
        .parse()
        .unwrap();
    assert!(spread >= 0.0);
    assert!(output.join("a/co-rads-score.json").is_file());
    assert!(output.join("summary.csv").is_file());
    for source in [
        output.clone(),
        output.join("results.json"),
        output.join("summary.json"),
    ] {
        let set = ctgrade_eval::load_predictions(&source).unwrap();
        assert_eq!(set.predictions.len(), 1, "{}", source.display());
        assert_eq!(set.predictions[0].case, "a");
        assert!((set.predictions[0].probability - p).abs() < 1e-12);
    }
}

/// A wrong `--output` fails at once, naming it, before any case is graded.
#[test]
fn output_that_is_a_file_fails_before_grading() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    let input = dir.path().join("input");
    write_phantom(&input.join("images/ct/case-1.mha"), 1, 4);
    let output = dir.path().join("taken");
    std::fs::write(&output, b"not a folder").unwrap();
    let out = run(&input, &output, &weights, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains(s(&output)) && last.contains("exists and is not a folder"),
        "{last}"
    );
    assert!(
        !stderr.contains("member 1/1"),
        "a case was graded: {stderr}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"not a folder");
}

/// An operating-system error appears once in the line a user reads.
#[test]
fn os_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    let out = dir.path().join("out");
    for args in [
        run_args(&missing, &out, &weights),
        vec!["info", s(&missing)],
        vec![
            "segment",
            "--model",
            s(&missing),
            "--input",
            s(&missing),
            "--output",
            s(&out),
        ],
    ] {
        let out = ctgrade(&args, &[]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(s(&missing)), "{stderr}");
        assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    }
}

/// On the platform the CT is stored as images/ct/<uuid>.mha: the line the submitter reads names
/// the file they uploaded (from inputs.json) first.
#[test]
fn failure_line_names_the_uploaded_file() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    let input = dir.path().join("input");
    let uuid = "0b6c6f1e-2d5a-4c1b-9e3f-7a8d9c0b1e2f";
    std::fs::create_dir_all(input.join("images/ct")).unwrap();
    std::fs::write(
        input.join(format!("images/ct/{uuid}.mha")),
        b"ObjectType = Image\nNDims = 3\n",
    )
    .unwrap();
    let inputs = serde_json::json!([{
        "pk": 1,
        "socket": {"slug": "ct-image", "kind": "Image", "super_kind": "Image",
                   "relative_path": "images/ct"},
        "image": {"pk": uuid, "name": "patient_017.mha"},
    }]);
    std::fs::write(input.join("inputs.json"), inputs.to_string()).unwrap();
    let out = run(&input, &dir.path().join("output"), &weights, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.starts_with("patient_017.mha (stored as "), "{last}");
    assert!(last.contains(&format!("{uuid}.mha")), "{last}");
}

/// Every accepted input is in the help texts: DICOM folders too.
#[test]
fn help_texts_list_dicom_folders() {
    for (command, needle) in [
        ("info", "FILE|DIR"),
        ("preprocess", "FILE|DIR"),
        ("run", "DICOM"),
    ] {
        let out = ctgrade(&[command, "--help"], &[]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains(needle),
            "{command}: {help}"
        );
        assert!(help.contains("DICOM"), "{command}: {help}");
    }
}
