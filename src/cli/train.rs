//! `ctgrade train`: train an ensemble with the paper's recipe.

use std::path::PathBuf;

use ctgrade::device::DeviceChoice;
use ctgrade::grading::Head;
use ctgrade::model::probe::resolve_config;
use ctgrade::model::Arch;
use ctgrade::preprocess::InputSpec;
use ctgrade::train::augment::AugmentConfig;
use ctgrade::train::optim::AdamConfig;
use ctgrade::train::{
    GatherOptions, LesionSource, MemberArg, Recipe, TrainError, TrainOptions, TrainReport,
};

/// `ctgrade train`: train an ensemble with the paper's recipe.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Folder of scans `<case>.mha|.mhd|.nii|.nii.gz` (directly or in images/ct/).
    #[arg(long, required_unless_present = "gather")]
    pub data: Option<PathBuf>,
    /// Label CSV with a header: case,co_rads[,patient][,lesion].
    #[arg(long, required_unless_present = "gather")]
    pub labels: Option<PathBuf>,
    /// Architecture: any of the registry's (3-D and 2-D DenseNets, ResNets and Inception-v1,
    /// covnet).
    #[arg(long, required_unless_present = "gather")]
    pub arch: Option<Arch>,
    /// Network configuration JSON: fields overriding the architecture's hyper-parameters (as in
    /// `ctgrade forward --config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input specification JSON (default: the paper's 1.5 mm, 240x240, 128 slices).
    #[arg(long)]
    pub input_spec: Option<PathBuf>,
    /// Output folder: ensemble.json and members, train-log.csv/json, loss.svg, checkpoints/, cache/.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of member 0; member i uses seed + i (split, initialisation, sampling, augmentation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ensemble members K (default 1). With --gather: the members to gather (default: as the
    /// member runs recorded it).
    #[arg(long, value_name = "K")]
    pub members: Option<usize>,
    /// Train member I alone (0 <= I < K), as one task of a cluster run: exactly the seed, split
    /// and schedule it gets in a single run, into the shared --out, without the manifest. auto
    /// takes I from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID.
    #[arg(long, value_name = "I|auto")]
    pub member: Option<MemberArg>,
    /// Write --out's ensemble.json and combined logs once every member 0..K-1 trained with
    /// --member is there (fails naming a missing, unfinished, duplicated or inconsistent one). The
    /// training options are read from the member runs.
    #[arg(long, conflicts_with_all = [
        "data", "labels", "arch", "config", "input_spec", "member", "resume", "init", "seed",
    ])]
    pub gather: bool,
    /// Output head.
    #[arg(long, value_parser = |s: &str| s.parse::<Head>(), default_value = "continuous")]
    pub head: Head,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Final learning rate: decay from --lr along a half cosine over --max-steps (default:
    /// constant, as in the paper).
    #[arg(long)]
    pub lr_final: Option<f64>,
    /// Cases per batch.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Most batches per member.
    #[arg(long, default_value_t = 20_000)]
    pub max_steps: usize,
    /// Early stopping patience in batches without a better validation QWK (0: off).
    #[arg(long, default_value_t = 2_000)]
    pub patience: usize,
    /// Validate every this many batches.
    #[arg(long, default_value_t = 100)]
    pub val_every: usize,
    /// Fraction of patients held out for validation, stratified by CO-RADS (0: none).
    #[arg(long, default_value_t = 0.25)]
    pub val_fraction: f64,
    /// Checkpoint every this many batches.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Initial weights (safetensors, MONAI or torchvision names; e.g. inflated 2-D weights).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Turn augmentation off.
    #[arg(long)]
    pub no_augment: bool,
    /// Gradient checkpointing: recompute each segment's activations (a dense layer, a residual
    /// or mixed block) in the backward pass instead of keeping them (less memory, about one more
    /// forward pass of compute).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// Wall-clock budget in minutes for the whole run (members share what is left); a member
    /// stopped by it keeps its best weights. Unlike the other limits, it is not reproducible.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// Do not cache preprocessed inputs in --out/cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Compute the lesion map of each case without one (no `lesion` column) with this nnU-Net
    /// model folder, as `ctgrade run` does; it is copied into --out/lesion and the ensemble's
    /// manifest names it. The input specification's channels must be "ct_lesion_zeros".
    #[arg(long, value_name = "DIR", requires = "lesion_labels")]
    pub lesion_model: Option<PathBuf>,
    /// The lesion model's labels whose union is the lesion map, e.g. 1,2.
    #[arg(long, value_delimiter = ',', requires = "lesion_model")]
    pub lesion_labels: Vec<i64>,
    /// Print a progress line every this many batches.
    #[arg(long, default_value_t = 20)]
    pub log_every: usize,
    /// Where to train: cpu, cuda or cuda:N, or auto (CUDA when built with it and present).
    /// CPU training is bit-exact across resumptions; CUDA training is untested here.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Ensemble name in the manifest.
    #[arg(long, default_value = "ctgrade-train")]
    pub name: String,
    /// Ensemble description in the manifest (default: how it was trained).
    #[arg(long, default_value = "")]
    pub description: String,
    /// Mark the ensemble as demonstration weights (runs then say their answers are not a
    /// diagnosis).
    #[arg(long)]
    pub demonstration: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Options(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Options(format!("{} is not valid: {e}", path.display())))
}

impl TrainArgs {
    /// The library options these arguments describe.
    pub fn options(&self) -> Result<TrainOptions, TrainError> {
        // clap requires these unless --gather, which does not come here.
        let required = |name: &str| TrainError::Options(format!("{name} is required"));
        let arch = self.arch.ok_or_else(|| required("--arch"))?;
        let data = self.data.clone().ok_or_else(|| required("--data"))?;
        let labels = self.labels.clone().ok_or_else(|| required("--labels"))?;
        let members = self.members.unwrap_or(1);
        let member = self
            .member
            .map(|m| m.resolve(members, |name| std::env::var(name).ok()))
            .transpose()?;
        let network = resolve_config(arch, 3, self.head.num_outputs(), self.config.as_deref())
            .map_err(|e| TrainError::Options(e.to_string()))?;
        let input: InputSpec = match &self.input_spec {
            Some(path) => read_json(path)?,
            None => InputSpec::default(),
        };
        Ok(TrainOptions {
            data,
            labels,
            out: self.out.clone(),
            recipe: Recipe {
                network,
                head: self.head,
                input,
                seed: self.seed,
                adam: AdamConfig {
                    lr: self.lr,
                    lr_final: self.lr_final,
                    ..AdamConfig::default()
                },
                batch_size: self.batch_size,
                max_steps: self.max_steps,
                patience: self.patience,
                val_every: self.val_every,
                val_fraction: self.val_fraction,
                augment: if self.no_augment {
                    AugmentConfig::none()
                } else {
                    AugmentConfig::default()
                },
                init: self.init.clone(),
                grad_checkpoint: self.grad_checkpoint,
                lesion_model: None,
            },
            members,
            member,
            max_minutes: self.max_minutes,
            resume: self.resume,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            cache: !self.no_cache,
            lesion_model: self.lesion_model.clone().map(|dir| LesionSource {
                dir,
                lesion_labels: self.lesion_labels.clone(),
            }),
            name: self.name.clone(),
            description: self.description.clone(),
            demonstration: self.demonstration,
            interrupt_after: None,
            device: self
                .device
                .open()
                .map_err(|e| TrainError::Options(e.to_string()))?,
        })
    }
}

/// Runs `ctgrade train`, or with --gather writes the ensemble of its member runs.
pub fn train(args: &TrainArgs) -> Result<TrainReport, TrainError> {
    if args.gather {
        let report = ctgrade::train::gather(&GatherOptions {
            out: args.out.clone(),
            members: args.members,
            name: args.name.clone(),
            description: args.description.clone(),
            demonstration: args.demonstration,
        })?;
        eprintln!(
            "train: wrote {} ({} member(s))",
            args.out.join(ctgrade::ensemble::MANIFEST_FILE).display(),
            report.members.len()
        );
        return Ok(report);
    }
    ctgrade::train::train(&args.options()?)
}
