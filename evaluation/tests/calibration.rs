//! Calibration and operating points against the scikit-learn / statsmodels goldens of
//! tests/fixtures/golden_calibration.json (written by tools/make_eval_fixtures.py).

use ctgrade_eval::calibration::{
    brier, calibration_curve, calibration_intercept, calibration_slope, BinStrategy, LOGIT_EPS,
    N_BINS,
};
use ctgrade_eval::metrics::{roc_curve, youden, BinaryCounts};
use ctgrade_eval::operating::{
    decision_curve, predictive_values, RocOrder, CO_RADS_CUTOFFS, TARGETS_PERCENT,
};
use serde_json::Value;

/// The tolerance the issue asks for; most values agree to ~1e-15.
const TOL: f64 = 1e-6;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden_calibration.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect()
}

fn f64s_from_bits(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| f64::from_bits(b.as_u64().unwrap()))
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect()
}

fn inputs(c: &Value) -> (Vec<f64>, Vec<bool>) {
    let labels = u64s(&c["labels"]).into_iter().map(|l| l == 1).collect();
    (f64s_from_bits(&c["scores_bits"]), labels)
}

/// Largest absolute difference seen, per figure, printed at the end of each test.
#[derive(Default)]
struct MaxDiff(Vec<(&'static str, f64)>);

impl MaxDiff {
    fn check(&mut self, what: &'static str, case: &str, got: f64, expected: f64) {
        let d = (got - expected).abs();
        assert!(d <= TOL, "{case} {what}: {got} vs {expected}");
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, m)) => *m = m.max(d),
            None => self.0.push((what, d)),
        }
    }

    fn check_opt(&mut self, what: &'static str, case: &str, got: Option<f64>, e: &Value) {
        match (got, e.as_f64()) {
            (Some(g), Some(x)) => self.check(what, case, g, x),
            (None, None) => {}
            (g, _) => panic!("{case} {what}: got {g:?}, expected {e}"),
        }
    }

    fn print(&self) {
        for (w, d) in &self.0 {
            println!("max |difference| {w}: {d:e}");
        }
    }
}

#[test]
fn settings_match_the_generator() {
    let g = golden();
    assert_eq!(g["n_bins"].as_u64(), Some(N_BINS as u64));
    assert_eq!(g["logit_eps"].as_f64(), Some(LOGIT_EPS));
    assert!(g["cases"].as_array().unwrap().len() >= 8);
}

#[test]
fn brier_and_calibration_curves_match_sklearn() {
    let g = golden();
    let mut m = MaxDiff::default();
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (scores, labels) = inputs(c);
        m.check(
            "brier",
            name,
            brier(&scores, &labels).unwrap(),
            c["brier"].as_f64().unwrap(),
        );
        for (key, strategy) in [
            ("uniform", BinStrategy::Uniform),
            ("quantile", BinStrategy::Quantile),
        ] {
            let e = &c[key];
            let curve = calibration_curve(&scores, &labels, N_BINS, strategy).unwrap();
            // Edges bit for bit (numpy.linspace, numpy.percentile), then the bins sklearn keeps.
            assert_eq!(
                curve.bin_edges,
                f64s_from_bits(&e["bin_edges_bits"]),
                "{name} {key} edges"
            );
            let bins: Vec<u64> = curve.bin.iter().map(|&b| b as u64).collect();
            assert_eq!(bins, u64s(&e["bin"]), "{name} {key} bins");
            assert_eq!(curve.counts, u64s(&e["counts"]), "{name} {key} counts");
            for (g, x) in curve.prob_true.iter().zip(f64s(&e["prob_true"])) {
                m.check("prob_true", name, *g, x);
            }
            for (g, x) in curve.prob_pred.iter().zip(f64s(&e["prob_pred"])) {
                m.check("prob_pred", name, *g, x);
            }
            assert_eq!(
                curve.prob_true.len(),
                e["prob_true"].as_array().unwrap().len()
            );
            m.check("ece", name, curve.ece, e["ece"].as_f64().unwrap());
        }
    }
    m.print();
}

#[test]
fn calibration_intercept_and_slope_match_statsmodels() {
    let g = golden();
    let mut m = MaxDiff::default();
    let mut n_slopes = 0;
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (scores, labels) = inputs(c);
        m.check_opt(
            "calibration_intercept",
            name,
            calibration_intercept(&scores, &labels).unwrap(),
            &c["calibration_intercept"],
        );
        let fit = calibration_slope(&scores, &labels).unwrap();
        m.check_opt(
            "calibration_slope",
            name,
            fit.map(|f| f.1),
            &c["calibration_slope"],
        );
        m.check_opt(
            "slope model intercept",
            name,
            fit.map(|f| f.0),
            &c["calibration_slope_model_intercept"],
        );
        n_slopes += usize::from(fit.is_some());
    }
    // Both kinds of case are covered: finite slopes and separated classes.
    assert!(n_slopes >= 5);
    assert!(n_slopes < g["cases"].as_array().unwrap().len());
    m.print();
}

#[test]
fn operating_points_match_sklearn_roc() {
    let g = golden();
    let mut m = MaxDiff::default();
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (scores, labels) = inputs(c);
        let roc = RocOrder::new(&scores, &labels)
            .unwrap()
            .counts(None)
            .unwrap();
        let ops = &c["operating_points"];
        for pct in TARGETS_PERCENT {
            for (key, value, threshold) in [
                (
                    format!("sensitivity_at_specificity_0_{pct}"),
                    roc.sensitivity_at_specificity(pct),
                    roc.threshold_at_specificity(pct),
                ),
                (
                    format!("specificity_at_sensitivity_0_{pct}"),
                    roc.specificity_at_sensitivity(pct),
                    roc.threshold_at_sensitivity(pct),
                ),
            ] {
                let e = &ops[&key];
                m.check("target value", name, value, e["value"].as_f64().unwrap());
                let p = &e["point"];
                match p["threshold"].as_f64() {
                    Some(t) => assert_eq!(threshold, t, "{name} {key} threshold"),
                    None => assert!(threshold.is_infinite(), "{name} {key} threshold"),
                }
                let counts = BinaryCounts::at_threshold(&scores, &labels, threshold);
                assert_eq!(
                    [counts.tp, counts.fp, counts.tn, counts.fn_],
                    ["tp", "fp", "tn", "fn"].map(|k| p[k].as_u64().unwrap()),
                    "{name} {key} counts"
                );
            }
        }
        // The resample path's Youden threshold equals numpy's argmax on sklearn's curve.
        let expected = f64::from_bits(c["youden_threshold_bits"].as_u64().unwrap());
        assert_eq!(roc.youden_threshold(), expected, "{name} Youden");
        let dropped = roc_curve(&scores, &labels, true).unwrap();
        assert_eq!(youden(&dropped, &scores, &labels).threshold, expected);
    }
    m.print();
}

#[test]
fn predictive_values_and_net_benefit_match_sklearn() {
    let g = golden();
    let mut m = MaxDiff::default();
    let mut n_co_rads = 0;
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let (scores, labels) = inputs(c);
        let d = decision_curve(&scores, &labels).unwrap();
        let e = &c["decision_curve"];
        assert_eq!(d.thresholds, f64s(&e["thresholds"]), "{name} thresholds");
        for (g, x) in d.net_benefit.iter().zip(f64s(&e["net_benefit"])) {
            m.check("net_benefit", name, *g, x);
        }
        for (g, x) in d
            .net_benefit_treat_all
            .iter()
            .zip(f64s(&e["net_benefit_treat_all"]))
        {
            m.check("net_benefit_treat_all", name, *g, x);
        }
        let Some(co_rads) = c.get("co_rads") else {
            continue;
        };
        n_co_rads += 1;
        let co_rads: Vec<u8> = u64s(co_rads).into_iter().map(|v| v as u8).collect();
        let pv = predictive_values(&co_rads, &labels);
        let e = c["predictive_values"].as_array().unwrap();
        assert_eq!(pv.len(), CO_RADS_CUTOFFS.len());
        for (p, x) in pv.iter().zip(e) {
            assert_eq!(u64::from(p.cutoff), x["cutoff"].as_u64().unwrap());
            assert_eq!(
                [p.tp, p.fp, p.tn, p.fn_],
                ["tp", "fp", "tn", "fn"].map(|k| x[k].as_u64().unwrap()),
                "{name} cut-off {}",
                p.cutoff
            );
            m.check_opt("ppv", name, p.ppv, &x["ppv"]);
            m.check_opt("npv", name, p.npv, &x["npv"]);
        }
    }
    assert!(n_co_rads >= 3);
    m.print();
}
