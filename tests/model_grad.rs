//! Gradients of the composed conv3d / pool3d (candle autograd through `Var`) against central finite
//! differences, in f64 on tiny shapes.

use candle_core::{DType, Device, Module, Tensor, Var};
use ctgrade::model::layers::{conv3d, Conv3d, Conv3dConfig, Pool3d, Pool3dConfig};

const EPS: f64 = 1e-6;

fn randn(shape: &[usize], seed: u64) -> Vec<f64> {
    // A small deterministic generator (xorshift + Box-Muller) keeps the test reproducible.
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

/// Checks d(sum(f(args) * r))/d(args) from autograd against central differences.
fn check(name: &str, shapes: &[Vec<usize>], f: &dyn Fn(&[Tensor]) -> Tensor) {
    let vals: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| randn(s, 11 + i as u64))
        .collect();
    let vars: Vec<Var> = vals
        .iter()
        .zip(shapes)
        .map(|(v, s)| Var::from_tensor(&t(v, s)).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = t(&randn(y.dims(), 99), y.dims());
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let loss_at = |vals: &[Vec<f64>]| -> f64 {
        let ts: Vec<Tensor> = vals.iter().zip(shapes).map(|(v, s)| t(v, s)).collect();
        (f(&ts) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (a, var) in vars.iter().enumerate() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for argument {a}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in 0..vals[a].len() {
            let mut p = vals.clone();
            p[a][i] += EPS;
            let mut m = vals.clone();
            m[a][i] -= EPS;
            let fd = (loss_at(&p) - loss_at(&m)) / (2.0 * EPS);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: argument {a} element {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn conv3d_gradients_match_finite_differences() {
    let cases = [
        // (input, weight, stride, padding)
        (
            [1, 2, 3, 4, 5],
            [3, 2, 2, 3, 3],
            [1, 2, 1],
            [[1, 0], [0, 1], [1, 2]],
        ),
        ([2, 3, 2, 3, 3], [2, 3, 1, 1, 1], [1, 1, 1], [[0, 0]; 3]),
        ([1, 2, 4, 3, 3], [2, 2, 3, 3, 3], [2, 2, 2], [[1, 1]; 3]),
        // Height and width leave different remainders under the stride.
        ([1, 2, 3, 6, 5], [2, 2, 3, 3, 3], [2, 2, 2], [[1, 1]; 3]),
    ];
    for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
        let cfg = Conv3dConfig { stride, padding };
        let f = move |a: &[Tensor]| conv3d(&a[0], &a[1], Some(&a[2]), &cfg).unwrap();
        check(
            &format!("conv3d case {i}"),
            &[xs.to_vec(), ws.to_vec(), vec![ws[0]]],
            &f,
        );
    }
}

#[test]
fn pool3d_gradients_match_finite_differences() {
    let ceil_max = Pool3d::max(Pool3dConfig {
        kernel: [3, 2, 3],
        stride: [2, 2, 2],
        padding: [[1, 1], [0, 0], [1, 1]],
        ceil_mode: true,
    });
    let avg_excl = Pool3d::avg(
        Pool3dConfig {
            kernel: [2, 3, 3],
            stride: [1, 2, 2],
            padding: [[1, 1], [1, 1], [0, 0]],
            ceil_mode: true,
        },
        false,
    );
    let avg_incl = Pool3d::avg(Pool3dConfig::cubic(3, 2, 1), true);
    for (name, pool) in [
        ("max ceil", ceil_max),
        ("avg excl", avg_excl),
        ("avg incl", avg_incl),
    ] {
        let f = move |a: &[Tensor]| pool.forward_composed(&a[0]).unwrap();
        check(name, &[vec![1, 2, 4, 5, 5]], &f);
    }
}

#[test]
fn layers_with_vars_take_the_differentiable_path() {
    // f32 Vars on the CPU: the layers must avoid the (history-free) CPU kernels.
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (1, 2, 3, 5, 4), &dev).unwrap();
    let w = Var::randn(0f32, 1.0, (3, 2, 3, 3, 3), &dev).unwrap();
    let conv = Conv3d::new(w.as_tensor().clone(), None, Conv3dConfig::symmetric(1, 1)).unwrap();
    let pool = Pool3d::max(Pool3dConfig::cubic(2, 2, 0));
    let y = pool.forward(&conv.forward(x.as_tensor()).unwrap()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let g = grads.get(v.as_tensor()).expect("gradient");
        assert_eq!(g.dims(), v.dims());
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0);
    }
    // The same numbers as the plain forward.
    let plain = pool
        .forward(&conv.forward(&x.as_tensor().detach()).unwrap())
        .unwrap();
    let d = (y - plain)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "differentiable and CPU paths differ by {d}");
}

#[test]
fn densenet_on_a_varmap_backpropagates_to_every_parameter() {
    use candle_nn::{VarBuilder, VarMap};
    use ctgrade::model::{build, Arch, NetworkConfig};
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let mut cfg = NetworkConfig::new(Arch::DenseNet121_3d, 1, 1);
    cfg.block_config = Some(vec![1, 1]);
    cfg.init_features = Some(4);
    cfg.growth_rate = Some(2);
    cfg.bn_size = Some(2);
    let net = build(&cfg, vb).unwrap();
    let names = ctgrade::model::expected_tensors(&cfg);
    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(vars.len(), names.len(), "one Var per expected tensor");
    let x = Tensor::randn(0f32, 1.0, (2, 1, 8, 10, 9), &dev).unwrap();
    let y = net.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 1]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    for (name, _) in names {
        // Running statistics get gradients too (through the folded BatchNorm), which a trainer
        // with frozen statistics simply ignores.
        let v = &vars[&name];
        assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
    }
}
