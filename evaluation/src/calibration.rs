//! Calibration of the predicted probabilities: the Brier score, the reliability curve exactly as
//! scikit-learn's `calibration_curve` (10 bins, strategies "uniform" and "quantile"), the expected
//! calibration error over those bins, and the calibration intercept and slope (logistic
//! recalibration of logit p, unpenalised maximum likelihood as statsmodels' GLM Binomial).
//!
//! The Brier score also takes per-case integer weights, as the bootstrap evaluates a resample by
//! weights (a case drawn k times has weight k).

use serde::Serialize;

use crate::bootstrap::sorted_percentile;
use crate::error::{EvalError, Result};

/// Number of bins of the reliability curves and expected calibration errors.
pub const N_BINS: usize = 10;
/// Probabilities are clipped to `[LOGIT_EPS, 1 - LOGIT_EPS]` before the logit, as 0 and 1 have
/// none.
pub const LOGIT_EPS: f64 = 1e-6;

fn check_lengths(what: &'static str, probs: &[f64], labels: &[bool]) -> Result<()> {
    if probs.len() != labels.len() {
        return Err(EvalError::LengthMismatch {
            what,
            a: probs.len(),
            b: labels.len(),
        });
    }
    if let Some(index) = probs.iter().position(|p| p.is_nan()) {
        return Err(EvalError::NanScore { what, index });
    }
    if probs.is_empty() {
        return Err(EvalError::OneClass {
            what: what.to_string(),
            n: 0,
            class: "absent",
        });
    }
    Ok(())
}

fn y(label: bool) -> f64 {
    if label {
        1.0
    } else {
        0.0
    }
}

/// Brier score: the mean squared difference between the probability and the label (0/1), as
/// scikit-learn's `brier_score_loss`.
pub fn brier(probs: &[f64], labels: &[bool]) -> Result<f64> {
    check_lengths("Brier score", probs, labels)?;
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &l)| (p - y(l)).powi(2))
        .sum();
    Ok(sum / probs.len() as f64)
}

/// The Brier score with case weights; `None` when all weights are zero or the lengths differ.
pub fn brier_weighted(probs: &[f64], labels: &[bool], weights: &[u32]) -> Option<f64> {
    if probs.len() != labels.len() || probs.len() != weights.len() {
        return None;
    }
    let (mut sum, mut total) = (0.0, 0u64);
    for ((&p, &l), &w) in probs.iter().zip(labels).zip(weights) {
        if w > 0 {
            sum += f64::from(w) * (p - y(l)).powi(2);
            total += u64::from(w);
        }
    }
    (total > 0).then(|| sum / total as f64)
}

/// How the bins of a reliability curve are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinStrategy {
    /// Equal width over [0, 1] (`numpy.linspace(0, 1, n + 1)`).
    Uniform,
    /// Equal count: the edges are percentiles of the probabilities (scikit-learn's "quantile").
    Quantile,
}

/// A reliability curve exactly as `sklearn.calibration.calibration_curve(labels, probs,
/// n_bins, strategy)`, with what scikit-learn leaves implicit: the edges and the counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationCurve {
    /// Bin layout.
    pub strategy: BinStrategy,
    /// Number of bins requested (empty ones are dropped from the lists below).
    pub n_bins: usize,
    /// The `n_bins + 1` edges. A probability falls in bin k when `edge[k] < p <= edge[k + 1]`;
    /// the first bin also takes everything below, the last everything above
    /// (`numpy.searchsorted(edges[1:-1], p)`).
    pub bin_edges: Vec<f64>,
    /// Index of each non-empty bin.
    pub bin: Vec<usize>,
    /// Cases in each non-empty bin.
    pub counts: Vec<u64>,
    /// Fraction of positives in each non-empty bin (scikit-learn's `prob_true`).
    pub prob_true: Vec<f64>,
    /// Mean probability in each non-empty bin (scikit-learn's `prob_pred`).
    pub prob_pred: Vec<f64>,
    /// Expected calibration error: the count-weighted mean of |prob_true - prob_pred|.
    pub ece: f64,
}

/// The edges `numpy.linspace(0, 1, n + 1)`: `k * (1 / n)`, the last exactly 1.
fn linspace_unit(n: usize) -> Vec<f64> {
    let step = 1.0 / n as f64;
    let mut v: Vec<f64> = (0..=n).map(|k| k as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = 1.0;
    }
    v
}

/// The reliability curve of `probs` (in [0, 1]) against `labels` with `n_bins` bins.
pub fn calibration_curve(
    probs: &[f64],
    labels: &[bool],
    n_bins: usize,
    strategy: BinStrategy,
) -> Result<CalibrationCurve> {
    check_lengths("calibration curve", probs, labels)?;
    if n_bins == 0 {
        return Err(EvalError::Usage(
            "calibration curve: need at least one bin".into(),
        ));
    }
    let unit = linspace_unit(n_bins);
    let bin_edges = match strategy {
        BinStrategy::Uniform => unit,
        BinStrategy::Quantile => {
            let mut sorted = probs.to_vec();
            sorted.sort_by(f64::total_cmp);
            unit.iter()
                .map(|&q| sorted_percentile(&sorted, q * 100.0).unwrap_or(f64::NAN))
                .collect()
        }
    };
    let inner = bin_edges
        .get(1..bin_edges.len().saturating_sub(1))
        .unwrap_or(&[]);
    // numpy.bincount sums in input order; so does this.
    let mut sum_pred = vec![0.0; n_bins];
    let mut sum_true = vec![0.0; n_bins];
    let mut total = vec![0u64; n_bins];
    for (&p, &l) in probs.iter().zip(labels) {
        let b = inner.partition_point(|&e| e < p).min(n_bins - 1);
        sum_pred[b] += p;
        sum_true[b] += y(l);
        total[b] += 1;
    }
    let mut curve = CalibrationCurve {
        strategy,
        n_bins,
        bin_edges,
        bin: Vec::new(),
        counts: Vec::new(),
        prob_true: Vec::new(),
        prob_pred: Vec::new(),
        ece: 0.0,
    };
    let n = probs.len() as f64;
    for b in (0..n_bins).filter(|&b| total[b] > 0) {
        let t = total[b] as f64;
        let (pt, pp) = (sum_true[b] / t, sum_pred[b] / t);
        curve.bin.push(b);
        curve.counts.push(total[b]);
        curve.prob_true.push(pt);
        curve.prob_pred.push(pp);
        curve.ece += t / n * (pt - pp).abs();
    }
    Ok(curve)
}

/// `ln(p / (1 - p))` of `p` clipped to `[LOGIT_EPS, 1 - LOGIT_EPS]`.
pub fn clipped_logit(p: f64) -> f64 {
    let p = p.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Log-likelihood of a logistic model with linear predictor `eta`.
fn log_likelihood(eta: impl Iterator<Item = f64>, labels: &[bool]) -> f64 {
    // log sigma(z) = -log(1 + e^-z), log(1 - sigma(z)) = -log(1 + e^z), computed stably.
    let softplus = |z: f64| {
        if z > 0.0 {
            z + (-z).exp().ln_1p()
        } else {
            z.exp().ln_1p()
        }
    };
    eta.zip(labels)
        .map(|(z, &l)| if l { -softplus(-z) } else { -softplus(z) })
        .sum()
}

const MAX_NEWTON: usize = 200;

/// Whether a log-likelihood `next` is worse than `cur` by more than rounding noise (or NaN).
fn worse(next: f64, cur: f64) -> bool {
    next.is_nan() || next < cur - 1e-11 * (1.0 + cur.abs())
}

/// The calibration intercept: `a` of the logistic model `logit P(y = 1) = a + logit(p)` (logit p
/// as an offset, the slope fixed at 1), fitted by maximum likelihood; `None` with a single
/// class (no finite estimate).
pub fn calibration_intercept(probs: &[f64], labels: &[bool]) -> Result<Option<f64>> {
    check_lengths("calibration intercept", probs, labels)?;
    let n_pos = labels.iter().filter(|&&l| l).count();
    if n_pos == 0 || n_pos == labels.len() {
        return Ok(None);
    }
    let x: Vec<f64> = probs.iter().map(|&p| clipped_logit(p)).collect();
    let ll = |a: f64| log_likelihood(x.iter().map(|&v| a + v), labels);
    let mut a = 0.0;
    let mut cur = ll(a);
    for _ in 0..MAX_NEWTON {
        let (mut g, mut h) = (0.0, 0.0);
        for (&v, &l) in x.iter().zip(labels) {
            let mu = sigmoid(a + v);
            g += y(l) - mu;
            h += mu * (1.0 - mu);
        }
        if h <= 0.0 || !h.is_finite() {
            return Ok(None);
        }
        let mut step = g / h;
        // Step halving keeps the iterates from overshooting (the likelihood is concave); a
        // decrease within rounding noise, near the optimum, is not an overshoot.
        let mut next = ll(a + step);
        let mut halvings = 0;
        while worse(next, cur) && halvings < 60 {
            step /= 2.0;
            next = ll(a + step);
            halvings += 1;
        }
        a += step;
        cur = next;
        if step.abs() <= 1e-14 * (1.0 + a.abs()) {
            return Ok(Some(a));
        }
    }
    Ok(a.is_finite().then_some(a))
}

/// The calibration slope: `b` of the logistic model `logit P(y = 1) = a + b logit(p)`, fitted by
/// maximum likelihood. `None` when logit p (quasi-)separates the classes (all positives at or
/// above all negatives, or the reverse, which includes a constant p): then no finite estimate
/// exists. Returns `(a, b)`.
pub fn calibration_slope(probs: &[f64], labels: &[bool]) -> Result<Option<(f64, f64)>> {
    check_lengths("calibration slope", probs, labels)?;
    let x: Vec<f64> = probs.iter().map(|&p| clipped_logit(p)).collect();
    let range = |class: bool| {
        x.iter()
            .zip(labels)
            .filter(|(_, &l)| l == class)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (&v, _)| {
                (lo.min(v), hi.max(v))
            })
    };
    let ((pos_lo, pos_hi), (neg_lo, neg_hi)) = (range(true), range(false));
    // Both classes must be present, and each must reach strictly beyond the other.
    if !(neg_hi > pos_lo && pos_hi > neg_lo) {
        return Ok(None);
    }
    let ll = |a: f64, b: f64| log_likelihood(x.iter().map(|&v| a + b * v), labels);
    let (mut a, mut b) = (0.0, 0.0);
    let mut cur = ll(a, b);
    for _ in 0..MAX_NEWTON {
        // Gradient and Hessian of the log-likelihood (the negative of X'WX).
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&v, &l) in x.iter().zip(labels) {
            let mu = sigmoid(a + b * v);
            let w = mu * (1.0 - mu);
            let r = y(l) - mu;
            ga += r;
            gb += r * v;
            haa += w;
            hab += w * v;
            hbb += w * v * v;
        }
        let det = haa * hbb - hab * hab;
        if det <= 0.0 || !det.is_finite() {
            return Ok(None);
        }
        let mut da = (hbb * ga - hab * gb) / det;
        let mut db = (haa * gb - hab * ga) / det;
        let mut next = ll(a + da, b + db);
        let mut halvings = 0;
        while worse(next, cur) && halvings < 60 {
            da /= 2.0;
            db /= 2.0;
            next = ll(a + da, b + db);
            halvings += 1;
        }
        a += da;
        b += db;
        cur = next;
        if da.abs() <= 1e-14 * (1.0 + a.abs()) && db.abs() <= 1e-14 * (1.0 + b.abs()) {
            return Ok(Some((a, b)));
        }
    }
    Ok((a.is_finite() && b.is_finite()).then_some((a, b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brier_of_the_docstring_example() {
        // sklearn: brier_score_loss([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]) = 0.0375
        let b = brier(&[0.1, 0.9, 0.8, 0.3], &[false, true, true, false]).unwrap();
        assert!((b - 0.0375).abs() < 1e-15);
        let w = brier_weighted(
            &[0.1, 0.9, 0.8, 0.3],
            &[false, true, true, false],
            &[2, 0, 1, 1],
        )
        .unwrap();
        let d = brier(&[0.1, 0.1, 0.8, 0.3], &[false, false, true, false]).unwrap();
        assert!((w - d).abs() < 1e-15);
        assert_eq!(brier_weighted(&[0.5], &[true], &[0]), None);
    }

    #[test]
    fn uniform_edges_are_numpy_linspace() {
        let e = linspace_unit(10);
        assert_eq!(e[3], 0.30000000000000004);
        assert_eq!(e[10], 1.0);
    }

    #[test]
    fn calibration_curve_of_the_docstring_example() {
        // sklearn's docstring: n_bins=3 gives prob_true [0, 0.5, 1], prob_pred [0.2, 0.525, 0.85].
        let p = [0.1, 0.2, 0.3, 0.4, 0.65, 0.7, 0.8, 0.9, 1.0];
        let l = [false, false, false, false, true, true, true, true, true];
        let c = calibration_curve(&p, &l, 3, BinStrategy::Uniform).unwrap();
        assert_eq!(c.prob_true, vec![0.0, 0.5, 1.0]);
        assert_eq!(c.counts, vec![3, 2, 4]);
        for (g, e) in c.prob_pred.iter().zip([0.2, 0.525, 0.85]) {
            assert!((g - e).abs() < 1e-12);
        }
    }

    #[test]
    fn slope_is_undefined_under_separation() {
        let p = [0.1, 0.2, 0.3, 0.7, 0.8];
        let l = [false, false, true, true, true];
        assert_eq!(calibration_slope(&p, &l).unwrap(), None);
        assert!(calibration_intercept(&p, &l).unwrap().is_some());
        assert_eq!(calibration_intercept(&p, &[true; 5]).unwrap(), None);
    }

    #[test]
    fn perfectly_calibrated_logits_give_slope_one() {
        // Labels drawn so that the logit fits exactly: duplicated cases in proportion p.
        let (mut p, mut l) = (vec![], vec![]);
        for (prob, pos, neg) in [(0.2, 1, 4), (0.5, 2, 2), (0.75, 3, 1)] {
            for _ in 0..pos {
                p.push(prob);
                l.push(true);
            }
            for _ in 0..neg {
                p.push(prob);
                l.push(false);
            }
        }
        let (a, b) = calibration_slope(&p, &l).unwrap().unwrap();
        assert!(a.abs() < 1e-9 && (b - 1.0).abs() < 1e-9, "{a} {b}");
        assert!(calibration_intercept(&p, &l).unwrap().unwrap().abs() < 1e-9);
    }
}
