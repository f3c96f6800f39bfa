//! The reference implementations' own defaults (issue 19), end to end as a new user meets them:
//! checkpoints written by PyTorch (tools/make_reference_fixtures.py) go through `ctgrade convert`
//! with no `--config` and then `ctgrade forward`, and must give the reference's outputs.
//! - MONAI's `resnet18/34/50(spatial_dims=3, n_input_channels=3, num_classes=1)`: stem stride 1.
//! - The STOIC 2021 baseline's I3D in both head forms (`linear` and the port's Kinetics
//!   `conv3d_0c_1x1`), on inputs whose last feature map is larger than the (2, 7, 7) pool.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::max_abs_diff;
use ctgrade::device::{DeviceChoice, Precision};
use ctgrade::ensemble::{self, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::convert::{
    convert, read_checkpoint, ConvertError, ConvertOptions, ConvertReport, NamingArg, OutDType,
};
use ctgrade::model::inception::{
    windowed_mean, FoldedInception, I3dHead, InceptionConfig, I3D_POOL,
};
use ctgrade::model::layers::global_avg_pool;
use ctgrade::model::probe::{forward, resolve_config, ForwardOptions};
use ctgrade::model::resnet::ShortcutType;
use ctgrade::model::{
    build, expected_tensors, expected_tensors_named, Arch, Naming, NetworkConfig,
};
use ctgrade::preprocess::InputSpec;
use serde::Deserialize;

const FIX: &str = "tests/fixtures/reference";
const TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Index {
    monai_resnet_defaults: serde_json::Value,
    full_size_parameters: HashMap<String, usize>,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    arch: Arch,
    num_outputs: usize,
    /// The overrides the shrunk network needs (its width divisor only).
    config: serde_json::Value,
    checkpoint: String,
    io: String,
    input_shape: Vec<usize>,
    /// "stored" in the io file, or "hash" (recomputed by [`hash_input`]).
    input: String,
    i3d_head: Option<I3dHead>,
    feature_map: Option<Vec<usize>>,
}

fn index() -> Index {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/cases.json")).unwrap()).unwrap()
}

fn case(name: &str) -> Case {
    index().cases.into_iter().find(|c| c.name == name).unwrap()
}

/// tools/make_reference_fixtures.py's `hash_input`: the same integer steps, the same float32s.
fn hash_input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let mut v = (i.wrapping_mul(2_654_435_761) & 0xFFFF_FFFF) as u32;
            v ^= v >> 15;
            v = v.wrapping_mul(2_246_822_519);
            v ^= v >> 13;
            (f64::from(v) / 2f64.powi(32) * 2.0 - 1.0) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

impl Case {
    /// The input and the reference output.
    fn io(&self) -> (Tensor, Tensor) {
        let mut ts =
            candle_core::safetensors::load(format!("{FIX}/{}", self.io), &Device::Cpu).unwrap();
        let y = ts.remove("output").unwrap();
        let x = match self.input.as_str() {
            "stored" => ts.remove("input").unwrap(),
            _ => hash_input(&self.input_shape),
        };
        assert_eq!(x.dims(), self.input_shape.as_slice());
        (x, y)
    }

    fn checkpoint(&self) -> PathBuf {
        Path::new(FIX).join(&self.checkpoint)
    }

    /// A `--config` file with the case's overrides and `extra` on top.
    fn config_with(&self, extra: serde_json::Value) -> tempfile::NamedTempFile {
        let mut v = self.config.clone();
        if let (Some(m), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        json_file(v)
    }

    /// `convert` arguments for the case's checkpoint, with its overrides as `--config`.
    fn convert_args(&self, config: &tempfile::NamedTempFile, out: PathBuf) -> ConvertOptions {
        let mut args = convert_args(self.checkpoint(), self.arch, out);
        args.config = Some(config.path().to_path_buf());
        args
    }
}

fn convert_args(from: PathBuf, arch: Arch, out: PathBuf) -> ConvertOptions {
    ConvertOptions {
        from,
        arch,
        config: None,
        naming: NamingArg::Auto,
        key: None,
        num_outputs: None,
        drop_unexpected: false,
        dtype: OutDType::F32,
        out,
    }
}

/// `ctgrade forward` on `weights` with `config`: its output.
fn forward_file(arch: Arch, weights: &Path, x: &Tensor, config: &Path) -> Tensor {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.safetensors");
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), x.clone())]), &input)
        .unwrap();
    let out = forward(&ForwardOptions {
        arch,
        config: Some(config.to_path_buf()),
        weights: weights.to_path_buf(),
        input,
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    })
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(v["output"].clone()).unwrap();
    Tensor::new(rows, &Device::Cpu).unwrap()
}

/// A `--config` file (deleted when dropped).
fn json_file(value: serde_json::Value) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(value.to_string().as_bytes()).unwrap();
    f
}

fn header_network(path: &Path) -> NetworkConfig {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&meta.metadata().as_ref().unwrap()["ctgrade.network"]).unwrap()
}

#[test]
fn the_engines_3d_resnet_defaults_are_monais() {
    let idx = index();
    let monai = &idx.monai_resnet_defaults;
    for arch in [Arch::ResNet18_3d, Arch::ResNet34_3d, Arch::ResNet50_3d] {
        // What `ensemble new` writes into a manifest without --config.
        let cfg = resolve_config(arch, 3, 1, None).unwrap();
        assert_eq!(cfg, NetworkConfig::new(arch, 3, 1).resolved());
        let json = serde_json::to_value(&cfg).unwrap();
        for key in [
            "conv1_t_size",
            "conv1_t_stride",
            "no_max_pool",
            "shortcut_type",
            "bias_downsample",
        ] {
            assert_eq!(json[key], monai[key], "{arch}: {key}");
        }
        // The engine has neither option: its networks are MONAI's at these values.
        assert_eq!(monai["widen_factor"], 1.0);
        assert_eq!(monai["feed_forward"], true);
        let params: usize = expected_tensors(&cfg)
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, idx.full_size_parameters[arch.name()], "{arch}");
    }
    let cfg = resolve_config(Arch::ResNet50_3d, 3, 1, None).unwrap();
    assert_eq!(cfg.shortcut_type, Some(ShortcutType::B));
    // The I3D's head form is stated too; other families are left as they were.
    let i3d = resolve_config(Arch::InceptionV1_3d, 3, 1, None).unwrap();
    assert_eq!(i3d.i3d_head, Some(I3dHead::Kinetics));
    let dense = resolve_config(Arch::DenseNet201_3d, 3, 1, None).unwrap();
    assert_eq!(dense, NetworkConfig::new(Arch::DenseNet201_3d, 3, 1));
    // The head form is the I3D's alone; elsewhere it would be silently ignored.
    let mut googlenet = NetworkConfig::new(Arch::InceptionV1_2d, 3, 1);
    googlenet.i3d_head = Some(I3dHead::Stoic);
    let e = expected_tensors_named(&googlenet, Naming::Monai).unwrap_err();
    assert!(e.to_string().contains("i3d_head"), "{e}");
}

#[test]
fn monai_resnets_with_monais_defaults_convert_and_match() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "resnet18-3d_monai",
        "resnet34-3d_monai",
        "resnet50-3d_monai",
    ] {
        let case = case(name);
        let out = dir.path().join(format!("{name}.safetensors"));
        let config = case.config_with(serde_json::json!({}));
        let report = convert(&case.convert_args(&config, out.clone())).unwrap();
        // Every hyper-parameter the checkpoint cannot show is stated, in the report and the file.
        assert_eq!(report.network.conv1_t_stride, Some(1), "{name}");
        assert_eq!(report.network.no_max_pool, Some(false), "{name}");
        assert_eq!(report.network.num_outputs, case.num_outputs);
        assert_eq!(
            report.assumed,
            vec![
                "assuming conv1_t_stride = 1, MONAI's default; pass --config to change it",
                "assuming no_max_pool = false, MONAI's default; pass --config to change it",
            ],
            "{name}"
        );
        assert_eq!(header_network(&out), report.network, "{name}");
        let (x, want) = case.io();
        let got = forward_file(case.arch, &out, &x, config.path());
        let d = max_abs_diff(&got, &want);
        eprintln!("{name}: defaults, max |diff| {d:e}");
        assert!(d < TOL, "{name}: differs from MONAI by {d}");
        // The stride matters: with the old default the network computes something else.
        let stride2 = case.config_with(serde_json::json!({ "conv1_t_stride": 2 }));
        let other = forward_file(case.arch, &out, &x, stride2.path());
        let d2 = max_abs_diff(&other, &want);
        eprintln!("{name}: conv1_t_stride 2, max |diff| {d2:e}");
        assert!(d2 > 1e-2, "{name}: stride 2 differs by only {d2}");
    }
}

#[test]
fn an_explicit_stride_is_not_an_assumption() {
    let dir = tempfile::tempdir().unwrap();
    let case = case("resnet18-3d_monai");
    let config = case.config_with(serde_json::json!({ "conv1_t_stride": 2, "no_max_pool": false }));
    let report = convert(&case.convert_args(&config, dir.path().join("w.safetensors"))).unwrap();
    assert!(report.assumed.is_empty(), "{:?}", report.assumed);
    assert_eq!(report.network.conv1_t_stride, Some(2));
}

#[test]
fn stoic_i3d_converts_with_its_own_head_and_pooling() {
    let dir = tempfile::tempdir().unwrap();
    let case = case("i3d_stoic");
    assert_eq!(case.i3d_head, Some(I3dHead::Stoic));
    let out = dir.path().join("stoic.safetensors");
    // No --drop-unexpected, nothing about the head in --config: the names say which head it is.
    let config = case.config_with(serde_json::json!({}));
    let report = convert(&case.convert_args(&config, out.clone())).unwrap();
    assert_eq!(report.network.i3d_head, Some(I3dHead::Stoic));
    assert_eq!(report.network.num_outputs, 1);
    assert_eq!(
        report.dropped,
        vec!["conv3d_0c_1x1.conv3d.bias", "conv3d_0c_1x1.conv3d.weight"]
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("i3d_head = stoic")),
        "{:?}",
        report.notes
    );
    let stored = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert!(stored.contains_key("linear.weight"));
    assert!(!stored.keys().any(|k| k.starts_with("conv3d_0c_1x1")));
    assert_eq!(header_network(&out), report.network);
    let (x, want) = case.io();
    let got = forward_file(case.arch, &out, &x, config.path());
    let d = max_abs_diff(&got, &want);
    eprintln!("i3d_stoic: max |diff| {d:e}");
    assert!(d < TOL, "STOIC I3D differs from the reference by {d}");

    // The unconverted checkpoint's tensors build the same network (head read off the names).
    let ck = read_checkpoint(&case.checkpoint(), None).unwrap();
    let ts: HashMap<String, Tensor> = ck.tensors.into_iter().collect();
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    let mut cfg = NetworkConfig::new(case.arch, 3, 1);
    cfg.width_divisor = Some(32);
    let net = build(&cfg, vb).unwrap();
    let d = max_abs_diff(&net.forward(&x).unwrap(), &want);
    assert!(d < TOL, "built from the checkpoint: differs by {d}");

    // The fixture tells the pools apart: its 4x9x8 map is larger than the window.
    let weights = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let inc =
        FoldedInception::new(&InceptionConfig::from_network(&report.network).unwrap(), vb).unwrap();
    let fmap = inc.feature_map(&x).unwrap();
    assert_eq!(&fmap.dims()[2..], case.feature_map.unwrap().as_slice());
    let d = max_abs_diff(
        &windowed_mean(&fmap, I3D_POOL).unwrap(),
        &global_avg_pool(&fmap).unwrap(),
    );
    eprintln!("i3d_stoic: pooled features, (2, 7, 7) window vs global mean: {d:e}");
    assert!(d > 1e-3, "pools differ by only {d}");
}

#[test]
fn kinetics_form_i3d_converts_and_pools_as_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let case = case("i3d_kinetics");
    let out = dir.path().join("kinetics.safetensors");
    let config = case.config_with(serde_json::json!({}));
    let report = convert(&case.convert_args(&config, out.clone())).unwrap();
    assert_eq!(report.network.i3d_head, Some(I3dHead::Kinetics));
    assert_eq!(report.network.num_outputs, 5);
    assert!(report.dropped.is_empty());
    let (x, want) = case.io();
    let got = forward_file(case.arch, &out, &x, config.path());
    let d = max_abs_diff(&got, &want);
    eprintln!("i3d_kinetics: max |diff| {d:e}");
    assert!(
        d < TOL,
        "Kinetics-form I3D differs from the reference by {d}"
    );
}

#[test]
fn an_output_count_that_fits_no_declared_head_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let case = case("i3d_stoic");
    // The STOIC checkpoint without its own head: what is left is the 400-class Kinetics head.
    let ck = read_checkpoint(&case.checkpoint(), None).unwrap();
    let kinetics: HashMap<String, Tensor> = ck
        .tensors
        .into_iter()
        .filter(|(n, _)| !n.starts_with("linear."))
        .collect();
    let from = dir.path().join("kinetics400.safetensors");
    candle_core::safetensors::save(&kinetics, &from).unwrap();
    let out = dir.path().join("out.safetensors");
    let config = case.config_with(serde_json::json!({}));
    let with_config = |from: &Path| {
        let mut args = convert_args(from.to_path_buf(), case.arch, out.clone());
        args.config = Some(config.path().to_path_buf());
        args
    };
    match convert(&with_config(&from)) {
        Err(e @ ConvertError::HeadSize { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("400 output(s)") && text.contains("--num-outputs 400"),
                "{text}"
            );
            assert!(text.contains("Kinetics"), "{text}");
        }
        other => panic!("expected a head-size error, got {other:?}"),
    }
    assert!(!out.exists());
    // Declared with another count: an error too.
    let mut args = with_config(&from);
    args.num_outputs = Some(1);
    assert!(matches!(
        convert(&args),
        Err(ConvertError::HeadSize {
            found: 400,
            declared: Some(1),
            ..
        })
    ));
    // Asked for explicitly, the 400-class network converts.
    let mut args = with_config(&from);
    args.num_outputs = Some(400);
    let report: ConvertReport = convert(&args).unwrap();
    assert_eq!(report.network.num_outputs, 400);
    assert_eq!(report.network.i3d_head, Some(I3dHead::Kinetics));
    // And the STOIC checkpoint declared with 5 outputs is refused, naming both counts.
    let mut args = with_config(&case.checkpoint());
    args.num_outputs = Some(5);
    let e = convert(&args).unwrap_err().to_string();
    assert!(
        e.contains("1 output(s)") && e.contains("declared with 5"),
        "{e}"
    );
}

#[test]
fn manifests_state_the_resolved_configuration() {
    let dir = tempfile::tempdir().unwrap();
    for (name, head) in [
        ("i3d_stoic", Head::Continuous),
        ("resnet18-3d_monai", Head::Continuous),
    ] {
        let case = case(name);
        let w = dir.path().join(format!("{name}.safetensors"));
        let config = case.config_with(serde_json::json!({}));
        let report = convert(&case.convert_args(&config, w.clone())).unwrap();
        let ens = dir.path().join(format!("ens-{name}"));
        let manifest = Manifest {
            name: name.into(),
            description: "test".into(),
            demonstration: false,
            network: report.network,
            head,
            input: InputSpec::default(),
            members: Vec::new(),
            lesion_model: None,
            lobe_model: None,
        };
        ensemble::create(&ens, manifest, &[w]).unwrap();
        let text = std::fs::read_to_string(ens.join(ensemble::MANIFEST_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let net = &v["network"];
        match case.arch {
            Arch::InceptionV1_3d => assert_eq!(net["i3d_head"], "stoic", "{text}"),
            _ => {
                assert_eq!(net["conv1_t_stride"], 1, "{text}");
                assert_eq!(net["no_max_pool"], false, "{text}");
            }
        }
        ensemble::Ensemble::open(&ens).unwrap();
    }
}

#[test]
fn command_line_convert_reports_its_assumptions() {
    let dir = tempfile::tempdir().unwrap();
    let case = case("resnet34-3d_monai");
    let out = dir.path().join("w.safetensors");
    let config = case.config_with(serde_json::json!({}));
    let o = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args([
            "convert",
            "--from",
            case.checkpoint().to_str().unwrap(),
            "--arch",
            "resnet34-3d",
            "--config",
            config.path().to_str().unwrap(),
            "--num-outputs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["assumed"][0],
        "assuming conv1_t_stride = 1, MONAI's default; pass --config to change it"
    );
    assert_eq!(report["network"]["conv1_t_stride"], 1);
}

#[test]
fn stoic_i3d_repeats_a_one_channel_ct() {
    // As the baseline's forward: a one-channel input is expanded over the three channels.
    let mut cfg = NetworkConfig::new(Arch::InceptionV1_3d, 3, 1);
    cfg.width_divisor = Some(32);
    cfg.i3d_head = Some(I3dHead::Stoic);
    let vm = VarMap::new();
    let net = build(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let one = hash_input(&[1, 1, 8, 32, 32]);
    let three = Tensor::cat(&[&one, &one, &one], 1).unwrap();
    let d = max_abs_diff(&net.forward(&one).unwrap(), &net.forward(&three).unwrap());
    assert_eq!(d, 0.0);
}
