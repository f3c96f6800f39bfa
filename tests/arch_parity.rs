//! Parity of the 3-D ResNets (MONAI), the 3-D Inception-v1 (I3D reference), the 2-D networks with
//! the slice reduction (torchvision / MONAI backbones) and COVNet with PyTorch, against the golden
//! fixtures written by tools/make_arch_fixtures.py; and every architecture through the registry,
//! `ctgrade forward` and `ctgrade bench`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use ctgrade::device::Precision;
use ctgrade::model::probe::{bench, forward, BenchOptions, ForwardOptions};
use ctgrade::model::{
    build, build_with_naming, detect_naming, expected_tensors, expected_tensors_named, Arch,
    ModelError, Naming, NetworkConfig,
};
use serde::Deserialize;

const FIX: &str = "tests/fixtures/arch";
const TOL: f32 = 1e-4;

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    config: NetworkConfig,
    naming: String,
    file: String,
}

impl Case {
    fn naming(&self) -> Naming {
        match self.naming.as_str() {
            "torchvision" => Naming::Torchvision,
            _ => Naming::Monai,
        }
    }

    /// Checkpoint tensors, input, PyTorch output.
    fn load(&self) -> (HashMap<String, Tensor>, Tensor, Tensor) {
        let mut ts =
            candle_core::safetensors::load(format!("{FIX}/{}", self.file), &Device::Cpu).unwrap();
        let x = ts.remove("input").unwrap();
        let y = ts.remove("output").unwrap();
        (ts, x, y)
    }
}

fn cases() -> Vec<Case> {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/cases.json")).unwrap()).unwrap()
}

/// The architectures beyond the 3-D DenseNets (those have their own fixtures in model_parity).
fn new_archs() -> impl Iterator<Item = Arch> {
    Arch::ALL.into_iter().filter(|a| {
        !matches!(
            a,
            Arch::DenseNet121_3d | Arch::DenseNet169_3d | Arch::DenseNet201_3d
        )
    })
}

#[test]
fn fixtures_cover_every_new_arch_with_both_heads() {
    let have: HashSet<(Arch, usize)> = cases()
        .iter()
        .map(|c| (c.config.arch, c.config.num_outputs))
        .collect();
    for arch in new_archs() {
        for outputs in [1, 5] {
            assert!(
                have.contains(&(arch, outputs)),
                "no {arch} case with {outputs} outputs"
            );
        }
    }
}

#[test]
fn every_arch_matches_pytorch() {
    for case in cases() {
        for naming in [None, Some(case.naming())] {
            let (ts, x, want) = case.load();
            let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
            let net = match naming {
                Some(n) => build_with_naming(&case.config, vb, n),
                None => build(&case.config, vb),
            }
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let d = max_abs_diff(&net.forward(&x).unwrap(), &want);
            assert!(d < TOL, "{}: differs by {d}", case.name);
        }
    }
}

#[test]
fn composed_path_matches_pytorch() {
    // In f64 the fast f32 CPU kernels stand aside: the candle-op versions (autograd, CUDA) run.
    for case in cases() {
        let (ts, x, want) = case.load();
        let vb = VarBuilder::from_tensors(ts, DType::F64, &Device::Cpu);
        let net = build(&case.config, vb).unwrap();
        let got = net.forward(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < TOL, "{} composed: differs by {d}", case.name);
    }
}

#[test]
fn expected_tensors_name_the_checkpoints() {
    for case in cases() {
        let (ts, _, _) = case.load();
        let mut want: Vec<(String, Vec<usize>)> = ts
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        let listed = expected_tensors_named(&case.config, case.naming()).unwrap();
        // The stem comes first and the head last: `ctgrade forward` reads the input channels and
        // outputs off them.
        let first = &listed[0];
        assert_eq!(
            first.1[1], case.config.in_channels,
            "{}: {first:?}",
            case.name
        );
        let head = &listed[listed.len() - 2];
        assert_eq!(
            head.1[0], case.config.num_outputs,
            "{}: {head:?}",
            case.name
        );
        let mut got = listed.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}", case.name);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        assert_eq!(
            detect_naming(&case.config, &vb),
            case.naming(),
            "{}",
            case.name
        );
        if !case.config.arch.name().starts_with("densenet") {
            // One convention: both namings list the same tensors.
            let mut plain = expected_tensors(&case.config);
            plain.sort();
            assert_eq!(plain, got, "{}", case.name);
        }
    }
}

/// The case's hyper-parameter overrides as a `--config` file (in_channels and num_outputs come
/// from the weights).
fn overrides_file(cfg: &NetworkConfig) -> tempfile::NamedTempFile {
    let mut v = serde_json::to_value(cfg).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("in_channels");
    m.remove("num_outputs");
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(v.to_string().as_bytes()).unwrap();
    f
}

#[test]
fn ctgrade_forward_runs_every_fixture() {
    for case in cases() {
        let (_, _, want) = case.load();
        let config = overrides_file(&case.config);
        let path = std::path::PathBuf::from(format!("{FIX}/{}", case.file));
        let out = forward(&ForwardOptions {
            arch: case.config.arch,
            config: Some(config.path().to_path_buf()),
            weights: path.clone(),
            input: path,
            device: ctgrade::device::DeviceChoice::Cpu,
            precision: Precision::F32,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let got: Vec<Vec<f32>> = serde_json::from_value(v["output"].clone()).unwrap();
        let got = Tensor::new(got, &Device::Cpu).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < TOL, "{} via ctgrade forward: differs by {d}", case.name);
    }
}

#[test]
fn ctgrade_bench_runs_every_arch() {
    for arch in Arch::ALL {
        // Small networks of each family on a small input; the published sizes are benchmarked by hand.
        let mut cfg = NetworkConfig::new(arch, 3, 5);
        match arch.name() {
            n if n.starts_with("densenet") => {
                cfg.growth_rate = Some(2);
                cfg.init_features = Some(4);
                cfg.block_config = Some(vec![1, 1]);
            }
            _ => cfg.width_divisor = Some(16),
        }
        let config = overrides_file(&cfg);
        // Every architecture also runs in the reduced precisions (their ops exist in 16 bits).
        for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
            let r = bench(&BenchOptions {
                arch,
                config: Some(config.path().to_path_buf()),
                input: "2,3,6,32,32".into(),
                repeat: 1,
                threads: None,
                num_outputs: 5,
                device: ctgrade::device::DeviceChoice::Cpu,
                precision,
            })
            .unwrap_or_else(|e| panic!("{arch} in {precision}: {e}"));
            assert_eq!(r.arch, arch.name());
            assert_eq!(r.precision, precision.to_string());
            assert_eq!(r.input, vec![2, 3, 6, 32, 32]);
            assert_eq!(r.times_s.len(), 1);
        }
    }
}

#[test]
fn names_round_trip() {
    let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
    for want in [
        "resnet18-3d",
        "resnet34-3d",
        "resnet50-3d",
        "inception-v1-3d",
        "densenet121-2d",
        "densenet169-2d",
        "densenet201-2d",
        "inception-v1-2d",
        "resnet18-2d",
        "resnet34-2d",
        "resnet50-2d",
        "covnet",
    ] {
        assert!(names.contains(&want), "{want} missing");
    }
    for arch in Arch::ALL {
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(json, format!("\"{}\"", arch.name()));
        assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
    }
    let err = "resnet101-3d".parse::<Arch>().unwrap_err().to_string();
    assert!(
        err.contains("inception-v1-3d") && err.contains("covnet"),
        "{err}"
    );
}

#[test]
fn overrides_that_do_not_apply_are_rejected() {
    let mut cfg = NetworkConfig::new(Arch::ResNet50_2d, 3, 1);
    cfg.growth_rate = Some(8);
    let e = expected_tensors_named(&cfg, Naming::Monai).unwrap_err();
    assert!(e.to_string().contains("growth_rate"), "{e}");
    let mut cfg = NetworkConfig::new(Arch::DenseNet121_3d, 3, 1);
    cfg.width_divisor = Some(2);
    assert!(expected_tensors_named(&cfg, Naming::Monai).is_err());
    let mut cfg = NetworkConfig::new(Arch::ResNet18_2d, 3, 1);
    cfg.conv1_t_stride = Some(1);
    assert!(expected_tensors_named(&cfg, Naming::Monai).is_err());
    let mut cfg = NetworkConfig::new(Arch::ResNet18_3d, 3, 1);
    cfg.width_divisor = Some(3);
    assert!(expected_tensors_named(&cfg, Naming::Monai).is_err());
    // A manifest written before these fields existed still reads.
    let old: NetworkConfig =
        serde_json::from_str(r#"{"arch":"densenet201-3d","in_channels":3,"num_outputs":1}"#)
            .unwrap();
    assert_eq!(old, NetworkConfig::new(Arch::DenseNet201_3d, 3, 1));
}

#[test]
fn bad_weights_name_the_tensor() {
    let case = cases()
        .into_iter()
        .find(|c| c.config.arch == Arch::InceptionV1_3d)
        .unwrap();
    let (mut ts, _, _) = case.load();
    let gone = "mixed_4b.branch_1.1.conv3d.weight";
    let w = ts.remove(gone).unwrap();
    let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &Device::Cpu);
    match build(&case.config, vb) {
        Err(ModelError::MissingTensor { name }) => assert_eq!(name, gone),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("built without {gone}"),
    }
    ts.insert(gone.into(), w.narrow(0, 0, 1).unwrap());
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    match build(&case.config, vb) {
        Err(ModelError::ShapeMismatch { name, .. }) => assert_eq!(name, gone),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("built with a wrong shape"),
    }
}
