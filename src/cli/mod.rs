//! The `ctgrade` command line: one file per subcommand, each holding its clap arguments and the
//! glue that turns them into the library's options and prints the result. Nothing below `cli`
//! depends on clap.

mod bench;
mod convert;
mod device;
mod ensemble;
mod forward;
mod inflate;
mod info;
mod merge;
mod preprocess;
mod run;
mod segment;
mod serve;
mod synth;
mod train;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ctgrade::device::{DeviceChoice, Precision};

/// COVID-19 grading on chest CT (grand-challenge.org algorithm).
#[derive(Parser)]
#[command(name = "ctgrade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grade every CT scan in the input folder (the grand-challenge algorithm, exec mode).
    Run(run::RunArgs),
    /// Serve grand-challenge's invoke API: load the ensemble once, then grade the input folder on
    /// each POST /invoke exactly as `run` does (GET /health answers 200 once loaded).
    Serve(serve::ServeArgs),
    /// Print size, spacing, origin, direction, element type and min/max/mean of a volume
    /// (.mha, .mhd, .nii, .nii.gz) as one JSON object.
    Info(info::InfoArgs),
    /// Run one network on an input tensor and print its raw outputs as JSON.
    Forward(forward::ForwardArgs),
    /// Time a network's forward pass on a random input and report peak memory, as JSON.
    Bench(bench::BenchArgs),
    /// Draw a synthetic chest CT phantom (int16 HU) with a chosen CO-RADS lesion burden.
    Synth(synth::SynthArgs),
    /// Preprocess a CT as the paper does; writes input.mha, lung_mask.mha, preprocess.json.
    Preprocess(preprocess::PreprocessArgs),
    /// Convert a PyTorch checkpoint (.pth/.pt/.bin) or safetensors file to the engine's names, checked
    /// against the architecture; prints a JSON report.
    Convert(convert::ConvertArgs),
    /// Inflate 2-D weights (e.g. torchvision's ImageNet DenseNet) to the 3-D network (I3D); prints a
    /// JSON report.
    Inflate(inflate::InflateArgs),
    /// Create or check an ensemble (a folder of member weights with its manifest).
    #[command(subcommand)]
    Ensemble(ensemble::EnsembleCommand),
    /// Train an ensemble with the paper's recipe from labelled CT scans.
    Train(train::TrainArgs),
    /// Segment CT scans with an nnU-Net v2 trained-model folder, as nnunetv2's predictor does:
    /// <case>.mha labels (and with --probabilities <case>-probabilities.mha) per scan.
    Segment(segment::SegmentArgs),
    /// Combine the summaries of shards (summary-shard-I-of-N.json) or batch runs (summary.json)
    /// into one summary.json and summary.csv; a missing shard or a case found twice is an error.
    Merge(merge::MergeArgs),
    /// Show where the networks would run (--device auto|cpu|cuda[:N]) and why, as one JSON
    /// object; fails when a CUDA device asked for cannot be used.
    Device(device::DeviceArgs),
}

impl Command {
    /// The device the command runs networks on, if it runs any.
    fn device(&self) -> Option<DeviceChoice> {
        match self {
            Self::Run(args) => Some(args.device),
            Self::Serve(args) => Some(args.run.device),
            Self::Forward(args) => Some(args.device),
            Self::Bench(args) => Some(args.device),
            Self::Train(args) => Some(args.device),
            Self::Segment(args) => Some(args.device),
            Self::Device(args) => Some(args.device),
            _ => None,
        }
    }
}

/// Runs the parsed command; `Ok` carries the exit status (`run` fails when a case failed).
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    // Why CUDA is not used, when a CUDA build beside this one cannot run.
    let fallback = match cli.command.device() {
        Some(choice) => device::hand_over(choice)?,
        None => None,
    };
    match cli.command {
        Command::Run(args) => return run::run(args),
        Command::Serve(args) => return serve::serve(args),
        Command::Info(args) => info::info(&args)?,
        Command::Forward(args) => forward::forward(args)?,
        Command::Bench(args) => bench::bench(args)?,
        Command::Synth(args) => synth::synth(args)?,
        Command::Preprocess(args) => preprocess::preprocess(args)?,
        Command::Convert(args) => convert::convert(args)?,
        Command::Inflate(args) => inflate::inflate(args)?,
        Command::Ensemble(cmd) => ensemble::ensemble(cmd)?,
        Command::Train(args) => {
            train::train(&args)?;
        }
        Command::Merge(args) => merge::merge(&args)?,
        Command::Segment(args) => segment::segment(args)?,
        Command::Device(args) => return device::device(&args, fallback),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one line on stdout; a closed pipe (`| head`) is not an error.
fn emit(line: &str) -> Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Reads a JSON file into `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// `--precision`: the floating-point format the networks compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrecisionArg {
    /// 32-bit IEEE floats (the reference).
    F32,
    /// bfloat16: f32's range, 8 significant bits.
    Bf16,
    /// IEEE half precision: 11 significant bits, range up to 65504.
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}
