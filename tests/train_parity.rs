//! One training step against PyTorch/MONAI (fixtures from tools/make_train_fixtures.py): from the
//! same weights and batch, ctgrade's trainable networks, losses (both heads) and Adam give
//! PyTorch's outputs, loss, gradients, updated weights and running statistics.
//!
//! After one Adam step from zero moments every update is close to `lr * sign(gradient)`, so the
//! updated weights alone would hide a gradient of the wrong size; the gradients are compared on
//! their own, relative to each tensor's largest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ctgrade::grading::Head;
use ctgrade::model::NetworkConfig;
use ctgrade::train::net::TrainNet;
use ctgrade::train::optim::{loss, Adam, AdamConfig};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    network: NetworkConfig,
    head: Head,
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    file: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a - b| and largest |b| of two tensors of the same shape.
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (d, scale)
}

fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}

/// The largest differences of one case: logits, loss, gradients relative to each tensor's largest
/// and to the network's largest, updated tensors (relative to 1 or the value, whichever is larger).
struct Report {
    logits: f32,
    loss: f32,
    grad_rel: f32,
    grad_net: f32,
    after: f32,
}

fn run_case(case: &Case) -> Report {
    let dev = Device::Cpu;
    let t = candle_core::safetensors::load(dir().join(&case.file), &dev).unwrap();
    let mut net = TrainNet::new(&case.network, 0, &dev).unwrap();
    let init = with_prefix(&t, "init.");
    let state = net.state().unwrap();
    let mut names: Vec<&String> = state.keys().collect();
    names.sort();
    let mut fixture_names: Vec<&String> = init.keys().collect();
    fixture_names.sort();
    assert_eq!(
        names, fixture_names,
        "{}: MONAI's state dict names",
        case.name
    );
    net.set_state(&init, "fixture").unwrap();

    // Stored in half precision; exact in f32.
    let x = &t["input"].to_dtype(DType::F32).unwrap();
    let co_rads: Vec<u8> = t["co_rads"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(|c| c as u8)
        .collect();
    let logits = net.forward_train(x).unwrap();
    let l = loss(case.head, &logits, &co_rads).unwrap();
    let grads = l.backward().unwrap();
    let mut adam = Adam::new(
        net.params(),
        AdamConfig {
            lr: case.lr,
            beta1: case.betas[0],
            beta2: case.betas[1],
            eps: case.eps,
            lr_final: None,
        },
    )
    .unwrap();

    // A gradient that is zero in exact arithmetic (a bias just before a BatchNorm, which
    // removes any constant) is rounding noise in both: compared against this floor.
    let largest = net
        .params()
        .iter()
        .map(|(name, _)| diff(&t[&format!("grad.{name}")], &t[&format!("grad.{name}")]).1)
        .fold(0f32, f32::max);
    let noise = 1e-6 * largest;
    let mut noisy = Vec::new();
    let mut grad_rel = 0f32;
    let mut grad_net = 0f32;
    let mut ours = HashMap::new();
    for (name, p) in net.params() {
        let g = grads
            .get(p.as_tensor())
            .unwrap_or_else(|| panic!("{}: {name} has no gradient", case.name));
        ours.insert(name.clone(), values(g));
        let (d, scale) = diff(g, &t[&format!("grad.{name}")]);
        if scale <= noise {
            assert!(
                d <= 2.0 * noise,
                "{}: gradient of {name} is not noise: {d}",
                case.name
            );
            noisy.push(name.clone());
            continue;
        }
        let rel = d / scale;
        // Relative to the tensor's largest, with a floor far below the network's largest for
        // tensors of small gradients (long BatchNorm sums that cancel, in float32).
        assert!(
            d <= 1e-3 * scale + 1e-7 * largest,
            "{}: gradient of {name} differs by {d} (largest {scale})",
            case.name
        );
        grad_rel = grad_rel.max(rel);
        grad_net = grad_net.max(d / largest);
    }
    assert!(
        noisy.len() * 10 < net.params().len(),
        "{}: most gradients are noise: {noisy:?}",
        case.name
    );
    adam.step(net.params(), &grads, case.lr).unwrap();

    let after = with_prefix(&t, "after.");
    let mut after_max = 0f32;
    for (name, v) in net.state().unwrap() {
        let (d, scale) = diff(&v, &after[&name]);
        if let Some(g_ours) = ours.get(&name) {
            // Adam's first update is f(g) = lr * g / (|g| + eps): where the gradient is near
            // zero, the small differences of the gradients (checked above) move it by up to
            // |f(g_ours) - f(g_pytorch)|; elsewhere the updated weights agree to rounding.
            let f = |g: f32| case.lr * g as f64 / (g.abs() as f64 + case.eps);
            let g = values(&t[&format!("grad.{name}")]);
            let (a, b) = (values(&v), values(&after[&name]));
            for (i, (((x, y), gi), go)) in a.iter().zip(&b).zip(&g).zip(g_ours).enumerate() {
                let moved = (f(*go) - f(*gi)).abs() as f32;
                let d = (x - y).abs();
                assert!(
                    d <= 1e-6 * y.abs().max(1.0) + 1.01 * moved,
                    "{}: {name}[{i}] after the step is {x}, PyTorch's {y} (gradients {go}, {gi})",
                    case.name
                );
                if moved < 1e-7 {
                    after_max = after_max.max(d / y.abs().max(1.0));
                }
            }
            continue;
        }
        // Running statistics: absolute, or relative for large values.
        let tol = 1e-5 * scale.max(1.0);
        assert!(
            d <= tol,
            "{}: {name} after the step differs by {d} (largest {scale})",
            case.name
        );
        after_max = after_max.max(d / scale.max(1.0));
    }
    let (logits_d, _) = diff(&logits, &t["logits"]);
    let (loss_d, _) = diff(&l.reshape(1).unwrap(), &t["loss"]);
    Report {
        logits: logits_d,
        loss: loss_d,
        grad_rel,
        grad_net,
        after: after_max,
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every fixture: forward pass, loss, gradients, updated weights and running statistics.
#[test]
fn one_adam_step_matches_pytorch() {
    let cases = cases();
    assert!(cases.len() >= 9);
    for case in &cases {
        let r = run_case(case);
        eprintln!(
            "{}: logits {:.2e}, loss {:.2e}, gradients {:.2e} of each tensor's largest and \
             {:.2e} of the network's, after the step {:.2e}",
            case.name, r.logits, r.loss, r.grad_rel, r.grad_net, r.after
        );
        assert!(
            r.logits <= 1e-4,
            "{}: logits differ by {}",
            case.name,
            r.logits
        );
        assert!(r.loss <= 1e-5, "{}: loss differs by {}", case.name, r.loss);
    }
}

/// The comparison can fail: the same step with another label (a loss PyTorch did not
/// differentiate) is caught by the gradients.
#[test]
fn a_wrong_loss_is_caught() {
    let mut case = cases().remove(0);
    let dev = Device::Cpu;
    let mut t = candle_core::safetensors::load(dir().join(&case.file), &dev).unwrap();
    let labels = Tensor::new(&[3u8, 5], &dev).unwrap();
    t.insert("co_rads".to_string(), labels);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("changed.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    case.file = path.to_string_lossy().into_owned();
    let caught = std::panic::catch_unwind(|| run_case(&case));
    let msg = caught
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("a changed label went unnoticed");
    assert!(msg.contains("gradient of"), "{msg}");
}
