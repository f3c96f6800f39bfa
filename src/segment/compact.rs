//! The compact form of an nnU-Net model folder, for shipping: what inference reads and nothing
//! else, each weights file checked by its digest.
//!
//! `ctgrade convert --from-nnunet DIR --out DIR2` ([`write`]) makes it from a trained-model
//! folder (or another compact one):
//! - `plans.json`: the plans with the one configuration the checkpoints were trained with, its
//!   `inherits_from` chain resolved;
//! - `dataset.json`: the fields inference reads (channels, labels, file ending, region order);
//! - `fold_<f>.safetensors`: the tensors of each fold's `network_weights` the network reads,
//!   as f32, each once (without the aliases, the optimizer state, the training log or the
//!   plans copy a checkpoint carries);
//! - `ctgrade-nnunet.json` ([`Manifest`]), written last: the trainer, configuration and
//!   mirroring axes the checkpoints carried, and each fold's file with its sha256; for an
//!   nnU-Net v1 model also its version and `postprocessing.json`.
//!
//! An nnU-Net v1 folder's compact form holds its plans as [`super::v1`] translates them and the
//! weights under the names ctgrade's network reads (BatchNorm folded); it runs as v1 does.
//!
//! [`super::ModelFolder::load`] reads any form; a folder with the manifest is compact.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::checkpoint::Checkpoint;
use super::v1::Postprocessing;
use super::{FoldCheckpoint, ModelFolder, SegmentError, Version};

/// The manifest's file name; its presence makes a folder compact.
pub const MANIFEST_FILE: &str = "ctgrade-nnunet.json";

/// The manifest's `format`.
pub const FORMAT: &str = "ctgrade-nnunet-v1";

/// `ctgrade-nnunet.json`: the meta fields of the original checkpoints and the weights files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The checkpoints' `trainer_name`.
    pub trainer_name: String,
    /// The checkpoints' `init_args.configuration` (the one configuration in `plans.json`).
    pub configuration: String,
    /// The checkpoints' `inference_allowed_mirroring_axes` (`null`: nnU-Net does not mirror).
    pub mirroring_axes: Option<Vec<usize>>,
    /// The folds, in the order nnU-Net averages them.
    pub folds: Vec<FoldFile>,
    /// The nnU-Net that trained the model: 1 or 2 (absent: 2).
    #[serde(default = "v2", skip_serializing_if = "is_v2")]
    pub nnunet_version: u8,
    /// nnU-Net v1's `postprocessing.json`, where the model had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocessing: Option<Postprocessing>,
}

fn v2() -> u8 {
    2
}

fn is_v2(v: &u8) -> bool {
    *v == 2
}

/// One fold's weights file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FoldFile {
    /// The fold's name (`0`, `1`, ..., `all`).
    pub fold: String,
    /// The safetensors file, in the folder.
    pub file: String,
    /// Lower-case hex sha256 of that file.
    pub sha256: String,
}

impl Manifest {
    /// Reads `dir`'s manifest; `None` when the folder has none (an nnU-Net folder).
    pub fn read_in(dir: &Path) -> Result<Option<Self>, SegmentError> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|error| SegmentError::Io {
            path: path.clone(),
            error,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| SegmentError::Json {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if m.format != FORMAT {
            return Err(SegmentError::Field {
                path,
                field: "format".into(),
                msg: format!("{:?} is not {FORMAT:?}", m.format),
            });
        }
        if m.nnunet_version != 1 && m.nnunet_version != 2 {
            return Err(SegmentError::Field {
                path,
                field: "nnunet_version".into(),
                msg: format!("{} is not 1 or 2", m.nnunet_version),
            });
        }
        for f in &m.folds {
            let plain = Path::new(&f.file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || f.file.is_empty() {
                return Err(SegmentError::Field {
                    path,
                    field: format!("folds.{}.file", f.fold),
                    msg: format!("{:?} must be a file inside the model folder", f.file),
                });
            }
        }
        Ok(Some(m))
    }

    /// The nnU-Net whose computation the model follows.
    pub fn version(&self) -> Version {
        if self.nnunet_version == 1 {
            Version::V1
        } else {
            Version::V2
        }
    }

    /// The folds' checkpoints: `folds` by name (every listed fold when `None`), each weights
    /// file checked against its sha256 before it is read.
    pub fn checkpoints(
        &self,
        dir: &Path,
        folds: Option<&[String]>,
        device: &Device,
    ) -> Result<Vec<FoldCheckpoint>, SegmentError> {
        let manifest = dir.join(MANIFEST_FILE);
        let chosen: Vec<&FoldFile> = match folds {
            None => self.folds.iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.folds
                        .iter()
                        .find(|f| &f.fold == n)
                        .ok_or_else(|| SegmentError::Field {
                            path: manifest.clone(),
                            field: "folds".into(),
                            msg: format!(
                                "no fold_{n} (the model has {:?})",
                                self.folds.iter().map(|f| &f.fold).collect::<Vec<_>>()
                            ),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        chosen
            .into_iter()
            .map(|f| {
                let path = dir.join(&f.file);
                let bytes = std::fs::read(&path).map_err(|error| SegmentError::Io {
                    path: path.clone(),
                    error,
                })?;
                let found = ctgrade_fsio::sha256_hex(&bytes);
                if found != f.sha256 {
                    return Err(SegmentError::Field {
                        path: path.clone(),
                        field: "sha256".into(),
                        msg: format!(
                            "{found}, but {} says {}: the file is corrupt or not the one converted",
                            manifest.display(),
                            f.sha256
                        ),
                    });
                }
                let weights = candle_core::safetensors::load_buffer(&bytes, device)
                    .and_then(|w| {
                        w.into_iter()
                            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
                            .collect::<candle_core::Result<HashMap<String, Tensor>>>()
                    })
                    .map_err(|e| SegmentError::Field {
                        path: path.clone(),
                        field: "(safetensors)".into(),
                        msg: e.to_string(),
                    })?;
                let ck = Checkpoint {
                    trainer_name: self.trainer_name.clone(),
                    configuration: self.configuration.clone(),
                    mirroring_axes: self.mirroring_axes.clone(),
                    weights,
                };
                Ok(FoldCheckpoint {
                    fold: f.fold.clone(),
                    path,
                    checkpoint: ck,
                })
            })
            .collect()
    }
}

/// Writes the compact form of the model folder `src` (either form; `folds` as in
/// [`ModelFolder::load`]) into `out`, after checking every fold's weights against the plans as
/// loading does. The manifest is written last, so an interrupted conversion leaves no loadable
/// model. Returns the manifest.
pub fn write(src: &Path, folds: Option<&[String]>, out: &Path) -> Result<Manifest, SegmentError> {
    let device = Device::Cpu;
    let contents = super::read_folder(src, folds, &device)?;
    let (model, weights) = ModelFolder::assemble(src, contents, &device)?;
    if same_folder(src, out) {
        return Err(SegmentError::Folder {
            path: out.into(),
            msg: "the output folder is the model folder itself".into(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SegmentError::Io { path, error }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();

    let mut configurations = Map::new();
    let mut resolved = model
        .plans
        .resolved(&model.plans_file, &model.configuration_name)?;
    resolved.remove("inherits_from");
    configurations.insert(model.configuration_name.clone(), Value::Object(resolved));
    let mut plans = model.plans.clone();
    plans.configurations = configurations;
    let plans_value = serde_json::to_value(&plans).unwrap_or_default();
    let dataset_value = serde_json::to_value(&model.dataset).unwrap_or_default();
    for (name, value) in [
        ("plans.json", &plans_value),
        ("dataset.json", &dataset_value),
    ] {
        let path = out.join(name);
        ctgrade_fsio::write_atomic(&path, &json(value)).map_err(io(&path))?;
    }

    let mut files = Vec::with_capacity(weights.len());
    for (fold, w) in model.folds.iter().zip(&weights) {
        let file = format!("fold_{fold}.safetensors");
        let path = out.join(&file);
        ctgrade_fsio::write_atomic_by_path(&path, "", |tmp| candle_core::safetensors::save(w, tmp))
            .map_err(|e| SegmentError::Folder {
                path: path.clone(),
                msg: format!("cannot write: {e}"),
            })?;
        let sha256 = ctgrade_fsio::sha256_file(&path).map_err(io(&path))?;
        files.push(FoldFile {
            fold: fold.clone(),
            file,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        trainer_name: model.trainer_name.clone(),
        configuration: model.configuration_name.clone(),
        mirroring_axes: model.mirroring_axes.clone(),
        folds: files,
        nnunet_version: match model.version {
            Version::V1 => 1,
            Version::V2 => 2,
        },
        postprocessing: model.postprocessing.clone(),
    };
    let path = out.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    ctgrade_fsio::write_atomic(&path, &bytes).map_err(io(&path))?;
    Ok(manifest)
}

/// A digest of the compact folder `dir`: the sha256 of its `plans.json`, `dataset.json` and
/// manifest (which holds each weights file's sha256), so it changes with any of them.
pub fn digest(dir: &Path) -> Result<String, SegmentError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for name in ["plans.json", "dataset.json", MANIFEST_FILE] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|error| SegmentError::Io { path, error })?;
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(ctgrade_fsio::hex(&h.finalize()))
}

fn same_folder(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
