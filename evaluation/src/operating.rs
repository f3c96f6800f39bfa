//! Operating points beyond a fixed threshold: sensitivity at a target specificity and
//! specificity at a target sensitivity (interpolated on the ROC curve, and the attainable
//! threshold), the Youden threshold of a (weighted) resample, predictive values at the CO-RADS
//! cut-offs, and decision-curve net benefit.
//!
//! **ROC interpolation.** The curve is scikit-learn's `roc_curve(drop_intermediate=False)`: one
//! point per distinct score plus (0, 0), joined by straight lines (ties give diagonal segments).
//! Sensitivity at specificity s is that polyline's height at fpr = 1 - s, the top of a vertical
//! step where one lies there (`numpy.interp(1 - s, fpr, tpr)`). Specificity at sensitivity s is
//! 1 - the polyline's lowest fpr at tpr = s, the same rule with the axes swapped. Targets are
//! whole percentages, compared with the counts in integers, so that a point at exactly 90%
//! counts as reaching 90%.

use serde::Serialize;

use crate::error::Result;
use crate::metrics::{check_inputs, tie_groups};

/// Target specificities and sensitivities, in percent.
pub const TARGETS_PERCENT: [u32; 2] = [90, 95];
/// CO-RADS cut-offs: a case is called positive when its predicted CO-RADS is at least this.
pub const CO_RADS_CUTOFFS: [u8; 4] = [2, 3, 4, 5];
/// Threshold probabilities of the decision curve: 0.01, 0.02, ..., 0.99.
pub fn decision_thresholds() -> Vec<f64> {
    (1..100).map(|k| f64::from(k) / 100.0).collect()
}

/// A ROC curve as cumulative counts, one point per distinct score (scikit-learn's
/// `drop_intermediate=False`), the first point (0, 0) at threshold `+inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCounts {
    /// Decreasing thresholds (a case is positive when its score is `>=` the threshold).
    pub thresholds: Vec<f64>,
    /// Cumulative (weighted) negatives at or above each threshold.
    pub fps: Vec<u64>,
    /// Cumulative (weighted) positives at or above each threshold.
    pub tps: Vec<u64>,
}

impl RocCounts {
    fn n_neg(&self) -> u64 {
        self.fps.last().copied().unwrap_or(0)
    }

    fn n_pos(&self) -> u64 {
        self.tps.last().copied().unwrap_or(0)
    }

    /// False positive rate of point `k` (as scikit-learn: `fps / fps[-1]`).
    fn fpr(&self, k: usize) -> f64 {
        self.fps.get(k).map_or(f64::NAN, |&v| v as f64) / self.n_neg() as f64
    }

    /// True positive rate of point `k`.
    fn tpr(&self, k: usize) -> f64 {
        self.tps.get(k).map_or(f64::NAN, |&v| v as f64) / self.n_pos() as f64
    }

    /// Index of the last point whose specificity is at least `pct` percent (the first point,
    /// with no case called positive, always qualifies).
    fn last_with_specificity(&self, pct: u32) -> usize {
        let bound = u128::from(100 - pct.min(100)) * u128::from(self.n_neg());
        self.fps
            .partition_point(|&fp| u128::from(fp) * 100 <= bound)
            .saturating_sub(1)
    }

    /// Index of the first point whose sensitivity is at least `pct` percent (the last point,
    /// with every case called positive, always qualifies).
    fn first_with_sensitivity(&self, pct: u32) -> usize {
        let bound = u128::from(pct.min(100)) * u128::from(self.n_pos());
        self.tps
            .partition_point(|&tp| u128::from(tp) * 100 < bound)
            .min(self.tps.len().saturating_sub(1))
    }

    /// Sensitivity at specificity `pct`% by linear interpolation of the ROC curve (see the module
    /// documentation), with numpy.interp's arithmetic.
    pub fn sensitivity_at_specificity(&self, pct: u32) -> f64 {
        let x = f64::from(100 - pct.min(100)) / 100.0;
        let j = self.last_with_specificity(pct);
        if j + 1 >= self.fps.len() || self.fpr(j) == x {
            return self.tpr(j);
        }
        let slope = (self.tpr(j + 1) - self.tpr(j)) / (self.fpr(j + 1) - self.fpr(j));
        slope * (x - self.fpr(j)) + self.tpr(j)
    }

    /// Specificity at sensitivity `pct`% by linear interpolation of the ROC curve: 1 - the
    /// lowest false positive rate at which the curve reaches that sensitivity.
    pub fn specificity_at_sensitivity(&self, pct: u32) -> f64 {
        let s = f64::from(pct.min(100)) / 100.0;
        let j = self.first_with_sensitivity(pct);
        if j == 0 || u128::from(self.tps[j]) * 100 == u128::from(pct) * u128::from(self.n_pos()) {
            return 1.0 - self.fpr(j);
        }
        let (t0, t1) = (self.tpr(j - 1), self.tpr(j));
        let fpr = self.fpr(j - 1) + (self.fpr(j) - self.fpr(j - 1)) * (s - t0) / (t1 - t0);
        1.0 - fpr
    }

    /// The attainable threshold for specificity >= `pct`%: the one with the highest sensitivity,
    /// and of those the highest threshold (`+inf` when only calling every case negative
    /// qualifies).
    pub fn threshold_at_specificity(&self, pct: u32) -> f64 {
        let j = self.last_with_specificity(pct);
        let best = self.tps.get(j).copied().unwrap_or(0);
        let k = self.tps.partition_point(|&tp| tp < best);
        self.thresholds.get(k).copied().unwrap_or(f64::INFINITY)
    }

    /// The attainable threshold for sensitivity >= `pct`%: the highest such threshold (so the
    /// highest specificity).
    pub fn threshold_at_sensitivity(&self, pct: u32) -> f64 {
        let k = self.first_with_sensitivity(pct);
        self.thresholds.get(k).copied().unwrap_or(f64::NEG_INFINITY)
    }

    /// The Youden threshold exactly as [`crate::metrics::youden`] finds it on scikit-learn's
    /// default curve: the points that `drop_intermediate=True` keeps, the first maximum of
    /// tpr - fpr.
    pub fn youden_threshold(&self) -> f64 {
        let m = self.fps.len();
        // Points 1..m are the distinct scores; sklearn drops a point when the steps before and
        // after it are equal (both second differences zero), keeping the first and the last.
        let second = |v: &[u64], k: usize| {
            i128::from(v[k - 1]) - 2 * i128::from(v[k]) + i128::from(v[k + 1])
        };
        let keep = |k: usize| {
            k <= 1 || k + 1 >= m || m <= 3 || second(&self.fps, k) != 0 || second(&self.tps, k) != 0
        };
        let mut best = 0;
        let mut best_j = f64::NEG_INFINITY;
        for k in (0..m).filter(|&k| keep(k)) {
            let j = self.tpr(k) - self.fpr(k);
            if j > best_j {
                best_j = j;
                best = k;
            }
        }
        self.thresholds.get(best).copied().unwrap_or(f64::INFINITY)
    }
}

/// Scores sorted once (descending, grouped by equal value) to build weighted ROC curves of
/// bootstrap resamples.
#[derive(Debug, Clone)]
pub struct RocOrder {
    order: Vec<usize>,
    bounds: Vec<usize>,
    scores: Vec<f64>,
    labels: Vec<bool>,
}

impl RocOrder {
    /// Sorts the scores; fails on NaN scores, mismatched lengths or a single class.
    pub fn new(scores: &[f64], labels: &[bool]) -> Result<Self> {
        check_inputs("ROC", scores, labels)?;
        let (order, bounds) = tie_groups(scores, true);
        Ok(Self {
            order,
            bounds,
            scores: scores.to_vec(),
            labels: labels.to_vec(),
        })
    }

    /// The ROC counts of the cases with their weights (all 1 when `None`); scores whose cases
    /// all have weight 0 give no point, as they would be absent from the repeated arrays.
    /// `None` when the weighted set lacks a class.
    pub fn counts(&self, weights: Option<&[u32]>) -> Option<RocCounts> {
        let mut c = RocCounts {
            thresholds: vec![f64::INFINITY],
            fps: vec![0],
            tps: vec![0],
        };
        let (mut fp, mut tp) = (0u64, 0u64);
        for g in self.bounds.windows(2) {
            let (mut gp, mut gn) = (0u64, 0u64);
            let members = self.order.get(g[0]..g[1])?;
            for &i in members {
                let w = match weights {
                    Some(w) => u64::from(*w.get(i)?),
                    None => 1,
                };
                if *self.labels.get(i)? {
                    gp += w;
                } else {
                    gn += w;
                }
            }
            if gp + gn == 0 {
                continue;
            }
            tp += gp;
            fp += gn;
            c.tps.push(tp);
            c.fps.push(fp);
            c.thresholds.push(*self.scores.get(*members.first()?)?);
        }
        (tp > 0 && fp > 0).then_some(c)
    }
}

/// Positive and negative predictive values with CO-RADS >= `cutoff` called positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PredictiveValues {
    /// The cut-off: positive when the predicted CO-RADS is at least this.
    pub cutoff: u8,
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// True negatives.
    pub tn: u64,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// tp / (tp + fp); null when no case is called positive.
    pub ppv: Option<f64>,
    /// tn / (tn + fn); null when no case is called negative.
    pub npv: Option<f64>,
    /// tp / (tp + fn).
    pub sensitivity: Option<f64>,
    /// tn / (tn + fp).
    pub specificity: Option<f64>,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (a + b > 0).then(|| a as f64 / (a + b) as f64)
}

/// Predictive values of predicted CO-RADS scores at each of [`CO_RADS_CUTOFFS`].
pub fn predictive_values(co_rads: &[u8], labels: &[bool]) -> Vec<PredictiveValues> {
    CO_RADS_CUTOFFS
        .iter()
        .map(|&cutoff| {
            let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
            for (&c, &l) in co_rads.iter().zip(labels) {
                match (l, c >= cutoff) {
                    (true, true) => tp += 1,
                    (false, true) => fp += 1,
                    (false, false) => tn += 1,
                    (true, false) => fn_ += 1,
                }
            }
            PredictiveValues {
                cutoff,
                tp,
                fp,
                tn,
                fn_,
                ppv: ratio(tp, fp),
                npv: ratio(tn, fn_),
                sensitivity: ratio(tp, fn_),
                specificity: ratio(tn, fp),
            }
        })
        .collect()
}

/// Decision-curve analysis (Vickers & Elkin 2006): the net benefit of treating the cases with
/// probability >= pt, against treating every case, at each threshold probability pt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionCurve {
    /// Threshold probabilities pt.
    pub thresholds: Vec<f64>,
    /// tp / n - fp / n * pt / (1 - pt) of the model.
    pub net_benefit: Vec<f64>,
    /// The same for treating every case: prevalence - (1 - prevalence) * pt / (1 - pt). Treating
    /// no case has net benefit 0.
    pub net_benefit_treat_all: Vec<f64>,
}

/// The decision curve over [`decision_thresholds`].
pub fn decision_curve(scores: &[f64], labels: &[bool]) -> Result<DecisionCurve> {
    check_inputs("decision curve", scores, labels)?;
    let n = scores.len() as f64;
    let prevalence = labels.iter().filter(|&&l| l).count() as f64 / n;
    let thresholds = decision_thresholds();
    let mut net_benefit = Vec::with_capacity(thresholds.len());
    let mut net_benefit_treat_all = Vec::with_capacity(thresholds.len());
    for &pt in &thresholds {
        let (mut tp, mut fp) = (0u64, 0u64);
        for (&s, &l) in scores.iter().zip(labels) {
            if s >= pt {
                if l {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
        }
        let odds = pt / (1.0 - pt);
        net_benefit.push(tp as f64 / n - fp as f64 / n * odds);
        net_benefit_treat_all.push(prevalence - (1.0 - prevalence) * odds);
    }
    Ok(DecisionCurve {
        thresholds,
        net_benefit,
        net_benefit_treat_all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{roc_curve, youden};

    fn counts(scores: &[f64], labels: &[bool]) -> RocCounts {
        RocOrder::new(scores, labels).unwrap().counts(None).unwrap()
    }

    #[test]
    fn counts_are_the_full_sklearn_curve() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4];
        let labels = [false, false, true, true, true];
        let c = counts(&scores, &labels);
        let roc = roc_curve(&scores, &labels, false).unwrap();
        assert_eq!(c.thresholds, roc.thresholds);
        let fpr: Vec<f64> = (0..c.fps.len()).map(|k| c.fpr(k)).collect();
        let tpr: Vec<f64> = (0..c.tps.len()).map(|k| c.tpr(k)).collect();
        assert_eq!(fpr, roc.fpr);
        assert_eq!(tpr, roc.tpr);
    }

    #[test]
    fn interpolation_on_steps_and_vertices() {
        // 10 negatives, 10 positives, perfectly separated but for one negative on top.
        let mut scores: Vec<f64> = (0..10).map(|k| f64::from(k) / 100.0).collect();
        scores.extend((0..10).map(|k| 0.5 + f64::from(k) / 100.0));
        scores[9] = 0.99;
        let labels: Vec<bool> = (0..20).map(|k| k >= 10).collect();
        let c = counts(&scores, &labels);
        // fpr 0.1 is reached at the first point (the negative on top); the vertical step above
        // it goes to tpr 1: the top is taken.
        assert_eq!(c.sensitivity_at_specificity(90), 1.0);
        // Below fpr 0.1 the curve runs flat from (0, 0) to the negative on top.
        assert_eq!(c.sensitivity_at_specificity(95), 0.0);
        assert_eq!(c.specificity_at_sensitivity(90), 0.9);
        assert_eq!(c.threshold_at_specificity(95), f64::INFINITY);
        assert_eq!(c.threshold_at_specificity(90), 0.5);
    }

    #[test]
    fn weighted_counts_equal_repeated_cases() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
        let labels = [false, false, true, true, true, false, true];
        let weights = [2, 0, 1, 3, 1, 0, 2];
        let order = RocOrder::new(&scores, &labels).unwrap();
        let w = order.counts(Some(&weights)).unwrap();
        let (mut s2, mut l2) = (vec![], vec![]);
        for k in 0..scores.len() {
            for _ in 0..weights[k] {
                s2.push(scores[k]);
                l2.push(labels[k]);
            }
        }
        let r = counts(&s2, &l2);
        assert_eq!(w, r);
        let roc = roc_curve(&s2, &l2, true).unwrap();
        assert_eq!(w.youden_threshold(), youden(&roc, &s2, &l2).threshold);
        assert_eq!(order.counts(Some(&[1, 1, 0, 0, 0, 1, 0])), None);
    }

    #[test]
    fn predictive_values_at_cutoffs() {
        let pv = predictive_values(&[1, 3, 5, 4, 2], &[false, true, true, false, false]);
        assert_eq!(pv[0].cutoff, 2);
        // CO-RADS >= 3: tp 2, fp 1, tn 2, fn 0.
        assert_eq!((pv[1].tp, pv[1].fp, pv[1].tn, pv[1].fn_), (2, 1, 2, 0));
        assert_eq!(pv[1].ppv, Some(2.0 / 3.0));
        assert_eq!(pv[1].npv, Some(1.0));
    }

    #[test]
    fn decision_curve_treat_all_crosses_zero_at_prevalence() {
        let d = decision_curve(&[0.2, 0.7, 0.6, 0.1], &[false, true, true, false]).unwrap();
        assert_eq!(d.thresholds.len(), 99);
        // Prevalence 0.5: treating all has net benefit 0 at pt = 0.5.
        assert!(d.net_benefit_treat_all[49].abs() < 1e-15);
        // At pt = 0.5 the model treats the two positives only: 2/4.
        assert_eq!(d.net_benefit[49], 0.5);
    }
}
