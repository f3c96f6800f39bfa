//! Trainable networks: a network definition ([`crate::model::Network`]) over parameters held
//! as [`Var`]s, run with the train flag.
//!
//! A [`TrainNet`] holds every tensor of the network by its checkpoint name (the names the
//! definition's constructor asks for, [`crate::model::expected_tensors_named`], so a saved member
//! loads into [`crate::model::build`] unchanged) and the definition built over them. Training
//! runs the definition with `train`: BatchNorm normalises with the batch statistics, and after
//! the pass its running mean and (unbiased) variance take the batch in with momentum 0.1, as in
//! PyTorch; the convolutions and pools run their trainable forms. Validation and the written
//! members use the definition folded into its inference form (running statistics, the engine's
//! kernels), so what is validated is exactly what is shipped.
//!
//! Gradient checkpointing ([`TrainNet::forward_backward_checkpointed`]) cuts the same
//! definition at its segments: only the segments' inputs are kept, and the backward pass
//! recomputes one segment at a time and back-propagates through it alone. candle has no hook to
//! recompute activations inside one backward pass, so the chain rule between segments is applied
//! here, segment by segment.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::TrainError;
use crate::model::inception::I3dHead;
use crate::model::{self, Classifier, Naming, Network, NetworkConfig};
use crate::rng::Rng;

/// PyTorch's BatchNorm momentum (weight of the new batch statistic).
pub const BN_MOMENTUM: f64 = 0.1;

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// A trainable network: parameters and BatchNorm running statistics as [`Var`]s, shared with
/// the network definition built over them.
pub struct TrainNet {
    cfg: NetworkConfig,
    net: Box<dyn Network>,
    /// Trainable parameters in PyTorch's state-dict order.
    params: Vec<(String, Var)>,
    /// Running statistics in state-dict order.
    buffers: Vec<(String, Var)>,
    /// Both, by name.
    by_name: HashMap<String, Var>,
    device: Device,
}

impl TrainNet {
    /// A freshly initialised network: each tensor drawn as the network's constructor says
    /// (convolutions He-normal on their fan in, convolution biases and the linear head uniform in
    /// `±1/sqrt(fan_in)`, the head's bias zero, BatchNorm as identity), from the training RNG:
    /// deterministic for a seed.
    pub fn new(cfg: &NetworkConfig, seed: u64, device: &Device) -> Result<Self, TrainError> {
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        for (i, (name, shape, init)) in model::tensors_to_create(cfg, Naming::Monai)?
            .into_iter()
            .enumerate()
        {
            let n: usize = shape.iter().product();
            let mut rng = Rng::stream(seed, 1_000 + i as u64);
            let values: Vec<f32> = match init {
                Init::Const(v) => vec![v as f32; n],
                Init::Randn { mean, stdev } => (0..n)
                    .map(|_| (mean + rng.normal() * stdev) as f32)
                    .collect(),
                Init::Uniform { lo, up } => (0..n).map(|_| rng.range(lo, up) as f32).collect(),
                Init::Kaiming { .. } => {
                    return Err(TrainError::Options(format!(
                        "{name}: no deterministic draw for {init:?}"
                    )))
                }
            };
            let var = Var::from_tensor(&Tensor::from_vec(values, shape.as_slice(), device)?)?;
            if is_buffer(&name) {
                buffers.push((name, var));
            } else {
                params.push((name, var));
            }
        }
        let by_name: HashMap<String, Var> = params
            .iter()
            .chain(&buffers)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        // The definition over these variables (a variable's tensor is the variable itself); it
        // asks for exactly the names listed above.
        let tensors = by_name
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let net = model::define(
            cfg,
            VarBuilder::from_tensors(tensors, DType::F32, device),
            Naming::Monai,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            net,
            params,
            buffers,
            by_name,
            device: device.clone(),
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The network configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The trainable parameters, in state-dict order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every tensor (parameters and running statistics) by MONAI name: what a member file holds.
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        for (n, v) in self.params.iter().chain(&self.buffers) {
            // Detached: a copy of a variable would carry its gradient graph into the inference
            // form, which then leaves the CPU kernels for the composed candle ops.
            out.insert(n.clone(), v.as_tensor().detach().copy()?);
        }
        Ok(out)
    }

    /// Sets every tensor from `state` (the names and shapes of [`Self::state`]); all must be present.
    pub fn set_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        origin: &str,
    ) -> Result<(), TrainError> {
        for (n, v) in self.params.iter().chain(&self.buffers) {
            let t = fetch(state, n, v.dims(), origin)?;
            v.set(&t.to_device(&self.device)?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// Initialises from a safetensors file (e.g. 2-D weights inflated to 3-D), with MONAI or
    /// torchvision names. Tensors the file lacks keep their initialisation; a head of another
    /// shape (other number of outputs) is skipped. Returns (loaded, kept, skipped) names.
    pub fn load_init(&mut self, path: &Path) -> Result<InitReport, TrainError> {
        let file_err = |msg: String| TrainError::Init {
            path: path.to_path_buf(),
            msg,
        };
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| file_err(e.to_string()))?;
        // Map torchvision names onto MONAI's: both lists are in the same order (and the same
        // where an architecture has one convention).
        let monai = model::expected_tensors_named(&self.cfg, Naming::Monai)?;
        let tv = model::expected_tensors_named(&self.cfg, Naming::Torchvision)?;
        let rename: HashMap<&str, &str> = tv
            .iter()
            .zip(&monai)
            .map(|((t, _), (m, _))| (t.as_str(), m.as_str()))
            .collect();
        // The head's weight and bias close every list.
        let head: Vec<&str> = monai
            .iter()
            .rev()
            .take(2)
            .map(|(n, _)| n.as_str())
            .collect();
        // The I3D's other head form: a STOIC checkpoint also holds the port's unused Kinetics
        // head, and a network of one form may start from a checkpoint of the other.
        let other_head = (self.cfg.arch == model::Arch::InceptionV1_3d).then(|| {
            let other = match self.cfg.i3d_head.unwrap_or_default() {
                I3dHead::Kinetics => I3dHead::Stoic,
                I3dHead::Stoic => I3dHead::Kinetics,
            };
            format!("{}.", other.prefix())
        });
        let mut report = InitReport::default();
        let mut seen = std::collections::HashSet::new();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &tensors[name];
            let target = rename.get(name.as_str()).copied().unwrap_or(name.as_str());
            let var = if let Some(v) = self.by_name.get(target) {
                v
            } else if other_head.as_deref().is_some_and(|p| target.starts_with(p)) {
                report.skipped.push(target.to_string());
                continue;
            } else {
                return Err(file_err(format!(
                    "tensor {name:?} is not a parameter of {} (expected MONAI or torchvision names)",
                    self.cfg.arch
                )));
            };
            if t.dims() != var.dims() {
                if head.contains(&target) {
                    report.skipped.push(target.to_string());
                    continue;
                }
                return Err(file_err(format!(
                    "tensor {name:?} has shape {:?}, the network expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
            seen.insert(target.to_string());
            report.loaded.push(target.to_string());
        }
        for (n, _) in &monai {
            if !seen.contains(n) && !report.skipped.contains(n) {
                report.kept.push(n.clone());
            }
        }
        Ok(report)
    }

    /// Training-mode forward: raw outputs `(N, num_outputs)`; the running statistics are updated
    /// with momentum [`BN_MOMENTUM`]. A one-channel input stands for the CT repeated in all three
    /// channels (`ct_x3`): the stem then convolves it with the weight summed over its input
    /// channels, the same function at a third of the cost.
    pub fn forward_train(&mut self, x: &Tensor) -> Result<Tensor, TrainError> {
        let y = self.net.forward_t(x, true)?;
        self.update_running_stats()?;
        Ok(y)
    }

    /// [`forward_train`](Self::forward_train), `loss` and its backward pass with gradient
    /// checkpointing: the activations inside a segment (e.g. a dense layer or a residual block)
    /// are recomputed during the backward pass instead of being kept, so memory holds
    /// the segments' inputs and one segment's graph at a time. Returns the loss and the
    /// parameters' gradients, those of `loss.backward()` on the plain forward pass (the same
    /// kernels on the same values: bit for bit on the CPU); the running statistics are updated
    /// once, as by `forward_train`.
    pub fn forward_backward_checkpointed(
        &mut self,
        x: &Tensor,
        loss: impl FnOnce(&Tensor) -> Result<Tensor, TrainError>,
    ) -> Result<(Tensor, GradStore), TrainError> {
        let segments: Vec<usize> = (0..self.net.segments()).collect();
        // Forward without graphs: each segment's input is kept, detached.
        let mut inputs = Vec::with_capacity(segments.len());
        let mut h = x.detach();
        for &seg in &segments {
            let out = self.net.forward_segment(seg, &h, true)?.detach();
            inputs.push(h);
            h = out;
        }
        self.update_running_stats()?;
        let logits = Var::from_tensor(&h)?;
        let loss = loss(logits.as_tensor())?;
        // The loss's own graph gives the gradient at the logits; the store then collects the
        // parameters' gradients segment by segment.
        let mut grads = loss.backward()?;
        let mut grad_out = grads.remove(logits.as_tensor()).ok_or_else(|| {
            TrainError::Options("checkpointed backward: the loss does not use the logits".into())
        })?;
        for (k, &seg) in segments.iter().enumerate().rev() {
            let input = inputs.pop().ok_or_else(|| {
                TrainError::Options("checkpointed backward: segment inputs out of step".into())
            })?;
            // The network input needs no gradient; every later segment input does.
            let input = if k == 0 {
                input
            } else {
                Var::from_tensor(&input)?.as_tensor().clone()
            };
            let out = self.net.forward_segment(seg, &input, true)?;
            let seg_grads = (out * &grad_out)?.sum_all()?.backward()?;
            for (_, p) in &self.params {
                if let Some(g) = seg_grads.get(p.as_tensor()) {
                    let g = match grads.remove(p.as_tensor()) {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    };
                    grads.insert(p.as_tensor(), g);
                }
            }
            if k > 0 {
                grad_out = seg_grads.get(&input).cloned().ok_or_else(|| {
                    TrainError::Options("checkpointed backward: a segment ignores its input".into())
                })?;
            }
        }
        // The recomputation recorded the same batches again: they are in already.
        for bn in self.net.batch_norms() {
            bn.take_batch_stats();
        }
        Ok((loss, grads))
    }

    /// Blends the batch statistics of the last forward pass into the running statistics
    /// (PyTorch's momentum and unbiased variance).
    fn update_running_stats(&self) -> Result<(), TrainError> {
        for bn in self.net.batch_norms() {
            bn.update_running_stats(BN_MOMENTUM)?;
        }
        Ok(())
    }

    /// Re-estimates every BatchNorm's running statistics from `batches` (training-mode forward
    /// passes, no parameter change): the mean of the batch means and the pooled variance
    /// ("precise BN"). With batches of two, momentum-averaged statistics lag and scatter; this
    /// makes the inference form match what the network has learnt.
    pub fn recompute_bn_stats(&mut self, batches: &[Tensor]) -> Result<(), TrainError> {
        let norms = self.net.batch_norms();
        // Per BatchNorm: the sums of values and of squares over every batch, and their count.
        let mut acc: Vec<(Vec<f64>, Vec<f64>, usize)> = vec![Default::default(); norms.len()];
        for x in batches {
            self.net.forward_t(x, true)?;
            for (bn, (sum, sq, count)) in norms.iter().zip(acc.iter_mut()) {
                let Some(s) = bn.take_batch_stats() else {
                    continue;
                };
                sum.resize(s.mean.len(), 0.0);
                sq.resize(s.mean.len(), 0.0);
                let w = s.count as f64;
                for (k, (&mu, &var)) in s.mean.iter().zip(&s.var).enumerate() {
                    sum[k] += w * mu;
                    sq[k] += w * (var + mu * mu);
                }
                *count += s.count;
            }
        }
        for (bn, (sum, sq, count)) in norms.iter().zip(acc) {
            if count == 0 {
                continue;
            }
            let m = count as f64;
            let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
            let unbiased = m / (m - 1.0).max(1.0);
            let var: Vec<f64> = sq
                .iter()
                .zip(&mean)
                .map(|(q, mu)| (q / m - mu * mu).max(0.0) * unbiased)
                .collect();
            bn.blend_running_stats(&mean, &var, 1.0)?;
        }
        Ok(())
    }

    /// The network in inference form (running statistics, the engine's fast kernels).
    pub fn inference(&self) -> Result<Box<dyn Classifier>, TrainError> {
        let vb = VarBuilder::from_tensors(self.state()?, DType::F32, &self.device);
        Ok(model::build_with_naming(&self.cfg, vb, Naming::Monai)?)
    }
}

/// What [`TrainNet::load_init`] did.
#[derive(Debug, Default, Clone)]
pub struct InitReport {
    /// Tensors taken from the file.
    pub loaded: Vec<String>,
    /// Tensors the file lacks (initialised as usual).
    pub kept: Vec<String>,
    /// Head tensors of another shape (initialised as usual) or of the I3D's other head form.
    pub skipped: Vec<String>,
}

fn fetch(
    state: &HashMap<String, Tensor>,
    name: &str,
    dims: &[usize],
    origin: &str,
) -> Result<Tensor, TrainError> {
    match state.get(name) {
        Some(t) if t.dims() == dims => Ok(t.clone()),
        Some(t) => Err(TrainError::Checkpoint(format!(
            "{origin}: tensor {name} has shape {:?}, expected {dims:?}",
            t.dims()
        ))),
        None => Err(TrainError::Checkpoint(format!(
            "{origin}: tensor {name} is missing"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grading::Head;
    use crate::model::Arch;
    use crate::train::optim;

    fn tiny(outputs: usize) -> NetworkConfig {
        NetworkConfig {
            growth_rate: Some(4),
            block_config: Some(vec![1, 1]),
            bn_size: Some(2),
            init_features: Some(4),
            ..NetworkConfig::new(Arch::DenseNet121_3d, 3, outputs)
        }
    }

    /// Equal tensors, except those whose names start with `skip`.
    fn same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, skip: Option<&str>) -> bool {
        let kept = |k: &String| skip.is_none_or(|s| !k.starts_with(s));
        a.iter().filter(|(k, _)| kept(k)).all(|(k, v)| {
            let d = (v - &b[k]).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() == 0.0
        })
    }

    #[test]
    fn init_from_safetensors_with_either_naming() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let src = TrainNet::new(&tiny(1), 1, &dev).unwrap();
        let state = src.state().unwrap();
        // MONAI names, same head: everything loads.
        let monai = dir.path().join("monai.safetensors");
        candle_core::safetensors::save(&state, &monai).unwrap();
        let mut dst = TrainNet::new(&tiny(1), 2, &dev).unwrap();
        let rep = dst.load_init(&monai).unwrap();
        assert!(rep.kept.is_empty() && rep.skipped.is_empty());
        assert!(same(&dst.state().unwrap(), &state, None));
        // torchvision names and a 5-output head into a 1-output network: the head is skipped.
        let src5 = TrainNet::new(&tiny(5), 3, &dev).unwrap();
        let names: HashMap<String, String> = model::expected_tensors_named(&tiny(5), Naming::Monai)
            .unwrap()
            .into_iter()
            .zip(model::expected_tensors_named(&tiny(5), Naming::Torchvision).unwrap())
            .map(|((m, _), (t, _))| (m, t))
            .collect();
        let tv: HashMap<String, Tensor> = src5
            .state()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (names[&k].clone(), v))
            .collect();
        let tv_path = dir.path().join("tv.safetensors");
        candle_core::safetensors::save(&tv, &tv_path).unwrap();
        let mut dst = TrainNet::new(&tiny(1), 4, &dev).unwrap();
        let rep = dst.load_init(&tv_path).unwrap();
        assert_eq!(rep.skipped.len(), 2, "{rep:?}");
        assert!(same(
            &dst.state().unwrap(),
            &src5.state().unwrap(),
            Some("class_layers")
        ));
        // A tensor the network does not have is an error naming it.
        let bad = dir.path().join("bad.safetensors");
        let extra = HashMap::from([(
            "features.conv9.weight",
            Tensor::zeros(3, DType::F32, &dev).unwrap(),
        )]);
        candle_core::safetensors::save(&extra, &bad).unwrap();
        let err = dst.load_init(&bad).unwrap_err().to_string();
        assert!(
            err.contains("features.conv9.weight") && err.contains("bad.safetensors"),
            "{err}"
        );
    }

    /// A STOIC I3D checkpoint holds the port's unused Kinetics head beside its own: initialising
    /// the STOIC form from it skips that head and loads everything else.
    #[test]
    fn init_from_a_stoic_checkpoint_skips_the_unused_kinetics_head() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let [_, stoic, _] = tiny_inceptions();
        let src = TrainNet::new(&stoic, 1, &dev).unwrap();
        let mut state = src.state().unwrap();
        for (name, shape) in [
            ("conv3d_0c_1x1.conv3d.weight", vec![400, 32, 1, 1, 1]),
            ("conv3d_0c_1x1.conv3d.bias", vec![400]),
        ] {
            state.insert(name.into(), Tensor::zeros(shape, DType::F32, &dev).unwrap());
        }
        let path = dir.path().join("stoic.safetensors");
        candle_core::safetensors::save(&state, &path).unwrap();
        let mut dst = TrainNet::new(&stoic, 2, &dev).unwrap();
        let rep = dst.load_init(&path).unwrap();
        assert_eq!(
            rep.skipped,
            ["conv3d_0c_1x1.conv3d.bias", "conv3d_0c_1x1.conv3d.weight"]
        );
        assert!(rep.kept.is_empty(), "{rep:?}");
        assert!(same(&dst.state().unwrap(), &src.state().unwrap(), None));
    }

    /// Small ResNets: basic blocks with type-B shortcuts (MONAI's defaults), bottlenecks with
    /// type-A shortcuts, a short stem and no max pool, and a 2-D ResNet-50 (COVNet) on slices.
    fn tiny_resnets() -> [NetworkConfig; 3] {
        [
            NetworkConfig {
                width_divisor: Some(16),
                block_config: Some(vec![1, 1, 1, 1]),
                ..NetworkConfig::new(Arch::ResNet18_3d, 3, 1)
            },
            NetworkConfig {
                width_divisor: Some(32),
                block_config: Some(vec![1, 2, 1, 1]),
                conv1_t_size: Some(3),
                shortcut_type: Some(crate::model::resnet::ShortcutType::A),
                no_max_pool: Some(true),
                ..NetworkConfig::new(Arch::ResNet50_3d, 3, 5)
            },
            NetworkConfig {
                width_divisor: Some(32),
                block_config: Some(vec![1, 1, 2, 1]),
                ..NetworkConfig::new(Arch::CovNet, 3, 1)
            },
        ]
    }

    /// Small Inception-v1s: I3D with either head, GoogLeNet on slices.
    fn tiny_inceptions() -> [NetworkConfig; 3] {
        let i3d = NetworkConfig {
            width_divisor: Some(32),
            ..NetworkConfig::new(Arch::InceptionV1_3d, 3, 1)
        };
        [
            i3d.clone(),
            NetworkConfig {
                i3d_head: Some(crate::model::inception::I3dHead::Stoic),
                num_outputs: 5,
                ..i3d
            },
            NetworkConfig {
                width_divisor: Some(32),
                ..NetworkConfig::new(Arch::InceptionV1_2d, 3, 1)
            },
        ]
    }

    /// A new network draws each tensor as its constructor's hint says: BatchNorm as identity,
    /// the head's bias zero, a type-B shortcut's bias uniform in `±1/sqrt(fan_in)` (PyTorch's
    /// default for a convolution's bias), convolutions with He's standard deviation.
    #[test]
    fn initialisation_follows_the_constructor() {
        let [r18, ..] = tiny_resnets();
        let net = TrainNet::new(&r18, 4, &Device::Cpu).unwrap();
        let state = net.state().unwrap();
        let values = |name: &str| state[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values("bn1.weight").iter().all(|&v| v == 1.0));
        assert!(values("layer1.0.bn1.running_var").iter().all(|&v| v == 1.0));
        assert!(values("fc.bias").iter().all(|&v| v == 0.0));
        let bias = values("layer2.0.downsample.0.bias");
        let fan_in = state["layer2.0.downsample.0.weight"].dims()[1..]
            .iter()
            .product::<usize>();
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert!(bias.iter().all(|v| v.abs() <= bound) && bias.iter().any(|&v| v != 0.0));
        let w = values("layer3.0.conv1.weight");
        let fan_in = state["layer3.0.conv1.weight"].dims()[1..]
            .iter()
            .product::<usize>();
        let sd = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        let he = (2.0 / fan_in as f32).sqrt();
        assert!((sd / he - 1.0).abs() < 0.1, "sd {sd}, He {he}");
    }

    /// The tensors a trainable network saves are exactly those the inference constructor asks
    /// for (what it creates in an empty `VarMap`), and its inference form builds from them.
    #[test]
    fn tensor_names_are_the_inference_constructors() {
        let dev = Device::Cpu;
        let [r18, r50, covnet] = tiny_resnets();
        let dense2d = NetworkConfig {
            arch: Arch::DenseNet169_2d,
            ..tiny(1)
        };
        let [i3d, stoic, googlenet] = tiny_inceptions();
        for cfg in [
            tiny(1),
            tiny(5),
            dense2d,
            r18,
            r50,
            covnet,
            i3d,
            stoic,
            googlenet,
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            model::build(&cfg, vb).unwrap();
            let mut want: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
            want.sort();
            let net = TrainNet::new(&cfg, 1, &dev).unwrap();
            let state = net.state().unwrap();
            let mut have: Vec<String> = state.keys().cloned().collect();
            have.sort();
            assert_eq!(have, want, "{}", cfg.arch);
            for (name, t) in vm.data().lock().unwrap().iter() {
                assert_eq!(t.dims(), state[name].dims(), "{name}");
            }
            // The inference form tracks no gradient: it runs the engine's CPU kernels.
            let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 32, 32), &dev).unwrap();
            let y = net.inference().unwrap().forward(&x).unwrap();
            assert!(!y.track_op(), "{}", cfg.arch);
        }
    }

    /// Gradient checkpointing gives the plain backward pass's loss, parameter gradients and
    /// running statistics bit for bit (a recomputed segment runs the same kernels on the same
    /// values), on a network with two dense layers per block, a transition and a one-channel
    /// input (the stem's summed weight), on its 2-D form, and on small ResNets and Inceptions;
    /// every parameter gets a gradient.
    #[test]
    fn checkpointed_gradients_match_the_plain_backward_pass() {
        let dev = Device::Cpu;
        let dense = NetworkConfig {
            block_config: Some(vec![2, 2]),
            ..tiny(1)
        };
        let dense2d = NetworkConfig {
            arch: Arch::DenseNet121_2d,
            ..dense.clone()
        };
        let [r18, r50, covnet] = tiny_resnets();
        let [i3d, stoic, googlenet] = tiny_inceptions();
        // The Inceptions' four pools need a larger input.
        let (small, wide) = ((12, 16, 16), (8, 32, 32));
        let cases = [
            (&dense, 3, small),
            (&dense, 1, small),
            (&dense2d, 1, small),
            (&r18, 1, small),
            (&r50, 3, small),
            (&covnet, 1, small),
            (&i3d, 1, wide),
            (&stoic, 3, wide),
            (&googlenet, 3, wide),
        ];
        for (c, (cfg, channels, (d, h, w))) in cases.into_iter().enumerate() {
            let head = if cfg.num_outputs == 1 {
                Head::Continuous
            } else {
                Head::Categorical
            };
            let mut rng = Rng::new(70 + c as u64);
            let values: Vec<f32> = (0..2 * channels * d * h * w)
                .map(|_| rng.normal() as f32)
                .collect();
            let x = Tensor::from_vec(values, (2, channels, d, h, w), &dev).unwrap();
            let labels = [2u8, 5];
            let mut plain = TrainNet::new(cfg, 9, &dev).unwrap();
            let mut ckpt = TrainNet::new(cfg, 9, &dev).unwrap();
            let logits = plain.forward_train(&x).unwrap();
            let loss = optim::loss(head, &logits, &labels).unwrap();
            let grads = loss.backward().unwrap();
            let (loss_c, grads_c) = ckpt
                .forward_backward_checkpointed(&x, |l| optim::loss(head, l, &labels))
                .unwrap();
            let l0 = loss.to_scalar::<f32>().unwrap();
            assert_eq!(l0, loss_c.to_scalar::<f32>().unwrap());
            for ((name, p), (_, q)) in plain.params().iter().zip(ckpt.params()) {
                let g = grads.get(p.as_tensor()).expect(name);
                let h = grads_c.get(q.as_tensor()).expect(name);
                let d = (g - h).unwrap().abs().unwrap().max_all().unwrap();
                let d = d.to_scalar::<f32>().unwrap();
                assert_eq!(d, 0.0, "{} {name}", cfg.arch);
            }
            assert!(same(&plain.state().unwrap(), &ckpt.state().unwrap(), None));
        }
    }
}
