//! One member's training: the sampler, the loop over batches with validation, early stopping and
//! checkpoints, and the BatchNorm statistics re-estimated at the end.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use rayon::prelude::*;

use super::augment::{self, Transform};
use super::checkpoint::{
    checkpoint_dir, load_checkpoint, save_checkpoint, strip, Best, MemberState,
};
use super::data::{self, Sample};
use super::error::save_tensors;
use super::net::TrainNet;
use super::optim::{self, Adam};
use super::report::LogRow;
use super::{member_file, metrics, write_logs, MemberSummary, TrainError, TrainOptions};
use crate::grading::{self, Head};
use crate::rng::{hash2, Rng};

pub(super) fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Validation scores of the network in inference form on the class-balanced list.
pub(super) struct Validation {
    loss: f64,
    qwk: Option<f64>,
    auc: Option<f64>,
}

pub(super) fn validate(
    net: &mut TrainNet,
    bn_batches: &[Tensor],
    head: Head,
    samples: &[Sample],
    list: &[usize],
) -> Result<Validation, TrainError> {
    net.recompute_bn_stats(bn_batches)?;
    let model = net.inference()?;
    let mut unique: Vec<usize> = list.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut outputs: HashMap<usize, Vec<f64>> = HashMap::new();
    for chunk in unique.chunks(4) {
        let dims = samples[chunk[0]].dims;
        let inputs = chunk
            .iter()
            .map(|&i| samples[i].expand(&samples[i].data))
            .collect();
        let x = data::batch_tensor(inputs, 3, dims, net.device())?;
        let logits = model.forward(&x)?;
        let act = match head {
            Head::Continuous => candle_nn::ops::sigmoid(&logits)?,
            Head::Categorical => candle_nn::ops::softmax(&logits, D::Minus1)?,
        };
        let rows = act.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        for (&i, r) in chunk.iter().zip(rows) {
            outputs.insert(i, r);
        }
    }
    let (mut truth, mut pred, mut pos, mut score) = (vec![], vec![], vec![], vec![]);
    let mut loss = 0.0;
    for &i in list {
        let out = outputs
            .get(&i)
            .ok_or_else(|| TrainError::Options("validation output missing".into()))?;
        let c = samples[i].co_rads;
        let g = grading::grade(head, out).map_err(|e| {
            TrainError::Options(format!("validation case {}: {e}", samples[i].case))
        })?;
        loss += match head {
            Head::Continuous => {
                let t = optim::target(head, c) as f64;
                let p = out[0].clamp(1e-7, 1.0 - 1e-7);
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            }
            Head::Categorical => -out
                .get(c as usize - 1)
                .copied()
                .unwrap_or(0.0)
                .max(1e-7)
                .ln(),
        };
        truth.push(c);
        pred.push(g.co_rads);
        pos.push(c >= 4);
        score.push(g.probability);
    }
    Ok(Validation {
        loss: loss / list.len().max(1) as f64,
        qwk: metrics::quadratic_weighted_kappa(&truth, &pred, grading::CO_RADS_CLASSES),
        auc: metrics::auc(&pos, &score),
    })
}

/// Epoch permutations of the training cases, a function of the seed and the epoch.
pub(super) struct Sampler {
    train: Vec<usize>,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
}

impl Sampler {
    fn new(train: Vec<usize>, seed: u64) -> Self {
        Self {
            train,
            seed,
            epoch: usize::MAX,
            perm: Vec::new(),
        }
    }

    /// The case at position `p` of the endless shuffled stream.
    fn at(&mut self, p: usize) -> usize {
        let n = self.train.len();
        let epoch = p / n;
        if epoch != self.epoch {
            self.perm = self.train.clone();
            Rng::stream(self.seed, hash2(0xE90C, epoch as u64)).shuffle(&mut self.perm);
            self.epoch = epoch;
        }
        self.perm[p % n]
    }
}

pub(super) struct MemberOutcome {
    /// None when interrupted.
    pub(super) summary: Option<MemberSummary>,
    pub(super) rows: Vec<LogRow>,
}

pub(super) fn train_member(
    opts: &TrainOptions,
    samples: &[Sample],
    m: usize,
    budget_s: Option<f64>,
    steps_this_process: &mut usize,
    before: (&[LogRow], &[MemberSummary]),
) -> Result<MemberOutcome, TrainError> {
    let r = &opts.recipe;
    let seed = r.seed.wrapping_add(m as u64);
    let dir = checkpoint_dir(&opts.out, m);
    let split = data::split(samples, r.val_fraction, seed);
    if split.train.is_empty() {
        return Err(TrainError::Options(
            "no training cases after the split".into(),
        ));
    }
    let val_list = data::balanced(samples, &split.val);
    let mut net = TrainNet::new(&r.network, seed, &opts.device)?;
    if let Some(init) = &r.init {
        let rep = net.load_init(init)?;
        // Once per process: the first member it trains.
        if m == opts.member.unwrap_or(0) && opts.log_every > 0 {
            eprintln!(
                "train: initial weights {}: {} tensors loaded, {} kept, {} head tensors skipped",
                init.display(),
                rep.loaded.len(),
                rep.kept.len(),
                rep.skipped.len()
            );
        }
    }
    let mut adam = Adam::new(net.params(), r.adam)?;
    let mut state = MemberState::fresh(m, seed);
    let mut best_weights: Option<HashMap<String, Tensor>> = None;
    if opts.resume {
        if let Some((s, tensors)) = load_checkpoint(&dir)? {
            if s.seed != seed || s.member != m {
                return Err(TrainError::Checkpoint(format!(
                    "{} belongs to member {} seed {}, not member {m} seed {seed}",
                    dir.display(),
                    s.member,
                    s.seed
                )));
            }
            net.set_state(&strip(&tensors, "net."), "checkpoint")?;
            adam.set_state(&tensors, s.adam_t)?;
            let best = strip(&tensors, "best.");
            best_weights = (!best.is_empty()).then_some(best);
            state = s;
        }
    }
    let log_on = opts.log_every > 0;
    if state.done {
        if log_on {
            eprintln!(
                "train: member {}/{} already finished at step {} ({})",
                m + 1,
                opts.members,
                state.step,
                state.stop_reason.as_deref().unwrap_or("")
            );
        }
        return Ok(MemberOutcome {
            summary: Some(summary(&state, &split)),
            rows: state.rows.clone(),
        });
    }
    if log_on {
        eprintln!(
            "train: member {}/{} seed {seed}: {} parameters, {} training / {} validation cases \
             ({} balanced), {}",
            m + 1,
            opts.members,
            net.num_parameters(),
            split.train.len(),
            split.val.len(),
            val_list.len(),
            if state.step > 0 {
                format!("resuming at step {}", state.step)
            } else {
                "from scratch".into()
            }
        );
    }
    let n_train = split.train.len();
    let bn_batches = bn_batches(samples, &split.train, seed, &opts.device)?;
    let mut sampler = Sampler::new(split.train.clone(), seed);
    let aug_cfg = r.augment.scaled(samples[0].dims);
    let pads = Sample::pad_values(&r.input);
    let t0 = Instant::now();
    let seconds_before = state.seconds;
    let mut last_line = Instant::now();
    let mut steps_since_line = 0usize;
    let stop_reason: String = loop {
        if state.step >= r.max_steps {
            break format!("reached {} steps", r.max_steps);
        }
        if budget_s.is_some_and(|b| t0.elapsed().as_secs_f64() >= b) {
            break "time limit".into();
        }
        if opts
            .interrupt_after
            .is_some_and(|n| *steps_this_process >= n)
        {
            return Ok(MemberOutcome {
                summary: None,
                rows: state.rows.clone(),
            });
        }
        // The batch and its augmentations: functions of (seed, step) only.
        let idx: Vec<usize> = (0..r.batch_size)
            .map(|b| sampler.at(state.step * r.batch_size + b))
            .collect();
        let step_key = hash2(seed, state.step as u64);
        let inputs: Vec<(Vec<f32>, usize)> = idx
            .par_iter()
            .enumerate()
            .map(|(b, &i)| {
                let s = &samples[i];
                let tf = Transform::draw(&aug_cfg, hash2(step_key, b as u64));
                let aug = augment::augment(&s.data, s.channels, s.dims, &pads, &tf);
                s.train_input(&aug)
            })
            .collect();
        let labels: Vec<u8> = idx.iter().map(|&i| samples[i].co_rads).collect();
        let channels = inputs.first().map_or(3, |i| i.1);
        let inputs = inputs.into_iter().map(|i| i.0).collect();
        let x = data::batch_tensor(inputs, channels, samples[idx[0]].dims, &opts.device)?;
        let (loss, grads) = if r.grad_checkpoint {
            net.forward_backward_checkpointed(&x, |logits| optim::loss(r.head, logits, &labels))?
        } else {
            let logits = net.forward_train(&x)?;
            let loss = optim::loss(r.head, &logits, &labels)?;
            let grads = loss.backward()?;
            (loss, grads)
        };
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(TrainError::Options(format!(
                "member {m}: the loss became {loss_value} at step {}; lower the learning rate",
                state.step
            )));
        }
        let lr = r.adam.lr_at(state.step, r.max_steps);
        adam.step(net.params(), &grads, lr)?;
        state.step += 1;
        *steps_this_process += 1;
        steps_since_line += 1;
        state.loss_sum_bits = (f64::from_bits(state.loss_sum_bits) + loss_value).to_bits();
        state.loss_count += 1;
        let elapsed = seconds_before + t0.elapsed().as_secs_f64();

        let mut early_stop = false;
        if state.step.is_multiple_of(r.val_every) || state.step == r.max_steps {
            let train_loss = f64::from_bits(state.loss_sum_bits) / state.loss_count.max(1) as f64;
            let mut row = LogRow {
                member: m,
                step: state.step,
                epoch: (state.step * r.batch_size) as f64 / n_train as f64,
                train_loss,
                val_loss: None,
                val_qwk: None,
                val_auc: None,
                seconds: elapsed,
            };
            if !val_list.is_empty() {
                let v = validate(&mut net, &bn_batches, r.head, samples, &val_list)?;
                row.val_loss = Some(v.loss);
                row.val_qwk = v.qwk;
                row.val_auc = v.auc;
                let qwk = v.qwk.unwrap_or(f64::NEG_INFINITY);
                let better = match &state.best {
                    None => true,
                    Some(b) => qwk > b.qwk || (qwk == b.qwk && v.loss < b.loss),
                };
                if better {
                    state.best = Some(Best {
                        step: state.step,
                        qwk,
                        loss: v.loss,
                        auc: v.auc,
                    });
                    best_weights = Some(net.state()?);
                }
                if r.patience > 0
                    && state
                        .best
                        .as_ref()
                        .is_some_and(|b| state.step - b.step >= r.patience)
                {
                    early_stop = true;
                }
            }
            state.rows.push(row);
            let rows: Vec<LogRow> = before.0.iter().chain(&state.rows).cloned().collect();
            write_logs(opts, &rows, before.1)?;
            state.loss_sum_bits = 0f64.to_bits();
            state.loss_count = 0;
            if log_on {
                let rate = steps_since_line as f64 / last_line.elapsed().as_secs_f64().max(1e-9);
                let left_steps = (r.max_steps - state.step) + (opts.members - m - 1) * r.max_steps;
                let b = state.best.as_ref();
                let row = state.rows.last();
                eprintln!(
                    "train: member {}/{} step {}/{} epoch {:.1} | loss {:.4} | val loss {} qwk {} auc {} | best qwk {} @ {} | {:.2} it/s | time left <= {}",
                    m + 1,
                    opts.members,
                    state.step,
                    r.max_steps,
                    row.map_or(0.0, |r| r.epoch),
                    train_loss,
                    row.and_then(|r| r.val_loss).map_or("-".into(), |v| format!("{v:.4}")),
                    row.and_then(|r| r.val_qwk).map_or("-".into(), |v| format!("{v:.3}")),
                    row.and_then(|r| r.val_auc).map_or("-".into(), |v| format!("{v:.3}")),
                    b.map_or("-".into(), |b| format!("{:.3}", b.qwk)),
                    b.map_or(0, |b| b.step),
                    rate,
                    fmt_duration(left_steps as f64 / rate.max(1e-9))
                );
                last_line = Instant::now();
                steps_since_line = 0;
            }
        } else if log_on && state.step.is_multiple_of(opts.log_every) {
            let rate = steps_since_line as f64 / last_line.elapsed().as_secs_f64().max(1e-9);
            let left_steps = (r.max_steps - state.step) + (opts.members - m - 1) * r.max_steps;
            eprintln!(
                "train: member {}/{} step {}/{} | loss {:.4} | {:.2} it/s | time left <= {}",
                m + 1,
                opts.members,
                state.step,
                r.max_steps,
                f64::from_bits(state.loss_sum_bits) / state.loss_count.max(1) as f64,
                rate,
                fmt_duration(left_steps as f64 / rate.max(1e-9))
            );
            last_line = Instant::now();
            steps_since_line = 0;
        }
        state.seconds = seconds_before + t0.elapsed().as_secs_f64();
        if state.step.is_multiple_of(opts.checkpoint_every) {
            save_checkpoint(&dir, &mut state, &net, &adam, best_weights.as_ref())?;
        }
        if early_stop {
            break format!(
                "early stop: no better validation QWK in {} batches",
                r.patience
            );
        }
    };
    // The kept weights: the best validation's, else the last (with re-estimated statistics).
    let weights = match &best_weights {
        Some(b) => b.clone(),
        None => {
            net.recompute_bn_stats(&bn_batches)?;
            net.state()?
        }
    };
    let member_path = opts.out.join(member_file(m));
    save_tensors(&member_path, &weights)?;
    state.done = true;
    state.stop_reason = Some(stop_reason.clone());
    state.seconds = seconds_before + t0.elapsed().as_secs_f64();
    save_checkpoint(&dir, &mut state, &net, &adam, best_weights.as_ref())?;
    if log_on {
        eprintln!(
            "train: member {}/{} done: {stop_reason}; kept step {} (val qwk {}), {}",
            m + 1,
            opts.members,
            state.best.as_ref().map_or(state.step, |b| b.step),
            state
                .best
                .as_ref()
                .map_or("-".into(), |b| format!("{:.3}", b.qwk)),
            fmt_duration(state.seconds)
        );
    }
    Ok(MemberOutcome {
        summary: Some(summary(&state, &split)),
        rows: state.rows.clone(),
    })
}

/// Cases whose unaugmented inputs re-estimate the BatchNorm statistics: up to this many.
pub(super) const BN_CASES: usize = 32;

/// Cases per forward pass when re-estimating BatchNorm statistics.
pub(super) const BN_BATCH: usize = 8;

/// A fixed, seeded subset of the training cases in batches, for [`TrainNet::recompute_bn_stats`].
pub(super) fn bn_batches(
    samples: &[Sample],
    train: &[usize],
    seed: u64,
    device: &Device,
) -> Result<Vec<Tensor>, TrainError> {
    let mut pick = train.to_vec();
    Rng::stream(seed, 0xB47C).shuffle(&mut pick);
    pick.truncate(BN_CASES);
    pick.sort_unstable();
    let mut out = Vec::new();
    for chunk in pick.chunks(BN_BATCH) {
        let inputs: Vec<(Vec<f32>, usize)> = chunk
            .iter()
            .map(|&i| samples[i].train_input(&samples[i].data))
            .collect();
        let channels = inputs.first().map_or(3, |i| i.1);
        let dims = samples[chunk[0]].dims;
        out.push(data::batch_tensor(
            inputs.into_iter().map(|i| i.0).collect(),
            channels,
            dims,
            device,
        )?);
    }
    Ok(out)
}

pub(super) fn summary(state: &MemberState, split: &data::Split) -> MemberSummary {
    MemberSummary {
        member: state.member,
        seed: state.seed,
        steps: state.step,
        best_step: state.best.as_ref().map_or(state.step, |b| b.step),
        best_qwk: state.best.as_ref().map(|b| b.qwk).filter(|q| q.is_finite()),
        best_auc: state.best.as_ref().and_then(|b| b.auc),
        stop_reason: state.stop_reason.clone().unwrap_or_default(),
        seconds: state.seconds,
        train_cases: split.train.len(),
        val_cases: split.val.len(),
    }
}
