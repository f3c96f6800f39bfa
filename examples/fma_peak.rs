//! The FMA peak of one core, to quote kernels as a fraction of it:
//!
//!   cargo run --release --example fma_peak [-- THREADS]
//!
//! Each thread runs 12 independent chains of 256-bit `vfmadd231ps` (enough to cover the FMA
//! latency on current x86 cores) for about a second; prints GFLOP/s per thread and in total, best
//! of 3 runs. AVX2 + FMA only (AVX-512 parts run the same code: on Zen 4 two 256-bit FMAs per
//! cycle are the peak either way).

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(1e-7));
    let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut out = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("this CPU has no AVX2 + FMA");
            std::process::exit(1);
        }
        let threads: usize = std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let iters = 300_000_000u64;
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let sums: Vec<f32> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    // SAFETY: AVX2 and FMA were detected above.
                    .map(|_| s.spawn(move || unsafe { chains(iters) }))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
            });
            let gflops =
                (threads as u64 * iters * 12 * 16) as f64 / t.elapsed().as_secs_f64() / 1e9;
            // Printing the sums keeps the chains from being optimised away.
            eprintln!(
                "{gflops:.1} GFLOP/s (checksum {:.3e})",
                sums.iter().sum::<f32>()
            );
            best = best.max(gflops);
        }
        println!(
            "{{\"threads\": {threads}, \"best_gflops\": {best:.1}, \"per_thread_gflops\": {:.1}}}",
            best / threads as f64
        );
    }
}
