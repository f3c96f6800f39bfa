//! Point metrics: AUC (Mann-Whitney), ROC curve (as scikit-learn's `roc_curve`), quadratic
//! weighted kappa (as scikit-learn's `cohen_kappa_score(weights="quadratic")` over CO-RADS 1..5),
//! sensitivity/specificity at a threshold and at the Youden point.
//!
//! The AUC and kappa also take per-case integer weights, which is how the bootstrap evaluates a
//! resample without copying it: a case drawn k times gets weight k.

use std::cmp::Ordering;

use serde::Serialize;

use crate::error::{EvalError, Result};

/// Number of CO-RADS categories (1..=5).
pub const N_CO_RADS: usize = 5;

/// Checks parallel lengths, NaN scores and that both classes are present.
pub(crate) fn check_inputs(what: &'static str, scores: &[f64], labels: &[bool]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(EvalError::LengthMismatch {
            what,
            a: scores.len(),
            b: labels.len(),
        });
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(EvalError::NanScore { what, index });
    }
    check_both_classes(what, labels)
}

/// The one-class check, written once: AUC, ROC and every stratum need positive and negative
/// cases. The error says which class the labels hold ("absent" when there are none).
pub fn check_both_classes(what: &str, labels: &[bool]) -> Result<()> {
    let n_pos = labels.iter().filter(|&&l| l).count();
    if n_pos == 0 || n_pos == labels.len() {
        return Err(EvalError::OneClass {
            what: what.to_string(),
            n: labels.len(),
            class: if labels.is_empty() {
                "absent"
            } else if n_pos == 0 {
                "negative"
            } else {
                "positive"
            },
        });
    }
    Ok(())
}

// NaN is rejected before any sort, so the fallback never decides an order.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// The case indices sorted by score (ascending, or `descending`) and the bounds of the groups
/// of tied scores: `order[bounds[g]..bounds[g + 1]]` is the g-th group. `!=` (not bit
/// equality) decides ties, so -0.0 and 0.0 tie, as in numpy and scikit-learn.
pub(crate) fn tie_groups(scores: &[f64], descending: bool) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if descending {
        order.sort_by(|&a, &b| cmp_f64(scores[b], scores[a]));
    } else {
        order.sort_by(|&a, &b| cmp_f64(scores[a], scores[b]));
    }
    let mut bounds = vec![0];
    for k in 1..order.len() {
        if scores[order[k]] != scores[order[k - 1]] {
            bounds.push(k);
        }
    }
    bounds.push(order.len());
    (order, bounds)
}

/// Scores sorted once, grouped by equal value, for repeated (weighted) AUC evaluation.
#[derive(Debug, Clone)]
pub struct RankedScores {
    /// Case indices in ascending score order.
    order: Vec<usize>,
    /// `order[bounds[g]..bounds[g + 1]]` is the g-th group of tied scores.
    bounds: Vec<usize>,
    labels: Vec<bool>,
}

impl RankedScores {
    /// Sorts the scores; fails on NaN scores, mismatched lengths or a single class.
    pub fn new(scores: &[f64], labels: &[bool]) -> Result<Self> {
        check_inputs("AUC", scores, labels)?;
        let (order, bounds) = tie_groups(scores, false);
        Ok(Self {
            order,
            bounds,
            labels: labels.to_vec(),
        })
    }

    /// Mann-Whitney AUC with case weights: the probability that a positive outscores a negative,
    /// ties counted half. `None` when the weighted set lacks a class. Computed in integers
    /// (twice the U statistic) with one final division, so it is exact up to that rounding.
    pub fn auc_weighted(&self, weights: &[u32]) -> Option<f64> {
        let mut neg_below: u128 = 0;
        let mut twice_u: u128 = 0;
        let mut pos_total: u128 = 0;
        for g in self.bounds.windows(2) {
            let (mut gp, mut gn) = (0u128, 0u128);
            for &i in self.order.get(g[0]..g[1])? {
                let w = u128::from(*weights.get(i)?);
                if *self.labels.get(i)? {
                    gp += w;
                } else {
                    gn += w;
                }
            }
            twice_u += gp * (2 * neg_below + gn);
            neg_below += gn;
            pos_total += gp;
        }
        if pos_total == 0 || neg_below == 0 {
            return None;
        }
        Some(twice_u as f64 / (2 * pos_total * neg_below) as f64)
    }

    /// Unweighted AUC.
    pub fn auc(&self) -> Option<f64> {
        self.auc_weighted(&vec![1; self.labels.len()])
    }
}

/// Area under the ROC curve by the Mann-Whitney statistic (ties count half).
pub fn auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    let ranked = RankedScores::new(scores, labels)?;
    ranked.auc().ok_or(EvalError::OneClass {
        what: "AUC".into(),
        n: labels.len(),
        class: "absent",
    })
}

/// A ROC curve in scikit-learn's convention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocCurve {
    /// False positive rates, increasing, starting at 0.
    pub fpr: Vec<f64>,
    /// True positive rates, increasing, starting at 0.
    pub tpr: Vec<f64>,
    /// Decreasing thresholds (a case is positive when its score is `>=` the threshold); the first
    /// is `+inf` as in scikit-learn >= 1.3 (written as `null` in JSON, which has no infinity).
    #[serde(serialize_with = "serialize_thresholds")]
    pub thresholds: Vec<f64>,
}

fn serialize_thresholds<S: serde::Serializer>(
    t: &[f64],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(t.len()))?;
    for v in t {
        if v.is_finite() {
            seq.serialize_element(v)?;
        } else {
            seq.serialize_element(&Option::<f64>::None)?;
        }
    }
    seq.end()
}

/// The ROC curve exactly as `sklearn.metrics.roc_curve(labels, scores,
/// drop_intermediate=drop_intermediate)`: one point per distinct score, optionally without the
/// collinear intermediate points, preceded by (0, 0) at threshold `+inf`.
pub fn roc_curve(scores: &[f64], labels: &[bool], drop_intermediate: bool) -> Result<RocCurve> {
    check_inputs("ROC", scores, labels)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| cmp_f64(scores[b], scores[a]));
    // Cumulative counts at the last index of every run of equal scores (descending).
    let (mut fps, mut tps, mut thr) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_run = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_run {
            fps.push(fp);
            tps.push(tp);
            thr.push(scores[i]);
        }
    }
    if drop_intermediate && fps.len() > 2 {
        let n = fps.len();
        // Keep the ends and every point where the second difference of fps or tps is non-zero.
        let second = |v: &[u64], k: usize| v[k - 1] as i128 - 2 * v[k] as i128 + v[k + 1] as i128;
        let keep: Vec<usize> = (0..n)
            .filter(|&k| k == 0 || k == n - 1 || second(&fps, k) != 0 || second(&tps, k) != 0)
            .collect();
        fps = keep.iter().map(|&k| fps[k]).collect();
        tps = keep.iter().map(|&k| tps[k]).collect();
        thr = keep.iter().map(|&k| thr[k]).collect();
    }
    let (fp_total, tp_total) = (fp as f64, tp as f64);
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    curve.fpr.extend(fps.iter().map(|&v| v as f64 / fp_total));
    curve.tpr.extend(tps.iter().map(|&v| v as f64 / tp_total));
    curve.thresholds.extend(thr);
    Ok(curve)
}

/// Confusion counts of a binary decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct BinaryCounts {
    /// Positives called positive.
    pub tp: u64,
    /// Negatives called positive.
    pub fp: u64,
    /// Negatives called negative.
    pub tn: u64,
    /// Positives called negative.
    pub fn_: u64,
}

impl BinaryCounts {
    /// Counts with the rule "positive when score >= threshold" (scikit-learn's ROC rule).
    pub fn at_threshold(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let mut c = BinaryCounts::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (l, s >= threshold) {
                (true, true) => c.tp += 1,
                (true, false) => c.fn_ += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// tp / (tp + fn); `None` without positives.
    pub fn sensitivity(&self) -> Option<f64> {
        let p = self.tp + self.fn_;
        (p > 0).then(|| self.tp as f64 / p as f64)
    }

    /// tn / (tn + fp); `None` without negatives.
    pub fn specificity(&self) -> Option<f64> {
        let n = self.tn + self.fp;
        (n > 0).then(|| self.tn as f64 / n as f64)
    }
}

/// The operating point that maximises Youden's J = sensitivity + specificity - 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YoudenPoint {
    /// Threshold (`+inf` when no threshold beats calling everything negative).
    pub threshold: f64,
    /// J at that threshold (tpr - fpr of the ROC point).
    pub j: f64,
    /// Counts at the threshold.
    pub counts: BinaryCounts,
}

/// Youden point over the ROC curve's thresholds; ties go to the first (highest) threshold, as
/// `numpy.argmax(tpr - fpr)` does.
pub fn youden(roc: &RocCurve, scores: &[f64], labels: &[bool]) -> YoudenPoint {
    let mut best = 0;
    let mut best_j = f64::NEG_INFINITY;
    for (k, (f, t)) in roc.fpr.iter().zip(&roc.tpr).enumerate() {
        let j = t - f;
        if j > best_j {
            best_j = j;
            best = k;
        }
    }
    let threshold = roc.thresholds.get(best).copied().unwrap_or(f64::INFINITY);
    YoudenPoint {
        threshold,
        j: best_j,
        counts: BinaryCounts::at_threshold(scores, labels, threshold),
    }
}

/// A CO-RADS confusion matrix with real-valued (weighted) counts; rows are the truth, columns
/// the prediction, index k is CO-RADS k + 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CoRadsMatrix(pub [[f64; N_CO_RADS]; N_CO_RADS]);

impl CoRadsMatrix {
    /// Accumulates pairs of CO-RADS scores (each in 1..=5; others are skipped, as the loaders
    /// have rejected them already) with optional weights.
    pub fn from_pairs(truth: &[u8], pred: &[u8], weights: Option<&[u32]>) -> Self {
        let mut m = [[0.0; N_CO_RADS]; N_CO_RADS];
        for (k, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            let w = weights.map_or(1.0, |w| w.get(k).copied().map_or(0.0, f64::from));
            let (Some(ti), Some(pi)) = (co_rads_index(t), co_rads_index(p)) else {
                continue;
            };
            m[ti][pi] += w;
        }
        CoRadsMatrix(m)
    }

    /// Quadratic weighted kappa following scikit-learn's `cohen_kappa_score` step by step;
    /// `None` where scikit-learn returns NaN (no cases, or no disagreement possible).
    pub fn qwk(&self) -> Option<f64> {
        let c = &self.0;
        // sum0: column sums (predictions), sum1: row sums (truth), as in scikit-learn.
        let mut sum0 = [0.0; N_CO_RADS];
        let mut sum1 = [0.0; N_CO_RADS];
        for (i, row) in c.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                sum0[j] += v;
                sum1[i] += v;
            }
        }
        let total: f64 = sum0.iter().sum();
        if total == 0.0 {
            return None;
        }
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..N_CO_RADS {
            for j in 0..N_CO_RADS {
                let w = ((i as f64) - (j as f64)).powi(2);
                num += w * c[i][j];
                den += w * (sum0[i] * sum1[j] / total);
            }
        }
        if den == 0.0 {
            return None;
        }
        Some(1.0 - num / den)
    }

    /// The matrix as integer counts (for reporting unweighted matrices).
    pub fn counts(&self) -> Vec<Vec<u64>> {
        self.0
            .iter()
            .map(|r| r.iter().map(|&v| v.round() as u64).collect())
            .collect()
    }
}

fn co_rads_index(v: u8) -> Option<usize> {
    (1..=N_CO_RADS as u8)
        .contains(&v)
        .then(|| usize::from(v) - 1)
}

/// Quadratic weighted kappa of CO-RADS scores (1..=5), as scikit-learn's
/// `cohen_kappa_score(truth, pred, weights="quadratic", labels=[1, 2, 3, 4, 5])`.
pub fn qwk(truth: &[u8], pred: &[u8]) -> Result<Option<f64>> {
    if truth.len() != pred.len() {
        return Err(EvalError::LengthMismatch {
            what: "QWK",
            a: pred.len(),
            b: truth.len(),
        });
    }
    Ok(CoRadsMatrix::from_pairs(truth, pred, None).qwk())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half() {
        // One positive tied with one of two negatives: (1 + 0.5) / 2.
        let a = auc(&[0.5, 0.5, 0.2], &[true, false, false]).unwrap();
        assert_eq!(a, 0.75);
    }

    #[test]
    fn weighted_auc_equals_auc_of_duplicated_cases() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9];
        let labels = [false, false, true, true, true, false];
        let weights = [2, 0, 1, 3, 1, 1];
        let ranked = RankedScores::new(&scores, &labels).unwrap();
        let (mut s2, mut l2) = (vec![], vec![]);
        for k in 0..scores.len() {
            for _ in 0..weights[k] {
                s2.push(scores[k]);
                l2.push(labels[k]);
            }
        }
        assert_eq!(ranked.auc_weighted(&weights), Some(auc(&s2, &l2).unwrap()));
        assert_eq!(ranked.auc_weighted(&[1, 1, 0, 0, 0, 1]), None);
    }

    #[test]
    fn one_class_and_nan_are_errors() {
        assert!(matches!(
            auc(&[0.1, 0.2], &[true, true]),
            Err(EvalError::OneClass {
                class: "positive",
                ..
            })
        ));
        assert!(matches!(
            roc_curve(&[0.1, f64::NAN], &[true, false], true),
            Err(EvalError::NanScore { index: 1, .. })
        ));
    }

    #[test]
    fn roc_matches_sklearn_docstring_example() {
        // sklearn.metrics.roc_curve([1, 1, 2, 2], [0.1, 0.4, 0.35, 0.8], pos_label=2)
        let roc = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true], true).unwrap();
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(roc.thresholds[1..], [0.8, 0.4, 0.35, 0.1]);
        assert!(roc.thresholds[0].is_infinite());
    }

    #[test]
    fn qwk_perfect_and_undefined() {
        assert_eq!(qwk(&[1, 2, 5], &[1, 2, 5]).unwrap(), Some(1.0));
        assert_eq!(qwk(&[3, 3], &[3, 3]).unwrap(), None);
        assert_eq!(qwk(&[], &[]).unwrap(), None);
    }

    #[test]
    fn youden_prefers_highest_threshold_on_ties() {
        let scores = [0.9, 0.8, 0.3, 0.2];
        let labels = [true, true, false, false];
        let roc = roc_curve(&scores, &labels, true).unwrap();
        let y = youden(&roc, &scores, &labels);
        assert_eq!(y.threshold, 0.8);
        assert_eq!(y.j, 1.0);
        assert_eq!(y.counts.sensitivity(), Some(1.0));
        assert_eq!(y.counts.specificity(), Some(1.0));
    }
}
