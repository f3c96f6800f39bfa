//! The FMA peak of the cores, to quote kernels as a fraction of it:
//!
//!   cargo run --release --example fma_peak [-- THREADS]
//!
//! Each thread runs 12 independent chains of `vfmadd231ps` (enough to cover the FMA latency on
//! current x86 cores) for about a second; prints GFLOP/s in total and per thread, best of 3 runs,
//! for 256-bit vectors (AVX2 + FMA, what the AVX2 kernels use) and, where the CPU has AVX-512,
//! 512-bit ones (Zen 4 splits them into two 256-bit halves, so both give the same peak there;
//! cores with full-width AVX-512 units reach twice the 256-bit figure).

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains256(iters: u64) -> f32 {
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(1e-7));
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
    _mm512_reduce_add_ps(sum)
}

/// Best of 3 runs of `threads` threads each running `chains` (`lanes` floats per vector), in
/// GFLOP/s.
#[cfg(target_arch = "x86_64")]
fn peak(threads: usize, lanes: u64, chains: fn(u64) -> f32) -> f64 {
    let iters = 300_000_000u64 * 8 / lanes;
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || chains(iters)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
        });
        let gflops =
            (threads as u64 * iters * 12 * lanes * 2) as f64 / t.elapsed().as_secs_f64() / 1e9;
        // Printing the sums keeps the chains from being optimised away.
        eprintln!(
            "{}-bit: {gflops:.1} GFLOP/s (checksum {:.3e})",
            lanes * 32,
            sums.iter().sum::<f32>()
        );
        best = best.max(gflops);
    }
    best
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
        // SAFETY: AVX2 and FMA were detected above.
        let best = peak(threads, 8, |n| unsafe { chains256(n) });
        let best512 = is_x86_feature_detected!("avx512f")
            // SAFETY: AVX-512F was detected.
            .then(|| peak(threads, 16, |n| unsafe { chains512(n) }));
        println!(
            "{{\"threads\": {threads}, \"best_gflops\": {best:.1}, \"per_thread_gflops\": {:.1}, \
             \"best_gflops_512\": {}}}",
            best / threads as f64,
            best512.map_or("null".into(), |g| format!("{g:.1}"))
        );
    }
}
