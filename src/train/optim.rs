//! Adam (Kingma & Ba, 2015) with its state exposed for checkpoints, and the two losses of the paper.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var, D};

use super::TrainError;
use crate::grading::Head;

/// Adam's hyper-parameters (PyTorch's defaults, the paper's betas and learning rate).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Learning rate at the last step: when set, the rate follows a half cosine from `lr` at
    /// step 0 to this at the last step (the paper keeps it constant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_final: Option<f64>,
}

impl AdamConfig {
    /// The learning rate of update `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        match self.lr_final {
            None => self.lr,
            Some(end) => {
                let t = step as f64 / total.saturating_sub(1).max(1) as f64;
                end + (self.lr - end) * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lr_final: None,
        }
    }
}

/// Adam over named variables; the moments are keyed by the variables' names.
pub struct Adam {
    cfg: AdamConfig,
    /// Updates taken so far (for bias correction).
    pub t: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    names: Vec<String>,
}

impl Adam {
    /// Zero moments for `params`.
    pub fn new(params: &[(String, Var)], cfg: AdamConfig) -> Result<Self, TrainError> {
        let mut m = Vec::with_capacity(params.len());
        for (_, p) in params {
            m.push(p.as_tensor().zeros_like()?);
        }
        Ok(Self {
            cfg,
            t: 0,
            v: m.clone(),
            m,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
        })
    }

    /// One update of every parameter that has a gradient, with learning rate `lr`.
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.t += 1;
        let AdamConfig {
            beta1, beta2, eps, ..
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (_, p)) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + eps)?;
            let update = ((&m / bc1)?.div(&denom)? * lr)?;
            p.set(&(p.as_tensor() - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments by name (`adam.m.<name>`, `adam.v.<name>`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            out.insert(format!("adam.m.{n}"), self.m[i].clone());
            out.insert(format!("adam.v.{n}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments written by [`Self::state`] and the update count.
    pub fn set_state(&mut self, state: &HashMap<String, Tensor>, t: u64) -> Result<(), TrainError> {
        for (i, n) in self.names.iter().enumerate() {
            for (key, slot) in [
                (format!("adam.m.{n}"), &mut self.m[i]),
                (format!("adam.v.{n}"), &mut self.v[i]),
            ] {
                match state.get(&key) {
                    Some(s) if s.dims() == slot.dims() => {
                        *slot = s.to_dtype(DType::F32)?.to_device(slot.device())?
                    }
                    _ => {
                        return Err(TrainError::Checkpoint(format!(
                            "optimizer state {key} is missing or misshapen"
                        )))
                    }
                }
            }
        }
        self.t = t;
        Ok(())
    }
}

/// The training target of CO-RADS `c` (1..5) for a head: `(c - 1) / 4` for the continuous head,
/// the class index `c - 1` for the categorical one.
pub fn target(head: Head, co_rads: u8) -> f32 {
    match head {
        Head::Continuous => (co_rads.saturating_sub(1)) as f32 / 4.0,
        Head::Categorical => co_rads.saturating_sub(1) as f32,
    }
}

/// Mean loss of raw outputs `(N, outputs)` against CO-RADS labels: binary cross-entropy with a
/// soft target `(c - 1) / 4` (continuous head) or cross-entropy over five classes (categorical).
pub fn loss(head: Head, logits: &Tensor, co_rads: &[u8]) -> Result<Tensor, TrainError> {
    let dev = logits.device();
    let n = co_rads.len();
    Ok(match head {
        Head::Continuous => {
            let x = logits.flatten_all()?;
            let t: Vec<f32> = co_rads.iter().map(|&c| target(head, c)).collect();
            let t = Tensor::from_vec(t, n, dev)?;
            // max(x, 0) - x t + log(1 + exp(-|x|)): stable for any x.
            let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
            ((x.relu()? - (&x * &t)?)? + softplus)?.mean_all()?
        }
        Head::Categorical => {
            let t: Vec<u32> = co_rads.iter().map(|&c| target(head, c) as u32).collect();
            let t = Tensor::from_vec(t, n, dev)?;
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            candle_nn::loss::nll(&logp, &t)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_schedules() {
        let constant = AdamConfig::default();
        assert_eq!(constant.lr_at(500, 1000), 1e-4);
        let cosine = AdamConfig {
            lr: 2e-3,
            lr_final: Some(1e-4),
            ..AdamConfig::default()
        };
        assert_eq!(cosine.lr_at(0, 101), 2e-3);
        assert!((cosine.lr_at(50, 101) - 1.05e-3).abs() < 1e-12);
        assert!((cosine.lr_at(100, 101) - 1e-4).abs() < 1e-15);
    }

    #[test]
    fn losses_at_known_points() {
        let dev = candle_core::Device::Cpu;
        // Logit 0 for every case: BCE = ln 2 whatever the soft target.
        let x = Tensor::zeros((3, 1), DType::F32, &dev).unwrap();
        let l = loss(Head::Continuous, &x, &[1, 3, 5]).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - std::f32::consts::LN_2).abs() < 1e-6);
        // Uniform logits over five classes: CE = ln 5.
        let x = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        let l = loss(Head::Categorical, &x, &[2, 4]).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 5f32.ln()).abs() < 1e-6);
    }
}
