//! Small deterministic random numbers for the phantoms.
//!
//! The phantom must be byte-identical for a seed on every machine and thread count, so it uses
//! SplitMix64 (Steele et al., 2014) for the few sequential draws (anatomy, vessels, lesions) and a
//! counter-based hash of (seed, voxel) for per-voxel noise, which any thread can evaluate alone.

/// The SplitMix64 output function: a 64-bit mixing bijection.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a 64-bit hash.
#[inline]
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// An approximately standard-normal number from a 64-bit hash: the sum of four 16-bit uniforms
/// (Irwin-Hall), centred and scaled to unit variance. Cheaper than Box-Muller per voxel and
/// indistinguishable for CT noise.
#[inline]
pub(crate) fn normal_from_hash(h: u64) -> f32 {
    let s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
    // Each term has mean 32767.5 and variance (65536^2 - 1) / 12.
    let centred = s as f32 - 4.0 * 32767.5;
    centred * (3.0f32.sqrt() / 65536.0)
}

/// Hash of a stream key and a counter, for per-voxel and per-lattice-point values.
#[inline]
pub(crate) fn hash2(key: u64, i: u64) -> u64 {
    mix64(key ^ mix64(i.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// A sequential SplitMix64 generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in [lo, hi).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A uniformly distributed unit vector.
    pub(crate) fn unit_vector(&mut self) -> [f64; 3] {
        loop {
            let v = [self.normal(), self.normal(), self.normal()];
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if n > 1e-9 {
                return [v[0] / n, v[1] / n, v[2] / n];
            }
        }
    }

    /// A key for a counter-based noise stream, derived from this generator.
    pub(crate) fn stream_key(&mut self) -> u64 {
        self.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_from_hash_has_unit_variance() {
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for i in 0..n {
            let v = normal_from_hash(hash2(7, i)) as f64;
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn splitmix_is_reproducible_and_uniform() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let va: Vec<f64> = (0..1000).map(|_| a.uniform()).collect();
        let vb: Vec<f64> = (0..1000).map(|_| b.uniform()).collect();
        assert_eq!(va, vb);
        let mean = va.iter().sum::<f64>() / va.len() as f64;
        assert!((mean - 0.5).abs() < 0.05);
        assert!(va.iter().all(|v| (0.0..1.0).contains(v)));
    }
}
