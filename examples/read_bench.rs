//! Times `ctgrade::volume::read` on one file or DICOM series folder (release build), for
//! comparison with `tools/bench_read.py` (SimpleITK.ReadImage) and `tools/bench_dicom_read.py`
//! (SimpleITK's ImageSeriesReader) on the same input.
//!
//! `cargo run --release --example read_bench -- FILE [RUNS]` prints the time of every run and
//! the median, in seconds. With `--write OUT` it instead reads FILE and writes it to OUT (any
//! supported format, same element type), to cross-check the writer against other readers.

use std::path::Path;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: read_bench FILE [RUNS] | FILE --write OUT"))?;
    if args.get(1).map(String::as_str) == Some("--write") {
        let out = args
            .get(2)
            .ok_or_else(|| anyhow::anyhow!("--write needs an output path"))?;
        let (vol, ty) = ctgrade::volume::read_with_type(Path::new(file))?;
        ctgrade::volume::write(Path::new(out), &vol, ty)?;
        return Ok(());
    }
    let runs: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let mut times = Vec::with_capacity(runs);
    let mut checksum = 0.0f64;
    for _ in 0..runs {
        let t = Instant::now();
        let vol = ctgrade::volume::read(Path::new(file))?;
        times.push(t.elapsed().as_secs_f64());
        checksum = vol.data.iter().step_by(4099).map(|&v| v as f64).sum();
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let runs_s: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!(
        "ctgrade::volume::read {file}: runs [{}] s, median {median:.3} s (checksum {checksum})",
        runs_s.join(", ")
    );
    Ok(())
}
