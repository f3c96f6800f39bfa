//! Parity of the 3-D layers and DenseNet with PyTorch/MONAI, against the golden fixtures written by
//! tools/make_model_fixtures.py. Both the fast CPU kernels and the composed candle-op versions
//! (the ones autograd and CUDA use) are checked.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use ctgrade::model::densenet::{DenseNetConfig, FoldedDenseNet};
use ctgrade::model::layers::{Conv3d, Conv3dConfig, Pool3d, Pool3dConfig};
use ctgrade::model::{
    build, build_with_naming, detect_naming, expected_tensors, expected_tensors_named, ModelError,
    Naming, NetworkConfig, Spatial,
};
use serde::Deserialize;

const FIX: &str = "tests/fixtures/model";
const TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct OpCase {
    name: String,
    kind: String,
    stride: [usize; 3],
    padding: [usize; 6],
    #[serde(default)]
    bias: bool,
    #[serde(default)]
    kernel: [usize; 3],
    #[serde(default)]
    ceil_mode: bool,
    #[serde(default)]
    count_include_pad: bool,
}

fn pads(p: [usize; 6]) -> [[usize; 2]; 3] {
    [[p[0], p[1]], [p[2], p[3]], [p[4], p[5]]]
}

fn ops() -> (Vec<OpCase>, HashMap<String, Tensor>) {
    let cases: Vec<OpCase> =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/ops.json")).unwrap()).unwrap();
    let ts =
        candle_core::safetensors::load(format!("{FIX}/ops.safetensors"), &Device::Cpu).unwrap();
    (cases, ts)
}

#[test]
fn conv3d_matches_pytorch() {
    let (cases, ts) = ops();
    let mut n = 0;
    for c in cases.iter().filter(|c| c.kind == "conv") {
        let t = |s: &str| ts[&format!("{}.{s}", c.name)].clone();
        let bias = c.bias.then(|| t("bias"));
        let cfg = Conv3dConfig {
            stride: c.stride,
            padding: pads(c.padding),
        };
        let conv = Conv3d::new(t("weight"), bias, cfg).unwrap();
        let want = t("output");
        let fast = conv.forward(&t("input")).unwrap();
        let composed = conv.forward_composed(&t("input")).unwrap();
        let d1 = max_abs_diff(&fast, &want);
        let d2 = max_abs_diff(&composed, &want);
        assert!(d1 < TOL, "{}: cpu kernel differs by {d1}", c.name);
        assert!(d2 < TOL, "{}: composed differs by {d2}", c.name);
        n += 1;
    }
    assert!(n >= 10, "only {n} conv cases");
}

#[test]
fn pool3d_matches_pytorch() {
    let (cases, ts) = ops();
    let mut n = 0;
    for c in cases.iter().filter(|c| c.kind != "conv") {
        let cfg = Pool3dConfig {
            kernel: c.kernel,
            stride: c.stride,
            padding: pads(c.padding),
            ceil_mode: c.ceil_mode,
        };
        let pool = match c.kind.as_str() {
            "max" => Pool3d::max(cfg),
            "avg" => Pool3d::avg(cfg, c.count_include_pad),
            k => panic!("unknown op kind {k}"),
        };
        let x = &ts[&format!("{}.input", c.name)];
        let want = &ts[&format!("{}.output", c.name)];
        let d1 = max_abs_diff(&pool.forward(x).unwrap(), want);
        let d2 = max_abs_diff(&pool.forward_composed(x).unwrap(), want);
        assert!(d1 < TOL, "{}: cpu kernel differs by {d1}", c.name);
        assert!(d2 < TOL, "{}: composed differs by {d2}", c.name);
        n += 1;
    }
    assert!(n >= 10, "only {n} pool cases");
}

#[derive(Deserialize)]
struct NetFixture {
    config: NetworkConfig,
}

fn net(key: &str, naming: &str) -> (NetworkConfig, HashMap<String, Tensor>, Tensor, Tensor) {
    let all: HashMap<String, NetFixture> =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/densenet.json")).unwrap())
            .unwrap();
    let cfg = all[key].config.clone();
    let mut ts = candle_core::safetensors::load(
        format!("{FIX}/densenet_{key}_{naming}.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = ts.remove("input").unwrap();
    let y = ts.remove("output").unwrap();
    (cfg, ts, x, y)
}

fn run(
    cfg: &NetworkConfig,
    ts: HashMap<String, Tensor>,
    x: &Tensor,
    dtype: DType,
    naming: Option<Naming>,
) -> Tensor {
    let vb = VarBuilder::from_tensors(ts, dtype, &Device::Cpu);
    let net = match naming {
        Some(n) => build_with_naming(cfg, vb, n).unwrap(),
        None => build(cfg, vb).unwrap(),
    };
    net.forward(&x.to_dtype(dtype).unwrap()).unwrap()
}

#[test]
fn densenet_matches_monai_both_namings_and_heads() {
    for key in ["a", "b"] {
        for naming in ["monai", "torchvision"] {
            // Detected names, and names given.
            let given = match naming {
                "monai" => Naming::Monai,
                _ => Naming::Torchvision,
            };
            for choice in [None, Some(given)] {
                let (cfg, ts, x, want) = net(key, naming);
                let got = run(&cfg, ts, &x, DType::F32, choice);
                let d = max_abs_diff(&got, &want);
                assert!(d < TOL, "net {key} ({naming} names): differs by {d}");
            }
        }
    }
}

#[test]
fn densenet_composed_path_matches_monai() {
    // In f64 the fast f32 CPU kernels stand aside: this runs the candle-op versions end to end.
    for key in ["a", "b"] {
        let (cfg, ts, x, want) = net(key, "monai");
        let got = run(&cfg, ts, &x, DType::F64, None);
        let d = max_abs_diff(&got, &want);
        assert!(d < TOL, "net {key} composed: differs by {d}");
    }
}

#[test]
fn densenet_layer_by_layer_cpu_path_matches_monai() {
    // The fused dense blocks aside: each layer's own CPU kernel, with concatenation.
    for key in ["a", "b"] {
        let (cfg, ts, x, want) = net(key, "monai");
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        let dc = DenseNetConfig::from_network(&cfg).unwrap();
        let net = FoldedDenseNet::new(&dc, Spatial::D3, vb, Naming::Monai).unwrap();
        let d = max_abs_diff(&net.forward_layered(&x).unwrap(), &want);
        assert!(d < TOL, "net {key} layered: differs by {d}");
    }
}

#[test]
fn expected_tensors_name_the_state_dict() {
    for (key, naming, nm) in [
        ("a", "monai", Naming::Monai),
        ("b", "torchvision", Naming::Torchvision),
    ] {
        let (cfg, ts, _, _) = net(key, naming);
        let mut got = expected_tensors_named(&cfg, nm).unwrap();
        let mut want: Vec<(String, Vec<usize>)> = ts
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "net {key}");
        if nm == Naming::Monai {
            let mut plain = expected_tensors(&cfg);
            plain.sort();
            assert_eq!(plain, got);
        }
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        assert_eq!(detect_naming(&cfg, &vb), nm);
    }
}

#[test]
fn legacy_torchvision_names_load() {
    let (cfg, ts, x, want) = net("a", "torchvision");
    let old: HashMap<String, Tensor> = ts
        .into_iter()
        .map(|(k, v)| {
            let k = ["norm1", "norm2", "conv1", "conv2"].iter().fold(k, |k, m| {
                k.replace(&format!(".{m}."), &format!(".{}.{}.", &m[..4], &m[4..]))
            });
            (k, v)
        })
        .collect();
    assert!(old.contains_key("features.denseblock1.denselayer1.norm.1.weight"));
    let vb = VarBuilder::from_tensors(old, DType::F32, &Device::Cpu);
    assert_eq!(detect_naming(&cfg, &vb), Naming::Torchvision);
    let net = build(&cfg, vb).unwrap();
    let d = max_abs_diff(&net.forward(&x).unwrap(), &want);
    assert!(d < TOL, "legacy names: differs by {d}");
}

#[test]
fn bad_weights_name_the_tensor() {
    let (cfg, mut ts, _, _) = net("a", "monai");
    let gone = "features.denseblock2.denselayer1.layers.conv2.weight";
    ts.remove(gone).unwrap();
    let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &Device::Cpu);
    match build(&cfg, vb) {
        Err(ModelError::MissingTensor { name }) => assert_eq!(name, gone),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("built without {gone}"),
    }
    let wrong = "features.norm5.running_var";
    ts.insert(
        wrong.into(),
        Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
    );
    ts.insert(
        gone.into(),
        Tensor::zeros((4, 8, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    match build(&cfg, vb) {
        Err(ModelError::ShapeMismatch { name, found, .. }) => {
            assert_eq!(name, wrong);
            assert_eq!(found, vec![3]);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("built with a wrong shape"),
    }
}

#[test]
fn wrong_input_channels_is_an_error() {
    let (cfg, ts, _, _) = net("a", "monai");
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    let net = build(&cfg, vb).unwrap();
    let x = Tensor::zeros((1, 2, 8, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(net.forward(&x).is_err());
}
