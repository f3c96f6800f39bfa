//! The preprocessing of one CT file, written to files (`ctgrade preprocess`): runs
//! [`preprocess`](super::preprocess) and writes `DIR/input.mha` (the CT channel of the network input, float32,
//! `crop_x x crop_y x slices`), `DIR/lung_mask.mha` (uint8 on the input's grid: 1 right lung, 2 left lung),
//! `DIR/lesion.mha` (the lesion channel, when a lesion map is given) and `DIR/preprocess.json`
//! (the [`PreprocessReport`]).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{
    checks, preprocess_owned, ChannelLayout, InputSpec, PreprocessError, PreprocessReport,
    Preprocessed,
};
use crate::volume::{
    read, write_with_options, ElementType, Volume, VolumeError, Voxel, WriteOptions,
};

/// What [`run`] preprocesses and where it writes the results.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    /// Input CT in Hounsfield units (.mha, .mhd, .nii, .nii.gz).
    pub input: PathBuf,
    /// Output folder (created if needed).
    pub out: PathBuf,
    /// Lesion map on the CT's grid; selects the CT / lesion / zeros channel layout.
    pub lesion: Option<PathBuf>,
    /// Model input specification (JSON with fields of `InputSpec`; missing fields take the
    /// paper's values).
    pub spec: Option<PathBuf>,
    /// zlib-compress the `.mha` files (the default); raw data is faster to write and read, and
    /// about 3 times larger on disk.
    pub compress: bool,
}

/// Errors of `ctgrade preprocess`.
#[derive(Debug, Error)]
pub enum CommandError {
    /// Reading or writing a volume failed (the error names the file).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A file-system operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The specification file is not valid JSON for an `InputSpec`.
    #[error("invalid input specification {path}: {message}")]
    SpecFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Preprocessing failed.
    #[error("{path}: {error}")]
    Preprocess {
        /// The CT file.
        path: PathBuf,
        /// Why (not a `source`: the message already says it).
        error: Box<PreprocessError>,
    },
}

fn read_volume(path: &Path) -> Result<Volume, CommandError> {
    Ok(read(path)?)
}

fn write_volume<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    ty: ElementType,
    compress: bool,
) -> Result<(), CommandError> {
    let opts = WriteOptions {
        compress,
        ..WriteOptions::default()
    };
    Ok(write_with_options(path, vol, ty, &opts)?)
}

/// Reads an [`InputSpec`] from a JSON file.
pub fn read_spec(path: &Path) -> Result<InputSpec, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|error| CommandError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let spec: InputSpec = serde_json::from_str(&text).map_err(|e| CommandError::SpecFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    spec.validate().map_err(|e| CommandError::SpecFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(spec)
}

/// The channels of the network input as volumes on the resampled grid's axes (x, y, and z
/// spread evenly over the kept slices), in order, and the report. The first channel keeps
/// `p.input`'s buffer, so writing the CT channel copies nothing.
pub fn channel_volumes(p: Preprocessed) -> (Vec<Volume>, PreprocessReport) {
    let [channels, slices, ch, cw] = p.shape;
    let r = p.report;
    let n = slices * ch * cw;
    let s = r.spec.spacing_mm;
    let z_step = if slices > 1 {
        (r.kept_z_range[1] - r.kept_z_range[0]) as f64 * s / (slices - 1) as f64
    } else {
        s
    };
    let first = [
        r.crop_box.x[0] as f64,
        r.crop_box.y[0] as f64,
        r.kept_z_range[0] as f64,
    ];
    let d = &r.resampled_direction;
    let o = &r.resampled_origin;
    let off = [first[0] * s, first[1] * s, first[2] * s];
    let origin =
        [0, 1, 2].map(|k| o[k] + d[3 * k] * off[0] + d[3 * k + 1] * off[1] + d[3 * k + 2] * off[2]);
    let volume = |data| Volume {
        data,
        size: [cw, ch, slices],
        spacing: [s, s, if z_step > 0.0 { z_step } else { s }],
        origin,
        direction: r.resampled_direction,
    };
    // The last channels split off the end, one at a time.
    let mut data = p.input;
    let mut tails: Vec<Vec<f32>> = (1..channels)
        .rev()
        .map(|c| data.split_off((c * n).min(data.len())))
        .collect();
    tails.push(data);
    let vols = tails.into_iter().rev().map(volume).collect();
    (vols, r)
}

/// Preprocesses the CT and writes the files; returns the report it wrote.
pub fn run(args: &PreprocessOptions) -> Result<PreprocessReport, CommandError> {
    let mut spec = match &args.spec {
        Some(path) => read_spec(path)?,
        None => InputSpec::default(),
    };
    if args.lesion.is_some() && args.spec.is_none() {
        spec.channels = ChannelLayout::CtLesionZeros;
    }
    let mut ct = read_volume(&args.input)?;
    let lesion = args.lesion.as_deref().map(read_volume).transpose()?;
    let failed = |error| CommandError::Preprocess {
        path: args.input.clone(),
        error: Box::new(error),
    };
    let check = checks::check_ct(&mut ct).map_err(failed)?;
    for w in &check.warnings {
        eprintln!("{}: warning: {w}", args.input.display());
    }
    // By value: the CT's voxels are freed once resampled.
    // Only the channels written: the others repeat the CT or are zeros.
    let p =
        preprocess_owned(ct, lesion.as_ref(), &spec, spec.channels.distinct()).map_err(failed)?;
    std::fs::create_dir_all(&args.out).map_err(|error| CommandError::Io {
        path: args.out.clone(),
        error,
    })?;
    write_volume(
        &args.out.join("lung_mask.mha"),
        &p.lung_mask,
        ElementType::UChar,
        args.compress,
    )?;
    let (channels, report) = channel_volumes(p);
    let names = match spec.channels {
        ChannelLayout::CtLesionZeros if lesion.is_some() => &["input.mha", "lesion.mha"][..],
        _ => &["input.mha"],
    };
    for (name, vol) in names.iter().zip(&channels) {
        write_volume(&args.out.join(name), vol, ElementType::Float, args.compress)?;
    }
    let json_path = args.out.join("preprocess.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| CommandError::Io {
        path: json_path.clone(),
        error: std::io::Error::other(e),
    })?;
    ctgrade_fsio::write_atomic(&json_path, (json + "\n").as_bytes()).map_err(|error| {
        CommandError::Io {
            path: json_path.clone(),
            error,
        }
    })?;
    Ok(report)
}
