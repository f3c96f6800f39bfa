//! `ctgrade convert` and `ctgrade inflate` against the fixtures of tools/make_convert_fixtures.py:
//! checkpoints written by PyTorch convert and reproduce PyTorch's outputs; inflated 2-D weights on
//! a volume of identical slices reproduce the 2-D network's output; bad inputs give clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ctgrade::ensemble::{self, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::convert::{convert, ConvertError, ConvertOptions, NamingArg, OutDType};
use ctgrade::model::inflate::{inflate, DepthMode, InflateOptions};
use ctgrade::model::{build, expected_tensors, Arch, NetworkConfig};
use ctgrade::preprocess::InputSpec;
use serde_json::Value;

const FIX: &str = "tests/fixtures/convert";
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(FIX).join(name)
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("convert.json")).unwrap()).unwrap()
}

/// The network of fixture `key` (`net3d`, `net2d`).
fn network(key: &str) -> NetworkConfig {
    serde_json::from_value(meta()[key]["config"].clone()).unwrap()
}

/// A `--config` file with the hyper-parameters only: in_channels and num_outputs are left for the
/// tools to read off the weights.
fn hyper_config(dir: &Path, key: &str) -> PathBuf {
    let mut cfg = meta()[key]["config"].clone();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("arch");
    obj.remove("in_channels");
    obj.remove("num_outputs");
    let path = dir.join(format!("{key}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn convert_args(
    from: PathBuf,
    arch: Arch,
    config: Option<PathBuf>,
    out: PathBuf,
) -> ConvertOptions {
    ConvertOptions {
        from,
        arch,
        config,
        naming: NamingArg::Auto,
        key: None,
        num_outputs: None,
        drop_unexpected: false,
        dtype: OutDType::F32,
        out,
    }
}

fn inflate_args(dir: &Path, mode: DepthMode, num_outputs: usize, out: &str) -> InflateOptions {
    InflateOptions {
        from: fixture("densenet2d.safetensors"),
        arch: Arch::DenseNet121_3d,
        config: Some(hyper_config(dir, "net2d")),
        depth_mode: mode,
        num_outputs,
        naming: NamingArg::Auto,
        key: None,
        drop_unexpected: false,
        dtype: OutDType::F32,
        out: dir.join(out),
    }
}

fn io(name: &str) -> (Tensor, Tensor) {
    let ts = candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap();
    (ts["input"].clone(), ts["output"].clone())
}

fn forward(cfg: &NetworkConfig, weights: &Path, x: &Tensor) -> Tensor {
    let ts = candle_core::safetensors::load(weights, &Device::Cpu).unwrap();
    let net = build(cfg, VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu)).unwrap();
    net.forward(x).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `D` identical copies of each 2-D image: (N, C, H, W) -> (N, C, D, H, W).
fn identical_slices(x2d: &Tensor, depth: usize) -> Tensor {
    let (n, c, h, w) = x2d.dims4().unwrap();
    x2d.unsqueeze(2)
        .unwrap()
        .broadcast_as((n, c, depth, h, w))
        .unwrap()
        .contiguous()
        .unwrap()
}

fn header_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

fn mismatch_problems(err: ConvertError) -> Vec<String> {
    match err {
        ConvertError::Mismatch { problems, .. } => problems,
        other => panic!("expected a tensor mismatch, got: {other}"),
    }
}

#[test]
fn dataparallel_training_checkpoint_converts_and_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net.safetensors");
    let args = convert_args(
        fixture("monai_module.pth"),
        Arch::DenseNet121_3d,
        Some(hyper_config(dir.path(), "net3d")),
        out.clone(),
    );
    let report = convert(&args).unwrap();
    assert_eq!(report.entry.as_deref(), Some("state_dict"));
    assert_eq!(report.prefix, "module.");
    assert_eq!(report.naming, "monai");
    let cfg = network("net3d");
    // in_channels (2) and num_outputs (5) were read off the stem and the head.
    assert_eq!(report.network, cfg);
    // Exactly the engine's tensors: BatchNorm statistics in, num_batches_tracked out.
    let stored = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = stored.keys().collect();
    names.sort();
    let mut want: Vec<String> = expected_tensors(&cfg).into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(names, want.iter().collect::<Vec<_>>());
    assert!(want.iter().any(|n| n.ends_with("running_var")));
    let (x, y) = io("net3d_io.safetensors");
    let d = max_abs_diff(&forward(&cfg, &out, &x), &y);
    assert!(d < TOL, "converted network differs from PyTorch by {d}");
    let meta = header_metadata(&out);
    let written: NetworkConfig = serde_json::from_str(&meta["ctgrade.network"]).unwrap();
    assert_eq!(written, cfg);
}

#[test]
fn old_torchvision_names_convert_and_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net.safetensors");
    let args = convert_args(
        fixture("torchvision_legacy.pth"),
        Arch::DenseNet121_3d,
        Some(hyper_config(dir.path(), "net3d")),
        out.clone(),
    );
    let report = convert(&args).unwrap();
    assert_eq!(report.entry, None);
    assert_eq!(report.naming, "torchvision");
    let (x, y) = io("net3d_io.safetensors");
    let d = max_abs_diff(&forward(&network("net3d"), &out, &x), &y);
    assert!(d < TOL, "converted network differs from PyTorch by {d}");
}

#[test]
fn safetensors_reconvert_to_f16_and_join_an_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_file = hyper_config(dir.path(), "net3d");
    let f32_file = dir.path().join("f32.safetensors");
    let args = convert_args(
        fixture("monai_module.pth"),
        Arch::DenseNet121_3d,
        Some(cfg_file.clone()),
        f32_file.clone(),
    );
    convert(&args).unwrap();
    let f16_file = dir.path().join("f16.safetensors");
    let mut args = convert_args(
        f32_file,
        Arch::DenseNet121_3d,
        Some(cfg_file),
        f16_file.clone(),
    );
    args.dtype = OutDType::F16;
    let report = convert(&args).unwrap();
    assert_eq!(report.prefix, "");
    let stored = candle_core::safetensors::load(&f16_file, &Device::Cpu).unwrap();
    assert!(stored.values().all(|t| t.dtype() == DType::F16));
    let (x, y) = io("net3d_io.safetensors");
    let d = max_abs_diff(&forward(&network("net3d"), &f16_file, &x), &y);
    // Half precision weights: about three significant digits.
    assert!(d < 2e-2, "f16 network differs from PyTorch by {d}");
    // The converted file passes the ensemble's checks (names, shapes, nothing unexpected).
    let manifest = Manifest {
        name: "converted".into(),
        description: "test".into(),
        demonstration: false,
        network: report.network,
        head: Head::Categorical,
        input: InputSpec::default(),
        members: Vec::new(),
        lesion_model: None,
        lobe_model: None,
    };
    let made = ensemble::create(&dir.path().join("ens"), manifest, &[f16_file]).unwrap();
    assert_eq!(made.members.len(), 1);
}

#[test]
fn center_inflation_reproduces_the_2d_network_on_identical_slices() {
    let dir = tempfile::tempdir().unwrap();
    let report = inflate(&inflate_args(
        dir.path(),
        DepthMode::Center,
        3,
        "c.safetensors",
    ))
    .unwrap();
    assert_eq!(report.head, "kept");
    assert_eq!(report.network, network("net2d"));
    let (x2d, y2d) = io("net2d_io.safetensors");
    // Only centre depth taps are non-zero: every slice is computed on its own, at any depth.
    let depth = meta()["net2d"]["center_depth"].as_u64().unwrap() as usize;
    let x = identical_slices(&x2d, depth);
    let y = forward(&report.network, &dir.path().join("c.safetensors"), &x);
    let d = max_abs_diff(&y, &y2d);
    assert!(d < TOL, "center-inflated network differs from 2-D by {d}");
}

#[test]
fn repeat_inflation_reproduces_the_2d_network_away_from_the_ends() {
    let dir = tempfile::tempdir().unwrap();
    let report = inflate(&inflate_args(
        dir.path(),
        DepthMode::Repeat,
        3,
        "r.safetensors",
    ))
    .unwrap();
    let weights = dir.path().join("r.safetensors");
    let (x2d, y2d) = io("net2d_io.safetensors");
    // With w2d / kd at every depth tap, a slice far enough from both ends computes exactly the 2-D
    // features; near the ends, zero padding in depth changes them. The output is the head (affine)
    // of the mean over the n final slices: y(D) = head((B + (n - m) v) / n), v the 2-D features, B
    // the sum of the m boundary slices. B and m are equal for depths that differ by a multiple of
    // the total stride (8), so (n2 y2 - n1 y1) / (n2 - n1) = head(v), the 2-D output. The fixture
    // script checked this with MONAI and found the boundary slices and the final depths below.
    let m = meta();
    let depths: Vec<usize> = serde_json::from_value(m["net2d"]["repeat_depths"].clone()).unwrap();
    let finals: Vec<f64> =
        serde_json::from_value(m["net2d"]["repeat_final_depths"].clone()).unwrap();
    let ys: Vec<Tensor> = depths
        .iter()
        .map(|&d| forward(&report.network, &weights, &identical_slices(&x2d, d)))
        .collect();
    let (n1, n2) = (finals[0], finals[1]);
    let combined = ((ys[1].affine(n2, 0.0).unwrap() - ys[0].affine(n1, 0.0).unwrap()).unwrap()
        / (n2 - n1))
        .unwrap();
    let d = max_abs_diff(&combined, &y2d);
    assert!(d < TOL, "repeat-inflated network differs from 2-D by {d}");
    // One volume alone shows the boundary effect: the combination above is what cancels it.
    assert!(max_abs_diff(&ys[1], &y2d) > 1e-3);
}

#[test]
fn inflation_to_another_head_size_starts_the_head_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let report = inflate(&inflate_args(
        dir.path(),
        DepthMode::Repeat,
        1,
        "h.safetensors",
    ))
    .unwrap();
    assert_eq!(report.head, "zeros");
    assert!(
        report.head_note.contains("classifier.weight"),
        "{}",
        report.head_note
    );
    assert_eq!(report.network.num_outputs, 1);
    let path = dir.path().join("h.safetensors");
    let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let w = &stored["class_layers.out.weight"];
    assert_eq!(w.dims(), &[1, 16]);
    let (x2d, _) = io("net2d_io.safetensors");
    let y = forward(&report.network, &path, &identical_slices(&x2d, 8));
    assert_eq!(y.dims(), &[2, 1]);
    assert_eq!(
        y.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    assert_eq!(header_metadata(&path)["ctgrade.depth_mode"], "repeat");
}

#[test]
fn wrong_architecture_lists_every_problem_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // Without --config the published DenseNet-121 is expected: every width differs.
    let args = convert_args(
        fixture("monai_module.pth"),
        Arch::DenseNet121_3d,
        None,
        dir.path().join("x.safetensors"),
    );
    let err = convert(&args).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--config"), "{text}");
    let problems = mismatch_problems(err);
    assert!(problems.contains(&"tensor module.features.conv0.weight has shape [6, 2, 7, 7, 7], expected [64, 2, 7, 7, 7]".to_string()), "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.starts_with("missing tensor module.features.denseblock4.denselayer16.")));
    assert!(!dir.path().join("x.safetensors").exists());
    // Forcing the wrong naming convention: the dense layers are not found.
    let mut args = convert_args(
        fixture("monai_module.pth"),
        Arch::DenseNet121_3d,
        Some(hyper_config(dir.path(), "net3d")),
        dir.path().join("x.safetensors"),
    );
    args.naming = NamingArg::Torchvision;
    let problems = mismatch_problems(convert(&args).unwrap_err());
    for want in [
        "missing tensor module.features.denseblock1.denselayer1.norm1.weight (expected shape [6])",
        "unexpected tensor module.class_layers.out.weight (shape [5, 10])",
    ] {
        assert!(problems.iter().any(|p| p == want), "{want}: {problems:?}");
    }
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_file = hyper_config(dir.path(), "net3d");
    let good = dir.path().join("good.safetensors");
    convert(&convert_args(
        fixture("monai_module.pth"),
        Arch::DenseNet121_3d,
        Some(cfg_file.clone()),
        good.clone(),
    ))
    .unwrap();
    let mut ts = candle_core::safetensors::load(&good, &Device::Cpu).unwrap();
    ts.remove("features.norm5.running_var").unwrap();
    ts.insert(
        "aux_head.weight".into(),
        Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&ts, &bad).unwrap();
    let args = convert_args(
        bad.clone(),
        Arch::DenseNet121_3d,
        Some(cfg_file.clone()),
        dir.path().join("x.safetensors"),
    );
    let problems = mismatch_problems(convert(&args).unwrap_err());
    let missing_var = "missing tensor features.norm5.running_var (expected shape [10])";
    let unexpected = "unexpected tensor aux_head.weight (shape [2, 3])";
    assert_eq!(
        problems,
        vec![missing_var.to_string(), unexpected.to_string()]
    );
    // --drop-unexpected leaves the extra tensor out; the missing one is still an error.
    let mut args = args;
    args.drop_unexpected = true;
    let problems = mismatch_problems(convert(&args).unwrap_err());
    assert_eq!(problems, vec![missing_var.to_string()]);
}

#[test]
fn files_that_are_not_usable_checkpoints_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let run = |from: PathBuf| {
        convert(&convert_args(from, Arch::DenseNet121_3d, None, out.clone()))
            .unwrap_err()
            .to_string()
    };
    let e = run(fixture("convert.json"));
    assert!(
        e.contains("neither a PyTorch checkpoint") && e.contains("7b"),
        "{e}"
    );
    let e = run(fixture("legacy_format.pt"));
    assert!(e.contains("legacy (non-zip) format"), "{e}");
    let e = run(fixture("no_state_dict.pth"));
    assert!(
        e.contains("no state dict found") && e.contains("--key"),
        "{e}"
    );
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(run(empty).contains("the file is empty"));
    let e = run(dir.path().join("absent.pth"));
    assert!(e.contains("cannot read") && e.contains("absent.pth"), "{e}");
    let mut args = convert_args(fixture("monai_module.pth"), Arch::DenseNet121_3d, None, out);
    args.key = Some("optimizer_state".into());
    let e = convert(&args).unwrap_err().to_string();
    assert!(e.contains("optimizer_state"), "{e}");
}

#[test]
fn command_line_convert_and_inflate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg3 = hyper_config(dir.path(), "net3d");
    let out = dir.path().join("net.safetensors");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ctgrade"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "convert",
        "--from",
        fixture("torchvision_legacy.pth").to_str().unwrap(),
        "--arch",
        "densenet121-3d",
        "--config",
        cfg3.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["naming"], "torchvision");
    assert_eq!(report["network"]["num_outputs"], 5);
    assert!(out.is_file());
    let o = run(&[
        "inflate",
        "--from",
        fixture("densenet2d.safetensors").to_str().unwrap(),
        "--arch",
        "densenet121-3d",
        "--config",
        hyper_config(dir.path(), "net2d").to_str().unwrap(),
        "--depth-mode",
        "center",
        "--num-outputs",
        "5",
        "--dtype",
        "bf16",
        "--out",
        dir.path().join("i.safetensors").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["head"], "zeros");
    assert_eq!(report["dtype"], "bf16");
    let o = run(&[
        "convert",
        "--from",
        fixture("legacy_format.pt").to_str().unwrap(),
        "--arch",
        "densenet121-3d",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("legacy (non-zip) format"), "{stderr}");
}
