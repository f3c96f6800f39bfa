//! Strata by any column (`--strata FILE.csv`): AUC and quadratic weighted kappa per value of
//! each column of a table `case,<column>,<column>,...` (site, scanner vendor, slice thickness,
//! sex, age band...), with the seeded bootstrap intervals of the main evaluation, and a test of
//! the difference of the AUCs between the strata of a column.
//!
//! The strata are disjoint sets of cases, so their AUCs are independent: the test is DeLong's
//! variance of each stratum's AUC and the chi-square test of homogeneity
//! chi2 = sum_k (AUC_k - AUC_w)^2 / V_k with AUC_w the inverse-variance weighted mean and k - 1
//! degrees of freedom; for two strata chi2 = z^2 with z = (AUC_1 - AUC_2) / sqrt(V_1 + V_2),
//! the usual z test for two independent AUCs. Like `--compare`'s DeLong test it treats scans as
//! independent.
//!
//! Bad input does not stop the evaluation: rows naming cases the ground truth does not know are
//! listed and skipped, a column with a single value is noted and skipped, and a stratum too
//! small to estimate is listed with its counts and the reason, not scored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::bootstrap::{percentile_interval, Resampler};
use crate::case::match_key;
use crate::csvrows::CsvTable;
use crate::delong::delong_variance;
use crate::error::{EvalError, Result};
use crate::evaluate::{
    clusters_of, join, n_patients, one_class_reason, qwk_indices, qwk_weighted, EvalCase,
    EvalOptions,
};
use crate::metrics::{check_both_classes, RankedScores};
use crate::predictions::PredictionSet;
use crate::truth::GroundTruth;

pub use crate::strata_table::{ColumnStrata, DifferenceTest, StrataByColumn, StratumScore};

/// A stratum with fewer cases than this is listed but not scored: below it the AUC and its
/// bootstrap interval are too unstable to compare.
pub const MIN_STRATUM_CASES: usize = 10;

/// Bootstrap seed of stratum `j` (0-based, strata in sorted value order) of column `i` (0-based,
/// in file order): `seed + 1000 * (i + 1) + j`, far from the seeds of the main set (`seed`) and
/// the slice-thickness strata (`seed + 1`, `seed + 2`).
pub fn stratum_seed(seed: u64, column: usize, stratum: usize) -> u64 {
    seed.wrapping_add(1000 * (column as u64 + 1))
        .wrapping_add(stratum as u64)
}

/// The strata table as read: the value of each column per case (by match key).
#[derive(Debug, Clone)]
pub struct StrataTable {
    /// The file.
    pub path: String,
    /// Column names in file order (the case column left out).
    pub columns: Vec<String>,
    /// Case name as written, and its value per column ("" when empty), in file order.
    pub rows: Vec<(String, Vec<String>)>,
}

/// Reads a strata table: a header with a `case` column (or else the first column names the
/// case) and any other columns, each a stratification.
pub fn load_strata_table(path: &Path) -> Result<StrataTable> {
    let table = CsvTable::open(path)?;
    let names = table.header_names();
    let case_col = table
        .column(&["case", "case_id", "image", "patient id"])
        .unwrap_or(0);
    let columns: Vec<(usize, String)> = names
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != case_col)
        .map(|(k, n)| (k, n.clone()))
        .collect();
    if columns.is_empty() {
        return Err(EvalError::format(
            path,
            "a strata table needs a case column and at least one column to stratify by",
        ));
    }
    let mut rows = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    table.for_each_row(|row| {
        let case = row.get(case_col).to_string();
        if case.is_empty() {
            return Err(row.error("empty case name"));
        }
        if let Some(first) = seen.insert(match_key(&case), row.line) {
            return Err(row.error(format!("case '{case}' already has a row (line {first})")));
        }
        let values = columns
            .iter()
            .map(|(k, _)| row.get(*k).to_string())
            .collect();
        rows.push((case, values));
        Ok(())
    })?;
    Ok(StrataTable {
        path: path.display().to_string(),
        columns: columns.into_iter().map(|(_, n)| n).collect(),
        rows,
    })
}

/// P(X >= x) for X chi-square with `df` degrees of freedom: Q(df/2, x/2) by the recurrence
/// Q(s + 1, y) = Q(s, y) + y^s e^-y / Gamma(s + 1) from Q(1/2, y) = erfc(sqrt y) or
/// Q(1, y) = e^-y; exact for the small integer df of a strata test.
pub fn chi2_sf(x: f64, df: usize) -> f64 {
    if df == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let y = x / 2.0;
    let (mut s, mut q, mut term) = if df % 2 == 1 {
        // term = y^(1/2) e^-y / Gamma(3/2)
        (
            0.5,
            libm::erfc(y.sqrt()),
            y.sqrt() * (-y).exp() / (std::f64::consts::PI.sqrt() / 2.0),
        )
    } else {
        (1.0, (-y).exp(), y * (-y).exp())
    };
    while s + 1.0 <= df as f64 / 2.0 {
        q += term;
        s += 1.0;
        term *= y / (s + 1.0);
    }
    q.clamp(0.0, 1.0)
}

/// Inverse-variance chi-square test of homogeneity of independent AUCs.
fn difference_test(scored: &[(&str, f64, f64)]) -> DifferenceTest {
    let wsum: f64 = scored.iter().map(|(_, _, v)| 1.0 / v).sum();
    let mean = scored.iter().map(|(_, a, v)| a / v).sum::<f64>() / wsum;
    let chi2: f64 = scored.iter().map(|(_, a, v)| (a - mean).powi(2) / v).sum();
    let df = scored.len() - 1;
    let z = match scored {
        [(_, a1, v1), (_, a2, v2)] => Some((a1 - a2) / (v1 + v2).sqrt()),
        _ => None,
    };
    DifferenceTest {
        method: "DeLong variance per stratum, chi-square test of equal AUCs for independent \
                 strata (z test for two)",
        strata: scored.iter().map(|(n, _, _)| n.to_string()).collect(),
        chi2,
        df,
        p_value: chi2_sf(chi2, df),
        z,
    }
}

/// Scores one stratum.
fn score_stratum(
    value: &str,
    cases: &[EvalCase],
    opts: &EvalOptions,
    seed: u64,
) -> Result<StratumScore> {
    let labels: Vec<bool> = cases.iter().map(|c| c.label).collect();
    let scores: Vec<f64> = cases.iter().map(|c| c.probability).collect();
    let n_positive = labels.iter().filter(|&&l| l).count();
    let mut out = StratumScore {
        value: value.to_string(),
        n_cases: cases.len(),
        n_positive,
        n_negative: cases.len() - n_positive,
        n_patients: n_patients(cases),
        scored: false,
        reason: None,
        auc: None,
        auc_95ci: None,
        auc_variance_delong: None,
        qwk: None,
        qwk_95ci: None,
        qwk_n_cases: 0,
        bootstrap_seed: None,
    };
    if let Err(EvalError::OneClass { class, .. }) = check_both_classes("stratum", &labels) {
        out.reason = Some(one_class_reason(class));
        return Ok(out);
    }
    if cases.len() < MIN_STRATUM_CASES {
        out.reason = Some(format!(
            "{} case(s), fewer than the {MIN_STRATUM_CASES} needed to score a stratum",
            cases.len()
        ));
        return Ok(out);
    }
    let ranked = RankedScores::new(&scores, &labels)?;
    let co_rads: Vec<Option<u8>> = cases.iter().map(|c| c.co_rads_pred).collect();
    let pairs = qwk_indices(cases, &co_rads);
    out.scored = true;
    out.auc = ranked.auc();
    out.auc_variance_delong = delong_variance(&scores, &labels).map(|(_, v)| v);
    out.qwk = (!pairs.is_empty())
        .then(|| qwk_weighted(&pairs, None))
        .flatten();
    out.qwk_n_cases = pairs.len();
    if opts.bootstrap > 0 {
        out.bootstrap_seed = Some(seed);
        let (clusters, _) = clusters_of(cases);
        let mut resampler = Resampler::new(&clusters, &labels, seed);
        let (mut aucs, mut qwks) = (Vec::new(), Vec::new());
        let mut w = Vec::new();
        for _ in 0..opts.bootstrap {
            // A stratum whose positives (or negatives) sit in one patient cannot be resampled
            // with both classes; it keeps its point estimates and says why it has no interval.
            if let Err(e) = resampler.next(&mut w) {
                out.reason = Some(format!("no bootstrap interval: {e}"));
                aucs.clear();
                qwks.clear();
                break;
            }
            if let Some(a) = ranked.auc_weighted(&w) {
                aucs.push(a);
            }
            if !pairs.is_empty() {
                if let Some(q) = qwk_weighted(&pairs, Some(&w)) {
                    qwks.push(q);
                }
            }
        }
        out.auc_95ci = percentile_interval(&aucs, opts.confidence);
        out.qwk_95ci = percentile_interval(&qwks, opts.confidence);
    }
    Ok(out)
}

/// Scores every column of `table` on the cases of `preds` joined with `truth` (joined as the
/// main evaluation joins them, so the same cases take part).
pub fn strata_by_column(
    table: &StrataTable,
    truth: &GroundTruth,
    preds: &PredictionSet,
    opts: &EvalOptions,
) -> Result<StrataByColumn> {
    let cases = join(truth, preds, opts.ignore_extra_predictions)?.cases;
    let known: HashSet<String> = truth.cases.iter().map(|t| match_key(&t.case)).collect();
    let mut by_key: HashMap<String, &Vec<String>> = HashMap::new();
    let mut unknown_cases = Vec::new();
    for (case, values) in &table.rows {
        let key = match_key(case);
        if known.contains(&key) {
            by_key.insert(key, values);
        } else {
            unknown_cases.push(case.clone());
        }
    }
    let mut warnings = Vec::new();
    if !unknown_cases.is_empty() {
        warnings.push(format!(
            "{}: {} row(s) name no ground-truth case and are skipped: {}",
            table.path,
            unknown_cases.len(),
            crate::error::name_list(&unknown_cases, 10)
        ));
    }
    let rows: Vec<Option<&Vec<String>>> = cases
        .iter()
        .map(|c| by_key.get(&match_key(&c.case)).copied())
        .collect();
    let n_cases_without_row = rows.iter().filter(|r| r.is_none()).count();
    let mut columns = Vec::new();
    for (i, name) in table.columns.iter().enumerate() {
        let mut groups: BTreeMap<&str, Vec<EvalCase>> = BTreeMap::new();
        let mut n_missing = 0;
        for (case, row) in cases.iter().zip(&rows) {
            match row.and_then(|r| r.get(i)).filter(|v| !v.is_empty()) {
                Some(v) => groups.entry(v.as_str()).or_default().push(case.clone()),
                None => n_missing += 1,
            }
        }
        let mut col = ColumnStrata {
            column: name.clone(),
            n_missing,
            strata: Vec::new(),
            skipped: None,
            difference_test: None,
            note: None,
        };
        if groups.len() < 2 {
            let why = match groups.keys().next() {
                Some(v) => format!("every evaluated case with a value has '{v}'"),
                None => "no evaluated case has a value".to_string(),
            };
            let msg = format!("column '{name}' has fewer than two values ({why}); skipped");
            warnings.push(format!("{}: {msg}", table.path));
            col.skipped = Some(msg);
            columns.push(col);
            continue;
        }
        for (j, (value, group)) in groups.iter().enumerate() {
            col.strata.push(score_stratum(
                value,
                group,
                opts,
                stratum_seed(opts.seed, i, j),
            )?);
        }
        let comparable: Vec<(&str, f64, f64)> = col
            .strata
            .iter()
            .filter_map(|s| Some((s.value.as_str(), s.auc?, s.auc_variance_delong?)))
            .collect();
        if comparable.len() < 2 {
            col.note = Some(format!(
                "{} stratum(a) scored with a DeLong variance; the difference test needs two",
                comparable.len()
            ));
        } else if comparable.iter().any(|(_, _, v)| *v <= 0.0) {
            col.note = Some(
                "a stratum's AUC has DeLong variance 0 (perfect separation); no test".to_string(),
            );
        } else {
            col.difference_test = Some(difference_test(&comparable));
        }
        columns.push(col);
    }
    Ok(StrataByColumn {
        path: table.path.clone(),
        min_cases: MIN_STRATUM_CASES,
        unknown_cases,
        n_cases_without_row,
        columns,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_sf_matches_scipy() {
        // scipy.stats.chi2.sf(x, df)
        let cases = [
            (3.841458820694124, 1, 0.05),
            (1.0, 2, 0.6065306597126334),
            (7.814727903251178, 3, 0.05),
            (2.5, 4, 0.6446357929354278),
            (0.0, 3, 1.0),
        ];
        for (x, df, p) in cases {
            let got = chi2_sf(x, df);
            assert!(
                (got - p).abs() < 1e-12,
                "chi2_sf({x}, {df}) = {got}, want {p}"
            );
        }
    }
}
