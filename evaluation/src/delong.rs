//! DeLong's test for the difference of two correlated AUCs (DeLong, DeLong & Clarke-Pearson,
//! Biometrics 1988), computed from placement values.
//!
//! For m positives X and n negatives Y, with psi(x, y) = 1 if x > y, 1/2 if x = y, else 0:
//! V10(X_i) = 1/n sum_j psi(X_i, Y_j), V01(Y_j) = 1/m sum_i psi(X_i, Y_j), AUC = mean(V10).
//! S10 and S01 are the 2x2 sample covariances (denominator m - 1 and n - 1) of the placement
//! values of the two predictors; var(AUC_a - AUC_b) = c' (S10 / m + S01 / n) c with c = (1, -1),
//! z = (AUC_a - AUC_b) / sqrt(var), two-sided p = erfc(|z| / sqrt 2).
//! Scans are treated as independent (the test does not know about patients).

use serde::Serialize;

use crate::error::{EvalError, Result};

/// Result of DeLong's paired test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeLong {
    /// AUC of the first predictor.
    pub auc_a: f64,
    /// AUC of the second predictor.
    pub auc_b: f64,
    /// `auc_a - auc_b`.
    pub difference: f64,
    /// Estimated variance of the difference.
    pub variance: f64,
    /// z statistic; `None` (JSON null) when the variance is zero and the difference is not.
    pub z: Option<f64>,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// Placement values: for each positive, the fraction of negatives it beats (ties half); for each
/// negative, the fraction of positives that beat it.
fn placements(pos: &[f64], neg: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut sorted_neg = neg.to_vec();
    sorted_neg.sort_by(|a, b| a.total_cmp(b));
    let mut sorted_pos = pos.to_vec();
    sorted_pos.sort_by(|a, b| a.total_cmp(b));
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    // Twice the count of "x beats y" (2 per win, 1 per tie) from two binary searches.
    let twice_below = |sorted: &[f64], x: f64| {
        let lt = sorted.partition_point(|&v| v < x);
        let le = sorted.partition_point(|&v| v <= x);
        (2 * lt + (le - lt)) as f64
    };
    let v10 = pos
        .iter()
        .map(|&x| twice_below(&sorted_neg, x) / (2.0 * n))
        .collect();
    let v01 = neg
        .iter()
        .map(|&y| {
            let gt = sorted_pos.len() - sorted_pos.partition_point(|&v| v <= y);
            let eq =
                sorted_pos.partition_point(|&v| v <= y) - sorted_pos.partition_point(|&v| v < y);
            (2 * gt + eq) as f64 / (2.0 * m)
        })
        .collect();
    (v10, v01)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn covariance(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (a.len() as f64 - 1.0)
}

/// DeLong's test of `AUC(scores_a) - AUC(scores_b)` on the same cases. Needs at least two
/// positives and two negatives (the covariances have m - 1 and n - 1 in the denominator).
pub fn delong_test(scores_a: &[f64], scores_b: &[f64], labels: &[bool]) -> Result<DeLong> {
    for s in [scores_a, scores_b] {
        if s.len() != labels.len() {
            return Err(EvalError::LengthMismatch {
                what: "DeLong",
                a: s.len(),
                b: labels.len(),
            });
        }
        if let Some(index) = s.iter().position(|v| v.is_nan()) {
            return Err(EvalError::NanScore {
                what: "DeLong",
                index,
            });
        }
    }
    let split = |s: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let pos = s
            .iter()
            .zip(labels)
            .filter(|(_, &l)| l)
            .map(|(&v, _)| v)
            .collect();
        let neg = s
            .iter()
            .zip(labels)
            .filter(|(_, &l)| !l)
            .map(|(&v, _)| v)
            .collect();
        (pos, neg)
    };
    let (pa, na) = split(scores_a);
    let (pb, nb) = split(scores_b);
    if pa.len() < 2 || na.len() < 2 {
        return Err(EvalError::Usage(format!(
            "DeLong's test needs at least 2 positive and 2 negative cases ({} positive, {} negative)",
            pa.len(),
            na.len()
        )));
    }
    let (v10a, v01a) = placements(&pa, &na);
    let (v10b, v01b) = placements(&pb, &nb);
    let (m, n) = (pa.len() as f64, na.len() as f64);
    let (auc_a, auc_b) = (mean(&v10a), mean(&v10b));
    let s10 = covariance(&v10a, &v10a) + covariance(&v10b, &v10b) - 2.0 * covariance(&v10a, &v10b);
    let s01 = covariance(&v01a, &v01a) + covariance(&v01b, &v01b) - 2.0 * covariance(&v01a, &v01b);
    let variance = s10 / m + s01 / n;
    let difference = auc_a - auc_b;
    let (z, p_value) = if variance > 0.0 {
        let z = difference / variance.sqrt();
        (Some(z), libm::erfc(z.abs() / std::f64::consts::SQRT_2))
    } else if difference == 0.0 {
        (Some(0.0), 1.0)
    } else {
        (None, 0.0)
    };
    Ok(DeLong {
        auc_a,
        auc_b,
        difference,
        variance,
        z,
        p_value,
    })
}

/// DeLong's variance of one AUC, var(V10) / m + var(V01) / n (sample variances, denominators
/// m - 1 and n - 1), with the AUC (the mean placement value). The per-stratum AUCs of
/// `--strata` are independent samples, so their difference test adds these variances.
/// `None` with fewer than 2 positives or 2 negatives.
pub fn delong_variance(scores: &[f64], labels: &[bool]) -> Option<(f64, f64)> {
    if scores.len() != labels.len() || scores.iter().any(|v| v.is_nan()) {
        return None;
    }
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l)
        .map(|(&v, _)| v)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| !l)
        .map(|(&v, _)| v)
        .collect();
    if pos.len() < 2 || neg.len() < 2 {
        return None;
    }
    let (v10, v01) = placements(&pos, &neg);
    let variance =
        covariance(&v10, &v10) / pos.len() as f64 + covariance(&v01, &v01) / neg.len() as f64;
    Some((mean(&v10), variance))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::auc;

    #[test]
    fn delong_aucs_match_mann_whitney() {
        let a = [0.9, 0.8, 0.4, 0.4, 0.3, 0.1, 0.6];
        let b = [0.2, 0.7, 0.5, 0.9, 0.3, 0.1, 0.6];
        let l = [true, true, true, false, false, false, true];
        let d = delong_test(&a, &b, &l).unwrap();
        assert!((d.auc_a - auc(&a, &l).unwrap()).abs() < 1e-15);
        assert!((d.auc_b - auc(&b, &l).unwrap()).abs() < 1e-15);
        assert!(d.p_value > 0.0 && d.p_value <= 1.0);
    }

    #[test]
    fn identical_predictors_have_p_one() {
        let a = [0.9, 0.8, 0.4, 0.3, 0.1];
        let l = [true, true, false, true, false];
        let d = delong_test(&a, &a, &l).unwrap();
        assert_eq!(d.difference, 0.0);
        assert_eq!(d.p_value, 1.0);
    }

    #[test]
    fn too_few_cases_is_an_error() {
        assert!(delong_test(&[0.1, 0.2], &[0.1, 0.2], &[true, false]).is_err());
    }
}
