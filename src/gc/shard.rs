//! Grading an archive in parts: `ctgrade run --shard I/N` grades the cases of shard I of N, as one
//! task of a Kubernetes Indexed Job or a Slurm job array, and `--skip-done` lets a restarted task
//! continue where it stopped.
//!
//! A case belongs to shard `sha256(case name) mod N` (the first 8 bytes, big-endian). Every task
//! therefore agrees on the partition whatever order its file system lists the files in, a case keeps
//! its shard when others are added, and a cryptographic hash spreads any naming scheme evenly.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::outputs::{CO_RADS_FILE, PROBABILITY_FILE};

/// Environment variables that give a task its index, in the order they are looked at.
pub const INDEX_VARIABLES: [&str; 2] = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"];

/// Why a shard cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The text is not `I/N` or `auto/N`.
    #[error("--shard {0:?}: expected I/N (0 <= I < N) or auto/N")]
    Syntax(String),
    /// I is not below N.
    #[error(
        "--shard {index}/{count}: the index must be below the count (shards are numbered from 0)"
    )]
    OutOfRange {
        /// I.
        index: usize,
        /// N.
        count: usize,
    },
    /// `auto` without any of [`INDEX_VARIABLES`].
    #[error("--shard auto/{0}: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set")]
    NoIndex(usize),
    /// An index variable that is not a number.
    #[error("--shard auto: {name}={value:?} is not a shard index")]
    BadVariable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
}

/// `--shard I/N` or `--shard auto/N` as given; [`ShardArg::resolve`] gives the [`Shard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardArg {
    /// I, or `None` for `auto`.
    pub index: Option<usize>,
    /// N.
    pub count: usize,
}

impl FromStr for ShardArg {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, ShardError> {
        let syntax = || ShardError::Syntax(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(syntax)?;
        let count: usize = n.trim().parse().map_err(|_| syntax())?;
        if count == 0 {
            return Err(syntax());
        }
        let index = match i.trim() {
            "auto" => None,
            i => Some(i.parse().map_err(|_| syntax())?),
        };
        if let Some(index) = index.filter(|&i| i >= count) {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Self { index, count })
    }
}

impl ShardArg {
    /// The shard: the given index, or for `auto` the task's index ([`task_index`]).
    pub fn resolve(self, var: impl Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
        let count = self.count;
        let index = match self.index {
            Some(i) => i,
            None => task_index(var)
                .map_err(|e| ShardError::BadVariable {
                    name: e.name,
                    value: e.value,
                })?
                .ok_or(ShardError::NoIndex(count))?,
        };
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }
}

/// An index variable (one of [`INDEX_VARIABLES`] or `SLURM_ARRAY_TASK_MIN`) that is not a
/// number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not a task index")]
pub struct BadIndexVariable {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The index of this task of a Kubernetes Indexed Job or a Slurm job array: the first of
/// [`INDEX_VARIABLES`] that `var` returns, `None` when neither is set. A Slurm array numbered from
/// `SLURM_ARRAY_TASK_MIN` (e.g. `--array=1-8`) is counted from there. Shared by `run --shard
/// auto/N` and `train --member auto`, so both read a task's index the same way.
pub fn task_index(var: impl Fn(&str) -> Option<String>) -> Result<Option<usize>, BadIndexVariable> {
    let Some((name, value)) = INDEX_VARIABLES
        .iter()
        .find_map(|name| var(name).map(|v| (*name, v)))
    else {
        return Ok(None);
    };
    let number = |name: &str, value: &str| {
        value.trim().parse::<usize>().map_err(|_| BadIndexVariable {
            name: name.to_string(),
            value: value.to_string(),
        })
    };
    let mut index = number(name, &value)?;
    if name == "SLURM_ARRAY_TASK_ID" {
        if let Some(min) = var("SLURM_ARRAY_TASK_MIN") {
            index = index.saturating_sub(number("SLURM_ARRAY_TASK_MIN", &min)?);
        }
    }
    Ok(Some(index))
}

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// I, from 0.
    pub index: usize,
    /// N.
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the case named `case` belongs to this shard.
    pub fn owns(&self, case: &str) -> bool {
        shard_of(case, self.count) == self.index
    }

    /// The suffix of this shard's summary files: `summary-shard-I-of-N.json`.
    pub fn summary_stem(&self) -> String {
        format!("summary-shard-{}-of-{}", self.index, self.count)
    }
}

/// The shard (0..count) a case name belongs to.
pub fn shard_of(case: &str, count: usize) -> usize {
    let digest = Sha256::digest(case.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % count.max(1) as u64) as usize
}

/// The answer a finished case left in `dir` (its socket files), when both are there and valid: a
/// probability in [0, 1] and a CO-RADS score 1-5. Anything else (missing, unreadable, out of range)
/// means the case is graded again.
pub fn finished(dir: &Path) -> Option<(f64, u8)> {
    let read = |file: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).ok()?).ok()
    };
    let p = read(PROBABILITY_FILE)?.as_f64()?;
    let c = read(CO_RADS_FILE)?.as_u64()?;
    let ok = p.is_finite() && (0.0..=1.0).contains(&p) && (1..=5).contains(&c);
    ok.then_some((p, c as u8))
}

/// A stand-in for the environment in tests: `pairs` as the only variables.
#[cfg(test)]
pub(crate) fn env(
    pairs: &'static [(&'static str, &'static str)],
) -> impl Fn(&str) -> Option<String> {
    move |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ictcf-patient-{i:04}")).collect()
    }

    #[test]
    fn parse_and_resolve() {
        let fixed: ShardArg = "2/5".parse().unwrap();
        assert_eq!(
            fixed.resolve(env(&[])).unwrap(),
            Shard { index: 2, count: 5 }
        );
        let auto: ShardArg = "auto/4".parse().unwrap();
        assert_eq!(
            auto.resolve(env(&[("JOB_COMPLETION_INDEX", "3")])).unwrap(),
            Shard { index: 3, count: 4 }
        );
        assert_eq!(
            auto.resolve(env(&[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_MIN", "1")
            ]))
            .unwrap()
            .index,
            3
        );
        assert_eq!(auto.resolve(env(&[])), Err(ShardError::NoIndex(4)));
        assert!(matches!(
            auto.resolve(env(&[("JOB_COMPLETION_INDEX", "x")])),
            Err(ShardError::BadVariable { .. })
        ));
        assert_eq!(
            auto.resolve(env(&[("JOB_COMPLETION_INDEX", "4")])),
            Err(ShardError::OutOfRange { index: 4, count: 4 })
        );
        for bad in ["3", "a/2", "1/0", "-1/2", "1/b", ""] {
            assert!(bad.parse::<ShardArg>().is_err(), "{bad}");
        }
        assert_eq!(
            "3/3".parse::<ShardArg>(),
            Err(ShardError::OutOfRange { index: 3, count: 3 })
        );
    }

    #[test]
    fn partition_is_stable_and_complete() {
        let all = names(500);
        // Every case in exactly one shard.
        for n in [1, 2, 3, 7] {
            for name in &all {
                let owners = (0..n)
                    .filter(|&i| Shard { index: i, count: n }.owns(name))
                    .count();
                assert_eq!(owners, 1);
            }
        }
        // Fixed values (Python's hashlib gives the same): the partition must never change between
        // versions, or a resumed archive would be graded twice or not at all.
        let pinned: Vec<usize> = all[..8].iter().map(|n| shard_of(n, 4)).collect();
        assert_eq!(pinned, PINNED);
        // Listed in another order, with cases added: the original cases keep their shards.
        let shard = Shard { index: 1, count: 5 };
        let owned = |list: &[String]| -> Vec<String> {
            let mut v: Vec<String> = list.iter().filter(|n| shard.owns(n)).cloned().collect();
            v.sort();
            v
        };
        let mut other = all.clone();
        other.reverse();
        other.extend(names(700).into_iter().map(|n| format!("{n}-added")));
        let before = owned(&all);
        let after: Vec<String> = owned(&other)
            .into_iter()
            .filter(|n| !n.ends_with("-added"))
            .collect();
        assert_eq!(before, after);
        assert!(!before.is_empty());
    }

    /// `shard_of(ictcf-patient-000k, 4)` for k = 0..8.
    const PINNED: [usize; 8] = [3, 1, 2, 1, 0, 2, 1, 3];

    #[test]
    fn shards_are_balanced() {
        let all = names(3000);
        for n in [2, 3, 8] {
            let mut counts = vec![0usize; n];
            for name in &all {
                counts[shard_of(name, n)] += 1;
            }
            let mean = all.len() as f64 / n as f64;
            for c in counts {
                // Binomial: 4 standard deviations at most.
                let sd = (mean * (1.0 - 1.0 / n as f64)).sqrt();
                assert!(
                    (c as f64 - mean).abs() < 4.0 * sd,
                    "{n} shards: {c} vs {mean}"
                );
            }
        }
    }

    #[test]
    fn finished_cases_need_both_valid_answers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(finished(d), None);
        std::fs::write(d.join(PROBABILITY_FILE), "0.25\n").unwrap();
        assert_eq!(finished(d), None);
        std::fs::write(d.join(CO_RADS_FILE), "2\n").unwrap();
        assert_eq!(finished(d), Some((0.25, 2)));
        std::fs::write(d.join(CO_RADS_FILE), "7\n").unwrap();
        assert_eq!(finished(d), None);
        std::fs::write(d.join(CO_RADS_FILE), "2").unwrap();
        std::fs::write(d.join(PROBABILITY_FILE), "0.2").unwrap();
        assert_eq!(finished(d), Some((0.2, 2)));
        std::fs::write(d.join(PROBABILITY_FILE), "NaN").unwrap();
        assert_eq!(finished(d), None);
    }
}
