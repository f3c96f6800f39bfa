//! nnU-Net v2 inference against nnunetv2 itself: the fixtures of tools/make_nnunet_fixtures.py
//! (model folders with random weights, nnUNetPredictor's intermediates and outputs).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ctgrade::segment::unet::UNetKind;
use ctgrade::segment::{ModelFolder, SegmentError};

const FIX: &str = "tests/fixtures/nnunet";

fn intermediates() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        Path::new(FIX).join("intermediates.safetensors"),
        &Device::Cpu,
    )
    .expect("intermediates.safetensors")
}

fn load(model: &str, folds: Option<&[String]>) -> ModelFolder {
    ModelFolder::load(&Path::new(FIX).join(model), folds, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// The first patch of the preprocessed data `(C, Z, Y, X)`, from voxel 0, zero-padded to `patch`
/// (2-D: of the first slice).
fn first_patch(data: &Tensor, patch: &[usize]) -> Tensor {
    let data = if patch.len() == 2 {
        data.narrow(1, 0, 1)
            .and_then(|d| d.squeeze(1))
            .expect("slice")
    } else {
        data.clone()
    };
    let mut x = data.unsqueeze(0).expect("unsqueeze");
    for (a, &p) in patch.iter().enumerate() {
        let dim = a + 2;
        let n = x.dim(dim).expect("dim");
        x = if n >= p {
            x.narrow(dim, 0, p).expect("narrow")
        } else {
            x.pad_with_zeros(dim, 0, p - n).expect("pad")
        };
    }
    x.contiguous().expect("contiguous")
}

/// (max |a - b|, max |b|) over all elements.
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (d, m)
}

#[test]
fn model_folders_load_with_the_checkpoints_meta() {
    let plain = load("plain", None);
    assert_eq!(plain.folds, ["0", "1"]);
    assert_eq!(plain.configuration_name, "3d_fullres");
    assert_eq!(plain.trainer_name, "nnUNetTrainer");
    assert_eq!(plain.mirroring_axes, Some(vec![0, 1, 2]));
    assert_eq!(plain.network.kind, UNetKind::Plain);
    assert_eq!(plain.network.features, [4, 8, 12, 16]);
    assert_eq!(plain.network.kernels[0], [1, 3, 3]);
    assert_eq!(plain.network.num_classes, 3);
    assert_eq!(plain.configuration.patch_size, [16, 64, 64]);

    let resenc = load("resenc", None);
    assert_eq!(resenc.configuration_name, "3d_fullres_resenc");
    assert_eq!(resenc.network.kind, UNetKind::ResidualEncoder);
    assert_eq!(resenc.network.norm_eps, Some(1e-4));
    // Inherited from 3d_fullres, overridden by 3d_fullres_resenc.
    assert_eq!(resenc.configuration.spacing, [4.5, 1.6, 1.6]);
    assert_eq!(resenc.configuration.patch_size, [16, 48, 48]);
    assert_eq!(resenc.plans.transpose_forward, [0, 2, 1]);

    let flat = load("plain2d", None);
    assert_eq!(flat.configuration_name, "2d");
    assert_eq!(flat.network.dims, 2);
    assert_eq!(flat.network.kernels[0], [1, 3, 3]);
    assert_eq!(flat.mirroring_axes, Some(vec![0, 1]));

    let one = load("plain", Some(&["1".to_string()]));
    assert_eq!(one.nets.len(), 1);
}

/// Fold 0's network of `m` on the first patch of `preprocessed` against the reference's
/// logits `want`, within 1e-4 of the largest; printed under `name`.
fn assert_patch_forward(name: &str, m: &ModelFolder, preprocessed: &Tensor, want: &Tensor) {
    let data = preprocessed.to_dtype(DType::F32).expect("f32");
    let x = first_patch(&data, &m.configuration.patch_size);
    let got = m.nets[0].forward(&x).expect("forward");
    let (d, scale) = diff(&got, want);
    eprintln!("{name}: max |logit difference| {d:.3e}, max |logit| {scale:.3e}");
    assert!(d <= 1e-4 * scale.max(1.0), "{name}: {d} (scale {scale})");
}

#[test]
fn network_forward_matches_pytorch_on_a_patch() {
    let t = intermediates();
    for model in ["plain", "resenc", "plain2d"] {
        let m = load(model, Some(&["0".to_string()]));
        assert_patch_forward(
            model,
            &m,
            &t[&format!("{model}.preprocessed")],
            &t[&format!("{model}.fold0.patch_logits")],
        );
    }
}

#[test]
fn a_foreign_trainer_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e =
        ctgrade::segment::checkpoint::check_trainer(&dir.path().join("x.pth"), "nnUNetTrainerBN")
            .expect_err("BN trainer");
    assert!(matches!(e, SegmentError::Trainer { .. }));
    assert!(e.to_string().contains("nnUNetTrainerBN"), "{e}");
}

#[test]
fn an_incomplete_folder_names_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["plans.json", "dataset.json"] {
        std::fs::copy(Path::new(FIX).join("plain").join(f), dir.path().join(f)).expect("copy");
    }
    let e = ModelFolder::load(dir.path(), None, &Device::Cpu)
        .err()
        .expect("no folds");
    assert!(e.to_string().contains("checkpoint_final.pth"), "{e}");
    let e = ModelFolder::load(dir.path(), Some(&["3".to_string()]), &Device::Cpu)
        .err()
        .expect("fold 3");
    assert!(e.to_string().contains("fold_3"), "{e}");
    std::fs::remove_file(dir.path().join("plans.json")).expect("rm");
    let e = ModelFolder::load(dir.path(), None, &Device::Cpu)
        .err()
        .expect("no plans");
    assert!(e.to_string().contains("plans.json"), "{e}");
}

#[test]
fn a_checkpoint_that_does_not_fit_the_plans_names_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(FIX).join("plain");
    std::fs::copy(src.join("dataset.json"), dir.path().join("dataset.json")).expect("copy");
    let text = std::fs::read_to_string(src.join("plans.json")).expect("plans");
    let mut plans: serde_json::Value = serde_json::from_str(&text).expect("json");
    // A wider first stage than the checkpoint's.
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] =
        6.into();
    std::fs::write(dir.path().join("plans.json"), plans.to_string()).expect("write");
    std::fs::create_dir(dir.path().join("fold_0")).expect("mkdir");
    std::fs::copy(
        src.join("fold_0/checkpoint_final.pth"),
        dir.path().join("fold_0/checkpoint_final.pth"),
    )
    .expect("copy");
    let e = ModelFolder::load(dir.path(), None, &Device::Cpu)
        .err()
        .expect("misfit");
    assert!(matches!(e, SegmentError::Weights { .. }), "{e}");
    assert!(e.to_string().contains("encoder.stages.0"), "{e}");
}

#[derive(serde::Deserialize)]
struct Cases {
    runs: Vec<Run>,
}

#[derive(serde::Deserialize)]
struct Run {
    name: String,
    model: String,
    folds: Vec<usize>,
    mirroring: bool,
    tile_step_size: f64,
    segmentation: String,
    probabilities: Vec<String>,
    properties: Properties,
}

#[derive(serde::Deserialize)]
struct Properties {
    shape_before_cropping: [usize; 3],
    bbox_used_for_cropping: [[usize; 2]; 3],
    shape_after_cropping_and_before_resampling: [usize; 3],
    preprocessed_shape: [usize; 4],
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(Path::new(FIX).join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json")
}

fn ct() -> ctgrade::volume::Volume {
    ctgrade::volume::read(&Path::new(FIX).join("ct.mha")).expect("ct.mha")
}

#[test]
fn preprocessing_matches_nnunets_default_preprocessor() {
    let t = intermediates();
    let cases = cases();
    let ct = ct();
    for model in ["plain", "resenc", "plain2d"] {
        let run = cases.runs.iter().find(|r| r.model == model).expect("run");
        let m = load(model, Some(&["0".to_string()]));
        let p = m.preprocess(std::slice::from_ref(&ct)).expect("preprocess");
        let props = &run.properties;
        assert_eq!(
            p.shape_before_cropping, props.shape_before_cropping,
            "{model}"
        );
        assert_eq!(p.bbox, props.bbox_used_for_cropping, "{model}");
        assert_eq!(
            p.shape_after_cropping, props.shape_after_cropping_and_before_resampling,
            "{model}"
        );
        let want = &t[&format!("{model}.preprocessed")];
        assert_eq!(want.dims()[1..], p.data[0].shape, "{model}");
        assert_eq!(want.dims()[0], props.preprocessed_shape[0]);
        let want: Vec<f32> = want.flatten_all().and_then(|w| w.to_vec1()).expect("want");
        let (mut max, mut sum) = (0f64, 0f64);
        let mut scale = 0f64;
        for (a, b) in p.data[0].data.iter().zip(&want) {
            let d = (a - f64::from(*b)).abs();
            max = max.max(d);
            sum += d;
            scale = scale.max(f64::from(b.abs()));
        }
        let mean = sum / want.len() as f64;
        eprintln!("{model}: preprocessed max |difference| {max:.3e}, mean {mean:.3e}, max |value| {scale:.3e}");
        assert!(max <= 1e-4 * scale.max(1.0), "{model}: {max}");
    }
}

/// Max and mean |a - b|.
fn stats(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, sum / a.len() as f64)
}

#[test]
fn sliding_window_logits_match_nnunets() {
    let t = intermediates();
    let m = load("plain", None);
    let ct = ct();
    let pre = m.preprocess(std::slice::from_ref(&ct)).expect("preprocess");
    let opts = ctgrade::segment::predict::PredictOptions::default();
    let logits =
        ctgrade::segment::predict::predict_logits(&m, &pre, &opts, &Device::Cpu).expect("predict");
    let want = t["plain.logits_mirror"].to_dtype(DType::F32).expect("f32");
    let want: Vec<f32> = want.flatten_all().and_then(|w| w.to_vec1()).expect("want");
    let got: Vec<f32> = logits
        .iter()
        .flat_map(|a| a.data.iter().map(|&v| v as f32))
        .collect();
    let (max, mean) = stats(&got, &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let exact = got.iter().zip(&want).filter(|(a, b)| a == b).count() as f64 / want.len() as f64;
    eprintln!("plain logits (2 folds, mirroring): max |difference| {max:.3e}, mean {mean:.3e}, max |logit| {scale:.3e}, identical {:.4}%", exact * 100.0);
    // Float16 accumulators: one unit in the last place of a float16 logit near the maximum.
    assert!(max <= 1e-2 * scale.max(1.0), "{max}");
}

/// A prediction against the reference's files in `dir` (its label map and one probability map
/// per class): the share of equal labels among the voxels where the reference's two largest
/// probabilities differ by at least 0.02, and the max and mean |probability difference|; printed.
fn compare_with_reference(
    dir: &Path,
    name: &str,
    labels: &[f32],
    probabilities: &[Vec<f32>],
    segmentation: &str,
    probability_files: &[String],
) -> (f64, f32, f64) {
    let seg = ctgrade::volume::read(&dir.join(segmentation)).expect("seg");
    let probs: Vec<Vec<f32>> = probability_files
        .iter()
        .map(|f| ctgrade::volume::read(&dir.join(f)).expect("prob").data)
        .collect();
    assert_eq!(probabilities.len(), probs.len(), "{name}");
    let n = seg.data.len();
    let (mut decided, mut same, mut all_same) = (0usize, 0usize, 0usize);
    for v in 0..n {
        let mut p: Vec<f32> = probs.iter().map(|c| c[v]).collect();
        p.sort_by(|a, b| b.total_cmp(a));
        let agree = labels[v] == seg.data[v];
        all_same += usize::from(agree);
        if p[0] - p[1] >= 0.02 {
            decided += 1;
            same += usize::from(agree);
        }
    }
    let (mut max, mut mean) = (0f32, 0f64);
    for (got, want) in probabilities.iter().zip(&probs) {
        let (a, b) = stats(got, want);
        max = max.max(a);
        mean += b / probs.len() as f64;
    }
    let agree = same as f64 / decided.max(1) as f64;
    eprintln!(
        "{name}: labels agree in {:.4}% of {decided} decided voxels ({:.4}% of all {n}); probabilities max |difference| {max:.3e}, mean {mean:.3e}",
        agree * 100.0,
        all_same as f64 / n as f64 * 100.0
    );
    (agree, max, mean)
}

#[test]
fn predictions_match_nnunets_predictor() {
    let ct = ct();
    for run in cases().runs {
        let folds: Vec<String> = run.folds.iter().map(|f| f.to_string()).collect();
        let m = load(&run.model, Some(&folds));
        let pre = m.preprocess(std::slice::from_ref(&ct)).expect("preprocess");
        let opts = ctgrade::segment::predict::PredictOptions {
            tile_step_size: run.tile_step_size,
            use_gaussian: true,
            use_mirroring: run.mirroring,
        };
        let logits = ctgrade::segment::predict::predict_logits(&m, &pre, &opts, &Device::Cpu)
            .expect("predict");
        let out = m.export(&pre, &logits).expect("export");
        let labels: Vec<f32> = out.labels.iter().map(|&l| f32::from(l)).collect();
        let (agree, max, mean) = compare_with_reference(
            Path::new(FIX),
            &run.name,
            &labels,
            &out.probabilities,
            &run.segmentation,
            &run.probabilities,
        );
        // The targets of issue 27: the same label in 99.9 % of decided voxels, probabilities
        // within 0.02 everywhere and 1e-3 on average.
        assert!(agree >= 0.999, "{}: {agree}", run.name);
        assert!(max <= 0.02, "{}: {max}", run.name);
        assert!(mean <= 1e-3, "{}: {mean}", run.name);
        // Measured well inside them (float16 emulated as nnU-Net accumulates): a regression
        // shows long before the targets would.
        assert!(max <= 2e-3 && mean <= 1e-5, "{}: {max} {mean}", run.name);
    }
}

/// A copy of the plain model whose plans.json `edit` changes; the error of loading it.
fn load_edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(FIX).join("plain");
    std::fs::copy(src.join("dataset.json"), dir.path().join("dataset.json")).expect("copy");
    let text = std::fs::read_to_string(src.join("plans.json")).expect("plans");
    let mut plans: serde_json::Value = serde_json::from_str(&text).expect("json");
    edit(&mut plans);
    std::fs::write(dir.path().join("plans.json"), plans.to_string()).expect("write");
    std::fs::create_dir(dir.path().join("fold_0")).expect("mkdir");
    std::fs::copy(
        src.join("fold_0/checkpoint_final.pth"),
        dir.path().join("fold_0/checkpoint_final.pth"),
    )
    .expect("copy");
    match ModelFolder::load(dir.path(), None, &Device::Cpu) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

fn cfg(p: &mut serde_json::Value) -> &mut serde_json::Value {
    &mut p["configurations"]["3d_fullres"]
}

#[test]
fn unknown_plans_entries_are_named_with_their_file_and_field() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|p| cfg(p)["architecture"]["network_class_name"] = "foo.MedNeXt".into()),
            "network_class_name",
        ),
        (
            Box::new(|p| {
                cfg(p)["architecture"]["arch_kwargs"]["norm_op"] =
                    "torch.nn.modules.batchnorm.BatchNorm3d".into()
            }),
            "arch_kwargs.norm_op",
        ),
        (
            Box::new(|p| {
                cfg(p)["normalization_schemes"] = serde_json::json!(["FancyNormalization"])
            }),
            "configurations.3d_fullres.normalization_schemes",
        ),
        (
            Box::new(|p| cfg(p)["resampling_fn_data"] = "resample_torch_fornnunet".into()),
            "resampling_fn_data",
        ),
        (
            Box::new(|p| p["transpose_backward"] = serde_json::json!([0, 1, 1])),
            "transpose_backward",
        ),
        (
            Box::new(|p| p["image_reader_writer"] = "NibabelIOWithReorient".into()),
            "image_reader_writer",
        ),
    ];
    for (edit, field) in cases {
        let e = load_edited(edit);
        assert!(
            e.contains("plans.json") && e.contains(field),
            "{field}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn a_ct_smaller_than_the_patch_is_padded() {
    // Four slices against a patch 16 deep: nnU-Net pads with zeros and cuts the padding off.
    let mut ct = ct();
    let [sx, sy, _] = ct.size;
    ct.data.truncate(sx * sy * 4);
    ct.size[2] = 4;
    let m = load("plain", Some(&["0".to_string()]));
    let opts = ctgrade::segment::PredictOptions {
        use_mirroring: false,
        ..Default::default()
    };
    let seg = m
        .segment(std::slice::from_ref(&ct), &opts, &Device::Cpu)
        .expect("segment");
    assert_eq!(seg.labels.size, ct.size);
    assert_eq!(seg.probabilities.len(), 3);
    for v in 0..seg.labels.data.len() {
        let s: f32 = seg.probabilities.iter().map(|p| p[v]).sum();
        assert!((s - 1.0).abs() < 1e-5, "{s}");
    }
}

/// The memory estimate covers at least the arrays a case certainly holds on the CT's grid (the
/// CT, per class the probabilities, the labels) and those on the model's grid; printed for the
/// real CT's geometry (lung1: 512 x 512 x 48 at 0.57 x 0.57 x 5 mm) with the two-fold model.
#[test]
fn the_memory_estimate_covers_the_case_arrays() {
    let m = load("plain", None);
    let (size, spacing) = ([512, 512, 48], [0.5703125, 0.5703125, 5.0]);
    let n = (512 * 512 * 48) as u64;
    let peak = m.peak_bytes(size, spacing);
    let classes = m.network.num_classes as u64;
    let on_ct = n * (4 * classes + 1);
    let target = (n as f64 * (5.0 / 4.0) * (0.5703125f64 / 1.25).powi(2)) as u64;
    eprintln!(
        "lung1 with the plain model: estimate {} MB (CT-grid arrays {} MB, model-grid voxels {target})",
        (peak + 4 * n) >> 20,
        on_ct >> 20
    );
    assert!(peak >= on_ct + 4 * target * classes, "{peak}");
    assert!(peak < 100 * n, "{peak}");
}

/// A loaded fold holds the tensors its network reads, each once: nnU-Net's aliases are neither
/// counted in `weight_bytes` nor kept by the compact form, which loads to the same count.
#[test]
fn aliased_tensors_are_held_once() {
    let m = load("plain", None);
    let all: u64 = ["0", "1"]
        .iter()
        .map(|f| {
            let path = Path::new(FIX).join(format!("plain/fold_{f}/checkpoint_final.pth"));
            let ck = ctgrade::segment::Checkpoint::read(&path, &Device::Cpu).expect("checkpoint");
            ck.weights
                .values()
                .map(|t| 4 * t.elem_count() as u64)
                .sum::<u64>()
        })
        .sum();
    assert!(m.weight_bytes < all, "{} of {all}", m.weight_bytes);
    let dir = tempfile::tempdir().expect("tempdir");
    ctgrade::segment::compact::write(&Path::new(FIX).join("plain"), None, dir.path())
        .expect("compact");
    let c = ModelFolder::load(dir.path(), None, &Device::Cpu).expect("load compact");
    assert_eq!(c.weight_bytes, m.weight_bytes);
}

/// nnU-Net v1 folders against nnU-Net v1 itself: the fixtures of
/// tools/make_nnunet_v1_fixtures.py (nnU-Net 1.7.1's trainers saved random-weight models;
/// `predict_cases` predicted them).
mod v1 {
    use super::*;
    use ctgrade::segment::Version;

    const FIX1: &str = "tests/fixtures/nnunet_v1";

    fn load(model: &str, folds: Option<&[String]>) -> ModelFolder {
        ModelFolder::load(&Path::new(FIX1).join(model), folds, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{model}: {e}"))
    }

    fn intermediates() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(
            Path::new(FIX1).join("intermediates.safetensors"),
            &Device::Cpu,
        )
        .expect("intermediates.safetensors")
    }

    #[derive(serde::Deserialize)]
    struct Cases {
        runs: Vec<Run>,
        models: HashMap<String, Model>,
    }

    #[derive(serde::Deserialize)]
    struct Run {
        name: String,
        model: String,
        folds: Vec<usize>,
        mirroring: bool,
        step_size: f64,
        segmentation: String,
        probabilities: Vec<String>,
    }

    #[derive(serde::Deserialize)]
    struct Model {
        properties: Properties,
    }

    #[derive(serde::Deserialize)]
    struct Properties {
        crop_bbox: [[usize; 2]; 3],
        size_after_cropping: [usize; 3],
        size_after_resampling: [usize; 3],
    }

    fn cases() -> Cases {
        let text = std::fs::read_to_string(Path::new(FIX1).join("cases.json")).expect("cases");
        serde_json::from_str(&text).expect("cases.json")
    }

    #[test]
    fn folders_load_as_nnunet_v1_restores_them() {
        let plain = load("plain", None);
        assert_eq!(plain.version, Version::V1);
        assert_eq!(plain.folds, ["0", "1"]);
        assert_eq!(plain.trainer_name, "nnUNetTrainerV2");
        assert_eq!(plain.configuration_name, "3d_fullres");
        assert_eq!(plain.configuration.patch_size, [16, 64, 64]);
        assert_eq!(plain.configuration.spacing, [4.0, 1.25, 1.25]);
        // Generic_UNet doubles its features per stage.
        assert_eq!(plain.network.features, [4, 8, 16, 32]);
        assert_eq!(plain.network.kernels[0], [1, 3, 3]);
        assert_eq!(plain.network.decoder_kernels[2], [3, 3, 3]);
        assert_eq!(plain.network.num_classes, 3);
        assert_eq!(plain.mirroring_axes, Some(vec![0, 1, 2]));
        assert!(plain.postprocessing.is_none());

        // Stage 1 of two, as the trainer's init arguments name it.
        let stage1 = load("stage1", None);
        assert_eq!(stage1.configuration.spacing, [4.5, 1.6, 1.6]);
        assert_eq!(stage1.plans.transpose_forward, [0, 2, 1]);
        assert_eq!(
            stage1.postprocessing.as_ref().map(|p| &p.for_which_classes),
            Some(&vec![vec![1u8]])
        );

        let bn = load("bn", None);
        assert_eq!(bn.trainer_name, "nnUNetTrainerV2_DA3_BN");
        assert_eq!(
            bn.network.norm_eps, None,
            "BatchNorm folded into the convolutions"
        );

        let flat = load("plain2d", None);
        assert_eq!(flat.network.dims, 2);
        assert_eq!(flat.configuration.spacing, [1.25, 1.25]);
        assert_eq!(flat.mirroring_axes, Some(vec![0, 1]));
    }

    #[test]
    fn network_forward_matches_pytorch_on_a_patch() {
        let t = intermediates();
        for model in ["plain", "stage1", "bn", "plain2d"] {
            let m = load(model, Some(&["0".to_string()]));
            let Some(want) = t.get(&format!("{model}.fold0.patch_logits")) else {
                continue;
            };
            // The BatchNorm model shares plain's plans and preprocessing.
            let pre = t
                .get(&format!("{model}.preprocessed"))
                .unwrap_or(&t["plain.preprocessed"]);
            assert_patch_forward(&format!("v1 {model}"), &m, pre, want);
        }
    }

    #[test]
    fn preprocessing_matches_the_generic_preprocessor() {
        let t = intermediates();
        let cases = cases();
        let ct = ct();
        for model in ["plain", "stage1", "plain2d"] {
            let m = load(model, Some(&["0".to_string()]));
            let p = m.preprocess(std::slice::from_ref(&ct)).expect("preprocess");
            let props = &cases.models[model].properties;
            // v1 crops before transposing: its box and shape are in the CT's own order.
            let perm = &m.plans.transpose_forward;
            let bbox: [[usize; 2]; 3] = std::array::from_fn(|i| props.crop_bbox[perm[i]]);
            let cropped: [usize; 3] = std::array::from_fn(|i| props.size_after_cropping[perm[i]]);
            assert_eq!(p.bbox, bbox, "{model}");
            assert_eq!(p.shape_after_cropping, cropped, "{model}");
            assert_eq!(p.data[0].shape, props.size_after_resampling, "{model}");
            let want: Vec<f32> = t[&format!("{model}.preprocessed")]
                .flatten_all()
                .and_then(|w| w.to_vec1())
                .expect("want");
            let got: Vec<f32> = p.data[0].data.iter().map(|&v| v as f32).collect();
            let (max, mean) = stats(&got, &want);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            eprintln!("v1 {model}: preprocessed max |difference| {max:.3e}, mean {mean:.3e}, max |value| {scale:.3e}");
            assert!(max <= 1e-4 * scale.max(1.0), "{model}: {max}");
        }
    }

    #[test]
    fn predictions_match_predict_cases() {
        let ct = ct();
        for run in cases().runs {
            let folds: Vec<String> = run.folds.iter().map(|f| f.to_string()).collect();
            let m = load(&run.model, Some(&folds));
            let opts = ctgrade::segment::predict::PredictOptions {
                tile_step_size: run.step_size,
                use_gaussian: true,
                use_mirroring: run.mirroring,
            };
            let seg = m
                .segment(std::slice::from_ref(&ct), &opts, &Device::Cpu)
                .expect("segment");
            let (agree, max, mean) = compare_with_reference(
                Path::new(FIX1),
                &format!("v1 {}", run.name),
                &seg.labels.data,
                &seg.probabilities,
                &run.segmentation,
                &run.probabilities,
            );
            assert!(agree >= 0.999, "{}: {agree}", run.name);
            assert!(max <= 0.02 && mean <= 1e-3, "{}: {max} {mean}", run.name);
            // The fixture's probabilities are v1's float16 .npz: half a float16 step near 1 is
            // 2.4e-4.
            assert!(max <= 1e-3 && mean <= 2e-4, "{}: {max} {mean}", run.name);
        }
    }

    /// postprocessing.json applied to v1's own labels before postprocessing gives v1's labels
    /// after it, voxel for voxel.
    #[test]
    fn postprocessing_matches_v1s() {
        let m = load("stage1", None);
        let pp = m.postprocessing.as_ref().expect("postprocessing.json");
        let raw =
            ctgrade::volume::read(&Path::new(FIX1).join("stage1_mirror_seg_raw.mha")).expect("raw");
        let want =
            ctgrade::volume::read(&Path::new(FIX1).join("stage1_mirror_seg.mha")).expect("seg");
        let mut labels: Vec<u8> = raw.data.iter().map(|&v| v as u8).collect();
        let [x, y, z] = raw.size;
        let voxel: f64 = raw.spacing.iter().product();
        ctgrade::segment::v1::postprocess(&mut labels, [z, y, x], voxel, pp);
        let removed = raw
            .data
            .iter()
            .zip(&labels)
            .filter(|(a, b)| **a != f32::from(**b))
            .count();
        assert!(
            removed > 0,
            "the fixture's postprocessing removes components"
        );
        let got: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
        assert_eq!(got, want.data);
    }

    /// Every truncation and every single-byte change of a trainer pickle reads as a value or an
    /// error, never a panic.
    #[test]
    fn damaged_pickles_do_not_panic() {
        let bytes =
            std::fs::read(Path::new(FIX1).join("stage1/fold_0/model_final_checkpoint.model.pkl"))
                .expect("read");
        assert!(ctgrade::segment::pickle::read(&bytes).is_ok());
        for n in 0..bytes.len() {
            let _ = ctgrade::segment::pickle::read(&bytes[..n]);
        }
        let mut damaged = bytes.clone();
        for i in 0..bytes.len() {
            for v in [0x00, 0x7f, 0xff] {
                damaged[i] = v;
                let _ = ctgrade::segment::pickle::read(&damaged);
            }
            damaged[i] = bytes[i];
        }
    }

    /// A copy of the plain model, fold 0, for edits.
    fn copy_plain() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(FIX1).join("plain");
        std::fs::create_dir(dir.path().join("fold_0")).expect("mkdir");
        for f in [
            "plans.pkl",
            "fold_0/model_final_checkpoint.model",
            "fold_0/model_final_checkpoint.model.pkl",
        ] {
            std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
        }
        dir
    }

    fn load_err(dir: &Path, folds: Option<&[String]>) -> String {
        match ModelFolder::load(dir, folds, &Device::Cpu) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_v1_folders_are_named_with_their_file_and_field() {
        // A trainer whose network ctgrade does not build (same-length name in the pickle).
        let dir = copy_plain();
        let pkl = dir.path().join("fold_0/model_final_checkpoint.model.pkl");
        let bytes = std::fs::read(&pkl).expect("read");
        let mut edited = bytes.clone();
        let at: Vec<usize> = (0..bytes.len() - 15)
            .filter(|&i| &bytes[i..i + 15] == b"nnUNetTrainerV2")
            .collect();
        assert!(!at.is_empty(), "trainer name");
        for i in at {
            edited[i + 14] = b'9';
        }
        std::fs::write(&pkl, &edited).expect("write");
        let e = load_err(dir.path(), None);
        assert!(
            e.contains("nnUNetTrainerV9") && e.contains("model.pkl"),
            "{e}"
        );

        // A truncated trainer pickle.
        std::fs::write(&pkl, &bytes[..bytes.len() / 2]).expect("write");
        let e = load_err(dir.path(), None);
        assert!(e.contains("model.pkl") && e.contains("pickle"), "{e}");

        // A fold that is not there.
        std::fs::write(&pkl, &bytes).expect("write");
        let e = load_err(dir.path(), Some(&["3".to_string()]));
        assert!(e.contains("fold_3"), "{e}");

        // A checkpoint whose tensors do not fit the plans.
        std::fs::copy(
            Path::new(FIX1).join("plain2d/fold_0/model_final_checkpoint.model"),
            dir.path().join("fold_0/model_final_checkpoint.model"),
        )
        .expect("copy");
        let e = load_err(dir.path(), None);
        assert!(e.contains("model_final_checkpoint.model"), "{e}");
    }

    /// ctgrade's compact form of a v1 model (its translated plans, the weights the network
    /// reads, the version and postprocessing.json in the manifest) segments to the same labels
    /// and probabilities as the v1 folder.
    #[test]
    fn the_compact_form_of_a_v1_model_segments_alike() {
        let ct = ct();
        let opts = ctgrade::segment::predict::PredictOptions::default();
        for model in ["stage1", "bn"] {
            let out = tempfile::tempdir().expect("tempdir");
            let manifest =
                ctgrade::segment::compact::write(&Path::new(FIX1).join(model), None, out.path())
                    .expect("compact");
            assert_eq!(manifest.nnunet_version, 1);
            assert_eq!(manifest.postprocessing.is_some(), model == "stage1");
            let compact = ModelFolder::load(out.path(), None, &Device::Cpu).expect("load");
            assert_eq!(compact.version, Version::V1);
            let folder = load(model, None);
            let a = folder
                .segment(std::slice::from_ref(&ct), &opts, &Device::Cpu)
                .expect("folder");
            let b = compact
                .segment(std::slice::from_ref(&ct), &opts, &Device::Cpu)
                .expect("compact");
            assert_eq!(a.labels.data, b.labels.data, "{model}");
            assert_eq!(a.probabilities, b.probabilities, "{model}");
        }
    }
}
