//! Deterministic random numbers: the one generator of synthetic phantoms and training.
//!
//! Everything random in ctgrade must be reproducible bit for bit on every machine and thread
//! count: a phantom is byte-identical for a seed (test inputs are committed), and a training run
//! that resumes at step `t` draws exactly what an uninterrupted one draws there. So every draw
//! is a pure function of a key and a counter:
//!
//! - [`Rng`], a sequential SplitMix64 generator (Steele et al., 2014), for the few ordered draws
//!   (a phantom's anatomy and lesions, a step's sampling and augmentation parameters); keyed with
//!   [`Rng::stream`] or `Rng::new(hash2(seed, counter))`;
//! - [`hash2`] of (key, counter), for per-voxel values that any thread can evaluate alone, turned
//!   into numbers with [`unit()`] (uniform) or [`fast_normal`] (approximately normal).
//!
//! Two standard-normal draws exist because committed phantoms and training fixtures depend on
//! each: [`Rng::normal`] (training: Box-Muller on `u`, `v`) and [`Rng::normal_complement`]
//! (phantoms: Box-Muller on `1 - u`, `v`). Both use two consecutive 64-bit draws.

/// The SplitMix64 output function: a 64-bit mixing bijection.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a stream key and a counter, for per-voxel and per-lattice-point values.
#[inline]
pub fn hash2(key: u64, i: u64) -> u64 {
    mix64(key ^ mix64(i.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// Uniform in [0, 1) from 64 random bits.
#[inline]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal from two hashes (Box-Muller on `unit(a)`, `unit(b)`).
#[inline]
pub fn normal_from_hashes(a: u64, b: u64) -> f64 {
    let u = unit(a).max(1e-300);
    let v = unit(b);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// An approximately standard-normal number from one hash: the sum of its four 16-bit parts
/// (Irwin-Hall), centred and scaled to unit variance. Cheaper than Box-Muller per voxel and
/// indistinguishable for CT noise.
#[inline]
pub fn fast_normal(h: u64) -> f32 {
    let s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
    // Each part has mean 32767.5 and variance (65536^2 - 1) / 12.
    (s as f32 - 4.0 * 32767.5) * (3.0f32.sqrt() / 65536.0)
}

/// A sequential SplitMix64 generator, started from a key (a seed, or e.g. `hash2(seed, step)`).
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

    /// A key for a counter-based stream ([`hash2`]), derived from this generator.
    pub fn stream_key(&mut self) -> u64 {
        self.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal: [`normal_from_hashes`] of the next two draws (training's stream).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.next_u64(), self.next_u64());
        normal_from_hashes(a, b)
    }

    /// Standard normal by Box-Muller on `1 - u` (in (0, 1], so the logarithm is finite) and `v`
    /// from the next two draws (the phantoms' stream).
    pub fn normal_complement(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A uniformly distributed unit vector (from [`Rng::normal_complement`]).
    pub fn unit_vector(&mut self) -> [f64; 3] {
        loop {
            let v = [
                self.normal_complement(),
                self.normal_complement(),
                self.normal_complement(),
            ];
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if n > 1e-9 {
                return [v[0] / n, v[1] / n, v[2] / n];
            }
        }
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
    fn fast_normal_has_unit_variance() {
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for i in 0..n {
            let v = fast_normal(hash2(7, i)) as f64;
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn uniform_is_reproducible_and_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let va: Vec<f64> = (0..1000).map(|_| a.uniform()).collect();
        let vb: Vec<f64> = (0..1000).map(|_| b.uniform()).collect();
        assert_eq!(va, vb);
        let mean = va.iter().sum::<f64>() / va.len() as f64;
        assert!((mean - 0.5).abs() < 0.05);
        assert!(va.iter().all(|v| (0.0..1.0).contains(v)));
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, stream| {
            let mut r = Rng::stream(seed, stream);
            (0..4).map(|_| r.next_u64()).collect::<Vec<u64>>()
        };
        assert_eq!(draw(7, 1), draw(7, 1));
        assert_ne!(draw(7, 1), draw(7, 2));
    }

    #[test]
    fn both_normals_have_unit_moments() {
        for complement in [false, true] {
            let mut r = Rng::new(3);
            let xs: Vec<f64> = (0..20_000)
                .map(|_| {
                    if complement {
                        r.normal_complement()
                    } else {
                        r.normal()
                    }
                })
                .collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
            assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "mean {m} var {v}");
        }
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
