//! `ctgrade train`: the paper's training recipe (de Vente et al., IEEE TAI 2021, section III-D),
//! from labelled CT scans to an ensemble folder that `ctgrade run` uses as is.
//!
//! - Data: a label CSV (`case,co_rads[,patient][,lesion]`, see [`labels`]) and a folder of scans;
//!   each case is preprocessed once as the ensemble's [`InputSpec`] says (kept in memory and
//!   cached on disk, [`data`]). A model with a lesion channel reads each case's lesion map from
//!   the `lesion` column, or has it computed by a lesion segmenter (`--lesion-model`), exactly as
//!   `ctgrade run` computes it ([`lesions`]).
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
//!   the member seed and the step ([`crate::rng`]) and the CPU kernels sum in a fixed order, so a resumed
//!   run produces the same weights, bit for bit, as an uninterrupted one on the same machine and
//!   thread count (a `--max-minutes` stop is the exception: it depends on the clock).
//! - On a cluster, `--member I` (or `auto`: the task index of a Kubernetes Indexed Job or a
//!   Slurm array) trains member I alone, exactly as the single run does, into a shared output
//!   folder; `--gather` then checks the members and writes the manifest ([`cluster`]).
//! - Progress lines (it/s, loss, validation QWK/AUC, time left), `train-log.csv`,
//!   `train-log.json` and `loss.svg` in the output folder.
//!
//! The networks train through [`net::TrainNet`]: the network's one definition
//! ([`crate::model::Network`]) over variables, run with the train flag, for every architecture
//! (3-D and 2-D DenseNets, ResNets and Inception-v1, and COVNet). On the CPU its convolutions,
//! pools and BatchNorms are then custom ops with hand-written gradients (`model::kernels`, chosen
//! by the layers' `forward_t`). Gradient checkpointing (`--grad-checkpoint`) trades compute for
//! memory (see [`net`]).

pub mod augment;
mod checkpoint;
pub mod cluster;
pub mod data;
mod error;
pub mod labels;
pub mod lesions;
mod member;
pub mod metrics;
pub mod net;
pub mod optim;
pub mod report;
pub mod synthdata;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::ensemble::{self, Manifest};
use crate::grading::Head;
use crate::model::NetworkConfig;
use crate::preprocess::{ChannelLayout, InputSpec};
use augment::AugmentConfig;
use optim::AdamConfig;
use report::LogRow;

pub use cluster::{gather, GatherOptions, MemberArg};
pub(crate) use error::write_file;
pub use error::{MemberError, TrainError};
pub use lesions::{LesionSource, RecipeLesionModel};
use member::{fmt_duration, train_member};

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
    /// The lesion segmenter that computes the lesion channel of cases without a lesion map:
    /// set by [`train`] from [`TrainOptions::lesion_model`] (what is set here is replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lesion_model: Option<RecipeLesionModel>,
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
    /// Train only this member (below `members`), as a task of a cluster run: exactly as the
    /// single run trains it, into the same folder, without the manifest ([`gather`] writes it).
    pub member: Option<usize>,
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
    /// Compute the lesion maps of cases without one with this segmenter ([`lesions`]); it is
    /// copied into `out/lesion` and the ensemble's manifest names it.
    pub lesion_model: Option<LesionSource>,
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
    /// False when the run was interrupted (`interrupt_after`) before the ensemble was written
    /// (with `member`: before that member finished).
    pub completed: bool,
    /// The ensemble manifest, when completed (never with `member`: [`gather`] writes it).
    pub manifest: Option<Manifest>,
}

const RECIPE_FILE: &str = "train-recipe.json";

pub(super) fn member_file(i: usize) -> String {
    format!("member-{i:02}.safetensors")
}

/// The whole run: data, members, ensemble, logs; with `opts.member`, that member alone.
pub fn train(opts: &TrainOptions) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    check_options(opts)?;
    std::fs::create_dir_all(&opts.out).map_err(|error| TrainError::Write {
        path: opts.out.clone(),
        error,
    })?;
    // The segmenter's digest is part of the recipe, checked against a resumed run's before the
    // segmenter replaces the run's own.
    let staged = match &opts.lesion_model {
        Some(src) => Some(lesions::Staged::new(src, &opts.out)?),
        None => None,
    };
    let opts = &TrainOptions {
        recipe: Recipe {
            lesion_model: staged.as_ref().map(|s| s.entry.clone()),
            ..opts.recipe.clone()
        },
        ..opts.clone()
    };
    let r = &opts.recipe;
    // A member task owns only its own checkpoints: the other tasks' are theirs.
    let (existing, whose) = match opts.member {
        None => (opts.out.join("checkpoints"), String::new()),
        Some(m) => (
            checkpoint::checkpoint_dir(&opts.out, m),
            format!(" of member {m}"),
        ),
    };
    if !opts.resume && existing.exists() {
        return Err(TrainError::Options(format!(
            "{} already holds a training run{whose}: pass --resume to continue it, or choose \
             another --out",
            opts.out.display()
        )));
    }
    let recipe_path = opts.out.join(RECIPE_FILE);
    let recipe_json = serde_json::to_string_pretty(r)
        .map_err(|e| TrainError::Options(format!("cannot serialise the recipe: {e}")))?;
    // The tasks of a cluster run share the folder: each checks the recipe another one wrote.
    if (opts.resume || opts.member.is_some()) && recipe_path.is_file() {
        let old = std::fs::read_to_string(&recipe_path).map_err(|error| TrainError::Write {
            path: recipe_path.clone(),
            error,
        })?;
        let old: Recipe = serde_json::from_str(&old)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", recipe_path.display())))?;
        if &old != r {
            return Err(TrainError::Checkpoint(format!(
                "{} was written with other settings; {} (saved: {}, now: {})",
                recipe_path.display(),
                if opts.member.is_some() {
                    "every member of a run needs the same options, or use another --out"
                } else {
                    "resume with the same options or use another --out"
                },
                serde_json::to_string(&old).unwrap_or_default(),
                serde_json::to_string(r).unwrap_or_default()
            )));
        }
    }
    write_file(&recipe_path, format!("{recipe_json}\n").as_bytes())?;
    let lesion_maps = staged.map(|s| s.install(&opts.out)).transpose()?;

    let log = |line: String| {
        if opts.log_every > 0 {
            eprintln!("train: {line}");
        }
    };
    let rows = labels::read_labels(&opts.labels)?;
    let labels_sha256 = cluster::labels_sha256(&opts.labels)?;
    let cases = data::find_cases(&opts.data, &rows)?;
    log(format!(
        "{} labelled cases; preprocessing to {:?} at {} mm",
        cases.len(),
        r.input.shape(),
        r.input.spacing_mm
    ));
    let cache = opts.cache.then(|| opts.out.join("cache"));
    let samples = data::load_samples(
        &cases,
        &r.input,
        lesion_maps.as_ref(),
        cache.as_deref(),
        log,
    )?;
    let to_train: Vec<usize> = match opts.member {
        Some(m) => vec![m],
        None => (0..opts.members).collect(),
    };
    let mut summaries = Vec::new();
    let mut all_rows: Vec<LogRow> = Vec::new();
    let mut steps_this_process = 0usize;
    for (n, &m) in to_train.iter().enumerate() {
        let budget = opts.max_minutes.map(|mins| {
            let left = mins * 60.0 - started.elapsed().as_secs_f64();
            left / (to_train.len() - n) as f64
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
        match outcome.summary {
            Some(s) => {
                cluster::write_record(opts, samples.len(), &labels_sha256, &s, &outcome.rows)?;
                summaries.push(s);
                write_logs(opts, &all_rows, &summaries)?;
            }
            None => {
                write_logs(opts, &all_rows, &summaries)?;
                return Ok(TrainReport {
                    members: summaries,
                    completed: false,
                    manifest: None,
                });
            }
        }
    }
    if let Some(m) = opts.member {
        log(format!(
            "member {m} of {} finished in {}; once all are, `ctgrade train --gather --out {}` \
             writes the ensemble",
            opts.members,
            fmt_duration(started.elapsed().as_secs_f64()),
            opts.out.display()
        ));
        return Ok(TrainReport {
            members: summaries,
            completed: true,
            manifest: None,
        });
    }
    // The single run's manifest and logs come from the members' records, as a cluster run's do.
    let report = gather(&GatherOptions {
        out: opts.out.clone(),
        members: Some(opts.members),
        name: opts.name.clone(),
        description: opts.description.clone(),
        demonstration: opts.demonstration,
    })?;
    log(format!(
        "wrote {} ({} member(s)) in {}",
        opts.out.join(ensemble::MANIFEST_FILE).display(),
        opts.members,
        fmt_duration(started.elapsed().as_secs_f64())
    ));
    Ok(report)
}

/// Writes the logs of `opts`'s run so far: `train-log.csv`, `train-log.json` and `loss.svg`, or
/// with `opts.member` that member's `train-log-member-XX.*` and `loss-member-XX.svg` (the
/// combined files are the gather's).
pub(super) fn write_logs(
    opts: &TrainOptions,
    rows: &[LogRow],
    members: &[MemberSummary],
) -> Result<(), TrainError> {
    let tag = opts
        .member
        .map(|m| format!("-member-{m:02}"))
        .unwrap_or_default();
    write_logs_in(&opts.out, &tag, &opts.recipe, rows, members)
}

/// Writes `train-log{tag}.csv`, `train-log{tag}.json` and `loss{tag}.svg` in `out`.
pub(super) fn write_logs_in(
    out: &Path,
    tag: &str,
    recipe: &Recipe,
    rows: &[LogRow],
    members: &[MemberSummary],
) -> Result<(), TrainError> {
    report::write_csv(&out.join(format!("train-log{tag}.csv")), rows)?;
    let json = serde_json::json!({
        "recipe": recipe,
        "members": members,
        "log": rows,
    });
    write_file(
        &out.join(format!("train-log{tag}.json")),
        format!("{json:#}\n").as_bytes(),
    )?;
    report::write_svg(
        &out.join(format!("loss{tag}.svg")),
        rows,
        &format!("ctgrade train: {}", recipe.network.arch),
    )
}

fn check_options(opts: &TrainOptions) -> Result<(), TrainError> {
    let r = &opts.recipe;
    let bad = |m: String| Err(TrainError::Options(m));
    if opts.members == 0 {
        return bad("--members must be at least 1".into());
    }
    if let Some(index) = opts.member.filter(|&m| m >= opts.members) {
        return Err(MemberError::OutOfRange {
            index,
            members: opts.members,
        }
        .into());
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
    if opts.lesion_model.is_some() && r.input.channels != ChannelLayout::CtLesionZeros {
        return bad(format!(
            "--lesion-model computes a lesion channel, but the input layout {:?} takes none \
             (the input specification's channels must be \"ct_lesion_zeros\")",
            r.input.channels
        ));
    }
    r.input
        .validate()
        .map_err(|e| TrainError::Options(e.to_string()))
}
