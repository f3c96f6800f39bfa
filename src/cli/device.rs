//! `ctgrade device`: where the networks would run, and why; and the hand-over from a build
//! without CUDA to the CUDA build installed beside it.
//!
//! A CUDA build links the NVIDIA driver (`libcuda.so.1`) and its toolkit's libraries, so it cannot
//! even start on a machine without them, and a driver older than its toolkit fails on its first
//! kernel. An image therefore holds two builds: this one without CUDA as `ctgrade`, the entry
//! point, and the CUDA build as `ctgrade-cuda` beside it. Asked for a CUDA device, `ctgrade`
//! probes the driver, asks `ctgrade-cuda device` whether the device can run its code, and if so
//! becomes `ctgrade-cuda` (exec, same arguments, same process). Otherwise `--device auto` goes on
//! here on the CPU after one warning line naming the reason, and `--device cuda` fails with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, Result};
use serde_json::json;

use ctgrade::device::cuda_driver::{CudaDriver, CudaUnavailable, CudaVersion};
use ctgrade::device::{self, DeviceChoice, DeviceError};

/// Names the CUDA build to hand over to (default: `ctgrade-cuda` beside this executable); set
/// to the empty string, no hand-over happens.
pub const CUDA_BUILD_VAR: &str = "CTGRADE_CUDA_BINARY";

/// Arguments of `ctgrade device`.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// The device to check: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub(super) device: DeviceChoice,
}

/// Prints where the networks would run as one JSON object: `build` (cpu or cuda), `device`
/// (cpu, cuda:N, or null when the CUDA device asked for cannot be used), `driver` and `devices`
/// (what the NVIDIA driver reports, when it loads), `needs` (the CUDA version this build's code
/// needs) and `reason` (why not CUDA: `fallback`, when the hand-over to a CUDA build did not
/// happen, else this build's). Fails when a CUDA device asked for cannot be used.
pub fn device(args: &DeviceArgs, fallback: Option<String>) -> Result<ExitCode> {
    let cuda_build = candle_core::utils::cuda_is_available();
    let index = match args.device {
        DeviceChoice::Cpu => None,
        DeviceChoice::Auto => Some(0),
        DeviceChoice::Cuda(index) => Some(index),
    };
    let probe = CudaDriver::probe();
    let driver = probe.as_ref().ok().copied();
    let checked = index.map(|i| device::cuda_usable_with(|| probe.clone(), i));
    // The reason without "CUDA device N cannot be used", which the hand-over adds itself.
    let reason = match &checked {
        Some(Err(_)) if fallback.is_some() => fallback,
        Some(Err(DeviceError::Unavailable { reason, .. })) => Some(reason.to_string()),
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let chosen = match (&checked, args.device) {
        (None, _) => Some("cpu".to_string()),
        (Some(Ok(_)), _) => index.map(|i| format!("cuda:{i}")),
        (Some(Err(_)), DeviceChoice::Auto) => Some("cpu".into()),
        (Some(Err(_)), _) => None,
    };
    super::emit(
        &json!({
            "build": if cuda_build { "cuda" } else { "cpu" },
            "device": chosen,
            "driver": driver.map(|d| d.version.to_string()),
            "devices": driver.map(|d| d.devices),
            "needs": needs().map(|v| v.to_string()),
            "reason": reason,
        })
        .to_string(),
    )?;
    match checked {
        Some(Err(e)) if args.device != DeviceChoice::Auto => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The CUDA version this build's code needs (CUDA builds only).
fn needs() -> Option<CudaVersion> {
    #[cfg(feature = "cuda")]
    return Some(device::cuda_driver::TOOLKIT);
    #[cfg(not(feature = "cuda"))]
    None
}

/// Hands this process over to the CUDA build when `choice` asks for CUDA, this build has none and
/// a CUDA build is installed beside it ([`CUDA_BUILD_VAR`]). Returns when this process goes on:
/// with no CUDA build to hand over to (`None`), or for `--device auto` when the CUDA build cannot
/// use the device (after one warning line; the reason); fails for `--device cuda[:N]` in that
/// case.
pub fn hand_over(choice: DeviceChoice) -> Result<Option<String>> {
    let index = match choice {
        DeviceChoice::Cpu => return Ok(None),
        DeviceChoice::Auto => 0,
        DeviceChoice::Cuda(index) => index,
    };
    if candle_core::utils::cuda_is_available() {
        return Ok(None);
    }
    let Some(cuda_build) = installed_cuda_build() else {
        return Ok(None);
    };
    match can_run(&cuda_build, index) {
        Ok(()) => {
            // Only returns on failure; the CUDA build must not hand over again.
            let error = Command::new(&cuda_build)
                .args(std::env::args_os().skip(1))
                .env(CUDA_BUILD_VAR, "")
                .exec();
            Err(anyhow!("cannot start {}: {error}", cuda_build.display()))
        }
        Err(reason) => {
            let fallback = reason.to_string();
            let unusable = DeviceError::Unavailable { index, reason };
            if choice != DeviceChoice::Auto {
                return Err(unusable.into());
            }
            device::warn_cpu_fallback(&unusable);
            Ok(Some(fallback))
        }
    }
}

/// The CUDA build to hand over to, if one is installed.
fn installed_cuda_build() -> Option<PathBuf> {
    match std::env::var_os(CUDA_BUILD_VAR) {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(path.into()),
        None => {
            let beside = std::env::current_exe().ok()?.with_file_name("ctgrade-cuda");
            beside.is_file().then_some(beside)
        }
    }
}

/// Why the CUDA build cannot run CUDA device `index` here, if it cannot: the driver first (the
/// CUDA build would not start without one), then the CUDA build's own verdict, which adds its
/// toolkit's version and that its libraries load.
fn can_run(cuda_build: &Path, index: usize) -> Result<(), CudaUnavailable> {
    CudaDriver::probe().and_then(|driver| driver.check(index, None))?;
    let output = Command::new(cuda_build)
        .args(["device", "--device", &format!("cuda:{index}")])
        .env(CUDA_BUILD_VAR, "")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            CudaUnavailable::CudaBuild(format!("cannot start {}: {e}", cuda_build.display()))
        })?;
    if output.status.success() {
        return Ok(());
    }
    // Its JSON answer names the reason; a build that did not start says why on stderr.
    let reason = serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .ok()
        .and_then(|answer| answer["reason"].as_str().map(str::to_string))
        .or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            stderr
                .lines()
                .map(str::trim)
                .rfind(|line| !line.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("it ended with {}", output.status));
    // The loader's messages name the program already.
    let name = cuda_build.display().to_string();
    Err(CudaUnavailable::CudaBuild(if reason.starts_with(&name) {
        reason
    } else {
        format!("{name}: {reason}")
    }))
}
