//! `ctgrade inflate`: I3D inflation (Carreira & Zisserman 2017) of 2-D weights, e.g. torchvision's
//! ImageNet DenseNet-121/169/201, to the 3-D network, as the paper's pretraining.
//!
//! Every 2-D kernel `w2d` (O, I, kh, kw) becomes a 3-D kernel (O, I, kd, kh, kw), kd the 3-D
//! network's depth size for that layer:
//! - `repeat`: `w2d / kd` at every depth tap. On a volume of identical slices each 3-D convolution
//!   then computes the 2-D one wherever its depth neighbourhood lies inside the volume; near the
//!   first and last slices zero padding lowers it.
//! - `center`: `w2d` at the centre tap (kd / 2), zeros elsewhere. Each 3-D convolution acts slice by
//!   slice, so on identical slices the 3-D network reproduces the 2-D one exactly, at any depth.
//!
//! BatchNorm parameters and statistics are copied; pools have no weights. The 2-D network's
//! classifier is kept when it has the requested number of outputs; otherwise (ImageNet's 1000
//! classes against the paper's 1 or 5 outputs) the head is initialised to zeros, weight and bias:
//! deterministic, and a common choice for a head that is trained from scratch (the initial output
//! is 0, i.e. probability 0.5 or uniform class probabilities, and gradients still differ per
//! output). The names are read as in [`super::convert`] (torchvision or MONAI 2-D names, prefixes,
//! old torchvision names, any checkpoint format).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::convert::{
    base_config, finish_config, head_params, header_metadata, match_names, missing_line,
    name_table, naming_name, probe_config, read_checkpoint, unexpected_lines, write_checked,
    ConvertError, NamingArg, OutDType, SourceFormat,
};
use super::{Arch, ModelError, Naming, NetworkConfig};

/// How a 2-D kernel is spread over the depth taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DepthMode {
    /// `w2d / kd` at every depth tap (I3D).
    Repeat,
    /// `w2d` at the centre tap, zeros elsewhere.
    Center,
}

/// What [`inflate`] inflates: 2-D weights to the 3-D network.
#[derive(Debug, Clone)]
pub struct InflateOptions {
    /// 2-D weights: safetensors or a torch.save checkpoint, e.g. torchvision's densenet121.
    pub from: PathBuf,
    /// The 3-D architecture, e.g. densenet121-3d for a 2-D DenseNet-121.
    pub arch: Arch,
    /// JSON object overriding NetworkConfig fields (growth_rate, block_config, bn_size,
    /// init_features, in_channels); in_channels defaults to the 2-D stem's.
    pub config: Option<PathBuf>,
    /// How 2-D kernels are spread over depth.
    pub depth_mode: DepthMode,
    /// Outputs of the 3-D network's head (1: continuous, 5: categorical). The 2-D head is kept if it
    /// has this many outputs, else the head starts at zero.
    pub num_outputs: usize,
    /// Parameter names in the 2-D weights.
    pub naming: NamingArg,
    /// Entry of a PyTorch checkpoint holding the state dict (default: found automatically).
    pub key: Option<String>,
    /// Leave out 2-D tensors the network does not use (by default they are an error).
    pub drop_unexpected: bool,
    /// Element type of the written file.
    pub dtype: OutDType,
    /// The safetensors file to write (MONAI names).
    pub out: PathBuf,
}

/// A 3-D kernel (O, I, kd, kh, kw) from a 2-D one (O, I, kh, kw).
pub fn inflate_weight(w2d: &Tensor, kd: usize, mode: DepthMode) -> candle_core::Result<Tensor> {
    let (o, i, kh, kw) = w2d.dims4()?;
    if kd == 0 {
        candle_core::bail!("inflate: depth size 0");
    }
    let w = w2d.unsqueeze(2)?;
    match mode {
        DepthMode::Repeat => w
            .broadcast_as((o, i, kd, kh, kw))?
            .contiguous()?
            .affine(1.0 / kd as f64, 0.0),
        DepthMode::Center => {
            let c = kd / 2;
            let mut parts = Vec::with_capacity(3);
            if c > 0 {
                parts.push(Tensor::zeros((o, i, c, kh, kw), w.dtype(), w.device())?);
            }
            parts.push(w);
            if kd - c - 1 > 0 {
                parts.push(Tensor::zeros(
                    (o, i, kd - c - 1, kh, kw),
                    w2d.dtype(),
                    w2d.device(),
                )?);
            }
            Tensor::cat(&parts, 2)
        }
    }
}

/// The 2-D shape of a 3-D parameter: depth removed from kernels (O, I, kd, kh, kw).
fn shape_2d(s: &[usize]) -> Vec<usize> {
    if s.len() == 5 {
        s.iter()
            .enumerate()
            .filter(|&(i, _)| i != 2)
            .map(|(_, &d)| d)
            .collect()
    } else {
        s.to_vec()
    }
}

/// What `ctgrade inflate` did (printed as JSON).
#[derive(Debug, Serialize)]
pub struct InflateReport {
    /// The 2-D weights.
    pub from: PathBuf,
    /// Their container format.
    pub format: SourceFormat,
    /// The naming convention read.
    pub naming: &'static str,
    /// The prefix stripped from the names.
    pub prefix: String,
    /// The depth mode.
    pub depth_mode: DepthMode,
    /// The 3-D network (pass it to `ctgrade ensemble new --config`).
    pub network: NetworkConfig,
    /// Whether the head was kept from the 2-D network (`kept`) or set to zeros (`zeros`).
    pub head: &'static str,
    /// Why, in words.
    pub head_note: String,
    /// The written file.
    pub out: PathBuf,
    /// Its element type.
    pub dtype: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// 2-D tensors left out with --drop-unexpected.
    pub dropped: Vec<String>,
}

/// Runs `ctgrade inflate`.
pub fn inflate(args: &InflateOptions) -> Result<InflateReport, ConvertError> {
    if args.num_outputs == 0 {
        return Err(ModelError::InvalidConfig("--num-outputs must be positive".into()).into());
    }
    let ck = read_checkpoint(&args.from, args.key.as_deref())?;
    let base = base_config(args.arch, args.config.as_deref(), (0, args.num_outputs))?;
    if base.num_outputs != args.num_outputs {
        return Err(ModelError::InvalidConfig(format!(
            "the config file says num_outputs {}, --num-outputs {}",
            base.num_outputs, args.num_outputs
        ))
        .into());
    }
    let probe = probe_config(&base);
    let matched = match_names(ck.tensors, &name_table(&probe)?, args.naming);
    let cfg = finish_config(&base, &matched, shape_2d)?;
    let heads = head_params(&probe)?;
    let expected = name_table(&cfg)?;
    let source_name = |(monai, tv, _): &(String, String, Vec<usize>)| match matched.naming {
        Naming::Monai => monai.clone(),
        Naming::Torchvision => tv.clone(),
    };

    // The head: kept only if every head tensor is there with the 3-D network's shape.
    let mut head_misfit = Vec::new();
    for &i in &heads {
        let (Some(entry), Some(source)) = (expected.get(i), matched.sources.get(i)) else {
            continue;
        };
        match source {
            None => head_misfit.push(format!("{} is absent", source_name(entry))),
            Some((stored, t)) if t.dims() != entry.2.as_slice() => head_misfit.push(format!(
                "{stored} has shape {:?}, not {:?}",
                t.dims(),
                entry.2
            )),
            Some(_) => {}
        }
    }
    let keep_head = head_misfit.is_empty();

    let mut problems = Vec::new();
    let mut out = HashMap::with_capacity(expected.len());
    for (i, (entry, source)) in expected.iter().zip(&matched.sources).enumerate() {
        let (monai, _, shape) = entry;
        if heads.contains(&i) && !keep_head {
            out.insert(
                monai.clone(),
                Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?,
            );
            continue;
        }
        let want = shape_2d(shape);
        match source {
            None => problems.push(missing_line(&matched.prefix, &source_name(entry), &want)),
            Some((stored, t)) if t.dims() != want.as_slice() => problems.push(format!(
                "tensor {stored} has shape {:?}, expected {want:?}{}",
                t.dims(),
                if shape.len() == 5 {
                    format!(" (the 2-D form of {shape:?})")
                } else {
                    String::new()
                }
            )),
            Some((_, t)) => {
                let t = t.to_dtype(DType::F32)?;
                let t = match shape.as_slice() {
                    [_, _, kd, _, _] => inflate_weight(&t, *kd, args.depth_mode)?,
                    _ => t,
                };
                out.insert(monai.clone(), t);
            }
        }
    }
    if !args.drop_unexpected {
        problems.extend(unexpected_lines(&matched.unexpected));
    }
    if !problems.is_empty() {
        return Err(ConvertError::Mismatch {
            path: args.from.clone(),
            arch: args.arch.to_string(),
            naming: matched.naming,
            prefix: matched.prefix,
            problems,
        });
    }
    let head_note = if keep_head {
        format!(
            "the 2-D head has {} output(s), as requested: kept",
            cfg.num_outputs
        )
    } else {
        format!(
            "head initialised to zeros (weight and bias) for {} output(s): {}",
            cfg.num_outputs,
            head_misfit.join(", ")
        )
    };
    let n = out.len();
    let mut metadata = header_metadata(&cfg, "inflate", &args.from);
    metadata.insert(
        "ctgrade.depth_mode".into(),
        match args.depth_mode {
            DepthMode::Repeat => "repeat",
            DepthMode::Center => "center",
        }
        .into(),
    );
    metadata.insert("ctgrade.head".into(), head_note.clone());
    write_checked(&cfg, out, args.dtype, metadata, &args.out)?;
    Ok(InflateReport {
        from: args.from.clone(),
        format: ck.format,
        naming: naming_name(matched.naming),
        prefix: matched.prefix,
        depth_mode: args.depth_mode,
        network: cfg,
        head: if keep_head { "kept" } else { "zeros" },
        head_note,
        out: args.out.clone(),
        dtype: args.dtype.name(),
        tensors: n,
        dropped: matched.unexpected.into_iter().map(|(n, _)| n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflated_kernels_sum_over_depth_to_the_2d_kernel() {
        let w = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        for (mode, kd) in [
            (DepthMode::Repeat, 3),
            (DepthMode::Center, 3),
            (DepthMode::Center, 1),
            (DepthMode::Repeat, 7),
        ] {
            let w3 = inflate_weight(&w, kd, mode).unwrap();
            assert_eq!(w3.dims(), &[2, 3, kd, 2, 2]);
            let summed = w3.sum(2).unwrap();
            let diff = (summed - &w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{mode:?} kd {kd}: {diff}");
        }
        let c = inflate_weight(&w, 3, DepthMode::Center).unwrap();
        let taps: Vec<f32> = (0..3)
            .map(|d| {
                c.narrow(2, d, 1)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .collect();
        assert_eq!(taps[0], 0.0);
        assert_eq!(taps[2], 0.0);
        assert!(taps[1] > 0.0);
    }

    #[test]
    fn shapes_lose_depth_on_kernels_only() {
        assert_eq!(shape_2d(&[8, 3, 7, 7, 7]), vec![8, 3, 7, 7]);
        assert_eq!(shape_2d(&[5, 16]), vec![5, 16]);
        assert_eq!(shape_2d(&[16]), vec![16]);
    }
}
