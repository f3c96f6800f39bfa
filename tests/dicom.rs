//! The DICOM series reader against SimpleITK's ImageSeriesReader: golden series written by
//! tools/make_dicom_fixtures.py (each transfer syntax, shuffled names, feet first, oblique,
//! localizers, jitter, pydicom's real-scanner CT files), and the bad inputs it must refuse with
//! one line naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::{ctgrade, make_ensemble, run_args, write_series};
use ctgrade::grading::Head;
use ctgrade::volume::dicom::{self, folder_has_dicom, is_dicom_file};
use ctgrade::volume::{self, ElementType, ReadLimits, Volume};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// SimpleITK's pixel type name as an element type.
fn sitk_type(name: &str) -> ElementType {
    match name {
        "16-bit signed integer" => ElementType::Short,
        "32-bit signed integer" => ElementType::Int,
        "64-bit float" => ElementType::Double,
        other => panic!("pixel type {other} not expected in the fixtures"),
    }
}

/// Geometry to 1e-4, values exactly, against the reference `.mha` and `expected.json`.
fn assert_matches(name: &str, got: &Volume, ty: ElementType) {
    let reference = volume::read(&fixtures().join(format!("{name}.mha"))).unwrap();
    let exp = &expected()[name];
    assert_eq!(got.size, reference.size, "{name}: size");
    let sizes: Vec<usize> = floats(&exp["size"]).iter().map(|&x| x as usize).collect();
    assert_eq!(got.size.to_vec(), sizes, "{name}: size");
    for (what, a, b) in [
        ("spacing", got.spacing.to_vec(), floats(&exp["spacing"])),
        ("origin", got.origin.to_vec(), floats(&exp["origin"])),
        (
            "direction",
            got.direction.to_vec(),
            floats(&exp["direction"]),
        ),
    ] {
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "{name}: {what} {a:?} vs SimpleITK {b:?}");
    }
    assert_eq!(
        ty,
        sitk_type(exp["pixel_type"].as_str().unwrap()),
        "{name}: element type"
    );
    let mismatches = got
        .data
        .iter()
        .zip(&reference.data)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(mismatches, 0, "{name}: voxels differing from SimpleITK's");
}

fn read_fixture(name: &str) -> (Volume, ElementType) {
    volume::read_with_type(&fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn series_match_simpleitk() {
    for name in [
        "explicit",
        "implicit",
        "deflated",
        "rle",
        "jpeg_lossless",
        "jpeg_lossless_sv1",
        "bits12_high_bits_set",
        "signed12_slope2",
        "feet_first",
        "oblique",
        "jitter",
        "pydicom_ct5n",
        "pydicom_ct_small",
    ] {
        let (vol, ty) = read_fixture(name);
        assert_matches(name, &vol, ty);
    }
}

/// The same size and voxel values, and geometry (spacing, origin, direction) within `tol`.
fn assert_same_volume(dcm: &Volume, mha: &Volume, tol: f64) {
    assert_eq!(dcm.size, mha.size);
    assert_eq!(dcm.data, mha.data);
    for (a, b) in dcm
        .spacing
        .iter()
        .chain(&dcm.origin)
        .chain(&dcm.direction)
        .zip(mha.spacing.iter().chain(&mha.origin).chain(&mha.direction))
    {
        assert!((a - b).abs() < tol, "{dcm:?} vs {mha:?}");
    }
}

#[test]
fn same_volume_as_the_metaimage_it_was_made_from() {
    let (dcm, ty) = read_fixture("explicit");
    let mha = volume::read(&fixtures().join("source.mha")).unwrap();
    assert_eq!(ty, ElementType::Short);
    assert_same_volume(&dcm, &mha, 1e-4);
}

#[test]
fn localizers_are_left_out_with_warnings() {
    let series = dicom::read_series(&fixtures().join("scout"), &ReadLimits::default()).unwrap();
    assert_matches("scout", &series.volume, series.element_type);
    assert_eq!(series.files.len(), 8);
    let text = series.warnings.join("\n");
    assert_eq!(series.warnings.len(), 2, "{text}");
    assert!(text.contains("localizer series"), "{text}");
    assert!(text.contains("scout_in_series.dcm (32 x 8)"), "{text}");
}

#[test]
fn slices_are_ordered_by_position_not_name_or_instance_number() {
    // The feet-first series is named IM1..IM8 from the head down, and its normal points to the
    // feet: the first slice (the origin) is the highest one, IM1.
    let series =
        dicom::read_series(&fixtures().join("feet_first"), &ReadLimits::default()).unwrap();
    let names: Vec<String> = series
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["IM1", "IM2", "IM3", "IM4", "IM5", "IM6", "IM7", "IM8"]
    );
    assert_eq!(series.volume.direction[8], -1.0);
}

/// The error of reading `dir`, checked to be one line naming `names`.
fn error_of(dir: &Path, names: &str) -> String {
    let err = volume::read(dir).unwrap_err().to_string();
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(err.contains(names), "{err} does not name {names}");
    err
}

#[test]
fn a_missing_slice_is_refused_with_the_gap() {
    // SimpleITK reads it, with 7 slices spread over the 8 slices' extent (23.3 mm instead of 20).
    assert_eq!(expected()["missing_slice"]["spacing"][2], 70.0 / 3.0);
    let err = error_of(&fixtures().join("missing_slice"), "missing_slice");
    assert!(
        err.contains("not evenly spaced") && err.contains("40.0000 mm apart"),
        "{err}"
    );
    // A real scanner's series with one slice far from the others.
    let err = error_of(&fixtures().join("pydicom_ct2_gap"), "17106");
    assert!(err.contains("not evenly spaced"), "{err}");
}

/// A copy of the explicit series in a temporary folder.
fn explicit_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("explicit")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn bad(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("bad").join(name)).unwrap()
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    // Each bad slice alone in a folder (it is a series of its own).
    for (file, reason) in [
        ("no_pixel_data.dcm", "no pixel data"),
        (
            "short_pixel_data.dcm",
            "pixel data has 1024 bytes but the header implies 2048",
        ),
        (
            "too_small_for_its_size.dcm",
            "bytes, too few for the 16777216 pixels of 16 bits",
        ),
        (
            "huge_element.dcm",
            "element (0008,0001) claims 4294967280 bytes but only",
        ),
        (
            "unknown_syntax.dcm",
            "unsupported DICOM transfer syntax unknown (1.2.3.4.5.6.7)",
        ),
        (
            "jpeg_ls.dcm",
            "unsupported DICOM transfer syntax JPEG-LS Lossless",
        ),
        (
            "jpeg2000.dcm",
            "unsupported DICOM transfer syntax JPEG 2000 Lossless",
        ),
        ("mr.dcm", "modality is MR, not CT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file), bad(file)).unwrap();
        let err = error_of(dir.path(), file);
        assert!(err.contains(reason), "{file}: {err}");
    }
    // A truncated file: half of a good slice.
    let good = std::fs::read_dir(fixtures().join("explicit"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&good).unwrap();
    for len in [200, 700, bytes.len() / 2, bytes.len() - 1] {
        let dir = explicit_copy();
        let name = good.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.path().join(&name), &bytes[..len]).unwrap();
        error_of(dir.path(), &name);
    }
}

#[test]
fn bad_folders_are_refused() {
    let err = error_of(&fixtures().join("bad/two_series"), "two_series");
    assert!(err.contains("holds 2 CT series"), "{err}");
    assert_eq!(err.matches("(2 files)").count(), 2, "{err}");
    let err = error_of(&fixtures().join("bad/mixed_sizes"), "mixed_sizes");
    assert!(err.contains("no clear majority"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("notes.txt"), "not DICOM").unwrap();
    let err = error_of(empty.path(), "no DICOM file");
    assert!(!folder_has_dicom(empty.path()), "{err}");
}

#[test]
fn limits_are_checked_before_decoding() {
    let limits = ReadLimits {
        max_voxels: 32 * 32 * 7,
        ..ReadLimits::default()
    };
    let err = volume::read_with_limits(&fixtures().join("explicit"), &limits)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[32, 32, 8]") && err.contains("exceeds the limit"),
        "{err}"
    );
}

#[test]
fn files_are_recognised_by_content() {
    let scout = fixtures().join("scout");
    assert!(folder_has_dicom(&scout));
    assert!(is_dicom_file(&scout.join("scout_in_series.dcm")));
    // No extension: recognised all the same.
    assert!(is_dicom_file(&fixtures().join("pydicom_ct5n/2062")));
    assert!(!is_dicom_file(&fixtures().join("explicit.mha")));
    assert!(!is_dicom_file(&fixtures().join("explicit")));
    assert!(!folder_has_dicom(&fixtures()));
}

/// The real chest CT as a DICOM series gives the same volume and the same network input as its
/// `.mha` (so the same probability).
#[test]
fn real_ct_as_dicom_preprocesses_like_the_metaimage() {
    let mha = volume::read(&common::real_ct()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_series(&mha, dir.path());
    let dcm = volume::read(dir.path()).unwrap();
    assert_same_volume(&dcm, &mha, 1e-9);
    let spec = ctgrade::preprocess::InputSpec::default();
    let a = ctgrade::preprocess::preprocess(&dcm, None, &spec).unwrap();
    let b = ctgrade::preprocess::preprocess(&mha, None, &spec).unwrap();
    assert_eq!(a.shape, b.shape);
    let diff = a
        .input
        .iter()
        .zip(&b.input)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-6, "network inputs differ by {diff}");
}

/// `ctgrade train --data`: a sub-folder holding a DICOM series is the case named after it.
#[test]
fn a_series_folder_is_a_training_case() {
    let data = tempfile::tempdir().unwrap();
    let case = data.path().join("dcm-case");
    std::fs::create_dir(&case).unwrap();
    for entry in std::fs::read_dir(fixtures().join("explicit")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, case.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        fixtures().join("source.mha"),
        data.path().join("mha-case.mha"),
    )
    .unwrap();
    // A folder without DICOM files is no case.
    std::fs::create_dir(data.path().join("notes")).unwrap();
    let labels_path = data.path().join("labels.csv");
    std::fs::write(&labels_path, "case,co_rads\ndcm-case,3\nmha-case,2\n").unwrap();
    let labels = ctgrade::train::labels::read_labels(&labels_path).unwrap();
    let cases = ctgrade::train::data::find_cases(data.path(), &labels).unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].ct, case);
    assert_eq!(cases[1].ct, data.path().join("mha-case.mha"));
    std::fs::write(&labels_path, "case,co_rads\nnotes,3\n").unwrap();
    let labels = ctgrade::train::labels::read_labels(&labels_path).unwrap();
    let err = ctgrade::train::data::find_cases(data.path(), &labels).unwrap_err();
    assert!(err.to_string().contains("DICOM folder"), "{err}");
}

/// `ctgrade info DIR` reads the series.
#[test]
fn info_reads_a_series_folder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .arg("info")
        .arg(fixtures().join("feet_first"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["size"], serde_json::json!([32, 32, 8]));
    assert_eq!(info["origin"][2].as_f64(), Some(-597.5));
}

/// Inputs the `dicom` fuzz target found a problem with (one folder each), with the error each
/// gives now. `rle_segment_too_short`: dicom-rs 0.10's RLE decoder panicked indexing past a short
/// segment; `jpeg_frame_wider_than_image`: its JPEG adapter panicked copying a frame larger than
/// the image; the others made dicom-rs reserve and zero gigabytes for one element (a transfer
/// syntax UID labelled US, a meta group length labelled UI, a meta element running past the
/// group length, a (FFFE,200D) element with a value): the length check must refuse them before
/// dicom-object reads them.
#[test]
fn fuzz_regressions_give_clean_errors() {
    let dir = fixtures().join("fuzz_regressions");
    let expected = [
        (
            "group_length_with_vr_ui",
            "element (0002,0012) claims 4294967040 bytes",
        ),
        (
            "jpeg_frame_wider_than_image",
            "corrupt JPEG pixel data: a 65312 x 32 L16 frame",
        ),
        (
            "meta_element_past_group_length",
            "element (0000,0000) claims 4144244228 bytes",
        ),
        (
            "rle_segment_too_short",
            "corrupt RLE pixel data: segment 0 unpacks to 1022 bytes",
        ),
        (
            "transfer_syntax_with_vr_us",
            "element (4952,414D) claims 1279347032 bytes",
        ),
        (
            "unknown_item_tag_with_value",
            "element (FA03,4B02) claims 4278232320 bytes",
        ),
    ];
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let listed: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names, listed,
        "every regression folder has its expected error here"
    );
    for (name, reason) in expected {
        let case = dir.join(name);
        let err = volume::read(&case).unwrap_err().to_string();
        assert!(
            !err.contains('\n') && err.contains(&*case.to_string_lossy()) && err.contains(reason),
            "{name}: {err}"
        );
    }
}

/// One explicit VR little endian element (short or long length form by VR).
fn element(group: u16, elem: u16, vr: &[u8; 2], value_len: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(elem.to_le_bytes());
    out.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend([0, 0]);
        out.extend(value_len.to_le_bytes());
    } else {
        out.extend((value_len as u16).to_le_bytes());
    }
    out.extend(value);
    out
}

/// An item or delimiter header: (FFFE,xxxx) and a 4-byte length, no VR.
fn item(elem: u16, len: u32) -> Vec<u8> {
    let mut out = vec![0xFE, 0xFF];
    out.extend(elem.to_le_bytes());
    out.extend(len.to_le_bytes());
    out
}

/// A Part 10 file: preamble, `DICM`, a meta group naming `syntax`, then `data_set`.
fn part10(syntax: &str, data_set: &[u8]) -> Vec<u8> {
    let mut uid = syntax.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let meta = element(0x0002, 0x0010, b"UI", uid.len() as u32, &uid);
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    out.extend(element(
        0x0002,
        0x0000,
        b"UL",
        4,
        &(meta.len() as u32).to_le_bytes(),
    ));
    out.extend(meta);
    out.extend(data_set);
    out
}

/// A declared length beyond the end of the file is refused before dicom-object reserves it,
/// wherever the structure puts it: in a sequence item, in an item of defined length, as an
/// encapsulated pixel data fragment, as the basic offset table, or as an item's own length.
#[test]
fn lengths_beyond_the_file_are_refused_wherever_they_sit() {
    const HUGE: u32 = 0xF000_0000;
    let modality = element(0x0008, 0x0060, b"CS", 2, b"CT");
    let small = element(0x0010, 0x0010, b"PN", 4, b"A^B ");
    let huge = element(0x0009, 0x1001, b"OB", HUGE, &[1, 2, 3, 4]);
    let sequence = |items: &[u8]| {
        let mut seq = element(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF, &[]);
        seq.extend(items);
        seq.extend(item(0xE0DD, 0));
        seq
    };
    let undefined_item = |content: &[u8]| {
        let mut it = item(0xE000, 0xFFFF_FFFF);
        it.extend(content);
        it.extend(item(0xE00D, 0));
        it
    };
    let defined_item = |content: &[u8]| {
        let mut it = item(0xE000, content.len() as u32);
        it.extend(content);
        it
    };
    let encapsulated = |fragments: &[u8]| {
        let mut px = element(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF, &[]);
        px.extend(fragments);
        px.extend(item(0xE0DD, 0));
        px
    };
    let nested = [small.clone(), huge.clone()].concat();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "in_undefined_item",
            "1.2.840.10008.1.2.1",
            [modality.clone(), sequence(&undefined_item(&nested))].concat(),
        ),
        (
            "in_defined_item",
            "1.2.840.10008.1.2.1",
            [modality.clone(), sequence(&defined_item(&nested))].concat(),
        ),
        (
            "item_length",
            "1.2.840.10008.1.2.1",
            [
                modality.clone(),
                sequence(&item(0xE000, HUGE)),
                small.clone(),
            ]
            .concat(),
        ),
        (
            "fragment",
            "1.2.840.10008.1.2.4.70",
            [
                modality.clone(),
                encapsulated(&[item(0xE000, 0), item(0xE000, HUGE), vec![0; 16]].concat()),
            ]
            .concat(),
        ),
        (
            "offset_table",
            "1.2.840.10008.1.2.4.70",
            [
                modality.clone(),
                encapsulated(&[item(0xE000, HUGE), vec![0; 16]].concat()),
            ]
            .concat(),
        ),
    ];
    for (name, syntax, data_set) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.dcm"));
        std::fs::write(&file, part10(syntax, &data_set)).unwrap();
        let err = volume::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&*file.to_string_lossy()) && err.contains(&format!("claims {HUGE} bytes")),
            "{name}: {err}"
        );
    }
}

#[test]
fn sheared_stacks_and_duplicate_slices_are_refused() {
    // SimpleITK reads the sheared stack with the slice normal as its z axis and a spacing of
    // 20.6 mm, placing every slice 5 mm per slice away from its true position.
    assert_eq!(expected()["sheared"]["direction"][8], 1.0);
    let err = error_of(&fixtures().join("sheared"), "sheared");
    assert!(err.contains("14.04 degrees off their normal"), "{err}");
    let dir = explicit_copy();
    let first = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, dir.path().join("copy.dcm")).unwrap();
    let err = error_of(dir.path(), "copy.dcm");
    assert!(err.contains("at the same slice position"), "{err}");
}

/// `ctgrade run` on DICOM: the platform's DICOM image set socket (`images/ct/<SOP UID>.dcm` with
/// an `inputs.json` of kind "DICOM Image Set"), the same folder without `inputs.json`, and a local
/// batch with a series sub-folder beside a `.mha` all give the answer the `.mha` gives.
#[test]
fn run_grades_dicom_sockets_and_series_folders_like_the_mha() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let weights = make_ensemble(root, Head::Continuous, 2);
    let (ct, _) = ctgrade::synth::phantom(&ctgrade::synth::PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed: 5,
        co_rads: 4,
    })
    .unwrap();
    let probability = |out: &Path| {
        let file = out.join("probability-covid-19.json");
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };

    let mha_in = root.join("mha");
    std::fs::create_dir_all(mha_in.join("images/ct")).unwrap();
    volume::write(&mha_in.join("images/ct/7e1d.mha"), &ct, ElementType::Short).unwrap();
    let out = ctgrade(&run_args(&mha_in, &root.join("out-mha"), &weights), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = probability(&root.join("out-mha"));

    let socket = root.join("socket");
    std::fs::create_dir_all(socket.join("images/ct")).unwrap();
    write_series(&ct, &socket.join("images/ct"));
    for (i, inputs_json) in [
        Some(
            r#"[{"pk": "0c2a", "socket": {"slug": "ct-image", "kind": "DICOM Image Set",
            "super_kind": "Image", "relative_path": "images/ct"}, "value": null, "file": null,
            "image": {"pk": "5c1e9a70", "name": "chest-series"}}]"#,
        ),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let _ = std::fs::remove_file(socket.join("inputs.json"));
        if let Some(json) = inputs_json {
            std::fs::write(socket.join("inputs.json"), json).unwrap();
        }
        let output = root.join(format!("out-socket-{i}"));
        let out = ctgrade(&run_args(&socket, &output, &weights), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("grand-challenge socket layout"), "{stderr}");
        let name = if i == 0 {
            "5c1e9a70 (uploaded as chest-series)"
        } else {
            "ct"
        };
        assert!(stderr.contains(&format!("{name}: read")), "{stderr}");
        assert_eq!(probability(&output), expected);
    }

    let batch = root.join("batch");
    std::fs::create_dir_all(batch.join("patient-a")).unwrap();
    write_series(&ct, &batch.join("patient-a"));
    volume::write(&batch.join("b.mha"), &ct, ElementType::Short).unwrap();
    std::fs::create_dir_all(batch.join("notes")).unwrap();
    std::fs::write(batch.join("notes/readme.txt"), "not a series").unwrap();
    let output = root.join("out-batch");
    let out = ctgrade(&run_args(&batch, &output, &weights), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(probability(&output.join("patient-a")), expected);
    assert_eq!(probability(&output.join("b")), expected);
    assert!(!output.join("notes").exists());

    // A series folder given as the input folder itself is one case named after it (the legacy
    // layout: the answer is in results.json).
    let output = root.join("out-folder");
    let out = ctgrade(&run_args(&batch.join("patient-a"), &output, &weights), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("patient-a: read"), "{stderr}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(
        results[0]["outputs"][0]["value"].to_string(),
        expected.trim()
    );
}
