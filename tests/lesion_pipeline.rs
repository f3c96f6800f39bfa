//! The paper's full model on the platform: an ensemble whose manifest names a lesion model (an
//! nnU-Net v2 trained-model folder inside the ensemble) computes the lesion channel itself. Its
//! answers equal `ctgrade segment` followed by `ctgrade run` with that map as the lesion socket;
//! a bad lesion model is refused when the ensemble is opened, naming the field.

mod common;

use std::path::Path;

use common::{
    assert_same_files, ctgrade, lesion_model, make_lesion_ensemble as make_ensemble, random_member,
    run_args, run_ok, s, tiny_network, tiny_spec,
};
use ctgrade::grading::Head;
use ctgrade::preprocess::ChannelLayout;
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType};

fn write_phantom(path: &Path) {
    write_phantom_sized(path, [96, 96, 48], [3.5, 3.5, 6.0]);
}

fn write_phantom_sized(path: &Path, size: [usize; 3], spacing: [f64; 3]) {
    let cfg = PhantomConfig {
        size,
        spacing,
        seed: 5,
        co_rads: 5,
    };
    let (ct, _) = phantom(&cfg).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    volume::write(path, &ct, ElementType::Short).unwrap();
}

/// `ctgrade run --lesion-segmentation` of `input` into `out`, which must compute the lesion map
/// with the ensemble's lesion model; the lesion labels it wrote, checked to be on the CT's grid.
fn run_computing_lesions(input: &Path, out: &Path, weights: &Path) -> volume::Volume {
    let mut args = run_args(input, out, weights);
    args.push("--lesion-segmentation");
    let run = ctgrade(&args, &[]);
    let log = stderr(&run);
    assert!(run.status.success(), "{log}");
    assert!(log.contains("lesion map computed by lesion"), "{log}");
    let labels = volume::read(&out.join("images/covid-19-lesion-segmentation/case.mha")).unwrap();
    let ct = volume::read(&input.join("images/ct/case.mha")).unwrap();
    assert_eq!((labels.size, labels.spacing), (ct.size, ct.spacing));
    labels
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn computed_lesion_channel_equals_segment_then_run() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Some(&[1, 2]), false);
    let check = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    assert!(check.status.success(), "{}", stderr(&check));

    // The platform gives only the CT: the lesion model runs inside `run`.
    let input = dir.path().join("input");
    write_phantom(&input.join("images/ct/case.mha"));
    let computed = dir.path().join("computed");
    let labels = run_computing_lesions(&input, &computed, &weights);

    // The same model through `ctgrade segment`, its labels reduced to the union of the lesion
    // labels and given to `run` as the lesion socket.
    let segmented = dir.path().join("segmented");
    let seg = ctgrade(
        &[
            "segment",
            "--model",
            s(&weights.join("lesion")),
            "--input",
            s(&input.join("images/ct/case.mha")),
            "--output",
            s(&segmented),
        ],
        &[],
    );
    assert!(seg.status.success(), "{}", stderr(&seg));
    let mut union = volume::read(&segmented.join("case.mha")).unwrap();
    assert_eq!(union.data, labels.data, "run and segment segment alike");
    for v in &mut union.data {
        *v = f32::from(*v == 1.0 || *v == 2.0);
    }
    let lesions = union.data.iter().filter(|&&v| v > 0.0).count();
    assert!(
        lesions > 0 && lesions < union.data.len(),
        "{lesions} lesion voxels"
    );
    let given_input = dir.path().join("given-input");
    write_phantom(&given_input.join("images/ct/case.mha"));
    std::fs::create_dir_all(given_input.join("images/covid-19-lesion-segmentation")).unwrap();
    volume::write(
        &given_input.join("images/covid-19-lesion-segmentation/case.mha"),
        &union,
        ElementType::UChar,
    )
    .unwrap();
    let given = dir.path().join("given");
    let log = run_ok(&given_input, &given, &weights);
    assert!(
        log.contains("lesion map given; the ensemble's lesion model is not run"),
        "{log}"
    );
    assert_same_files(
        &computed,
        &given,
        &[
            "probability-covid-19.json",
            "co-rads-score.json",
            "percentage-of-lung-affected.json",
        ],
    );
    let affected: f64 = std::fs::read_to_string(computed.join("percentage-of-lung-affected.json"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((0.0..=100.0).contains(&affected), "{affected}");
}

/// A lesion model that does not fit is refused when the ensemble is opened, naming the field.
#[test]
fn bad_lesion_models_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Some(&[1, 2]), false);
    let manifest_path = weights.join("ensemble.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        (
            "unknown label",
            serde_json::json!({"path": "lesion", "lesion_labels": [1, 7]}),
            "lesion_labels: 7 is not a foreground label",
        ),
        (
            "background",
            serde_json::json!({"path": "lesion", "lesion_labels": [0]}),
            "lesion_labels: 0 is not a foreground label",
        ),
        (
            "outside the ensemble",
            serde_json::json!({"path": "../lesion", "lesion_labels": [1]}),
            "must be a folder inside the ensemble's folder",
        ),
        (
            "missing folder",
            serde_json::json!({"path": "nowhere", "lesion_labels": [1]}),
            "nowhere: no such folder",
        ),
        (
            "unknown field",
            serde_json::json!({"path": "lesion", "lesion_labels": [1], "labels": [1]}),
            "unknown field `labels`",
        ),
    ];
    for (what, spec, expected) in cases {
        let mut m = good.clone();
        m["lesion_model"] = spec;
        std::fs::write(&manifest_path, m.to_string()).unwrap();
        let out = ctgrade(&["ensemble", "check", s(&weights)], &[]);
        let log = stderr(&out);
        assert!(!out.status.success(), "{what}: accepted");
        let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(last.contains(expected), "{what}: {last}");
    }
    // A model whose input layout takes no lesion map.
    let mut m = good.clone();
    m["input"]["channels"] = serde_json::json!("ct_x3");
    std::fs::write(&manifest_path, m.to_string()).unwrap();
    let out = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    assert!(
        stderr(&out).contains("takes no lesion map"),
        "{}",
        stderr(&out)
    );
    // A checkpoint that does not fit the plans: refused with the file.
    std::fs::write(&manifest_path, good.to_string()).unwrap();
    let plans_path = weights.join("lesion/plans.json");
    let mut plans: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plans_path).unwrap()).unwrap();
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] =
        serde_json::json!([8, 16, 24, 32]);
    std::fs::write(&plans_path, plans.to_string()).unwrap();
    let out = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    let log = stderr(&out);
    assert!(!out.status.success());
    assert!(
        log.contains("checkpoint_final.pth") && log.contains("network_weights"),
        "{log}"
    );
}

/// `ctgrade ensemble new` of one random member with the lesion model `source` and its
/// `labels`, into `out`.
fn ensemble_new(dir: &Path, source: &Path, labels: &str, out: &Path) {
    let member = random_member(
        &tiny_network(Head::Continuous),
        &dir.join("member.safetensors"),
    );
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"growth_rate": 4, "block_config": [1, 1], "bn_size": 2, "init_features": 8}"#,
    )
    .unwrap();
    let spec = dir.join("spec.json");
    let input = ctgrade::preprocess::InputSpec {
        channels: ChannelLayout::CtLesionZeros,
        ..tiny_spec()
    };
    std::fs::write(&spec, serde_json::to_string(&input).unwrap()).unwrap();
    let made = ctgrade(
        &[
            "ensemble",
            "new",
            "--arch",
            "densenet121-3d",
            "--config",
            s(&config),
            "--input-spec",
            s(&spec),
            "--members",
            s(&member),
            "--lesion-model",
            s(source),
            "--lesion-labels",
            labels,
            "--out",
            s(out),
        ],
        &[],
    );
    assert!(made.status.success(), "{}", stderr(&made));
}

/// `ensemble new --lesion-model DIR --lesion-labels 1,2` copies the nnU-Net folder into the
/// ensemble (only what prediction needs) and writes the manifest field; the result passes
/// `ensemble check`.
#[test]
fn ensemble_new_takes_a_lesion_model() {
    let dir = tempfile::tempdir().unwrap();
    let source = lesion_model(dir.path());
    std::fs::write(source.join("fold_0/debug.json"), "{}").unwrap();
    let out = dir.path().join("made");
    ensemble_new(dir.path(), &source, "1,2", &out);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ensemble.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["lesion_model"],
        serde_json::json!({"path": "lesion", "lesion_labels": [1, 2]})
    );
    for f in [
        "dataset.json",
        "plans.json",
        "fold_0.safetensors",
        "fold_1.safetensors",
        "ctgrade-nnunet.json",
    ] {
        assert!(out.join("lesion").join(f).is_file(), "{f}");
    }
    assert!(!out.join("lesion/fold_0").exists());
    let check = ctgrade(&["ensemble", "check", s(&out)], &[]);
    let log = stderr(&check);
    assert!(check.status.success(), "{log}");
    assert!(
        log.contains("lesion model lesion (2 fold(s), configuration 3d_fullres"),
        "{log}"
    );
}

/// An nnU-Net v1 lesion model (as the public COVID-19-20 models are) goes into an ensemble in
/// ctgrade's compact form, and `run` computes the lesion map with it.
#[test]
fn a_v1_lesion_model_runs_inside_run() {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nnunet_v1/stage1");
    let weights = dir.path().join("made");
    ensemble_new(dir.path(), &source, "1", &weights);
    for f in [
        "plans.json",
        "dataset.json",
        "fold_0.safetensors",
        "ctgrade-nnunet.json",
    ] {
        assert!(weights.join("lesion").join(f).is_file(), "{f}");
    }
    let input = dir.path().join("input");
    write_phantom_sized(
        &input.join("images/ct/case.mha"),
        [64, 64, 32],
        [5.0, 5.0, 6.0],
    );
    let labels = run_computing_lesions(&input, &dir.path().join("computed"), &weights);
    // The labels of the v1 model (0 background, 1 lesion); that they are what nnU-Net v1
    // predicts is tests/nnunet_parity.rs' part (v1::predictions_match_predict_cases).
    assert!(labels.data.iter().all(|&v| v == 0.0 || v == 1.0));
    assert!(labels.data.contains(&1.0));
}

/// With a lobe model, `run` writes the CT severity score: each lobe scored by the share of it
/// the lesion map covers, as counted here from `ctgrade segment`'s lobes and the lesion labels
/// `run` wrote; the summary carries the per-lobe shares and the per-lung figures.
#[test]
fn a_lobe_model_gives_the_ct_severity_score() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Some(&[1, 2]), true);
    let check = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("lobe model lobes"),
        "{}",
        stderr(&check)
    );

    let input = dir.path().join("input");
    write_phantom(&input.join("case.mha"));
    let out = dir.path().join("out");
    let mut args = run_args(&input, &out, &weights);
    args.extend(["--lesion-segmentation", "--report"]);
    let run = ctgrade(&args, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let score: u8 = std::fs::read_to_string(out.join("case/ct-severity-score.json"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let lobes_out = dir.path().join("lobes");
    let seg = ctgrade(
        &[
            "segment",
            "--model",
            s(&weights.join("lobes")),
            "--input",
            s(&input.join("case.mha")),
            "--output",
            s(&lobes_out),
        ],
        &[],
    );
    assert!(seg.status.success(), "{}", stderr(&seg));
    let lobes = volume::read(&lobes_out.join("case.mha")).unwrap();
    let lesion_labels =
        volume::read(&out.join("images/covid-19-lesion-segmentation/case.mha")).unwrap();
    let mut want_shares = Vec::new();
    let mut want_score = 0u8;
    for lobe in 1..=5 {
        let (mut n, mut hit) = (0usize, 0usize);
        for (&l, &s) in lobes.data.iter().zip(&lesion_labels.data) {
            if l == lobe as f32 {
                n += 1;
                hit += usize::from(s == 1.0 || s == 2.0);
            }
        }
        let share = if n == 0 {
            0.0
        } else {
            100.0 * hit as f64 / n as f64
        };
        want_score += match share {
            0.0 => 0,
            p if p < 5.0 => 1,
            p if p <= 25.0 => 2,
            p if p <= 50.0 => 3,
            p if p <= 75.0 => 4,
            _ => 5,
        };
        want_shares.push(share);
    }
    assert_eq!(score, want_score);
    assert!(
        lobes.data.iter().any(|&v| v > 0.0),
        "the random lobe model labels some voxels as lobes"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let lesions = &summary["cases"][0]["lesions"];
    let shares: Vec<f64> = lesions["lobes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["affected_pct"].as_f64().unwrap())
        .collect();
    for (got, want) in shares.iter().zip(&want_shares) {
        assert!((got - want).abs() < 1e-9, "{shares:?} vs {want_shares:?}");
    }
    assert_eq!(lesions["ct_severity_score"], score);
    let lungs = lesions["lung_affected_pct"].as_f64().unwrap();
    let affected: f64 = std::fs::read_to_string(out.join("case/percentage-of-lung-affected.json"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(lungs, affected);
    // The phantom's lungs are two components: per-lung figures, bracketing the whole.
    let right = lesions["right_lung_affected_pct"].as_f64().unwrap();
    let left = lesions["left_lung_affected_pct"].as_f64().unwrap();
    assert!(
        right.min(left) <= lungs && lungs <= right.max(left),
        "{lesions}"
    );
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with("ct_severity_score,lobe_affected_pct"));
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("CT severity score") && report.contains("lesion outlines"));

    // A lobe model whose labels do not name all five lobes is refused at load.
    let dataset_path = weights.join("lobes/dataset.json");
    let mut dataset: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dataset_path).unwrap()).unwrap();
    dataset["labels"] =
        serde_json::json!({"background": 0, "RUL": 1, "RML": 2, "RLL": 3, "LUL": 4, "airway": 5});
    std::fs::write(&dataset_path, dataset.to_string()).unwrap();
    let check = ctgrade(&["ensemble", "check", s(&weights)], &[]);
    let log = stderr(&check);
    assert!(!check.status.success());
    assert!(
        log.contains("lobe model")
            && log.contains("dataset.json: labels: no label names the left lower lobe"),
        "{log}"
    );
}

/// Under a memory budget the segmenters' estimate is held to it before they run: a budget that
/// grades the scan with a given lesion map refuses it, with the reason, when the lesion model
/// would have to run; nothing is written for the refused case.
#[test]
fn segmenters_are_held_to_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Some(&[1, 2]), false);
    let budget = [("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB", "520")];

    let input = dir.path().join("input");
    write_phantom(&input.join("images/ct/case.mha"));
    let out = dir.path().join("out");
    let run = ctgrade(&run_args(&input, &out, &weights), &budget);
    let log = stderr(&run);
    assert!(!run.status.success(), "{log}");
    let last = log.trim().lines().last().unwrap();
    assert!(
        last.contains("case.mha") && last.contains("the ensemble's segmenters would need about"),
        "{last}"
    );
    assert!(!out.join("probability-covid-19.json").exists());

    // The same scan with its lesion map given: nothing to segment, graded within the budget.
    let lesion_dir = input.join("images/covid-19-lesion-segmentation");
    std::fs::create_dir_all(&lesion_dir).unwrap();
    let ct = volume::read(&input.join("images/ct/case.mha")).unwrap();
    let mut map = ct.clone();
    map.data.iter_mut().for_each(|v| *v = 0.0);
    volume::write(&lesion_dir.join("case.mha"), &map, ElementType::UChar).unwrap();
    let run = ctgrade(&run_args(&input, &out, &weights), &budget);
    assert!(run.status.success(), "{}", stderr(&run));
}

/// A lesion socket file that is not on the CT's grid fails the case with one line naming the
/// lesion file, before any segmenter runs (the lobe model would otherwise run first).
#[test]
fn a_misshapen_lesion_socket_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Some(&[1, 2]), true);
    let input = dir.path().join("input");
    write_phantom(&input.join("images/ct/case.mha"));
    let lesion = input.join("images/covid-19-lesion-segmentation/map.mha");
    std::fs::create_dir_all(lesion.parent().unwrap()).unwrap();
    let mut map = volume::read(&input.join("images/ct/case.mha")).unwrap();
    map.size[2] -= 1;
    map.data.truncate(map.size.iter().product());
    volume::write(&lesion, &map, ElementType::UChar).unwrap();
    let out = dir.path().join("out");
    let run = ctgrade(&run_args(&input, &out, &weights), &[]);
    let log = stderr(&run);
    assert!(!run.status.success(), "{log}");
    let last = log.trim().lines().last().unwrap();
    assert!(
        last.contains("map.mha") && last.contains("differs from the CT's"),
        "{last}"
    );
    assert!(!log.contains("lesion map computed"), "{log}");
    assert!(!out.join("probability-covid-19.json").exists());
}
