//! A member's resumable state: weights, running statistics, Adam's moments, the best weights and
//! the log so far, written every few hundred batches (`checkpoints/member-XX/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{save_tensors, write_file, TrainError};
use super::net::TrainNet;
use super::optim::Adam;
use super::report::LogRow;

/// Best validation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Best {
    pub(super) step: usize,
    pub(super) qwk: f64,
    pub(super) loss: f64,
    pub(super) auc: Option<f64>,
}

/// The resumable state of one member (`checkpoints/member-XX/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberState {
    pub(super) member: usize,
    pub(super) seed: u64,
    /// Updates done; also the state of the counter-based random streams.
    pub(super) step: usize,
    /// Adam's update count.
    pub(super) adam_t: u64,
    pub(super) best: Option<Best>,
    /// Training loss accumulated since the last log row (bits of the f64, exact).
    pub(super) loss_sum_bits: u64,
    pub(super) loss_count: usize,
    pub(super) rows: Vec<LogRow>,
    pub(super) done: bool,
    pub(super) stop_reason: Option<String>,
    pub(super) seconds: f64,
    /// The tensors of this state.
    pub(super) tensors: String,
}

impl MemberState {
    pub(super) fn fresh(member: usize, seed: u64) -> Self {
        Self {
            member,
            seed,
            step: 0,
            adam_t: 0,
            best: None,
            loss_sum_bits: 0f64.to_bits(),
            loss_count: 0,
            rows: Vec::new(),
            done: false,
            stop_reason: None,
            seconds: 0.0,
            tensors: String::new(),
        }
    }
}

pub(super) fn checkpoint_dir(out: &Path, i: usize) -> PathBuf {
    out.join("checkpoints").join(format!("member-{i:02}"))
}

pub(super) fn save_checkpoint(
    dir: &Path,
    state: &mut MemberState,
    net: &TrainNet,
    adam: &Adam,
    best: Option<&HashMap<String, Tensor>>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|error| TrainError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (n, t) in net.state()? {
        tensors.insert(format!("net.{n}"), t);
    }
    tensors.extend(adam.state());
    if let Some(b) = best {
        for (n, t) in b {
            tensors.insert(format!("best.{n}"), t.clone());
        }
    }
    let name = format!("state-{:07}.safetensors", state.step);
    let path = dir.join(&name);
    save_tensors(&path, &tensors)?;
    let previous = std::mem::replace(&mut state.tensors, name.clone());
    state.adam_t = adam.t;
    let json =
        serde_json::to_string_pretty(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    write_file(&dir.join("state.json"), format!("{json}\n").as_bytes())?;
    if !previous.is_empty() && previous != name {
        // The state file no longer points at it; a leftover file would only take space.
        let _ = std::fs::remove_file(dir.join(previous));
    }
    Ok(())
}

pub(super) type Loaded = (MemberState, HashMap<String, Tensor>);

pub(super) fn load_checkpoint(dir: &Path) -> Result<Option<Loaded>, TrainError> {
    let json = dir.join("state.json");
    if !json.is_file() {
        return Ok(None);
    }
    let ck = |e: String| TrainError::Checkpoint(format!("{}: {e}", json.display()));
    let text = std::fs::read_to_string(&json).map_err(|e| ck(e.to_string()))?;
    let state: MemberState = serde_json::from_str(&text).map_err(|e| ck(e.to_string()))?;
    let tensors = candle_core::safetensors::load(dir.join(&state.tensors), &Device::Cpu)
        .map_err(|e| ck(format!("tensors {}: {e}", state.tensors)))?;
    Ok(Some((state, tensors)))
}

pub(super) fn strip(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}
