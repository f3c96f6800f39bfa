//! Helpers shared by the test suites: a small random-weight ensemble on a coarse input, running
//! the `ctgrade` binary, and comparing tensors.

// Each suite uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ctgrade::ensemble::{self, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::{self, Arch, NetworkConfig};
use ctgrade::preprocess::{ChannelLayout, InputSpec};
use ctgrade::volume::Volume;

/// The real chest CT held in the repository (`tests/data/real_ct/README.md`: source, licence).
pub fn real_ct() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real_ct/lung1.mha")
}

/// A tiny 3-D DenseNet: the pipeline is under test, not the network.
pub fn tiny_network(head: Head) -> NetworkConfig {
    NetworkConfig {
        growth_rate: Some(4),
        block_config: Some(vec![1, 1]),
        bn_size: Some(2),
        init_features: Some(8),
        ..NetworkConfig::new(Arch::DenseNet121_3d, 3, head.num_outputs())
    }
}

/// A coarse input so a case runs in a fraction of a second: 6 mm voxels, 48 x 48 x 16.
pub fn tiny_spec() -> InputSpec {
    InputSpec {
        spacing_mm: 6.0,
        crop_xy: [48, 48],
        slices: 16,
        hu_window: [-1100.0, 300.0],
        z_margin_mm: 10.0,
        channels: ChannelLayout::CtX3,
    }
}

/// Writes a member of random weights (the constructor's initialisation) for `network` to `path`.
pub fn random_member(network: &NetworkConfig, path: &Path) -> PathBuf {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    model::build(network, vb).unwrap();
    varmap.save(path).unwrap();
    path.to_path_buf()
}

/// Writes an ensemble of `members` random-weight tiny networks to `dir/ensemble` and returns it.
pub fn make_ensemble(dir: &Path, head: Head, members: usize) -> PathBuf {
    let network = tiny_network(head);
    let files: Vec<PathBuf> = (0..members)
        .map(|i| random_member(&network, &dir.join(format!("random-{i}.safetensors"))))
        .collect();
    let out = dir.join("ensemble");
    let manifest = Manifest {
        name: "test".into(),
        description: "random weights for pipeline tests".into(),
        demonstration: false,
        network,
        head,
        input: tiny_spec(),
        members: Vec::new(),
        lesion_model: None,
        lobe_model: None,
    };
    ensemble::create(&out, manifest, &files).unwrap();
    out
}

/// Runs the `ctgrade` binary with `args` and `env`, the memory and voxel limits of the calling
/// environment removed.
pub fn ctgrade(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args(args)
        .env_remove("CTGRADE_MAX_VOXELS")
        .env_remove("GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `ctgrade run` on the CPU that must succeed; returns its stderr.
pub fn run_ok(input: &Path, output: &Path, weights: &Path) -> String {
    let out = ctgrade(&run_args(input, output, weights), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Asserts that `files` hold the same bytes in folders `a` and `b`.
pub fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The arguments of `ctgrade run` on the CPU with the given folders.
pub fn run_args<'a>(input: &'a Path, output: &'a Path, weights: &'a Path) -> Vec<&'a str> {
    vec![
        "run",
        "--input",
        s(input),
        "--output",
        s(output),
        "--weights",
        s(weights),
        "--device",
        "cpu",
    ]
}

/// The largest absolute difference between two tensors of the same shape (any float dtype).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Writes `vol` (integer HU, axis-aligned) as a DICOM series of signed 16-bit explicit VR
/// little endian slices into `dir`, with dicom-object, file names in reverse slice order.
pub fn write_series(vol: &Volume, dir: &Path) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    let [nx, ny, nz] = vol.size;
    let ds = |x: f64| format!("{x:.10}");
    for z in 0..nz {
        let p = vol.index_to_physical([0.0, 0.0, z as f64]);
        let uid = format!("1.2.826.0.1.3680043.10.1717.9.{z}");
        let pixels: Vec<u16> = vol.data[z * nx * ny..(z + 1) * nx * ny]
            .iter()
            .map(|&v| v as i16 as u16)
            .collect();
        let mut obj = InMemDicomObject::new_empty();
        let text = |tag, vr, value: String| DataElement::new(tag, vr, PrimitiveValue::from(value));
        for e in [
            text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE.into()),
            text(tags::SOP_INSTANCE_UID, VR::UI, uid.clone()),
            text(tags::MODALITY, VR::CS, "CT".into()),
            text(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                "1.2.826.0.1.3680043.10.1717.9".into(),
            ),
            text(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                format!("{}\\{}\\{}", ds(p[0]), ds(p[1]), ds(p[2])),
            ),
            text(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                "1\\0\\0\\0\\1\\0".into(),
            ),
            text(
                tags::PIXEL_SPACING,
                VR::DS,
                format!("{}\\{}", ds(vol.spacing[1]), ds(vol.spacing[0])),
            ),
            text(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "MONOCHROME2".into(),
            ),
        ] {
            obj.put(e);
        }
        for (tag, value) in [
            (tags::ROWS, ny as u16),
            (tags::COLUMNS, nx as u16),
            (tags::SAMPLES_PER_PIXEL, 1),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, 16),
            (tags::HIGH_BIT, 15),
            (tags::PIXEL_REPRESENTATION, 1),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        file.write_to_file(dir.join(format!("slice{:03}", nz - z)))
            .unwrap();
    }
}

/// The nnU-Net fixture the lesion-model tests start from (tools/make_nnunet_fixtures.py).
pub const FIXTURE_MODEL: &str = "tests/fixtures/nnunet/plain";

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The fixture's two-fold PlainConvUNet (random weights; labels background, GGO, consolidation)
/// with a coarse target spacing, so that a whole phantom takes a few patches.
pub fn lesion_model(dir: &Path) -> PathBuf {
    let out = dir.join("lesion");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_MODEL),
        &out,
    );
    let plans_path = out.join("plans.json");
    let mut plans: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plans_path).unwrap()).unwrap();
    plans["configurations"]["3d_fullres"]["spacing"] = serde_json::json!([12.0, 6.0, 6.0]);
    std::fs::write(&plans_path, plans.to_string()).unwrap();
    out
}

/// A lobe model: [`lesion_model`] in ctgrade's compact form (written to `dir/lobes`) with its
/// output layers redrawn for six classes, labelled background and the five lobes (random
/// weights: which voxel gets which lobe is arbitrary but fixed).
pub fn lobe_model(dir: &Path) -> PathBuf {
    use candle_core::{DType, Device, Tensor};
    let tmp = tempfile::tempdir().unwrap();
    let src = lesion_model(tmp.path());
    let out = dir.join("lobes");
    let manifest = ctgrade::segment::compact::write(&src, Some(&["0".to_string()]), &out).unwrap();
    let file = out.join(&manifest.folds[0].file);
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let mut k = 0u64;
    for (name, t) in weights.iter_mut() {
        if name.starts_with("decoder.seg_layers.") {
            let mut shape = t.dims().to_vec();
            shape[0] = 6;
            k += 1;
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| (((i as u64 + 1) * (k + 7) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            *t = Tensor::from_vec(values, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
        }
    }
    candle_core::safetensors::save(&weights, &file).unwrap();
    let mut m = manifest;
    m.folds[0].sha256 = ctgrade_fsio::sha256_file(&file).unwrap();
    std::fs::write(
        out.join(ctgrade::segment::compact::MANIFEST_FILE),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let dataset_path = out.join("dataset.json");
    let mut dataset: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dataset_path).unwrap()).unwrap();
    dataset["labels"] = serde_json::json!({
        "background": 0,
        "lung_upper_lobe_right": 1,
        "lung_middle_lobe_right": 2,
        "lung_lower_lobe_right": 3,
        "lung_upper_lobe_left": 4,
        "lung_lower_lobe_left": 5
    });
    std::fs::write(&dataset_path, dataset.to_string()).unwrap();
    out
}

/// A tiny random ensemble taking CT, lesion map and zeros; with `lesion` its manifest names the
/// lesion model (copied into the ensemble's folder) and those lesion labels, with `lobes` a lobe
/// model ([`lobe_model`]).
pub fn make_lesion_ensemble(dir: &Path, lesion: Option<&[i64]>, lobes: bool) -> PathBuf {
    let network = tiny_network(Head::Continuous);
    let member = random_member(&network, &dir.join("member.safetensors"));
    let out = dir.join("ensemble");
    std::fs::create_dir_all(&out).unwrap();
    let lesion_model = lesion.map(|labels| {
        lesion_model(&out);
        ensemble::LesionModelSpec {
            path: "lesion".into(),
            lesion_labels: labels.to_vec(),
        }
    });
    let manifest = Manifest {
        name: "full-model-test".into(),
        description: "random weights: the pipeline is under test".into(),
        demonstration: false,
        network,
        head: Head::Continuous,
        input: InputSpec {
            channels: ChannelLayout::CtLesionZeros,
            ..tiny_spec()
        },
        members: Vec::new(),
        lesion_model,
        lobe_model: lobes.then(|| {
            lobe_model(&out);
            ensemble::LobeModelSpec {
                path: "lobes".into(),
            }
        }),
    };
    ensemble::create(&out, manifest, &[member]).unwrap();
    out
}
