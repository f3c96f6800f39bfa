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
