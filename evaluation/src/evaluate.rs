//! Joining predictions with ground truth and computing everything that goes into
//! `metrics.json`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::bootstrap::{percentile_interval, Clusters, Resampler};
use crate::calibration::{
    brier, brier_weighted, calibration_curve, calibration_intercept, calibration_slope,
    BinStrategy, CalibrationCurve, N_BINS,
};
use crate::case::match_key;
use crate::delong::{delong_test, DeLong};
use crate::error::{name_list, EvalError, Result};
use crate::metrics::{
    check_both_classes, roc_curve, youden, BinaryCounts, CoRadsMatrix, RankedScores, RocCurve,
    N_CO_RADS,
};
use crate::operating::{
    decision_curve, predictive_values, DecisionCurve, PredictiveValues, RocOrder, TARGETS_PERCENT,
};
use crate::predictions::{Prediction, PredictionFormat, PredictionSet};
use crate::runtime::{summarize, RuntimeSummary};
use crate::truth::{GroundTruth, TruthFormat};

/// Slice thickness separating the paper's strata (<= 1.5 mm and > 1.5 mm).
pub const SLICE_THICKNESS_SPLIT_MM: f64 = 1.5;
/// The fixed operating threshold on the probability.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Settings of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Bootstrap iterations (0 disables confidence intervals and bootstrap tests).
    pub bootstrap: usize,
    /// Seed of the bootstrap generator. Strata use `seed + 1` (<= 1.5 mm) and `seed + 2`.
    pub seed: u64,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// List and skip predictions that match no ground-truth case instead of failing.
    pub ignore_extra_predictions: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            bootstrap: 1000,
            seed: 2021,
            confidence: 0.95,
            ignore_extra_predictions: false,
        }
    }
}

/// A case that takes part in the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalCase {
    /// Case name (as in the ground truth).
    pub case: String,
    /// Predicted probability.
    pub probability: f64,
    /// True label.
    pub label: bool,
    /// Predicted CO-RADS.
    pub co_rads_pred: Option<u8>,
    /// True CO-RADS.
    pub co_rads_true: Option<u8>,
    /// Patient id (resampling unit).
    pub patient: Option<String>,
    /// Slice thickness (mm).
    pub slice_thickness_mm: Option<f64>,
}

/// Per-case entry of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseEntry {
    /// Predicted probability (null for an excluded case without prediction).
    pub probability: Option<f64>,
    /// 1 positive, 0 negative, null when excluded.
    pub label: Option<u8>,
    /// Predicted CO-RADS.
    pub co_rads_pred: Option<u8>,
    /// True CO-RADS.
    pub co_rads_true: Option<u8>,
    /// Patient id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Slice thickness (mm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice_thickness_mm: Option<f64>,
    /// Why the case is left out of the metrics (e.g. the iCTCF class "Suspected").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
}

/// Ground truth joined with one prediction set.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Included cases in ground-truth order.
    pub cases: Vec<EvalCase>,
    /// Per-case entries for the report, excluded cases included.
    pub entries: BTreeMap<String, CaseEntry>,
    /// Predictions matching no ground-truth case (only when they are ignored).
    pub ignored: Vec<String>,
}

/// Matches predictions to ground-truth cases by [`match_key`]. Every included ground-truth case
/// needs a prediction; a prediction without ground truth is an error unless ignored.
pub fn join(truth: &GroundTruth, preds: &PredictionSet, ignore_extra: bool) -> Result<Joined> {
    let by_key: HashMap<String, &Prediction> = preds
        .predictions
        .iter()
        .map(|p| (match_key(&p.case), p))
        .collect();
    let failed_reason: HashMap<String, &str> = preds
        .failed
        .iter()
        .filter_map(|f| Some((match_key(f.case.as_deref()?), f.reason.as_str())))
        .collect();
    let mut cases = Vec::new();
    let mut entries = BTreeMap::new();
    let mut missing = Vec::new();
    let mut truth_keys = std::collections::HashSet::new();
    for t in &truth.cases {
        let key = match_key(&t.case);
        truth_keys.insert(key.clone());
        let pred = by_key.get(&key).copied();
        match (t.label, pred) {
            (Some(label), Some(p)) => cases.push(EvalCase {
                case: t.case.clone(),
                probability: p.probability,
                label,
                co_rads_pred: p.co_rads,
                co_rads_true: t.co_rads,
                patient: t.patient.clone(),
                slice_thickness_mm: t.slice_thickness_mm,
            }),
            (Some(_), None) => {
                missing.push(match failed_reason.get(&key) {
                    Some(r) => format!("{} ({r})", t.case),
                    None => t.case.clone(),
                });
                continue;
            }
            (None, _) => {}
        }
        entries.insert(
            t.case.clone(),
            CaseEntry {
                probability: pred.map(|p| p.probability),
                label: t.label.map(u8::from),
                co_rads_pred: pred.and_then(|p| p.co_rads),
                co_rads_true: t.co_rads,
                patient: t.patient.clone(),
                slice_thickness_mm: t.slice_thickness_mm,
                excluded: t.excluded.clone(),
            },
        );
    }
    if !missing.is_empty() {
        return Err(EvalError::MissingPredictions {
            count: missing.len(),
            cases: name_list(&missing, 10),
        });
    }
    let extra: Vec<String> = preds
        .predictions
        .iter()
        .filter(|p| !truth_keys.contains(&match_key(&p.case)))
        .map(|p| p.case.clone())
        .collect();
    if !extra.is_empty() && !ignore_extra {
        return Err(EvalError::ExtraPredictions {
            count: extra.len(),
            cases: name_list(&extra, 10),
        });
    }
    Ok(Joined {
        cases,
        entries,
        ignored: extra,
    })
}

/// Sensitivity and specificity at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// Threshold (positive when probability >= threshold); null for +inf.
    pub threshold: Option<f64>,
    /// Sensitivity.
    pub sensitivity: Option<f64>,
    /// Specificity.
    pub specificity: Option<f64>,
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// True negatives.
    pub tn: u64,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl OperatingPoint {
    /// The point at `threshold` with counts `c`.
    pub fn new(threshold: f64, c: BinaryCounts) -> Self {
        Self {
            threshold: threshold.is_finite().then_some(threshold),
            sensitivity: c.sensitivity(),
            specificity: c.specificity(),
            tp: c.tp,
            fp: c.fp,
            tn: c.tn,
            fn_: c.fn_,
        }
    }
}

/// The Youden point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct YoudenReport {
    /// Youden's J = sensitivity + specificity - 1.
    pub j: f64,
    /// The operating point.
    #[serde(flatten)]
    pub point: OperatingPoint,
}

/// Sensitivity at a target specificity, or specificity at a target sensitivity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TargetPoint {
    /// The target (0.90 or 0.95).
    pub target: f64,
    /// The other rate, interpolated on the ROC curve (see [`crate::operating`]).
    pub value: f64,
    /// Bootstrap percentile interval of `value`.
    pub value_95ci: Option<[f64; 2]>,
    /// The attainable operating point: the threshold meeting the target with the best other
    /// rate, and its counts.
    pub point: OperatingPoint,
}

/// A labelled count matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountMatrix {
    /// What the rows are.
    pub rows: String,
    /// What the columns are.
    pub columns: String,
    /// The counts, `matrix[row][column]`.
    pub matrix: Vec<Vec<u64>>,
}

/// How the bootstrap ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapInfo {
    /// Iterations.
    pub iterations: usize,
    /// Generator seed.
    pub seed: u64,
    /// Confidence level.
    pub confidence: f64,
    /// "patient" (clustered resampling) or "case".
    pub unit: &'static str,
    /// Number of resampling units.
    pub n_units: usize,
    /// Resamples redrawn because they lacked a class.
    pub rejected_resamples: usize,
    /// Resamples in which the kappa was undefined (left out of its interval).
    pub qwk_undefined_resamples: usize,
    /// Resamples whose Youden point calls every case negative (threshold +inf), left out of
    /// the threshold's interval.
    pub youden_threshold_undefined_resamples: usize,
}

/// Metrics of one set of cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Cases.
    pub n_cases: usize,
    /// Positive cases.
    pub n_positive: usize,
    /// Negative cases.
    pub n_negative: usize,
    /// Distinct patients (cases without a patient count as their own).
    pub n_patients: usize,
    /// Mann-Whitney AUC.
    pub auc: f64,
    /// Bootstrap percentile interval of the AUC.
    pub auc_95ci: Option<[f64; 2]>,
    /// Quadratic weighted kappa of CO-RADS (null without CO-RADS truth and predictions).
    pub qwk: Option<f64>,
    /// Bootstrap percentile interval of the kappa.
    pub qwk_95ci: Option<[f64; 2]>,
    /// Cases in the kappa (those with CO-RADS truth and prediction).
    pub qwk_n_cases: usize,
    /// Sensitivity at probability >= 0.5.
    pub sensitivity: Option<f64>,
    /// Specificity at probability < 0.5.
    pub specificity: Option<f64>,
    /// Counts at 0.5.
    pub at_threshold_0_5: OperatingPoint,
    /// The Youden point of the ROC curve.
    pub youden: YoudenReport,
    /// ROC curve (scikit-learn convention, `thresholds[0]` = +inf written as null).
    pub roc: RocCurve,
    /// CO-RADS confusion matrix (true x predicted), when CO-RADS truth exists.
    pub co_rads_confusion: Option<CountMatrix>,
    /// Predicted CO-RADS per label (negative, positive), when CO-RADS is predicted.
    pub co_rads_by_label: Option<CountMatrix>,
    /// Bootstrap settings and diagnostics (null with --bootstrap 0).
    pub bootstrap: Option<BootstrapInfo>,
    /// Brier score (mean squared error of the probability).
    pub brier: f64,
    /// Bootstrap percentile interval of the Brier score.
    pub brier_95ci: Option<[f64; 2]>,
    /// Expected calibration error over 10 equal-width bins.
    pub ece_uniform_10: f64,
    /// Expected calibration error over 10 equal-count bins.
    pub ece_quantile_10: f64,
    /// Calibration intercept: `a` in logit P(y) = a + logit(p) (null with one class).
    pub calibration_intercept: Option<f64>,
    /// Calibration slope: `b` in logit P(y) = a + b logit(p) (null when logit p separates the
    /// classes: no finite estimate).
    pub calibration_slope: Option<f64>,
    /// Reliability curve over 10 equal-width bins.
    pub calibration_curve_uniform_10: CalibrationCurve,
    /// Reliability curve over 10 equal-count bins.
    pub calibration_curve_quantile_10: CalibrationCurve,
    /// Sensitivity at specificity 0.90.
    pub sensitivity_at_specificity_0_90: TargetPoint,
    /// Sensitivity at specificity 0.95.
    pub sensitivity_at_specificity_0_95: TargetPoint,
    /// Specificity at sensitivity 0.90.
    pub specificity_at_sensitivity_0_90: TargetPoint,
    /// Specificity at sensitivity 0.95.
    pub specificity_at_sensitivity_0_95: TargetPoint,
    /// Bootstrap percentile interval of the Youden threshold.
    pub youden_threshold_95ci: Option<[f64; 2]>,
    /// PPV and NPV with predicted CO-RADS >= 2, 3, 4, 5 called positive (null without CO-RADS
    /// predictions; over the cases that have one).
    pub predictive_values_co_rads: Option<Vec<PredictiveValues>>,
    /// Decision-curve net benefit at threshold probabilities 0.01..0.99.
    pub decision_curve: DecisionCurve,
}

/// Paired comparison with another prediction set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The other prediction source.
    pub other: String,
    /// AUC of the other predictions.
    pub auc_other: f64,
    /// Its bootstrap interval.
    pub auc_other_95ci: Option<[f64; 2]>,
    /// AUC (this) - AUC (other).
    pub auc_difference: f64,
    /// Bootstrap interval of the difference.
    pub auc_difference_95ci: Option<[f64; 2]>,
    /// Two-sided paired bootstrap p-value of the AUC difference.
    pub auc_p_value: Option<f64>,
    /// One-sided p-value (alternative: this AUC is larger): fraction of resamples with a
    /// difference <= 0.
    pub auc_p_value_one_sided: Option<f64>,
    /// DeLong's test of the AUC difference (null with fewer than 2 cases of a class).
    pub delong: Option<DeLong>,
    /// Kappa of the other predictions.
    pub qwk_other: Option<f64>,
    /// Its bootstrap interval.
    pub qwk_other_95ci: Option<[f64; 2]>,
    /// Kappa (this) - kappa (other).
    pub qwk_difference: Option<f64>,
    /// Bootstrap interval of the difference.
    pub qwk_difference_95ci: Option<[f64; 2]>,
    /// Two-sided paired bootstrap p-value of the kappa difference.
    pub qwk_p_value: Option<f64>,
    /// One-sided p-value (alternative: this kappa is larger).
    pub qwk_p_value_one_sided: Option<f64>,
    /// Brier score of the other predictions.
    pub brier_other: f64,
    /// Its bootstrap interval.
    pub brier_other_95ci: Option<[f64; 2]>,
    /// Brier (this) - Brier (other); negative when this system is better calibrated/sharper.
    pub brier_difference: f64,
    /// Bootstrap interval of the difference.
    pub brier_difference_95ci: Option<[f64; 2]>,
    /// Two-sided paired bootstrap p-value of the Brier difference.
    pub brier_p_value: Option<f64>,
    /// One-sided p-value (alternative: this Brier score is smaller, i.e. better): fraction of
    /// resamples with a difference >= 0.
    pub brier_p_value_one_sided: Option<f64>,
}

/// A stratum's metrics, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Stratum {
    /// Both classes present.
    Metrics(Box<Metrics>),
    /// Empty or single-class stratum.
    Undefined {
        /// Cases.
        n_cases: usize,
        /// Positives.
        n_positive: usize,
        /// Negatives.
        n_negative: usize,
        /// Why no metrics.
        error: String,
    },
}

/// The paper's slice-thickness stratification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Strata {
    /// Slice thickness <= 1.5 mm.
    pub slice_thickness_le_1_5mm: Stratum,
    /// Slice thickness > 1.5 mm.
    pub slice_thickness_gt_1_5mm: Stratum,
    /// Cases without a slice thickness (in neither stratum).
    pub n_unknown_slice_thickness: usize,
}

/// Where inputs came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    /// Path.
    pub path: String,
    /// Format name.
    pub format: String,
}

/// `aggregates` of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregates {
    /// Metrics over all included cases.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Excluded ground-truth cases.
    pub n_excluded: usize,
    /// Excluded cases per reason (iCTCF class).
    pub excluded: BTreeMap<String, usize>,
    /// Slice-thickness strata (when any case has a slice thickness).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strata: Option<Strata>,
    /// Paired comparison (with --compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
    /// Jobs or cases without a prediction that were not needed (e.g. excluded cases).
    pub failed_predictions: Vec<crate::predictions::Failed>,
    /// Predictions without ground truth, skipped (--ignore-extra-predictions).
    pub ignored_predictions: Vec<String>,
    /// The ground truth read.
    pub ground_truth: SourceInfo,
    /// The predictions read.
    pub predictions: SourceInfo,
    /// Run time per algorithm job (platform `predictions.json` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSummary>,
    /// Strata by any column (`--strata FILE.csv`; see [`crate::strata`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strata_by_column: Option<crate::strata_table::StrataByColumn>,
}

/// The whole `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Per-case values.
    pub case: BTreeMap<String, CaseEntry>,
    /// Aggregate metrics.
    pub aggregates: Aggregates,
}

pub(crate) fn n_patients(cases: &[EvalCase]) -> usize {
    let patients: Vec<Option<&str>> = cases.iter().map(|c| c.patient.as_deref()).collect();
    Clusters::from_patients(&patients).len()
}

pub(crate) fn clusters_of(cases: &[EvalCase]) -> (Clusters, &'static str) {
    if cases.iter().any(|c| c.patient.is_some()) {
        let patients: Vec<Option<&str>> = cases.iter().map(|c| c.patient.as_deref()).collect();
        (Clusters::from_patients(&patients), "patient")
    } else {
        (Clusters::singletons(cases.len()), "case")
    }
}

/// Indices of cases with both CO-RADS truth and prediction.
pub(crate) fn qwk_indices(cases: &[EvalCase], preds: &[Option<u8>]) -> Vec<(usize, u8, u8)> {
    cases
        .iter()
        .zip(preds)
        .enumerate()
        .filter_map(|(k, (c, p))| Some((k, c.co_rads_true?, (*p)?)))
        .collect()
}

pub(crate) fn qwk_weighted(pairs: &[(usize, u8, u8)], weights: Option<&[u32]>) -> Option<f64> {
    let truth: Vec<u8> = pairs.iter().map(|p| p.1).collect();
    let pred: Vec<u8> = pairs.iter().map(|p| p.2).collect();
    let w: Option<Vec<u32>> = weights.map(|w| {
        pairs
            .iter()
            .map(|p| w.get(p.0).copied().unwrap_or(0))
            .collect()
    });
    CoRadsMatrix::from_pairs(&truth, &pred, w.as_deref()).qwk()
}

/// Two-sided and one-sided bootstrap p-values of a difference (alternative: positive).
fn paired_p_values(deltas: &[f64]) -> (Option<f64>, Option<f64>) {
    if deltas.is_empty() {
        return (None, None);
    }
    let n = deltas.len() as f64;
    let le = deltas.iter().filter(|&&d| d <= 0.0).count() as f64 / n;
    let ge = deltas.iter().filter(|&&d| d >= 0.0).count() as f64 / n;
    (Some((2.0 * le.min(ge)).min(1.0)), Some(le))
}

/// Bootstrap samples of the metrics (and of the other predictions' metrics).
#[derive(Debug, Default)]
struct BootstrapSamples {
    auc: Vec<f64>,
    qwk: Vec<f64>,
    auc_other: Vec<f64>,
    qwk_other: Vec<f64>,
    auc_diff: Vec<f64>,
    qwk_diff: Vec<f64>,
    brier: Vec<f64>,
    brier_other: Vec<f64>,
    /// Brier (this) - Brier (other).
    brier_diff: Vec<f64>,
    /// Sensitivity at each of [`TARGETS_PERCENT`] specificities.
    sens_at_spec: [Vec<f64>; 2],
    /// Specificity at each of [`TARGETS_PERCENT`] sensitivities.
    spec_at_sens: [Vec<f64>; 2],
    youden_threshold: Vec<f64>,
    rejected: usize,
    qwk_undefined: usize,
    youden_undefined: usize,
}

/// Picks the k-th list of bootstrap values of a target operating point.
type SampleColumn = fn(&BootstrapSamples, usize) -> &[f64];

/// The other predictions aligned with `cases`.
struct Other<'a> {
    scores: &'a [f64],
    co_rads: &'a [Option<u8>],
}

fn run_bootstrap(
    cases: &[EvalCase],
    other: Option<&Other>,
    opts: &EvalOptions,
    seed: u64,
) -> Result<(BootstrapSamples, Clusters, &'static str)> {
    let scores: Vec<f64> = cases.iter().map(|c| c.probability).collect();
    let labels: Vec<bool> = cases.iter().map(|c| c.label).collect();
    let co_rads: Vec<Option<u8>> = cases.iter().map(|c| c.co_rads_pred).collect();
    let ranked = RankedScores::new(&scores, &labels)?;
    let ranked_other = match other {
        Some(o) => Some(RankedScores::new(o.scores, &labels)?),
        None => None,
    };
    let pairs = qwk_indices(cases, &co_rads);
    let pairs_other = other.map(|o| qwk_indices(cases, o.co_rads));
    let roc_order = RocOrder::new(&scores, &labels)?;
    let (clusters, unit) = clusters_of(cases);
    let mut out = BootstrapSamples::default();
    let mut resampler = Resampler::new(&clusters, &labels, seed);
    let mut w = Vec::new();
    for _ in 0..opts.bootstrap {
        resampler.next(&mut w)?;
        let a = ranked.auc_weighted(&w);
        let q = (!pairs.is_empty()).then(|| qwk_weighted(&pairs, Some(&w)));
        if let Some(a) = a {
            out.auc.push(a);
        }
        let b = brier_weighted(&scores, &labels, &w);
        if let Some(b) = b {
            out.brier.push(b);
        }
        if let Some(roc) = roc_order.counts(Some(&w)) {
            for (k, &pct) in TARGETS_PERCENT.iter().enumerate() {
                out.sens_at_spec[k].push(roc.sensitivity_at_specificity(pct));
                out.spec_at_sens[k].push(roc.specificity_at_sensitivity(pct));
            }
            let t = roc.youden_threshold();
            if t.is_finite() {
                out.youden_threshold.push(t);
            } else {
                out.youden_undefined += 1;
            }
        }
        match q {
            Some(Some(v)) => out.qwk.push(v),
            Some(None) => out.qwk_undefined += 1,
            None => {}
        }
        if let (Some(ro), Some(po)) = (&ranked_other, &pairs_other) {
            let ao = ro.auc_weighted(&w);
            if let Some(ao) = ao {
                out.auc_other.push(ao);
            }
            if let (Some(a), Some(ao)) = (a, ao) {
                out.auc_diff.push(a - ao);
            }
            if let Some(o) = other {
                let bo = brier_weighted(o.scores, &labels, &w);
                if let Some(bo) = bo {
                    out.brier_other.push(bo);
                }
                if let (Some(b), Some(bo)) = (b, bo) {
                    out.brier_diff.push(b - bo);
                }
            }
            if !po.is_empty() {
                let qo = qwk_weighted(po, Some(&w));
                if let Some(v) = qo {
                    out.qwk_other.push(v);
                }
                if let (Some(Some(q)), Some(qo)) = (q, qo) {
                    out.qwk_diff.push(q - qo);
                }
            }
        }
    }
    out.rejected = resampler.rejected;
    Ok((out, clusters, unit))
}

fn count_matrix(rows: &str, columns: &str, m: Vec<Vec<u64>>) -> CountMatrix {
    CountMatrix {
        rows: rows.into(),
        columns: columns.into(),
        matrix: m,
    }
}

/// Metrics of one set of cases (and the comparison when `other` is given).
fn metrics_of(
    cases: &[EvalCase],
    other: Option<&Other>,
    opts: &EvalOptions,
    seed: u64,
) -> Result<(Metrics, Option<BootstrapSamples>)> {
    let scores: Vec<f64> = cases.iter().map(|c| c.probability).collect();
    let labels: Vec<bool> = cases.iter().map(|c| c.label).collect();
    let ranked = RankedScores::new(&scores, &labels)?;
    let auc = ranked.auc().ok_or_else(|| EvalError::OneClass {
        what: "ground truth".into(),
        n: cases.len(),
        class: "absent",
    })?;
    let roc = roc_curve(&scores, &labels, true)?;
    let at_half = BinaryCounts::at_threshold(&scores, &labels, DEFAULT_THRESHOLD);
    let y = youden(&roc, &scores, &labels);
    let co_rads: Vec<Option<u8>> = cases.iter().map(|c| c.co_rads_pred).collect();
    let pairs = qwk_indices(cases, &co_rads);
    let qwk = if pairs.is_empty() {
        None
    } else {
        qwk_weighted(&pairs, None)
    };
    let co_rads_confusion = (!pairs.is_empty()).then(|| {
        let t: Vec<u8> = pairs.iter().map(|p| p.1).collect();
        let p: Vec<u8> = pairs.iter().map(|p| p.2).collect();
        count_matrix(
            "true CO-RADS 1..5",
            "predicted CO-RADS 1..5",
            CoRadsMatrix::from_pairs(&t, &p, None).counts(),
        )
    });
    let co_rads_by_label = co_rads.iter().any(Option::is_some).then(|| {
        let mut m = vec![vec![0u64; N_CO_RADS]; 2];
        for c in cases {
            if let Some(p) = c.co_rads_pred {
                if let Some(cell) = m
                    .get_mut(usize::from(c.label))
                    .and_then(|r| r.get_mut(usize::from(p).wrapping_sub(1)))
                {
                    *cell += 1;
                }
            }
        }
        count_matrix("label (negative, positive)", "predicted CO-RADS 1..5", m)
    });
    let (auc_95ci, qwk_95ci, bootstrap, samples) = if opts.bootstrap > 0 {
        let (s, clusters, unit) = run_bootstrap(cases, other, opts, seed)?;
        let info = BootstrapInfo {
            iterations: opts.bootstrap,
            seed,
            confidence: opts.confidence,
            unit,
            n_units: clusters.len(),
            rejected_resamples: s.rejected,
            qwk_undefined_resamples: s.qwk_undefined,
            youden_threshold_undefined_resamples: s.youden_undefined,
        };
        (
            percentile_interval(&s.auc, opts.confidence),
            percentile_interval(&s.qwk, opts.confidence),
            Some(info),
            Some(s),
        )
    } else {
        (None, None, None, None)
    };
    let ci = |f: &dyn Fn(&BootstrapSamples) -> &[f64]| {
        samples
            .as_ref()
            .and_then(|s| percentile_interval(f(s), opts.confidence))
    };
    let full = RocOrder::new(&scores, &labels)?
        .counts(None)
        .ok_or_else(|| EvalError::OneClass {
            what: "ROC".into(),
            n: cases.len(),
            class: "absent",
        })?;
    let target = |k: usize, sens_at_spec: bool| {
        let pct = TARGETS_PERCENT[k];
        let (value, threshold, values): (f64, f64, SampleColumn) = if sens_at_spec {
            (
                full.sensitivity_at_specificity(pct),
                full.threshold_at_specificity(pct),
                |s, k| &s.sens_at_spec[k],
            )
        } else {
            (
                full.specificity_at_sensitivity(pct),
                full.threshold_at_sensitivity(pct),
                |s, k| &s.spec_at_sens[k],
            )
        };
        TargetPoint {
            target: f64::from(pct) / 100.0,
            value,
            value_95ci: ci(&|s| values(s, k)),
            point: OperatingPoint::new(
                threshold,
                BinaryCounts::at_threshold(&scores, &labels, threshold),
            ),
        }
    };
    let with_co_rads: (Vec<u8>, Vec<bool>) = cases
        .iter()
        .filter_map(|c| Some((c.co_rads_pred?, c.label)))
        .unzip();
    let uniform = calibration_curve(&scores, &labels, N_BINS, BinStrategy::Uniform)?;
    let quantile = calibration_curve(&scores, &labels, N_BINS, BinStrategy::Quantile)?;
    let metrics = Metrics {
        brier: brier(&scores, &labels)?,
        brier_95ci: ci(&|s| &s.brier),
        ece_uniform_10: uniform.ece,
        ece_quantile_10: quantile.ece,
        calibration_intercept: calibration_intercept(&scores, &labels)?,
        calibration_slope: calibration_slope(&scores, &labels)?.map(|(_, b)| b),
        calibration_curve_uniform_10: uniform,
        calibration_curve_quantile_10: quantile,
        sensitivity_at_specificity_0_90: target(0, true),
        sensitivity_at_specificity_0_95: target(1, true),
        specificity_at_sensitivity_0_90: target(0, false),
        specificity_at_sensitivity_0_95: target(1, false),
        youden_threshold_95ci: ci(&|s| &s.youden_threshold),
        predictive_values_co_rads: (!with_co_rads.0.is_empty())
            .then(|| predictive_values(&with_co_rads.0, &with_co_rads.1)),
        decision_curve: decision_curve(&scores, &labels)?,
        n_cases: cases.len(),
        n_positive: labels.iter().filter(|&&l| l).count(),
        n_negative: labels.iter().filter(|&&l| !l).count(),
        n_patients: n_patients(cases),
        auc,
        auc_95ci,
        qwk,
        qwk_95ci,
        qwk_n_cases: pairs.len(),
        sensitivity: at_half.sensitivity(),
        specificity: at_half.specificity(),
        at_threshold_0_5: OperatingPoint::new(DEFAULT_THRESHOLD, at_half),
        youden: YoudenReport {
            j: y.j,
            point: OperatingPoint::new(y.threshold, y.counts),
        },
        roc,
        co_rads_confusion,
        co_rads_by_label,
        bootstrap,
    };
    Ok((metrics, samples))
}

fn stratum(cases: Vec<EvalCase>, opts: &EvalOptions, seed: u64) -> Result<Stratum> {
    let labels: Vec<bool> = cases.iter().map(|c| c.label).collect();
    if let Err(EvalError::OneClass { class, .. }) = check_both_classes("stratum", &labels) {
        let n_positive = labels.iter().filter(|&&l| l).count();
        return Ok(Stratum::Undefined {
            n_cases: cases.len(),
            n_positive,
            n_negative: cases.len() - n_positive,
            error: one_class_reason(class),
        });
    }
    Ok(Stratum::Metrics(Box::new(
        metrics_of(&cases, None, opts, seed)?.0,
    )))
}

/// Why a stratum with the class `class` (of [`EvalError::OneClass`]) has no metrics.
pub(crate) fn one_class_reason(class: &str) -> String {
    if class == "absent" {
        "no cases".to_string()
    } else {
        format!("only {class} cases; AUC needs both classes")
    }
}

fn check_co_rads(cases: &[EvalCase], has_co_rads: bool) -> Result<()> {
    if !has_co_rads {
        return Ok(());
    }
    match cases
        .iter()
        .find(|c| c.co_rads_true.is_some() && c.co_rads_pred.is_none())
    {
        Some(c) => Err(EvalError::MissingCoRads {
            case: c.case.clone(),
        }),
        None => Ok(()),
    }
}

fn format_name(f: PredictionFormat) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The other system's curves for the figures (ROC, reliability over 10 equal-width bins,
/// decision curve), on the ground-truth cases of the main evaluation. `--compare` recomputes
/// them here only, for the plots and the HTML report alike.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherCurves {
    /// ROC curve (`drop_intermediate=True`).
    pub roc: RocCurve,
    /// Reliability curve over 10 equal-width bins.
    pub reliability: CalibrationCurve,
    /// Decision curve.
    pub decision: DecisionCurve,
}

/// Joins `other` with `truth` as [`evaluate`] does and computes its curves.
pub fn other_curves(
    truth: &GroundTruth,
    other: &PredictionSet,
    opts: &EvalOptions,
) -> Result<OtherCurves> {
    let cases = join(truth, other, opts.ignore_extra_predictions)?.cases;
    let (scores, labels): (Vec<f64>, Vec<bool>) =
        cases.iter().map(|c| (c.probability, c.label)).unzip();
    Ok(OtherCurves {
        roc: roc_curve(&scores, &labels, true)?,
        reliability: calibration_curve(&scores, &labels, N_BINS, BinStrategy::Uniform)?,
        decision: decision_curve(&scores, &labels)?,
    })
}

/// Evaluates `preds` (and optionally compares with `other`) against `truth`.
pub fn evaluate(
    truth: &GroundTruth,
    preds: &PredictionSet,
    other: Option<&PredictionSet>,
    opts: &EvalOptions,
) -> Result<Report> {
    if !(opts.confidence > 0.0 && opts.confidence < 1.0) {
        return Err(EvalError::Usage(format!(
            "confidence level {} is not between 0 and 1",
            opts.confidence
        )));
    }
    let joined = join(truth, preds, opts.ignore_extra_predictions)?;
    let cases = joined.cases;
    check_co_rads(&cases, preds.has_co_rads())?;
    let labels: Vec<bool> = cases.iter().map(|c| c.label).collect();
    check_both_classes(&format!("ground truth {}", truth.path.display()), &labels)?;

    // The other predictions, aligned with `cases` (same ground truth, same order).
    let other_joined = match other {
        Some(o) => {
            let j = join(truth, o, opts.ignore_extra_predictions)?;
            check_co_rads(&j.cases, o.has_co_rads())?;
            Some(j)
        }
        None => None,
    };
    let other_scores: Vec<f64>;
    let other_co_rads: Vec<Option<u8>>;
    let other_view = match &other_joined {
        Some(j) => {
            other_scores = j.cases.iter().map(|c| c.probability).collect();
            other_co_rads = j.cases.iter().map(|c| c.co_rads_pred).collect();
            Some(Other {
                scores: &other_scores,
                co_rads: &other_co_rads,
            })
        }
        None => None,
    };

    let (metrics, samples) = metrics_of(&cases, other_view.as_ref(), opts, opts.seed)?;

    let compare = match (&other_view, other) {
        (Some(o), Some(src)) => {
            let auc_other = RankedScores::new(o.scores, &labels)?
                .auc()
                .unwrap_or(f64::NAN);
            let pairs_other = qwk_indices(&cases, o.co_rads);
            let qwk_other = if pairs_other.is_empty() {
                None
            } else {
                qwk_weighted(&pairs_other, None)
            };
            let scores: Vec<f64> = cases.iter().map(|c| c.probability).collect();
            let s = samples.unwrap_or_default();
            let (auc_p, auc_p1) = paired_p_values(&s.auc_diff);
            let (qwk_p, qwk_p1) = paired_p_values(&s.qwk_diff);
            // Lower is better: the p-values of the negated differences have the alternative
            // "this Brier score is smaller".
            let neg_brier_diff: Vec<f64> = s.brier_diff.iter().map(|d| -d).collect();
            let (brier_p, brier_p1) = paired_p_values(&neg_brier_diff);
            let brier_other = brier(o.scores, &labels)?;
            Some(Comparison {
                other: src.source.display().to_string(),
                auc_other,
                auc_other_95ci: percentile_interval(&s.auc_other, opts.confidence),
                auc_difference: metrics.auc - auc_other,
                auc_difference_95ci: percentile_interval(&s.auc_diff, opts.confidence),
                auc_p_value: auc_p,
                auc_p_value_one_sided: auc_p1,
                delong: delong_test(&scores, o.scores, &labels).ok(),
                qwk_other,
                qwk_other_95ci: percentile_interval(&s.qwk_other, opts.confidence),
                qwk_difference: metrics.qwk.zip(qwk_other).map(|(a, b)| a - b),
                qwk_difference_95ci: percentile_interval(&s.qwk_diff, opts.confidence),
                qwk_p_value: qwk_p,
                qwk_p_value_one_sided: qwk_p1,
                brier_other,
                brier_other_95ci: percentile_interval(&s.brier_other, opts.confidence),
                brier_difference: metrics.brier - brier_other,
                brier_difference_95ci: percentile_interval(&s.brier_diff, opts.confidence),
                brier_p_value: brier_p,
                brier_p_value_one_sided: brier_p1,
            })
        }
        _ => None,
    };

    let strata = if cases.iter().any(|c| c.slice_thickness_mm.is_some()) {
        let thin = |c: &&EvalCase| {
            c.slice_thickness_mm
                .is_some_and(|t| t <= SLICE_THICKNESS_SPLIT_MM)
        };
        let thick = |c: &&EvalCase| {
            c.slice_thickness_mm
                .is_some_and(|t| t > SLICE_THICKNESS_SPLIT_MM)
        };
        Some(Strata {
            slice_thickness_le_1_5mm: stratum(
                cases.iter().filter(thin).cloned().collect(),
                opts,
                opts.seed.wrapping_add(1),
            )?,
            slice_thickness_gt_1_5mm: stratum(
                cases.iter().filter(thick).cloned().collect(),
                opts,
                opts.seed.wrapping_add(2),
            )?,
            n_unknown_slice_thickness: cases
                .iter()
                .filter(|c| c.slice_thickness_mm.is_none())
                .count(),
        })
    } else {
        None
    };

    let excluded = truth.excluded_counts();
    let aggregates = Aggregates {
        metrics,
        n_excluded: excluded.values().sum(),
        excluded,
        strata,
        compare,
        failed_predictions: preds.failed.clone(),
        ignored_predictions: joined.ignored,
        ground_truth: SourceInfo {
            path: truth.path.display().to_string(),
            format: match truth.format {
                TruthFormat::Ictcf => "ictcf".into(),
                TruthFormat::Generic => "generic".into(),
            },
        },
        predictions: SourceInfo {
            path: preds.source.display().to_string(),
            format: format_name(preds.format),
        },
        runtime: (preds.format == PredictionFormat::Platform).then(|| summarize(&preds.timings)),
        strata_by_column: None,
    };
    Ok(Report {
        case: joined.entries,
        aggregates,
    })
}
