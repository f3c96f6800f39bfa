//! `ctgrade segment`: an nnU-Net v2 trained-model folder run on CT scans, as nnunetv2's
//! predictor runs it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use ctgrade::device::{self, DeviceChoice};
use ctgrade::segment::{ModelFolder, PredictOptions};
use ctgrade::volume::{self, ElementType};

/// Arguments of `ctgrade segment`.
#[derive(clap::Args)]
pub struct SegmentArgs {
    /// An nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_N/checkpoint_final.pth),
    /// its compact form (`ctgrade convert --from-nnunet`), or an nnU-Net v1 one (plans.pkl,
    /// fold_N/model_final_checkpoint.model and .model.pkl, postprocessing.json).
    #[arg(long)]
    model: PathBuf,
    /// A CT file, or a folder of them (.mha, .mhd, .nii, .nii.gz). A model with several input
    /// channels takes nnU-Net's names: <case>_0000.mha, <case>_0001.mha, ...
    #[arg(long)]
    input: PathBuf,
    /// Output folder: <case>.mha (uint8 labels) per case.
    #[arg(long)]
    output: PathBuf,
    /// Folds to use, comma-separated (fold_<f>; `all` is fold_all, in v1 all, as in nnU-Net);
    /// default: every fold_N with a checkpoint.
    #[arg(long, value_delimiter = ',')]
    folds: Option<Vec<String>>,
    /// Do not average over mirrored inputs (nnU-Net mirrors along the checkpoint's allowed axes).
    #[arg(long)]
    no_mirroring: bool,
    /// Sliding-window step as a fraction of the patch (nnU-Net's tile_step_size).
    #[arg(long, default_value_t = 0.5)]
    step_size: f64,
    /// Also write <case>-probabilities.mha: float32, one component per class.
    #[arg(long)]
    probabilities: bool,
    /// Where the networks run: cpu, auto, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub(super) device: DeviceChoice,
}

const EXTENSIONS: &[&str] = &[".nii.gz", ".mha", ".mhd", ".nii"];

/// The case name of a file, if it is a volume: the name less its extension.
fn stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    EXTENSIONS
        .iter()
        .find_map(|e| name.strip_suffix(e))
        .map(str::to_owned)
}

/// The cases under `input`: (name, one file per channel).
fn cases(input: &Path, channels: usize) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let files: Vec<PathBuf> = if input.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(input)
            .with_context(|| format!("cannot read {}", input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && stem(p).is_some())
            .collect();
        v.sort();
        v
    } else {
        vec![input.to_path_buf()]
    };
    if files.is_empty() {
        bail!(
            "{}: no volume files (.mha, .mhd, .nii, .nii.gz)",
            input.display()
        );
    }
    let mut out: Vec<(String, Vec<(usize, PathBuf)>)> = Vec::new();
    for f in files {
        let Some(s) = stem(&f) else {
            bail!(
                "{}: not a volume file (.mha, .mhd, .nii, .nii.gz)",
                f.display()
            );
        };
        // nnU-Net's channel suffix: <case>_0000.
        let (case, channel) = match s.rsplit_once('_') {
            Some((c, n)) if n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()) => {
                (c.to_string(), n.parse::<usize>().ok())
            }
            _ => (s.clone(), None),
        };
        if channels == 1 {
            out.push((case, vec![(0, f)]));
            continue;
        }
        let Some(channel) = channel else {
            bail!(
                "{}: the model takes {channels} channels: name the files <case>_0000, <case>_0001, ...",
                f.display()
            );
        };
        match out.iter_mut().find(|(c, _)| *c == case) {
            Some((_, v)) => v.push((channel, f)),
            None => out.push((case, vec![(channel, f)])),
        }
    }
    let mut cases = Vec::with_capacity(out.len());
    for (case, mut files) in out {
        files.sort();
        if files.iter().map(|(c, _)| *c).ne(0..channels) {
            bail!(
                "case {case}: the model takes channels _0000 to _{:04}",
                channels - 1
            );
        }
        cases.push((case, files.into_iter().map(|(_, f)| f).collect()));
    }
    Ok(cases)
}

/// Segments every case; prints one JSON line per case.
pub fn segment(args: SegmentArgs) -> Result<()> {
    if !(args.step_size > 0.0 && args.step_size <= 1.0) {
        bail!("--step-size {} is not in (0, 1]", args.step_size);
    }
    let device = args.device.open()?;
    let model = ModelFolder::load(&args.model, args.folds.as_deref(), &device)?;
    let channels = model.dataset.num_input_channels();
    // Every input is found and named before any compute.
    let cases = cases(&args.input, channels)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let opts = PredictOptions {
        tile_step_size: args.step_size,
        use_gaussian: true,
        use_mirroring: !args.no_mirroring,
    };
    let names = model.label_names();
    for (case, files) in cases {
        let start = Instant::now();
        let vols = files
            .iter()
            .map(|f| volume::read(f).with_context(|| format!("case {case}")))
            .collect::<Result<Vec<_>>>()?;
        let seg = model
            .segment(&vols, &opts, &device)
            .with_context(|| format!("case {case}"))?;
        let labels_path = args.output.join(format!("{case}.mha"));
        volume::write(&labels_path, &seg.labels, ElementType::UChar)?;
        if args.probabilities {
            let chans: Vec<&[f32]> = seg.probabilities.iter().map(Vec::as_slice).collect();
            volume::write_mha_channels(
                &args.output.join(format!("{case}-probabilities.mha")),
                &seg.labels,
                &chans,
                ElementType::Float,
            )?;
        }
        let mut counts = vec![0usize; names.len()];
        for &l in &seg.labels.data {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        let voxels: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&counts)
            .map(|(n, &c)| (n.clone(), c.into()))
            .collect();
        super::emit(&serde_json::to_string(&serde_json::json!({
            "case": case,
            "output": labels_path,
            "voxels": voxels,
            "folds": model.folds,
            "device": device::describe(&device),
            "seconds": start.elapsed().as_secs_f64(),
        }))?)?;
    }
    Ok(())
}
