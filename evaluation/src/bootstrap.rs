//! Nonparametric bootstrap: a small seeded PRNG, patient-clustered resampling and percentiles.
//!
//! The generator is xoshiro256++ seeded through SplitMix64 (Blackman & Vigna), and bounded draws
//! use Lemire's multiply-shift with rejection. Both are pure 64-bit integer arithmetic, so a seed
//! gives the same resamples on every platform and compiler version; `tools/make_eval_fixtures.py`
//! re-implements them to check the confidence intervals against scikit-learn.

use crate::error::{EvalError, Result};

/// SplitMix64 step: used to expand a 64-bit seed into the xoshiro state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ pseudo-random generator.
#[derive(Debug, Clone)]
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// Seeds the state with four SplitMix64 outputs (never all zero).
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// A generator with an explicit state (for reference vectors); must not be all zero.
    pub fn from_state(s: [u64; 4]) -> Self {
        Self { s }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (Lemire's unbiased multiply-shift); `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

/// Resampling units: each cluster (a patient) is a list of case indices.
#[derive(Debug, Clone)]
pub struct Clusters {
    members: Vec<Vec<usize>>,
    n_cases: usize,
}

impl Clusters {
    /// Groups cases by patient id in order of first appearance; `None` ids are singleton
    /// clusters (a scan without a patient is its own unit).
    pub fn from_patients(patients: &[Option<&str>]) -> Self {
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (case, p) in patients.iter().enumerate() {
            match p {
                Some(id) => {
                    let slot = *index.entry(id).or_insert_with(|| {
                        members.push(Vec::new());
                        members.len() - 1
                    });
                    if let Some(m) = members.get_mut(slot) {
                        m.push(case);
                    }
                }
                None => members.push(vec![case]),
            }
        }
        Self {
            members,
            n_cases: patients.len(),
        }
    }

    /// One cluster per case (plain case bootstrap).
    pub fn singletons(n: usize) -> Self {
        Self {
            members: (0..n).map(|k| vec![k]).collect(),
            n_cases: n,
        }
    }

    /// Number of clusters.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no clusters.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether some cluster holds more than one case.
    pub fn is_clustered(&self) -> bool {
        self.members.iter().any(|m| m.len() > 1)
    }

    /// Draws `len()` clusters with replacement and writes how often each case was drawn.
    pub fn resample(&self, rng: &mut Xoshiro256pp, weights: &mut Vec<u32>) {
        weights.clear();
        weights.resize(self.n_cases, 0);
        let n = self.members.len() as u64;
        for _ in 0..n {
            let c = rng.below(n) as usize;
            for &k in self.members.get(c).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(w) = weights.get_mut(k) {
                    *w += 1;
                }
            }
        }
    }
}

/// Largest number of consecutive resamples lacking a class before giving up.
pub const MAX_CONSECUTIVE_REJECTIONS: usize = 1000;

/// Draws resamples that contain both classes. A resample without positives (or without
/// negatives) has no AUC; it is redrawn and counted in `rejected`.
#[derive(Debug)]
pub struct Resampler<'a> {
    clusters: &'a Clusters,
    labels: &'a [bool],
    rng: Xoshiro256pp,
    /// Resamples redrawn because they lacked a class.
    pub rejected: usize,
}

impl<'a> Resampler<'a> {
    /// A resampler over `clusters` of cases with `labels`, seeded with `seed`.
    pub fn new(clusters: &'a Clusters, labels: &'a [bool], seed: u64) -> Self {
        Self {
            clusters,
            labels,
            rng: Xoshiro256pp::seed_from_u64(seed),
            rejected: 0,
        }
    }

    /// Fills `weights` with the next valid resample.
    pub fn next(&mut self, weights: &mut Vec<u32>) -> Result<()> {
        for _ in 0..MAX_CONSECUTIVE_REJECTIONS {
            self.clusters.resample(&mut self.rng, weights);
            let (mut pos, mut neg) = (false, false);
            for (&w, &l) in weights.iter().zip(self.labels) {
                if w > 0 {
                    if l {
                        pos = true;
                    } else {
                        neg = true;
                    }
                }
            }
            if pos && neg {
                return Ok(());
            }
            self.rejected += 1;
        }
        Err(EvalError::Bootstrap(format!(
            "{MAX_CONSECUTIVE_REJECTIONS} consecutive resamples of {} cluster(s) lacked a class; \
             too few positive or negative patients to bootstrap",
            self.clusters.len()
        )))
    }
}

/// Percentile of `values` (need not be sorted) with numpy's default linear interpolation
/// (`numpy.percentile(values, q)`, q in 0..=100). `None` for an empty slice.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    sorted_percentile(&v, q)
}

/// As [`percentile`] on an already ascending slice.
pub fn sorted_percentile(v: &[f64], q: f64) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let h = (q / 100.0) * (n - 1) as f64;
    let lo = (h.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    let (a, b) = (*v.get(lo)?, *v.get(hi)?);
    let d = b - a;
    // numpy's _lerp: from the nearer end, so t = 1 gives exactly b.
    Some(if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    })
}

/// The two-sided `level` percentile interval, e.g. level 0.95 gives the 2.5th and 97.5th
/// percentiles.
pub fn percentile_interval(values: &[f64], level: f64) -> Option<[f64; 2]> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let tail = (1.0 - level) / 2.0 * 100.0;
    Some([
        sorted_percentile(&v, tail)?,
        sorted_percentile(&v, 100.0 - tail)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_stream() {
        // Reference outputs of xoshiro256++ from the state {1, 2, 3, 4} (the first two follow
        // by hand from the definition: rotl(1 + 4, 23) + 1, then rotl(7 + 6 << 45, 23) + 7).
        let mut r = Xoshiro256pp::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [41943041, 58720359, 3588806011781223, 3591011842654386]
        );
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Xoshiro256pp::seed_from_u64(7);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            let v = r.below(7) as usize;
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }

    #[test]
    fn clusters_group_by_first_appearance() {
        let c = Clusters::from_patients(&[Some("b"), Some("a"), Some("b"), None]);
        assert_eq!(c.members, vec![vec![0, 2], vec![1], vec![3]]);
        assert!(c.is_clustered());
        let mut r = Xoshiro256pp::seed_from_u64(3);
        let mut w = Vec::new();
        c.resample(&mut r, &mut w);
        // Both scans of patient b are always drawn together.
        assert_eq!(w[0], w[2]);
        assert_eq!(
            w.iter().sum::<u32>() as usize,
            w[0] as usize * 2 + w[1] as usize + w[3] as usize
        );
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 50, 97.5]) = [1.075, 2.5, 3.925]
        let v = [4.0, 1.0, 3.0, 2.0];
        assert!((percentile(&v, 2.5).unwrap() - 1.075).abs() < 1e-12);
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 97.5).unwrap() - 3.925).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[2.0], 97.5), Some(2.0));
    }

    #[test]
    fn resampler_gives_up_on_a_single_class() {
        let labels = [true, true];
        let c = Clusters::singletons(2);
        let mut r = Resampler::new(&c, &labels, 1);
        let mut w = Vec::new();
        assert!(matches!(r.next(&mut w), Err(EvalError::Bootstrap(_))));
    }
}
