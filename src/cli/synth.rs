//! `ctgrade synth`: a synthetic chest CT phantom.

use std::path::PathBuf;

use anyhow::Result;

use ctgrade::synth::{self, SynthOptions};

/// Arguments of `ctgrade synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output CT (.mha, int16 HU).
    #[arg(long)]
    out: PathBuf,
    /// Random seed: the same seed gives a byte-identical file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CO-RADS category 1-5 (lesion burden).
    #[arg(long = "co-rads")]
    co_rads: u8,
    /// Grid size X,Y,Z in voxels.
    #[arg(long, value_parser = parse_size, default_value = "256,256,160")]
    size: [usize; 3],
    /// Voxel spacing SX,SY,SZ in mm.
    #[arg(long, value_parser = parse_spacing, default_value = "1.4,1.4,2.0")]
    spacing: [f64; 3],
    /// Also write the true lung mask here (.mha, uint8 0/1).
    #[arg(long = "lung-mask")]
    lung_mask: Option<PathBuf>,
    /// Also write the true lesion mask here (.mha, uint8 0/1: lung voxels at least half lesion).
    #[arg(long = "lesion-mask")]
    lesion_mask: Option<PathBuf>,
    /// Also write the lesion labels here (.mha, uint8: 1 ground glass, 2 consolidation, 0
    /// elsewhere), e.g. for training a lesion segmenter.
    #[arg(long = "lesion-labels")]
    lesion_labels: Option<PathBuf>,
}

/// Draws the phantom and writes the requested files.
pub fn synth(args: SynthArgs) -> Result<()> {
    Ok(synth::run(&SynthOptions {
        out: args.out,
        seed: args.seed,
        co_rads: args.co_rads,
        size: args.size,
        spacing: args.spacing,
        lung_mask: args.lung_mask,
        lesion_mask: args.lesion_mask,
        lesion_labels: args.lesion_labels,
    })?)
}

/// Parses `A,B,C` into three numbers.
fn parse_triple<T: std::str::FromStr>(s: &str) -> Result<[T; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!("expected three comma-separated numbers, got '{s}'"));
    }
    let mut out = Vec::with_capacity(3);
    for p in parts {
        out.push(
            p.parse::<T>()
                .map_err(|_| format!("'{p}' is not a valid number in '{s}'"))?,
        );
    }
    out.try_into()
        .map_err(|_| format!("expected three numbers, got '{s}'"))
}

fn parse_size(s: &str) -> Result<[usize; 3], String> {
    parse_triple(s)
}

fn parse_spacing(s: &str) -> Result<[f64; 3], String> {
    parse_triple(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triples() {
        assert_eq!(parse_size("1,2,3"), Ok([1, 2, 3]));
        assert_eq!(parse_spacing("0.5, 1,2.5"), Ok([0.5, 1.0, 2.5]));
        assert!(parse_size("1,2").is_err());
        assert!(parse_size("1,x,3").is_err());
    }
}
