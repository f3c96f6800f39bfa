//! Validation metrics: quadratic weighted kappa of CO-RADS and the area under the ROC curve.
//! (The evaluator crate has the full versions with confidence intervals; these are the point
//! estimates training needs, without a dependency on it.)

/// Cohen's kappa with quadratic weights for ratings `1..=k`; `None` when undefined (no
/// ratings, or both raters constant on the same value).
pub fn quadratic_weighted_kappa(truth: &[u8], pred: &[u8], k: usize) -> Option<f64> {
    if truth.is_empty() || truth.len() != pred.len() || k < 2 {
        return None;
    }
    let idx = |r: u8| (r as usize).clamp(1, k) - 1;
    let mut observed = vec![0f64; k * k];
    let (mut ht, mut hp) = (vec![0f64; k], vec![0f64; k]);
    for (&t, &p) in truth.iter().zip(pred) {
        observed[idx(t) * k + idx(p)] += 1.0;
        ht[idx(t)] += 1.0;
        hp[idx(p)] += 1.0;
    }
    let n = truth.len() as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = ((i as f64 - j as f64) / (k as f64 - 1.0)).powi(2);
            num += w * observed[i * k + j];
            den += w * ht[i] * hp[j] / n;
        }
    }
    if den == 0.0 {
        None
    } else {
        Some(1.0 - num / den)
    }
}

/// Area under the ROC curve (Mann-Whitney, ties counted as one half); `None` without both
/// classes.
pub fn auc(positive: &[bool], score: &[f64]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = score
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    let n_pos = pairs.iter().filter(|p| p.1).count();
    let n_neg = pairs.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' mid-ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += mid * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_known_values() {
        assert_eq!(
            quadratic_weighted_kappa(&[1, 2, 3], &[1, 2, 3], 5),
            Some(1.0)
        );
        // scikit-learn 1.x: cohen_kappa_score([1,2,3,4,5,1], [1,3,3,5,4,2], weights="quadratic")
        let k = quadratic_weighted_kappa(&[1, 2, 3, 4, 5, 1], &[1, 3, 3, 5, 4, 2], 5).unwrap();
        assert!((k - 0.833_333_333_333_333_4).abs() < 1e-12, "{k}");
        assert_eq!(quadratic_weighted_kappa(&[2, 2], &[2, 2], 5), None);
    }

    #[test]
    fn auc_known_values() {
        assert_eq!(auc(&[false, true], &[0.1, 0.9]), Some(1.0));
        assert_eq!(auc(&[false, true, true], &[0.5, 0.5, 0.9]), Some(0.75));
        assert_eq!(auc(&[true, true], &[0.1, 0.9]), None);
    }
}
