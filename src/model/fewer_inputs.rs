//! Weights for a network that reads fewer input channels than it was trained with, where the
//! channels it no longer reads are known from the ones it reads: copies of the one kept (`ct_x3`:
//! the CT three times) or zeros (`ct_lesion_zeros`: CT, lesion map, zeros). The first
//! convolution's weight is then summed over its input channels (copies) or cut to the kept ones
//! (zeros): the same function of the kept channels, at a third (two thirds) of the first
//! convolution's work. Only the order of the sums differs.

use std::collections::HashMap;

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;

/// What the input channels a network no longer reads held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Copies of the single channel kept.
    Copies,
    /// Zeros.
    Zeros,
}

/// A `VarBuilder` backend over a network's `tensors` for the network built with `kept` input
/// channels: a weight asked for with `kept` input channels (dimension 1) that is stored with more
/// is folded as [`Dropped`] says; every other tensor is served as stored.
pub struct FewerInputs {
    /// The stored tensors, by name.
    pub tensors: HashMap<String, Tensor>,
    /// Input channels the network is built with.
    pub kept: usize,
    /// What the other channels held.
    pub dropped: Dropped,
}

impl FewerInputs {
    /// The fold of `stored` to the asked `shape`, when `stored` is a first convolution's weight
    /// with more input channels than kept.
    fn fold(&self, stored: &Tensor, shape: &Shape) -> CResult<Option<Tensor>> {
        let (want, have) = (shape.dims(), stored.dims());
        let stem = want.len() == have.len()
            && want.len() >= 3
            && want[0] == have[0]
            && want[2..] == have[2..]
            && want[1] == self.kept
            && have[1] > self.kept;
        if !stem {
            return Ok(None);
        }
        Ok(Some(match self.dropped {
            Dropped::Copies if self.kept == 1 => {
                // Summed in f32 whatever the stored type: the sum is rounded once.
                let dtype = stored.dtype();
                stored
                    .to_dtype(DType::F32)?
                    .sum_keepdim(1)?
                    .to_dtype(dtype)?
            }
            Dropped::Copies => return Ok(None),
            Dropped::Zeros => stored.narrow(1, 0, self.kept)?.contiguous()?,
        }))
    }
}

impl SimpleBackend for FewerInputs {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        if let Some(stored) = self.tensors.get(name) {
            if let Some(folded) = self.fold(stored, &s)? {
                return folded.to_device(dev)?.to_dtype(dtype);
            }
        }
        SimpleBackend::get(&self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> CResult<Tensor> {
        SimpleBackend::get_unchecked(&self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
