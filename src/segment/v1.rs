//! nnU-Net v1 trained-model folders (`plans.pkl`, `fold_N/model_final_checkpoint.model` and its
//! `.model.pkl`; `postprocessing.json`), such as the public COVID-19-20 lesion models
//! (`Task115_COVIDSegChallenge`, `nnUNetTrainerV2_DA3`).
//!
//! The trainer's pickle (`model_final_checkpoint.model.pkl`: `init`, `name`, `plans`) is read
//! with [`super::pickle`] and its plans translated into the v2 form the rest of
//! [`super`] runs (`plans.json`'s fields, one configuration; `dataset.json`'s), as nnU-Net v1's
//! `nnUNetTrainer.process_plans` reads them. v1's `Generic_UNet` is `PlainConvUNet` under other
//! tensor names, with bias-free transposed convolutions and heads (zero biases here) and decoder
//! kernels taken one stage lower ([`super::unet::UNetConfig::decoder_kernels`]); the BatchNorm
//! of `nnUNetTrainerV2_DA3_BN` is folded into its convolutions (inference uses the running
//! statistics). Where v1's preprocessing, prediction and export differ from v2's, [`super`]
//! follows v1 ([`super::Version::V1`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value as Json};

use super::pickle::{self, Value};
use super::plans::{read_json, DatasetJson, Plans};
use super::{Checkpoint, FoldCheckpoint, SegmentError};
use crate::preprocess::morph::label_3d;

/// The checkpoint file of a fold (`predict_simple`'s default `-chk model_final_checkpoint`).
pub const CHECKPOINT: &str = "model_final_checkpoint.model";

/// v1 trainers whose network is `Generic_UNet` as `nnUNetTrainerV2.initialize_network` builds it
/// from the plans, with the default mirroring axes: they differ in training only. The `_BN`
/// variant swaps InstanceNorm for BatchNorm.
const TRAINERS: &[&str] = &[
    "nnUNetTrainerV2",
    "nnUNetTrainerV2_DA2",
    "nnUNetTrainerV2_DA3",
    "nnUNetTrainerV2_DA3_BN",
    "nnUNetTrainerV2_noDeepSupervision",
    "nnUNetTrainerV2_fp32",
];

/// `postprocessing.json`: keep only the largest connected component of these classes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postprocessing {
    /// Each entry a class, or several classes taken as one region.
    pub for_which_classes: Vec<Vec<u8>>,
    /// Per entry, components at least this large (mm³) are kept too; `None`: only the largest.
    pub min_valid_object_size: Vec<Option<f64>>,
}

/// Whether `dir` is an nnU-Net v1 trained-model folder: no v2 `plans.json`, and a `plans.pkl` or
/// a fold holding [`CHECKPOINT`].
pub fn is_v1_folder(dir: &Path) -> bool {
    !dir.join("plans.json").is_file()
        && (dir.join("plans.pkl").is_file()
            || !detect_folds(dir).unwrap_or_default().is_empty()
            || dir.join("all").join(CHECKPOINT).is_file())
}

/// The folds as v1's `load_model_and_checkpoint_files` finds them: the sub-folders named
/// `fold*` (sorted by name, as batchgenerators' `subfolders`) that hold a checkpoint; `all` is
/// taken only when asked for.
pub fn detect_folds(dir: &Path) -> Result<Vec<String>, SegmentError> {
    let entries = std::fs::read_dir(dir).map_err(|error| SegmentError::Io {
        path: dir.into(),
        error,
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(CHECKPOINT).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("fold_"))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| n["fold_".len()..].to_string())
        .collect())
}

fn fold_dir(dir: &Path, fold: &str) -> PathBuf {
    if fold == "all" {
        dir.join("all")
    } else {
        dir.join(format!("fold_{fold}"))
    }
}

/// A folder's plans (translated), dataset, folds and postprocessing.
pub(crate) struct Folder {
    pub plans_file: PathBuf,
    pub plans: Plans,
    pub dataset: DatasetJson,
    pub checkpoints: Vec<FoldCheckpoint>,
    pub postprocessing: Option<Postprocessing>,
}

/// Reads a v1 folder with the folds `folds` (every fold when `None`).
pub(crate) fn read_folder(
    dir: &Path,
    folds: Option<&[String]>,
    device: &Device,
) -> Result<Folder, SegmentError> {
    let folds: Vec<String> = match folds {
        Some(f) => f.to_vec(),
        None => detect_folds(dir)?,
    };
    let Some(first) = folds.first() else {
        return Err(SegmentError::Folder {
            path: dir.into(),
            msg: format!("no fold_N/{CHECKPOINT}"),
        });
    };
    // v1 restores the trainer (name, init arguments, plans) from the first fold's pickle.
    let info_path = fold_dir(dir, first).join(format!("{CHECKPOINT}.pkl"));
    let info = read_pickle(&info_path)?;
    let bad = |field: &str, msg: String| SegmentError::Field {
        path: info_path.clone(),
        field: field.into(),
        msg,
    };
    let trainer = match info.get("name") {
        Some(Value::Str(s)) => s.clone(),
        _ => return Err(bad("name", "missing or not a string".into())),
    };
    if !TRAINERS.contains(&trainer.as_str()) {
        return Err(bad(
            "name",
            format!(
                "trainer {trainer:?} is not supported: ctgrade runs Generic_UNet as nnUNetTrainerV2 builds it ({})",
                TRAINERS.join(", ")
            ),
        ));
    }
    let stage = match info.get("init").and_then(Value::items) {
        Some(init) => match init.get(5) {
            Some(Value::None) | None => None,
            Some(v) => Some(
                v.as_usize()
                    .ok_or_else(|| bad("init[5]", format!("stage {v:?} is not a number")))?,
            ),
        },
        None => return Err(bad("init", "missing or not a tuple".into())),
    };
    let plans = info
        .get("plans")
        .ok_or_else(|| bad("plans", "missing".into()))?;
    let t = translate(&info_path, plans, stage, &trainer)?;
    let dataset = dataset(dir, &t.labels, t.channels)?;
    let mut checkpoints = Vec::with_capacity(folds.len());
    for fold in folds {
        let path = fold_dir(dir, &fold).join(CHECKPOINT);
        let weights = read_weights(&path, t.n_stages, t.conv_per_stage, t.batch_norm, device)?;
        checkpoints.push(FoldCheckpoint {
            fold,
            path,
            checkpoint: Checkpoint {
                trainer_name: trainer.clone(),
                configuration: t.configuration.clone(),
                mirroring_axes: Some(t.mirror_axes.clone()),
                weights,
            },
        });
    }
    let postprocessing = read_postprocessing(&dir.join("postprocessing.json"))?;
    Ok(Folder {
        plans_file: info_path,
        plans: t.plans,
        dataset,
        checkpoints,
        postprocessing,
    })
}

fn read_pickle(path: &Path) -> Result<Value, SegmentError> {
    let bytes = std::fs::read(path).map_err(|error| SegmentError::Io {
        path: path.into(),
        error,
    })?;
    pickle::read(&bytes).map_err(|e| SegmentError::Field {
        path: path.into(),
        field: "(pickle)".into(),
        msg: format!("unreadable: {e}"),
    })
}

/// v1's plans as the v2 fields ctgrade runs.
struct Translated {
    plans: Plans,
    configuration: String,
    labels: Vec<i64>,
    channels: usize,
    n_stages: usize,
    conv_per_stage: usize,
    batch_norm: bool,
    mirror_axes: Vec<usize>,
}

/// `nnUNetTrainer.process_plans` and `nnUNetTrainerV2.initialize_network`, written as v2 plans.
fn translate(
    path: &Path,
    plans: &Value,
    stage: Option<usize>,
    trainer: &str,
) -> Result<Translated, SegmentError> {
    let bad = |field: &str, msg: String| SegmentError::Field {
        path: path.into(),
        field: format!("plans.{field}"),
        msg,
    };
    let get = |field: &str| plans.get(field).ok_or_else(|| bad(field, "missing".into()));
    let Some(Value::Dict(stages)) = plans.get("plans_per_stage") else {
        return Err(bad("plans_per_stage", "missing or not a dict".into()));
    };
    let stage = match stage {
        Some(s) => s,
        None if stages.len() == 1 => stages[0]
            .0
            .as_usize()
            .ok_or_else(|| bad("plans_per_stage", "a stage key is not a number".into()))?,
        None => {
            return Err(bad(
                "plans_per_stage",
                "several stages and the trainer names none".into(),
            ))
        }
    };
    let sp = plans
        .get("plans_per_stage")
        .and_then(|p| p.get(&stage.to_string()))
        .ok_or_else(|| bad(&format!("plans_per_stage.{stage}"), "missing".into()))?;
    let sfield = |f: &str| format!("plans_per_stage.{stage}.{f}");
    let patch = sp
        .get("patch_size")
        .and_then(Value::as_usizes)
        .ok_or_else(|| bad(&sfield("patch_size"), "missing or not sizes".into()))?;
    let dims = patch.len();
    if dims != 2 && dims != 3 {
        return Err(bad(
            &sfield("patch_size"),
            format!("{patch:?}: not 2 or 3 axes"),
        ));
    }
    let spacing = sp
        .get("current_spacing")
        .and_then(Value::as_f64s)
        .filter(|s| s.len() == 3)
        .ok_or_else(|| {
            bad(
                &sfield("current_spacing"),
                "missing or not 3 numbers".into(),
            )
        })?;
    // A list of per-stage size lists.
    let per_stage = |field: &str| -> Option<Result<Vec<Vec<usize>>, SegmentError>> {
        sp.get(field).map(|v| {
            v.items()
                .and_then(|p| p.iter().map(Value::as_usizes).collect())
                .ok_or_else(|| bad(&sfield(field), "not lists of sizes".into()))
        })
    };
    let pools: Vec<Vec<usize>> = match per_stage("pool_op_kernel_sizes") {
        Some(p) => p?,
        // Old plans: derived from num_pool_per_axis as process_plans does.
        None => {
            let per_axis = sp
                .get("num_pool_per_axis")
                .and_then(Value::as_usizes)
                .ok_or_else(|| bad(&sfield("num_pool_per_axis"), "missing".into()))?;
            let m = per_axis.iter().copied().max().unwrap_or(0);
            (0..m)
                .map(|i| {
                    per_axis
                        .iter()
                        .map(|&j| if m - j <= i { 2 } else { 1 })
                        .collect()
                })
                .collect()
        }
    };
    let num_pool = pools.len();
    let kernels: Vec<Vec<usize>> = match per_stage("conv_kernel_sizes") {
        Some(k) => k?,
        None => vec![vec![3; dims]; num_pool + 1],
    };
    if kernels.len() != num_pool + 1
        || kernels.iter().chain(&pools).any(|k| k.len() != dims)
        || kernels.iter().flatten().any(|&k| k != 1 && k != 3)
    {
        return Err(bad(
            &sfield("conv_kernel_sizes"),
            format!(
                "{kernels:?} with pools {pools:?}: Generic_UNet needs one {dims}-D kernel of 1 or 3 per stage"
            ),
        ));
    }
    let channels = get("num_modalities")?
        .as_usize()
        .ok_or_else(|| bad("num_modalities", "not a count".into()))?;
    let num_classes = get("num_classes")?
        .as_usize()
        .ok_or_else(|| bad("num_classes", "not a count".into()))?;
    let base = get("base_num_features")?
        .as_usize()
        .ok_or_else(|| bad("base_num_features", "not a count".into()))?;
    let conv_per_stage = match plans.get("conv_per_stage") {
        None => 2,
        Some(v) => v
            .as_usize()
            .ok_or_else(|| bad("conv_per_stage", "not a count".into()))?,
    };
    if conv_per_stage < 2 {
        return Err(bad(
            "conv_per_stage",
            format!("{conv_per_stage}: Generic_UNet's stages are built for 2 or more"),
        ));
    }
    // Generic_UNet: features double per stage up to 320 (3-D) or 480 (2-D).
    let cap = if dims == 3 { 320 } else { 480 };
    let mut features = Vec::with_capacity(num_pool + 1);
    let mut f = base;
    for _ in 0..=num_pool {
        features.push(f);
        f = (2 * f).min(cap);
    }
    let mut strides = vec![vec![1; dims]];
    strides.extend(pools.iter().cloned());
    let mut schemes = Vec::with_capacity(channels);
    let mut intensity = Map::new();
    for c in 0..channels {
        let scheme = get("normalization_schemes")?
            .get(&c.to_string())
            .ok_or_else(|| bad(&format!("normalization_schemes.{c}"), "missing".into()))?;
        let Value::Str(scheme) = scheme else {
            return Err(bad(
                &format!("normalization_schemes.{c}"),
                "not a string".into(),
            ));
        };
        schemes.push(match scheme.as_str() {
            "CT" => {
                let p = get("dataset_properties")?
                    .get("intensityproperties")
                    .and_then(|p| p.get(&c.to_string()))
                    .ok_or_else(|| {
                        bad(
                            &format!("dataset_properties.intensityproperties.{c}"),
                            "missing (CT normalisation needs it)".into(),
                        )
                    })?;
                let mut m = Map::new();
                for (from, to) in [
                    ("mean", "mean"),
                    ("sd", "std"),
                    ("percentile_00_5", "percentile_00_5"),
                    ("percentile_99_5", "percentile_99_5"),
                ] {
                    let v = p.get(from).and_then(Value::as_f64).ok_or_else(|| {
                        bad(
                            &format!("dataset_properties.intensityproperties.{c}.{from}"),
                            "missing or not a number".into(),
                        )
                    })?;
                    m.insert(to.into(), json!(v));
                }
                intensity.insert(c.to_string(), Json::Object(m));
                "CTNormalization"
            }
            "noNorm" => "NoNormalization",
            "CT2" => {
                return Err(bad(
                    &format!("normalization_schemes.{c}"),
                    "\"CT2\" is not supported (CT, noNorm, or any other name for z-scoring)".into(),
                ))
            }
            // GenericPreprocessor z-scores every other scheme ("nonCT", "MRI", ...).
            _ => "ZScoreNormalization",
        });
        let masked = plans
            .get("use_mask_for_norm")
            .and_then(|u| u.get(&c.to_string()))
            .is_some_and(|v| matches!(v, Value::Bool(true)));
        if masked {
            // v1 masks with the non-zero mask resampled beside the data (order 1), which
            // ctgrade does not compute.
            return Err(bad(
                &format!("use_mask_for_norm.{c}"),
                "true is not supported for nnU-Net v1 models".into(),
            ));
        }
    }
    let transpose = |field: &str| -> Result<Vec<usize>, SegmentError> {
        match plans.get(field) {
            None | Some(Value::None) => Ok(vec![0, 1, 2]),
            Some(v) => v
                .as_usizes()
                .ok_or_else(|| bad(field, "not a permutation".into())),
        }
    };
    let (transpose_forward, transpose_backward) = (
        transpose("transpose_forward")?,
        transpose("transpose_backward")?,
    );
    let preprocessor = match plans.get("preprocessor_name") {
        Some(Value::Str(s)) => s.clone(),
        _ if dims == 3 => "GenericPreprocessor".into(),
        _ => "PreprocessorFor2D".into(),
    };
    if !matches!(
        (preprocessor.as_str(), dims),
        ("GenericPreprocessor", 3) | ("PreprocessorFor2D", 2)
    ) {
        return Err(bad(
            "preprocessor_name",
            format!("{preprocessor:?} is not supported for a {dims}-D stage (GenericPreprocessor in 3-D, PreprocessorFor2D in 2-D)"),
        ));
    }
    // predict_cases' export: the plans' segmentation_export_params, else order 1 / order 0 in z.
    let export = plans.get("segmentation_export_params");
    let ex = |f: &str| export.and_then(|e| e.get(f));
    let force_separate_z = match ex("force_separate_z") {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let order = ex("interpolation_order")
        .and_then(Value::as_usize)
        .unwrap_or(1);
    let order_z = ex("interpolation_order_z")
        .and_then(Value::as_usize)
        .unwrap_or(0);
    let batch_norm = trainer.ends_with("_BN");
    let (conv_op, norm_op, norm_eps) = match (dims, batch_norm) {
        (3, false) => (
            "torch.nn.modules.conv.Conv3d",
            json!("InstanceNorm3d"),
            1e-5,
        ),
        (_, false) => (
            "torch.nn.modules.conv.Conv2d",
            json!("InstanceNorm2d"),
            1e-5,
        ),
        // Folded into the convolutions at load.
        (3, true) => ("torch.nn.modules.conv.Conv3d", Json::Null, 1e-5),
        (_, true) => ("torch.nn.modules.conv.Conv2d", Json::Null, 1e-5),
    };
    let configuration = if dims == 2 {
        "2d".to_string()
    } else if stage + 1 == stages.len() {
        "3d_fullres".to_string()
    } else {
        format!("3d_lowres_stage{stage}")
    };
    // A 2-D configuration keeps the slices' own spacing (PreprocessorFor2D).
    let target: Vec<f64> = if dims == 2 {
        spacing[1..].to_vec()
    } else {
        spacing.clone()
    };
    let n_stages = num_pool + 1;
    let cfg = json!({
        "patch_size": patch,
        "spacing": target,
        "normalization_schemes": schemes,
        "use_mask_for_norm": vec![false; channels],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": false, "order": 3, "order_z": 0, "force_separate_z": null},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": false, "order": order, "order_z": order_z, "force_separate_z": force_separate_z},
        // Checked above; v1's own steps are chosen by the version, not by this name.
        "preprocessor_name": "DefaultPreprocessor",
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": features,
                "conv_op": conv_op,
                "kernel_sizes": kernels,
                "strides": strides,
                "n_conv_per_stage": vec![conv_per_stage; n_stages],
                "n_conv_per_stage_decoder": vec![conv_per_stage; n_stages - 1],
                "conv_bias": true,
                "norm_op": norm_op,
                "norm_op_kwargs": {"eps": norm_eps, "affine": true},
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"negative_slope": 0.01},
            }
        }
    });
    let mut configurations = Map::new();
    configurations.insert(configuration.clone(), cfg);
    let plans_json = json!({
        "dataset_name": path.parent().and_then(Path::parent).and_then(Path::file_name)
            .and_then(|n| n.to_str()).unwrap_or("nnU-Net v1 model"),
        "plans_name": "nnU-Net v1",
        "transpose_forward": transpose_forward,
        "transpose_backward": transpose_backward,
        "foreground_intensity_properties_per_channel": intensity,
        "configurations": configurations,
    });
    let plans: Plans =
        serde_json::from_value(plans_json).map_err(|e| bad("(plans)", e.to_string()))?;
    let labels: Vec<i64> = (0..=num_classes as i64).collect();
    Ok(Translated {
        plans,
        configuration,
        labels,
        channels,
        n_stages,
        conv_per_stage,
        batch_norm,
        mirror_axes: (0..dims).collect(),
    })
}

/// The dataset fields: label names from a v1 `dataset.json` beside the plans where there is
/// one (`"labels": {"0": "background", "1": "lesion"}`), else the label values as names.
fn dataset(dir: &Path, labels: &[i64], channels: usize) -> Result<DatasetJson, SegmentError> {
    let path = dir.join("dataset.json");
    let v: Json = if path.is_file() {
        read_json(&path)?
    } else {
        Json::Null
    };
    // `{"0": "name", ...}` by number.
    let numbered = |field: &str| -> HashMap<i64, String> {
        v.get(field)
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_str()?.to_string())))
            .collect()
    };
    let (names, modalities) = (numbered("labels"), numbered("modality"));
    let labels: Map<String, Json> = labels
        .iter()
        .map(|&l| {
            let name = names.get(&l).cloned().unwrap_or_else(|| {
                if l == 0 {
                    "background".into()
                } else {
                    l.to_string()
                }
            });
            (name, json!(l))
        })
        .collect();
    let channel_names: Map<String, Json> = (0..channels)
        .map(|c| {
            let n = modalities
                .get(&(c as i64))
                .cloned()
                .unwrap_or_else(|| "CT".into());
            (c.to_string(), json!(n))
        })
        .collect();
    serde_json::from_value(json!({"channel_names": channel_names, "labels": labels})).map_err(|e| {
        SegmentError::Json {
            path,
            msg: e.to_string(),
        }
    })
}

/// `postprocessing.json` (`for_which_classes`, `min_valid_object_sizes` as Python literal text).
fn read_postprocessing(path: &Path) -> Result<Option<Postprocessing>, SegmentError> {
    if !path.is_file() {
        return Ok(None);
    }
    let v: Json = read_json(path)?;
    let bad = |field: &str, msg: String| SegmentError::Field {
        path: path.into(),
        field: field.into(),
        msg,
    };
    let class = |c: &Json| -> Option<u8> { c.as_u64().and_then(|c| u8::try_from(c).ok()) };
    let mut for_which_classes = Vec::new();
    match v.get("for_which_classes") {
        Some(Json::Array(items)) => {
            for it in items {
                let entry: Option<Vec<u8>> = match it {
                    Json::Array(cs) => cs.iter().map(class).collect(),
                    c => class(c).map(|c| vec![c]),
                };
                match entry {
                    Some(e) if !e.is_empty() && !e.contains(&0) => for_which_classes.push(e),
                    _ => {
                        return Err(bad(
                            "for_which_classes",
                            format!("{it}: not a foreground class or a list of them"),
                        ))
                    }
                }
            }
        }
        Some(Json::Null) | None => {}
        Some(other) => return Err(bad("for_which_classes", format!("{other}: not a list"))),
    }
    let sizes = match v.get("min_valid_object_sizes") {
        // `str(None)` where determine_postprocessing found none.
        Some(Json::String(s)) if s.trim() == "None" => Vec::new(),
        Some(Json::String(s)) => parse_sizes(s)
            .ok_or_else(|| bad("min_valid_object_sizes", format!("{s:?}: not a dict")))?,
        Some(Json::Null) | None => Vec::new(),
        Some(other) => {
            return Err(bad(
                "min_valid_object_sizes",
                format!("{other}: not a string"),
            ))
        }
    };
    let min_valid_object_size = if sizes.is_empty() {
        vec![None; for_which_classes.len()]
    } else {
        let mut out = Vec::with_capacity(for_which_classes.len());
        for e in &for_which_classes {
            let s = sizes.iter().find(|(k, _)| k == e).map(|&(_, s)| s);
            match s {
                Some(s) => out.push(Some(s)),
                None => {
                    return Err(bad(
                        "min_valid_object_sizes",
                        format!("no size for class {e:?}"),
                    ))
                }
            }
        }
        out
    };
    Ok(Some(Postprocessing {
        for_which_classes,
        min_valid_object_size,
    }))
}

/// The text of a Python dict from classes (`1`) or class tuples (`(1, 2)`) to sizes.
fn parse_sizes(s: &str) -> Option<Vec<(Vec<u8>, f64)>> {
    let body = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = if let Some(r) = rest.strip_prefix('(') {
            let end = r.find(')')?;
            let k: Option<Vec<u8>> = r[..end]
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().ok())
                .collect();
            (k?, &r[end + 1..])
        } else {
            let end = rest.find(':')?;
            (vec![rest[..end].trim().parse().ok()?], &rest[end..])
        };
        let after = after.trim_start().strip_prefix(':')?;
        let end = after.find(',').unwrap_or(after.len());
        let v: f64 = after[..end].trim().parse().ok()?;
        out.push((key, v));
        rest = after.get(end + 1..).unwrap_or("").trim();
    }
    Some(out)
}

/// The tensors of the checkpoint's `state_dict` under `PlainConvUNet`'s names.
fn read_weights(
    path: &Path,
    n_stages: usize,
    conv_per_stage: usize,
    batch_norm: bool,
    device: &Device,
) -> Result<HashMap<String, Tensor>, SegmentError> {
    if !path.is_file() {
        return Err(SegmentError::Folder {
            path: path.into(),
            msg: "missing".into(),
        });
    }
    // A network trained with DataParallel saves `module.`-prefixed names; load_checkpoint_ram
    // strips the prefix.
    let v1: HashMap<String, Tensor> = super::checkpoint::read_weights(path, "state_dict", device)?
        .into_iter()
        .map(|(k, t)| match k.strip_prefix("module.") {
            Some(k) => (k.to_string(), t),
            None => (k, t),
        })
        .collect();
    rename(&v1, n_stages, conv_per_stage, batch_norm).map_err(|e| SegmentError::Weights {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// `Generic_UNet`'s state dict under `PlainConvUNet`'s names: the context blocks (the
/// bottleneck's two `StackedConvLayers` as one stage), `tu` as `decoder.transpconvs` and
/// `seg_outputs` as `decoder.seg_layers` with zero biases, the localisation blocks as
/// `decoder.stages`. With `batch_norm`, each BatchNorm is folded into its convolution.
fn rename(
    v1: &HashMap<String, Tensor>,
    n_stages: usize,
    cps: usize,
    batch_norm: bool,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let get = |name: &str| -> candle_core::Result<&Tensor> {
        v1.get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))
    };
    let mut out = HashMap::new();
    let mut block = |from: &str, to: &str| -> candle_core::Result<()> {
        let w = get(&format!("{from}.conv.weight"))?;
        let b = get(&format!("{from}.conv.bias"))?;
        if batch_norm {
            // y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta, in eval mode.
            let gamma = get(&format!("{from}.instnorm.weight"))?;
            let beta = get(&format!("{from}.instnorm.bias"))?;
            let mean = get(&format!("{from}.instnorm.running_mean"))?;
            let var = get(&format!("{from}.instnorm.running_var"))?;
            let scale = (gamma / (var + 1e-5)?.sqrt()?)?;
            let mut shape = vec![scale.elem_count()];
            shape.extend(std::iter::repeat_n(1, w.rank() - 1));
            let w2 = w.broadcast_mul(&scale.reshape(shape)?)?;
            let b2 = ((b - mean)? * &scale)?.add(beta)?;
            out.insert(format!("{to}.conv.weight"), w2);
            out.insert(format!("{to}.conv.bias"), b2);
        } else {
            out.insert(format!("{to}.conv.weight"), w.clone());
            out.insert(format!("{to}.conv.bias"), b.clone());
            for p in ["weight", "bias"] {
                out.insert(
                    format!("{to}.norm.{p}"),
                    get(&format!("{from}.instnorm.{p}"))?.clone(),
                );
            }
        }
        Ok(())
    };
    let last = n_stages - 1;
    for s in 0..last {
        for i in 0..cps {
            block(
                &format!("conv_blocks_context.{s}.blocks.{i}"),
                &format!("encoder.stages.{s}.0.convs.{i}"),
            )?;
        }
    }
    for i in 0..cps - 1 {
        block(
            &format!("conv_blocks_context.{last}.0.blocks.{i}"),
            &format!("encoder.stages.{last}.0.convs.{i}"),
        )?;
    }
    block(
        &format!("conv_blocks_context.{last}.1.blocks.0"),
        &format!("encoder.stages.{last}.0.convs.{}", cps - 1),
    )?;
    for u in 0..last {
        for i in 0..cps - 1 {
            block(
                &format!("conv_blocks_localization.{u}.0.blocks.{i}"),
                &format!("decoder.stages.{u}.convs.{i}"),
            )?;
        }
        block(
            &format!("conv_blocks_localization.{u}.1.blocks.0"),
            &format!("decoder.stages.{u}.convs.{}", cps - 1),
        )?;
    }
    for u in 0..last {
        let tu = get(&format!("tu.{u}.weight"))?;
        // ConvTranspose weight: (in, out, k...).
        let out_ch = tu.dim(1)?;
        out.insert(format!("decoder.transpconvs.{u}.weight"), tu.clone());
        out.insert(
            format!("decoder.transpconvs.{u}.bias"),
            Tensor::zeros(out_ch, DType::F32, tu.device())?,
        );
        let seg = get(&format!("seg_outputs.{u}.weight"))?;
        out.insert(format!("decoder.seg_layers.{u}.weight"), seg.clone());
        out.insert(
            format!("decoder.seg_layers.{u}.bias"),
            Tensor::zeros(seg.dim(0)?, DType::F32, seg.device())?,
        );
    }
    Ok(out)
}

/// v1's `postprocessing.json` applied (`remove_all_but_the_largest_connected_component`): per
/// entry, the voxels of its classes outside their largest face-connected component (every
/// component of the largest size is kept) and smaller than its minimum size are set to 0.
/// `shape` is (z, y, x); `voxel_volume` in mm³.
pub fn postprocess(labels: &mut [u8], shape: [usize; 3], voxel_volume: f64, pp: &Postprocessing) {
    for (classes, min_size) in pp.for_which_classes.iter().zip(&pp.min_valid_object_size) {
        let mask: Vec<u8> = labels
            .iter()
            .map(|l| u8::from(classes.contains(l)))
            .collect();
        // scipy.ndimage.label's default structure: face neighbours.
        let (comp, stats) = label_3d(&mask, [shape[2], shape[1], shape[0]]);
        let Some(largest) = stats.iter().map(|c| c.voxels).max() else {
            continue;
        };
        for (l, &c) in labels.iter_mut().zip(&comp) {
            if c == 0 {
                continue;
            }
            let n = stats[c as usize - 1].voxels;
            if n == largest {
                continue;
            }
            let remove = match min_size {
                Some(m) => (n as f64 * voxel_volume) < *m,
                None => true,
            };
            if remove {
                *l = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_sizes_parse_as_python_literals() {
        assert_eq!(
            parse_sizes("{1: 120.5, (1, 2): 33}"),
            Some(vec![(vec![1], 120.5), (vec![1, 2], 33.0)])
        );
        assert_eq!(parse_sizes("{}"), Some(vec![]));
        assert_eq!(parse_sizes("[1]"), None);
    }

    #[test]
    fn postprocessing_keeps_the_largest_component() {
        // Two components of class 1 (3 and 1 voxels) and one of class 2 on a 1 x 1 x 7 line.
        let mut l = vec![1, 1, 1, 0, 1, 0, 2];
        let pp = Postprocessing {
            for_which_classes: vec![vec![1]],
            min_valid_object_size: vec![None],
        };
        postprocess(&mut l, [1, 1, 7], 1.0, &pp);
        assert_eq!(l, [1, 1, 1, 0, 0, 0, 2]);
        // Above the minimum size a smaller component stays.
        let mut l = vec![1, 1, 1, 0, 1, 1, 0];
        let pp = Postprocessing {
            for_which_classes: vec![vec![1]],
            min_valid_object_size: vec![Some(1.5)],
        };
        postprocess(&mut l, [1, 1, 7], 1.0, &pp);
        assert_eq!(l, [1, 1, 1, 0, 1, 1, 0]);
    }
}
