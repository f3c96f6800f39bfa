//! `ctgrade serve`: grand-challenge's invoke API around `ctgrade run`.

use std::process::ExitCode;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use ctgrade::device;
use ctgrade::gc::run as gc_run;

use super::run::{prepare, RunArgs};

/// Arguments of `ctgrade serve`: where to listen, and those of `ctgrade run`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    listen: gc_invoke::Listen,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

/// Loads the ensemble once, then grades the input folder on every invocation.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let listener = args.listen.bind()?;
    let run_args = args.run;
    gc_invoke::serve(listener, "ctgrade serve", move || {
        let (ensemble, device, opts) = prepare(&run_args, true).map_err(|e| format!("{e:#}"))?;
        if !device.is_cpu() {
            // Kernel loading, PTX compilation and cuDNN set-up happen on first use: pay them
            // before /health says ready, not in the first case's time limit.
            let t = std::time::Instant::now();
            let shape: Vec<usize> = std::iter::once(1)
                .chain(ensemble.manifest.input.shape())
                .collect();
            let input = Tensor::zeros(shape, DType::F32, &Device::Cpu)
                .map_err(|e| format!("warm-up: {e}"))?;
            ensemble
                .predict(&input, &device, opts.precision, |_, _| {})
                .map_err(|e| format!("warm-up: {e}"))?;
            eprintln!(
                "ctgrade: {} warmed up in {:.1} s",
                device::describe(&device),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(move || {
            let report = gc_run::run(&opts, &ensemble, &device).map_err(|e| e.to_string())?;
            report.failure_line().map_or(Ok(()), Err)
        })
    })?;
    eprintln!("ctgrade serve: stopped");
    Ok(ExitCode::SUCCESS)
}
