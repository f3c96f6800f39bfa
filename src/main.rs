//! The `ctgrade` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use ctgrade::device::{self, DeviceChoice, Precision};
use ctgrade::ensemble::{self, Ensemble, Manifest};
use ctgrade::gc::memory;
use ctgrade::gc::merge;
use ctgrade::gc::run::{self as gc_run, RunOptions};
use ctgrade::gc::shard::ShardArg;
use ctgrade::grading::Head;
use ctgrade::model::Arch;
use ctgrade::preprocess::InputSpec;

/// COVID-19 grading on chest CT (grand-challenge.org algorithm).
#[derive(Parser)]
#[command(name = "ctgrade", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grade every CT scan in the input folder (the grand-challenge algorithm, exec mode).
    Run(RunArgs),
    /// Serve grand-challenge's invoke API: load the ensemble once, then grade the input folder on
    /// each POST /invoke exactly as `run` does (GET /health answers 200 once loaded).
    Serve(ServeArgs),
    /// Print size, spacing, origin, direction, element type and min/max/mean of a volume
    /// (.mha, .mhd, .nii, .nii.gz) as one JSON object.
    Info {
        /// The volume file.
        file: PathBuf,
    },
    /// Run one network on an input tensor and print its raw outputs as JSON.
    Forward(ctgrade::model::cli::ForwardArgs),
    /// Time a network's forward pass on a random input and report peak memory, as JSON.
    Bench(ctgrade::model::cli::BenchArgs),
    /// Draw a synthetic chest CT phantom (int16 HU) with a chosen CO-RADS lesion burden.
    Synth(ctgrade::synth::SynthArgs),
    /// Preprocess a CT as the paper does; writes input.mha, lung_mask.mha, preprocess.json.
    Preprocess(ctgrade::preprocess::cli::PreprocessArgs),
    /// Convert a PyTorch checkpoint (.pth/.pt/.bin) or safetensors file to the engine's names, checked
    /// against the architecture; prints a JSON report.
    Convert(ctgrade::model::convert::ConvertArgs),
    /// Inflate 2-D weights (e.g. torchvision's ImageNet DenseNet) to the 3-D network (I3D); prints a
    /// JSON report.
    Inflate(ctgrade::model::inflate::InflateArgs),
    /// Create or check an ensemble (a folder of member weights with its manifest).
    #[command(subcommand)]
    Ensemble(EnsembleCommand),
    /// Train an ensemble with the paper's recipe from labelled CT scans.
    Train(ctgrade::train::cli::TrainArgs),
    /// Combine the summaries of shards (summary-shard-I-of-N.json) or batch runs (summary.json)
    /// into one summary.json and summary.csv; a missing shard or a case found twice is an error.
    Merge {
        /// Folders holding the summaries (shards may share one).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where to write summary.json and summary.csv.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Input folder: grand-challenge layout (images/ct/*.mha, inputs.json), or scans directly in it.
    #[arg(long, default_value = "/input")]
    input: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "/output")]
    output: PathBuf,
    /// Ensemble folder (with ensemble.json); default: /opt/ml/model, then the built-in weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the networks run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Compute precision of the networks: f32 (the reference), or bf16/f16 on a GPU (see the
    /// README for their measured accuracy).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Also write each case's lung mask to images/lung-segmentation/<case>.mha.
    #[arg(long)]
    lung_mask: bool,
    /// Also write the standard deviation of the members' probabilities to
    /// probability-covid-19-spread.json.
    #[arg(long)]
    spread: bool,
    /// Also write a Grad-CAM heat map of each case (float32 in [0, 1], on the CT's grid) to
    /// images/covid-19-heat-map/<case>.mha.
    #[arg(long)]
    heat_map: bool,
    /// Also write report.html: every case's answers, members, pictures and preprocessing facts.
    #[arg(long)]
    report: bool,
    /// Largest scan accepted, in voxels; a larger one fails before it is read. Default: 2000 Mi
    /// (e.g. 1024 x 1024 x 2000, which fits a 16 GiB machine), lowered to fit the memory budget:
    /// the smallest of GRAND_CHALLENGE_COMPONENT_MAX_MEMORY_MB, RLIMIT_DATA, RLIMIT_AS and the
    /// cgroup's memory limit (see docs/robustness.md).
    #[arg(long, env = "CTGRADE_MAX_VOXELS")]
    max_voxels: Option<usize>,
    /// Grade only shard I of N (0 <= I < N) of the cases, split by a stable hash of their names;
    /// auto/N takes I from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID.
    /// Writes summary-shard-I-of-N.json; `ctgrade merge` combines the shards.
    #[arg(long, value_name = "I/N")]
    shard: Option<ShardArg>,
    /// Skip cases whose answers an earlier run left complete and valid in the output folder, so a
    /// restarted task continues where it stopped.
    #[arg(long)]
    skip_done: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    listen: gc_invoke::Listen,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum EnsembleCommand {
    /// Write a manifest for member weight files (copied into --out, with their sha256).
    New {
        /// Architecture of every member.
        #[arg(long)]
        arch: Arch,
        /// Network configuration JSON: fields overriding the architecture's hyper-parameters
        /// (as in `ctgrade forward --config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output head the members were trained with.
        #[arg(
            long,
            value_parser = PossibleValuesParser::new(Head::ALL.map(Head::name))
                .try_map(|s| s.parse::<Head>()),
            default_value = "continuous"
        )]
        head: Head,
        /// Input specification JSON (default: the paper's 1.5 mm, 240x240, 128 slices).
        #[arg(long)]
        input_spec: Option<PathBuf>,
        /// Member safetensors files (MONAI parameter names; see `ctgrade convert`).
        #[arg(long, num_args = 1.., required = true)]
        members: Vec<PathBuf>,
        /// Name for logs.
        #[arg(long, default_value = "ensemble")]
        name: String,
        /// What the weights are and where they come from.
        #[arg(long, default_value = "")]
        description: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an ensemble folder (hashes, tensor names and shapes) without running it.
    Check {
        /// The folder holding ensemble.json.
        dir: PathBuf,
    },
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// Opens the ensemble and the device and derives the run's options and limits; with
/// `keep_loaded` the members are built once and kept (`serve`), and their weights count against
/// the memory budget.
fn prepare(args: &RunArgs, keep_loaded: bool) -> Result<(Ensemble, Device, RunOptions)> {
    let dir = ensemble::resolve_weights(args.weights.as_deref())?;
    let mut ensemble = Ensemble::open(&dir)?;
    eprintln!("ctgrade: weights from {}", dir.display());
    // Refused before any case: a heat map asked for cannot be made for these networks.
    let arch = ensemble.manifest.network.arch;
    if args.heat_map && !ctgrade::heatmap::supported(arch) {
        return Err(ctgrade::heatmap::HeatMapError::Unsupported(arch.to_string()).into());
    }
    let device = args.device.open()?;
    eprintln!(
        "ctgrade: running on {} in {}",
        device::describe(&device),
        args.precision
    );
    if keep_loaded {
        ensemble.load_members(&device, args.precision)?;
        eprintln!(
            "ctgrade: {} member(s) loaded ({} MiB of weights)",
            ensemble.len(),
            ensemble.loaded_bytes() >> 20
        );
    }
    let budget = memory::budget();
    let case_bytes = budget
        .as_ref()
        .map(|b| b.bytes.saturating_sub(ensemble.loaded_bytes()));
    let opts = RunOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        lung_mask: args.lung_mask,
        limits: memory::read_limits(args.max_voxels, case_bytes),
        max_grid_voxels: memory::max_grid_voxels(case_bytes),
        precision: args.precision,
        shard: args
            .shard
            .map(|s| s.resolve(|name| std::env::var(name).ok()))
            .transpose()?,
        skip_done: args.skip_done,
        spread: args.spread,
        heat_map: args.heat_map,
        report: args.report,
    };
    match &budget {
        Some(limit) => eprintln!(
            "ctgrade: memory budget {limit}; scans of up to {} voxels and resampled grids of up \
             to {} voxels accepted",
            opts.limits.max_voxels, opts.max_grid_voxels
        ),
        None => eprintln!(
            "ctgrade: no memory limit found; scans of up to {} voxels accepted",
            opts.limits.max_voxels
        ),
    }
    Ok((ensemble, device, opts))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let (ensemble, device, opts) = prepare(&args, false)?;
    let report = gc_run::run(&opts, &ensemble, &device)?;
    match report.failure_line() {
        None => Ok(ExitCode::SUCCESS),
        Some(line) => {
            // The platform shows the last stderr line: make it the reason.
            eprintln!("{line}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let listener = args.listen.bind()?;
    let run_args = args.run;
    gc_invoke::serve(listener, "ctgrade serve", move || {
        let (ensemble, device, opts) = prepare(&run_args, true).map_err(|e| format!("{e:#}"))?;
        if !device.is_cpu() {
            // Kernel loading, PTX compilation and cuDNN set-up happen on first use: pay them
            // before /health says ready, not in the first case's time limit.
            let t = std::time::Instant::now();
            let shape: Vec<usize> = std::iter::once(1)
                .chain(ensemble.manifest.input.shape())
                .collect();
            let input = Tensor::zeros(shape, DType::F32, &Device::Cpu)
                .map_err(|e| format!("warm-up: {e}"))?;
            ensemble
                .predict(&input, &device, opts.precision, |_, _| {})
                .map_err(|e| format!("warm-up: {e}"))?;
            eprintln!(
                "ctgrade: {} warmed up in {:.1} s",
                device::describe(&device),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(move || {
            let report = gc_run::run(&opts, &ensemble, &device).map_err(|e| e.to_string())?;
            report.failure_line().map_or(Ok(()), Err)
        })
    })?;
    eprintln!("ctgrade serve: stopped");
    Ok(ExitCode::SUCCESS)
}

fn ensemble_command(cmd: EnsembleCommand) -> Result<()> {
    match cmd {
        EnsembleCommand::New {
            arch,
            config,
            head,
            input_spec,
            members,
            name,
            description,
            out,
        } => {
            let network = ctgrade::model::cli::resolve_config(
                arch,
                3,
                head.num_outputs(),
                config.as_deref(),
            )?;
            let input = match &input_spec {
                Some(path) => read_json(path)?,
                None => InputSpec::default(),
            };
            let manifest = Manifest {
                name,
                description,
                demonstration: false,
                network,
                head,
                input,
                members: Vec::new(),
            };
            let manifest = ensemble::create(&out, manifest, &members)?;
            eprintln!(
                "wrote {} with {} member(s)",
                out.join(ensemble::MANIFEST_FILE).display(),
                manifest.members.len()
            );
        }
        EnsembleCommand::Check { dir } => {
            let e = Ensemble::open(&dir)?;
            emit(&serde_json::to_string_pretty(&e.manifest)?)?;
            eprintln!(
                "{}: {} member(s), all checks passed",
                dir.display(),
                e.len()
            );
        }
    }
    Ok(())
}

/// Prints one line on stdout; a closed pipe (`| head`) is not an error.
fn emit(line: &str) -> Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => return run(args),
        Command::Serve(args) => return serve(args),
        Command::Info { file } => emit(&serde_json::to_string(&ctgrade::volume::info::info(
            &file,
        )?)?)?,
        Command::Forward(args) => emit(&ctgrade::model::cli::forward(&args)?)?,
        Command::Bench(args) => emit(&serde_json::to_string(&ctgrade::model::cli::bench(&args)?)?)?,
        Command::Synth(args) => ctgrade::synth::run(&args)?,
        Command::Preprocess(args) => emit(&serde_json::to_string(
            &ctgrade::preprocess::cli::run(&args)?,
        )?)?,
        Command::Convert(args) => emit(&serde_json::to_string_pretty(
            &ctgrade::model::convert::convert(&args)?,
        )?)?,
        Command::Inflate(args) => emit(&serde_json::to_string_pretty(
            &ctgrade::model::inflate::inflate(&args)?,
        )?)?,
        Command::Ensemble(cmd) => ensemble_command(cmd)?,
        Command::Train(args) => {
            ctgrade::train::cli::run(&args)?;
        }
        Command::Merge { dirs, output } => {
            let merged = merge::merge(&dirs, &output)?;
            let failed = merged.cases.iter().filter(|c| c.error.is_some()).count();
            eprintln!(
                "merged {} summaries: {} case(s), {failed} failed; wrote {}",
                merged.sources.len(),
                merged.cases.len(),
                output.join(ctgrade::gc::outputs::SUMMARY_FILE).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line, causes joined: grand-challenge shows users the last line of stderr.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
