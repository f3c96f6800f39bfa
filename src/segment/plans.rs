//! `plans.json` and `dataset.json` of an nnU-Net v2 model folder, typed.
//!
//! Only what inference uses is typed; other fields are kept nowhere. A configuration is resolved
//! as nnU-Net's `PlansManager._internal_resolve_configuration_inheritance` does it: the parent's
//! fields, then the child's over them (a shallow, top-level update), recursively, refusing cycles.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SegmentError;

/// `plans.json`: the fields inference needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Plans {
    /// The dataset the model was planned for.
    pub dataset_name: String,
    /// The plans identifier (`nnUNetPlans`, `nnUNetResEncUNetMPlans`, ...).
    #[serde(default)]
    pub plans_name: String,
    /// Axis permutation applied to the (z, y, x) image before preprocessing.
    pub transpose_forward: Vec<usize>,
    /// Its inverse, applied to the prediction.
    pub transpose_backward: Vec<usize>,
    /// Intensity statistics of the foreground per input channel (`"0"`, `"1"`, ...), used by
    /// `CTNormalization`.
    #[serde(default)]
    pub foreground_intensity_properties_per_channel: BTreeMap<String, IntensityProperties>,
    /// The configurations, unresolved (see [`Plans::configuration`]).
    pub configurations: Map<String, Value>,
    /// The image reader nnU-Net preprocessed with (`SimpleITKIO`, `NibabelIO`, ...).
    #[serde(default = "default_reader")]
    pub image_reader_writer: String,
}

fn default_reader() -> String {
    "SimpleITKIO".into()
}

/// Readers whose arrays are the voxel grid in (z, y, x) order, as ctgrade's volumes are:
/// SimpleITK's, and nibabel's without reorientation (its arrays are transposed to the same order).
/// `NibabelIOWithReorient` and the 2-D image readers would hand the network other arrays.
const READERS: &[&str] = &["SimpleITKIO", "NibabelIO"];

/// Foreground intensity statistics of one channel over the training set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct IntensityProperties {
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// 0.5th percentile: the lower clip of `CTNormalization`.
    pub percentile_00_5: f64,
    /// 99.5th percentile: the upper clip of `CTNormalization`.
    pub percentile_99_5: f64,
}

/// How one input channel is normalised (`normalization_schemes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Normalization {
    /// Clip to the foreground percentiles 0.5 / 99.5, then z-score with the foreground mean and
    /// standard deviation of the plans.
    CTNormalization,
    /// Z-score with the image's own mean and standard deviation (inside the non-zero mask when
    /// `use_mask_for_norm`).
    ZScoreNormalization,
    /// No change.
    NoNormalization,
    /// Scale to [0, 1] by the image's own minimum and maximum.
    RescaleTo01Normalization,
    /// Divide by 255 (8-bit RGB inputs).
    RGBTo01Normalization,
}

/// The keyword arguments of a resampling function (`resampling_fn_*_kwargs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct ResamplingKwargs {
    /// Whether the input is a label map.
    #[serde(default)]
    pub is_seg: bool,
    /// Spline order in-plane (or in 3-D when not separate-z).
    pub order: usize,
    /// Spline order along the low-resolution axis when resampling separately along it.
    #[serde(default)]
    pub order_z: usize,
    /// `Some(true)`/`Some(false)` forces the separate-z choice; `None` lets the anisotropy decide.
    #[serde(default)]
    pub force_separate_z: Option<bool>,
}

/// A configuration's network: the class and its constructor's keyword arguments.
#[derive(Clone, Debug, Deserialize)]
pub struct Architecture {
    /// Dotted class name (`dynamic_network_architectures.architectures.unet.PlainConvUNet`).
    pub network_class_name: String,
    /// The constructor's keyword arguments, as written (typed by [`super::unet::UNetConfig`]).
    pub arch_kwargs: Map<String, Value>,
}

/// One configuration of `plans.json` after inheritance.
#[derive(Clone, Debug)]
pub struct Configuration {
    /// The network's input patch (spatial axes of the preprocessed array).
    pub patch_size: Vec<usize>,
    /// The target spacing (spatial axes of the preprocessed array, after `transpose_forward`).
    pub spacing: Vec<f64>,
    /// One normalisation per input channel.
    pub normalization_schemes: Vec<Normalization>,
    /// Per channel: normalise only inside the non-zero mask.
    pub use_mask_for_norm: Vec<bool>,
    /// The data resampling function's name.
    pub resampling_fn_data: String,
    /// Its keyword arguments.
    pub resampling_fn_data_kwargs: ResamplingKwargs,
    /// The probabilities' resampling function's name (used at export).
    pub resampling_fn_probabilities: String,
    /// Its keyword arguments.
    pub resampling_fn_probabilities_kwargs: ResamplingKwargs,
    /// The network.
    pub architecture: Architecture,
    /// The preprocessor's class name.
    pub preprocessor_name: String,
    /// The cascade's previous stage, whose segmentation this configuration takes as input.
    pub previous_stage: Option<String>,
}

/// One field of a configuration, typed; `default` where nnU-Net has one. Field by field, so that
/// an error names the field (serde's own message for an unknown variant does not).
fn typed<T: serde::de::DeserializeOwned>(
    m: &Map<String, Value>,
    key: &str,
    default: Option<T>,
    bad: &impl Fn(&str, String) -> SegmentError,
) -> Result<T, SegmentError> {
    match (m.get(key), default) {
        (Some(v), _) => serde_json::from_value(v.clone()).map_err(|e| bad(key, e.to_string())),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(bad(key, "missing".into())),
    }
}

/// The resampling functions ctgrade implements (nnU-Net's default).
const RESAMPLING_FNS: &[&str] = &["resample_data_or_seg_to_shape"];

fn read_text(path: &Path) -> Result<String, SegmentError> {
    std::fs::read_to_string(path).map_err(|error| SegmentError::Io {
        path: path.into(),
        error,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, SegmentError> {
    serde_json::from_str(text).map_err(|e| SegmentError::Json {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// A JSON file, read and parsed, its errors naming it.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SegmentError> {
    parse(path, &read_text(path)?)
}

impl Plans {
    /// Reads and checks `plans.json`: the transpositions must be inverse permutations of the
    /// spatial axes.
    pub fn read(path: &Path) -> Result<Self, SegmentError> {
        let plans: Plans = read_json(path)?;
        let field = |field: &str, msg: String| SegmentError::Field {
            path: path.into(),
            field: field.into(),
            msg,
        };
        if !READERS.contains(&plans.image_reader_writer.as_str()) {
            return Err(field(
                "image_reader_writer",
                format!(
                    "{:?} is not supported ({READERS:?})",
                    plans.image_reader_writer
                ),
            ));
        }
        let n = plans.transpose_forward.len();
        if !is_permutation(&plans.transpose_forward) {
            return Err(field(
                "transpose_forward",
                format!("{:?} is not a permutation", plans.transpose_forward),
            ));
        }
        let inverse_ok = plans.transpose_backward.len() == n
            && (0..n).all(|i| {
                plans
                    .transpose_backward
                    .get(i)
                    .and_then(|&b| plans.transpose_forward.get(b))
                    == Some(&i)
            });
        if !inverse_ok {
            return Err(field(
                "transpose_backward",
                format!(
                    "{:?} is not the inverse of transpose_forward {:?}",
                    plans.transpose_backward, plans.transpose_forward
                ),
            ));
        }
        Ok(plans)
    }

    /// The configuration `name`, its `inherits_from` chain resolved, typed and checked.
    pub fn configuration(&self, path: &Path, name: &str) -> Result<Configuration, SegmentError> {
        let merged = self.resolved(path, name)?;
        let field = format!("configurations.{name}");
        let bad = |sub: &str, msg: String| SegmentError::Field {
            path: path.into(),
            field: format!("{field}.{sub}"),
            msg,
        };
        let m = &merged;
        let cfg = Configuration {
            patch_size: typed(m, "patch_size", None, &bad)?,
            spacing: typed(m, "spacing", None, &bad)?,
            normalization_schemes: typed(m, "normalization_schemes", None, &bad)?,
            use_mask_for_norm: typed(m, "use_mask_for_norm", Some(Vec::new()), &bad)?,
            resampling_fn_data: typed(m, "resampling_fn_data", None, &bad)?,
            resampling_fn_data_kwargs: typed(m, "resampling_fn_data_kwargs", None, &bad)?,
            resampling_fn_probabilities: typed(m, "resampling_fn_probabilities", None, &bad)?,
            resampling_fn_probabilities_kwargs: typed(
                m,
                "resampling_fn_probabilities_kwargs",
                None,
                &bad,
            )?,
            architecture: typed(m, "architecture", None, &bad)?,
            preprocessor_name: typed(
                m,
                "preprocessor_name",
                Some("DefaultPreprocessor".to_string()),
                &bad,
            )?,
            previous_stage: typed(m, "previous_stage", Some(None), &bad)?,
        };
        if cfg.patch_size.len() != cfg.spacing.len() || !(2..=3).contains(&cfg.patch_size.len()) {
            return Err(bad(
                "patch_size",
                format!(
                    "{:?} does not fit spacing {:?} (2 or 3 axes each)",
                    cfg.patch_size, cfg.spacing
                ),
            ));
        }
        if cfg.patch_size.contains(&0) {
            return Err(bad(
                "patch_size",
                format!("{:?} has a zero", cfg.patch_size),
            ));
        }
        if cfg.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad("spacing", format!("{:?} is not positive", cfg.spacing)));
        }
        if cfg.preprocessor_name != "DefaultPreprocessor" {
            return Err(bad(
                "preprocessor_name",
                format!(
                    "{:?} is not supported (only DefaultPreprocessor)",
                    cfg.preprocessor_name
                ),
            ));
        }
        for (sub, f) in [
            ("resampling_fn_data", &cfg.resampling_fn_data),
            (
                "resampling_fn_probabilities",
                &cfg.resampling_fn_probabilities,
            ),
        ] {
            if !RESAMPLING_FNS.contains(&f.as_str()) {
                return Err(bad(
                    sub,
                    format!("{f:?} is not supported (only {RESAMPLING_FNS:?})"),
                ));
            }
        }
        if let Some(prev) = &cfg.previous_stage {
            return Err(bad(
                "previous_stage",
                format!("a cascade stage (after {prev:?}) needs the previous stage's segmentation, which ctgrade does not run"),
            ));
        }
        Ok(cfg)
    }

    /// The configuration `name` as JSON, its `inherits_from` chain resolved (the field itself
    /// kept).
    pub fn resolved(&self, path: &Path, name: &str) -> Result<Map<String, Value>, SegmentError> {
        self.resolve(path, name, &mut Vec::new())
    }

    fn resolve(
        &self,
        path: &Path,
        name: &str,
        visited: &mut Vec<String>,
    ) -> Result<Map<String, Value>, SegmentError> {
        let bad = |msg: String| SegmentError::Field {
            path: path.into(),
            field: format!("configurations.{name}"),
            msg,
        };
        let Some(Value::Object(cfg)) = self.configurations.get(name) else {
            let known: Vec<&String> = self.configurations.keys().collect();
            return Err(bad(format!(
                "no such configuration (the plans have {known:?})"
            )));
        };
        let Some(parent) = cfg.get("inherits_from") else {
            return Ok(cfg.clone());
        };
        let Some(parent) = parent.as_str() else {
            return Err(bad(format!("inherits_from {parent} is not a name")));
        };
        visited.push(name.to_string());
        if visited.iter().any(|v| v == parent) {
            return Err(bad(format!(
                "inherits_from {parent:?} is circular (visited {visited:?})"
            )));
        }
        let mut base = self.resolve(path, parent, visited)?;
        for (k, v) in cfg {
            base.insert(k.clone(), v.clone());
        }
        Ok(base)
    }

    /// The intensity properties of input channel `c`.
    pub fn intensity_properties(
        &self,
        path: &Path,
        c: usize,
    ) -> Result<&IntensityProperties, SegmentError> {
        self.foreground_intensity_properties_per_channel
            .get(&c.to_string())
            .ok_or_else(|| SegmentError::Field {
                path: path.into(),
                field: format!("foreground_intensity_properties_per_channel.{c}"),
                msg: "missing (CTNormalization needs it)".into(),
            })
    }
}

fn is_permutation(p: &[usize]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter().all(|&i| {
        let fresh = seen.get(i).is_some_and(|s| !s);
        if fresh {
            seen[i] = true;
        }
        fresh
    })
}

/// `dataset.json`: the fields inference needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DatasetJson {
    /// Input channels by index (`{"0": "CT"}`).
    #[serde(alias = "modality")]
    pub channel_names: BTreeMap<String, String>,
    /// Label name to value (an integer; a list of integers for region-based training).
    pub labels: BTreeMap<String, Value>,
    /// The image file ending (`.nii.gz`, `.mha`).
    #[serde(default)]
    pub file_ending: String,
    /// Label values in the order regions are predicted (region-based training only).
    #[serde(default)]
    pub regions_class_order: Option<Vec<i64>>,
}

impl DatasetJson {
    /// Reads `dataset.json`.
    pub fn read(path: &Path) -> Result<Self, SegmentError> {
        read_json(path)
    }

    /// The number of input channels.
    pub fn num_input_channels(&self) -> usize {
        self.channel_names.len()
    }

    /// The label values sorted, checked: integers, background 0 among them, no region-based
    /// training (whose sigmoid outputs ctgrade does not implement).
    pub fn label_values(&self, path: &Path) -> Result<Vec<i64>, SegmentError> {
        let bad = |field: String, msg: String| SegmentError::Field {
            path: path.into(),
            field,
            msg,
        };
        if self.regions_class_order.is_some() {
            return Err(bad(
                "regions_class_order".into(),
                "region-based models are not supported".into(),
            ));
        }
        let mut values = Vec::with_capacity(self.labels.len());
        for (name, v) in &self.labels {
            let Some(v) = v.as_i64() else {
                return Err(bad(
                    format!("labels.{name}"),
                    format!("{v} is not an integer label (region-based models are not supported)"),
                ));
            };
            values.push(v);
        }
        values.sort_unstable();
        values.dedup();
        if values.first() != Some(&0) {
            return Err(bad("labels".into(), "no background label 0".into()));
        }
        // nnU-Net's LabelManager: the network's channel i is label i.
        if values.iter().enumerate().any(|(i, &v)| v != i as i64) {
            return Err(bad(
                "labels".into(),
                format!("{values:?} are not consecutive from 0"),
            ));
        }
        if self.labels.contains_key("ignore") {
            return Err(bad(
                "labels.ignore".into(),
                "models with an ignore label are not supported".into(),
            ));
        }
        Ok(values)
    }

    /// The network's output channels: one per label (nnU-Net's `num_segmentation_heads` without
    /// regions).
    pub fn num_segmentation_heads(&self, path: &Path) -> Result<usize, SegmentError> {
        Ok(self.label_values(path)?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans_with(configs: Value) -> Plans {
        serde_json::from_value(serde_json::json!({
            "dataset_name": "D",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": configs,
        }))
        .expect("plans")
    }

    #[test]
    fn inheritance_is_a_shallow_update_and_cycles_are_refused() {
        let p = plans_with(serde_json::json!({
            "a": {"x": 1, "y": {"k": 1}},
            "b": {"inherits_from": "a", "y": {"j": 2}},
            "c": {"inherits_from": "d"},
            "d": {"inherits_from": "c"},
        }));
        let path = Path::new("plans.json");
        let b = p.resolve(path, "b", &mut Vec::new()).expect("b");
        assert_eq!(b["x"], 1);
        // The child's dict replaces the parent's whole, as Python's dict.update does.
        assert_eq!(b["y"], serde_json::json!({"j": 2}));
        let e = p.resolve(path, "c", &mut Vec::new()).expect_err("cycle");
        assert!(e.to_string().contains("circular"), "{e}");
        let e = p.resolve(path, "z", &mut Vec::new()).expect_err("missing");
        assert!(e.to_string().contains("configurations.z"), "{e}");
    }

    #[test]
    fn permutations() {
        assert!(is_permutation(&[0, 2, 1]));
        assert!(!is_permutation(&[0, 0, 1]));
        assert!(!is_permutation(&[0, 3, 1]));
    }
}
