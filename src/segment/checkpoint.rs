//! `checkpoint_final.pth`: the dict nnU-Net's trainer saves with `torch.save` (a zip archive
//! holding a protocol-2 pickle and the tensor storages).
//!
//! candle's pickle reader parses the whole pickle, the non-tensor entries included (the plans in
//! `init_args`, a `torch.device`, numpy scalars in `logging`, the optimizer state); the meta
//! fields are taken from its object tree and the tensors of `network_weights` by their
//! state-dict names.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{DType, Device, Tensor};

use super::SegmentError;

/// What inference needs from a checkpoint.
pub struct Checkpoint {
    /// `trainer_name`: the trainer class that built the network.
    pub trainer_name: String,
    /// `init_args.configuration`: the plans' configuration the network was trained with.
    pub configuration: String,
    /// `inference_allowed_mirroring_axes`; `None` when absent or None.
    pub mirroring_axes: Option<Vec<usize>>,
    /// `network_weights`, by state-dict name, as f32 on the device.
    pub weights: HashMap<String, Tensor>,
}

/// Trainers whose network is the plans' architecture, unchanged: nnUNetTrainer and variants
/// that change only the schedule, the loss, the augmentation or checkpointing. Prefixes match
/// the families (`nnUNetTrainer_250epochs`, `nnUNetTrainer_onlyMirror01` ...).
const PLANS_TRAINERS: &[&str] = &[
    "nnUNetTrainer",
    "nnUNetTrainerNoMirroring",
    "nnUNetTrainerNoDeepSupervision",
    "nnUNetTrainerDiceCELoss_noSmooth",
    "nnUNetTrainerCELoss",
    "nnUNetTrainerDA5",
    "nnUNetTrainerNoDA",
];

const PLANS_TRAINER_PREFIXES: &[&str] = &["nnUNetTrainer_", "nnUNetTrainerNoMirroring_"];

/// Refuses, naming it, a trainer whose network is not the plans' own (e.g. `nnUNetTrainerBN`,
/// which swaps the norm, or MedNeXt and Primus trainers, which build other networks).
pub fn check_trainer(path: &Path, trainer: &str) -> Result<(), SegmentError> {
    let epochs_variant = |rest: &str| {
        // nnUNetTrainer_<N>epochs, optionally with a suffix such as _NoMirroring.
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        digits > 0 && rest[digits..].starts_with("epochs")
    };
    let ok = PLANS_TRAINERS.contains(&trainer)
        || PLANS_TRAINER_PREFIXES
            .iter()
            .any(|p| trainer.strip_prefix(p).is_some_and(epochs_variant))
        || trainer.starts_with("nnUNetTrainer_onlyMirror");
    if ok {
        Ok(())
    } else {
        Err(SegmentError::Trainer {
            path: path.into(),
            trainer: trainer.into(),
        })
    }
}

fn dict_get<'a>(dict: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    dict.iter()
        .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
        .map(|(_, v)| v)
}

fn as_int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(i64::from(*i)),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

impl Checkpoint {
    /// Reads the meta fields and the tensors of `network_weights`.
    pub fn read(path: &Path, device: &Device) -> Result<Self, SegmentError> {
        let bad = |field: &str, msg: String| SegmentError::Field {
            path: path.into(),
            field: field.into(),
            msg,
        };
        let top = read_pickle(path)?;
        let Object::Dict(top) = top else {
            return Err(bad(
                "(top level)",
                "not a dict: not an nnU-Net checkpoint".into(),
            ));
        };
        let trainer_name = match dict_get(&top, "trainer_name") {
            Some(Object::Unicode(s)) => s.clone(),
            Some(_) => return Err(bad("trainer_name", "not a string".into())),
            None => return Err(bad("trainer_name", "missing".into())),
        };
        let configuration = match dict_get(&top, "init_args") {
            Some(Object::Dict(args)) => match dict_get(args, "configuration") {
                Some(Object::Unicode(s)) => s.clone(),
                Some(_) => return Err(bad("init_args.configuration", "not a string".into())),
                None => return Err(bad("init_args.configuration", "missing".into())),
            },
            Some(_) => return Err(bad("init_args", "not a dict".into())),
            None => return Err(bad("init_args", "missing".into())),
        };
        let mirroring_axes = match dict_get(&top, "inference_allowed_mirroring_axes") {
            None | Some(Object::None) => None,
            Some(Object::Tuple(v) | Object::List(v)) => {
                let mut axes = Vec::with_capacity(v.len());
                for o in v {
                    match as_int(o).and_then(|i| usize::try_from(i).ok()) {
                        Some(a) if a < 3 => axes.push(a),
                        _ => {
                            return Err(bad(
                                "inference_allowed_mirroring_axes",
                                format!("{o:?} is not a spatial axis (0, 1 or 2)"),
                            ))
                        }
                    }
                }
                Some(axes)
            }
            Some(o) => {
                return Err(bad(
                    "inference_allowed_mirroring_axes",
                    format!("{o:?} is not a tuple of axes"),
                ))
            }
        };
        if dict_get(&top, "network_weights").is_none() {
            return Err(bad("network_weights", "missing".into()));
        }
        let weights = read_weights(path, "network_weights", device)?;
        Ok(Self {
            trainer_name,
            configuration,
            mirroring_axes,
            weights,
        })
    }
}

fn zip_err(path: &Path, e: impl std::fmt::Display) -> SegmentError {
    SegmentError::Field {
        path: path.into(),
        field: "(archive)".into(),
        msg: format!("not a torch.save zip archive: {e}"),
    }
}

/// The checkpoint's pickle (`<archive>/data.pkl`) as candle's object tree.
fn read_pickle(path: &Path) -> Result<Object, SegmentError> {
    let file = std::fs::File::open(path).map_err(|error| SegmentError::Io {
        path: path.into(),
        error,
    })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| zip_err(path, e))?;
    let name: Option<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .map(|n| n.into_owned());
    let Some(name) = name else {
        return Err(zip_err(path, "no data.pkl"));
    };
    let entry = zip.by_name(&name).map_err(|e| zip_err(path, e))?;
    let mut stack = Stack::empty();
    let parsed = stack
        .read_loop(&mut BufReader::new(entry))
        .and_then(|()| stack.finalize());
    parsed.map_err(|e| SegmentError::Field {
        path: path.into(),
        field: PathBuf::from(name).display().to_string(),
        msg: format!("unreadable pickle: {e}"),
    })
}

/// The tensors of the state dict under `key` of a torch.save zip archive, as f32 on `device`.
pub(crate) fn read_weights(
    path: &Path,
    key: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>, SegmentError> {
    let bad = |msg: String| SegmentError::Field {
        path: path.into(),
        field: key.into(),
        msg,
    };
    let pth = PthTensors::new(path, Some(key)).map_err(|e| {
        bad(format!(
            "{e} (a torch.save zip archive is expected: checkpoints of torch < 1.6 need saving again)"
        ))
    })?;
    let mut weights = HashMap::with_capacity(pth.tensor_infos().len());
    for name in pth.tensor_infos().keys() {
        let t = pth
            .get(name)
            .and_then(|t| match t {
                Some(t) => t.to_dtype(DType::F32)?.to_device(device),
                None => candle_core::bail!("listed but not found"),
            })
            .map_err(|e| bad(format!("{name}: {e}")))?;
        weights.insert(name.clone(), t);
    }
    if weights.is_empty() {
        return Err(bad("no tensors".into()));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainers() {
        let p = Path::new("fold_0/checkpoint_final.pth");
        for ok in [
            "nnUNetTrainer",
            "nnUNetTrainer_250epochs",
            "nnUNetTrainer_8000epochs_NoMirroring",
            "nnUNetTrainerNoMirroring",
        ] {
            assert!(check_trainer(p, ok).is_ok(), "{ok}");
        }
        for bad in ["nnUNetTrainerBN", "nnUNetTrainer_MedNeXt", "MyTrainer"] {
            let e = check_trainer(p, bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
