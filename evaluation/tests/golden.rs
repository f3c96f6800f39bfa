//! Metrics against scikit-learn / numpy / scipy goldens written by tools/make_eval_fixtures.py.

use ctgrade_eval::bootstrap::{percentile, Xoshiro256pp};
use ctgrade_eval::delong::delong_test;
use ctgrade_eval::metrics::{auc, qwk, roc_curve, youden, BinaryCounts, RankedScores};
use ctgrade_eval::EvalError;
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s_from_bits(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| f64::from_bits(b.as_u64().unwrap()))
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() == 1)
        .collect()
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn auc_roc_and_operating_points_match_sklearn() {
    let g = golden();
    let cases = g["metric_cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let scores = f64s_from_bits(&c["scores_bits"]);
        let labels = bools(&c["labels"]);
        if c.get("error").is_some() {
            assert!(
                matches!(auc(&scores, &labels), Err(EvalError::OneClass { .. })),
                "{name}"
            );
            assert!(roc_curve(&scores, &labels, true).is_err(), "{name}");
            continue;
        }
        let expected = c["auc"].as_f64().unwrap();
        let got = auc(&scores, &labels).unwrap();
        assert!(
            close(got, expected, 1e-9),
            "{name}: AUC {got} vs sklearn {expected}"
        );

        for (key, drop) in [("roc", true), ("roc_full", false)] {
            let roc = roc_curve(&scores, &labels, drop).unwrap();
            let r = &c[key];
            // Exact equality of every ROC point and threshold (bit patterns from sklearn).
            assert_eq!(roc.fpr, f64s_from_bits(&r["fpr_bits"]), "{name} {key} fpr");
            assert_eq!(roc.tpr, f64s_from_bits(&r["tpr_bits"]), "{name} {key} tpr");
            assert_eq!(
                roc.thresholds,
                f64s_from_bits(&r["thresholds_bits"]),
                "{name} {key} thresholds"
            );
        }

        let roc = roc_curve(&scores, &labels, true).unwrap();
        let y = youden(&roc, &scores, &labels);
        let ey = &c["youden"];
        assert_eq!(
            y.threshold.to_bits(),
            ey["threshold_bits"].as_u64().unwrap(),
            "{name} Youden threshold"
        );
        assert!(close(y.j, ey["j"].as_f64().unwrap(), 1e-12), "{name} J");
        for (k, v) in [
            ("tp", y.counts.tp),
            ("fp", y.counts.fp),
            ("tn", y.counts.tn),
            ("fn", y.counts.fn_),
        ] {
            assert_eq!(v, ey[k].as_u64().unwrap(), "{name} Youden {k}");
        }
        let half = BinaryCounts::at_threshold(&scores, &labels, 0.5);
        let eh = &c["at_0_5"];
        for (k, v) in [
            ("tp", half.tp),
            ("fp", half.fp),
            ("tn", half.tn),
            ("fn", half.fn_),
        ] {
            assert_eq!(v, eh[k].as_u64().unwrap(), "{name} at 0.5 {k}");
        }
    }
}

#[test]
fn weighted_auc_matches_sklearn_on_golden_sets() {
    // Weight 1 everywhere must give the same AUC as the plain path (used by the bootstrap).
    let g = golden();
    for c in g["metric_cases"].as_array().unwrap() {
        if c.get("error").is_some() {
            continue;
        }
        let scores = f64s_from_bits(&c["scores_bits"]);
        let labels = bools(&c["labels"]);
        let ranked = RankedScores::new(&scores, &labels).unwrap();
        let got = ranked.auc_weighted(&vec![1; scores.len()]).unwrap();
        assert!(close(got, c["auc"].as_f64().unwrap(), 1e-9));
    }
}

#[test]
fn qwk_matches_sklearn() {
    let g = golden();
    for c in g["qwk_cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let got = qwk(&u8s(&c["truth"]), &u8s(&c["pred"])).unwrap();
        match c["qwk"].as_f64() {
            Some(e) => {
                let got = got.unwrap_or_else(|| panic!("{name}: undefined, sklearn {e}"));
                assert!(close(got, e, 1e-9), "{name}: {got} vs {e}");
            }
            None => assert_eq!(got, None, "{name}"),
        }
    }
}

#[test]
fn delong_matches_numpy_reference() {
    let g = golden();
    for c in g["delong_cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let d = delong_test(
            &f64s_from_bits(&c["scores_a_bits"]),
            &f64s_from_bits(&c["scores_b_bits"]),
            &bools(&c["labels"]),
        )
        .unwrap();
        for (k, v) in [
            ("auc_a", d.auc_a),
            ("auc_b", d.auc_b),
            ("difference", d.difference),
            ("variance", d.variance),
            ("p_value", d.p_value),
        ] {
            let e = c[k].as_f64().unwrap();
            assert!(close(v, e, 1e-9), "{name} {k}: {v} vs {e}");
        }
        match c["z"].as_f64() {
            Some(z) => assert!(close(d.z.unwrap(), z, 1e-9), "{name} z"),
            None => assert_eq!(d.z, None),
        }
    }
}

#[test]
fn generator_matches_python_mirror() {
    let g = golden();
    let rng = &g["rng"];
    let mut r = Xoshiro256pp::from_state([1, 2, 3, 4]);
    for v in rng["state_1234"].as_array().unwrap() {
        assert_eq!(r.next_u64(), v.as_u64().unwrap());
    }
    for s in rng["seeded"].as_array().unwrap() {
        let mut r = Xoshiro256pp::seed_from_u64(s["seed"].as_u64().unwrap());
        for v in s["next_u64"].as_array().unwrap() {
            assert_eq!(r.next_u64(), v.as_u64().unwrap());
        }
        // The Python mirror draws the `below` lists in this key order after the stream.
        for n in ["1", "7", "1000", "9223372036854788153"] {
            let bound: u64 = n.parse().unwrap();
            for v in s["below"][n].as_array().unwrap() {
                assert_eq!(r.below(bound), v.as_u64().unwrap(), "below({n})");
            }
        }
    }
}

#[test]
fn percentiles_match_numpy() {
    let g = golden();
    for c in g["percentile"].as_array().unwrap() {
        let values: Vec<f64> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (q, e) in c["q"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["expected"].as_array().unwrap())
        {
            let got = percentile(&values, q.as_f64().unwrap()).unwrap();
            assert!(
                close(got, e.as_f64().unwrap(), 1e-12),
                "n={} q={q}",
                values.len()
            );
        }
    }
}
