//! Building a fold's network from its checkpoint tensors, recording which it reads.
//!
//! nnU-Net's state dicts hold some parameters under two names (dynamic_network_architectures
//! registers modules twice: `conv` beside `all_modules.0`, the decoder's `encoder.` beside the
//! encoder itself); torch.save stores such a storage once. ctgrade's network reads one of the
//! names, so the tensors it read are what a loaded fold holds in memory and what the compact
//! form ([`super::compact`]) keeps.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{UNet, UNetConfig};

/// A `VarBuilder` backend over a checkpoint's tensors that records the names the network reads.
struct Recording<'a> {
    tensors: &'a HashMap<String, Tensor>,
    used: &'a Mutex<BTreeSet<String>>,
}

impl Recording<'_> {
    fn record(&self, name: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
    }
}

impl SimpleBackend for Recording<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.record(name);
        SimpleBackend::get(self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.record(name);
        SimpleBackend::get_unchecked(self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(self.tensors, name)
    }
}

/// The network of `config` on `device` from `weights` (by state-dict name), and the tensors it
/// read.
pub(crate) fn build(
    config: &UNetConfig,
    weights: &HashMap<String, Tensor>,
    device: &Device,
) -> candle_core::Result<(UNet, HashMap<String, Tensor>)> {
    let used = Mutex::new(BTreeSet::new());
    let backend = Recording {
        tensors: weights,
        used: &used,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let net = UNet::new(config, vb)?;
    let names = used.into_inner().unwrap_or_default();
    let read = names
        .into_iter()
        .filter_map(|n| weights.get(&n).map(|t| (n, t.clone())))
        .collect();
    Ok((net, read))
}
