//! nnU-Net v2 inference: a trained-model folder as nnU-Net's trainer leaves it (`dataset.json`,
//! `plans.json`, `fold_N/checkpoint_final.pth`), read and run on candle.
//!
//! - [`plans`]: typed `plans.json` and `dataset.json`, configurations resolved through
//!   `inherits_from` as nnU-Net's `PlansManager` does;
//! - [`checkpoint`]: `checkpoint_final.pth` (a torch zip pickle): the trainer, the configuration,
//!   the mirroring axes and the state dict;
//! - [`compact`]: the same as ctgrade ships it (safetensors weights with their sha256, the plans'
//!   one configuration);
//! - [`v1`]: nnU-Net v1 folders (`plans.pkl`, `model_final_checkpoint.model`), read through
//!   [`pickle`] and run with v1's own preprocessing, prediction and export ([`Version`]);
//! - [`unet`]: `PlainConvUNet` and `ResidualEncoderUNet` of dynamic_network_architectures, 2-D and
//!   3-D, with the checkpoint's tensor names;
//! - [`preprocess`]: `DefaultPreprocessor` (transpose, crop, normalise, resample);
//! - [`resample`]: nnU-Net's resampling (scipy's spline zoom as skimage calls it, separate z);
//! - [`predict`]: the sliding window over every fold, and the export back to the CT's grid;
//! - [`ModelFolder`]: all of it checked together at load time; [`ModelFolder::segment`] runs a
//!   case.
//!
//! The references are nnunetv2's `nnUNetPredictor` and nnU-Net v1's `predict_cases`;
//! tests/nnunet_parity.rs compares with their outputs (tools/make_nnunet_fixtures.py,
//! tools/make_nnunet_v1_fixtures.py).

pub mod checkpoint;
pub mod compact;
pub mod pickle;
pub mod plans;
pub mod predict;
pub mod preprocess;
pub mod resample;
pub mod unet;
pub mod v1;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::volume::Volume;

pub use checkpoint::Checkpoint;
pub use plans::{Configuration, DatasetJson, Plans};
pub use predict::PredictOptions;
pub use unet::{UNet, UNetConfig};

/// Why a model folder, a plans file or a checkpoint cannot be used; each names the file and,
/// where one is at fault, the field.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks a field of the right type.
    #[error("{path}: {msg}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        msg: String,
    },
    /// A field holds a value ctgrade does not know or cannot run.
    #[error("{path}: {field}: {msg}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field (a dotted path, as in the file).
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint's trainer builds its network some other way than from the plans.
    #[error("{path}: trainer_name {trainer:?} is not supported: ctgrade runs networks built from plans.json (nnUNetTrainer and its variants that change only training)")]
    Trainer {
        /// The checkpoint.
        path: PathBuf,
        /// The trainer's class name.
        trainer: String,
    },
    /// A checkpoint's state dict does not fit the network the plans describe.
    #[error("{path}: network_weights do not fit the plans' architecture: {msg}")]
    Weights {
        /// The checkpoint.
        path: PathBuf,
        /// The first misfit (a missing tensor or a wrong shape, by name).
        msg: String,
    },
    /// The model folder holds no usable fold.
    #[error("{path}: {msg}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        msg: String,
    },
}

/// Which nnU-Net trained a model folder. v1 and v2 preprocess, predict and export differently in
/// ways that change results; ctgrade follows the one that trained the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// nnU-Net v1: normalises after resampling, averages softmax probabilities (float32) over
    /// mirrors, tiles and folds, resamples the probabilities back after `transpose_backward`,
    /// then applies `postprocessing.json`.
    V1,
    /// nnU-Net v2: normalises before resampling, averages logits (float16), resamples the
    /// logits back before `transpose_backward`.
    V2,
}

/// A trained-model folder, loaded and checked: plans, dataset, the configuration the checkpoints
/// were trained with, and one network per fold.
pub struct ModelFolder {
    /// The folder.
    pub path: PathBuf,
    /// `plans.json`.
    pub plans: Plans,
    /// `dataset.json`.
    pub dataset: DatasetJson,
    /// The configuration name (the first checkpoint's `init_args.configuration`).
    pub configuration_name: String,
    /// That configuration, inheritance resolved.
    pub configuration: Configuration,
    /// The network configuration built from it.
    pub network: UNetConfig,
    /// The trainer of the first checkpoint.
    pub trainer_name: String,
    /// The axes mirroring may flip (spatial axes of the preprocessed array), from the first
    /// checkpoint; `None` where the checkpoint names none (nnU-Net then does not mirror).
    pub mirroring_axes: Option<Vec<usize>>,
    /// The file the mirroring axes were read from (for errors).
    pub mirroring_source: PathBuf,
    /// The folds loaded, in order.
    pub folds: Vec<String>,
    /// One network per fold.
    pub nets: Vec<UNet>,
    /// Bytes of the folds' weights held in memory (f32, the tensors the networks read).
    pub weight_bytes: u64,
    /// The nnU-Net that trained it.
    pub version: Version,
    /// v1's `postprocessing.json`, where the folder has one.
    pub postprocessing: Option<v1::Postprocessing>,
    /// The file the plans came from (`plans.json`; v1: the first fold's trainer pickle).
    pub plans_file: PathBuf,
}

/// One fold's checkpoint and the file it came from.
pub struct FoldCheckpoint {
    /// The fold's name (`0`, `1`, ..., `all`).
    pub fold: String,
    /// `fold_<f>/checkpoint_final.pth`, or the compact form's safetensors file.
    pub path: PathBuf,
    /// Its contents.
    pub checkpoint: Checkpoint,
}

/// A model folder read but not yet checked: plans and dataset (v1's translated), the chosen
/// folds' checkpoints, and v1's postprocessing.
pub(crate) struct FolderContents {
    /// The file the plans came from (v1: the first fold's trainer pickle), for errors.
    pub plans_file: PathBuf,
    pub plans: Plans,
    pub dataset: DatasetJson,
    pub checkpoints: Vec<FoldCheckpoint>,
    pub version: Version,
    pub postprocessing: Option<v1::Postprocessing>,
}

/// `plans.json`, `dataset.json` and the chosen folds' checkpoints of a model folder in any form
/// (see [`ModelFolder::load`]), read but not yet checked against each other.
pub(crate) fn read_folder(
    dir: &Path,
    folds: Option<&[String]>,
    device: &Device,
) -> Result<FolderContents, SegmentError> {
    if v1::is_v1_folder(dir) {
        let f = v1::read_folder(dir, folds, device)?;
        return Ok(FolderContents {
            plans_file: f.plans_file,
            plans: f.plans,
            dataset: f.dataset,
            checkpoints: f.checkpoints,
            version: Version::V1,
            postprocessing: f.postprocessing,
        });
    }
    let plans = Plans::read(&dir.join("plans.json"))?;
    let dataset = DatasetJson::read(&dir.join("dataset.json"))?;
    let manifest = compact::Manifest::read_in(dir)?;
    let checkpoints = match &manifest {
        Some(manifest) => manifest.checkpoints(dir, folds, device)?,
        None => {
            let folds: Vec<String> = match folds {
                Some(f) => f.to_vec(),
                None => detect_folds(dir)?,
            };
            let mut v = Vec::with_capacity(folds.len());
            for fold in folds {
                let path = dir
                    .join(format!("fold_{fold}"))
                    .join("checkpoint_final.pth");
                let checkpoint = Checkpoint::read(&path, device)?;
                v.push(FoldCheckpoint {
                    fold,
                    path,
                    checkpoint,
                });
            }
            v
        }
    };
    if checkpoints.is_empty() {
        return Err(SegmentError::Folder {
            path: dir.into(),
            msg: format!(
                "no fold_N/checkpoint_final.pth (nor a {} of ctgrade's compact form, nor an nnU-Net v1 plans.pkl)",
                compact::MANIFEST_FILE
            ),
        });
    }
    Ok(FolderContents {
        plans_file: dir.join("plans.json"),
        plans,
        dataset,
        checkpoints,
        version: manifest
            .as_ref()
            .map_or(Version::V2, compact::Manifest::version),
        postprocessing: manifest.and_then(|m| m.postprocessing),
    })
}

impl ModelFolder {
    /// Loads `dir`, an nnU-Net v2 trained-model folder (`plans.json`, `dataset.json`,
    /// `fold_<f>/checkpoint_final.pth`), its compact form ([`compact`]) or an nnU-Net v1 folder
    /// ([`v1`]; every `fold*` by name when `folds` is `None`, as v1 does), with the folds
    /// `folds` (every fold when `None`: for nnU-Net's folders every `fold_N` present, in numeric
    /// order, `fold_all` excluded as nnU-Net does). Every fold's trainer and tensors are checked
    /// against the plans here, before any case is read.
    pub fn load(
        dir: &Path,
        folds: Option<&[String]>,
        device: &Device,
    ) -> Result<Self, SegmentError> {
        Ok(Self::assemble(dir, read_folder(dir, folds, device)?, device)?.0)
    }

    /// Builds one network per fold from the plans, checking trainer and tensors; also returns,
    /// per fold, the tensors its network read (what the compact form keeps).
    pub(crate) fn assemble(
        dir: &Path,
        contents: FolderContents,
        device: &Device,
    ) -> Result<(Self, Vec<HashMap<String, Tensor>>), SegmentError> {
        let FolderContents {
            plans_file,
            plans,
            dataset,
            checkpoints,
            version,
            postprocessing,
        } = contents;
        let dataset_path = dir.join("dataset.json");
        if version == Version::V2 {
            for f in &checkpoints {
                checkpoint::check_trainer(&f.path, &f.checkpoint.trainer_name)?;
            }
        }
        // nnU-Net takes the trainer, configuration and mirroring axes of the first fold for all.
        let Some(first) = checkpoints.first() else {
            return Err(SegmentError::Folder {
                path: dir.into(),
                msg: "no fold".into(),
            });
        };
        let trainer_name = first.checkpoint.trainer_name.clone();
        let configuration_name = first.checkpoint.configuration.clone();
        let mirroring_axes = first.checkpoint.mirroring_axes.clone();
        let mirroring_source = first.path.clone();
        let configuration = plans.configuration(&plans_file, &configuration_name)?;
        let mut network = UNetConfig::from_plans(
            &plans_file,
            &configuration_name,
            &configuration,
            dataset.num_input_channels(),
            dataset.num_segmentation_heads(&dataset_path)?,
        )?;
        if version == Version::V1 {
            // Generic_UNet's u-th localisation block convolves with the kernel of the stage
            // below its skip.
            let k = &network.kernels;
            network.decoder_kernels = (1..k.len()).map(|s| k[k.len() - s]).collect();
        }
        let mut nets = Vec::with_capacity(checkpoints.len());
        let mut folds = Vec::with_capacity(checkpoints.len());
        let mut weight_bytes = 0u64;
        let mut read_per_fold = Vec::with_capacity(checkpoints.len());
        for f in checkpoints {
            let (net, read) =
                weights::build(&network, &f.checkpoint.weights, device).map_err(|e| {
                    SegmentError::Weights {
                        path: f.path.clone(),
                        msg: e.to_string(),
                    }
                })?;
            weight_bytes += read
                .values()
                .map(|t| 4 * t.elem_count() as u64)
                .sum::<u64>();
            nets.push(net);
            folds.push(f.fold);
            read_per_fold.push(read);
        }
        let model = Self {
            path: dir.into(),
            plans,
            dataset,
            configuration_name,
            configuration,
            network,
            trainer_name,
            mirroring_axes,
            mirroring_source,
            folds,
            nets,
            weight_bytes,
            version,
            postprocessing,
            plans_file,
        };
        Ok((model, read_per_fold))
    }
}

/// A CT's segmentation on its own grid.
#[derive(Clone, Debug)]
pub struct Segmentation {
    /// The label (class index of `dataset.json`'s labels) per voxel, with the CT's geometry.
    pub labels: Volume,
    /// Per class, the probability per voxel (same order as the labels' voxels).
    pub probabilities: Vec<Vec<f32>>,
}

impl ModelFolder {
    /// Segments one case, given as one volume per input channel (`dataset.json`'s
    /// `channel_names`, in order), all on one grid: nnU-Net's preprocessing, sliding-window
    /// prediction over every loaded fold and export, on the first channel's grid.
    pub fn segment(
        &self,
        channels: &[Volume],
        opts: &PredictOptions,
        device: &Device,
    ) -> Result<Segmentation, SegmentError> {
        let first = channels.first().ok_or_else(|| SegmentError::Folder {
            path: self.path.join("dataset.json"),
            msg: "no input channel given".into(),
        })?;
        if channels.len() != self.dataset.num_input_channels() {
            return Err(SegmentError::Field {
                path: self.path.join("dataset.json"),
                field: "channel_names".into(),
                msg: format!(
                    "the model takes {} input channels, {} were given",
                    self.dataset.num_input_channels(),
                    channels.len()
                ),
            });
        }
        if channels.iter().any(|c| c.size != first.size) {
            return Err(SegmentError::Folder {
                path: self.path.clone(),
                msg: "the input channels are not on one grid".into(),
            });
        }
        let pre = self.preprocess(channels)?;
        let predicted = predict::predict_logits(self, &pre, opts, device)?;
        let out = self.export(&pre, &predicted)?;
        let labels = Volume {
            data: out.labels.iter().map(|&l| f32::from(l)).collect(),
            size: first.size,
            spacing: first.spacing,
            origin: first.origin,
            direction: first.direction,
        };
        Ok(Segmentation {
            labels,
            probabilities: out.probabilities,
        })
    }

    /// nnU-Net's preprocessing of one case's channels (all on one grid) for this model.
    pub fn preprocess(
        &self,
        channels: &[Volume],
    ) -> Result<preprocess::Preprocessed, SegmentError> {
        preprocess::preprocess(
            channels,
            &self.plans,
            &self.plans_file,
            &self.configuration,
            &self.configuration_name,
            self.version,
        )
    }

    /// The export of [`predict::predict_logits`]' output back to the input's grid, as the
    /// model's nnU-Net does it, v1's `postprocessing.json` included.
    pub fn export(
        &self,
        pre: &preprocess::Preprocessed,
        predicted: &[resample::Array3],
    ) -> Result<predict::Exported, SegmentError> {
        match self.version {
            Version::V2 => predict::export(self, pre, predicted),
            Version::V1 => {
                let mut out = predict::export_v1(self, pre, predicted)?;
                if let Some(pp) = &self.postprocessing {
                    // predict_cases applies it to the written labels, with their voxel volume.
                    let voxel: f64 = pre.spacing.iter().product();
                    v1::postprocess(&mut out.labels, out.shape, voxel, pp);
                }
                Ok(out)
            }
        }
    }

    /// An upper estimate of the memory (bytes) [`ModelFolder::segment`] takes for a CT of
    /// `size` voxels (x, y, z) at `spacing` mm, beside the CT itself. On the CT's grid: the
    /// channels as f64 and their crop while preprocessing, then per class the resampled logits
    /// and the probabilities (f32) and the labels; on the configuration's grid: the
    /// preprocessed channels (f64), the logit sums and weights (f32) and the averaged logits
    /// (f64). The networks' activations are patch-sized and not counted.
    pub fn peak_bytes(&self, size: [usize; 3], spacing: [f64; 3]) -> u64 {
        let n = size.iter().map(|&s| s as f64).product::<f64>();
        let zyx = [spacing[2], spacing[1], spacing[0]];
        let target = &self.configuration.spacing;
        // A 2-D configuration resamples in-plane only.
        let ratio: f64 = match *target.as_slice() {
            [z, y, x] => (zyx[0] / z) * (zyx[1] / y) * (zyx[2] / x),
            [y, x] => (zyx[1] / y) * (zyx[2] / x),
            _ => 1.0,
        };
        let m = n * ratio.max(0.0);
        let ch = self.dataset.num_input_channels() as f64;
        let c = self.network.num_classes as f64;
        let on_ct = n * (16.0 * ch).max(8.0 * c + 1.0) + 4.0 * n;
        let on_target = m * (8.0 * ch + 4.0 * c + 4.0 + 8.0 * c);
        (on_ct + on_target).ceil() as u64
    }

    /// The label names by class index (`dataset.json`'s labels sorted by value).
    pub fn label_names(&self) -> Vec<String> {
        let mut v: Vec<(i64, &String)> = self
            .dataset
            .labels
            .iter()
            .filter_map(|(k, v)| v.as_i64().map(|i| (i, k)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k.clone()).collect()
    }
}

/// The folds present in `dir`, as nnU-Net's `auto_detect_available_folds` finds them: every
/// `fold_N` with a `checkpoint_final.pth`, `fold_all` excluded, in numeric order.
pub fn detect_folds(dir: &Path) -> Result<Vec<String>, SegmentError> {
    let entries = std::fs::read_dir(dir).map_err(|error| SegmentError::Io {
        path: dir.into(),
        error,
    })?;
    let mut folds: Vec<u64> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("fold_")) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        if e.path().join("checkpoint_final.pth").is_file() {
            folds.push(n);
        }
    }
    folds.sort_unstable();
    Ok(folds.into_iter().map(|f| f.to_string()).collect())
}
