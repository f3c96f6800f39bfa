//! One network on its own, outside an ensemble: [`forward`] (its raw outputs on a tensor, for
//! checking converted weights against PyTorch), [`bench()`] (time per forward and peak memory, with
//! random weights), and the meaning of `--config` everywhere: JSON overrides merged onto the
//! architecture's defaults ([`resolve_config`], [`merge_config`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::device::{DeviceChoice, Precision};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use super::inception::I3dHead;
use super::{
    build, expected_tensors_named, with_detected_head, Arch, Classifier, ModelError, Naming,
    NetworkConfig,
};

/// What [`forward`] runs: raw outputs of one network on one input tensor.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Architecture, e.g. densenet201-3d.
    pub arch: Arch,
    /// JSON object overriding NetworkConfig fields (in_channels, num_outputs, growth_rate,
    /// block_config, bn_size, init_features). in_channels and num_outputs default to the weights'.
    pub config: Option<PathBuf>,
    /// Weights (safetensors, MONAI or torchvision-style names).
    pub weights: PathBuf,
    /// Input (safetensors with an NCDHW tensor named `input`).
    pub input: PathBuf,
    /// Device: cpu, auto, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    pub device: DeviceChoice,
    /// Compute precision (weights and activations); the outputs are printed as f32.
    pub precision: Precision,
}

/// What [`bench()`] measures: median time per forward and peak resident memory, random weights.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Architecture, e.g. densenet201-3d.
    pub arch: Arch,
    /// JSON object overriding NetworkConfig fields.
    pub config: Option<PathBuf>,
    /// Input size C,D,H,W (batch 1) or N,C,D,H,W.
    pub input: String,
    /// Timed forwards (after one untimed warm-up).
    pub repeat: usize,
    /// Worker threads (default: RAYON_NUM_THREADS or all cores).
    pub threads: Option<usize>,
    /// Outputs of the head.
    pub num_outputs: usize,
    /// Device: cpu, auto, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    pub device: DeviceChoice,
    /// Compute precision (weights and activations).
    pub precision: Precision,
}

fn file_err(path: &Path, msg: impl ToString) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// The configuration: the architecture's defaults, then the JSON file's fields on top, with
/// every default a checkpoint cannot reveal written out ([`NetworkConfig::resolved`]), so that
/// manifests made from it state them.
pub fn resolve_config(
    arch: Arch,
    in_channels: usize,
    num_outputs: usize,
    overrides: Option<&Path>,
) -> Result<NetworkConfig, ModelError> {
    let base = NetworkConfig::new(arch, in_channels, num_outputs);
    Ok(merge_config(base, overrides)?.resolved())
}

/// `base` with the JSON file's fields on top, unset fields left unset (for callers that first
/// read some of them off a checkpoint).
pub fn merge_config(
    base: NetworkConfig,
    overrides: Option<&Path>,
) -> Result<NetworkConfig, ModelError> {
    let arch = base.arch;
    let Some(path) = overrides else {
        return Ok(base);
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let over: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(path, e))?;
    let serde_json::Value::Object(over) = over else {
        return Err(file_err(
            path,
            "expected a JSON object of NetworkConfig fields",
        ));
    };
    let mut merged = serde_json::to_value(&base).map_err(|e| file_err(path, e))?;
    if let serde_json::Value::Object(m) = &mut merged {
        m.extend(over);
    }
    let cfg: NetworkConfig = serde_json::from_value(merged).map_err(|e| file_err(path, e))?;
    if cfg.arch != arch {
        return Err(file_err(
            path,
            format!("config names {}, the command line {arch}", cfg.arch),
        ));
    }
    Ok(cfg)
}

/// Reads `in_channels` and `num_outputs` off the stem and head weights, when present.
fn infer_io(bytes: &[u8], path: &Path, arch: Arch) -> Result<(usize, usize), ModelError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| file_err(path, e))?;
    let mut probe = NetworkConfig::new(arch, 1, 1);
    if arch == Arch::InceptionV1_3d {
        probe.i3d_head = Some(I3dHead::detect(st.names().into_iter()));
    }
    let mut io = (3, 1);
    for naming in [Naming::Monai, Naming::Torchvision] {
        let names = expected_tensors_named(&probe, naming)?;
        if let Some((first, _)) = names.first() {
            if let Ok(t) = st.tensor(first) {
                if let Some(&c) = t.shape().get(1) {
                    io.0 = c;
                }
            }
        }
        if let Some((head, _)) = names.iter().rev().nth(1) {
            if let Ok(t) = st.tensor(head) {
                if let Some(&o) = t.shape().first() {
                    io.1 = o;
                }
            }
        }
    }
    Ok(io)
}

/// Runs `ctgrade forward` and returns its JSON line `{"output": [[...]]}`.
pub fn forward(args: &ForwardOptions) -> Result<String, ModelError> {
    let dev = args.device.open()?;
    let bytes = std::fs::read(&args.weights).map_err(|e| file_err(&args.weights, e))?;
    let (c_in, n_out) = infer_io(&bytes, &args.weights, args.arch)?;
    let base = NetworkConfig::new(args.arch, c_in, n_out);
    let merged = merge_config(base, args.config.as_deref())?;
    let dtype = args.precision.dtype();
    let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, &dev)?;
    // The head form comes from the weights unless the configuration names it.
    let cfg = with_detected_head(&merged, &vb).resolved();
    let net = build(&cfg, vb)?;
    let inputs =
        candle_core::safetensors::load(&args.input, &dev).map_err(|e| file_err(&args.input, e))?;
    let x = inputs
        .get("input")
        .ok_or_else(|| file_err(&args.input, "no tensor named `input`"))?
        .to_dtype(dtype)?;
    if x.rank() != 5 {
        return Err(file_err(
            &args.input,
            format!("input has shape {:?}, expected NCDHW", x.dims()),
        ));
    }
    let y = net.forward(&x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    serde_json::to_string(&serde_json::json!({ "output": y }))
        .map_err(|e| ModelError::InvalidConfig(e.to_string()))
}

/// Result of `ctgrade bench`.
#[derive(Serialize, Debug)]
pub struct BenchReport {
    /// Architecture.
    pub arch: String,
    /// Input shape NCDHW.
    pub input: Vec<usize>,
    /// Compute precision.
    pub precision: String,
    /// Worker threads.
    pub threads: usize,
    /// Median seconds per forward.
    pub median_s: f64,
    /// Every timed forward, seconds.
    pub times_s: Vec<f64>,
    /// Median process CPU time (user + system, all threads) per forward, seconds: less sensitive
    /// than wall time to other load on the machine. `None` where /proc is unavailable.
    pub median_cpu_s: Option<f64>,
    /// Process CPU time of every timed forward, seconds.
    pub cpu_times_s: Vec<f64>,
    /// Seconds to build the network (random weights, BatchNorm folding).
    pub build_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident set size of this process in MiB, from /proc/self/status.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Random parameters of plausible scale for `cfg` (running variances positive).
pub fn random_weights(
    cfg: &NetworkConfig,
    dev: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut ts = HashMap::new();
    for (name, shape) in expected_tensors_named(cfg, Naming::Monai)? {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let t = if name.ends_with("running_var") || (shape.len() == 1 && name.ends_with("weight")) {
            Tensor::rand(0.5f32, 1.5, shape.as_slice(), dev)?
        } else if shape.len() == 1 {
            (Tensor::randn(0f32, 1.0, shape.as_slice(), dev)? * 0.1)?
        } else {
            Tensor::randn(0f32, (2.0 / fan_in as f32).sqrt(), shape.as_slice(), dev)?
        };
        ts.insert(name, t);
    }
    Ok(ts)
}

/// Runs `ctgrade bench`.
pub fn bench(args: &BenchOptions) -> Result<BenchReport, ModelError> {
    if let Some(t) = args.threads {
        // candle reads RAYON_NUM_THREADS on every call; rayon's pool is not built yet.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| ModelError::InvalidConfig(e.to_string()))?;
    }
    let dims: Vec<usize> = args
        .input
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| ModelError::InvalidConfig(format!("--input {:?}: {e}", args.input)))?;
    let dims = match dims.as_slice() {
        [c, d, h, w] => vec![1, *c, *d, *h, *w],
        [_, _, _, _, _] => dims,
        _ => {
            return Err(ModelError::InvalidConfig(format!(
                "--input {:?}: expected C,D,H,W or N,C,D,H,W",
                args.input
            )))
        }
    };
    let dev = args.device.open()?;
    let cfg = resolve_config(args.arch, dims[1], args.num_outputs, args.config.as_deref())?;
    let t0 = Instant::now();
    let dtype = args.precision.dtype();
    let vb = VarBuilder::from_tensors(random_weights(&cfg, &dev)?, dtype, &dev);
    let net: Box<dyn Classifier> = build(&cfg, vb)?;
    let build_s = t0.elapsed().as_secs_f64();
    let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev)?.to_dtype(dtype)?;
    let mut times = Vec::with_capacity(args.repeat);
    let mut cpu_times = Vec::with_capacity(args.repeat);
    for i in 0..=args.repeat {
        let t = Instant::now();
        let c = super::kernels::prof::process_cpu_s();
        let y = net.forward(&x)?;
        // Forces completion on asynchronous devices.
        y.to_device(&Device::Cpu)?;
        if i == 0 {
            super::kernels::prof::reset();
        } else {
            times.push(t.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (c, super::kernels::prof::process_cpu_s()) {
                cpu_times.push(c1 - c0);
            }
        }
    }
    if super::kernels::prof::enabled() {
        eprint!("{}", super::kernels::prof::report(times.len()));
    }
    let median_s = median(&times);
    let median_cpu_s =
        (cpu_times.len() == times.len() && !times.is_empty()).then(|| median(&cpu_times));
    Ok(BenchReport {
        arch: args.arch.to_string(),
        input: dims,
        precision: args.precision.to_string(),
        threads: candle_core::utils::get_num_threads(),
        median_s,
        times_s: times,
        median_cpu_s,
        cpu_times_s: cpu_times,
        build_s,
        peak_rss_mib: peak_rss_mib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FIX: &str = "tests/fixtures/model";

    fn config_file(json: &serde_json::Value) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(f, "{json}").unwrap();
        f
    }

    fn fixture_config(key: &str) -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/densenet.json")).unwrap())
                .unwrap();
        let mut cfg = all[key]["config"].clone();
        // in_channels and num_outputs come from the weights.
        let obj = cfg.as_object_mut().unwrap();
        obj.remove("in_channels");
        obj.remove("num_outputs");
        cfg
    }

    #[test]
    fn forward_prints_monai_outputs() {
        for (key, naming) in [("a", "monai"), ("b", "torchvision")] {
            let cfg = fixture_config(key);
            let file = config_file(&cfg);
            // The fixture holds the weights, `input` and MONAI's `output` in one file.
            let path = PathBuf::from(format!("{FIX}/densenet_{key}_{naming}.safetensors"));
            let args = ForwardOptions {
                arch: cfg["arch"].as_str().unwrap().parse().unwrap(),
                config: Some(file.path().to_path_buf()),
                weights: path.clone(),
                input: path.clone(),
                device: DeviceChoice::Cpu,
                precision: Precision::F32,
            };
            let line = forward(&args).unwrap();
            let got: serde_json::Value = serde_json::from_str(&line).unwrap();
            let got: Vec<Vec<f32>> = serde_json::from_value(got["output"].clone()).unwrap();
            let want = candle_core::safetensors::load(&path, &Device::Cpu).unwrap()["output"]
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((g - w).abs() < 1e-4, "net {key}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn bench_reports_times_and_memory() {
        let file = config_file(&serde_json::json!({
            "block_config": [1, 1], "init_features": 4, "growth_rate": 2, "bn_size": 1
        }));
        let args = BenchOptions {
            arch: Arch::DenseNet121_3d,
            config: Some(file.path().to_path_buf()),
            input: "2,1,12,16,16".into(),
            repeat: 2,
            threads: None,
            num_outputs: 5,
            device: DeviceChoice::Cpu,
            precision: Precision::F32,
        };
        let r = bench(&args).unwrap();
        assert_eq!(r.input, vec![2, 1, 12, 16, 16]);
        assert_eq!(r.times_s.len(), 2);
        assert!(r.median_s > 0.0);
        assert!(r.peak_rss_mib.is_some_and(|m| m > 1.0));
    }

    #[test]
    fn config_overrides_are_checked() {
        let ok = config_file(&serde_json::json!({ "growth_rate": 12 }));
        let cfg = resolve_config(Arch::DenseNet169_3d, 1, 5, Some(ok.path())).unwrap();
        assert_eq!(cfg.growth_rate, Some(12));
        assert_eq!((cfg.in_channels, cfg.num_outputs), (1, 5));
        let typo = config_file(&serde_json::json!({ "growth": 12 }));
        assert!(resolve_config(Arch::DenseNet169_3d, 1, 5, Some(typo.path())).is_err());
        let other = config_file(&serde_json::json!({ "arch": "densenet201-3d" }));
        assert!(resolve_config(Arch::DenseNet169_3d, 1, 5, Some(other.path())).is_err());
        assert!("resnet51-3d".parse::<Arch>().is_err());
        assert_eq!(
            "densenet201-3d".parse::<Arch>().unwrap().to_string(),
            "densenet201-3d"
        );
    }
}
