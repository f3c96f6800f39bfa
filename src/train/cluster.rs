//! Training on a cluster: one member per task, then a gather.
//!
//! `ctgrade train --member I` (or `--member auto`: the index of a Kubernetes Indexed Job's or a
//! Slurm array's task, read by [`crate::gc::shard::task_index`] as `run --shard auto/N` reads it)
//! trains member I of a K-member run exactly as the single run trains it: its seed is `seed + I`,
//! and its split, initialisation, batches and augmentations are functions of that seed and the
//! step alone. K tasks writing into one shared output folder therefore leave the single run's
//! member files, byte for byte on the CPU.
//!
//! Every finished member leaves a record, `checkpoints/member-XX/member.json`: the recipe, K, the
//! label file it learnt from, its summary and log rows, and the sha256 of the weights it wrote.
//! [`gather`] checks the records of members 0..K-1 and writes `ensemble.json` and the combined
//! logs, refusing a missing or unfinished member, a duplicated one, or one trained with other
//! settings or data, by name. The single run ends with the same gather, so both write the same
//! manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::checkpoint::{checkpoint_dir, MemberState};
use super::error::MemberError;
use super::report::LogRow;
use super::{member_file, write_file, write_logs_in, MemberSummary, Recipe, TrainError};
use super::{TrainOptions, TrainReport};
use crate::ensemble::{self, Manifest};
use crate::gc::shard::task_index;

/// `--member I` or `--member auto` as given; [`MemberArg::resolve`] gives the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberArg {
    /// Member I.
    Index(usize),
    /// The task's index from the environment.
    Auto,
}

impl FromStr for MemberArg {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<Self, MemberError> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            i => i
                .parse()
                .map(Self::Index)
                .map_err(|_| MemberError::Syntax(s.to_string())),
        }
    }
}

impl MemberArg {
    /// The member index below `members`: the given one, or for `auto` the task's index, looked
    /// up with `var` ([`task_index`]).
    pub fn resolve(
        self,
        members: usize,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<usize, MemberError> {
        let index = match self {
            Self::Index(i) => i,
            Self::Auto => task_index(var)?.ok_or(MemberError::NoIndex)?,
        };
        if index >= members {
            return Err(MemberError::OutOfRange { index, members });
        }
        Ok(index)
    }
}

/// The record a finished member leaves (`checkpoints/member-XX/member.json`), all that the
/// gather needs from its run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberRecord {
    /// K of the run that trained it (the gather's default K).
    pub(super) members: usize,
    /// What determined its weights.
    pub(super) recipe: Recipe,
    /// The label file, as given.
    pub(super) labels: PathBuf,
    /// sha256 of the label file: the members of one ensemble learn from the same labels.
    pub(super) labels_sha256: String,
    /// Labelled cases found.
    pub(super) cases: usize,
    /// The member's outcome.
    pub(super) summary: MemberSummary,
    /// Its log rows.
    pub(super) rows: Vec<LogRow>,
    /// Its weights file in the output folder.
    pub(super) file: String,
    /// sha256 of that file as the run wrote it.
    pub(super) sha256: String,
}

const RECORD_FILE: &str = "member.json";

/// The member's name in messages: its weights file without the extension.
fn name(i: usize) -> String {
    member_file(i).trim_end_matches(".safetensors").to_string()
}

/// sha256 of the label file.
pub(super) fn labels_sha256(path: &Path) -> Result<String, TrainError> {
    ctgrade_fsio::sha256_file(path).map_err(|e| TrainError::Labels {
        path: path.to_path_buf(),
        msg: format!("cannot read it: {e}"),
    })
}

/// Writes the record of member `summary.member`, finished, with its weights in place.
pub(super) fn write_record(
    opts: &TrainOptions,
    cases: usize,
    labels_sha256: &str,
    summary: &MemberSummary,
    rows: &[LogRow],
) -> Result<(), TrainError> {
    let m = summary.member;
    let file = member_file(m);
    let record = MemberRecord {
        members: opts.members,
        recipe: opts.recipe.clone(),
        labels: opts.labels.clone(),
        labels_sha256: labels_sha256.to_string(),
        cases,
        summary: summary.clone(),
        rows: rows.to_vec(),
        sha256: ensemble::sha256_file(&opts.out.join(&file))?,
        file,
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| {
        TrainError::Checkpoint(format!("cannot serialise member {m}'s record: {e}"))
    })?;
    write_file(
        &checkpoint_dir(&opts.out, m).join(RECORD_FILE),
        format!("{json}\n").as_bytes(),
    )
}

/// What a member's checkpoint folder holds.
enum Found {
    Record(Box<MemberRecord>),
    /// No record; the reason, for the message.
    Missing(String),
}

fn find(out: &Path, i: usize) -> Result<Found, TrainError> {
    let dir = checkpoint_dir(out, i);
    let path = dir.join(RECORD_FILE);
    if path.is_file() {
        let bad = |e: String| TrainError::Checkpoint(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let record: MemberRecord = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        return Ok(Found::Record(Box::new(record)));
    }
    let state = std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<MemberState>(&t).ok());
    Ok(Found::Missing(match state {
        // A run of an older ctgrade, which wrote no record: resuming it writes one.
        Some(s) if s.done => "finished without a record: resume it".into(),
        Some(s) => format!("stopped at step {}", s.step),
        None if dir.exists() => "no checkpoint".into(),
        None => "not started".into(),
    }))
}

/// K read from the records in `out/checkpoints`, when they agree.
fn members_from_records(out: &Path) -> Result<usize, TrainError> {
    let fail = |msg: String| TrainError::Gather {
        out: out.to_path_buf(),
        msg,
    };
    let mut counts: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) {
        let mut indices: Vec<usize> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("member-")?
                    .parse()
                    .ok()
            })
            .collect();
        indices.sort_unstable();
        for i in indices {
            if let Found::Record(r) = find(out, i)? {
                counts.entry(r.members).or_default().push(name(i));
            }
        }
    }
    match counts.len() {
        0 => Err(fail(
            "no finished member run in its checkpoints/ folder: train the members with \
             `ctgrade train --member I` first (or pass --members K to list the missing ones)"
                .into(),
        )),
        1 => Ok(counts.into_keys().next().unwrap_or(1)),
        _ => Err(fail(format!(
            "the member runs disagree on --members ({}): pass --members K",
            counts
                .iter()
                .map(|(k, names)| format!("{k} in {}", names.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// The top-level fields in which two recipes differ.
fn differences(a: &Recipe, b: &Recipe) -> String {
    let (a, b) = (serde_json::to_value(a), serde_json::to_value(b));
    let fields: Vec<String> = match (a, b) {
        (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) => a
            .keys()
            .chain(b.keys().filter(|k| !a.contains_key(*k)))
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    fields.join(", ")
}

/// What [`gather`] writes the manifest with.
#[derive(Debug, Clone)]
pub struct GatherOptions {
    /// The shared output folder of the member runs.
    pub out: PathBuf,
    /// K; `None`: as the member runs recorded it.
    pub members: Option<usize>,
    /// Manifest name.
    pub name: String,
    /// Manifest description (empty: one is written).
    pub description: String,
    /// Mark the ensemble as demonstration weights in its manifest.
    pub demonstration: bool,
}

/// Writes `ensemble.json` and the combined logs (`train-log.csv`, `train-log.json`, `loss.svg`)
/// in `opts.out` from the records of members 0..K-1, once each is there and finished, trained
/// with the same recipe on the same labels, and its weights are the file its run wrote. Fails
/// naming every missing member, or the first duplicated or inconsistent one.
pub fn gather(opts: &GatherOptions) -> Result<TrainReport, TrainError> {
    let out = &opts.out;
    let fail = |msg: String| TrainError::Gather {
        out: out.clone(),
        msg,
    };
    let k = match opts.members {
        Some(0) => return Err(fail("--members must be at least 1".into())),
        Some(k) => k,
        None => members_from_records(out)?,
    };
    let mut records = Vec::with_capacity(k);
    let mut missing = Vec::new();
    for i in 0..k {
        match find(out, i)? {
            Found::Record(r) => records.push(r),
            Found::Missing(why) => missing.push(format!("{} ({why})", name(i))),
        }
    }
    if !missing.is_empty() {
        return Err(fail(format!(
            "{} of {k} member(s) missing: {}; train each with `ctgrade train --member I --resume` \
             and the run's other options",
            missing.len(),
            missing.join(", ")
        )));
    }
    let first = &records[0];
    let mut by_hash: HashMap<String, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let s = &r.summary;
        if s.member != i || r.file != member_file(i) {
            return Err(fail(format!(
                "checkpoints/{} holds the run of member {} (seed {}), not of member {i}: a \
                 duplicated member; retrain {} in its own folder",
                name(i),
                s.member,
                s.seed,
                name(i)
            )));
        }
        if r.recipe != first.recipe {
            return Err(fail(format!(
                "{} was trained with other settings than {} (they differ in: {}); retrain it \
                 with the run's options",
                name(i),
                name(0),
                differences(&first.recipe, &r.recipe)
            )));
        }
        if r.labels_sha256 != first.labels_sha256 || r.cases != first.cases {
            return Err(fail(format!(
                "{} learnt from other labels than {} ({} cases of {}, against {} cases of {})",
                name(i),
                name(0),
                r.cases,
                r.labels.display(),
                first.cases,
                first.labels.display()
            )));
        }
        let path = out.join(&r.file);
        if !path.is_file() {
            return Err(fail(format!(
                "{} is missing although member {i}'s run finished; retrain it",
                r.file
            )));
        }
        let sha = ensemble::sha256_file(&path)?;
        if let Some(j) = by_hash.insert(sha.clone(), i) {
            return Err(fail(format!(
                "{} is the same file as {}: a duplicated member",
                r.file,
                member_file(j)
            )));
        }
        if sha != r.sha256 {
            return Err(fail(format!(
                "{} is not the file member {i}'s run wrote (it was replaced or changed since): \
                 retrain the member",
                r.file
            )));
        }
    }
    let recipe = &first.recipe;
    let rows: Vec<LogRow> = records.iter().flat_map(|r| r.rows.clone()).collect();
    let summaries: Vec<MemberSummary> = records.iter().map(|r| r.summary.clone()).collect();
    write_logs_in(out, "", recipe, &rows, &summaries)?;
    let lesion_model = recipe
        .lesion_model
        .as_ref()
        .map(|entry| super::lesions::check_installed(out, entry))
        .transpose()
        .map_err(fail)?;
    let network = recipe.network.clone();
    let description = if opts.description.is_empty() {
        format!(
            "{k} member(s) of {} trained by `ctgrade train` (seeds {}..{}) on {} cases of {}",
            network.arch,
            recipe.seed,
            recipe.seed + k as u64 - 1,
            first.cases,
            first.labels.display()
        )
    } else {
        opts.description.clone()
    };
    let manifest = Manifest {
        name: opts.name.clone(),
        description,
        demonstration: opts.demonstration,
        network,
        head: recipe.head,
        input: recipe.input.clone(),
        members: Vec::new(),
        lesion_model,
        lobe_model: None,
    };
    let files: Vec<PathBuf> = records.iter().map(|r| out.join(&r.file)).collect();
    let manifest = ensemble::create(out, manifest, &files)?;
    Ok(TrainReport {
        members: summaries,
        completed: true,
        manifest: Some(manifest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::shard::env;

    #[test]
    fn member_argument() {
        assert_eq!("3".parse::<MemberArg>(), Ok(MemberArg::Index(3)));
        assert_eq!("auto".parse::<MemberArg>(), Ok(MemberArg::Auto));
        for bad in ["", "-1", "a", "1/2"] {
            assert!(
                matches!(bad.parse::<MemberArg>(), Err(MemberError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(MemberArg::Index(2).resolve(3, env(&[])), Ok(2));
        assert_eq!(
            MemberArg::Index(3).resolve(3, env(&[])),
            Err(MemberError::OutOfRange {
                index: 3,
                members: 3
            })
        );
        let auto = MemberArg::Auto;
        assert_eq!(
            auto.resolve(10, env(&[("JOB_COMPLETION_INDEX", "7")])),
            Ok(7)
        );
        assert_eq!(
            auto.resolve(
                10,
                env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "1")])
            ),
            Ok(4)
        );
        assert_eq!(auto.resolve(10, env(&[])), Err(MemberError::NoIndex));
        assert!(matches!(
            auto.resolve(10, env(&[("SLURM_ARRAY_TASK_ID", "x")])),
            Err(MemberError::BadVariable(_))
        ));
        assert_eq!(
            auto.resolve(10, env(&[("JOB_COMPLETION_INDEX", "10")])),
            Err(MemberError::OutOfRange {
                index: 10,
                members: 10
            })
        );
        // One line each, naming what to fix.
        let msg = auto.resolve(10, env(&[])).unwrap_err().to_string();
        assert!(
            !msg.contains('\n') && msg.contains("JOB_COMPLETION_INDEX"),
            "{msg}"
        );
    }
}
