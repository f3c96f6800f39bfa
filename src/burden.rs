//! Lesion burden: how much of the lungs a lesion map covers, in all, per lung and per lobe, and
//! the CT severity score that CORADS-AI reports beside CO-RADS (Lessmann et al., Radiology 2021):
//! each lobe scored 0-5 by its affected share, summed to 0-25.
//!
//! Everything is counted on the CT's own grid, where the lesion map, the lung mask (labelled
//! right and left, see [`crate::preprocess::lung_mask`]) and a lobe segmentation all lie.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::preprocess::lung_mask::{LEFT, RIGHT};
use crate::volume::Volume;

/// The five lung lobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lobe {
    /// Right upper lobe.
    RightUpper,
    /// Right middle lobe.
    RightMiddle,
    /// Right lower lobe.
    RightLower,
    /// Left upper lobe.
    LeftUpper,
    /// Left lower lobe.
    LeftLower,
}

impl Lobe {
    /// All five, right lung first, top to bottom.
    pub const ALL: [Lobe; 5] = [
        Lobe::RightUpper,
        Lobe::RightMiddle,
        Lobe::RightLower,
        Lobe::LeftUpper,
        Lobe::LeftLower,
    ];

    /// The name used in summaries (`right_upper`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Lobe::RightUpper => "right_upper",
            Lobe::RightMiddle => "right_middle",
            Lobe::RightLower => "right_lower",
            Lobe::LeftUpper => "left_upper",
            Lobe::LeftLower => "left_lower",
        }
    }

    /// The lobe a segmentation label's name stands for, if any: a side (`right`, `left`) and a
    /// level (`upper` or `superior`, `middle`, `lower` or `inferior`) anywhere in the name, in
    /// any case and spelling (`right upper lobe`, `lung_upper_lobe_right` as TotalSegmentator
    /// names it, `RightUpperLobe`), or the usual abbreviations as a word (`RUL`, `RML`, `RLL`,
    /// `LUL`, `LLL`).
    pub fn from_label_name(name: &str) -> Option<Lobe> {
        let lower = name.to_ascii_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        for (abbr, lobe) in [
            ("rul", Lobe::RightUpper),
            ("rml", Lobe::RightMiddle),
            ("rll", Lobe::RightLower),
            ("lul", Lobe::LeftUpper),
            ("lll", Lobe::LeftLower),
        ] {
            if words.contains(&abbr) {
                return Some(lobe);
            }
        }
        let has = |w: &str| lower.contains(w);
        let right = has("right");
        let left = has("left");
        let upper = has("upper") || has("superior");
        let middle = has("middle");
        let lower_ = has("lower") || has("inferior");
        match (right, left, upper, middle, lower_) {
            (true, false, true, false, false) => Some(Lobe::RightUpper),
            (true, false, false, true, false) => Some(Lobe::RightMiddle),
            (true, false, false, false, true) => Some(Lobe::RightLower),
            (false, true, true, false, false) => Some(Lobe::LeftUpper),
            (false, true, false, false, true) => Some(Lobe::LeftLower),
            _ => None,
        }
    }
}

/// Finds the label value of each lobe among a segmentation's labels (name to value); every lobe
/// must be named by exactly one label. Other labels (airways, background) are ignored.
pub fn lobe_labels(labels: &BTreeMap<String, i64>) -> Result<BTreeMap<Lobe, i64>, String> {
    let mut found: BTreeMap<Lobe, Vec<&str>> = BTreeMap::new();
    for (name, &value) in labels {
        if value == 0 {
            continue;
        }
        if let Some(lobe) = Lobe::from_label_name(name) {
            found.entry(lobe).or_default().push(name);
        }
    }
    let mut out = BTreeMap::new();
    for lobe in Lobe::ALL {
        match found.get(&lobe).map(Vec::as_slice) {
            Some([name]) => {
                out.insert(lobe, labels[*name]);
            }
            Some(names) => {
                return Err(format!(
                    "labels {names:?} all name the {} lobe",
                    lobe.name().replace('_', " ")
                ))
            }
            None => {
                return Err(format!(
                    "no label names the {} lobe (such as \"{}_lobe\")",
                    lobe.name().replace('_', " "),
                    lobe.name()
                ))
            }
        }
    }
    Ok(out)
}

/// One lobe's share of lesion and its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LobeBurden {
    /// The lobe.
    pub lobe: Lobe,
    /// Lesion voxels in the lobe over the lobe's voxels, in percent (0 for an empty lobe).
    pub affected_pct: f64,
    /// Its score, 0-5 ([`lobe_score`]).
    pub score: u8,
}

/// The lesion burden of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Burden {
    /// Lesion voxels inside the lung mask over lung voxels, in percent.
    pub lung_affected_pct: f64,
    /// The same within the right lung, where the lung mask separates the lungs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_lung_affected_pct: Option<f64>,
    /// The same within the left lung, where the lung mask separates the lungs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_lung_affected_pct: Option<f64>,
    /// Per lobe, with a lobe segmentation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lobes: Vec<LobeBurden>,
    /// The CT severity score (the lobes' scores summed, 0-25), with a lobe segmentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct_severity_score: Option<u8>,
}

/// CORADS-AI's score of one lobe for its affected share in percent: 0 none, 1 under 5 %, 2 from
/// 5 to 25 %, 3 over 25 to 50 %, 4 over 50 to 75 %, 5 over 75 %.
pub fn lobe_score(affected_pct: f64) -> u8 {
    match affected_pct {
        p if p <= 0.0 => 0,
        p if p < 5.0 => 1,
        p if p <= 25.0 => 2,
        p if p <= 50.0 => 3,
        p if p <= 75.0 => 4,
        _ => 5,
    }
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The burden of `lesion` (non-zero: lesion) in `lungs` (the lung mask: 0, right, left), both on
/// one grid; per lung only when `lungs_separated` (the mask's sides are its two components, not
/// a split at the midline). `None` when the grids differ or the mask is empty.
pub fn lung_burden(lesion: &Volume, lungs: &Volume<u8>, lungs_separated: bool) -> Option<Burden> {
    if lesion.size != lungs.size || lesion.data.len() != lungs.data.len() {
        return None;
    }
    // [lung voxels, lesion voxels] for the right and the left lung.
    let mut counts = [[0usize; 2]; 2];
    for (&m, &l) in lungs.data.iter().zip(&lesion.data) {
        let side = match m {
            RIGHT => 0,
            LEFT => 1,
            _ => continue,
        };
        counts[side][0] += 1;
        counts[side][1] += usize::from(l > 0.5);
    }
    let [right, left] = counts;
    let lung = right[0] + left[0];
    (lung > 0).then(|| Burden {
        lung_affected_pct: pct(right[1] + left[1], lung),
        right_lung_affected_pct: lungs_separated.then(|| pct(right[1], right[0])),
        left_lung_affected_pct: lungs_separated.then(|| pct(left[1], left[0])),
        lobes: Vec::new(),
        ct_severity_score: None,
    })
}

/// Adds the per-lobe shares and the CT severity score of `lesion` within the lobe segmentation
/// `lobes` (label values as `labels` maps them), on the same grid. Does nothing when the grids
/// differ.
pub fn add_lobes(
    burden: &mut Burden,
    lesion: &Volume,
    lobes: &Volume,
    labels: &BTreeMap<Lobe, i64>,
) {
    if lesion.size != lobes.size || lesion.data.len() != lobes.data.len() {
        return;
    }
    let by_value: BTreeMap<i64, usize> = Lobe::ALL
        .iter()
        .enumerate()
        .filter_map(|(i, lobe)| labels.get(lobe).map(|&v| (v, i)))
        .collect();
    let mut counts = [[0usize; 2]; 5];
    for (&v, &l) in lobes.data.iter().zip(&lesion.data) {
        if let Some(&i) = by_value.get(&(v.round() as i64)) {
            counts[i][0] += 1;
            counts[i][1] += usize::from(l > 0.5);
        }
    }
    burden.lobes = Lobe::ALL
        .iter()
        .zip(counts)
        .map(|(&lobe, [n, a])| {
            let affected_pct = pct(a, n);
            LobeBurden {
                lobe,
                affected_pct,
                score: lobe_score(affected_pct),
            }
        })
        .collect();
    burden.ct_severity_score = Some(burden.lobes.iter().map(|l| l.score).sum());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lobe_scores_follow_corads_ais_bands() {
        for (p, s) in [
            (0.0, 0),
            (0.01, 1),
            (4.99, 1),
            (5.0, 2),
            (25.0, 2),
            (25.01, 3),
            (50.0, 3),
            (50.5, 4),
            (75.0, 4),
            (75.1, 5),
            (100.0, 5),
        ] {
            assert_eq!(lobe_score(p), s, "{p}");
        }
    }

    #[test]
    fn lobe_names_in_common_spellings() {
        for (name, lobe) in [
            ("right upper lobe", Lobe::RightUpper),
            ("lung_middle_lobe_right", Lobe::RightMiddle),
            ("RightLowerLobe", Lobe::RightLower),
            ("LUL", Lobe::LeftUpper),
            ("lobe_LLL", Lobe::LeftLower),
            ("left inferior lobe", Lobe::LeftLower),
        ] {
            assert_eq!(Lobe::from_label_name(name), Some(lobe), "{name}");
        }
        for name in [
            "background",
            "trachea",
            "left lung",
            "left middle",
            "lesion",
        ] {
            assert_eq!(Lobe::from_label_name(name), None, "{name}");
        }
    }

    #[test]
    fn every_lobe_must_be_named_once() {
        let labels = |names: &[&str]| -> BTreeMap<String, i64> {
            std::iter::once(("background".to_string(), 0))
                .chain(
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.to_string(), i as i64 + 1)),
                )
                .collect()
        };
        let ok = labels(&["RUL", "RML", "RLL", "LUL", "LLL", "airways"]);
        let map = lobe_labels(&ok).expect("five lobes");
        assert_eq!(map[&Lobe::LeftLower], 5);
        let e = lobe_labels(&labels(&["RUL", "RML", "RLL", "LUL"])).unwrap_err();
        assert!(e.contains("left lower"), "{e}");
        let e =
            lobe_labels(&labels(&["RUL", "right upper", "RML", "RLL", "LUL", "LLL"])).unwrap_err();
        assert!(e.contains("right upper"), "{e}");
    }

    fn volume<T>(data: Vec<T>) -> Volume<T> {
        let n = data.len();
        Volume {
            data,
            size: [n, 1, 1],
            spacing: [1.0; 3],
            origin: [0.0; 3],
            direction: crate::volume::IDENTITY,
        }
    }

    #[test]
    fn burden_counts_inside_the_lungs_per_side_and_per_lobe() {
        // Right lung 4 voxels (1 affected), left lung 4 (2 affected), a lesion outside the lungs.
        let lungs = volume(vec![1u8, 1, 1, 1, 2, 2, 2, 2, 0]);
        let lesion = volume(vec![1f32, 0., 0., 0., 1., 1., 0., 0., 1.]);
        let b = lung_burden(&lesion, &lungs, true).expect("burden");
        assert_eq!(b.lung_affected_pct, 37.5);
        assert_eq!(b.right_lung_affected_pct, Some(25.0));
        assert_eq!(b.left_lung_affected_pct, Some(50.0));
        let joined = lung_burden(&lesion, &lungs, false).expect("burden");
        assert_eq!(joined.right_lung_affected_pct, None);
        assert!(lung_burden(&volume(vec![1.0f32]), &lungs, true).is_none());

        // Lobes: RUL = 1, RML = 2, RLL = 3, LUL = 4, LLL = 5 (two voxels of each but the RML).
        let lobes = volume(vec![1., 1., 3., 3., 4., 4., 5., 5., 0.]);
        let labels: BTreeMap<Lobe, i64> = Lobe::ALL.iter().zip(1..).map(|(&l, v)| (l, v)).collect();
        let mut b = b;
        add_lobes(&mut b, &lesion, &lobes, &labels);
        let shares: Vec<f64> = b.lobes.iter().map(|l| l.affected_pct).collect();
        assert_eq!(shares, [50.0, 0.0, 0.0, 100.0, 0.0]);
        let scores: Vec<u8> = b.lobes.iter().map(|l| l.score).collect();
        assert_eq!(scores, [3, 0, 0, 5, 0]);
        assert_eq!(b.ct_severity_score, Some(8));
    }
}
