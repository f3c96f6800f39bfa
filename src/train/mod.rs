//! `ctgrade train`: the paper's training recipe (de Vente et al., IEEE TAI 2021, section III-D),
//! from labelled CT scans to an ensemble folder that `ctgrade run` uses as is.
//!
//! - Data: a label CSV (`case,co_rads[,patient][,lesion]`, see [`labels`]) and a folder of scans;
//!   each case is preprocessed once as the ensemble's [`InputSpec`] says (kept in memory and
//!   cached on disk, [`data`]).
//! - Split: 75/25 train/validation, stratified by CO-RADS, by patient when given; each member
//!   splits with its own seed. Validation uses a class-balanced list (every CO-RADS class weighs
//!   the same) and the network in inference form (BatchNorm running statistics), i.e. exactly
//!   what is shipped.
//! - Targets and loss: continuous head, CO-RADS `c` -> `(c - 1) / 4` with binary cross-entropy;
//!   or categorical with cross-entropy ([`optim::loss`]).
//! - Optimiser: Adam (0.9, 0.999), learning rate 1e-4, batch size 2 ([`optim`]).
//! - Augmentation: zoom, rotation, shear, axial elastic deformation, translation, Gaussian noise
//!   ([`augment`]).
//! - Early stopping on validation QWK (ties: lower validation loss) with a patience in batches;
//!   a member's weights are those of its best validation.
//! - K members with seeds `seed, seed + 1, ...`, written with their manifest by
//!   [`crate::ensemble::create`].
//! - Checkpoints (weights, running statistics, Adam moments, best weights, step, log) every few
//!   hundred batches: `--resume` continues an interrupted run. Every random draw is a function of
//!   the member seed and the step ([`rng`]) and the CPU kernels sum in a fixed order, so a resumed
//!   run produces the same weights, bit for bit, as an uninterrupted one on the same machine and
//!   thread count (a `--max-minutes` stop is the exception: it depends on the clock).
//! - Progress lines (it/s, loss, validation QWK/AUC, time left), `train-log.csv`,
//!   `train-log.json` and `loss.svg` in the output folder.
//!
//! The networks train through [`net::TrainNet`]: the architecture's layers built from
//! differentiable ops with BatchNorm in training mode (the engine folds BatchNorm for inference),
//! for every architecture (3-D and 2-D DenseNets, ResNets and Inception-v1, and COVNet); on the CPU
//! its convolutions, pools and BatchNorms are custom ops with hand-written gradients (the
//! convolution and pooling in `model::kernels`, chosen by the layers' `conv3d_train` and
//! `Pool3d::forward_train`; BatchNorm in [`norm`]). Gradient checkpointing (`--grad-checkpoint`)
//! trades compute for memory (see [`net`]).

pub mod augment;
mod body;
pub mod data;
mod densenet;
mod inception;
pub mod labels;
pub mod metrics;
pub mod net;
pub mod norm;
pub mod optim;
pub mod report;
mod resnet;
pub mod synthdata;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ensemble::{self, Manifest};
use crate::grading::{self, Head};
use crate::model::{ModelError, NetworkConfig};
use crate::preprocess::InputSpec;
use crate::rng::{hash2, Rng};
use augment::{AugmentConfig, Transform};
use data::Sample;
use net::TrainNet;
use optim::{Adam, AdamConfig};
use report::LogRow;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The label file is unreadable or malformed.
    #[error("label file {path}: {msg}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        msg: String,
    },
    /// A scan or folder of the data set cannot be used.
    #[error("{path}: {msg}")]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Inconsistent options.
    #[error("invalid training options: {0}")]
    Options(String),
    /// The initial weights cannot be used.
    #[error("initial weights {path}: {msg}")]
    Init {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint cannot be read or does not fit.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An output cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The network cannot be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the ensemble failed (boxed: the error is large and rare).
    #[error(transparent)]
    Ensemble(Box<ensemble::EnsembleError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<ensemble::EnsembleError> for TrainError {
    fn from(e: ensemble::EnsembleError) -> Self {
        Self::Ensemble(Box::new(e))
    }
}

/// Writes a file atomically (temporary file, then rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::gc::outputs::write_atomic(path, bytes).map_err(|e| TrainError::Write {
        path: e.path,
        source: e.source,
    })
}

/// Writes tensors as safetensors atomically and durably.
fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    ctgrade_fsio::write_atomic_by_path(path, "", |tmp| candle_core::safetensors::save(tensors, tmp))
        .map_err(|e| match e {
            ctgrade_fsio::ByPathError::Fill(e) => TrainError::Candle(e),
            ctgrade_fsio::ByPathError::Io(source) => TrainError::Write {
                path: path.to_path_buf(),
                source,
            },
        })
}

/// Everything that determines the trained weights (a resumed run must use the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The network.
    pub network: NetworkConfig,
    /// The output head.
    pub head: Head,
    /// The network input.
    pub input: InputSpec,
    /// Seed of member 0 (member `i` uses `seed + i`).
    pub seed: u64,
    /// Adam's settings.
    pub adam: AdamConfig,
    /// Cases per batch.
    pub batch_size: usize,
    /// Most updates per member.
    pub max_steps: usize,
    /// Early stopping: stop when the validation QWK has not improved for this many batches
    /// (0: never stop early).
    pub patience: usize,
    /// Validate every this many batches.
    pub val_every: usize,
    /// Fraction of patients held out for validation (0: no validation, keep the last weights).
    pub val_fraction: f64,
    /// Augmentation ranges at the paper's input size (scaled to the actual input).
    pub augment: AugmentConfig,
    /// Initial weights (safetensors), if any.
    pub init: Option<PathBuf>,
    /// Gradient checkpointing: recompute activations in the backward pass to save memory
    /// ([`net::TrainNet::forward_backward_checkpointed`]). The gradients equal the plain ones up
    /// to the order of floating-point sums, so it is part of what a resumed run must repeat.
    #[serde(default)]
    pub grad_checkpoint: bool,
}

/// Options of a training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder of scans.
    pub data: PathBuf,
    /// Label CSV.
    pub labels: PathBuf,
    /// Output folder: the ensemble, logs, checkpoints and the preprocessing cache.
    pub out: PathBuf,
    /// What determines the weights.
    pub recipe: Recipe,
    /// Number of members.
    pub members: usize,
    /// Wall-clock budget for the whole run (minutes); members share what is left equally.
    pub max_minutes: Option<f64>,
    /// Continue from the checkpoints in `out`.
    pub resume: bool,
    /// Checkpoint every this many batches (and at the end of a member).
    pub checkpoint_every: usize,
    /// Print a progress line every this many batches (0: no progress lines).
    pub log_every: usize,
    /// Cache preprocessed inputs in `out/cache`.
    pub cache: bool,
    /// Manifest name.
    pub name: String,
    /// Manifest description (empty: one is written).
    pub description: String,
    /// Mark the ensemble as demonstration weights in its manifest.
    pub demonstration: bool,
    /// For tests: stop as if killed after this many updates in this process (no final
    /// checkpoint, no ensemble).
    pub interrupt_after: Option<usize>,
    /// Where the networks train. On the CPU, convolutions, pools and BatchNorm are custom ops
    /// with hand-written gradients and results are bit-exact across resumptions; elsewhere
    /// (CUDA) they are composed from candle ops, which this repository has not tested for
    /// training.
    pub device: Device,
}

/// The outcome of one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Member index.
    pub member: usize,
    /// Its seed.
    pub seed: u64,
    /// Updates done.
    pub steps: usize,
    /// Step of the kept weights.
    pub best_step: usize,
    /// Validation QWK of the kept weights.
    pub best_qwk: Option<f64>,
    /// Validation AUC of the kept weights.
    pub best_auc: Option<f64>,
    /// Why training stopped.
    pub stop_reason: String,
    /// Training seconds (across resumptions).
    pub seconds: f64,
    /// Training and validation cases.
    pub train_cases: usize,
    /// Validation cases (before class balancing).
    pub val_cases: usize,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Finished members.
    pub members: Vec<MemberSummary>,
    /// False when the run was interrupted (`interrupt_after`) before the ensemble was written.
    pub completed: bool,
    /// The ensemble manifest, when completed.
    pub manifest: Option<Manifest>,
}

/// Best validation so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Best {
    step: usize,
    qwk: f64,
    loss: f64,
    auc: Option<f64>,
}

/// The resumable state of one member (`checkpoints/member-XX/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberState {
    member: usize,
    seed: u64,
    /// Updates done; also the state of the counter-based random streams.
    step: usize,
    /// Adam's update count.
    adam_t: u64,
    best: Option<Best>,
    /// Training loss accumulated since the last log row (bits of the f64, exact).
    loss_sum_bits: u64,
    loss_count: usize,
    rows: Vec<LogRow>,
    done: bool,
    stop_reason: Option<String>,
    seconds: f64,
    /// The tensors of this state.
    tensors: String,
}

impl MemberState {
    fn fresh(member: usize, seed: u64) -> Self {
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

const RECIPE_FILE: &str = "train-recipe.json";

fn member_file(i: usize) -> String {
    format!("member-{i:02}.safetensors")
}

fn checkpoint_dir(out: &Path, i: usize) -> PathBuf {
    out.join("checkpoints").join(format!("member-{i:02}"))
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Validation scores of the network in inference form on the class-balanced list.
struct Validation {
    loss: f64,
    qwk: Option<f64>,
    auc: Option<f64>,
}

fn validate(
    net: &mut TrainNet,
    bn_batches: &[Tensor],
    head: Head,
    samples: &[Sample],
    list: &[usize],
) -> Result<Validation, TrainError> {
    net.recompute_bn_stats(bn_batches)?;
    let model = net.inference()?;
    let mut unique: Vec<usize> = list.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut outputs: HashMap<usize, Vec<f64>> = HashMap::new();
    for chunk in unique.chunks(4) {
        let dims = samples[chunk[0]].dims;
        let inputs = chunk
            .iter()
            .map(|&i| samples[i].expand(&samples[i].data))
            .collect();
        let x = data::batch_tensor(inputs, 3, dims, net.device())?;
        let logits = model.forward(&x)?;
        let act = match head {
            Head::Continuous => candle_nn::ops::sigmoid(&logits)?,
            Head::Categorical => candle_nn::ops::softmax(&logits, D::Minus1)?,
        };
        let rows = act.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        for (&i, r) in chunk.iter().zip(rows) {
            outputs.insert(i, r);
        }
    }
    let (mut truth, mut pred, mut pos, mut score) = (vec![], vec![], vec![], vec![]);
    let mut loss = 0.0;
    for &i in list {
        let out = outputs
            .get(&i)
            .ok_or_else(|| TrainError::Options("validation output missing".into()))?;
        let c = samples[i].co_rads;
        let g = grading::grade(head, out).map_err(|e| {
            TrainError::Options(format!("validation case {}: {e}", samples[i].case))
        })?;
        loss += match head {
            Head::Continuous => {
                let t = optim::target(head, c) as f64;
                let p = out[0].clamp(1e-7, 1.0 - 1e-7);
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            }
            Head::Categorical => -out
                .get(c as usize - 1)
                .copied()
                .unwrap_or(0.0)
                .max(1e-7)
                .ln(),
        };
        truth.push(c);
        pred.push(g.co_rads);
        pos.push(c >= 4);
        score.push(g.probability);
    }
    Ok(Validation {
        loss: loss / list.len().max(1) as f64,
        qwk: metrics::quadratic_weighted_kappa(&truth, &pred, grading::CO_RADS_CLASSES),
        auc: metrics::auc(&pos, &score),
    })
}

/// Epoch permutations of the training cases, a function of the seed and the epoch.
struct Sampler {
    train: Vec<usize>,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
}

impl Sampler {
    fn new(train: Vec<usize>, seed: u64) -> Self {
        Self {
            train,
            seed,
            epoch: usize::MAX,
            perm: Vec::new(),
        }
    }

    /// The case at position `p` of the endless shuffled stream.
    fn at(&mut self, p: usize) -> usize {
        let n = self.train.len();
        let epoch = p / n;
        if epoch != self.epoch {
            self.perm = self.train.clone();
            Rng::stream(self.seed, hash2(0xE90C, epoch as u64)).shuffle(&mut self.perm);
            self.epoch = epoch;
        }
        self.perm[p % n]
    }
}

/// The whole run: data, members, ensemble, logs.
pub fn train(opts: &TrainOptions) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    let r = &opts.recipe;
    check_options(opts)?;
    std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let recipe_path = opts.out.join(RECIPE_FILE);
    let recipe_json = serde_json::to_string_pretty(r)
        .map_err(|e| TrainError::Options(format!("cannot serialise the recipe: {e}")))?;
    if opts.resume && recipe_path.is_file() {
        let old = std::fs::read_to_string(&recipe_path).map_err(|source| TrainError::Write {
            path: recipe_path.clone(),
            source,
        })?;
        let old: Recipe = serde_json::from_str(&old)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", recipe_path.display())))?;
        if &old != r {
            return Err(TrainError::Checkpoint(format!(
                "{} was written with other settings; resume with the same options or use \
                 another --out (saved: {}, now: {})",
                recipe_path.display(),
                serde_json::to_string(&old).unwrap_or_default(),
                serde_json::to_string(r).unwrap_or_default()
            )));
        }
    } else if !opts.resume && opts.out.join("checkpoints").exists() {
        return Err(TrainError::Options(format!(
            "{} already holds a training run: pass --resume to continue it, or choose another --out",
            opts.out.display()
        )));
    }
    write_file(&recipe_path, format!("{recipe_json}\n").as_bytes())?;

    let log = |line: String| {
        if opts.log_every > 0 {
            eprintln!("train: {line}");
        }
    };
    let rows = labels::read_labels(&opts.labels)?;
    let cases = data::find_cases(&opts.data, &rows)?;
    log(format!(
        "{} labelled cases; preprocessing to {:?} at {} mm",
        cases.len(),
        r.input.shape(),
        r.input.spacing_mm
    ));
    let cache = opts.cache.then(|| opts.out.join("cache"));
    let samples = data::load_samples(&cases, &r.input, cache.as_deref(), log)?;
    let mut summaries = Vec::new();
    let mut all_rows: Vec<LogRow> = Vec::new();
    let mut steps_this_process = 0usize;
    for m in 0..opts.members {
        let budget = opts.max_minutes.map(|mins| {
            let left = mins * 60.0 - started.elapsed().as_secs_f64();
            left / (opts.members - m) as f64
        });
        let outcome = train_member(
            opts,
            &samples,
            m,
            budget,
            &mut steps_this_process,
            (&all_rows, &summaries),
        )?;
        all_rows.extend(outcome.rows.iter().cloned());
        write_logs(opts, &all_rows, &summaries)?;
        match outcome.summary {
            Some(s) => summaries.push(s),
            None => {
                return Ok(TrainReport {
                    members: summaries,
                    completed: false,
                    manifest: None,
                })
            }
        }
    }
    write_logs(opts, &all_rows, &summaries)?;
    let network = r.network.clone();
    let description = if opts.description.is_empty() {
        format!(
            "{} member(s) of {} trained by `ctgrade train` (seeds {}..{}) on {} cases of {}",
            opts.members,
            network.arch,
            r.seed,
            r.seed + opts.members as u64 - 1,
            samples.len(),
            opts.labels.display()
        )
    } else {
        opts.description.clone()
    };
    let manifest = Manifest {
        name: opts.name.clone(),
        description,
        demonstration: opts.demonstration,
        network,
        head: r.head,
        input: r.input.clone(),
        members: Vec::new(),
    };
    let files: Vec<PathBuf> = (0..opts.members)
        .map(|i| opts.out.join(member_file(i)))
        .collect();
    let manifest = ensemble::create(&opts.out, manifest, &files)?;
    log(format!(
        "wrote {} ({} member(s)) in {}",
        opts.out.join(ensemble::MANIFEST_FILE).display(),
        files.len(),
        fmt_duration(started.elapsed().as_secs_f64())
    ));
    Ok(TrainReport {
        members: summaries,
        completed: true,
        manifest: Some(manifest),
    })
}

fn write_logs(
    opts: &TrainOptions,
    rows: &[LogRow],
    members: &[MemberSummary],
) -> Result<(), TrainError> {
    report::write_csv(&opts.out.join("train-log.csv"), rows)?;
    let json = serde_json::json!({
        "recipe": opts.recipe,
        "members": members,
        "log": rows,
    });
    write_file(
        &opts.out.join("train-log.json"),
        format!("{json:#}\n").as_bytes(),
    )?;
    report::write_svg(
        &opts.out.join("loss.svg"),
        rows,
        &format!("ctgrade train: {}", opts.recipe.network.arch),
    )
}

fn check_options(opts: &TrainOptions) -> Result<(), TrainError> {
    let r = &opts.recipe;
    let bad = |m: String| Err(TrainError::Options(m));
    if opts.members == 0 {
        return bad("--members must be at least 1".into());
    }
    if r.batch_size == 0 || r.max_steps == 0 || r.val_every == 0 || opts.checkpoint_every == 0 {
        return bad(
            "batch size, max steps, validation and checkpoint intervals must be positive".into(),
        );
    }
    if !(0.0..1.0).contains(&r.val_fraction) {
        return bad(format!(
            "validation fraction {} is not in [0, 1)",
            r.val_fraction
        ));
    }
    for lr in std::iter::once(r.adam.lr).chain(r.adam.lr_final) {
        if !(lr > 0.0 && lr.is_finite()) {
            return bad(format!("learning rate {lr} must be positive"));
        }
    }
    r.network.check_overrides()?;
    if r.network.num_outputs != r.head.num_outputs() {
        return bad(format!(
            "the {:?} head needs {} output(s), the network configuration has {}",
            r.head,
            r.head.num_outputs(),
            r.network.num_outputs
        ));
    }
    if r.network.in_channels != 3 {
        return bad(format!(
            "the network takes {} input channels; preprocessing produces 3",
            r.network.in_channels
        ));
    }
    r.input
        .validate()
        .map_err(|e| TrainError::Options(e.to_string()))
}

struct MemberOutcome {
    /// None when interrupted.
    summary: Option<MemberSummary>,
    rows: Vec<LogRow>,
}

fn save_checkpoint(
    dir: &Path,
    state: &mut MemberState,
    net: &TrainNet,
    adam: &Adam,
    best: Option<&HashMap<String, Tensor>>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Write {
        path: dir.to_path_buf(),
        source,
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

type Loaded = (MemberState, HashMap<String, Tensor>);

fn load_checkpoint(dir: &Path) -> Result<Option<Loaded>, TrainError> {
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

fn strip(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}

fn train_member(
    opts: &TrainOptions,
    samples: &[Sample],
    m: usize,
    budget_s: Option<f64>,
    steps_this_process: &mut usize,
    before: (&[LogRow], &[MemberSummary]),
) -> Result<MemberOutcome, TrainError> {
    let r = &opts.recipe;
    let seed = r.seed.wrapping_add(m as u64);
    let dir = checkpoint_dir(&opts.out, m);
    let split = data::split(samples, r.val_fraction, seed);
    if split.train.is_empty() {
        return Err(TrainError::Options(
            "no training cases after the split".into(),
        ));
    }
    let val_list = data::balanced(samples, &split.val);
    let mut net = TrainNet::new(&r.network, seed, &opts.device)?;
    if let Some(init) = &r.init {
        let rep = net.load_init(init)?;
        if m == 0 && opts.log_every > 0 {
            eprintln!(
                "train: initial weights {}: {} tensors loaded, {} kept, {} head tensors skipped",
                init.display(),
                rep.loaded.len(),
                rep.kept.len(),
                rep.skipped.len()
            );
        }
    }
    let mut adam = Adam::new(net.params(), r.adam)?;
    let mut state = MemberState::fresh(m, seed);
    let mut best_weights: Option<HashMap<String, Tensor>> = None;
    if opts.resume {
        if let Some((s, tensors)) = load_checkpoint(&dir)? {
            if s.seed != seed || s.member != m {
                return Err(TrainError::Checkpoint(format!(
                    "{} belongs to member {} seed {}, not member {m} seed {seed}",
                    dir.display(),
                    s.member,
                    s.seed
                )));
            }
            net.set_state(&strip(&tensors, "net."), "checkpoint")?;
            adam.set_state(&tensors, s.adam_t)?;
            let best = strip(&tensors, "best.");
            best_weights = (!best.is_empty()).then_some(best);
            state = s;
        }
    }
    let log_on = opts.log_every > 0;
    if state.done {
        if log_on {
            eprintln!(
                "train: member {}/{} already finished at step {} ({})",
                m + 1,
                opts.members,
                state.step,
                state.stop_reason.as_deref().unwrap_or("")
            );
        }
        return Ok(MemberOutcome {
            summary: Some(summary(&state, &split)),
            rows: state.rows.clone(),
        });
    }
    if log_on {
        eprintln!(
            "train: member {}/{} seed {seed}: {} parameters, {} training / {} validation cases \
             ({} balanced), {}",
            m + 1,
            opts.members,
            net.num_parameters(),
            split.train.len(),
            split.val.len(),
            val_list.len(),
            if state.step > 0 {
                format!("resuming at step {}", state.step)
            } else {
                "from scratch".into()
            }
        );
    }
    let n_train = split.train.len();
    let bn_batches = bn_batches(samples, &split.train, seed, &opts.device)?;
    let mut sampler = Sampler::new(split.train.clone(), seed);
    let aug_cfg = r.augment.scaled(samples[0].dims);
    let pads = Sample::pad_values(&r.input);
    let t0 = Instant::now();
    let seconds_before = state.seconds;
    let mut last_line = Instant::now();
    let mut steps_since_line = 0usize;
    let stop_reason: String = loop {
        if state.step >= r.max_steps {
            break format!("reached {} steps", r.max_steps);
        }
        if budget_s.is_some_and(|b| t0.elapsed().as_secs_f64() >= b) {
            break "time limit".into();
        }
        if opts
            .interrupt_after
            .is_some_and(|n| *steps_this_process >= n)
        {
            return Ok(MemberOutcome {
                summary: None,
                rows: state.rows.clone(),
            });
        }
        // The batch and its augmentations: functions of (seed, step) only.
        let idx: Vec<usize> = (0..r.batch_size)
            .map(|b| sampler.at(state.step * r.batch_size + b))
            .collect();
        let step_key = hash2(seed, state.step as u64);
        let inputs: Vec<(Vec<f32>, usize)> = idx
            .par_iter()
            .enumerate()
            .map(|(b, &i)| {
                let s = &samples[i];
                let tf = Transform::draw(&aug_cfg, hash2(step_key, b as u64));
                let aug = augment::augment(&s.data, s.channels, s.dims, &pads, &tf);
                s.train_input(&aug)
            })
            .collect();
        let labels: Vec<u8> = idx.iter().map(|&i| samples[i].co_rads).collect();
        let channels = inputs.first().map_or(3, |i| i.1);
        let inputs = inputs.into_iter().map(|i| i.0).collect();
        let x = data::batch_tensor(inputs, channels, samples[idx[0]].dims, &opts.device)?;
        let (loss, grads) = if r.grad_checkpoint {
            net.forward_backward_checkpointed(&x, |logits| optim::loss(r.head, logits, &labels))?
        } else {
            let logits = net.forward_train(&x)?;
            let loss = optim::loss(r.head, &logits, &labels)?;
            let grads = loss.backward()?;
            (loss, grads)
        };
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(TrainError::Options(format!(
                "member {m}: the loss became {loss_value} at step {}; lower the learning rate",
                state.step
            )));
        }
        let lr = r.adam.lr_at(state.step, r.max_steps);
        adam.step(net.params(), &grads, lr)?;
        state.step += 1;
        *steps_this_process += 1;
        steps_since_line += 1;
        state.loss_sum_bits = (f64::from_bits(state.loss_sum_bits) + loss_value).to_bits();
        state.loss_count += 1;
        let elapsed = seconds_before + t0.elapsed().as_secs_f64();

        let mut early_stop = false;
        if state.step.is_multiple_of(r.val_every) || state.step == r.max_steps {
            let train_loss = f64::from_bits(state.loss_sum_bits) / state.loss_count.max(1) as f64;
            let mut row = LogRow {
                member: m,
                step: state.step,
                epoch: (state.step * r.batch_size) as f64 / n_train as f64,
                train_loss,
                val_loss: None,
                val_qwk: None,
                val_auc: None,
                seconds: elapsed,
            };
            if !val_list.is_empty() {
                let v = validate(&mut net, &bn_batches, r.head, samples, &val_list)?;
                row.val_loss = Some(v.loss);
                row.val_qwk = v.qwk;
                row.val_auc = v.auc;
                let qwk = v.qwk.unwrap_or(f64::NEG_INFINITY);
                let better = match &state.best {
                    None => true,
                    Some(b) => qwk > b.qwk || (qwk == b.qwk && v.loss < b.loss),
                };
                if better {
                    state.best = Some(Best {
                        step: state.step,
                        qwk,
                        loss: v.loss,
                        auc: v.auc,
                    });
                    best_weights = Some(net.state()?);
                }
                if r.patience > 0
                    && state
                        .best
                        .as_ref()
                        .is_some_and(|b| state.step - b.step >= r.patience)
                {
                    early_stop = true;
                }
            }
            state.rows.push(row);
            let rows: Vec<LogRow> = before.0.iter().chain(&state.rows).cloned().collect();
            write_logs(opts, &rows, before.1)?;
            state.loss_sum_bits = 0f64.to_bits();
            state.loss_count = 0;
            if log_on {
                let rate = steps_since_line as f64 / last_line.elapsed().as_secs_f64().max(1e-9);
                let left_steps = (r.max_steps - state.step) + (opts.members - m - 1) * r.max_steps;
                let b = state.best.as_ref();
                let row = state.rows.last();
                eprintln!(
                    "train: member {}/{} step {}/{} epoch {:.1} | loss {:.4} | val loss {} qwk {} auc {} | best qwk {} @ {} | {:.2} it/s | time left <= {}",
                    m + 1,
                    opts.members,
                    state.step,
                    r.max_steps,
                    row.map_or(0.0, |r| r.epoch),
                    train_loss,
                    row.and_then(|r| r.val_loss).map_or("-".into(), |v| format!("{v:.4}")),
                    row.and_then(|r| r.val_qwk).map_or("-".into(), |v| format!("{v:.3}")),
                    row.and_then(|r| r.val_auc).map_or("-".into(), |v| format!("{v:.3}")),
                    b.map_or("-".into(), |b| format!("{:.3}", b.qwk)),
                    b.map_or(0, |b| b.step),
                    rate,
                    fmt_duration(left_steps as f64 / rate.max(1e-9))
                );
                last_line = Instant::now();
                steps_since_line = 0;
            }
        } else if log_on && state.step.is_multiple_of(opts.log_every) {
            let rate = steps_since_line as f64 / last_line.elapsed().as_secs_f64().max(1e-9);
            let left_steps = (r.max_steps - state.step) + (opts.members - m - 1) * r.max_steps;
            eprintln!(
                "train: member {}/{} step {}/{} | loss {:.4} | {:.2} it/s | time left <= {}",
                m + 1,
                opts.members,
                state.step,
                r.max_steps,
                f64::from_bits(state.loss_sum_bits) / state.loss_count.max(1) as f64,
                rate,
                fmt_duration(left_steps as f64 / rate.max(1e-9))
            );
            last_line = Instant::now();
            steps_since_line = 0;
        }
        state.seconds = seconds_before + t0.elapsed().as_secs_f64();
        if state.step.is_multiple_of(opts.checkpoint_every) {
            save_checkpoint(&dir, &mut state, &net, &adam, best_weights.as_ref())?;
        }
        if early_stop {
            break format!(
                "early stop: no better validation QWK in {} batches",
                r.patience
            );
        }
    };
    // The kept weights: the best validation's, else the last (with re-estimated statistics).
    let weights = match &best_weights {
        Some(b) => b.clone(),
        None => {
            net.recompute_bn_stats(&bn_batches)?;
            net.state()?
        }
    };
    let member_path = opts.out.join(member_file(m));
    save_tensors(&member_path, &weights)?;
    state.done = true;
    state.stop_reason = Some(stop_reason.clone());
    state.seconds = seconds_before + t0.elapsed().as_secs_f64();
    save_checkpoint(&dir, &mut state, &net, &adam, best_weights.as_ref())?;
    if log_on {
        eprintln!(
            "train: member {}/{} done: {stop_reason}; kept step {} (val qwk {}), {}",
            m + 1,
            opts.members,
            state.best.as_ref().map_or(state.step, |b| b.step),
            state
                .best
                .as_ref()
                .map_or("-".into(), |b| format!("{:.3}", b.qwk)),
            fmt_duration(state.seconds)
        );
    }
    Ok(MemberOutcome {
        summary: Some(summary(&state, &split)),
        rows: state.rows.clone(),
    })
}

/// Cases whose unaugmented inputs re-estimate the BatchNorm statistics: up to this many.
const BN_CASES: usize = 32;
/// Cases per forward pass when re-estimating BatchNorm statistics.
const BN_BATCH: usize = 8;

/// A fixed, seeded subset of the training cases in batches, for [`TrainNet::recompute_bn_stats`].
fn bn_batches(
    samples: &[Sample],
    train: &[usize],
    seed: u64,
    device: &Device,
) -> Result<Vec<Tensor>, TrainError> {
    let mut pick = train.to_vec();
    Rng::stream(seed, 0xB47C).shuffle(&mut pick);
    pick.truncate(BN_CASES);
    pick.sort_unstable();
    let mut out = Vec::new();
    for chunk in pick.chunks(BN_BATCH) {
        let inputs: Vec<(Vec<f32>, usize)> = chunk
            .iter()
            .map(|&i| samples[i].train_input(&samples[i].data))
            .collect();
        let channels = inputs.first().map_or(3, |i| i.1);
        let dims = samples[chunk[0]].dims;
        out.push(data::batch_tensor(
            inputs.into_iter().map(|i| i.0).collect(),
            channels,
            dims,
            device,
        )?);
    }
    Ok(out)
}

fn summary(state: &MemberState, split: &data::Split) -> MemberSummary {
    MemberSummary {
        member: state.member,
        seed: state.seed,
        steps: state.step,
        best_step: state.best.as_ref().map_or(state.step, |b| b.step),
        best_qwk: state.best.as_ref().map(|b| b.qwk).filter(|q| q.is_finite()),
        best_auc: state.best.as_ref().and_then(|b| b.auc),
        stop_reason: state.stop_reason.clone().unwrap_or_default(),
        seconds: state.seconds,
        train_cases: split.train.len(),
        val_cases: split.val.len(),
    }
}
