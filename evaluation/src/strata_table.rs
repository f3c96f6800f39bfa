//! The result tables of `--strata` (`aggregates.strata_by_column` of `metrics.json`), apart
//! from their computation in [`crate::strata`] so that the report types do not depend on it.

use serde::Serialize;

/// One stratum (one value of a column): counts, and AUC and kappa when it can be scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StratumScore {
    /// The column's value.
    pub value: String,
    /// Cases.
    pub n_cases: usize,
    /// Positive cases.
    pub n_positive: usize,
    /// Negative cases.
    pub n_negative: usize,
    /// Distinct patients.
    pub n_patients: usize,
    /// Whether AUC and kappa were computed.
    pub scored: bool,
    /// Why the stratum is not scored (too few cases, one class), or a note on its intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Mann-Whitney AUC (null when not scored).
    pub auc: Option<f64>,
    /// Bootstrap percentile interval of the AUC.
    pub auc_95ci: Option<[f64; 2]>,
    /// DeLong's variance of the AUC (null with fewer than 2 cases of a class).
    pub auc_variance_delong: Option<f64>,
    /// Quadratic weighted kappa of CO-RADS (null without CO-RADS pairs).
    pub qwk: Option<f64>,
    /// Bootstrap percentile interval of the kappa.
    pub qwk_95ci: Option<[f64; 2]>,
    /// Cases in the kappa.
    pub qwk_n_cases: usize,
    /// Bootstrap seed of this stratum (see [`crate::strata::stratum_seed`]; null with `--bootstrap 0`).
    pub bootstrap_seed: Option<u64>,
}

/// The test of a difference of AUC between the scored strata of a column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DifferenceTest {
    /// The method, in words.
    pub method: &'static str,
    /// The strata compared (those scored with a DeLong variance).
    pub strata: Vec<String>,
    /// Chi-square statistic.
    pub chi2: f64,
    /// Degrees of freedom (strata - 1).
    pub df: usize,
    /// Its p-value, P(chi2_df >= chi2).
    pub p_value: f64,
    /// With two strata: (AUC_1 - AUC_2) / sqrt(V_1 + V_2), in the order of `strata`.
    pub z: Option<f64>,
}

/// The strata of one column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnStrata {
    /// The column name.
    pub column: String,
    /// Evaluated cases without a value in this column (no row, or an empty cell).
    pub n_missing: usize,
    /// One entry per value, sorted by value; empty when the column is skipped.
    pub strata: Vec<StratumScore>,
    /// Why the column was skipped (e.g. a single value), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The difference test (null when fewer than two strata can be compared; see `note`).
    pub difference_test: Option<DifferenceTest>,
    /// Why there is no difference test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `aggregates.strata_by_column` of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrataByColumn {
    /// The strata file.
    pub path: String,
    /// Smallest stratum that is scored.
    pub min_cases: usize,
    /// Case names of the strata file that the ground truth does not know (skipped).
    pub unknown_cases: Vec<String>,
    /// Evaluated cases that have no row in the strata file.
    pub n_cases_without_row: usize,
    /// One entry per column, in file order.
    pub columns: Vec<ColumnStrata>,
    /// One sentence per problem found (unknown cases, skipped columns), also printed to stderr.
    pub warnings: Vec<String>,
}
