//! Choosing where and in what precision the networks run: `--device auto|cpu|cuda[:N]`,
//! `--precision f32|bf16|f16`.

pub mod cuda_driver;

use std::str::FromStr;

use candle_core::{DType, Device};

use cuda_driver::{CudaDriver, CudaUnavailable};

/// The floating-point format the networks compute in.
///
/// `f32` is the reference: the PyTorch-trained networks in strict f32, the default everywhere.
/// `bf16` and `f16` store weights and activations in 16 bits: half the memory traffic, and the
/// tensor cores of a GPU. Convolutions accumulate in f32 on the CPU and in the native cuDNN op
/// (`model::cudnn3d`); the composed GPU path uses candle's 2-D cuDNN convolution, which
/// accumulates f16 in f16. On the CPU the 16-bit formats are slower than f32 (DenseNet-201: about
/// 3x) and serve to measure the accuracy of a GPU run in that format
/// (`scripts/precision-check.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit IEEE floats (the reference).
    #[default]
    F32,
    /// bfloat16: f32's range, 8 significant bits.
    Bf16,
    /// IEEE half precision: 11 significant bits, range up to 65504.
    F16,
}

impl Precision {
    /// The candle data type.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

/// The device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when built with CUDA and a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use auto, cpu, cuda or cuda:N")),
        }
    }
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// This build, the driver, the device or the toolkit's libraries rule CUDA out before it is
    /// tried.
    #[error("CUDA device {index} cannot be used: {reason}")]
    Unavailable {
        /// Device ordinal.
        index: usize,
        /// Why.
        reason: CudaUnavailable,
    },
    /// CUDA present in the build but the device cannot be opened.
    #[error("cannot open CUDA device {index}: {reason}")]
    Cuda {
        /// Device ordinal.
        index: usize,
        /// candle's error, its first line: it appends a backtrace when `RUST_BACKTRACE` is set,
        /// and the platform shows users one line.
        reason: String,
    },
}

/// Forbids TF32 in cuDNN and cuBLAS unless the user set `NVIDIA_TF32_OVERRIDE` already.
///
/// candle leaves cuDNN's math type at its default, which lets f32 convolutions run in TF32 on
/// Ampere and later GPUs. Measured on an H100 (DenseNet-201 3-D, 1x3x128x240x240): 5.8e-3 from
/// PyTorch's strict f32 with TF32, 2.9e-6 without. Parity with the PyTorch-trained networks comes
/// first, so ctgrade runs in strict f32; `NVIDIA_TF32_OVERRIDE=1` opts back in. The variable is
/// read when the CUDA libraries initialise, so this must run before the first CUDA call.
fn forbid_tf32_unless_asked() {
    if std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    }
}

impl DeviceChoice {
    /// Opens the device (strict f32 on CUDA, see `forbid_tf32_unless_asked`). `Auto` takes CUDA
    /// device 0 when this build has CUDA and the device can be used, else the CPU, with one
    /// warning line on stderr naming the reason when a CUDA build falls back.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto if !candle_core::utils::cuda_is_available() => Ok(Device::Cpu),
            Self::Auto => open_cuda(0).or_else(|e| {
                warn_cpu_fallback(&e);
                Ok(Device::Cpu)
            }),
            Self::Cuda(index) => open_cuda(index),
        }
    }
}

/// The one warning line of `--device auto` going on on the CPU because of `why`.
pub fn warn_cpu_fallback(why: &DeviceError) {
    eprintln!("ctgrade: warning: {why}; running on the CPU");
}

/// Checks, without opening it, that CUDA device `index` can run this build's code: the driver
/// loads and initialises, supports the toolkit this build comes from, and sees the device.
pub fn cuda_usable(index: usize) -> Result<CudaDriver, DeviceError> {
    cuda_usable_with(CudaDriver::probe, index)
}

/// [`cuda_usable`] with the driver probed by `probe` (called only by a CUDA build), for a
/// caller that has probed it already.
pub fn cuda_usable_with(
    probe: impl FnOnce() -> Result<CudaDriver, CudaUnavailable>,
    index: usize,
) -> Result<CudaDriver, DeviceError> {
    let unavailable = |reason| DeviceError::Unavailable { index, reason };
    if !candle_core::utils::cuda_is_available() {
        return Err(unavailable(CudaUnavailable::NotBuilt));
    }
    let driver = probe().map_err(unavailable)?;
    #[cfg(feature = "cuda")]
    let needed = Some(cuda_driver::TOOLKIT);
    #[cfg(not(feature = "cuda"))]
    let needed = None;
    driver.check(index, needed).map_err(unavailable)?;
    Ok(driver)
}

fn open_cuda(index: usize) -> Result<Device, DeviceError> {
    forbid_tf32_unless_asked();
    cuda_usable(index)?;
    Device::new_cuda(index).map_err(|error| DeviceError::Cuda {
        index,
        reason: error.to_string().lines().next().unwrap_or_default().into(),
    })
}

/// A short description of a device for logs.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("without the `cuda` feature"), "{err}");
        }
    }
}
