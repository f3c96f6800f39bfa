//! Grading: from the ensemble's mean output to the COVID-19 probability and the CO-RADS score.
//!
//! The paper trains two kinds of output head:
//! - continuous: one sigmoid output whose training target for CO-RADS `c` is `(c - 1) / 4`; the
//!   probability is the output itself and CO-RADS is `round(4p) + 1`, so CO-RADS `c` covers
//!   `p` in `[(c - 1.5) / 4, (c - 0.5) / 4)` (halves round up, away from zero);
//! - categorical: five softmax outputs for CO-RADS 1..5; CO-RADS is the most probable class and the
//!   COVID-19 probability is the expected continuous target `sum_c P(c) (c - 1) / 4`, which puts both heads
//!   on the same scale (a certain CO-RADS 5 gives 1, a certain CO-RADS 1 gives 0).

use serde::{Deserialize, Serialize};

use crate::burden::Burden;

/// Number of CO-RADS categories.
pub const CO_RADS_CLASSES: usize = 5;

/// The output head a network was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// One output, sigmoid, target `(c - 1) / 4`.
    Continuous,
    /// Five outputs, softmax over CO-RADS 1..5.
    Categorical,
}

impl Head {
    /// Number of raw network outputs this head has.
    pub fn num_outputs(self) -> usize {
        match self {
            Head::Continuous => 1,
            Head::Categorical => CO_RADS_CLASSES,
        }
    }
}

/// A head name other than `continuous` or `categorical`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected continuous or categorical, got {0:?}")]
pub struct ParseHeadError(pub String);

impl Head {
    /// Every head, in the order the command line lists them.
    pub const ALL: [Head; 2] = [Head::Continuous, Head::Categorical];

    /// The head's name, as written in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Head::Continuous => "continuous",
            Head::Categorical => "categorical",
        }
    }
}

impl std::str::FromStr for Head {
    type Err = ParseHeadError;

    /// Parses `continuous` or `categorical`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Head::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| ParseHeadError(s.to_string()))
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The grade of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Grade {
    /// COVID-19 probability in [0, 1].
    pub probability: f64,
    /// CO-RADS score, 1..=5.
    pub co_rads: u8,
}

/// Why a mean output could not be graded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GradingError {
    /// The output vector has the wrong length for the head.
    #[error("the {head:?} head expects {expected} output(s), the ensemble produced {found}")]
    WrongLength {
        /// The head.
        head: Head,
        /// Outputs the head has.
        expected: usize,
        /// Outputs found.
        found: usize,
    },
    /// A NaN, an infinity, or a value outside [0, 1].
    #[error("the ensemble output {0:?} is not a probability (NaN, infinite or outside [0, 1])")]
    NotAProbability(Vec<f64>),
}

/// Grades the ensemble's mean post-activation output (sigmoid values or softmax vectors).
pub fn grade(head: Head, mean_output: &[f64]) -> Result<Grade, GradingError> {
    if mean_output.len() != head.num_outputs() {
        return Err(GradingError::WrongLength {
            head,
            expected: head.num_outputs(),
            found: mean_output.len(),
        });
    }
    // A tolerance for round-off in softmax sums and sigmoids.
    let valid = |v: f64| v.is_finite() && (-1e-6..=1.0 + 1e-6).contains(&v);
    if !mean_output.iter().all(|&v| valid(v)) {
        return Err(GradingError::NotAProbability(mean_output.to_vec()));
    }
    Ok(match head {
        Head::Continuous => grade_continuous(mean_output[0]),
        Head::Categorical => grade_categorical(mean_output),
    })
}

/// Each member's COVID-19 probability (its own output graded as a one-member ensemble would be:
/// the sigmoid for the continuous head, `sum_c P(c) (c - 1) / 4` for the categorical one) and
/// their population standard deviation (0 for one member), the ensemble's spread.
pub fn member_spread(head: Head, members: &[Vec<f64>]) -> Result<(Vec<f64>, f64), GradingError> {
    let probabilities = members
        .iter()
        .map(|m| grade(head, m).map(|g| g.probability))
        .collect::<Result<Vec<f64>, _>>()?;
    let n = probabilities.len().max(1) as f64;
    let mean = probabilities.iter().sum::<f64>() / n;
    let var = probabilities
        .iter()
        .map(|p| (p - mean).powi(2))
        .sum::<f64>()
        / n;
    Ok((probabilities, var.sqrt()))
}

/// CO-RADS from a continuous probability: `round(4p) + 1`.
fn grade_continuous(p: f64) -> Grade {
    let probability = p.clamp(0.0, 1.0);
    let co_rads = (4.0 * probability).round() as u8 + 1;
    Grade {
        probability,
        co_rads,
    }
}

/// CO-RADS as the most probable class (the lower class on an exact tie); probability as the
/// expected continuous target.
fn grade_categorical(probs: &[f64]) -> Grade {
    let total: f64 = probs.iter().sum();
    let mut best = 0;
    for (c, &p) in probs.iter().enumerate() {
        if p > probs[best] {
            best = c;
        }
    }
    let expected: f64 = probs
        .iter()
        .enumerate()
        .map(|(c, &p)| p * c as f64 / 4.0)
        .sum::<f64>()
        / total.max(f64::MIN_POSITIVE);
    Grade {
        probability: expected.clamp(0.0, 1.0),
        co_rads: best as u8 + 1,
    }
}

/// The outcome of one case (graded, failed or skipped by `--skip-done`), as the summaries,
/// `results.json` and the report list it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// Case name (input file name without extension).
    pub case: String,
    /// Input file name.
    pub file: String,
    /// COVID-19 probability, when the case succeeded.
    pub probability: Option<f64>,
    /// CO-RADS score, when the case succeeded.
    pub co_rads: Option<u8>,
    /// Each member's COVID-19 probability (as if it were a one-member ensemble), when graded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_probabilities: Vec<f64>,
    /// Population standard deviation of `member_probabilities`, when graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<f64>,
    /// The share of the lungs (per lung, per lobe) a lesion map covers and the CT severity
    /// score, when the case had a lesion map (given or computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lesions: Option<Burden>,
    /// Why the case failed, when it did.
    pub error: Option<String>,
    /// What looked wrong with the input without stopping it (NaN voxels, a non-HU range).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Graded by an earlier run (`--skip-done`): the answer is the one it left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Wall time of the case in seconds.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_from_their_names() {
        for head in Head::ALL {
            assert_eq!(head.name().parse::<Head>(), Ok(head));
            assert_eq!(head.to_string(), head.name());
        }
        assert_eq!(
            "linear".parse::<Head>().unwrap_err().to_string(),
            "expected continuous or categorical, got \"linear\""
        );
    }

    #[test]
    fn member_spread_is_the_population_deviation() {
        let (p, s) = member_spread(Head::Continuous, &[vec![0.2], vec![0.6]]).unwrap();
        assert_eq!(p, vec![0.2, 0.6]);
        assert!((s - 0.2).abs() < 1e-12);
        let certain = |c: usize| (0..5).map(|i| f64::from(u8::from(i == c))).collect();
        let (p, s) = member_spread(Head::Categorical, &[certain(0), certain(4)]).unwrap();
        assert_eq!(p, vec![0.0, 1.0]);
        assert!((s - 0.5).abs() < 1e-12);
        assert!(member_spread(Head::Continuous, &[vec![f64::NAN]]).is_err());
    }

    fn co_rads(p: f64) -> u8 {
        grade(Head::Continuous, &[p]).unwrap().co_rads
    }

    #[test]
    fn continuous_class_boundaries() {
        // CO-RADS c covers [(c - 1.5) / 4, (c - 0.5) / 4).
        assert_eq!(co_rads(0.0), 1);
        assert_eq!(co_rads(0.124_999), 1);
        assert_eq!(co_rads(0.125), 2);
        assert_eq!(co_rads(0.374_999), 2);
        assert_eq!(co_rads(0.375), 3);
        assert_eq!(co_rads(0.5), 3);
        assert_eq!(co_rads(0.624_999), 3);
        assert_eq!(co_rads(0.625), 4);
        assert_eq!(co_rads(0.874_999), 4);
        assert_eq!(co_rads(0.875), 5);
        assert_eq!(co_rads(1.0), 5);
    }

    #[test]
    fn continuous_training_targets_map_back_to_their_class() {
        for c in 1..=5u8 {
            let target = (c as f64 - 1.0) / 4.0;
            let g = grade(Head::Continuous, &[target]).unwrap();
            assert_eq!(g.co_rads, c);
            assert_eq!(g.probability, target);
        }
    }

    #[test]
    fn categorical_argmax_and_expected_probability() {
        let g = grade(Head::Categorical, &[0.1, 0.2, 0.3, 0.25, 0.15]).unwrap();
        assert_eq!(g.co_rads, 3);
        let expected = (0.2 * 0.25 + 0.3 * 0.5 + 0.25 * 0.75 + 0.15 * 1.0) / 1.0;
        assert!((g.probability - expected).abs() < 1e-12);

        let certain = |c: usize| {
            let mut v = [0.0; 5];
            v[c - 1] = 1.0;
            grade(Head::Categorical, &v).unwrap()
        };
        for c in 1..=5 {
            let g = certain(c);
            assert_eq!(g.co_rads as usize, c);
            assert!((g.probability - (c as f64 - 1.0) / 4.0).abs() < 1e-12);
        }
        // Exact tie between CO-RADS 2 and 4: the lower class.
        assert_eq!(
            grade(Head::Categorical, &[0.0, 0.5, 0.0, 0.5, 0.0])
                .unwrap()
                .co_rads,
            2
        );
    }

    #[test]
    fn rejects_bad_outputs() {
        assert!(matches!(
            grade(Head::Continuous, &[f64::NAN]),
            Err(GradingError::NotAProbability(_))
        ));
        assert!(matches!(
            grade(Head::Continuous, &[1.5]),
            Err(GradingError::NotAProbability(_))
        ));
        assert!(matches!(
            grade(Head::Categorical, &[0.5, 0.5]),
            Err(GradingError::WrongLength {
                expected: 5,
                found: 2,
                ..
            })
        ));
    }
}
