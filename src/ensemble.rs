//! Ensembles: a folder of member networks described by one manifest, `ensemble.json`.
//!
//! The paper's model is ten 3-D DenseNet-201 whose outputs (sigmoid values, or softmax vectors) are
//! averaged. A manifest names the architecture, the output head, the input specification that
//! preprocessing follows, and each member's safetensors file with its sha256. Everything that can be
//! checked is checked when the ensemble is opened, before any compute: the files, their hashes, and
//! every tensor's name and shape. Members then run one after another, so memory holds one network,
//! unless they are kept loaded ([`Ensemble::load_members`]) for a server that grades many cases.
//!
//! A manifest may name a lesion model (`lesion_model`): an nnU-Net (v2 or v1) model folder inside
//! the ensemble whose segmentation, reduced to the union of the lesion labels, is the lesion map
//! of the `ct_lesion_zeros` input when the job gives none (the paper's full model: a 3-D nnU-Net
//! ahead of the DenseNets), and a lobe model (`lobe_model`), whose five lobes with the lesion
//! map give the CT severity score ([`crate::burden`]). Both are loaded and checked with the
//! manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::burden::{self, Lobe};
use crate::device::Precision;
use crate::grading::Head;
use crate::heatmap;
use crate::model::fewer_inputs::{Dropped, FewerInputs};
use crate::model::{self, ModelError, Naming, NetworkConfig};
use crate::preprocess::{ChannelLayout, InputSpec};
use crate::segment::{self, ModelFolder, PredictOptions};
use crate::volume::Volume;

/// File name of the manifest inside an ensemble folder.
pub const MANIFEST_FILE: &str = "ensemble.json";
/// Where grand-challenge extracts an uploaded model tarball.
pub const GC_MODEL_DIR: &str = "/opt/ml/model";

/// The manifest of an ensemble (`ensemble.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short name, for logs.
    pub name: String,
    /// What these weights are and where they come from.
    pub description: String,
    /// True for demonstration weights (trained on synthetic phantoms): every run and report
    /// says that its answers are not a diagnosis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demonstration: bool,
    /// The architecture and its hyper-parameters (shared by all members).
    pub network: NetworkConfig,
    /// The output head the members were trained with.
    pub head: Head,
    /// The network input that preprocessing must produce.
    #[serde(default)]
    pub input: InputSpec,
    /// The members, averaged with equal weight.
    pub members: Vec<MemberFile>,
    /// The segmenter that computes the lesion channel when a job gives no lesion map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lesion_model: Option<LesionModelSpec>,
    /// The lobe segmenter: with a lesion map, the per-lobe shares and the CT severity score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lobe_model: Option<LobeModelSpec>,
}

/// Where the lesion segmenter is and which of its labels are lesions (`ensemble.json`'s
/// `lesion_model`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LesionModelSpec {
    /// An nnU-Net v2 trained-model folder (`plans.json`, `dataset.json`,
    /// `fold_N/checkpoint_final.pth`), its compact form or an nnU-Net v1 folder, relative to the
    /// manifest's folder and inside it.
    pub path: String,
    /// The label values (`dataset.json`'s `labels`) whose union is the lesion map: 1 where the
    /// segmentation is any of them, 0 elsewhere.
    pub lesion_labels: Vec<i64>,
}

/// The lesion segmenter of an ensemble, loaded and checked.
pub struct LesionModel {
    /// What the manifest says.
    pub spec: LesionModelSpec,
    /// The model folder, its networks on the CPU.
    pub folder: ModelFolder,
}

/// `folder`'s segmentation of `ct` (label values of `dataset.json`) on the CT's own grid:
/// nnU-Net's default prediction (every fold, mirroring, step 0.5).
fn segment_ct(folder: &ModelFolder, ct: &Volume) -> Result<Volume, segment::SegmentError> {
    let seg = folder.segment(
        std::slice::from_ref(ct),
        &PredictOptions::default(),
        &Device::Cpu,
    )?;
    Ok(seg.labels)
}

impl LesionModel {
    /// Loads the lesion segmenter at `folder` (either form, anywhere) whose `lesion_labels` make
    /// the lesion map, checking both as an ensemble's lesion model is checked; `spec.path` is
    /// the folder as given.
    pub fn open(folder: &Path, lesion_labels: Vec<i64>) -> Result<Self, EnsembleError> {
        let loaded = load_segmenter(folder, "lesion")?;
        check_lesion_labels(&loaded, &lesion_labels).map_err(|reason| {
            EnsembleError::Segmenter {
                role: "lesion",
                path: folder.to_path_buf(),
                reason,
            }
        })?;
        Ok(Self {
            spec: LesionModelSpec {
                path: folder.display().to_string(),
                lesion_labels,
            },
            folder: loaded,
        })
    }

    /// The model's segmentation of `ct` on the CT's own grid.
    pub fn segment(&self, ct: &Volume) -> Result<Volume, segment::SegmentError> {
        segment_ct(&self.folder, ct)
    }

    /// The lesion map of a segmentation: 1 where it is one of the lesion labels, 0 elsewhere.
    pub fn lesion_map(&self, labels: &Volume) -> Volume {
        let mut map = labels.clone();
        for v in &mut map.data {
            *v = f32::from(self.spec.lesion_labels.contains(&(*v as i64)) as u8);
        }
        map
    }
}

/// Where the lobe segmenter is (`ensemble.json`'s `lobe_model`): an nnU-Net model folder whose
/// label names name the five lobes (see [`Lobe::from_label_name`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LobeModelSpec {
    /// The model folder, relative to the manifest's folder and inside it.
    pub path: String,
}

/// The lobe segmenter of an ensemble, loaded and checked.
pub struct LobeModel {
    /// What the manifest says.
    pub spec: LobeModelSpec,
    /// The model folder, its networks on the CPU.
    pub folder: ModelFolder,
    /// The label value of each lobe.
    pub labels: BTreeMap<Lobe, i64>,
}

impl LobeModel {
    /// The model's segmentation of `ct` on the CT's own grid.
    pub fn segment(&self, ct: &Volume) -> Result<Volume, segment::SegmentError> {
        segment_ct(&self.folder, ct)
    }
}

/// One member's weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// Safetensors file, relative to the manifest's folder.
    pub file: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// Why an ensemble cannot be opened or run.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// The manifest is missing, unreadable or malformed.
    #[error("ensemble manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A member file cannot be read.
    #[error("cannot read ensemble member {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// A segmenter named by the manifest (its lesion or lobe model) cannot be loaded or does not
    /// fit.
    #[error("{role} model {path}: {reason}")]
    Segmenter {
        /// `lesion` or `lobe`.
        role: &'static str,
        /// The model folder.
        path: PathBuf,
        /// What is wrong, naming the file and field.
        reason: String,
    },
    /// A member's sha256 differs from the manifest's.
    #[error("ensemble member {path} has sha256 {found}, but the manifest says {expected}: the file is corrupt or not the one the manifest describes")]
    Hash {
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        found: String,
    },
    /// A member's tensors do not fit the architecture.
    #[error("ensemble member {path} does not fit {arch} (members use MONAI parameter names; `ctgrade convert` converts checkpoints): {}", problems.join("; "))]
    Tensors {
        /// The file.
        path: PathBuf,
        /// The architecture name.
        arch: String,
        /// One line per missing, unexpected or misshapen tensor.
        problems: Vec<String>,
    },
    /// The network failed to build.
    #[error("ensemble member {path}: {error}")]
    Model {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: ModelError,
    },
    /// A heat map cannot be computed for these members.
    #[error(transparent)]
    Cam(heatmap::HeatMapError),
    /// A tensor operation failed while running a member.
    #[error("running ensemble member {path}: {error}")]
    Compute {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not `source()`: `{:#}` would print it twice).
        error: candle_core::Error,
    },
}

/// Finds the weights to use: `--weights DIR`, else a model tarball extracted to `/opt/ml/model/`,
/// else the default ensemble shipped with the program. Returns the folder holding `ensemble.json`.
pub fn resolve_weights(explicit: Option<&Path>) -> Result<PathBuf, EnsembleError> {
    if let Some(dir) = explicit {
        return find_manifest_dir(dir).ok_or_else(|| EnsembleError::Manifest {
            path: dir.join(MANIFEST_FILE),
            reason: "not found (the --weights folder must hold ensemble.json, directly or in one subfolder)".into(),
        });
    }
    if let Some(dir) = find_manifest_dir(Path::new(GC_MODEL_DIR)) {
        return Ok(dir);
    }
    default_weight_dirs()
        .into_iter()
        .find_map(|d| find_manifest_dir(&d))
        .ok_or_else(|| EnsembleError::Manifest {
            path: PathBuf::from("weights/default").join(MANIFEST_FILE),
            reason: "no weights found: pass --weights DIR, upload a model tarball to /opt/ml/model, or run from the repository root".into(),
        })
}

/// Where the default ensemble may live: `CTGRADE_WEIGHTS`, beside the executable (the container's
/// `/opt/app/weights/default`), the current folder, and the source tree this binary was built from.
fn default_weight_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CTGRADE_WEIGHTS") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("weights/default"));
    }
    dirs.push(PathBuf::from("weights/default"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default"));
    dirs
}

/// The folder holding `ensemble.json`: `dir` itself or its single subfolder that does (a tarball made
/// with `tar -C parent folder` nests one level).
fn find_manifest_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join(MANIFEST_FILE).is_file() {
        return Some(dir.to_path_buf());
    }
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, EnsembleError> {
    ctgrade_fsio::sha256_file(path).map_err(|error| EnsembleError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Names, shapes and dtypes in a safetensors file's header, read without loading the data.
fn safetensors_header(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, EnsembleError> {
    let io = |error| EnsembleError::Io {
        path: path.to_path_buf(),
        error,
    };
    let bad = |reason: String| EnsembleError::Tensors {
        path: path.to_path_buf(),
        arch: String::new(),
        problems: vec![format!("not a safetensors file: {reason}")],
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(format!("no header ({e})")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 || len + 8 > file_len {
        return Err(bad(format!(
            "header length {len} does not fit the file of {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.shape.clone()))
        .collect())
}

/// Compares a file's tensors with what the network expects; one line per problem.
fn tensor_problems(
    found: &BTreeMap<String, Vec<usize>>,
    expected: &[(String, Vec<usize>)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected_names = BTreeSet::new();
    for (name, shape) in expected {
        expected_names.insert(name.as_str());
        match found.get(name) {
            None => problems.push(format!("missing tensor {name} (expected shape {shape:?})")),
            Some(s) if s != shape => {
                problems.push(format!("tensor {name} has shape {s:?}, expected {shape:?}"))
            }
            Some(_) => {}
        }
    }
    for (name, shape) in found {
        if !expected_names.contains(name.as_str()) {
            problems.push(format!("unexpected tensor {name} (shape {shape:?})"));
        }
    }
    problems
}

/// An opened, checked ensemble.
pub struct Ensemble {
    /// The folder holding the manifest.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// The lesion segmenter, when the manifest names one.
    pub lesion_model: Option<LesionModel>,
    /// The lobe segmenter, when the manifest names one.
    pub lobe_model: Option<LobeModel>,
    /// The members' networks when kept in memory ([`Ensemble::load_members`]).
    loaded: Option<LoadedMembers>,
}

/// Member networks built once and kept, with what they were built for.
struct LoadedMembers {
    networks: Vec<Box<dyn model::Classifier>>,
    device: Device,
    precision: Precision,
    bytes: u64,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("dir", &self.dir)
            .field("manifest", &self.manifest)
            .field(
                "lesion_model",
                &self.lesion_model.as_ref().map(|m| &m.folder.path),
            )
            .field("loaded", &self.loaded.as_ref().map(|l| l.networks.len()))
            .finish()
    }
}

/// Loads a segmenter the manifest names (`role` model at `rel_path`): a folder inside the
/// ensemble, then [`load_segmenter`].
fn open_segmenter(
    dir: &Path,
    manifest_path: &Path,
    role: &'static str,
    rel_path: &str,
) -> Result<ModelFolder, EnsembleError> {
    let rel = Path::new(rel_path);
    let inside = !rel_path.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(EnsembleError::Manifest {
            path: manifest_path.to_path_buf(),
            reason: format!(
                "{role}_model: path {rel_path:?} must be a folder inside the ensemble's folder"
            ),
        });
    }
    load_segmenter(&dir.join(rel), role)
}

/// Loads the `role` segmenter at `folder_path`: a model folder in either form, the CT alone as
/// input.
fn load_segmenter(folder_path: &Path, role: &'static str) -> Result<ModelFolder, EnsembleError> {
    let err = |reason: String| EnsembleError::Segmenter {
        role,
        path: folder_path.to_path_buf(),
        reason,
    };
    if !folder_path.is_dir() {
        return Err(err("no such folder".into()));
    }
    let folder =
        ModelFolder::load(folder_path, None, &Device::Cpu).map_err(|e| err(e.to_string()))?;
    if folder.dataset.num_input_channels() != 1 {
        return Err(err(format!(
            "dataset.json: channel_names: the model takes {} input channels; a {role} model \
             takes the CT alone",
            folder.dataset.num_input_channels()
        )));
    }
    Ok(folder)
}

/// Checks that `labels` are foreground labels of `folder` (what `lesion_labels` must be).
fn check_lesion_labels(folder: &ModelFolder, labels: &[i64]) -> Result<(), String> {
    let known: Vec<i64> = folder
        .dataset
        .labels
        .values()
        .filter_map(serde_json::Value::as_i64)
        .collect();
    if labels.is_empty() {
        return Err("lesion_labels is empty".into());
    }
    for label in labels {
        if *label == 0 || !known.contains(label) {
            return Err(format!(
                "lesion_labels: {label} is not a foreground label of {} (labels {})",
                folder.path.join("dataset.json").display(),
                serde_json::to_string(&folder.dataset.labels).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Loads the manifest's lesion model and checks that it fits: see [`open_segmenter`], lesion
/// labels the model has, and an input layout that takes a lesion map.
fn open_lesion_model(
    dir: &Path,
    manifest_path: &Path,
    spec: &LesionModelSpec,
    input: &InputSpec,
) -> Result<LesionModel, EnsembleError> {
    let field = |reason: String| EnsembleError::Manifest {
        path: manifest_path.to_path_buf(),
        reason: format!("lesion_model: {reason}"),
    };
    if input.channels != ChannelLayout::CtLesionZeros {
        return Err(field(format!(
            "the input layout {:?} takes no lesion map (input.channels must be \"ct_lesion_zeros\")",
            input.channels
        )));
    }
    let folder = open_segmenter(dir, manifest_path, "lesion", &spec.path)?;
    check_lesion_labels(&folder, &spec.lesion_labels).map_err(field)?;
    Ok(LesionModel {
        spec: spec.clone(),
        folder,
    })
}

/// Loads the manifest's lobe model: see [`open_segmenter`], and labels that name the five lobes.
fn open_lobe_model(
    dir: &Path,
    manifest_path: &Path,
    spec: &LobeModelSpec,
) -> Result<LobeModel, EnsembleError> {
    let folder = open_segmenter(dir, manifest_path, "lobe", &spec.path)?;
    let labels: BTreeMap<String, i64> = folder
        .dataset
        .labels
        .iter()
        .filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v)))
        .collect();
    let labels = burden::lobe_labels(&labels).map_err(|reason| EnsembleError::Segmenter {
        role: "lobe",
        path: folder.path.clone(),
        reason: format!("dataset.json: labels: {reason}"),
    })?;
    Ok(LobeModel {
        spec: spec.clone(),
        folder,
        labels,
    })
}

impl Ensemble {
    /// Reads the manifest in `dir` and checks every member (hash, tensor names and shapes).
    pub fn open(dir: &Path) -> Result<Self, EnsembleError> {
        let path = dir.join(MANIFEST_FILE);
        let manifest_err = |reason: String| EnsembleError::Manifest {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| manifest_err(e.to_string()))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| manifest_err(e.to_string()))?;
        if manifest.members.is_empty() {
            return Err(manifest_err("the ensemble has no members".into()));
        }
        if manifest.network.num_outputs != manifest.head.num_outputs() {
            return Err(manifest_err(format!(
                "the {:?} head needs {} network output(s), the network has {}",
                manifest.head,
                manifest.head.num_outputs(),
                manifest.network.num_outputs
            )));
        }
        manifest
            .input
            .validate()
            .map_err(|e| manifest_err(format!("input: {e}")))?;
        let expected = model::expected_tensors_named(&manifest.network, Naming::Monai)
            .map_err(|e| manifest_err(e.to_string()))?;
        manifest.members.par_iter().try_for_each(|member| {
            let file = dir.join(&member.file);
            let found = sha256_file(&file)?;
            if !found.eq_ignore_ascii_case(&member.sha256) {
                return Err(EnsembleError::Hash {
                    path: file,
                    expected: member.sha256.clone(),
                    found,
                });
            }
            let problems = tensor_problems(&safetensors_header(&file)?, &expected);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(EnsembleError::Tensors {
                    path: file,
                    arch: manifest.network.arch.to_string(),
                    problems,
                })
            }
        })?;
        let lesion_model = match &manifest.lesion_model {
            Some(spec) => Some(open_lesion_model(dir, &path, spec, &manifest.input)?),
            None => None,
        };
        let lobe_model = match &manifest.lobe_model {
            Some(spec) => Some(open_lobe_model(dir, &path, spec)?),
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            lesion_model,
            lobe_model,
            loaded: None,
        })
    }

    /// Builds every member on `device` in `precision` and keeps them, so that [`Ensemble::predict`]
    /// in that configuration reads no file (`ctgrade serve` loads once, grades many cases).
    /// Memory then holds all members: [`Ensemble::loaded_bytes`].
    pub fn load_members(
        &mut self,
        device: &Device,
        precision: Precision,
    ) -> Result<(), EnsembleError> {
        let mut networks = Vec::with_capacity(self.len());
        let mut bytes = 0;
        for member in &self.manifest.members {
            let path = self.dir.join(&member.file);
            // The weights in memory: the file's tensors, converted to the compute precision.
            let size = std::fs::metadata(&path)
                .map_err(|error| EnsembleError::Io {
                    path: path.clone(),
                    error,
                })?
                .len();
            bytes += match precision {
                Precision::F32 => size,
                Precision::F16 | Precision::Bf16 => size / 2,
            };
            networks.push(self.build_member(&path, device, precision)?);
        }
        self.loaded = Some(LoadedMembers {
            networks,
            device: device.clone(),
            precision,
            bytes,
        });
        Ok(())
    }

    /// Bytes of weights held by [`Ensemble::load_members`] (0 when members are read per case).
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded.as_ref().map_or(0, |l| l.bytes)
    }

    /// Bytes of the segmenters' weights, held from [`Ensemble::open`] on.
    pub fn segmenter_bytes(&self) -> u64 {
        self.lesion_model
            .as_ref()
            .map_or(0, |m| m.folder.weight_bytes)
            + self
                .lobe_model
                .as_ref()
                .map_or(0, |m| m.folder.weight_bytes)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.manifest.members.len()
    }

    /// True when the ensemble has no members (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.manifest.members.is_empty()
    }

    /// Runs every member on `input` (NCDHW, N = 1, its channels as the manifest's layout says:
    /// the members read only the first one or two, see [`crate::model::fewer_inputs`]) in
    /// `precision` and returns the mean post-activation output: a sigmoid value for the
    /// continuous head, a softmax vector for the categorical one (activations and the mean in
    /// f32/f64 whatever the precision).
    /// `progress(i, seconds)` is called after member `i` (0-based) finished.
    pub fn predict(
        &self,
        input: &Tensor,
        device: &Device,
        precision: Precision,
        progress: impl FnMut(usize, f64),
    ) -> Result<Vec<f64>, EnsembleError> {
        let members = self.predict_members(input, device, precision, progress)?;
        Ok(mean_output(&members))
    }

    /// As [`Ensemble::predict`], but each member's post-activation output, in manifest order
    /// ([`mean_output`] gives the ensemble's).
    pub fn predict_members(
        &self,
        input: &Tensor,
        device: &Device,
        precision: Precision,
        progress: impl FnMut(usize, f64),
    ) -> Result<Vec<Vec<f64>>, EnsembleError> {
        Ok(self
            .run_members(input, device, precision, false, progress)?
            .0)
    }

    /// As [`Ensemble::predict_members`], with the Grad-CAM map of the members' COVID-19
    /// probability on the network input (see [`crate::heatmap`]). Fails for architectures whose
    /// output is not a linear head on globally pooled feature maps.
    pub fn predict_members_with_cam(
        &self,
        input: &Tensor,
        device: &Device,
        precision: Precision,
        progress: impl FnMut(usize, f64),
    ) -> Result<(Vec<Vec<f64>>, heatmap::Cam), EnsembleError> {
        let (outputs, cam) = self.run_members(input, device, precision, true, progress)?;
        let cam = cam.ok_or_else(|| {
            EnsembleError::Cam(heatmap::HeatMapError::Unsupported(
                self.manifest.network.arch.to_string(),
            ))
        })?;
        Ok((outputs, cam))
    }

    /// Runs the members one after another; with `cam`, also averages their Grad-CAM maps.
    fn run_members(
        &self,
        input: &Tensor,
        device: &Device,
        precision: Precision,
        cam: bool,
        mut progress: impl FnMut(usize, f64),
    ) -> Result<(Vec<Vec<f64>>, Option<heatmap::Cam>), EnsembleError> {
        let input = input
            .narrow(1, 0, self.read_channels().0)
            .and_then(|x| x.to_device(device))
            .and_then(|x| x.to_dtype(precision.dtype()))
            .map_err(|error| EnsembleError::Compute {
                path: self.dir.clone(),
                error,
            })?;
        let loaded = self
            .loaded
            .as_ref()
            .filter(|l| l.precision == precision && l.device.same_device(device));
        let mut outputs = Vec::with_capacity(self.len());
        let mut cams = Vec::new();
        for (i, member) in self.manifest.members.iter().enumerate() {
            let start = std::time::Instant::now();
            let path = self.dir.join(&member.file);
            let built;
            let network: &dyn model::Classifier = match loaded {
                Some(l) => &*l.networks[i],
                None => {
                    built = self.build_member(&path, device, precision)?;
                    &*built
                }
            };
            if cam {
                let (output, map) = self.run_network_cam(&path, network, &input)?;
                outputs.push(output);
                cams.push(map);
            } else {
                outputs.push(self.run_network(&path, network, &input)?);
            }
            progress(i, start.elapsed().as_secs_f64());
        }
        let cam = if cam {
            Some(heatmap::Cam::mean(&cams).map_err(EnsembleError::Cam)?)
        } else {
            None
        };
        Ok((outputs, cam))
    }

    /// The input channels the members read, and what the others hold. The input layouts repeat
    /// the CT (`ct_x3`) or end in zeros (`ct_lesion_zeros`): the members are built to read the
    /// CT once, or the CT and the lesion map, with those channels folded into their first
    /// convolution ([`FewerInputs`]), which then does a third (two thirds) of its work.
    fn read_channels(&self) -> (usize, Dropped) {
        let layout = self.manifest.input.channels;
        match (layout, self.manifest.network.in_channels) {
            (ChannelLayout::CtX3, 3) => (layout.distinct(), Dropped::Copies),
            (ChannelLayout::CtLesionZeros, 3) => (layout.distinct(), Dropped::Zeros),
            // Other networks read every channel: nothing to fold.
            (_, c) => (c, Dropped::Zeros),
        }
    }

    /// How many leading channels of the network input the members read (see
    /// [`crate::model::fewer_inputs`]): inputs may hold just those.
    pub fn input_channels(&self) -> usize {
        self.read_channels().0
    }

    /// Reads one member's weights and builds its network.
    fn build_member(
        &self,
        path: &Path,
        device: &Device,
        precision: Precision,
    ) -> Result<Box<dyn model::Classifier>, EnsembleError> {
        let tensors = candle_core::safetensors::load(path, device).map_err(|error| {
            EnsembleError::Compute {
                path: path.to_path_buf(),
                error,
            }
        })?;
        let (kept, dropped) = self.read_channels();
        let backend = FewerInputs {
            tensors,
            kept,
            dropped,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), precision.dtype(), device.clone());
        let network = NetworkConfig {
            in_channels: kept,
            ..self.manifest.network.clone()
        };
        model::build(&network, vb).map_err(|error| EnsembleError::Model {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Runs one member's network (read from `path`) and applies the head's activation.
    fn run_network(
        &self,
        path: &Path,
        network: &dyn model::Classifier,
        input: &Tensor,
    ) -> Result<Vec<f64>, EnsembleError> {
        let logits = network
            .forward(input)
            .map_err(|error| EnsembleError::Compute {
                path: path.to_path_buf(),
                error,
            })?;
        self.activate(path, &logits)
    }

    /// [`Ensemble::run_network`] through the network's feature maps, with the member's Grad-CAM
    /// map (the same output: the head is applied to the same pooled features).
    fn run_network_cam(
        &self,
        path: &Path,
        network: &dyn model::Classifier,
        input: &Tensor,
    ) -> Result<(Vec<f64>, heatmap::Cam), EnsembleError> {
        let parts = network
            .cam_features(input)
            .ok_or_else(|| {
                EnsembleError::Cam(heatmap::HeatMapError::Unsupported(
                    self.manifest.network.arch.to_string(),
                ))
            })?
            .map_err(|error| EnsembleError::Compute {
                path: path.to_path_buf(),
                error,
            })?;
        let output = self.activate(path, &parts.logits)?;
        let cam = heatmap::grad_cam(self.manifest.head, &parts, &output).map_err(|error| {
            EnsembleError::Compute {
                path: path.to_path_buf(),
                error,
            }
        })?;
        Ok((output, cam))
    }

    /// The head's activation of raw outputs, as f64.
    fn activate(&self, path: &Path, logits: &Tensor) -> Result<Vec<f64>, EnsembleError> {
        let compute = |error| EnsembleError::Compute {
            path: path.to_path_buf(),
            error,
        };
        let logits = logits.to_dtype(DType::F32).map_err(compute)?;
        let activated = match self.manifest.head {
            Head::Continuous => candle_nn::ops::sigmoid(&logits),
            Head::Categorical => candle_nn::ops::softmax(&logits, D::Minus1),
        }
        .map_err(compute)?;
        activated
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(compute)
    }
}

/// The mean of the members' outputs (element-wise), the ensemble's output.
pub fn mean_output(members: &[Vec<f64>]) -> Vec<f64> {
    let width = members.first().map_or(0, Vec::len);
    let mut sum = vec![0f64; width];
    for output in members {
        for (s, o) in sum.iter_mut().zip(output) {
            *s += o;
        }
    }
    let n = members.len().max(1) as f64;
    sum.into_iter().map(|s| s / n).collect()
}

/// Writes the nnU-Net model folder `src` (either form; a `role` model, for errors) into
/// `out/<name>` in ctgrade's compact form ([`segment::compact`]): the weights of every fold with their sha256 and the plans' one
/// configuration, without optimizer state, logs or other checkpoints.
pub fn copy_segmenter(
    src: &Path,
    out: &Path,
    name: &str,
    role: &'static str,
) -> Result<(), EnsembleError> {
    segment::compact::write(src, None, &out.join(name)).map_err(|e| EnsembleError::Segmenter {
        role,
        path: src.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Writes a manifest for `members` (copied into `out`), computing their hashes.
pub fn create(
    out: &Path,
    mut manifest: Manifest,
    members: &[PathBuf],
) -> Result<Manifest, EnsembleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| EnsembleError::Io { path, error }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    manifest.members.clear();
    for (i, src) in members.iter().enumerate() {
        let file = format!("member-{i:02}.safetensors");
        let dst = out.join(&file);
        if src.canonicalize().ok() != dst.canonicalize().ok() {
            // Through the atomic writer: whole files only, readable by the container's user.
            let bytes = std::fs::read(src).map_err(io(src))?;
            ctgrade_fsio::write_atomic(&dst, &bytes).map_err(io(&dst))?;
        }
        manifest.members.push(MemberFile {
            sha256: sha256_file(&dst)?,
            file,
        });
    }
    let ensemble_json = out.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| EnsembleError::Manifest {
        path: ensemble_json.clone(),
        reason: e.to_string(),
    })?;
    ctgrade_fsio::write_atomic(&ensemble_json, format!("{text}\n").as_bytes()).map_err(
        |error| EnsembleError::Io {
            path: ensemble_json.clone(),
            error,
        },
    )?;
    // Check what was written the way a run will.
    Ensemble::open(out)?;
    Ok(manifest)
}
