//! `ctgrade-eval`: leaderboard evaluation of COVID-19 predictions on chest CT.
//!
//! Reads predictions (the grand-challenge `predictions.json`, a `ctgrade run` output folder or a
//! CSV) and ground truth (the iCTCF patient table or a generic CSV), and computes the metrics of
//! de Vente et al. (IEEE TAI 2021): AUC with its ROC curve, quadratic weighted kappa of CO-RADS,
//! 95% bootstrap confidence intervals (patient-clustered), paired bootstrap and DeLong tests
//! between two prediction sets, and the slice-thickness strata; beyond the paper, calibration
//! (Brier score, reliability curves, expected calibration error, calibration intercept and
//! slope) and operating points (sensitivity/specificity at target rates, predictive values at
//! the CO-RADS cut-offs, decision-curve net benefit), and the run time per algorithm job.

pub mod atomic;
pub mod bootstrap;
pub mod calibration;
pub mod case;
pub mod csvrows;
pub mod delong;
pub mod error;
pub mod evaluate;
pub mod figures;
pub mod metrics;
pub mod operating;
pub mod platform;
pub mod plot;
pub mod predictions;
pub mod report;
pub mod runtime;
pub mod simulate;
pub mod strata;
pub mod strata_table;
pub mod truth;

pub use error::{EvalError, Result};
pub use evaluate::{evaluate, EvalOptions, Report};
pub use predictions::{load_predictions, PredictionSet};
pub use truth::{load_ground_truth, GroundTruth};
