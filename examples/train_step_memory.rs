//! Peak memory and time of one training step (forward, loss, backward) of a network, with
//! and without gradient checkpointing; one mode per process, so that peak RSS is its own.
//!
//! cargo run --release --example train_step_memory -- ARCH D,H,W [--grad-checkpoint]
//! prints one JSON line: arch, input, grad_checkpoint, seconds, peak_rss_mib (VmHWM).

use std::time::Instant;

use candle_core::{Device, Tensor};
use ctgrade::grading::Head;
use ctgrade::model::probe::peak_rss_mib;
use ctgrade::model::{Arch, NetworkConfig};
use ctgrade::train::net::TrainNet;
use ctgrade::train::optim;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(arch), Some(dims)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: train_step_memory ARCH D,H,W [--grad-checkpoint]");
    };
    let arch: Arch = arch.parse().map_err(anyhow::Error::msg)?;
    let d: Vec<usize> = dims.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let [dd, hh, ww] = d[..] else {
        anyhow::bail!("D,H,W expected, got {dims}");
    };
    let ckpt = args.iter().any(|a| a == "--grad-checkpoint");
    let dev = Device::Cpu;
    let cfg = NetworkConfig::new(arch, 3, 1);
    let mut net = TrainNet::new(&cfg, 1, &dev)?;
    // Batch size 2, the CT in one channel (the ct_x3 stem), as `ctgrade train` feeds it.
    let x = Tensor::randn(0f32, 1.0, (2, 1, dd, hh, ww), &dev)?;
    let labels = [2u8, 5];
    let base = peak_rss_mib();
    let t = Instant::now();
    let (loss, grads) = if ckpt {
        net.forward_backward_checkpointed(&x, |l| optim::loss(Head::Continuous, l, &labels))?
    } else {
        let logits = net.forward_train(&x)?;
        let loss = optim::loss(Head::Continuous, &logits, &labels)?;
        let grads = loss.backward()?;
        (loss, grads)
    };
    let seconds = t.elapsed().as_secs_f64();
    let g0 = grads
        .get(net.params()[0].1.as_tensor())
        .map(|g| g.abs()?.sum_all()?.to_scalar::<f32>())
        .transpose()?;
    println!(
        "{}",
        serde_json::json!({
            "arch": arch.name(), "input": [2, 1, dd, hh, ww], "grad_checkpoint": ckpt,
            "loss": loss.to_scalar::<f32>()?, "stem_grad_l1": g0, "seconds": seconds,
            "peak_rss_mib": peak_rss_mib(), "rss_before_step_mib": base,
        })
    );
    Ok(())
}
