//! Counter-based random numbers for training.
//!
//! Every random choice of a run is a pure function of the member's seed and a counter (the step,
//! the epoch, the voxel), so an interrupted run that resumes at step `t` draws exactly what an
//! uninterrupted one draws at step `t`, and parallel loops give the same numbers on any thread
//! count. The only state a checkpoint needs is the seed and the step.

/// The SplitMix64 output function: a 64-bit mixing bijection (Steele et al., 2014).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a key and a counter.
#[inline]
pub fn hash2(key: u64, i: u64) -> u64 {
    mix64(key ^ mix64(i.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// Uniform in [0, 1) from 64 random bits.
#[inline]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal from two hashes (Box-Muller).
#[inline]
pub fn normal_from_hashes(a: u64, b: u64) -> f64 {
    let u = unit(a).max(1e-300);
    let v = unit(b);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// An approximately standard-normal number from one hash: the sum of its four 16-bit parts
/// (Irwin-Hall), centred and scaled to unit variance. Cheap enough for per-voxel noise.
#[inline]
pub fn fast_normal(h: u64) -> f32 {
    let s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
    // Each part has mean 32767.5 and variance (65536^2 - 1) / 12.
    (s as f32 - 4.0 * 32767.5) * (3.0f32.sqrt() / 65536.0)
}

/// A sequential SplitMix64 generator, started from a key (e.g. `hash2(seed, step)`).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `key`.
    pub fn new(key: u64) -> Self {
        Self { state: key }
    }

    /// A generator for stream `stream` of `seed` (independent streams for the same seed).
    pub fn stream(seed: u64, stream: u64) -> Self {
        Self::new(hash2(mix64(seed), stream))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.next_u64(), self.next_u64());
        normal_from_hashes(a, b)
    }

    /// Uniform integer in `0..n` (`n > 0`; 0 for `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for shuffling data sets of any realistic size.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Rng::stream(7, 1), |r, _: u64| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Rng::stream(7, 1), |r, _: u64| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Rng::stream(7, 2), |r, _: u64| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "mean {m} var {v}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..50).collect();
        Rng::new(9).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
