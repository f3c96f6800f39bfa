//! What every network definition provides ([`Network`]), the pieces the families share in it,
//! and the tensor names derived from the constructors (`record_tensors`).
//!
//! A family's definition is written once: a configuration, a constructor over a `VarBuilder`
//! whose paths are the checkpoint's names, and the forward pass as a chain of segments with a
//! train flag. Training runs it with `train` (BatchNorm on batch statistics, the convolutions and
//! pools in their trainable forms; gradient checkpointing cuts it at the segments); inference
//! folds it ([`Network::fold`]) into the form the engine runs: BatchNorm folded into the
//! convolutions, the fused CPU kernels, cuDNN.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::layers::{BatchNorm3d, Conv3d};
use super::{Classifier, ModelError};

/// A network definition (see the module docs).
pub trait Network: Send + Sync {
    /// The number of segments of the forward pass.
    fn segments(&self) -> usize;

    /// Segment `k` on its input `h` (the network input for the first; the raw outputs
    /// `(N, num_outputs)` come from the last).
    fn forward_segment(&self, k: usize, h: &Tensor, train: bool) -> CResult<Tensor>;

    /// Every BatchNorm, in the order of the forward pass.
    fn batch_norms(&self) -> Vec<&BatchNorm3d>;

    /// The inference form: BatchNorm folded on the running statistics, the engine's fastest
    /// kernels. Folded from variables (a `VarMap`), it stays differentiable in them.
    fn fold(&self) -> Result<Box<dyn Classifier>, ModelError>;

    /// The raw outputs `(N, num_outputs)`: every segment in turn.
    fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        let mut h = x.clone();
        for k in 0..self.segments() {
            h = self.forward_segment(k, &h, train)?;
        }
        Ok(h)
    }
}

/// The stem convolution on `x`. A one-channel `x` given to a network of `in_channels` = 3 stands
/// for the CT repeated in all three channels (`ct_x3`): it is convolved with the weight summed
/// over its input channels, the same function at a third of the cost.
pub(crate) fn stem_conv(
    conv: &Conv3d,
    x: &Tensor,
    in_channels: usize,
    train: bool,
    what: &str,
) -> CResult<Tensor> {
    let c = x.dim(1)?;
    if c == in_channels {
        conv.forward_t(x, train)
    } else if c == 1 && in_channels == 3 {
        let w = conv.weight().sum_keepdim(1)?;
        Conv3d::new(w, conv.bias().cloned(), *conv.config())?.forward_t(x, train)
    } else {
        candle_core::bail!("{what}: input has {c} channels, the network takes {in_channels}")
    }
}

/// Tensor names, shapes and initialisation hints, in the order asked for.
pub(crate) type Asked = Vec<(String, Vec<usize>, Init)>;

/// A `VarBuilder` backend that hands out zeros and notes what was asked for.
struct Recorder {
    seen: Arc<Mutex<Asked>>,
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push((name.to_string(), s.dims().to_vec(), init));
        // One zero seen through every index: recording allocates nothing of the network's size.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> CResult<Tensor> {
        candle_core::bail!("recording tensor names: {name} asked for without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The tensors (name, shape, initialisation) a definition's constructor asks its `VarBuilder`
/// for, in the order it asks: `define` builds the network over a recording builder.
pub(crate) fn record_tensors<N>(
    define: impl FnOnce(VarBuilder) -> Result<N, ModelError>,
) -> Result<Asked, ModelError> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend: Box<dyn SimpleBackend> = Box::new(Recorder { seen: seen.clone() });
    define(VarBuilder::from_backend(backend, DType::F32, Device::Cpu))?;
    let names = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use crate::model::fewer_inputs::{Dropped, FewerInputs};
    use crate::model::inception::I3dHead;
    use crate::model::resnet::ShortcutType;
    use crate::model::{build, define, tensors_to_create, Arch, Naming, NetworkConfig};
    use crate::rng::Rng;

    /// Small networks of every family and form.
    fn tiny() -> Vec<NetworkConfig> {
        let dense = |arch| NetworkConfig {
            growth_rate: Some(4),
            block_config: Some(vec![2, 1]),
            bn_size: Some(2),
            init_features: Some(4),
            ..NetworkConfig::new(arch, 3, 2)
        };
        let narrow = |arch, divisor| NetworkConfig {
            width_divisor: Some(divisor),
            ..NetworkConfig::new(arch, 3, 1)
        };
        vec![
            dense(Arch::DenseNet121_3d),
            dense(Arch::DenseNet169_2d),
            NetworkConfig {
                block_config: Some(vec![1, 1, 1, 1]),
                ..narrow(Arch::ResNet18_3d, 16)
            },
            NetworkConfig {
                block_config: Some(vec![1, 2, 1, 1]),
                shortcut_type: Some(ShortcutType::A),
                conv1_t_size: Some(3),
                ..narrow(Arch::ResNet50_3d, 32)
            },
            NetworkConfig {
                block_config: Some(vec![1, 1, 2, 1]),
                ..narrow(Arch::CovNet, 32)
            },
            narrow(Arch::InceptionV1_3d, 32),
            NetworkConfig {
                i3d_head: Some(I3dHead::Stoic),
                ..narrow(Arch::InceptionV1_3d, 32)
            },
            narrow(Arch::InceptionV1_2d, 32),
        ]
    }

    /// Random weights for `cfg` (MONAI names): running variances in [0.5, 2], means and other
    /// vectors in [-0.5, 0.5], He-scaled normal weights.
    fn random_tensors(cfg: &NetworkConfig, rng: &mut Rng) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::new();
        for (name, shape, _) in tensors_to_create(cfg, Naming::Monai).unwrap() {
            let n: usize = shape.iter().product();
            let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let v = if name.ends_with("running_var") {
                        rng.range(0.5, 2.0)
                    } else if name.ends_with("running_mean") || shape.len() == 1 {
                        rng.range(-0.5, 0.5)
                    } else {
                        rng.normal() * (2.0 / fan_in).sqrt()
                    };
                    v as f32
                })
                .collect();
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
            tensors.insert(name, t);
        }
        tensors
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A network built to read the CT once (`ct_x3`) or the CT and the lesion map
    /// (`ct_lesion_zeros`) computes what the network trained on three channels computes on the
    /// full input, for every family and form.
    #[test]
    fn networks_built_for_fewer_channels_compute_the_same() {
        let dev = Device::Cpu;
        for (c, cfg) in tiny().into_iter().enumerate() {
            let mut rng = Rng::new(70 + c as u64);
            let tensors = random_tensors(&cfg, &mut rng);
            let full = build(
                &cfg,
                VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev),
            )
            .unwrap();
            let mut channel = || {
                let v: Vec<f32> = (0..8 * 32 * 32).map(|_| rng.normal() as f32).collect();
                Tensor::from_vec(v, (1, 1, 8, 32, 32), &dev).unwrap()
            };
            let (ct, lesion) = (channel(), channel());
            let zeros = ct.zeros_like().unwrap();
            for (kept, dropped, x) in [
                (
                    1,
                    Dropped::Copies,
                    Tensor::cat(&[&ct, &ct, &ct], 1).unwrap(),
                ),
                (
                    2,
                    Dropped::Zeros,
                    Tensor::cat(&[&ct, &lesion, &zeros], 1).unwrap(),
                ),
            ] {
                let backend = FewerInputs {
                    tensors: tensors.clone(),
                    kept,
                    dropped,
                };
                let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone());
                let fewer = NetworkConfig {
                    in_channels: kept,
                    ..cfg.clone()
                };
                let want = full.forward(&x).unwrap();
                let got = build(&fewer, vb)
                    .unwrap()
                    .forward(&x.narrow(1, 0, kept).unwrap())
                    .unwrap();
                let d = max_abs(&(&got - &want).unwrap());
                assert!(
                    d <= 1e-4 * max_abs(&want).max(1.0),
                    "{} reading {kept} channel(s): {d}",
                    cfg.arch
                );
            }
        }
    }

    /// The fold is an exact rewrite: the inference form computes what the definition computes
    /// without the train flag (BatchNorm on running statistics), for running statistics far from
    /// the identity.
    #[test]
    fn the_folded_form_computes_the_definition() {
        let dev = Device::Cpu;
        for (c, cfg) in tiny().into_iter().enumerate() {
            let mut rng = Rng::new(40 + c as u64);
            let tensors = random_tensors(&cfg, &mut rng);
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let def = define(&cfg, vb, Naming::Monai).unwrap();
            let values: Vec<f32> = (0..2 * 3 * 8 * 32 * 32)
                .map(|_| rng.normal() as f32)
                .collect();
            let x = Tensor::from_vec(values, (2, 3, 8, 32, 32), &dev).unwrap();
            let want = def.forward_t(&x, false).unwrap();
            let got = def.fold().unwrap().forward(&x).unwrap();
            let scale = max_abs(&want);
            let d = max_abs(&(&got - &want).unwrap());
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "{}: {d} (scale {scale})",
                cfg.arch
            );
        }
    }
}
