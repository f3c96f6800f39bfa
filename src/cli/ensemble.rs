//! `ctgrade ensemble new|check`: create or check an ensemble folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use ctgrade::ensemble::{self, Ensemble, LesionModelSpec, LobeModelSpec, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::probe::resolve_config;
use ctgrade::model::Arch;
use ctgrade::preprocess::InputSpec;

/// `ctgrade ensemble new|check`.
#[derive(clap::Subcommand)]
pub enum EnsembleCommand {
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
        /// An nnU-Net v2 trained-model folder to compute the lesion channel with (the paper's full
        /// model; the input specification must use "ct_lesion_zeros"): copied into the ensemble as
        /// `lesion/`.
        #[arg(long, requires = "lesion_labels")]
        lesion_model: Option<PathBuf>,
        /// The lesion model's label values whose union is the lesion map, e.g. 1,2.
        #[arg(long, value_delimiter = ',', requires = "lesion_model")]
        lesion_labels: Vec<i64>,
        /// An nnU-Net model folder whose labels name the five lung lobes: with a lesion map it
        /// gives the per-lobe shares and the CT severity score. Copied as `lobes/`.
        #[arg(long)]
        lobe_model: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an ensemble folder (hashes, tensor names and shapes, the lesion and lobe models'
    /// plans and weights) without running it.
    Check {
        /// The folder holding ensemble.json.
        dir: PathBuf,
    },
}

/// Writes a new ensemble's manifest, or checks an ensemble.
pub fn ensemble(cmd: EnsembleCommand) -> Result<()> {
    match cmd {
        EnsembleCommand::New {
            arch,
            config,
            head,
            input_spec,
            members,
            name,
            description,
            lesion_model,
            lesion_labels,
            lobe_model,
            out,
        } => {
            let network = resolve_config(arch, 3, head.num_outputs(), config.as_deref())?;
            let input = match &input_spec {
                Some(path) => super::read_json(path)?,
                None => InputSpec::default(),
            };
            let mut manifest = Manifest {
                name,
                description,
                demonstration: false,
                network,
                head,
                input,
                members: Vec::new(),
                lesion_model: None,
                lobe_model: None,
            };
            if let Some(src) = &lesion_model {
                ensemble::copy_segmenter(src, &out, "lesion", "lesion")?;
                manifest.lesion_model = Some(LesionModelSpec {
                    path: "lesion".into(),
                    lesion_labels,
                });
            }
            if let Some(src) = &lobe_model {
                ensemble::copy_segmenter(src, &out, "lobes", "lobe")?;
                manifest.lobe_model = Some(LobeModelSpec {
                    path: "lobes".into(),
                });
            }
            let manifest = ensemble::create(&out, manifest, &members)?;
            eprintln!(
                "wrote {} with {} member(s)",
                out.join(ensemble::MANIFEST_FILE).display(),
                manifest.members.len()
            );
        }
        EnsembleCommand::Check { dir } => {
            let e = Ensemble::open(&dir)?;
            super::emit(&serde_json::to_string_pretty(&e.manifest)?)?;
            let lesion = e.lesion_model.as_ref().map_or(String::new(), |m| {
                format!(
                    ", lesion model {} ({} fold(s), configuration {}, labels {:?} as lesions)",
                    m.spec.path,
                    m.folder.folds.len(),
                    m.folder.configuration_name,
                    m.spec.lesion_labels
                )
            });
            let lobes = e.lobe_model.as_ref().map_or(String::new(), |m| {
                format!(
                    ", lobe model {} ({} fold(s), configuration {})",
                    m.spec.path,
                    m.folder.folds.len(),
                    m.folder.configuration_name,
                )
            });
            eprintln!(
                "{}: {} member(s){lesion}{lobes}, all checks passed",
                dir.display(),
                e.len()
            );
        }
    }
    Ok(())
}
