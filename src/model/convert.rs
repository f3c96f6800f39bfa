//! `ctgrade convert`: PyTorch checkpoints and safetensors files to safetensors with the engine's
//! (MONAI) parameter names, checked against the architecture before anything is written.
//!
//! Checkpoints are recognised by their content: zip archives written by `torch.save` (`.pth`, `.pt`,
//! `.bin`; read with candle's pickle reader) and safetensors files. The state dict may be the whole
//! file or one entry of a training checkpoint (`{"state_dict": ...}`, `{"model": ...}`, ...); a
//! common prefix such as DataParallel's `module.` is found and stripped; old torchvision names
//! (`denselayer1.norm.1.weight`) are read as the current ones. Names are mapped through the model
//! registry ([`expected_tensors_named`]), which lists every parameter under each naming convention
//! in the same order, so the conversion works for any registered architecture.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use super::inception::I3dHead;
use super::probe::{merge_config, resolve_config};
use super::{build_with_naming, expected_tensors_named, Arch, ModelError, Naming, NetworkConfig};
use crate::grading::Head;

/// Entries of a training checkpoint that may hold the state dict, tried in this order after the
/// top level.
pub const STATE_DICT_KEYS: [&str; 9] = [
    "state_dict",
    "model_state_dict",
    "model",
    "state_dict_ema",
    "model_ema",
    "net",
    "network",
    "module",
    "weights",
];

/// Which parameter names a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamingArg {
    /// Whichever convention matches more of the checkpoint's names.
    Auto,
    /// MONAI (`...denselayer1.layers.norm1.weight`, `class_layers.out.weight`).
    Monai,
    /// torchvision (`...denselayer1.norm1.weight`, `classifier.weight`; also the old `norm.1`).
    Torchvision,
}

/// Element type of the written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDType {
    /// 32-bit float (exact).
    F32,
    /// IEEE half precision (half the size; the engine computes in f32 after loading).
    F16,
    /// bfloat16.
    Bf16,
}

impl OutDType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            OutDType::F32 => DType::F32,
            OutDType::F16 => DType::F16,
            OutDType::Bf16 => DType::BF16,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            OutDType::F32 => "f32",
            OutDType::F16 => "f16",
            OutDType::Bf16 => "bf16",
        }
    }
}

/// What [`convert`] converts: a checkpoint to a safetensors file that the engine and ensembles
/// load.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The checkpoint: a torch.save zip file (.pth, .pt, .bin) or a safetensors file.
    pub from: PathBuf,
    /// Architecture, e.g. densenet201-3d.
    pub arch: Arch,
    /// JSON object overriding NetworkConfig fields (growth_rate, block_config, bn_size,
    /// init_features, width_divisor, conv1_t_stride, no_max_pool, i3d_head, in_channels,
    /// num_outputs, ...); in_channels and num_outputs default to the checkpoint's, i3d_head to
    /// the form its names show, the rest to the reference implementation's defaults.
    pub config: Option<PathBuf>,
    /// Parameter names in the checkpoint.
    pub naming: NamingArg,
    /// Entry of the checkpoint holding the state dict (default: the top level, then state_dict,
    /// model_state_dict, model, state_dict_ema, model_ema, net, network, module, weights).
    pub key: Option<String>,
    /// Outputs the network must have (the grading head's: 1 continuous, 5 categorical). Without
    /// it (or num_outputs in --config) the checkpoint's head decides, and must be one of those.
    pub num_outputs: Option<usize>,
    /// Leave out checkpoint tensors the network does not use (by default they are an error).
    pub drop_unexpected: bool,
    /// Element type of the written file.
    pub dtype: OutDType,
    /// The safetensors file to write.
    pub out: PathBuf,
}

/// Why a checkpoint cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not a `source`, so that it is shown once).
        cause: std::io::Error,
    },
    /// Neither a zip checkpoint nor a safetensors file.
    #[error("{path} is neither a PyTorch checkpoint (a torch.save zip archive: .pth, .pt, .bin) nor a safetensors file ({detail})")]
    NotCheckpoint {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// A checkpoint in the pre-1.6 pickle format, which candle cannot read.
    #[error("{path} is in PyTorch's legacy (non-zip) format, which cannot be read: re-save it in Python with torch.save(torch.load(old), new)")]
    LegacyPickle {
        /// The file.
        path: PathBuf,
    },
    /// A readable checkpoint without a state dict where one was looked for.
    #[error("{path}: no state dict found: no tensors at the top level nor under the keys {tried} (name the entry with --key; a pickled model object, torch.save(model), cannot be read: save model.state_dict() instead)")]
    NoStateDict {
        /// The file.
        path: PathBuf,
        /// The entries looked at.
        tried: String,
    },
    /// The checkpoint or one of its tensors could not be decoded.
    #[error("{path}: {what}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The cause (in the message, not a `source`, so that it is shown once).
        cause: Box<candle_core::Error>,
    },
    /// The checkpoint's tensors do not fit the architecture.
    #[error("{}", mismatch_message(path, arch, naming, prefix, problems))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The architecture name.
        arch: String,
        /// The naming convention the names were read with.
        naming: Naming,
        /// The prefix stripped from the checkpoint's names.
        prefix: String,
        /// One line per missing, misshapen or unexpected tensor.
        problems: Vec<String>,
    },
    /// The checkpoint's head has another number of outputs than the network is to have.
    #[error("{}", head_message(path, *found, *declared, *kinetics))]
    HeadSize {
        /// The file.
        path: PathBuf,
        /// Outputs of the checkpoint's head.
        found: usize,
        /// Outputs declared with --num-outputs or --config (`None`: none declared, and `found`
        /// fits no grading head).
        declared: Option<usize>,
        /// Whether the head is an I3D's Kinetics-style `conv3d_0c_1x1`.
        kinetics: bool,
    },
    /// The network configuration is invalid, or the converted weights do not build.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
    /// The output cannot be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
}

impl From<candle_core::Error> for ConvertError {
    fn from(e: candle_core::Error) -> Self {
        ConvertError::Candle(Box::new(e))
    }
}

fn mismatch_message(
    path: &Path,
    arch: &str,
    naming: &Naming,
    prefix: &str,
    problems: &[String],
) -> String {
    let names = match naming {
        Naming::Monai => "MONAI",
        Naming::Torchvision => "torchvision",
    };
    let mut s = format!(
        "{} does not fit {arch} (read with {names} names",
        path.display()
    );
    if !prefix.is_empty() {
        let _ = write!(s, ", prefix {prefix:?} stripped");
    }
    let _ = write!(s, "): {} problem(s):", problems.len());
    for p in problems {
        let _ = write!(s, "\n  {p}");
    }
    if problems.iter().any(|p| !p.starts_with("unexpected")) {
        s.push_str(
            "\ncheck --arch and --naming, and pass --config with the network's hyper-parameters \
             (growth_rate, block_config, bn_size, init_features) when they differ from the published ones",
        );
    } else {
        s.push_str("\npass --drop-unexpected to leave these tensors out");
    }
    s
}

fn head_message(path: &Path, found: usize, declared: Option<usize>, kinetics: bool) -> String {
    let mut s = match declared {
        Some(d) => format!(
            "{}: the checkpoint's head has {found} output(s), the network is declared with {d} \
             (--num-outputs or num_outputs in --config); a head cannot be converted to another size",
            path.display()
        ),
        None => format!(
            "{}: the checkpoint's head has {found} output(s), which fits neither grading head \
             (continuous: {}, categorical: {}); pass --num-outputs {found} to convert it anyway \
             (for ctgrade forward; an ensemble refuses it)",
            path.display(),
            Head::Continuous.num_outputs(),
            Head::Categorical.num_outputs()
        ),
    };
    if kinetics {
        s.push_str(
            "\nthis I3D checkpoint's head is conv3d_0c_1x1, the Kinetics classifier; a STOIC 2021 \
             baseline model keeps its own head in linear.weight and linear.bias",
        );
    }
    s
}

/// The container format of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// A zip archive written by `torch.save` (PyTorch >= 1.6).
    PytorchZip,
    /// A safetensors file.
    Safetensors,
}

/// The tensors of a checkpoint, as stored (names unchanged, sorted by name).
#[derive(Debug)]
pub struct Checkpoint {
    /// Container format.
    pub format: SourceFormat,
    /// The entry that held the state dict (`None`: the top level).
    pub entry: Option<String>,
    /// Every tensor of the state dict.
    pub tensors: Vec<(String, Tensor)>,
}

/// Reads every tensor of a checkpoint. With `key`, the state dict is that entry of the
/// checkpoint; without, the top level and then [`STATE_DICT_KEYS`] are tried.
pub fn read_checkpoint(path: &Path, key: Option<&str>) -> Result<Checkpoint, ConvertError> {
    let io = |cause| ConvertError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .map_err(io)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(io)?;
    if head.starts_with(b"PK\x03\x04") {
        return read_zip(path, key);
    }
    // A pickle starts with the PROTO opcode; torch.save's legacy format is a sequence of pickles.
    if head.first() == Some(&0x80) {
        return Err(ConvertError::LegacyPickle {
            path: path.to_path_buf(),
        });
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    if head.len() > 8 && head[8] == b'{' {
        if let Some(key) = key {
            return Err(ConvertError::NotCheckpoint {
                path: path.to_path_buf(),
                detail: format!("--key {key:?} applies to PyTorch checkpoints; this is a safetensors file, which has no entries"),
            });
        }
        let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|cause| {
            ConvertError::Read {
                path: path.to_path_buf(),
                what: "invalid safetensors file".into(),
                cause: Box::new(cause),
            }
        })?;
        let mut tensors: Vec<_> = map.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(Checkpoint {
            format: SourceFormat::Safetensors,
            entry: None,
            tensors,
        });
    }
    let shown: String = head
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ConvertError::NotCheckpoint {
        path: path.to_path_buf(),
        detail: if head.is_empty() {
            "the file is empty".into()
        } else {
            format!("it starts with the bytes {shown}")
        },
    })
}

fn read_zip(path: &Path, key: Option<&str>) -> Result<Checkpoint, ConvertError> {
    let read_err = |what: String| {
        let path = path.to_path_buf();
        move |cause| ConvertError::Read {
            path,
            what,
            cause: Box::new(cause),
        }
    };
    let candidates: Vec<Option<&str>> = match key {
        Some(k) => vec![Some(k)],
        None => std::iter::once(None)
            .chain(STATE_DICT_KEYS.iter().copied().map(Some))
            .collect(),
    };
    for (i, candidate) in candidates.iter().enumerate() {
        let pth = match candle_core::pickle::PthTensors::new(path, *candidate) {
            Ok(p) => p,
            // Only the first attempt tells a broken file from an absent entry.
            Err(e) if i == 0 => {
                let what = match candidate {
                    Some(k) => format!("no state dict under --key {k:?}"),
                    None => "cannot read the checkpoint".into(),
                };
                return Err(read_err(what)(e));
            }
            Err(_) => continue,
        };
        let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
        if names.is_empty() {
            continue;
        }
        names.sort();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let t = pth
                .get(name)
                .map_err(read_err(format!("cannot read tensor {name:?}")))?;
            if let Some(t) = t {
                tensors.push((name.clone(), t));
            }
        }
        return Ok(Checkpoint {
            format: SourceFormat::PytorchZip,
            entry: candidate.map(str::to_string),
            tensors,
        });
    }
    let tried = candidates
        .iter()
        .flatten()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ConvertError::NoStateDict {
        path: path.to_path_buf(),
        tried: if tried.is_empty() {
            "(none)".into()
        } else {
            tried
        },
    })
}

/// Old torchvision DenseNet names (`denselayer1.norm.1.weight`) as the current ones
/// (`denselayer1.norm1.weight`), as torchvision's own loader rewrites them.
pub fn modern_torchvision_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    let legacy = n >= 4
        && parts[n - 4].starts_with("denselayer")
        && matches!(parts[n - 3], "norm" | "relu" | "conv")
        && matches!(parts[n - 2], "1" | "2")
        && matches!(
            parts[n - 1],
            "weight" | "bias" | "running_mean" | "running_var" | "num_batches_tracked"
        );
    if !legacy {
        return name.to_string();
    }
    let mut v: Vec<String> = parts[..n - 3].iter().map(|s| s.to_string()).collect();
    v.push(format!("{}{}", parts[n - 3], parts[n - 2]));
    v.push(parts[n - 1].to_string());
    v.join(".")
}

/// Every parameter of `cfg` under both conventions: (MONAI name, torchvision name, shape), in
/// registry order.
pub(crate) fn name_table(
    cfg: &NetworkConfig,
) -> Result<Vec<(String, String, Vec<usize>)>, ModelError> {
    let monai = expected_tensors_named(cfg, Naming::Monai)?;
    let tv = expected_tensors_named(cfg, Naming::Torchvision)?;
    if monai.len() != tv.len() || monai.iter().zip(&tv).any(|(a, b)| a.1 != b.1) {
        return Err(ModelError::InvalidConfig(format!(
            "{}: the registry's MONAI and torchvision parameter lists do not correspond",
            cfg.arch
        )));
    }
    Ok(monai
        .into_iter()
        .zip(tv)
        .map(|((m, shape), (t, _))| (m, t, shape))
        .collect())
}

/// A checkpoint's tensors matched against the registry's names.
#[derive(Debug)]
pub(crate) struct Matched {
    /// The convention the names were read with.
    pub naming: Naming,
    /// The prefix stripped from every matched name (`module.`, `model.`, ...).
    pub prefix: String,
    /// For each expected parameter, in registry order: the checkpoint's name and tensor.
    pub sources: Vec<Option<(String, Tensor)>>,
    /// Checkpoint tensors no parameter claims (their names as stored).
    pub unexpected: Vec<(String, Vec<usize>)>,
}

/// The prefix under which most of `keys` are names of `names`, with that count (shortest prefix
/// on ties, so that matching is deterministic).
fn best_prefix(keys: &[String], names: &HashSet<&str>) -> (String, usize) {
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for k in keys {
        let starts = std::iter::once(0).chain(k.match_indices('.').map(|(i, _)| i + 1));
        for start in starts {
            if names.contains(&k[start..]) {
                *counts.entry((start, &k[..start])).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|((_, p), n)| (p.to_string(), n))
        .unwrap_or_default()
}

/// Matches the checkpoint's names to the registry's (see the module docs). BatchNorm's
/// `num_batches_tracked` counters (training state) are dropped silently.
pub(crate) fn match_names(
    tensors: Vec<(String, Tensor)>,
    table: &[(String, String, Vec<usize>)],
    choice: NamingArg,
) -> Matched {
    let keys: Vec<String> = tensors
        .iter()
        .map(|(k, _)| modern_torchvision_name(k))
        .collect();
    let names = |naming| -> Vec<&str> {
        table
            .iter()
            .map(|(m, t, _)| match naming {
                Naming::Monai => m.as_str(),
                Naming::Torchvision => t.as_str(),
            })
            .collect()
    };
    let candidates: &[Naming] = match choice {
        NamingArg::Auto => &[Naming::Monai, Naming::Torchvision],
        NamingArg::Monai => &[Naming::Monai],
        NamingArg::Torchvision => &[Naming::Torchvision],
    };
    // The first candidate wins ties: MONAI, the engine's own names.
    let mut best: Option<(Naming, String, usize)> = None;
    for &naming in candidates {
        let set: HashSet<&str> = names(naming).into_iter().collect();
        let (prefix, hits) = best_prefix(&keys, &set);
        if best.as_ref().is_none_or(|b| hits > b.2) {
            best = Some((naming, prefix, hits));
        }
    }
    let (naming, prefix, _) = best.unwrap_or((Naming::Monai, String::new(), 0));
    let index: HashMap<&str, usize> = names(naming)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let mut sources: Vec<Option<(String, Tensor)>> = vec![None; table.len()];
    let mut unexpected = Vec::new();
    for (key, (stored, t)) in keys.iter().zip(tensors) {
        let slot = key
            .strip_prefix(prefix.as_str())
            .and_then(|k| index.get(k))
            .and_then(|&i| sources.get_mut(i));
        match slot {
            // The first tensor for a name wins; a second one (`norm.1` beside `norm1`) is unexpected.
            Some(s) if s.is_none() => *s = Some((stored, t)),
            _ if key.ends_with("num_batches_tracked") => {}
            _ => unexpected.push((stored, t.dims().to_vec())),
        }
    }
    Matched {
        naming,
        prefix,
        sources,
        unexpected,
    }
}

/// Reads a hyper-parameter off the checkpoint: the first parameter whose shape changes when `set`
/// changes it from 1 to 2 gives its value as found / (size at 1). `to_source` maps the registry's
/// shapes to the checkpoint's (identity for `convert`, 3-D to 2-D for `inflate`).
fn infer_param(
    probe: &NetworkConfig,
    set: impl Fn(&mut NetworkConfig, usize),
    sources: &[Option<(String, Tensor)>],
    to_source: impl Fn(&[usize]) -> Vec<usize>,
) -> Result<Option<usize>, ModelError> {
    let (one, two) = (probe_with(probe, &set, 1)?, probe_with(probe, &set, 2)?);
    for (i, ((_, s1), (_, s2))) in one.iter().zip(&two).enumerate() {
        if s1 == s2 {
            continue;
        }
        let (s1, s2) = (to_source(s1), to_source(s2));
        let Some(Some((_, t))) = sources.get(i) else {
            continue;
        };
        let found = t.dims();
        if found.len() != s1.len() {
            continue;
        }
        for ((&a, &b), &f) in s1.iter().zip(&s2).zip(found) {
            if a != b && b == 2 * a && a > 0 && f > 0 && f % a == 0 {
                return Ok(Some(f / a));
            }
        }
    }
    Ok(None)
}

fn probe_with(
    cfg: &NetworkConfig,
    set: impl Fn(&mut NetworkConfig, usize),
    v: usize,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let mut c = cfg.clone();
    set(&mut c, v);
    expected_tensors_named(&c, Naming::Monai)
}

/// Registry indices of the output head: the parameters whose shape depends on `num_outputs`.
pub(crate) fn head_params(probe: &NetworkConfig) -> Result<Vec<usize>, ModelError> {
    let set = |c: &mut NetworkConfig, v| c.num_outputs = v;
    let (one, two) = (probe_with(probe, set, 1)?, probe_with(probe, set, 2)?);
    Ok(one
        .iter()
        .zip(&two)
        .enumerate()
        .filter(|(_, (a, b))| a.1 != b.1)
        .map(|(i, _)| i)
        .collect())
}

/// The network configuration before the checkpoint is read: the architecture's values with the
/// `--config` file's fields on top. `preset` (in_channels, num_outputs) are the caller's values,
/// 0 where the checkpoint is to decide; the file overrides them when it sets them.
pub(crate) fn base_config(
    arch: Arch,
    config: Option<&Path>,
    preset: (usize, usize),
) -> Result<NetworkConfig, ModelError> {
    resolve_config(arch, preset.0, preset.1, config)
}

/// `base` with valid placeholders for values still to be read off the checkpoint: parameter
/// names do not depend on them, so names can be matched with it.
pub(crate) fn probe_config(base: &NetworkConfig) -> NetworkConfig {
    let mut p = base.clone();
    p.in_channels = p.in_channels.max(1);
    p.num_outputs = p.num_outputs.max(1);
    p
}

/// `base` with `in_channels` and `num_outputs` read off the matched checkpoint where unset
/// (3 and 1 when the checkpoint lacks the tensors that tell; the shape check then reports them).
pub(crate) fn finish_config(
    base: &NetworkConfig,
    matched: &Matched,
    to_source: impl Fn(&[usize]) -> Vec<usize> + Copy,
) -> Result<NetworkConfig, ModelError> {
    let probe = probe_config(base);
    let mut cfg = base.clone();
    if cfg.in_channels == 0 {
        let set = |c: &mut NetworkConfig, v| c.in_channels = v;
        cfg.in_channels = infer_param(&probe, set, &matched.sources, to_source)?.unwrap_or(3);
    }
    if cfg.num_outputs == 0 {
        let set = |c: &mut NetworkConfig, v| c.num_outputs = v;
        cfg.num_outputs = infer_param(&probe, set, &matched.sources, to_source)?.unwrap_or(1);
    }
    Ok(cfg)
}

/// One line for a tensor the network needs that the checkpoint lacks.
pub(crate) fn missing_line(prefix: &str, name: &str, shape: &[usize]) -> String {
    format!("missing tensor {prefix}{name} (expected shape {shape:?})")
}

/// Lines for checkpoint tensors no parameter claims.
pub(crate) fn unexpected_lines(unexpected: &[(String, Vec<usize>)]) -> Vec<String> {
    unexpected
        .iter()
        .map(|(n, s)| format!("unexpected tensor {n} (shape {s:?})"))
        .collect()
}

/// A tensor's bytes as safetensors 0.6 wants them (the engine's safetensors crate is not the one
/// candle implements `View` for).
struct RawTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw(t: &Tensor, dtype: DType) -> Result<RawTensor, candle_core::Error> {
    let flat = t.to_dtype(dtype)?.flatten_all()?;
    let (dtype, data) = match dtype {
        DType::F16 => (
            safetensors::Dtype::F16,
            flat.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            flat.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => (
            safetensors::Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    };
    Ok(RawTensor {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Checks that `tensors` (MONAI names) build `cfg`, then writes them to `out` (atomically, mode
/// 0644) as `dtype` with `metadata` in the safetensors header.
pub(crate) fn write_checked(
    cfg: &NetworkConfig,
    tensors: HashMap<String, Tensor>,
    dtype: OutDType,
    metadata: HashMap<String, String>,
    out: &Path,
) -> Result<(), ConvertError> {
    // Built from the values as they will be stored, so the check covers the rounding too.
    let mut stored = HashMap::with_capacity(tensors.len());
    let mut raws = BTreeMap::new();
    for (name, t) in tensors {
        let t = t.to_dtype(dtype.dtype())?;
        raws.insert(name.clone(), raw(&t, dtype.dtype())?);
        stored.insert(name, t);
    }
    build_with_naming(
        cfg,
        VarBuilder::from_tensors(stored, DType::F32, &Device::Cpu),
        Naming::Monai,
    )?;
    let write_err = |reason: String| ConvertError::Write {
        path: out.to_path_buf(),
        reason,
    };
    let bytes =
        safetensors::serialize(raws, Some(metadata)).map_err(|e| write_err(e.to_string()))?;
    ctgrade_fsio::write_atomic(out, &bytes).map_err(|e| write_err(e.to_string()))
}

/// Metadata written into the safetensors header of converted files.
pub(crate) fn header_metadata(
    cfg: &NetworkConfig,
    tool: &str,
    from: &Path,
) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("ctgrade.tool".into(), tool.into());
    m.insert(
        "ctgrade.source".into(),
        from.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    m.insert(
        "ctgrade.network".into(),
        serde_json::to_string(cfg).unwrap_or_default(),
    );
    m
}

pub(crate) fn naming_name(n: Naming) -> &'static str {
    match n {
        Naming::Monai => "monai",
        Naming::Torchvision => "torchvision",
    }
}

/// What `ctgrade convert` did (printed as JSON).
#[derive(Debug, Serialize)]
pub struct ConvertReport {
    /// The checkpoint.
    pub from: PathBuf,
    /// Its container format.
    pub format: SourceFormat,
    /// The entry that held the state dict (absent: the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The naming convention read.
    pub naming: &'static str,
    /// The prefix stripped from the names.
    pub prefix: String,
    /// The network the weights build (pass it to `ctgrade ensemble new --config`).
    pub network: NetworkConfig,
    /// The written file.
    pub out: PathBuf,
    /// Its element type.
    pub dtype: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// Checkpoint tensors left out: with --drop-unexpected, and a STOIC I3D's unused Kinetics
    /// head.
    pub dropped: Vec<String>,
    /// Hyper-parameters the checkpoint cannot reveal that took their default, one sentence each
    /// ("assuming conv1_t_stride = 1, MONAI's default; pass --config to change it").
    pub assumed: Vec<String>,
    /// What was read off the checkpoint's names beyond the tensors (the I3D head form).
    pub notes: Vec<String>,
}

/// The head form of an I3D checkpoint, unless `cfg` names it, with a note saying so.
fn detect_i3d_head(cfg: &mut NetworkConfig, tensors: &[(String, Tensor)]) -> Option<String> {
    if cfg.arch != Arch::InceptionV1_3d || cfg.i3d_head.is_some() {
        return None;
    }
    let head = I3dHead::detect(tensors.iter().map(|(n, _)| n.as_str()));
    cfg.i3d_head = Some(head);
    Some(match head {
        I3dHead::Stoic => "i3d_head = stoic: the checkpoint has linear.weight, the STOIC 2021 \
             baseline's head (after AvgPool3d((2, 7, 7), stride 1) and a mean); its unused \
             Kinetics head conv3d_0c_1x1 is left out"
            .into(),
        I3dHead::Kinetics => "i3d_head = kinetics: the checkpoint has no linear.weight; the head \
             is conv3d_0c_1x1 (after AvgPool3d((2, 7, 7), stride 1) and a mean)"
            .into(),
    })
}

/// The output count the network is declared with: --num-outputs, or num_outputs in --config
/// (0 there means unset).
fn declared_outputs(flag: Option<usize>, config: usize) -> Result<Option<usize>, ModelError> {
    match (flag, config) {
        (Some(n), 0) => Ok(Some(n)),
        (Some(n), m) if n == m => Ok(Some(n)),
        (Some(n), m) => Err(ModelError::InvalidConfig(format!(
            "--num-outputs {n} contradicts num_outputs {m} in --config"
        ))),
        (None, 0) => Ok(None),
        (None, m) => Ok(Some(m)),
    }
}

/// Runs `ctgrade convert`.
pub fn convert(args: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let ck = read_checkpoint(&args.from, args.key.as_deref())?;
    let mut merged = merge_config(NetworkConfig::new(args.arch, 0, 0), args.config.as_deref())?;
    let notes: Vec<String> = detect_i3d_head(&mut merged, &ck.tensors)
        .into_iter()
        .collect();
    let declared = declared_outputs(args.num_outputs, merged.num_outputs)?;
    let assumed = merged
        .assumed_defaults()
        .into_iter()
        .map(|(name, value)| {
            format!("assuming {name} = {value}, MONAI's default; pass --config to change it")
        })
        .collect();
    let mut base = merged.resolved();
    base.num_outputs = declared.unwrap_or(0);
    let mut matched = match_names(ck.tensors, &name_table(&probe_config(&base))?, args.naming);
    // Never a network with another head than declared, nor a silent 400-class one.
    let probe = probe_config(&base);
    let set = |c: &mut NetworkConfig, v| c.num_outputs = v;
    if let Some(found) = infer_param(&probe, set, &matched.sources, |s| s.to_vec())? {
        let fits = match declared {
            Some(d) => d == found,
            None => [Head::Continuous, Head::Categorical]
                .iter()
                .any(|h| h.num_outputs() == found),
        };
        if !fits {
            return Err(ConvertError::HeadSize {
                path: args.from.clone(),
                found,
                declared,
                kinetics: base.i3d_head == Some(I3dHead::Kinetics),
            });
        }
    }
    // The STOIC baseline's module still holds the Kinetics head it never runs.
    let mut dropped = Vec::new();
    if base.i3d_head == Some(I3dHead::Stoic) {
        let kinetics = format!("{}.", I3dHead::Kinetics.prefix());
        let prefix = matched.prefix.clone();
        matched.unexpected.retain(|(name, _)| {
            let unused = name
                .strip_prefix(prefix.as_str())
                .is_some_and(|n| n.starts_with(&kinetics));
            if unused {
                dropped.push(name.clone());
            }
            !unused
        });
    }
    let cfg = finish_config(&base, &matched, |s| s.to_vec())?;
    let expected = name_table(&cfg)?;
    let mut problems = Vec::new();
    let mut out = HashMap::with_capacity(expected.len());
    for ((monai, tv, shape), source) in expected.iter().zip(&matched.sources) {
        let name = match matched.naming {
            Naming::Monai => monai,
            Naming::Torchvision => tv,
        };
        match source {
            None => problems.push(missing_line(&matched.prefix, name, shape)),
            Some((stored, t)) if t.dims() != shape.as_slice() => problems.push(format!(
                "tensor {stored} has shape {:?}, expected {shape:?}",
                t.dims()
            )),
            Some((_, t)) => {
                out.insert(monai.clone(), t.clone());
            }
        }
    }
    if !args.drop_unexpected {
        problems.extend(unexpected_lines(&matched.unexpected));
    }
    if !problems.is_empty() {
        return Err(ConvertError::Mismatch {
            path: args.from.clone(),
            arch: args.arch.to_string(),
            naming: matched.naming,
            prefix: matched.prefix,
            problems,
        });
    }
    let n = out.len();
    let metadata = header_metadata(&cfg, "convert", &args.from);
    write_checked(&cfg, out, args.dtype, metadata, &args.out)?;
    Ok(ConvertReport {
        from: args.from.clone(),
        format: ck.format,
        entry: ck.entry,
        naming: naming_name(matched.naming),
        prefix: matched.prefix,
        network: cfg,
        out: args.out.clone(),
        dtype: args.dtype.name(),
        tensors: n,
        dropped: dropped
            .into_iter()
            .chain(matched.unexpected.into_iter().map(|(n, _)| n))
            .collect(),
        assumed,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_torchvision_names() {
        assert_eq!(
            modern_torchvision_name("features.denseblock2.denselayer11.norm.1.running_var"),
            "features.denseblock2.denselayer11.norm1.running_var"
        );
        assert_eq!(
            modern_torchvision_name("module.features.denseblock1.denselayer1.conv.2.weight"),
            "module.features.denseblock1.denselayer1.conv2.weight"
        );
        for same in [
            "features.norm0.weight",
            "features.transition1.conv.weight",
            "features.denseblock1.denselayer1.norm1.weight",
            "features.denseblock1.denselayer1.layers.norm1.weight",
            "features.denseblock1.denselayer1.norm.3.weight",
        ] {
            assert_eq!(modern_torchvision_name(same), same);
        }
    }

    #[test]
    fn prefix_is_the_one_most_names_share() {
        let names: HashSet<&str> = ["a.w", "b.w", "c.w"].into_iter().collect();
        let keys: Vec<String> = ["module.a.w", "module.b.w", "x.c.w", "module.z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(best_prefix(&keys, &names), ("module.".to_string(), 2));
        let keys: Vec<String> = ["a.w", "b.w"].iter().map(|s| s.to_string()).collect();
        assert_eq!(best_prefix(&keys, &names), (String::new(), 2));
        // A suffix that is itself a name must not shorten the prefix: "w" is not in the set.
        assert_eq!(best_prefix(&[], &names), (String::new(), 0));
    }

    #[test]
    fn registry_lists_correspond_for_densenets() {
        for arch in [
            Arch::DenseNet121_3d,
            Arch::DenseNet169_3d,
            Arch::DenseNet201_3d,
        ] {
            let t = name_table(&NetworkConfig::new(arch, 3, 1)).unwrap();
            assert!(!t.is_empty());
            // The conventions differ in the dense layers and the head, nowhere else.
            for (m, tv, _) in &t {
                let differs = m.contains(".layers.") || m.starts_with("class_layers");
                assert_eq!(m != tv, differs, "{m} / {tv}");
            }
        }
    }
}
