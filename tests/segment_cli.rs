//! `ctgrade segment` end to end on the nnU-Net fixtures (tools/make_nnunet_fixtures.py): the
//! files it writes, and its one-line errors.

use std::path::Path;
use std::process::Command;

const FIX: &str = "tests/fixtures/nnunet";

fn ctgrade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args(args)
        .output()
        .expect("run ctgrade")
}

#[test]
fn segment_writes_nnunets_labels_and_the_probabilities_on_the_cts_grid() {
    let out = tempfile::tempdir().expect("tempdir");
    let input = tempfile::tempdir().expect("tempdir");
    // A folder input, with nnU-Net's channel suffix.
    std::fs::copy(
        Path::new(FIX).join("ct.mha"),
        input.path().join("case1_0000.mha"),
    )
    .expect("copy");
    let o = ctgrade(&[
        "segment",
        "--model",
        &format!("{FIX}/resenc"),
        "--input",
        input.path().to_str().expect("utf-8"),
        "--output",
        out.path().to_str().expect("utf-8"),
        "--no-mirroring",
        "--probabilities",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.contains("\"case\":\"case1\""), "{line}");
    let ct = ctgrade::volume::read(&Path::new(FIX).join("ct.mha")).expect("ct");
    let (labels, ty) =
        ctgrade::volume::read_with_type(&out.path().join("case1.mha")).expect("labels");
    assert_eq!(ty, ctgrade::volume::ElementType::UChar);
    assert_eq!(
        (labels.size, labels.spacing, labels.origin, labels.direction),
        (ct.size, ct.spacing, ct.origin, ct.direction)
    );
    let want = ctgrade::volume::read(&Path::new(FIX).join("resenc_nomirror_seg.mha")).expect("seg");
    assert_eq!(labels.data, want.data);
    let probs = std::fs::read(out.path().join("case1-probabilities.mha")).expect("probabilities");
    let header = String::from_utf8_lossy(&probs[..probs.len().min(600)]);
    assert!(header.contains("ElementNumberOfChannels = 2"), "{header}");
    assert!(header.contains("ElementType = MET_FLOAT"), "{header}");
}

#[test]
fn segment_names_a_missing_fold_and_writes_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("out");
    let o = ctgrade(&[
        "segment",
        "--model",
        &format!("{FIX}/plain"),
        "--input",
        &format!("{FIX}/ct.mha"),
        "--output",
        dest.to_str().expect("utf-8"),
        "--folds",
        "0,5",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fold_5"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dest.exists(), "nothing written");
}

/// `ctgrade convert --from-nnunet` of the fixture `model` (with `extra` arguments) into `out`,
/// which must succeed; returns the manifest it prints.
fn convert_to_compact(model: &str, extra: &[&str], out: &Path) -> serde_json::Value {
    let from = format!("{FIX}/{model}");
    let mut args = vec!["convert", "--from-nnunet", &from];
    args.extend(extra);
    args.extend(["--out", out.to_str().expect("utf-8")]);
    let o = ctgrade(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// `convert --from-nnunet` writes the compact form, which `segment` runs to the same bytes as
/// the nnU-Net folder it came from (resenc: a configuration that inherits from another).
#[test]
fn the_compact_form_segments_like_the_nnunet_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let compact = tmp.path().join("compact");
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let manifest = convert_to_compact("resenc", &[], &compact);
    assert_eq!(manifest["configuration"], "3d_fullres_resenc");
    assert_eq!(manifest["folds"][0]["file"], "fold_0.safetensors");
    let plans: serde_json::Value =
        serde_json::from_slice(&std::fs::read(compact.join("plans.json")).expect("plans"))
            .expect("json");
    let configs = plans["configurations"].as_object().expect("configurations");
    assert_eq!(configs.len(), 1);
    assert!(configs["3d_fullres_resenc"].get("inherits_from").is_none());
    let size = |p: &Path| std::fs::metadata(p).expect("size").len();
    assert!(
        size(&compact.join("fold_0.safetensors"))
            < size(&Path::new(FIX).join("resenc/fold_0/checkpoint_final.pth"))
    );

    let mut outs = Vec::new();
    for (name, model) in [("a", format!("{FIX}/resenc")), ("b", s(&compact))] {
        let out = tmp.path().join(name);
        let o = ctgrade(&[
            "segment",
            "--model",
            &model,
            "--input",
            &format!("{FIX}/ct.mha"),
            "--output",
            &s(&out),
            "--no-mirroring",
            "--probabilities",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    for f in ["ct.mha", "ct-probabilities.mha"] {
        assert_eq!(
            std::fs::read(outs[0].join(f)).expect("a"),
            std::fs::read(outs[1].join(f)).expect("b"),
            "{f}"
        );
    }
}

/// A compact weights file that is not the one converted is refused by its digest, naming it.
#[test]
fn a_changed_compact_weights_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let compact = tmp.path().join("compact");
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    convert_to_compact("plain", &["--folds", "1"], &compact);
    let weights = compact.join("fold_1.safetensors");
    let mut bytes = std::fs::read(&weights).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).expect("write");
    let out = tmp.path().join("out");
    let o = ctgrade(&[
        "segment",
        "--model",
        &s(&compact),
        "--input",
        &format!("{FIX}/ct.mha"),
        "--output",
        &s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fold_1.safetensors") && err.contains("sha256"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A fold the compact form does not hold is named.
    let o = ctgrade(&[
        "segment",
        "--model",
        &s(&compact),
        "--folds",
        "0",
        "--input",
        &format!("{FIX}/ct.mha"),
        "--output",
        &s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no fold_0"), "{err}");
    assert!(!out.join("ct.mha").exists());
}
