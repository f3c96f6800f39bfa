//! Helpers shared by the evaluator's test suites.

use serde_json::Value;

/// Checks that every value of `expected` is in `got` (extra keys in `got` are fine): numbers
/// within `tol(what)`, `<key>_bits` as the bit patterns of `<key>`'s floats, the rest equal.
pub fn assert_subset(what: &str, got: &Value, expected: &Value, tol: &dyn Fn(&str) -> f64) {
    match expected {
        Value::Object(map) => {
            for (k, e) in map {
                if let Some(key) = k.strip_suffix("_bits") {
                    let bits: Vec<u64> = got[key]
                        .as_array()
                        .unwrap_or_else(|| panic!("{what}.{key} missing"))
                        .iter()
                        .map(|v| v.as_f64().unwrap().to_bits())
                        .collect();
                    let e: Vec<u64> = e
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap())
                        .collect();
                    assert_eq!(bits, e, "{what}.{key}");
                } else {
                    assert_subset(&format!("{what}.{k}"), &got[k.as_str()], e, tol);
                }
            }
        }
        Value::Array(items) => {
            let g = got
                .as_array()
                .unwrap_or_else(|| panic!("{what}: got {got}, expected a list"));
            assert_eq!(g.len(), items.len(), "{what} length");
            for (i, (g, e)) in g.iter().zip(items).enumerate() {
                assert_subset(&format!("{what}[{i}]"), g, e, tol);
            }
        }
        Value::Number(n) => {
            let (g, e) = (got.as_f64(), n.as_f64().unwrap());
            assert!(
                g.is_some_and(|g| (g - e).abs() <= tol(what)),
                "{what}: {got} vs {e}"
            );
        }
        _ => assert_eq!(got, expected, "{what}"),
    }
}
